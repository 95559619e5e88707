//! What plugin_init reads before the plugin starts: the RPC password and the state file. Safe code
//! kept out of the host layer (`crate::host`).

use crate::config::{self, Config, PasswordSource};
use crate::interest::RestoredSessions;
use crate::spool::Record;
use crate::state::{Destination, Saved, Unsent};

/// The twisterd password, inline or the first line of `plugin_opt_rpc_password_file`.
pub fn resolve_password(cfg: &Config) -> Result<String, String> {
    match &cfg.rpc_password {
        PasswordSource::Inline(s) => Ok(s.0.clone()),
        PasswordSource::File(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                format!(
                    "{}rpc_password_file: cannot read {}: {e}",
                    config::PREFIX,
                    path.display()
                )
            })?;
            let pw = text.lines().next().unwrap_or("").trim().to_string();
            if pw.is_empty() {
                return Err(format!(
                    "{}rpc_password_file: {} is empty",
                    config::PREFIX,
                    path.display()
                ));
            }
            Ok(pw)
        }
    }
}

/// The saved state, if any; a state file that cannot be written is refused now, not at the first post.
pub fn load_state(cfg: &Config) -> Result<Option<Saved>, String> {
    let Some(path) = &cfg.state_file else {
        return Ok(None);
    };
    let saved = Saved::load(path).map_err(|e| format!("{}state_file: {e}", config::PREFIX))?;
    if saved.is_none() {
        // Fail now, not at the first post, when the file cannot be written.
        Saved::default()
            .save(path)
            .map_err(|e| format!("{}state_file: {e}", config::PREFIX))?;
    }
    Ok(saved)
}

/// Which of the last run's persistent sessions the broker restored from its persistence file (it has
/// done so before it loads plugins), as `holds(client id)` tells.
pub fn restored_sessions(saved: Option<&Saved>, holds: impl Fn(&str) -> bool) -> RestoredSessions {
    RestoredSessions::Only(
        saved
            .map(|s| s.interest.as_slice())
            .unwrap_or(&[])
            .iter()
            .filter(|s| s.persistent && holds(&s.client))
            .map(|s| s.client.clone())
            .collect(),
    )
}

/// Queues what the spool kept from the last run, not taken, for the worker: routed again as a new
/// message would be (public, and private with recipients decided later), after what the state file
/// kept from a clean stop.
pub fn replay_from_spool(
    cfg: &Config,
    saved: &mut Option<Saved>,
    records: Vec<Record>,
    epoch: u64,
) {
    if records.is_empty() {
        return;
    }
    let unsent = &mut saved.get_or_insert_with(Saved::default).unsent;
    for r in records {
        // The id it had when first taken: receivers drop it if the first copy got through.
        let id = crate::wire::MessageId { epoch, seq: r.seq };
        let m = r.message;
        let public = cfg
            .publish
            .iter()
            .any(|f| crate::topic::matches(f, &m.topic));
        let private = cfg
            .private
            .iter()
            .any(|p| crate::topic::matches(&p.filter, &m.topic));
        for (wanted, to) in [
            (public, Destination::Public),
            (private, Destination::Undecided),
        ] {
            if wanted {
                unsent.push(Unsent {
                    to,
                    item: crate::wire::encode_item_with_id(&m, Some(id)),
                });
            }
        }
    }
}

/// The spool of `plugin_opt_spool_dir`, opened with `storage`, what it read back queued for the worker
/// (see `replay_from_spool`), and a line for the log when it read back anything or found damage.
pub fn open_spool(
    cfg: &Config,
    storage: Box<dyn crate::spool::Storage>,
    saved: &mut Option<Saved>,
) -> Result<Option<(crate::spool::Spool, crate::spool::Appender, Option<String>)>, String> {
    let Some(sc) = &cfg.spool else {
        return Ok(None);
    };
    let (spool, appender, recovery) = crate::spool::Spool::open(&sc.dir, sc.geometry, storage)
        .map_err(|e| {
            format!(
                "{}spool_dir: cannot use {}: {e}",
                config::PREFIX,
                sc.dir.display()
            )
        })?;
    let damage = recovery.lost > 0
        || recovery.unreadable_bytes > 0
        || recovery.bad_headers > 0
        || recovery.mark_missing;
    let line = (damage || !recovery.records.is_empty()).then(|| {
        format!(
            "mqtt-twister: spool {}: {} messages not posted before the last stop are queued again; {} lost to damage, {} unreadable bytes skipped, {} damaged segment headers{}",
            sc.dir.display(),
            recovery.records.len(),
            recovery.lost,
            recovery.unreadable_bytes,
            recovery.bad_headers,
            if recovery.mark_missing { "; the taken mark was unreadable: everything found is replayed (some may arrive twice)" } else { "" }
        )
    });
    replay_from_spool(cfg, saved, recovery.records, spool.epoch());
    Ok(Some((spool, appender, line)))
}

/// The broker side of the spool and its keeper, once the worker runs: what was read back at start is
/// with the worker already.
pub fn spool_with_worker(
    spool: crate::spool::Spool,
    appender: crate::spool::Appender,
    worker: &crate::supervise::WorkerHandle,
) -> std::io::Result<(crate::spool::intake::Intake, crate::spool::keeper::Keeper)> {
    let progress = worker.spool_progress();
    let intake = crate::spool::intake::Intake::new(appender, progress.clone());
    let log = worker.log_sender();
    let keeper = crate::spool::keeper::Keeper::spawn(
        spool,
        progress,
        Box::new(move |error, line| {
            let level = if error {
                crate::bus::Level::Error
            } else {
                crate::bus::Level::Warning
            };
            log(level, line)
        }),
    )?;
    Ok((intake, keeper))
}

/// The injection log beside `plugin_opt_state_file` (`crate::injected`): what the last run's broker
/// took is merged into the saved dedup set and written to the state file, then the log starts afresh.
/// With it, a line for the log when records were found damaged. None without a state file.
#[allow(clippy::type_complexity)]
pub fn open_injection_log(
    cfg: &Config,
    storage: &dyn crate::spool::Storage,
    saved: &mut Option<Saved>,
) -> Result<
    Option<(
        crate::injected::Recorder,
        crate::injected::Handle,
        Option<String>,
    )>,
    String,
> {
    let Some(state_file) = &cfg.state_file else {
        return Ok(None);
    };
    let path = crate::injected::path_beside(state_file);
    let error = |e: std::io::Error| {
        format!(
            "{}state_file: cannot use {}: {e}",
            config::PREFIX,
            path.display()
        )
    };
    let recovered = crate::injected::recover(&path).map_err(error)?;
    if !recovered.injected.is_empty() {
        let state = saved.get_or_insert_with(Saved::default);
        for (sender, id) in recovered.injected {
            state.seen.check(&sender, Some(id));
        }
        // Written before the log is zeroed: the ids are then in one of the two at every moment.
        state
            .save(state_file)
            .map_err(|e| format!("{}state_file: {e}", config::PREFIX))?;
    }
    let line = (recovered.damaged > 0).then(|| {
        format!(
            "mqtt-twister: {}: {} damaged records skipped (torn by a kill: their messages may arrive once more)",
            path.display(),
            recovered.damaged
        )
    });
    let (recorder, handle) = crate::injected::open(&path, storage).map_err(error)?;
    Ok(Some((recorder, handle, line)))
}
