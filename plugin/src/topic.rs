//! MQTT topic names and filters as the MQTT 3.1.1/5.0 specifications define them.

/// Longest topic MQTT can carry (a two-byte length prefix).
const MAX_TOPIC_BYTES: usize = 65_535;
const SHARED_PREFIX: &str = "$share/";

/// A topic a message may be published to: not empty, no wildcards, no NUL, at most 65,535 bytes.
pub fn is_valid_topic_name(topic: &str) -> bool {
    !topic.is_empty() && topic.len() <= MAX_TOPIC_BYTES && !topic.contains(['+', '#', '\0'])
}

/// A topic filter: `+` alone in its level, `#` alone and last.
pub fn is_valid_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.len() > MAX_TOPIC_BYTES || filter.contains('\0') {
        return false;
    }
    let levels: Vec<&str> = filter.split('/').collect();
    levels.iter().enumerate().all(|(i, level)| match *level {
        "+" => true,
        "#" => i == levels.len() - 1,
        l => !l.contains(['+', '#']),
    })
}

/// The filter a subscription really matches: `$share/<group>/<filter>` shares `<filter>`.
pub fn strip_shared(filter: &str) -> Option<&str> {
    match filter.strip_prefix(SHARED_PREFIX) {
        None => Some(filter),
        Some(rest) => rest
            .split_once('/')
            .map(|(_, f)| f)
            .filter(|f| !f.is_empty()),
    }
}

/// Whether `topic` matches `filter`. Topics starting with `$` are not matched by a filter whose first
/// level is a wildcard.
///
/// Byte by byte, without splitting: this runs in the broker's MESSAGE callback. `filter` must be
/// valid (`is_valid_filter`).
pub fn matches(filter: &str, topic: &str) -> bool {
    matches_bytes(filter.as_bytes(), topic.as_bytes())
}

/// `matches` on bytes: the MESSAGE callback routes a topic before checking that it is UTF-8.
pub fn matches_bytes(f: &[u8], t: &[u8]) -> bool {
    if t.first() == Some(&b'$') && matches!(f.first(), Some(b'+' | b'#')) {
        return false;
    }
    let (mut i, mut j) = (0, 0);
    loop {
        // At the start of a level of both.
        match f.get(i) {
            Some(b'#') => return true,
            Some(b'+') => {
                i += 1;
                while j < t.len() && t[j] != b'/' {
                    j += 1;
                }
            }
            _ => {
                while i < f.len() && f[i] != b'/' {
                    if t.get(j) != Some(&f[i]) {
                        return false;
                    }
                    i += 1;
                    j += 1;
                }
                if j < t.len() && t[j] != b'/' {
                    return false;
                }
            }
        }
        match (i < f.len(), j < t.len()) {
            (false, false) => return true,
            (true, true) => {
                i += 1;
                j += 1;
            }
            // `a/#` matches `a` too.
            (true, false) => return &f[i..] == b"/#",
            (false, true) => return false,
        }
    }
}

/// Topics a broker must never take from the network: `$SYS`, `$CONTROL` and every other `$` topic.
pub fn is_injectable(topic: &str) -> bool {
    is_valid_topic_name(topic) && !topic.starts_with('$')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_level_wildcard() {
        assert!(matches("sensors/+/temp", "sensors/1/temp"));
        assert!(matches("sensors/+/temp", "sensors//temp"));
        assert!(!matches("sensors/+/temp", "sensors/1/2/temp"));
        assert!(!matches("sensors/+", "sensors"));
        assert!(matches("+", "a"));
        assert!(!matches("+", "a/b"));
        assert!(matches("+/+", "/b"));
    }

    #[test]
    fn multi_level_wildcard_includes_the_parent() {
        assert!(matches("a/#", "a"));
        assert!(matches("a/#", "a/b/c"));
        assert!(matches("#", "a/b"));
        assert!(!matches("a/#", "b/a"));
        assert!(matches("a/+/#", "a/b"));
    }

    #[test]
    fn exact_and_levels_are_significant() {
        assert!(matches("a/b", "a/b"));
        assert!(!matches("a/b", "a/b/"));
        assert!(!matches("a/b", "a"));
        assert!(!matches("A/b", "a/b"));
    }

    #[test]
    fn dollar_topics_are_not_matched_by_leading_wildcards() {
        assert!(!matches("#", "$SYS/broker/uptime"));
        assert!(!matches("+/broker/uptime", "$SYS/broker/uptime"));
        assert!(matches("$SYS/#", "$SYS/broker/uptime"));
        assert!(!is_injectable("$SYS/x"));
        assert!(!is_injectable("$CONTROL/dynamic-security/v1"));
    }

    #[test]
    fn shared_subscriptions_share_the_inner_filter() {
        assert_eq!(strip_shared("$share/g1/a/+"), Some("a/+"));
        assert_eq!(strip_shared("a/b"), Some("a/b"));
        assert_eq!(strip_shared("$share/g1"), None);
        assert_eq!(strip_shared("$share/g1/"), None);
    }

    /// The specification's matching, written the obvious way.
    fn reference(filter: &str, topic: &str) -> bool {
        if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
            return false;
        }
        let (mut f, mut t) = (filter.split('/'), topic.split('/'));
        loop {
            match (f.next(), t.next()) {
                (Some("#"), _) => return true,
                (Some("+"), Some(_)) => {}
                (Some(fl), Some(tl)) if fl == tl => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }

    #[test]
    fn byte_matcher_agrees_with_the_reference_on_every_pair() {
        let parts = ["a", "b", "", "+", "#", "$SYS", "ab"];
        let mut names: Vec<String> = Vec::new();
        for x in parts {
            names.push(x.to_string());
            for y in parts {
                names.push(format!("{x}/{y}"));
                for z in parts {
                    names.push(format!("{x}/{y}/{z}"));
                }
            }
        }
        let filters: Vec<&String> = names.iter().filter(|n| is_valid_filter(n)).collect();
        let topics: Vec<&String> = names.iter().filter(|n| is_valid_topic_name(n)).collect();
        let mut pairs = 0;
        for f in &filters {
            for t in &topics {
                assert_eq!(matches(f, t), reference(f, t), "filter {f:?} topic {t:?}");
                pairs += 1;
            }
        }
        assert!(pairs > 10_000, "{pairs}");
    }

    #[test]
    fn validity() {
        for ok in ["a", "a/b", "+", "#", "a/+/c", "a/#", "/", "+/+"] {
            assert!(is_valid_filter(ok), "{ok}");
        }
        for bad in ["", "a#", "a/#/b", "a+/b", "a/b+", "#/a", "a\0b"] {
            assert!(!is_valid_filter(bad), "{bad:?}");
        }
        assert!(is_valid_topic_name("a/b c/ü"));
        for bad in ["", "a/+", "a/#", "x\0"] {
            assert!(!is_valid_topic_name(bad), "{bad:?}");
        }
        assert!(!is_valid_topic_name(&"a".repeat(65_536)));
    }
}
