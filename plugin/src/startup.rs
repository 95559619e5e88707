//! What plugin_init reads before the plugin starts: the RPC password and the state file. Safe code
//! kept out of the host layer (`broker`).

use crate::config::{self, Config, PasswordSource};
use crate::interest::RestoredSessions;
use crate::state::Saved;

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
