//! mqtt-twister's dense wire format, version 2: a post's or DM's text is
//!
//! `{"v":2}` followed by the dense text (`dense`) of a frame: one codec byte, then the batch
//! (`batch`) as it is (codec 0), compressed by zstd (1) or by zstd with the trained telemetry
//! dictionary (2). The writer takes whichever is shortest, so a batch is compressed only when that
//! makes it smaller.
//!
//! What a post's text may hold, and why the dense alphabet is what it is (evidence):
//! - twisterd 0.9.40 counts the *bencoded bytes* of the signed post (2048 at most), not characters;
//!   `msg` is split after 140 characters into `msg` + `msg2`, which readers join.
//! - `newpostmsg` refuses text that is not valid UTF-8 (`createSignedUserpost`, `utf8::num_characters`
//!   in twister-core's `src/twister.cpp`), and peers refuse such posts (`acceptSignedPost`: "invalid
//!   utf8 string"). Its JSON writer puts bytes >= 0x80 out raw, so invalid UTF-8 could not be read
//!   back as JSON either: only valid UTF-8 can be used.
//! - Control characters survive: twisterd's JSON reader turns `\u0001`, `\u001f` and even `\u0000`
//!   into those bytes, its writer escapes bytes below 0x20 as `\u00XX`; the recording has
//!   `"nul?\u0001\u0002\u001f end"` and `"a\u0000b"` posted on one node and read identical on
//!   another. NUL is still left out here (C-string handling in other clients).
//! - `@` and `#` at the start of a word make twisterd put a mention or hashtag into the DHT
//!   (`dispatchHM`): left out.
//! - Non-ASCII must be sent as raw UTF-8, never as `\uhhhh` escapes: twisterd's JSON reader keeps only
//!   the low byte of an escape (`\u00e9` becomes the invalid byte 0xE9, `\u4e2d` becomes `-`).
//!   serde_json writes non-ASCII raw.
//! So the densest safe text is every one-byte character but NUL, `@` and `#` (125) plus the two-byte
//! characters (1,920): 0.882 bytes of data per byte of text (`dense`). The information-theoretic limit
//! of valid UTF-8 is about 0.898 (all of Unicode, NUL included), so binary data can never reach 0.9 of
//! a post's text capacity.

pub mod batch;
pub mod compress;
pub mod dense;
pub mod pack;
pub mod rng;
#[cfg(test)]
pub(crate) mod testing;

pub use rng::Rng;

/// Start of every v2 text; `{"v":N}` with another N is a later version.
pub const PREFIX: &str = "{\"v\":2}";

/// Most messages in one post (the same limit as the v1 reader's).
pub const MAX_RECORDS: usize = 512;
/// Largest batch before compression, written or read: a hostile post cannot expand beyond it.
pub const MAX_BATCH_BYTES: usize = 64 << 10;
/// Most fragments one message may be cut into.
pub const MAX_FRAGMENTS: u32 = 100_000;

/// Codecs of the frame's first byte.
pub const CODEC_NONE: u8 = 0;
pub const CODEC_ZSTD: u8 = 1;
pub const CODEC_ZSTD_TELEMETRY: u8 = 2;

/// A part of a message too large for one post.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fragment {
    pub id: u64,
    pub index: u32,
    pub count: u32,
}

/// A forwarded message's identity at its sender: `seq` counts the sender's messages within one
/// `epoch` (a spool's lifetime, or one run without a spool). Receivers drop a second copy of an id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageId {
    pub epoch: u64,
    pub seq: u64,
}

/// One message (or fragment of one) in a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
    pub fragment: Option<Fragment>,
    /// Absent in batches of writers older than ids (and in the fragments' own numbering).
    pub id: Option<MessageId>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WireError {
    #[error("envelope version {0} is newer than this plugin reads")]
    Version(u64),
    #[error("not a v2 text")]
    NotV2,
    #[error("dense text: {0}")]
    Dense(#[from] dense::DenseError),
    #[error("unknown codec {0}")]
    Codec(u8),
    #[error("batch ends too early")]
    Truncated,
    #[error("more than {MAX_RECORDS} messages in one post")]
    TooManyRecords,
    #[error("{0}")]
    Malformed(&'static str),
}

/// How a writer may compress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Try zstd with the trained dictionary.
    pub dictionary: bool,
    /// Try zstd without it.
    pub plain: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            dictionary: true,
            plain: false,
        }
    }
}

/// The shortest frame of a batch: codec byte and body.
pub fn frame(raw: &[u8], options: Options) -> Vec<u8> {
    let mut best: Vec<u8> = Vec::with_capacity(raw.len() + 1);
    best.push(CODEC_NONE);
    best.extend_from_slice(raw);
    for (codec, tried) in [
        (CODEC_ZSTD_TELEMETRY, options.dictionary),
        (CODEC_ZSTD, options.plain),
    ] {
        if !tried {
            continue;
        }
        if let Some(z) = compress::compress(raw, codec == CODEC_ZSTD_TELEMETRY) {
            if z.len() + 1 < best.len() {
                best.clear();
                best.push(codec);
                best.extend_from_slice(&z);
            }
        }
    }
    best
}

/// The text of a frame.
pub fn text_of_frame(frame: &[u8]) -> String {
    let mut text = String::with_capacity(PREFIX.len() + dense::encoded_len(frame.len()));
    text.push_str(PREFIX);
    dense::encode(frame, &mut text);
    text
}

/// Length in bytes of the text of a frame of `n` bytes.
pub fn text_len(frame_len: usize) -> usize {
    PREFIX.len() + dense::encoded_len(frame_len)
}

/// The v2 text of a batch.
pub fn encode(seq: u64, records: &[Record], options: Options) -> String {
    text_of_frame(&frame(&batch::encode(seq, records.iter()), options))
}

/// The envelope version a text announces with a `{"v":N}` start, if any.
pub fn version(text: &str) -> Option<u64> {
    let rest = text.strip_prefix("{\"v\":")?;
    let end = rest.find('}')?;
    let digits = &rest[..end];
    if digits.is_empty() || digits.len() > 19 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Sequence number and messages of a v2 text. Any text is an error or a batch, never a panic, and
/// reading it allocates no more than `MAX_BATCH_BYTES` plus the text's own size.
pub fn decode(text: &str) -> Result<(u64, Vec<Record>), WireError> {
    let Some(body) = text.strip_prefix(PREFIX) else {
        return Err(match version(text) {
            Some(v) => WireError::Version(v),
            None => WireError::NotV2,
        });
    };
    let frame = dense::decode(body)?;
    let (&codec, rest) = frame.split_first().ok_or(WireError::Truncated)?;
    let raw = match codec {
        CODEC_NONE => {
            if rest.len() > MAX_BATCH_BYTES {
                return Err(WireError::Malformed("batch too large"));
            }
            rest.to_vec()
        }
        CODEC_ZSTD | CODEC_ZSTD_TELEMETRY => {
            compress::decompress(rest, codec == CODEC_ZSTD_TELEMETRY, MAX_BATCH_BYTES)?
        }
        other => return Err(WireError::Codec(other)),
    };
    batch::decode(&raw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{random_record, Rng};

    #[test]
    fn texts_round_trip_and_compress_only_when_smaller() {
        let mut rng = Rng(21);
        for round in 0..200 {
            let n = 1 + rng.below(30) as usize;
            let records: Vec<Record> = (0..n).map(|_| random_record(&mut rng, 200)).collect();
            let text = encode(round, &records, Options::default());
            assert!(text.starts_with(PREFIX));
            assert_eq!(decode(&text).unwrap(), (round, records.clone()));
            let raw = batch::encode(round, records.iter());
            assert!(
                text.len() <= text_len(raw.len() + 1),
                "never longer than uncompressed"
            );
        }
    }

    #[test]
    fn telemetry_shrinks_several_fold() {
        let records: Vec<Record> = (0..40)
            .map(|i| Record {
                topic: format!("zigbee2mqtt/sensor_{}", i % 7),
                payload: format!(
                    r#"{{"battery":{},"humidity":{}.{},"linkquality":{},"temperature":2{}.{},"voltage":29{}}}"#,
                    90 + i % 10, 40 + i % 9, i % 10, 100 + i, i % 10, i % 7, 10 + i % 89
                )
                .into_bytes(),
                qos: 0,
                retain: false,
                fragment: None,
                id: Some(MessageId {
                    epoch: 1_790_000_000_000,
                    seq: 500 + i,
                }),
            })
            .collect();
        let raw = batch::encode(1, records.iter());
        let text = encode(1, &records, Options::default());
        assert!(
            text.len() * 3 < raw.len(),
            "{} text bytes for {} raw",
            text.len(),
            raw.len()
        );
    }

    #[test]
    fn other_versions_and_foreign_texts_are_named() {
        assert_eq!(decode("{\"v\":3}abc"), Err(WireError::Version(3)));
        assert_eq!(decode("{\"v\":1,\"m\":[]}"), Err(WireError::NotV2));
        assert_eq!(decode("hello"), Err(WireError::NotV2));
        assert_eq!(decode(PREFIX), Err(WireError::Truncated));
        let mut unknown = String::from(PREFIX);
        dense::encode(&[9, 0, 0], &mut unknown);
        assert_eq!(decode(&unknown), Err(WireError::Codec(9)));
        assert_eq!(version("{\"v\":12}"), Some(12));
        assert_eq!(version("{\"v\":}"), None);
    }

    #[test]
    fn random_texts_never_panic() {
        let mut rng = Rng(33);
        let good = encode(5, &[random_record(&mut rng, 100)], Options::default());
        for _ in 0..5000 {
            let mut bytes: Vec<char> = good.chars().collect();
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(bytes.len() as u64) as usize;
                bytes[at] = char::from_u32(rng.below(0x900) as u32).unwrap_or('x');
            }
            let text: String = bytes.into_iter().collect();
            let _ = decode(&text);
            let mut junk = String::from(PREFIX);
            junk.extend(
                (0..rng.below(200))
                    .map(|_| char::from_u32(1 + rng.below(0x7ff) as u32).unwrap_or('x')),
            );
            let _ = decode(&junk);
        }
    }
}
