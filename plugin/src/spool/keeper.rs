//! The spool's worker-side half on a thread of its own, so that preparing a segment (writing its
//! blocks) never delays a post: every few milliseconds it writes down what the relay took, takes back
//! full segments, recycles the taken ones and keeps spares ready; once a second it `fdatasync`s what
//! was appended. Trouble (a full disk) is logged once per change, refusals every so often.

use super::{Progress, Spool, SpoolId};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const TURN: Duration = Duration::from_millis(5);
const SYNC_EVERY: Duration = Duration::from_secs(1);
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// Where the keeper's lines go: (an error?, the line).
pub type LogFn = Box<dyn Fn(bool, String) + Send>;

pub struct Keeper {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

struct Turns {
    spool: Spool,
    progress: Arc<Progress>,
    log: LogFn,
    trouble: Option<String>,
    synced: (SpoolId, SpoolId),
    last_sync: Instant,
    reported: (u64, u64),
    last_report: Instant,
}

impl Keeper {
    pub fn spawn(spool: Spool, progress: Arc<Progress>, log: LogFn) -> std::io::Result<Keeper> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let now = Instant::now();
        let mut turns = Turns {
            synced: (spool.appended(), SpoolId(0)),
            spool,
            progress,
            log,
            trouble: None,
            last_sync: now,
            reported: (0, 0),
            last_report: now,
        };
        let thread = std::thread::Builder::new()
            .name("mqtt-twister-spool".into())
            .spawn(move || {
                while !stopping.load(Ordering::Acquire) {
                    turns.turn(false);
                    std::thread::sleep(TURN);
                }
                turns.turn(true);
            })?;
        Ok(Keeper {
            stop,
            thread: Some(thread),
        })
    }

    /// Writes down the last progress, syncs, and stops (after the worker stopped).
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Turns {
    fn turn(&mut self, last: bool) {
        self.spool.mark_taken(self.progress.taken_so_far());
        match self.spool.maintain() {
            Err(e) => {
                let kind = e.kind().to_string();
                if self.trouble.as_deref() != Some(kind.as_str()) {
                    (self.log)(true, format!("spool: cannot prepare a segment: {e}; new QoS 1/2 messages are refused and QoS 0 dropped until there is room (what is spooled is kept)"));
                    self.trouble = Some(kind);
                }
            }
            Ok(()) => {
                if self.trouble.take().is_some() {
                    (self.log)(false, "spool: segments can be prepared again".into());
                }
            }
        }
        let now = Instant::now();
        let state = (self.spool.appended(), self.spool.taken());
        if (last || now.duration_since(self.last_sync) >= SYNC_EVERY) && state != self.synced {
            self.last_sync = now;
            match self.spool.sync() {
                Ok(_) => self.synced = state,
                Err(e) => (self.log)(true, format!("spool: fdatasync failed: {e}")),
            }
        }
        if last || now.duration_since(self.last_report) >= REPORT_EVERY {
            self.last_report = now;
            let s = self.spool.stats();
            if (s.shed_qos0, s.refused) != self.reported {
                self.reported = (s.shed_qos0, s.refused);
                (self.log)(false, format!(
                    "spool: {} QoS 0 messages dropped and {} QoS 1/2 messages refused so far (spool full, plugin_opt_spool_max_bytes); {} messages wait, {} bytes on disk",
                    s.shed_qos0, s.refused, s.appended - s.taken, s.bytes_on_disk
                ));
            }
        }
    }
}
