//! QoS 2 messages forwarded once however often a client retransmits them.
//!
//! The broker's MESSAGE event fires for every PUBLISH, before the broker's own duplicate check, and its
//! data (client, topic, payload, qos, retain, properties) holds neither the packet identifier nor the
//! DUP flag, on Mosquitto 2.0.11 as on 2.1.2. What the plugin can see is the client, the connection
//! ending (DISCONNECT, 2.1's CLIENT_OFFLINE) and whether the next connection resumes the session.
//!
//! A client retransmits a QoS 2 PUBLISH when it reconnects with its session and had no PUBREC for it;
//! MQTT has it resend those first, in their original order, before anything new. So: per client, the
//! fingerprints of its last `WINDOW` QoS 2 messages are kept; when a connection that resumes the session
//! (not a clean start, which discards the broker's copies) begins with messages identical to those of
//! the connection before, in order, they are the retransmissions and are not forwarded again. The first
//! message that is not one ends the check for that connection.
//!
//! Limits (no exact information exists): a client that reconnects and first publishes anew a message
//! identical to one of its last `WINDOW` QoS 2 messages, whose flow had completed, has it not forwarded;
//! a retransmission on the same connection (allowed by MQTT 3.1.1, not done by common clients) is
//! forwarded again; beyond `WINDOW` messages in flight or `MAX_CLIENTS` clients the oldest are forgotten.
//!
//! Runs in the MESSAGE callback: no system call, no lock; one hash lookup per QoS 2 message.

use std::collections::{HashMap, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};

/// QoS 2 messages remembered per client (Mosquitto's default `max_inflight_messages` is 20).
pub const WINDOW: usize = 64;
/// Clients remembered at most.
pub const MAX_CLIENTS: usize = 16_384;

#[derive(Default)]
struct Client {
    /// Fingerprints of this connection's QoS 2 messages, newest last.
    recent: VecDeque<u64>,
    /// Messages of earlier connections that may come again, while the current connection retransmits.
    candidates: VecDeque<u64>,
    /// The connection ended; the next message tells whether the session was resumed.
    ended: bool,
}

impl Client {
    fn remember(&mut self, fp: u64) {
        if self.recent.len() == WINDOW {
            self.recent.pop_front();
        }
        self.recent.push_back(fp);
    }
}

#[derive(Default)]
pub struct Qos2Dedup {
    clients: HashMap<String, Client>,
}

/// What identifies a message's content.
pub fn fingerprint(topic: &str, payload: &[u8], retain: bool) -> u64 {
    let mut h = DefaultHasher::new();
    topic.hash(&mut h);
    payload.hash(&mut h);
    retain.hash(&mut h);
    h.finish()
}

impl Qos2Dedup {
    /// A QoS 2 message from `client` (whose connection is `clean` or resumes a session): true to
    /// forward it, false when it is a retransmission of one forwarded already.
    pub fn first_time(&mut self, client: &str, clean: bool, fp: u64) -> bool {
        if !self.clients.contains_key(client) {
            self.make_room();
            self.clients.insert(client.to_owned(), Client::default());
        }
        // Looked up by &str: no allocation for a client already known.
        let Some(c) = self.clients.get_mut(client) else {
            return true;
        };
        if std::mem::take(&mut c.ended) {
            if clean {
                // A clean start discarded the broker's copies: whatever comes is new to it too.
                c.candidates.clear();
                c.recent.clear();
            } else {
                let recent = std::mem::take(&mut c.recent);
                c.candidates.extend(recent);
                while c.candidates.len() > WINDOW {
                    c.candidates.pop_front();
                }
            }
        }
        if let Some(at) = c.candidates.iter().position(|x| *x == fp) {
            // Retransmitted in order: the ones before it had completed.
            c.candidates.drain(..=at);
            // Still in flight at the broker until PUBREL: it may come once more.
            c.remember(fp);
            return false;
        }
        c.candidates.clear();
        c.remember(fp);
        true
    }

    /// The message `first_time` just let through was refused to its publisher after all (not
    /// acknowledged): its retransmission is new, not a copy.
    pub fn refused(&mut self, client: &str, fp: u64) {
        if let Some(c) = self.clients.get_mut(client) {
            if c.recent.back() == Some(&fp) {
                c.recent.pop_back();
            }
        }
    }

    /// The client's connection ended; its session may be resumed by the next one.
    pub fn connection_ended(&mut self, client: &str) {
        if let Some(c) = self.clients.get_mut(client) {
            c.ended = true;
        }
    }

    /// The client's session ended for good.
    pub fn session_ended(&mut self, client: &str) {
        self.clients.remove(client);
    }

    fn make_room(&mut self) {
        if self.clients.len() < MAX_CLIENTS {
            return;
        }
        let victim = self
            .clients
            .iter()
            .find(|(_, c)| c.ended)
            .or_else(|| self.clients.iter().next())
            .map(|(k, _)| k.clone());
        if let Some(k) = victim {
            self.clients.remove(&k);
        }
    }

    pub fn clients(&self) -> usize {
        self.clients.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(s: &str) -> u64 {
        fingerprint("t", s.as_bytes(), false)
    }

    #[test]
    fn retransmissions_after_resuming_are_not_forwarded_again() {
        let mut d = Qos2Dedup::default();
        assert!(d.first_time("c", false, fp("1")));
        assert!(d.first_time("c", false, fp("2")));
        assert!(d.first_time("c", false, fp("3")));
        d.connection_ended("c");
        // 2 and 3 had no PUBREC: resent in order, then something new.
        assert!(!d.first_time("c", false, fp("2")));
        assert!(!d.first_time("c", false, fp("3")));
        assert!(d.first_time("c", false, fp("4")));
        assert!(
            d.first_time("c", false, fp("3")),
            "after the first new message, identical content is new"
        );
    }

    #[test]
    fn a_refused_message_is_forwarded_when_it_comes_again() {
        let mut d = Qos2Dedup::default();
        assert!(d.first_time("c", false, fp("1")));
        assert!(d.first_time("c", false, fp("2")));
        d.refused("c", fp("2")); // the spool was full: no PUBREC, the client resends it
        d.connection_ended("c");
        assert!(!d.first_time("c", false, fp("1")), "1 was taken");
        assert!(d.first_time("c", false, fp("2")), "2 was not");
    }

    #[test]
    fn a_message_resent_over_several_reconnections_is_forwarded_once() {
        let mut d = Qos2Dedup::default();
        assert!(d.first_time("c", false, fp("1")));
        for _ in 0..3 {
            d.connection_ended("c");
            assert!(!d.first_time("c", false, fp("1")));
        }
    }

    #[test]
    fn a_clean_start_discards_what_was_in_flight() {
        let mut d = Qos2Dedup::default();
        assert!(d.first_time("c", false, fp("1")));
        d.connection_ended("c");
        assert!(
            d.first_time("c", true, fp("1")),
            "the broker delivers it again too"
        );
    }

    #[test]
    fn identical_messages_on_one_connection_are_all_forwarded() {
        let mut d = Qos2Dedup::default();
        for _ in 0..5 {
            assert!(d.first_time("c", false, fp("same")));
        }
    }

    #[test]
    fn clients_and_content_are_told_apart() {
        let mut d = Qos2Dedup::default();
        assert!(d.first_time("a", false, fp("1")));
        d.connection_ended("a");
        assert!(d.first_time("b", false, fp("1")), "another client");
        assert!(
            d.first_time("a", false, fingerprint("t", b"1", true)),
            "retain differs"
        );
        assert_ne!(fingerprint("t", b"1", false), fingerprint("u", b"1", false));
    }

    #[test]
    fn a_session_that_ended_is_forgotten() {
        let mut d = Qos2Dedup::default();
        assert!(d.first_time("c", false, fp("1")));
        d.session_ended("c");
        d.connection_ended("c");
        assert!(d.first_time("c", false, fp("1")));
    }

    #[test]
    fn memory_is_bounded() {
        let mut d = Qos2Dedup::default();
        for i in 0..WINDOW * 3 {
            d.first_time("c", false, i as u64);
        }
        d.connection_ended("c");
        assert!(
            d.first_time("c", false, 0),
            "older than the window: forgotten"
        );
        assert!(d.clients["c"].recent.len() <= WINDOW);
        for i in 0..MAX_CLIENTS + 10 {
            d.first_time(&format!("client{i}"), true, 1);
        }
        assert_eq!(d.clients(), MAX_CLIENTS);
    }
}
