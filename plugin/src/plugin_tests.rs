//! The callbacks' logic without a broker: fake clients, a fake broker that records what it is asked,
//! and a worker handle with no thread behind it (its channels' other ends are read here).

use super::*;
use crate::bus::Outbound;
use crate::bus::ToBrokerSender;
use crossbeam_channel::Receiver;
use std::cell::RefCell;

struct FakeClient {
    id: Option<&'static str>,
    protocol: i32,
    clean: bool,
}

const MQTT5: FakeClient = FakeClient {
    id: Some("c1"),
    protocol: 5,
    clean: true,
};
const MQTT311: FakeClient = FakeClient {
    id: Some("c1"),
    protocol: 4,
    clean: true,
};

impl Client for &FakeClient {
    fn id(&self) -> Option<&str> {
        self.id
    }
    fn protocol_version(&self) -> i32 {
        self.protocol
    }
    fn clean_session(&self) -> bool {
        self.clean
    }
}

#[derive(Default)]
struct FakeBroker {
    logs: RefCell<Vec<(Level, String)>>,
    published: RefCell<Vec<Message>>,
}

impl Broker for FakeBroker {
    fn log(&self, level: Level, line: &str) {
        self.logs.borrow_mut().push((level, line.to_string()));
    }
    fn publish(&self, m: Message) -> Result<(), PublishRefused> {
        if m.topic.starts_with('$') {
            return Err(PublishRefused::Topic("a $ topic"));
        }
        self.published.borrow_mut().push(m);
        Ok(())
    }
}

struct Setup {
    plugin: Plugin,
    inbox: Receiver<ToWorker>,
    to_broker: ToBrokerSender,
    outbound: Arc<Outbound>,
}

fn setup(v21: bool, max_queue: usize, acl: AclAnswer) -> Setup {
    let options: Vec<(String, String)> = [
        ("rpc_user", "rpc"),
        ("rpc_password", "secret"),
        ("user", "alice"),
        ("publish", "doors/#"),
        ("private", "secret/+ bob"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let cfg = Arc::new(config::parse(&options).unwrap());
    let (worker, inbox, to_broker, outbound) = WorkerHandle::detached(max_queue);
    Setup {
        plugin: Plugin::new(cfg, worker, acl, v21, true),
        inbox,
        to_broker,
        outbound,
    }
}

fn message<'a>(
    topic: &'a str,
    qos: u8,
    client: &'a FakeClient,
) -> MessageEvent<'a, &'a FakeClient> {
    MessageEvent {
        topic: topic.as_bytes(),
        payload: b"payload",
        qos,
        retain: false,
        client,
    }
}

fn queued(outbound: &Outbound) -> Vec<Outgoing> {
    std::iter::from_fn(|| outbound.take()).collect()
}

#[test]
fn a_message_no_rule_routes_is_accepted_and_not_queued() {
    let mut s = setup(false, 100, AclAnswer::Defer);
    let answer = s.plugin.message(&message("lights/1", 1, &MQTT5));
    assert_eq!(answer, MessageAnswer::Accept);
    assert!(queued(&s.outbound).is_empty());
}

#[test]
fn a_routed_topic_that_is_not_utf8_is_accepted_and_not_forwarded() {
    let mut s = setup(false, 100, AclAnswer::Defer);
    let mut ev = message("doors/x", 1, &MQTT5);
    ev.topic = b"doors/\xff";
    assert!(!s.plugin.cfg.router.route(ev.topic).is_empty(), "routed");
    assert_eq!(s.plugin.message(&ev), MessageAnswer::Accept);
    assert!(queued(&s.outbound).is_empty());
}

#[test]
fn a_routed_message_carries_its_route_to_the_worker() {
    let mut s = setup(false, 100, AclAnswer::Defer);
    assert_eq!(
        s.plugin.message(&message("doors/front", 1, &MQTT5)),
        MessageAnswer::Accept
    );
    assert_eq!(
        s.plugin.message(&message("secret/x", 0, &MQTT5)),
        MessageAnswer::Accept
    );
    let q = queued(&s.outbound);
    assert_eq!(q.len(), 2);
    assert_eq!(q[0].message.topic, "doors/front");
    assert_eq!(q[0].message.payload, b"payload");
    assert!(q[0].route.public && q[0].route.private_rules.is_empty());
    assert_eq!(q[1].message.topic, "secret/x");
    assert!(!q[1].route.public);
    assert_eq!(q[1].route.private_rules.iter().collect::<Vec<_>>(), vec![0]);
}

#[test]
fn a_full_queue_refuses_only_mqtt5_publishers_with_qos_on_2_1() {
    // max_queue 1: one message fills the backlog.
    let mut s = setup(true, 1, AclAnswer::Defer);
    assert_eq!(
        s.plugin.message(&message("doors/1", 1, &MQTT5)),
        MessageAnswer::Accept
    );
    assert_eq!(
        s.plugin.message(&message("doors/2", 1, &MQTT5)),
        MessageAnswer::RefuseQuotaExceeded
    );
    // QoS 0 and MQTT 3.1.1 cannot be told: queued or dropped, never refused.
    assert_eq!(
        s.plugin.message(&message("doors/3", 0, &MQTT5)),
        MessageAnswer::Accept
    );
    assert_eq!(
        s.plugin.message(&message("doors/4", 1, &MQTT311)),
        MessageAnswer::Accept
    );
    assert_eq!(s.plugin.refused, 1);
}

#[test]
fn mosquitto_2_0_never_refuses_a_publish() {
    let mut s = setup(false, 1, AclAnswer::Defer);
    for i in 0..3 {
        assert_eq!(
            s.plugin.message(&message(&format!("doors/{i}"), 1, &MQTT5)),
            MessageAnswer::Accept
        );
    }
    assert_eq!(s.plugin.refused, 0);
}

#[test]
fn a_qos2_retransmission_is_forwarded_once() {
    let mut s = setup(false, 100, AclAnswer::Defer);
    let persistent = FakeClient {
        id: Some("p1"),
        protocol: 4,
        clean: false,
    };
    s.plugin.message(&message("doors/1", 2, &persistent));
    // The connection ends; the client comes back with its session and sends it again first.
    s.plugin.session(&DisconnectEvent {
        client: "p1",
        seen: crate::interest::BrokerSessionEvent::Disconnect { reason: -1 },
        clean_session: false,
    });
    s.plugin.message(&message("doors/1", 2, &persistent));
    s.plugin.message(&message("doors/2", 2, &persistent));
    let topics: Vec<String> = queued(&s.outbound)
        .into_iter()
        .map(|o| o.message.topic)
        .collect();
    assert_eq!(topics, ["doors/1", "doors/2"]);
}

#[test]
fn acl_reads_and_writes_get_the_configured_answer_and_tell_the_worker_nothing() {
    for (acl, verdict) in [
        (AclAnswer::Defer, AclVerdict::Defer),
        (AclAnswer::Allow, AclVerdict::Allow),
    ] {
        let mut s = setup(false, 100, acl);
        for access in [AclAccess::Read, AclAccess::Write] {
            let ev = AclCheckEvent {
                access,
                topic: None,
                client: &MQTT5,
            };
            assert_eq!(s.plugin.acl_check(&ev), verdict);
        }
        assert!(s.inbox.try_recv().is_err());
    }
}

#[test]
fn an_acl_subscribe_check_tells_the_session_and_the_subscription() {
    let mut s = setup(false, 100, AclAnswer::Allow);
    let persistent = FakeClient {
        id: Some("p1"),
        protocol: 4,
        clean: false,
    };
    let ev = AclCheckEvent {
        access: AclAccess::Subscribe,
        topic: Some("doors/#"),
        client: &persistent,
    };
    assert_eq!(s.plugin.acl_check(&ev), AclVerdict::Allow);
    match s.inbox.try_recv() {
        Ok(ToWorker::Session {
            client,
            event:
                SessionEvent::Connected {
                    persistent: true,
                    new_connection: false,
                },
        }) => assert_eq!(client, "p1"),
        other => panic!("{other:?}"),
    }
    match s.inbox.try_recv() {
        Ok(ToWorker::Subscribe { client, filter }) => {
            assert_eq!((client.as_str(), filter.as_str()), ("p1", "doors/#"))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn subscription_and_session_events_reach_the_worker() {
    let mut s = setup(true, 100, AclAnswer::Defer);
    s.plugin.subscription(&SubscribeEvent {
        client: "c1",
        filter: "a/+",
        subscribe: false,
    });
    assert!(matches!(
        s.inbox.try_recv(),
        Ok(ToWorker::Unsubscribe { client, filter }) if client == "c1" && filter == "a/+"
    ));
    s.plugin.session(&DisconnectEvent {
        client: "c1",
        seen: crate::interest::BrokerSessionEvent::ClientOffline,
        clean_session: false,
    });
    assert!(matches!(
        s.inbox.try_recv(),
        Ok(ToWorker::Session { client, event: SessionEvent::Offline }) if client == "c1"
    ));
    // 2.1's PERSIST_CLIENT_DELETE: the session is gone (asked for only without persistence).
    assert!(s.plugin.wants_session_deletions());
    s.plugin.session_deleted("c1");
    assert!(matches!(
        s.inbox.try_recv(),
        Ok(ToWorker::Session { client, event: SessionEvent::Ended }) if client == "c1"
    ));
}

#[test]
fn tick_injects_and_logs_what_the_worker_sent() {
    let mut s = setup(false, 100, AclAnswer::Defer);
    let m = |topic: &str| Message {
        topic: topic.into(),
        payload: b"x".to_vec(),
        qos: 1,
        retain: true,
    };
    assert!(s
        .to_broker
        .try_send(ToBroker::Publish(m("doors/1")))
        .is_ok());
    assert!(s
        .to_broker
        .try_send(ToBroker::Log(Level::Notice, "hello".into()))
        .is_ok());
    assert!(s.to_broker.try_send(ToBroker::Publish(m("$SYS/x"))).is_ok());
    let broker = FakeBroker::default();
    let mut ev = TickEvent::default();
    s.plugin.tick(&broker, &mut ev, false);
    assert_eq!(*broker.published.borrow(), vec![m("doors/1")]);
    let logs = broker.logs.borrow();
    assert!(logs.contains(&(Level::Notice, "hello".into())), "{logs:?}");
    assert!(
        logs.iter()
            .any(|(l, t)| *l == Level::Warning && t.contains("\"$SYS/x\"")),
        "{logs:?}"
    );
    assert_eq!(ev.next_requested(), None, "only the pacing TICK asks");
}

#[test]
fn the_pacing_tick_asks_for_the_next_tick_and_says_so_once() {
    let mut s = setup(true, 100, AclAnswer::Defer);
    let broker = FakeBroker::default();
    for _ in 0..3 {
        let mut ev = TickEvent::default();
        s.plugin.tick(&broker, &mut ev, true);
        assert_eq!(ev.next_requested(), Some(TICK_PACE));
    }
    let said = broker
        .logs
        .borrow()
        .iter()
        .filter(|(_, t)| t.contains("asking the broker for the next TICK"))
        .count();
    assert_eq!(said, 1);
}

#[test]
fn log_lines_dropped_for_want_of_room_are_counted_in_one_line() {
    let mut s = setup(false, 100, AclAnswer::Defer);
    for i in 0..crate::bus::LOG_CAPACITY + 7 {
        let _ = s
            .to_broker
            .try_send(ToBroker::Log(Level::Info, format!("line {i}")));
    }
    let broker = FakeBroker::default();
    s.plugin.tick(&broker, &mut TickEvent::default(), false);
    s.plugin.tick(&broker, &mut TickEvent::default(), false);
    let logs = broker.logs.borrow();
    let lines = logs.iter().filter(|(_, t)| t.starts_with("line ")).count();
    assert_eq!(lines, crate::bus::LOG_CAPACITY);
    let reports: Vec<&String> = logs
        .iter()
        .map(|(_, t)| t)
        .filter(|t| t.contains("log lines dropped"))
        .collect();
    assert_eq!(reports.len(), 1, "{logs:?}");
    assert!(
        reports[0].contains("mqtt-twister: 7 log lines dropped"),
        "{reports:?}"
    );
}

/// The spool's segments in memory (the host maps the files).
struct InMemory;

struct Buffer(Vec<u8>);

impl crate::spool::Mapped for Buffer {
    fn bytes(&mut self) -> &mut [u8] {
        &mut self.0
    }
}

impl crate::spool::Storage for InMemory {
    fn map(
        &self,
        _file: &std::fs::File,
        len: usize,
    ) -> std::io::Result<Box<dyn crate::spool::Mapped>> {
        Ok(Box::new(Buffer(vec![0; len])))
    }
}

#[test]
fn with_the_spool_a_publish_without_room_is_refused_unacknowledged() {
    for v21 in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        // max_queue 1: one message fills the worker's backlog.
        let mut s = setup(v21, 1, AclAnswer::Defer);
        let geometry = crate::spool::Geometry::new(1 << 20, 4096).unwrap();
        let (_spool, appender, _) =
            crate::spool::Spool::open(dir.path(), geometry, Box::new(InMemory)).unwrap();
        let progress = s.plugin.worker.spool_progress();
        s.plugin.spool = Some(Intake::new(appender, progress));
        let answer =
            |s: &mut Setup, qos, client| s.plugin.message(&message("doors/1", qos, client));
        assert_eq!(answer(&mut s, 1, &MQTT311), MessageAnswer::Accept);
        assert_eq!(queued(&s.outbound).len(), 1, "spooled and handed over");
        // The worker has not taken it yet (its backlog is read from `set_backlog`).
        s.outbound.set_backlog(1);
        assert_eq!(
            answer(&mut s, 0, &MQTT311),
            MessageAnswer::Accept,
            "QoS 0 shed"
        );
        assert_eq!(
            answer(&mut s, 1, &MQTT311),
            MessageAnswer::RefuseClosingConnection
        );
        let mqtt5 = if v21 {
            MessageAnswer::RefuseQuotaExceeded
        } else {
            MessageAnswer::RefuseClosingConnection
        };
        // 2.1 refuses an MQTT 5 publisher before the spool, as without it.
        assert_eq!(answer(&mut s, 2, &MQTT5), mqtt5);
        assert!(queued(&s.outbound).is_empty());
    }
}
