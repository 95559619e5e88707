//! A fault on purpose: the node forgets the newest pieces of a user, as a twisterd killed right after
//! accepting them does (one restarted at post 289 while a peer already held 290). Peers keep theirs.

use super::Node;

impl Node {
    /// Forgets the newest `n` pieces (posts and DMs) of `user`'s torrent, and the DMs they carried from
    /// the conversations of wallet users. Returns their numbers, newest first.
    pub fn forget_newest(&mut self, user: &str, n: usize) -> Vec<i64> {
        let Some(t) = self.state.torrents.get_mut(user) else {
            return Vec::new();
        };
        let gone: Vec<i64> = t.pieces.keys().rev().take(n).copied().collect();
        for k in &gone {
            t.pieces.remove(k);
        }
        t.lastk = t
            .pieces
            .iter()
            .filter(|(_, p)| p.dm.is_none())
            .map(|(k, _)| *k)
            .next_back();
        for w in &mut self.state.wallet {
            for dms in w.conversations.values_mut() {
                dms.retain(|d| !(d.from == user && gone.contains(&d.k)));
            }
        }
        if !gone.is_empty() {
            self.touch();
        }
        gone
    }
}

#[cfg(test)]
mod tests {
    use crate::node::{Blocks, Node, State};
    use crate::rpc::{execute, Shared};
    use serde_json::{json, Value};

    fn ok(s: &Shared, method: &str, params: Value) -> Value {
        execute(s, &json!({"method": method, "params": params, "id": 1}))
            .unwrap_or_else(|e| panic!("{method} {params}: {e}"))
    }

    fn texts(s: &Shared) -> Vec<String> {
        let posts = ok(s, "getposts", json!([10, [{"username": "alice"}]]));
        let mut v: Vec<(i64, String)> = posts
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                let up = &p["userpost"];
                (
                    up["k"].as_i64().unwrap(),
                    up["msg"].as_str().unwrap().into(),
                )
            })
            .collect();
        v.sort();
        v.into_iter().map(|(_, t)| t).collect()
    }

    #[test]
    fn the_newest_pieces_are_forgotten_and_their_numbers_are_taken_again() {
        let s = Shared::new(Node::new(State::default(), Blocks::Manual, 0), None);
        ok(&s, "createwalletuser", json!(["alice"]));
        ok(&s, "sendnewusertransaction", json!(["alice"]));
        ok(&s, "devnode_mine", json!([2]));
        ok(&s, "follow", json!(["alice", ["alice"]]));
        for k in 1..=4 {
            ok(&s, "newpostmsg", json!(["alice", k, format!("post {k}")]));
        }
        ok(&s, "newdirectmsg", json!(["alice", 5, "alice", "note"]));
        let answer = ok(
            &s,
            "devnode_fault",
            json!([{"forget_newest": {"alice": 2}}]),
        );
        assert_eq!(answer["forgotten"], json!({"alice": [5, 4]}));
        assert_eq!(ok(&s, "getlasthave", json!(["alice"]))["alice"], json!(3));
        assert_eq!(texts(&s), ["post 1", "post 2", "post 3"]);
        let dms = ok(
            &s,
            "getdirectmsgs",
            json!(["alice", 10, [{"username": "alice"}]]),
        );
        assert!(
            dms.get("alice")
                .is_none_or(|c| c.as_array().unwrap().is_empty()),
            "{dms}"
        );
        // twisterd takes a forgotten number again, for other text: what the plugin must never do,
        // since peers may hold the first post under it.
        ok(&s, "newpostmsg", json!(["alice", 4, "another text"]));
        assert_eq!(texts(&s), ["post 1", "post 2", "post 3", "another text"]);
        // A one-shot action, not a lasting fault; unknown users forget nothing.
        let answer = ok(
            &s,
            "devnode_fault",
            json!([{"forget_newest": {"nobody": 3}}]),
        );
        assert_eq!(answer["forgotten"], json!({"nobody": []}));
        assert_eq!(ok(&s, "getlasthave", json!(["alice"]))["alice"], json!(4));
    }
}
