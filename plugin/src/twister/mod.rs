//! The typed twisterd client: one method per call the plugin makes, typed parameters and replies,
//! errors as `TwisterError` (its `Refused` variant carries twister-rules' `Refusal`: `OutOfBudget`,
//! `TooLarge`, `BadSignature`, `NotInWallet`, `Busy`, ...). Replies come from the network and are read
//! defensively: what does not parse is absent, never a panic. No connection is kept while idle
//! (`release_idle`): twisterd's `stop` waits for open RPC connections.

pub mod transport;

pub use transport::{HttpTwister, Twister, TwisterError};

use serde_json::{json, Value};
use std::collections::BTreeMap;

/// How a post was sent: the outcome the answer (or its absence) tells.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// twisterd answered with the post: stored (or ignored as a copy of what its `k` holds).
    Stored,
    /// twisterd answered with an error, or nothing reached it: not stored by this call.
    Refused(TwisterError),
    /// No answer read (timeout, connection lost, unreadable reply): it may have been stored.
    Unknown(TwisterError),
}

impl Outcome {
    pub fn of(result: Result<(), TwisterError>) -> Outcome {
        match result {
            Ok(()) => Outcome::Stored,
            Err(e @ TwisterError::Refused { .. }) => Outcome::Refused(e),
            // Refused before reaching the RPC handler: authentication, wrong path.
            Err(e @ TwisterError::Http(401 | 403 | 404)) => Outcome::Refused(e),
            // No connection was made: nothing reached twisterd.
            Err(e @ TwisterError::NotSent(_)) => Outcome::Refused(e),
            Err(e) => Outcome::Unknown(e),
        }
    }
}

/// The height a stored post was signed at, from twisterd's answer.
fn signed_height(post: &Value) -> Option<i64> {
    post.get("userpost")?.get("height")?.as_i64()
}

/// One piece of a followed user's torrent as `getposts` lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct Post {
    /// `userpost.n`.
    pub author: String,
    /// `userpost.k`; -1 when missing.
    pub k: i64,
    /// `msg` + `msg2`.
    pub text: String,
    /// twisterd's promoted ("spam") post: it has no signature.
    pub promoted: bool,
    /// A DM in the torrent (its text is encrypted; DMs are read with `getdirectmsgs`).
    pub is_dm: bool,
}

impl Post {
    fn of(p: &Value) -> Post {
        let up = &p["userpost"];
        let s = |key: &str| up.get(key).and_then(Value::as_str).unwrap_or("");
        Post {
            author: s("n").to_string(),
            k: up.get("k").and_then(Value::as_i64).unwrap_or(-1),
            text: format!("{}{}", s("msg"), s("msg2")),
            promoted: p
                .get("sig_userpost")
                .and_then(Value::as_str)
                .unwrap_or("")
                .is_empty(),
            is_dm: up.get("dm").is_some(),
        }
    }
}

/// The part of our conversation with `peer` one `getdirectmsgs` call reads: positions in
/// `(since, max]` (`max: None`: up to the newest).
#[derive(Debug, Clone, PartialEq)]
pub struct DmWindow {
    pub peer: String,
    pub since: i64,
    pub max: Option<i64>,
}

/// One entry of a conversation as `getdirectmsgs` lists it: its position and time (twisterd's),
/// and, for a DM the peer sent us, its post number and text.
#[derive(Debug, Clone, PartialEq)]
pub struct DirectMsg {
    pub id: i64,
    pub time: i64,
    /// `Some` only for a DM from the peer (`fromMe` false, `from` the peer) with a post number.
    pub from_peer: Option<PeerDm>,
}

/// A DM the peer sent us.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerDm {
    pub k: i64,
    pub text: String,
}

/// One `getdirectmsgs` page, in twisterd's order (oldest first).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DmPage {
    /// Entries listed, readable or not (a full page means more may be below).
    pub listed: usize,
    /// The entries with a position and a time; the others are skipped.
    pub entries: Vec<DirectMsg>,
}

impl DmPage {
    /// Reads `answer` (`{"<peer>": [entries]}`) defensively: what does not parse is absent.
    fn of(answer: &Value, peer: &str) -> DmPage {
        let listed: &[Value] = answer
            .get(peer)
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let entries = listed
            .iter()
            .filter_map(|e| {
                let id = e.get("id").and_then(Value::as_i64)?;
                let time = e.get("time").and_then(Value::as_i64)?;
                let sent_by_peer = e.get("fromMe").and_then(Value::as_bool) == Some(false)
                    && e.get("from").and_then(Value::as_str) == Some(peer);
                let from_peer = match e.get("k").and_then(Value::as_i64) {
                    Some(k) if sent_by_peer => Some(PeerDm {
                        k,
                        text: e
                            .get("text")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_string(),
                    }),
                    _ => None,
                };
                Some(DirectMsg {
                    id,
                    time,
                    from_peer,
                })
            })
            .collect();
        DmPage {
            listed: listed.len(),
            entries,
        }
    }
}

/// A DHT value with its sequence number (seq 0: nothing stored yet).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DhtEntry {
    pub value: Value,
    pub seq: i64,
    /// Who signed it (`sig_user`) when the entry is the asked user's own (`p.target.n`); an "s"
    /// value has a single writer, so anything else is not that user's value.
    pub writer: Option<String>,
}

/// The typed calls, over any `Twister` (the HTTP one, or a fake in tests).
pub struct Client {
    raw: Box<dyn Twister>,
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

impl Client {
    pub fn new(raw: Box<dyn Twister>) -> Self {
        Client { raw }
    }

    /// Closes the connections kept open between calls (call it before going idle).
    pub fn release_idle(&self) {
        self.raw.release_idle()
    }

    pub fn list_wallet_users(&self) -> Result<Vec<String>, TwisterError> {
        Ok(strings(&self.raw.call("listwalletusers", json!([]))?))
    }

    pub fn create_wallet_user(&self, user: &str) -> Result<(), TwisterError> {
        self.raw.call("createwalletuser", json!([user])).map(drop)
    }

    pub fn send_new_user_transaction(&self, user: &str) -> Result<(), TwisterError> {
        self.raw
            .call("sendnewusertransaction", json!([user]))
            .map(drop)
    }

    pub fn follow(&self, user: &str, users: &[String]) -> Result<(), TwisterError> {
        self.raw.call("follow", json!([user, users])).map(drop)
    }

    pub fn get_following(&self, user: &str) -> Result<Vec<String>, TwisterError> {
        Ok(strings(&self.raw.call("getfollowing", json!([user]))?))
    }

    /// The last post number of every user `user` follows (`only`: of these users alone).
    pub fn get_last_have(
        &self,
        user: &str,
        only: Option<&[String]>,
    ) -> Result<BTreeMap<String, i64>, TwisterError> {
        let params = match only {
            None => json!([user]),
            Some(users) => json!([user, users]),
        };
        let v = self.raw.call("getlasthave", params)?;
        // Anything but numbers is no news about a user.
        Ok(v.as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(u, k)| k.as_i64().map(|k| (u.clone(), k)))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The chain height (`getinfo`'s `blocks`; `None` when the answer lacks it).
    pub fn get_height(&self) -> Result<Option<i64>, TwisterError> {
        Ok(self
            .raw
            .call("getinfo", json!([]))?
            .get("blocks")
            .and_then(Value::as_i64))
    }

    /// Posts `text` as post `k`; the answer's `userpost.height` is the height it was signed at (the
    /// chain's height - 1), `None` when the answer lacks it.
    pub fn new_post(&self, user: &str, k: i64, text: &str) -> Result<Option<i64>, TwisterError> {
        self.raw
            .call("newpostmsg", json!([user, k, text]))
            .map(|p| signed_height(&p))
    }

    pub fn new_dm(
        &self,
        user: &str,
        k: i64,
        to: &str,
        text: &str,
    ) -> Result<Option<i64>, TwisterError> {
        self.raw
            .call("newdirectmsg", json!([user, k, to, text]))
            .map(|p| signed_height(&p))
    }

    /// `from`'s posts numbered in `(since, upto]`, asking for `count` (twisterd may add its promoted
    /// post), in the order twisterd lists them.
    pub fn get_posts(
        &self,
        from: &str,
        since: i64,
        upto: i64,
        count: i64,
    ) -> Result<Vec<Post>, TwisterError> {
        let v = self.raw.call(
            "getposts",
            json!([count, [{"username": from, "since_id": since, "max_id": upto}]]),
        )?;
        Ok(v.as_array()
            .map(|a| a.iter().map(Post::of).collect())
            .unwrap_or_default())
    }

    /// One `getdirectmsgs` page of at most `page` entries of `window`.
    pub fn get_direct_msgs(
        &self,
        user: &str,
        page: i64,
        window: &DmWindow,
    ) -> Result<DmPage, TwisterError> {
        let mut w = json!({"username": window.peer, "since_id": window.since});
        if let Some(max) = window.max {
            w["max_id"] = json!(max);
        }
        let answer = self.raw.call("getdirectmsgs", json!([user, page, [w]]))?;
        Ok(DmPage::of(&answer, &window.peer))
    }

    /// A single-writer ("s") DHT value of `user`.
    pub fn dht_get(
        &self,
        user: &str,
        resource: &str,
        timeout_ms: u64,
    ) -> Result<DhtEntry, TwisterError> {
        let got = self
            .raw
            .call("dhtget", json!([user, resource, "s", timeout_ms]))?;
        let Some(item) = got.as_array().and_then(|a| a.first()) else {
            return Ok(DhtEntry::default());
        };
        let signer = item["sig_user"].as_str();
        let owner = item["p"]["target"]["n"].as_str();
        Ok(DhtEntry {
            value: item["p"]["v"].clone(),
            seq: item["p"]["seq"].as_i64().unwrap_or(0),
            writer: signer.filter(|s| Some(*s) == owner).map(String::from),
        })
    }

    pub fn dht_put(
        &self,
        user: &str,
        resource: &str,
        value: &Value,
        seq: i64,
    ) -> Result<(), TwisterError> {
        self.raw
            .call("dhtput", json!([user, resource, "s", value, user, seq]))
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use twister_rules::errors::{too_many_posts, Refusal, RPC_INVALID_PARAMS};

    /// Answers every call with one canned reply.
    struct Canned(Result<Value, TwisterError>);

    impl Twister for Canned {
        fn call(&self, _method: &str, _params: Value) -> Result<Value, TwisterError> {
            self.0.clone()
        }
    }

    fn client(reply: Result<Value, TwisterError>) -> Client {
        Client::new(Box::new(Canned(reply)))
    }

    #[test]
    fn only_an_error_answer_means_not_stored() {
        assert_eq!(Outcome::of(Ok(())), Outcome::Stored);
        let refused = TwisterError::refused(RPC_INVALID_PARAMS, too_many_posts("a"));
        assert!(refused.is(Refusal::OutOfBudget));
        assert_eq!(Outcome::of(Err(refused.clone())), Outcome::Refused(refused));
        assert!(matches!(
            Outcome::of(Err(TwisterError::Http(401))),
            Outcome::Refused(_)
        ));
        let not_sent = TwisterError::NotSent("Connection Failed".into());
        assert_eq!(
            Outcome::of(Err(not_sent.clone())),
            Outcome::Refused(not_sent)
        );
        for unknown in [
            TwisterError::Transport("timed out reading response".into()),
            TwisterError::Http(500),
            TwisterError::BadReply("not JSON".into()),
        ] {
            assert_eq!(Outcome::of(Err(unknown.clone())), Outcome::Unknown(unknown));
        }
    }

    #[test]
    fn posts_are_read_defensively() {
        let c = client(Ok(json!([
            {"sig_userpost": "ab", "userpost": {"n": "bob", "k": 3, "msg": "he", "msg2": "llo"}},
            {"sig_userpost": "", "userpost": {"n": "promo", "k": 9, "msg": "buy"}},
            {"sig_userpost": "ab", "userpost": {"n": "bob", "k": 4, "dm": {}}},
            {"junk": true},
        ])));
        let posts = c.get_posts("bob", 0, 10, 11).unwrap();
        assert_eq!(posts.len(), 4);
        assert_eq!((posts[0].k, posts[0].text.as_str()), (3, "hello"));
        assert!(!posts[0].promoted && !posts[0].is_dm);
        assert!(posts[1].promoted);
        assert!(posts[2].is_dm);
        assert_eq!((posts[3].k, posts[3].promoted), (-1, true));
        assert!(client(Ok(json!("odd")))
            .get_posts("bob", 0, 1, 2)
            .unwrap()
            .is_empty());
    }

    /// Records the parameters of the last call, answers with one canned reply.
    struct Recording(std::sync::Mutex<Value>, Value);

    impl Twister for Recording {
        fn call(&self, _method: &str, params: Value) -> Result<Value, TwisterError> {
            *self.0.lock().unwrap() = params;
            Ok(self.1.clone())
        }
    }

    #[test]
    fn dms_are_asked_for_by_window_and_read_defensively() {
        let answer = json!({"alice": [
            {"id": 4, "time": 100, "k": 7, "fromMe": false, "from": "alice", "text": "hi"},
            {"id": 5, "time": 101, "k": 8, "fromMe": true, "from": "bob", "text": "mine"},
            {"id": 6, "time": 101, "k": 9, "fromMe": false, "from": "mallory", "text": "x"},
            {"id": 7, "time": 102, "fromMe": false, "from": "alice"},
            {"time": 103, "k": 10, "fromMe": false, "from": "alice"},
            "junk",
        ], "carol": [{"id": 1, "time": 1}]});
        let raw = std::sync::Arc::new(Recording(Default::default(), answer));
        struct Shared(std::sync::Arc<Recording>);
        impl Twister for Shared {
            fn call(&self, method: &str, params: Value) -> Result<Value, TwisterError> {
                self.0.call(method, params)
            }
        }
        let c = Client::new(Box::new(Shared(raw.clone())));
        let window = DmWindow {
            peer: "alice".into(),
            since: 3,
            max: Some(9),
        };
        let page = c.get_direct_msgs("bob", 1000, &window).unwrap();
        assert_eq!(
            *raw.0.lock().unwrap(),
            json!(["bob", 1000, [{"username": "alice", "since_id": 3, "max_id": 9}]])
        );
        assert_eq!(page.listed, 6, "every entry counts for a full page");
        let seen: Vec<(i64, i64, Option<i64>)> = page
            .entries
            .iter()
            .map(|e| (e.id, e.time, e.from_peer.as_ref().map(|d| d.k)))
            .collect();
        assert_eq!(
            seen,
            vec![
                (4, 100, Some(7)),
                (5, 101, None),
                (6, 101, None),
                (7, 102, None)
            ],
            "ours, another sender's and one without k are positions only"
        );
        assert_eq!(page.entries[0].from_peer.as_ref().unwrap().text, "hi");
        let open = DmWindow {
            max: None,
            ..window
        };
        c.get_direct_msgs("bob", 10, &open).unwrap();
        assert_eq!(
            *raw.0.lock().unwrap(),
            json!(["bob", 10, [{"username": "alice", "since_id": 3}]])
        );
        assert_eq!(
            client(Ok(json!("odd")))
                .get_direct_msgs("bob", 1, &open)
                .unwrap(),
            DmPage::default()
        );
    }

    #[test]
    fn lasthave_height_and_dht_replies_are_typed() {
        let m = client(Ok(json!({"a": 3, "b": "x"})))
            .get_last_have("a", None)
            .unwrap();
        assert_eq!(
            m.into_iter().collect::<Vec<_>>(),
            vec![("a".to_string(), 3)]
        );
        assert!(client(Ok(json!([1])))
            .get_last_have("a", None)
            .unwrap()
            .is_empty());
        assert_eq!(client(Ok(json!({"blocks": 7}))).get_height(), Ok(Some(7)));
        assert_eq!(client(Ok(json!({}))).get_height(), Ok(None));
        let e = client(Ok(json!([{"p": {"seq": 4, "v": {"x": 1}}}])))
            .dht_get("a", "profile", 10)
            .unwrap();
        assert_eq!((e.seq, e.value, e.writer), (4, json!({"x": 1}), None));
        // The writer is known only when the signer is the owner of the value.
        let signed = |sig: &str, n: &str| {
            client(Ok(json!([{"p": {"seq": 1, "v": 1, "target": {"n": n, "r": "r", "t": "s"}}, "sig_user": sig}])))
                .dht_get("bob", "r", 10)
                .unwrap()
                .writer
        };
        assert_eq!(signed("bob", "bob"), Some("bob".to_string()));
        assert_eq!(signed("mallory", "bob"), None);
        assert_eq!(
            client(Ok(json!([]))).dht_get("a", "profile", 10).unwrap(),
            DhtEntry::default()
        );
    }
}
