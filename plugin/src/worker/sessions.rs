//! The worker's side of client sessions: taking up the last run's interest at start (what it means is
//! decided in `crate::relay::interest::local`), and publishing into the broker.

use super::*;

impl Worker {
    /// Takes up the subscriptions of the sessions the previous run knew (see `Interest::restore`).
    pub(super) fn restore_interest(&mut self, restored: &RestoredSessions) {
        // From now on a save is not the one of a clean stop.
        let certain = std::mem::replace(&mut self.saved.clean_stop, false);
        let saved = std::mem::take(&mut self.saved.interest);
        self.local.restore(&saved, restored, certain);
        self.drive_local();
    }

    pub(super) fn inject(&mut self, m: Message) {
        self.inject_item(ToBroker::Publish(m));
    }

    /// `item`: a message to publish, with or without its mark for the injection log.
    pub(super) fn inject_item(&mut self, item: ToBroker) {
        self.counters.injected += 1;
        self.ring_pending = true;
        let sent = self.to_broker.send_timeout(item, Duration::from_secs(1));
        // A message the broker never got is not acknowledged (`worker/receipts.rs`).
        self.receipts_sent_to_broker(sent.is_ok());
        if sent.is_err() {
            self.drop_message(
                Reason::BrokerQueueFull,
                "a message from the network: the broker's thread takes none".to_string(),
            );
        }
    }
}
