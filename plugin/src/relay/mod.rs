//! The relay core: the plugin's decisions, with no I/O, no clock and no log of its own. It takes
//! events (a routed local message, a typed twisterd reply to a request it made, "now") and returns
//! effects (post this text under this `k`, ask for our last post number, ask for the chain height,
//! log this line, the state changed) plus the instant it next needs to be called, in the style of
//! quinn-proto's `Connection` (`handle_timeout(now)`, `poll_effect`, `poll_timeout`).
//!
//! - `timers`: every deadline in one place; a deadline returned is never in the past.
//! - `inbox`: what followed users posted, in: cursors, fetch plans, the DM reader, decoding, dedup,
//!   reassembly; whole messages out to the driver.
//! - `session`: start-up: wallet, registration, follows, then twisterd's numbers.
//! - `outbox`: typed outgoing messages in, posts and DMs out: batching at the exact post size, `k`
//!   numbering, the post budget, fragments, posts of unknown outcome.
//! - `interest`: our subscriptions and profile writes (`interest::local`), the private recipients'
//!   interest and where private forwards go (`interest::private`).
//! - `hold`: messages waiting for interest that may come (a previous run's subscriptions, a private
//!   recipient's), bounded, with their deadlines.
//! - `release`: when a spooled record is released (its posts confirmed and held), and which posts
//!   twisterd forgot (posted again under new numbers).
//!
//! The driver (`crate::worker`) carries the effects out with the typed client
//! (`crate::twister::Client`) and the DHT thread (`crate::dht`), and feeds each reply back.

pub mod hold;
pub mod inbox;
pub mod interest;
pub mod outbox;
pub mod receipts;
pub mod release;
pub mod retained;
pub mod session;
pub mod timers;

use crate::drops::Reason;
use crate::twister::TwisterError;
use std::collections::BTreeMap;

/// Matches a reply to the request it answers.
pub type RequestId = u64;

pub use crate::bus::Level;

/// What the relay asks its driver to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// `newpostmsg` (`to: None`) or `newdirectmsg` (`to: Some(user)`) of `text` under number `k`.
    Post {
        id: RequestId,
        k: i64,
        to: Option<String>,
        text: String,
    },
    /// Numbers up to `k` are used (or about to be): written down before the post under `k` goes, so
    /// that a restart never uses `k` again, even if twisterd forgets the post.
    UseNumber(i64),
    /// `getlasthave` of our own user only.
    OwnLastHave {
        id: RequestId,
    },
    /// `getinfo`: the chain height.
    Height {
        id: RequestId,
    },
    Log(Level, String),
    /// A message not forwarded: the driver counts it (`crate::drops`) and logs it, rate-limited.
    Dropped(Reason, String),
    /// Post numbers or queues changed: the state file is due for a write.
    StateChanged,
}

/// A twisterd reply to a request, typed.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// Stored: the height the post was signed at, when the answer tells.
    Posted(Result<Option<i64>, TwisterError>),
    LastHave(Result<BTreeMap<String, i64>, TwisterError>),
    Height(Result<Option<i64>, TwisterError>),
}
