//! The broker thread's use of the spool in the MESSAGE callback: a message is written to the spool,
//! then handed to the worker, or else dropped (QoS 0) or refused to its publisher (QoS 1/2), so that
//! nothing is acknowledged and then lost. No syscall, no lock.

use super::{Appender, Progress, Refused, SpoolId};
use crate::wire::{Message, MessageId};
use std::sync::Arc;

/// What the callback does with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Spooled and with the worker.
    Accepted(SpoolId),
    /// A QoS 0 message dropped for want of room (counted).
    Dropped,
    /// A QoS 1/2 message the publisher must not see acknowledged (counted).
    Refused,
}

pub struct Intake {
    appender: Appender,
    progress: Arc<Progress>,
}

impl Intake {
    /// `progress` is the worker's: the records read back at start are with it already.
    pub fn new(appender: Appender, progress: Arc<Progress>) -> Intake {
        progress.handed(SpoolId(appender.next - 1));
        Intake { appender, progress }
    }

    /// Spools `m` and hands it to the worker through `hand`, with its id (the spool's epoch and the
    /// record's `SpoolId`, as a replay after a crash gives it again); false: no room there.
    /// `worker_has_room` is checked first, so a spooled message never waits for a worker that would
    /// drop it.
    pub fn take(
        &mut self,
        m: Message,
        worker_has_room: bool,
        hand: impl FnOnce(Message, MessageId) -> bool,
    ) -> Verdict {
        let spooled = if worker_has_room {
            self.appender.append(&m, &[])
        } else {
            self.appender.refuse(if m.qos == 0 {
                Refused::Qos0Shed
            } else {
                Refused::Full
            })
        };
        match spooled {
            Ok(id) => {
                // Cannot fail: the broker's thread is the only one to fill the queue, and it had room.
                // Were it to, the record stays spooled and is replayed at the next start.
                let message_id = MessageId {
                    epoch: self.appender.epoch,
                    seq: id.0,
                };
                if hand(m, message_id) {
                    self.progress.handed(id);
                }
                Verdict::Accepted(id)
            }
            Err(_) if m.qos == 0 => Verdict::Dropped,
            Err(_) => Verdict::Refused,
        }
    }
}
