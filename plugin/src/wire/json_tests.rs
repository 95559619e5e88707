use super::*;
use crate::wire::{decode, decode_items};

/// A message to encode (also for the dense format's tests).
pub(in crate::wire) fn msg(topic: &str, payload: &[u8], qos: u8, retain: bool) -> Message {
    Message {
        topic: topic.into(),
        payload: payload.into(),
        qos,
        retain,
    }
}

#[test]
fn envelope_round_trips_a_batch() {
    let batch = [
        msg("a/b", b"hello", 0, false),
        msg("ü/€ \"q\"", &[0, 255, 10], 2, true),
        msg("e", b"", 1, false),
    ];
    let items: Vec<String> = batch.iter().map(encode_item).collect();
    let text = envelope(7, items.iter().map(String::as_str));
    assert!(text.is_ascii());
    assert_eq!(
        text.len(),
        envelope_size(7, items.len(), items.iter().map(String::len).sum())
    );
    assert_eq!(decode(&text).unwrap(), batch.to_vec());
}

#[test]
fn text_payloads_travel_as_text_when_shorter() {
    let text = msg("t", br#"{"temp": 21.5, "unit": "C"}"#, 0, false);
    let item = encode_item(&text);
    assert!(
        item.contains("\"x\":") && !item.contains("\"p\":"),
        "{item}"
    );
    let binary = msg("t", &[0xff, 0xfe, 0], 0, false);
    assert!(encode_item(&binary).contains("\"p\":"));
    let cjk = msg("t", "中文中文".as_bytes(), 0, false);
    assert!(
        encode_item(&cjk).contains("\"p\":"),
        "escaped CJK is longer than base64"
    );
    for m in [text, binary, cjk, msg("t", b"", 1, true)] {
        assert_eq!(
            decode(&envelope(1, [encode_item(&m).as_str()])).unwrap(),
            vec![m]
        );
    }
    assert!(decode(r#"{"v":1,"m":[{"t":"a","x":5}]}"#).is_err());
    assert!(
        decode(r#"{"v":1,"m":[{"t":"a","x":"s","p":"eA=="}]}"#).is_err(),
        "one payload only"
    );
}

#[test]
fn queued_items_of_both_formats_give_back_their_message() {
    let m = msg("a/b", b"payload", 1, true);
    assert_eq!(
        item_message(&encode_item(&m)).map(|i| i.message),
        Some(m.clone())
    );
    let poc = Message { retain: false, ..m };
    assert_eq!(
        item_message(&encode_poc(&poc)).map(|i| i.message),
        Some(poc)
    );
    assert!(item_message("garbage").is_none());
}

#[test]
fn large_messages_are_cut_into_fragments_that_fit_and_join_back() {
    let payload: Vec<u8> = (0..20_000u32).map(|i| (i * 7) as u8).collect();
    let m = msg("big/ü", &payload, 2, true);
    let items = encode_fragments(&m, 42, 1800, None).unwrap();
    assert!(items.len() > 10);
    assert!(items.iter().all(|i| i.len() <= 1800), "each fragment fits");
    let mut joined = Vec::new();
    for (n, text) in items.iter().enumerate() {
        let got = decode_items(&envelope(1, [text.as_str()]))
            .unwrap()
            .pop()
            .unwrap();
        assert_eq!(
            got.fragment,
            Some(Fragment {
                id: 42,
                index: n as u32,
                count: items.len() as u32
            })
        );
        assert_eq!(
            (
                got.message.topic.as_str(),
                got.message.qos,
                got.message.retain
            ),
            ("big/ü", 2, true)
        );
        joined.extend(got.message.payload);
        assert!(
            decode(&envelope(1, [text.as_str()])).is_err(),
            "a fragment is not a whole message"
        );
    }
    assert_eq!(joined, payload);
    assert!(
        encode_fragments(&m, 1, 40, None).is_none(),
        "no room for any payload"
    );
    for bad in [r#"[1,2]"#, r#"[1,3,3]"#, r#""x""#, r#"[1,0,1000001]"#] {
        let text = format!(r#"{{"v":1,"m":[{{"t":"a","p":"","f":{bad}}}]}}"#);
        assert!(decode_items(&text).is_err(), "{bad}");
    }
}

#[test]
fn mentions_and_hashtags_are_escaped() {
    let text = encode_item(&msg("users/@bob/#x", b"", 0, false));
    assert!(!text.contains('@') && !text.contains('#'), "{text}");
    assert_eq!(
        decode(&envelope(1, [text.as_str()])).unwrap()[0].topic,
        "users/@bob/#x"
    );
}

#[test]
fn proof_of_concept_messages_are_read_and_written() {
    let poc = r#"{"topic": "doors/1", "payload": "b3Blbg==", "qos": 1}"#;
    assert_eq!(
        decode(poc).unwrap(),
        vec![msg("doors/1", b"open", 1, false)]
    );
    let m = msg("doors/2", b"shut", 0, false);
    assert_eq!(decode(&encode_poc(&m)).unwrap(), vec![m]);
}

#[test]
fn garbage_is_an_error_not_a_panic() {
    for bad in [
        "",
        "hello world",
        "[1,2]",
        "{}",
        r#"{"v":1}"#,
        r#"{"v":"x","m":[]}"#,
        r#"{"topic":"a"}"#,
        r#"{"topic":"a","payload":"!!"}"#,
        r#"{"topic":"a","payload":"","qos":7}"#,
        r#"{"v":1,"m":[{"t":"a","p":"","r":"x"}]}"#,
        "{\"topic\":\"a\",\"payload\":\"\u{0}\"}",
    ] {
        assert!(decode(bad).is_err(), "{bad:?}");
    }
    assert_eq!(decode(r#"{"v":2,"m":[]}"#), Err(WireError::Version(2)));
}

#[test]
fn message_ids_travel_in_items_and_fragments_and_are_checked() {
    let id = MessageId {
        epoch: 1_790_000_000_000,
        seq: u64::MAX,
    };
    let m = msg("a/b", b"hello", 1, false);
    let item = encode_item_with_id(&m, Some(id));
    let got = decode_items(&envelope(3, [item.as_str()])).unwrap();
    assert_eq!((got[0].message.clone(), got[0].id), (m.clone(), Some(id)));
    assert_eq!(item_message(&item).and_then(|i| i.id), Some(id));
    let plain = decode_items(&envelope(3, [encode_item(&m).as_str()])).unwrap();
    assert_eq!(plain[0].id, None, "posts older than ids");
    let big = msg("big", &[9u8; 5000], 2, false);
    let parts = encode_fragments(&big, 5, 1000, Some(id)).unwrap();
    assert!(parts.iter().all(|p| p.len() <= 1000));
    for p in &parts {
        assert_eq!(
            decode_items(&envelope(1, [p.as_str()])).unwrap()[0].id,
            Some(id)
        );
    }
    for bad in [
        r#""1""#, "[1]", "[1,2,3]", "[-1,2]", "[1,2.5]", "{}", "null",
    ] {
        let text = format!(r#"{{"v":1,"m":[{{"t":"a","x":"","i":{bad}}}]}}"#);
        assert!(decode_items(&text).is_err(), "{bad}");
    }
    let poc = r#"{"topic":"a","payload":"","i":"whatever"}"#;
    assert_eq!(decode_items(poc).unwrap()[0].id, None, "poc has no ids");
}

#[test]
fn unknown_members_are_ignored_for_later_versions_of_v1() {
    let text = r#"{"v":1,"s":3,"ack":[1,2],"m":[{"t":"a","p":"eA==","q":0,"id":99}]}"#;
    assert_eq!(decode(text).unwrap(), vec![msg("a", b"x", 0, false)]);
}

#[test]
fn hostile_fragments_and_junk_are_errors_not_panics() {
    let with_fragment = |f: &str| format!(r#"{{"v":1,"m":[{{"t":"a","p":"","f":{f}}}]}}"#);
    for bad in [
        "[1,0,0]",
        "[1,5,5]",
        "[1,6,5]",
        "[1,0,100001]",
        "[1,0,4294967296]",
        "[1,4294967296,4294967297]",
        "[1,0,18446744073709551615]",
        "[1,0,18446744073709551616]",
        "[-1,0,2]",
        "[1,-1,2]",
        "[1.5,0,2]",
        "[1,0,2.0]",
        "[1,0,1e3]",
        "[18446744073709551616,0,2]",
        "[1,0]",
        "[1,0,2,3]",
        "[]",
        "[[1],0,2]",
        r#"["1",0,2]"#,
        "{}",
        "null",
        "true",
    ] {
        assert!(decode_items(&with_fragment(bad)).is_err(), "{bad}");
    }
    let ok = decode_items(&with_fragment("[18446744073709551615,99999,100000]")).unwrap();
    assert_eq!(
        ok[0].fragment,
        Some(Fragment {
            id: u64::MAX,
            index: 99_999,
            count: 100_000
        })
    );
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(decode_items(&deep).is_err(), "too long");
    let nested = format!(
        r#"{{"v":1,"m":[{{"t":"a","p":"","x":{}1{}}}]}}"#,
        "[".repeat(5_000),
        "]".repeat(5_000)
    );
    assert!(decode_items(&nested).is_err(), "nested past serde's limit");
    let many: Vec<&str> = std::iter::repeat(r#"{"t":"a","x":""}"#)
        .take(MAX_ITEMS + 1)
        .collect();
    let text = envelope(1, many.iter().copied());
    assert!(text.len() < MAX_TEXT_BYTES);
    assert_eq!(decode_items(&text), Err(WireError::TooManyItems));
    assert_eq!(
        decode_items(&envelope(1, many[1..].iter().copied())).map(|v| v.len()),
        Ok(MAX_ITEMS)
    );
    for junk in [
        "\u{0}",
        r#"{"v":1,"m":[{"t":"\ud800","x":""}]}"#,
        r#"{"v":1,"m":[{"t":"a","p":"====","q":0}]}"#,
        r#"{"v":1,"m":[{"t":"a","p":"eA==","q":-1}]}"#,
        r#"{"v":1,"m":[{"t":"a","p":"eA==","q":18446744073709551616}]}"#,
        r#"{"v":1,"m":[{"t":"a","p":"eA==","r":-1}]}"#,
        r#"{"v":1,"m":[null,1,"x",[]]}"#,
        r#"{"v":1,"m":{}}"#,
        r#"{"v":18446744073709551616,"m":[]}"#,
        r#"{"v":-1,"m":[]}"#,
        r#"{"topic":"a","payload":"eA==","f":[1,0,2]}"#,
        "\u{feff}{}",
    ] {
        assert!(decode_items(junk).is_err(), "{junk}");
    }
    // A queued item of our own may be as long as plugin_opt_max_message_bytes allows.
    let big = msg("t", &vec![b'x'; 100_000], 0, false);
    assert_eq!(
        item_message(&encode_item(&big)).map(|i| i.message),
        Some(big)
    );
}
