//! Packing: a queued message encoded once (`Queued`), and how many queued items fit in one post or
//! DM, at the exact size twisterd allows (`twister_rules`' size model, with the widest header fields a
//! post can have: the height and time are not known when the post is built).

use crate::config::WireFormat;
use crate::wire::{self, Message};
use std::collections::VecDeque;
use twister_rules::PostHeader;

/// twisterd keeps this many characters of a post's text in `msg`, the rest in `msg2`.
pub const POC_BRIDGE_CHARS: usize = 140;
/// Worst-case digits for the fields of a post we cannot know in advance.
const WORST_HEIGHT: i64 = 99_999_999;
const WORST_TIME: i64 = 9_999_999_999;

/// What a queued item carries.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    Whole(Message),
    /// One fragment of a message too large for a post (its encoded item says which).
    Fragment,
}

/// A message waiting for a post, encoded once (in the configured wire format) when queued.
#[derive(Debug, Clone, PartialEq)]
pub struct Queued {
    pub payload: Payload,
    pub encoded: String,
    /// The message's id (`crate::wire::MessageId`): in v1 and v2 posts, not in the poc format.
    pub id: Option<wire::MessageId>,
}

impl Queued {
    pub fn new(message: Message, format: WireFormat, id: Option<wire::MessageId>) -> Self {
        let encoded = match format {
            // v2 queues v1 items too and compresses a post's batch of them when it is made.
            WireFormat::V1 | WireFormat::V2 => wire::encode_item_with_id(&message, id),
            WireFormat::Poc => wire::encode_poc(&message),
        };
        Queued {
            payload: Payload::Whole(message),
            encoded,
            id,
        }
    }

    /// An item as the state file keeps it: a fragment as it was, a whole message re-encoded in the
    /// format configured now. `None`: not an item of ours.
    pub fn restored(item: &str, format: WireFormat) -> Option<Self> {
        let it = wire::item_message(item)?;
        Some(match it.fragment {
            Some(_) => Queued {
                payload: Payload::Fragment,
                encoded: item.to_string(),
                id: it.id,
            },
            None => Queued::new(it.message, format, it.id),
        })
    }

    /// As the state file keeps it (whole messages in the format-neutral v1 item).
    pub(super) fn saved(&self) -> String {
        match &self.payload {
            Payload::Whole(m) => wire::encode_item_with_id(m, self.id),
            Payload::Fragment => self.encoded.clone(),
        }
    }
}

/// The header of post `k` of `user`, with the widest fields it can have.
fn header(user: &str, k: i64) -> PostHeader<'_> {
    PostHeader {
        user,
        k,
        lastk: Some(k),
        height: WORST_HEIGHT,
        time: WORST_TIME,
        reply: None,
    }
}

/// The largest text post `k` (or a DM to `to`) can carry.
pub fn room(user: &str, k: i64, to: &Option<String>) -> usize {
    match to {
        None => twister_rules::max_post_ascii(&header(user, k)),
        Some(u) => twister_rules::max_dm_bytes(&header(user, k), u),
    }
}

/// How many queued items fit in one post of `budget` bytes (0: the first alone is too big).
pub fn fit(format: WireFormat, seq: u64, items: &VecDeque<Queued>, budget: usize) -> usize {
    if format == WireFormat::Poc {
        return usize::from(items.front().is_some_and(|i| i.encoded.len() <= budget));
    }
    let mut total = 0;
    let mut n = 0;
    for item in items {
        if wire::envelope_size(seq, n + 1, total + item.encoded.len()) > budget {
            break;
        }
        total += item.encoded.len();
        n += 1;
    }
    n
}

/// The text of a post of the first `n` items.
pub fn text(format: WireFormat, seq: u64, items: &VecDeque<Queued>, n: usize) -> String {
    match format {
        WireFormat::Poc => items[0].encoded.clone(),
        WireFormat::V1 | WireFormat::V2 => {
            wire::envelope(seq, items.iter().take(n).map(|i| i.encoded.as_str()))
        }
    }
}

impl super::Outbox {
    /// The items of the queue to `to` that fit one post, and its text (`None`: not even one).
    pub(super) fn pack(&self, to: &Option<String>) -> Option<(usize, String)> {
        let budget = self.room(to);
        let empty = VecDeque::new();
        let items = match to {
            None => &self.public.items,
            Some(u) => self.private.get(u).map(|q| &q.items).unwrap_or(&empty),
        };
        let format = self.settings.wire_format;
        match format {
            // v2 is packed by `wire::dense::pack`, which makes and measures its text itself.
            WireFormat::V2 => {
                crate::wire::dense::pack(items.iter().map(|i| i.encoded.as_str()), self.seq, budget)
            }
            _ => Some(fit(format, self.seq, items, budget))
                .filter(|n| *n > 0)
                .map(|n| (n, text(format, self.seq, items, n))),
        }
    }
}
