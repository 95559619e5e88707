use super::*;

fn opts(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn base() -> Vec<(&'static str, &'static str)> {
    vec![
        ("rpc_user", "rpc"),
        ("rpc_password", "secret"),
        ("user", "alice"),
    ]
}

fn with(extra: &[(&'static str, &'static str)]) -> Result<Config, ConfigError> {
    let mut l = base();
    l.extend_from_slice(extra);
    parse(&opts(&l))
}

#[test]
fn minimal_configuration_gets_defaults() {
    let c = with(&[]).unwrap();
    assert_eq!(c.rpc_url, "http://127.0.0.1:28332/");
    assert_eq!(c.poll_interval, Duration::from_secs(1));
    assert_eq!(c.access, AccessMode::Auto);
    assert_eq!(c.wire_format, WireFormat::V2);
    assert!(!c.create_user);
    assert!(c.follow.is_empty() && c.publish.is_empty());
}

#[test]
fn lists_repeat_and_split() {
    let c = with(&[
        ("follow", "bob, carol"),
        ("follow", "dave alice"),
        ("publish", "sensors/#"),
        ("publish", "alerts/+"),
        ("private", "doors/# bob,carol"),
        ("subscribe", "cmd/alice/#"),
    ])
    .unwrap();
    assert_eq!(
        c.follow,
        vec!["bob", "carol", "dave"],
        "ourselves is never in the follow list"
    );
    assert_eq!(c.publish, vec!["sensors/#", "alerts/+"]);
    assert_eq!(
        c.private,
        vec![PrivateRule {
            filter: "doors/#".into(),
            users: vec!["bob".into(), "carol".into()]
        }]
    );
    let forwards = |t: &str| !c.router.route(t).is_empty();
    assert!(forwards("doors/1") && forwards("sensors/x/y") && !forwards("other"));
}

#[test]
fn every_error_names_its_key() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[("poll_interval_ms", "fast")],
            "plugin_opt_poll_interval_ms",
        ),
        (&[("poll_interval_ms", "5")], "plugin_opt_poll_interval_ms"),
        (&[("follow", "Bob")], "plugin_opt_follow"),
        (&[("publish", "a/#/b")], "plugin_opt_publish"),
        (&[("subscribe", "$share/g/x")], "plugin_opt_subscribe"),
        (&[("private", "doors/#")], "plugin_opt_private"),
        (&[("private", "doors/# alice")], "plugin_opt_private"),
        (&[("access", "maybe")], "plugin_opt_access"),
        (&[("create_user", "perhaps")], "plugin_opt_create_user"),
        (&[("max_queue", "0")], "plugin_opt_max_queue"),
        (&[("rpc_url", "ftp://x")], "plugin_opt_rpc_url"),
        (&[("wire_format", "xml")], "plugin_opt_wire_format"),
        (&[("nonsense", "1")], "plugin_opt_nonsense"),
        (&[("user", "bob")], "plugin_opt_user"),
        (&[("rpc_password_file", "/x")], "plugin_opt_rpc_password"),
        (&[("spool_dir", "")], "plugin_opt_spool_dir"),
        (
            &[("spool_max_bytes", "1000000")],
            "plugin_opt_spool_max_bytes",
        ),
        (
            &[("spool_dir", "/s"), ("spool_max_bytes", "lots")],
            "plugin_opt_spool_max_bytes",
        ),
        (
            &[("spool_dir", "/s"), ("spool_max_bytes", "100000")],
            "plugin_opt_spool_max_bytes",
        ),
    ];
    for (extra, key) in cases {
        let msg = with(extra).unwrap_err().to_string();
        assert!(msg.contains(key), "{extra:?}: '{msg}' should name {key}");
    }
}

#[test]
fn the_spool_is_off_unless_given_a_directory() {
    assert_eq!(with(&[]).unwrap().spool, None);
    let c = with(&[("spool_dir", "/var/spool/mqtt-twister")]).unwrap();
    let spool = c.spool.unwrap();
    assert_eq!(spool.dir, PathBuf::from("/var/spool/mqtt-twister"));
    assert_eq!(spool.max_bytes, DEFAULT_SPOOL_MAX_BYTES);
    let c = with(&[
        ("spool_dir", "/s"),
        ("spool_max_bytes", "1073741824"),
        ("max_message_bytes", "1000000"),
    ])
    .unwrap();
    let g = c.spool.unwrap().geometry;
    assert!(g.slots * g.segment_bytes <= 1 << 30 && g.slots >= 4);
    // Too small for the largest message configured: the error says what is needed.
    let e = with(&[
        ("spool_dir", "/s"),
        ("spool_max_bytes", "8000000"),
        ("max_message_bytes", "10000000"),
    ])
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("plugin_opt_spool_max_bytes") && e.contains("at least"),
        "{e}"
    );
}

#[test]
fn required_keys() {
    assert_eq!(
        parse(&opts(&[("rpc_password", "p"), ("user", "a")])).unwrap_err(),
        ConfigError::Missing("rpc_user")
    );
    assert_eq!(
        parse(&opts(&[("rpc_user", "r"), ("user", "a")])).unwrap_err(),
        ConfigError::Missing("rpc_password")
    );
    assert_eq!(
        parse(&opts(&[("rpc_user", "r"), ("rpc_password", "p")])).unwrap_err(),
        ConfigError::Missing("user")
    );
    let c = parse(&opts(&[
        ("rpc_user", "r"),
        ("rpc_password_file", "/etc/pw"),
        ("user", "a"),
    ]))
    .unwrap();
    assert_eq!(c.rpc_password, PasswordSource::File("/etc/pw".into()));
}

#[test]
fn the_example_configuration_parses() {
    let opts: Vec<(String, String)> = include_str!("../../mosquitto.conf.example")
        .lines()
        .filter_map(|l| l.trim().strip_prefix(PREFIX))
        .map(|l| {
            l.split_once(' ')
                .map(|(k, v)| (k.to_string(), v.trim().to_string()))
                .unwrap()
        })
        .collect();
    let c = parse(&opts).unwrap();
    assert_eq!(
        (c.user.as_str(), c.follow.len(), c.private.len()),
        ("kitchen", 2, 1)
    );
}

#[test]
fn the_password_never_shows_in_debug_output() {
    let c = with(&[]).unwrap();
    assert!(!format!("{c:?}").contains("secret"));
}

#[test]
fn retained_values_in_the_dht_are_on_by_default_and_their_interval_is_bounded() {
    let c = with(&[]).unwrap();
    assert!(c.retained_dht);
    assert_eq!(c.retained_interval, Duration::from_secs(1));
    let c = with(&[("retained_dht", "false"), ("retained_interval_ms", "5000")]).unwrap();
    assert!(!c.retained_dht);
    assert_eq!(c.retained_interval, Duration::from_secs(5));
    for bad in ["999", "x"] {
        let e = with(&[("retained_interval_ms", bad)])
            .unwrap_err()
            .to_string();
        assert!(e.contains("plugin_opt_retained_interval_ms"), "{e}");
    }
    let e = with(&[("retained_dht", "maybe")]).unwrap_err().to_string();
    assert!(e.contains("plugin_opt_retained_dht"), "{e}");
}
