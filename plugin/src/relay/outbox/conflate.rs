//! Conflation over budget (`plugin_opt_over_budget <filter> conflate`): while posts are scarce, a
//! QoS 0 message replaces the queued, not yet posted, message of the same topic to the same
//! destination, so only the newest value of each topic waits (what telemetry wants). QoS 1/2 are never
//! conflated, and a message is conflated only when every forward rule that sends it there says
//! conflate (queueing wins).

use super::packing::{Payload, Queued};
use crate::config::{Config, OverBudget};
use crate::topic;
use std::collections::VecDeque;

#[derive(Debug, Clone, PartialEq)]
struct Rule {
    filter: String,
    /// `None`: a public rule; `Some(users)`: a private rule to these users.
    to: Option<Vec<String>>,
    conflate: bool,
}

/// Every forward rule with its policy over budget.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Conflation {
    rules: Vec<Rule>,
}

impl Conflation {
    pub fn from_config(cfg: &Config) -> Self {
        let conflate = |f: &str| {
            cfg.over_budget
                .iter()
                .any(|(filter, policy)| filter == f && *policy == OverBudget::Conflate)
        };
        let mut rules: Vec<Rule> = cfg
            .publish
            .iter()
            .map(|f| Rule {
                filter: f.clone(),
                to: None,
                conflate: conflate(f),
            })
            .collect();
        rules.extend(cfg.private.iter().map(|p| Rule {
            filter: p.filter.clone(),
            to: Some(p.users.clone()),
            conflate: conflate(&p.filter),
        }));
        Conflation { rules }
    }

    /// True when no rule conflates (nothing to look at).
    pub fn is_off(&self) -> bool {
        !self.rules.iter().any(|r| r.conflate)
    }

    /// May `item`, queued for `to`, replace an older value of its topic?
    pub fn applies(&self, item: &Queued, to: &Option<String>) -> bool {
        let Payload::Whole(m) = &item.payload else {
            return false;
        };
        if m.qos != 0 || self.is_off() {
            return false;
        }
        let mut any = false;
        for r in &self.rules {
            let sends_there = match (&r.to, to) {
                (None, None) => true,
                (Some(users), Some(u)) => users.contains(u),
                _ => false,
            };
            if sends_there && topic::matches(&r.filter, &m.topic) {
                if !r.conflate {
                    return false;
                }
                any = true;
            }
        }
        any
    }
}

/// The position of the queued QoS 0 value of `item`'s topic that `item` replaces, looking past the
/// first `in_flight` items (a post being sent or of unknown outcome carries them).
pub fn superseded(items: &VecDeque<Queued>, in_flight: usize, item: &Queued) -> Option<usize> {
    let Payload::Whole(new) = &item.payload else {
        return None;
    };
    items
        .iter()
        .enumerate()
        .skip(in_flight)
        .rev()
        .find(
            |(_, q)| matches!(&q.payload, Payload::Whole(m) if m.qos == 0 && m.topic == new.topic),
        )
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::WireFormat;
    use crate::wire::Message;

    fn item(topic: &str, qos: u8, payload: &str) -> Queued {
        Queued::new(
            Message {
                topic: topic.into(),
                payload: payload.as_bytes().to_vec(),
                qos,
                retain: false,
            },
            WireFormat::V1,
            None,
        )
    }

    fn conflation(over_budget: &[(&str, OverBudget)]) -> Conflation {
        let mut rules = vec![
            Rule {
                filter: "sensors/#".into(),
                to: None,
                conflate: false,
            },
            Rule {
                filter: "sensors/room/#".into(),
                to: None,
                conflate: false,
            },
            Rule {
                filter: "doors/#".into(),
                to: Some(vec!["bob".into()]),
                conflate: false,
            },
        ];
        for r in &mut rules {
            r.conflate = over_budget
                .iter()
                .any(|(f, p)| *f == r.filter && *p == OverBudget::Conflate);
        }
        Conflation { rules }
    }

    #[test]
    fn only_qos_0_of_rules_that_all_say_conflate() {
        let c = conflation(&[("sensors/#", OverBudget::Conflate)]);
        assert!(c.applies(&item("sensors/kitchen", 0, "1"), &None));
        assert!(!c.applies(&item("sensors/kitchen", 1, "1"), &None), "QoS 1");
        assert!(!c.applies(&item("sensors/kitchen", 2, "1"), &None), "QoS 2");
        // Also forwarded by a rule that queues: queued.
        assert!(!c.applies(&item("sensors/room/1", 0, "1"), &None));
        assert!(!c.applies(&item("doors/1", 0, "1"), &Some("bob".into())));
        let c = conflation(&[("doors/#", OverBudget::Conflate)]);
        assert!(c.applies(&item("doors/1", 0, "1"), &Some("bob".into())));
        assert!(!c.applies(&item("doors/1", 0, "1"), &Some("carol".into())));
        assert!(!c.applies(&item("sensors/kitchen", 0, "1"), &None));
        assert!(conflation(&[("sensors/#", OverBudget::Queue)]).is_off());
    }

    #[test]
    fn the_newest_value_replaces_the_queued_one_not_in_flight() {
        let mut q: VecDeque<Queued> = VecDeque::new();
        q.push_back(item("a", 0, "1"));
        q.push_back(item("b", 0, "1"));
        q.push_back(item("a", 1, "2"));
        assert_eq!(superseded(&q, 0, &item("a", 0, "3")), Some(0));
        assert_eq!(superseded(&q, 0, &item("b", 0, "3")), Some(1));
        assert_eq!(superseded(&q, 1, &item("a", 0, "3")), None, "in flight");
        assert_eq!(superseded(&q, 0, &item("c", 0, "3")), None);
    }

    #[test]
    fn rules_come_from_the_configuration() {
        let cfg = crate::config::parse(
            &[
                ("rpc_user", "u"),
                ("rpc_password", "p"),
                ("user", "alice"),
                ("publish", "sensors/#"),
                ("private", "doors/# bob"),
                ("over_budget", "sensors/# conflate"),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<Vec<_>>(),
        )
        .unwrap();
        let c = Conflation::from_config(&cfg);
        assert!(c.applies(&item("sensors/x", 0, "1"), &None));
        assert!(!c.applies(&item("doors/x", 0, "1"), &Some("bob".into())));
    }
}
