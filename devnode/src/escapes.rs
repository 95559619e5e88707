//! `\uhhhh` escapes as twisterd reads them. Its JSON reader (json_spirit 4.03 on `std::string`) keeps
//! only the low byte of an escape: `\u00e9` becomes the single byte 0xE9 (not UTF-8, so `newpostmsg`
//! refuses the text: "error signing post with private key of user"), `\u4e2d` becomes `-`. Clients
//! that escape non-ASCII (Python's `json.dumps` does by default) break on twisterd; the dev node reads
//! requests the same way so that they break here too. Escapes below 0x80 (control characters, NUL)
//! mean what they say in both.

use std::borrow::Cow;

fn hex(b: u8) -> Option<u16> {
    (b as char).to_digit(16).map(|d| d as u16)
}

/// The request body with every `\uhhhh` escape of 0x80 or more replaced by the byte twisterd makes
/// of it (escaped again where JSON needs it). Borrowed when there is none.
pub fn as_twisterd_reads(body: &[u8]) -> Cow<'_, [u8]> {
    let mut out: Option<Vec<u8>> = None;
    let mut in_string = false;
    let mut i = 0;
    while i < body.len() {
        let b = body[i];
        let escape = in_string && b == b'\\' && i + 1 < body.len();
        if escape && body[i + 1] == b'u' && i + 5 < body.len() {
            let value = body[i + 2..i + 6]
                .iter()
                .try_fold(0u16, |v, d| hex(*d).map(|d| v << 4 | d));
            if let Some(v) = value.filter(|v| *v >= 0x80) {
                let o = out.get_or_insert_with(|| body[..i].to_vec());
                match v as u8 {
                    low @ (0..=0x1f | b'"' | b'\\') => {
                        o.extend_from_slice(format!("\\u{:04x}", low).as_bytes())
                    }
                    low => o.push(low),
                }
                i += 6;
                continue;
            }
        }
        let step = if escape { 2 } else { 1 };
        if b == b'"' && !escape {
            in_string = !in_string;
        }
        if let Some(o) = out.as_mut() {
            o.extend_from_slice(&body[i..(i + step).min(body.len())]);
        }
        i += step;
    }
    match out {
        Some(o) => Cow::Owned(o),
        None => Cow::Borrowed(body),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::{Blocks, Node, State};
    use crate::rpc::{handle_body, Shared};
    use serde_json::{json, Value};

    fn read(body: &str) -> Vec<u8> {
        as_twisterd_reads(body.as_bytes()).into_owned()
    }

    #[test]
    fn escapes_keep_their_low_byte_as_in_twisterd() {
        assert_eq!(read(r#"["\u00e9"]"#), b"[\"\xe9\"]");
        assert_eq!(read(r#"["\u4e2d"]"#), b"[\"-\"]");
        assert_eq!(
            read(r#"["\u0122"]"#),
            b"[\"\\u0022\"]",
            "a quote, escaped again"
        );
        assert_eq!(
            read(r#"["\u00c3\u00a9"]"#),
            "[\"é\"]".as_bytes(),
            "bytes that are UTF-8"
        );
        for same in [
            r#"["\u0001\u0000a"]"#,
            r#"["\\u00e9"]"#,
            "[\"é\"]",
            r#"{"\u00e9":1}"#,
        ] {
            let expect: &[u8] = if same.starts_with('{') {
                b"{\"\xe9\":1}"
            } else {
                same.as_bytes()
            };
            assert_eq!(read(same), expect, "{same}");
        }
        assert_eq!(
            read(r#"\u00e9"#),
            br#"\u00e9"#,
            "outside a string: left to the parser"
        );
    }

    fn call(s: &Shared, body: &str) -> Value {
        serde_json::from_slice(&handle_body(s, body.as_bytes()).body).unwrap()
    }

    #[test]
    fn posts_whose_escapes_twisterd_would_break_are_refused_or_mangled_the_same_way() {
        let s = Shared::new(Node::new(State::default(), Blocks::Manual, 0), None);
        let rpc =
            |m: &str, p: Value| call(&s, &json!({"method": m, "params": p, "id": 1}).to_string());
        rpc("devnode_mine", json!([1]));
        rpc("createwalletuser", json!(["alice"]));
        rpc("sendnewusertransaction", json!(["alice"]));
        rpc("devnode_mine", json!([2]));
        let post = |k: i64, text: &str| {
            call(
                &s,
                &format!(r#"{{"method":"newpostmsg","params":["alice",{k},"{text}"],"id":1}}"#),
            )
        };
        let e = post(0, r"caf\u00e9");
        assert_eq!(
            e["error"]["message"], "error signing post with private key of user",
            "{e}"
        );
        assert_eq!(post(1, r"\u4e2d")["result"]["userpost"]["msg"], "-");
        assert_eq!(post(2, "café")["result"]["userpost"]["msg"], "café");
        assert_eq!(
            post(3, r"a\u0000\u0001")["result"]["userpost"]["msg"],
            "a\u{0}\u{1}"
        );
    }
}
