//! Which topics this broker wants from the network: the live subscriptions of its clients (learned from
//! the broker's events) plus the configured static filters. Published in our Twister profile so senders
//! of private forwards know whom to send to, and used to keep only wanted messages on the way in.

use crate::topic;
use std::collections::{BTreeMap, HashMap, HashSet};

#[derive(Default)]
pub struct Interest {
    by_client: HashMap<String, HashSet<String>>,
    /// Filter -> number of clients holding it (static filters are not counted here).
    counts: BTreeMap<String, usize>,
    fixed: Vec<String>,
}

impl Interest {
    pub fn new(fixed: &[String]) -> Self {
        Interest {
            fixed: fixed.to_vec(),
            ..Default::default()
        }
    }

    /// Returns true when the set of filters changed.
    pub fn subscribe(&mut self, client: &str, raw_filter: &str) -> bool {
        let Some(filter) = topic::strip_shared(raw_filter).filter(|f| topic::is_valid_filter(f))
        else {
            return false;
        };
        if !self
            .by_client
            .entry(client.to_string())
            .or_default()
            .insert(filter.to_string())
        {
            return false;
        }
        let n = self.counts.entry(filter.to_string()).or_insert(0);
        *n += 1;
        *n == 1 && !self.fixed.iter().any(|f| f == filter)
    }

    pub fn unsubscribe(&mut self, client: &str, raw_filter: &str) -> bool {
        let Some(filter) = topic::strip_shared(raw_filter) else {
            return false;
        };
        let removed = self
            .by_client
            .get_mut(client)
            .is_some_and(|s| s.remove(filter));
        removed && self.release(filter)
    }

    /// A client whose session ended: all its subscriptions are gone.
    pub fn client_gone(&mut self, client: &str) -> bool {
        let Some(filters) = self.by_client.remove(client) else {
            return false;
        };
        let mut changed = false;
        for f in filters {
            changed |= self.release(&f);
        }
        changed
    }

    fn release(&mut self, filter: &str) -> bool {
        match self.counts.get_mut(filter) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => {
                self.counts.remove(filter);
                !self.fixed.iter().any(|f| f == filter)
            }
            None => false,
        }
    }

    /// Sorted, without duplicates: what goes into the profile's `mqtt_topics`.
    pub fn filters(&self) -> Vec<String> {
        let mut all: Vec<String> = self
            .counts
            .keys()
            .cloned()
            .chain(self.fixed.iter().cloned())
            .collect();
        all.sort();
        all.dedup();
        all
    }

    pub fn wants(&self, topic_name: &str) -> bool {
        self.fixed
            .iter()
            .chain(self.counts.keys())
            .any(|f| topic::matches(f, topic_name))
    }
}

/// Whether anything in `filters` (someone else's published interest) matches `topic_name`.
pub fn any_matches(filters: &[String], topic_name: &str) -> bool {
    filters.iter().any(|f| topic::matches(f, topic_name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_clients_per_filter() {
        let mut i = Interest::new(&[]);
        assert!(i.subscribe("c1", "a/+"));
        assert!(!i.subscribe("c2", "a/+"), "second holder changes nothing");
        assert!(!i.subscribe("c1", "a/+"), "resubscribe changes nothing");
        assert!(i.wants("a/b"));
        assert!(!i.unsubscribe("c1", "a/+"));
        assert!(i.unsubscribe("c2", "a/+"));
        assert!(!i.wants("a/b"));
        assert!(!i.unsubscribe("c3", "never"));
    }

    #[test]
    fn shared_subscriptions_count_as_their_filter() {
        let mut i = Interest::new(&[]);
        assert!(i.subscribe("c1", "$share/g/jobs/#"));
        assert_eq!(i.filters(), vec!["jobs/#"]);
        assert!(i.wants("jobs/1"));
        assert!(i.unsubscribe("c1", "$share/g/jobs/#"));
        assert!(!i.subscribe("c1", "$share/broken"));
    }

    #[test]
    fn a_gone_client_takes_its_filters_and_static_ones_stay() {
        let mut i = Interest::new(&["cmd/#".to_string()]);
        i.subscribe("c1", "x");
        i.subscribe("c1", "cmd/#");
        assert_eq!(i.filters(), vec!["cmd/#", "x"]);
        assert!(i.client_gone("c1"));
        assert_eq!(i.filters(), vec!["cmd/#"]);
        assert!(i.wants("cmd/a"));
        assert!(!i.client_gone("c1"));
    }
}
