//! Receipts and retransmission (issue 11), without I/O or clock.
//!
//! - `codec`: the receipts resource a receiver writes per sender in its own DHT "s" space.
//! - `ledger`: the receiving side: what was handed to our broker, batched into writes.
//! - `tracker`: the sending side: QoS 1/2 messages kept until each intended receiver acknowledged
//!   them, resent with backoff, given up after the operator's time.
//!
//! The driver (`crate::worker`) feeds them: delivered messages and the broker's progress into the
//! ledger, DHT reads of receivers' resources into the tracker; it carries out their writes and
//! resends.

pub mod codec;
pub mod ledger;
#[cfg(test)]
mod tests;
pub mod tracker;

use crate::interest::any_matches;
pub use crate::wire::MessageId;
use std::collections::{BTreeMap, BTreeSet};

/// The expected receivers (`plugin_opt_receivers`) whose known interest matches `topic`: those a
/// public QoS 1/2 message waits for.
pub fn public_receivers(
    expected: &[String],
    interest: &BTreeMap<String, Vec<String>>,
    topic: &str,
) -> BTreeSet<String> {
    expected
        .iter()
        .filter(|u| interest.get(*u).is_some_and(|f| any_matches(f, topic)))
        .cloned()
        .collect()
}
