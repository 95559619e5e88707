//! Twister's rules that both sides must agree on: user names, the 140-character `msg` split, and the
//! size of a signed post as twisterd bencodes it (the 2048-byte limit).
//!
//! The size model is the one in `shared/twister/RPC.md`; it reproduces the limits recorded on a real
//! twisterd 0.9.40 to the byte (1,873 ASCII bytes for a post by `alice` at k=29, 1,723 for a DM
//! alice -> bob at k=69). The dev node enforces it; the plugin packs its batches with it.

use serde_json::Value;

pub mod errors;

/// The largest signed post twisterd accepts, bencoded.
pub const MAX_POST_BYTES: usize = 2048;
/// Characters (Unicode scalar values) kept in `msg`; the rest goes to `msg2`.
pub const MSG_CHARS: usize = 140;
/// Length of `sig_userpost` (a compact secp256k1 signature).
pub const SIGNATURE_BYTES: usize = 65;
/// ECIES ephemeral public key in a DM.
pub const DM_KEY_BYTES: usize = 33;
/// HMAC-SHA512 in a DM.
pub const DM_MAC_BYTES: usize = 64;
/// AES block: the DM body is the plaintext rounded up to it.
pub const DM_BLOCK: usize = 16;
/// Longest user name twisterd registers.
pub const MAX_USERNAME: usize = 16;
/// Longest DHT resource name.
pub const MAX_DHT_RESOURCE: usize = 32;
/// Largest bencoded `p` of a DHT "s" (single) item.
pub const MAX_DHT_SINGLE: usize = 8192;
/// Largest bencoded `p` of a DHT "m" (multi) item.
pub const MAX_DHT_MULTI: usize = 768;
/// Items kept per DHT "m" key.
pub const DHT_MULTI_KEEP: usize = 32;

/// 1-16 characters of lowercase ASCII letters, digits and `_`: what a registration transaction accepts.
pub fn is_valid_username(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_USERNAME
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// The largest `k` a user registered at `registration_height` may use at `best_height`.
pub fn max_post_number(best_height: i64, registration_height: i64) -> i64 {
    2 * (best_height - registration_height) + 20
}

/// `newpostmsg` keeps 140 characters in `msg` and puts the rest in `msg2`. An empty text also gets an
/// empty `msg2` (observed on twisterd 0.9.40).
pub fn split_msg(text: &str) -> (&str, Option<&str>) {
    if text.is_empty() {
        return (text, Some(""));
    }
    match text.char_indices().nth(MSG_CHARS) {
        Some((at, _)) => (&text[..at], Some(&text[at..])),
        None => (text, None),
    }
}

fn digits(mut n: u64) -> usize {
    let mut d = 1;
    while n >= 10 {
        n /= 10;
        d += 1;
    }
    d
}

/// Bencoded length of a byte string of `len` bytes: `<len>:<bytes>`.
pub fn bstr_len(len: usize) -> usize {
    digits(len as u64) + 1 + len
}

/// Bencoded length of an integer: `i<n>e`.
pub fn bint_len(n: i64) -> usize {
    2 + digits(n.unsigned_abs()) + usize::from(n < 0)
}

/// Bencoded length of a dictionary key plus its value of `value_len` bytes already encoded.
fn entry(key: &str, value_len: usize) -> usize {
    bstr_len(key.len()) + value_len
}

/// The envelope around every userpost: `d 12:sig_userpost 65:<sig> 8:userpost <userpost> e`.
fn signed(userpost_len: usize) -> usize {
    2 + entry("sig_userpost", bstr_len(SIGNATURE_BYTES)) + entry("userpost", userpost_len)
}

/// What varies between two posts of one user besides the text.
#[derive(Clone, Copy, Debug)]
pub struct PostHeader<'a> {
    pub user: &'a str,
    pub k: i64,
    /// The `k` of the user's previous public post; absent on the first.
    pub lastk: Option<i64>,
    pub height: i64,
    pub time: i64,
    /// `reply: {n, k}` when the post answers another.
    pub reply: Option<(&'a str, i64)>,
}

/// Bencoded size of a signed public post carrying `text`.
pub fn post_size(h: &PostHeader, text: &str) -> usize {
    let (msg, msg2) = split_msg(text);
    let mut up = 2;
    up += entry("height", bint_len(h.height));
    up += entry("k", bint_len(h.k));
    if let Some(lastk) = h.lastk {
        up += entry("lastk", bint_len(lastk));
    }
    up += entry("msg", bstr_len(msg.len()));
    if let Some(m2) = msg2 {
        up += entry("msg2", bstr_len(m2.len()));
    }
    up += entry("n", bstr_len(h.user.len()));
    if let Some((rn, rk)) = h.reply {
        up += entry(
            "reply",
            2 + entry("k", bint_len(rk)) + entry("n", bstr_len(rn.len())),
        );
    }
    up += entry("time", bint_len(h.time));
    signed(up)
}

/// Length of the bencoded DM plaintext `{"msg": text, "to": recipient}`.
pub fn dm_plaintext_len(to: &str, text_bytes: usize) -> usize {
    2 + entry("msg", bstr_len(text_bytes)) + entry("to", bstr_len(to.len()))
}

/// Bencoded size of a signed DM from `h.user` to `to` carrying `text_bytes` bytes of text.
/// `lastk` and `reply` of the header are ignored: a DM has neither.
pub fn dm_size(h: &PostHeader, to: &str, text_bytes: usize) -> usize {
    let plain = dm_plaintext_len(to, text_bytes);
    let body = plain.div_ceil(DM_BLOCK) * DM_BLOCK;
    let dm = 2
        + entry("body", bstr_len(body))
        + entry("key", bstr_len(DM_KEY_BYTES))
        + entry("mac", bstr_len(DM_MAC_BYTES))
        + entry("orig", bint_len(plain as i64));
    let mut up = 2;
    up += entry("dm", dm);
    up += entry("height", bint_len(h.height));
    up += entry("k", bint_len(h.k));
    up += entry("msg", bstr_len(0));
    up += entry("msg2", bstr_len(0));
    up += entry("n", bstr_len(h.user.len()));
    up += entry("time", bint_len(h.time));
    signed(up)
}

/// The most bytes of ASCII text a public post with header `h` can carry.
pub fn max_post_ascii(h: &PostHeader) -> usize {
    // Size grows monotonically with the text length, so a binary search finds the edge.
    let (mut lo, mut hi) = (0usize, MAX_POST_BYTES);
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if post_size(h, &"a".repeat(mid)) <= MAX_POST_BYTES {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    lo
}

/// The most bytes of text a DM with header `h` to `to` can carry.
pub fn max_dm_bytes(h: &PostHeader, to: &str) -> usize {
    let mut n = MAX_POST_BYTES;
    while n > 0 && dm_size(h, to, n) > MAX_POST_BYTES {
        n -= 1;
    }
    n
}

/// What twisterd stores for a JSON value that bencode cannot hold (booleans, floats, null).
pub const UNINITIALIZED: &str = "<uninitialized>";

/// A JSON value as it comes back from the DHT: booleans, floats and null become `"<uninitialized>"`,
/// object keys sorted.
pub fn bencode_normalize(v: &Value) -> Value {
    match v {
        Value::Null | Value::Bool(_) => Value::String(UNINITIALIZED.into()),
        Value::Number(n) if n.as_i64().is_none() => Value::String(UNINITIALIZED.into()),
        Value::Array(a) => Value::Array(a.iter().map(bencode_normalize).collect()),
        Value::Object(o) => {
            let mut keys: Vec<&String> = o.keys().collect();
            keys.sort();
            Value::Object(
                keys.into_iter()
                    .map(|k| (k.clone(), bencode_normalize(&o[k])))
                    .collect(),
            )
        }
        other => other.clone(),
    }
}

/// Bencoded length of a JSON value (after normalization).
pub fn bencode_len(v: &Value) -> usize {
    match v {
        Value::String(s) => bstr_len(s.len()),
        Value::Number(n) => n
            .as_i64()
            .map(bint_len)
            .unwrap_or(bstr_len(UNINITIALIZED.len())),
        Value::Array(a) => 2 + a.iter().map(bencode_len).sum::<usize>(),
        Value::Object(o) => {
            2 + o
                .iter()
                .map(|(k, v)| bstr_len(k.len()) + bencode_len(v))
                .sum::<usize>()
        }
        _ => bstr_len(UNINITIALIZED.len()),
    }
}

/// Worst-case bencoded size of the signed `p` of a DHT item holding `value` for a user of 16
/// characters and a resource name of 32: what a writer must keep under the 8192/768-byte limits.
pub fn dht_value_size(value: &Value, single: bool) -> usize {
    let target = 2
        + bstr_len(1)
        + bstr_len(MAX_USERNAME)
        + bstr_len(1)
        + bstr_len(MAX_DHT_RESOURCE)
        + bstr_len(1)
        + bstr_len(1);
    let mut p = 2
        + bstr_len(6)
        + bint_len(99_999_999)
        + bstr_len(6)
        + target
        + bstr_len(4)
        + bint_len(9_999_999_999);
    if single {
        p += bstr_len(3) + bint_len(i64::MAX);
    }
    p + bstr_len(1) + bencode_len(&bencode_normalize(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice(k: i64, lastk: Option<i64>) -> PostHeader<'static> {
        PostHeader {
            user: "alice",
            k,
            lastk,
            height: 53,
            time: 1_795_572_614,
            reply: None,
        }
    }

    #[test]
    fn recorded_post_limits_match_to_the_byte() {
        // twisterd 0.9.40: alice at k=29 (lastk 28, height 53) could post 1873 ASCII bytes, not 1874.
        let h = alice(29, Some(28));
        assert_eq!(post_size(&h, &"a".repeat(1873)), 2048);
        assert!(post_size(&h, &"a".repeat(1874)) > MAX_POST_BYTES);
        assert_eq!(max_post_ascii(&h), 1873);
        // 936 two-byte, 624 three-byte, 468 four-byte characters fit; one more does not.
        for (ch, max) in [('é', 936usize), ('中', 624), ('😀', 468)] {
            let ok: String = std::iter::repeat(ch).take(max).collect();
            let over: String = std::iter::repeat(ch).take(max + 1).collect();
            assert!(post_size(&h, &ok) <= MAX_POST_BYTES, "{ch} x {max}");
            assert!(post_size(&h, &over) > MAX_POST_BYTES, "{ch} x {}", max + 1);
        }
    }

    #[test]
    fn recorded_dm_limits_match_to_the_byte() {
        let h = PostHeader {
            user: "alice",
            k: 69,
            lastk: None,
            height: 53,
            time: 1_795_572_652,
            reply: None,
        };
        assert!(dm_size(&h, "bob", 1723) <= MAX_POST_BYTES);
        assert!(dm_size(&h, "bob", 1724) > MAX_POST_BYTES);
        assert_eq!(max_dm_bytes(&h, "bob"), 1723);
        // 430 four-byte characters (1720 bytes) fit, 431 do not.
        assert!(dm_size(&h, "bob", 1720) <= MAX_POST_BYTES);
        assert!(dm_size(&h, "bob", 1724) > MAX_POST_BYTES);
    }

    #[test]
    fn longer_names_leave_less_room() {
        let short = max_post_ascii(&alice(5, Some(4)));
        let long = max_post_ascii(&PostHeader {
            user: "sixteen_chars_xx",
            ..alice(5, Some(4))
        });
        // 11 more name bytes and one more digit in its length prefix
        assert_eq!(short - long, 12);
    }

    #[test]
    fn msg_is_split_at_140_characters() {
        let text: String = "é".repeat(150);
        let (msg, msg2) = split_msg(&text);
        assert_eq!(msg.chars().count(), 140);
        assert_eq!(msg2.unwrap().chars().count(), 10);
        assert_eq!(split_msg("short"), ("short", None));
        assert_eq!(split_msg(""), ("", Some("")));
        let exact = "x".repeat(140);
        assert_eq!(split_msg(&exact), (exact.as_str(), None));
    }

    #[test]
    fn usernames_as_twisterd_registers_them() {
        for ok in ["alice", "a", "bob_2", "sixteen_chars_xx"] {
            assert!(is_valid_username(ok), "{ok}");
        }
        for bad in ["", "Alice", "this_name_is_longer_than16", "a-b", "a b", "é"] {
            assert!(!is_valid_username(bad), "{bad}");
        }
    }

    #[test]
    fn post_budget_formula() {
        assert_eq!(max_post_number(24, 2), 64);
        assert_eq!(max_post_number(54, 2), 124);
        assert_eq!(max_post_number(2, 2), 20);
    }
}
