//! What a post's or DM's text carries, in every format the plugin reads: `json` holds the 2014 proof
//! of concept's format, the envelope v1 and the types all formats decode into; `dense` the dense v2
//! (the `mqtt-twister-wire` crate). `decode_items` tells them apart.

pub mod dense;
mod json;

pub use json::*;

/// Reads a post's or DM's whole text (`msg` + `msg2`): whole messages only.
pub fn decode(text: &str) -> Result<Vec<Message>, WireError> {
    decode_items(text)?
        .into_iter()
        .map(|it| {
            if it.fragment.is_some() {
                Err(WireError::NotMqtt)
            } else {
                Ok(it.message)
            }
        })
        .collect()
}

/// Reads a post's or DM's whole text from the network: messages and fragments of messages. Never
/// panics, and bounded: a text longer than any post is refused unread.
pub fn decode_items(text: &str) -> Result<Vec<Item>, WireError> {
    if text.len() > MAX_TEXT_BYTES {
        return Err(WireError::TooLong(text.len()));
    }
    if dense::is_dense(text) {
        return dense::decode_items(text);
    }
    json::parse_items(text)
}
