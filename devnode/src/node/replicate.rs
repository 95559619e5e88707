//! What peering dev nodes exchange and how a node merges what a peer sends (see `crate::peer`).
//!
//! The replicated state converges whatever the order things arrive in: the chain height is the
//! highest seen, a user's registration height the lowest seen (registrations are never undone), the
//! mempool the union of what is not registered yet, a torrent's pieces a grow-only map where the
//! first piece seen under a `k` stays (as on the network: a second post under a `k` is ignored),
//! a DHT "s" value the one with the highest `seq`, a DHT "m" list the union (newest kept). Wallets,
//! keys, follows and decrypted DM conversations are never sent: each node answers for its own users.

use super::{DhtItem, Node, Piece};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use twister_rules as rules;

/// Something a node changed that its peers should learn (queued by RPC methods when peering is on).
#[derive(Serialize, Deserialize, Clone)]
#[serde(tag = "t", rename_all = "lowercase")]
pub enum Update {
    Chain(ChainView),
    Piece { user: String, k: i64, piece: Piece },
    Dht { key: String, items: Vec<DhtItem> },
}

#[derive(Serialize, Deserialize, Clone, Default)]
pub struct ChainView {
    pub height: i64,
    pub registered: BTreeMap<String, i64>,
    pub mempool: Vec<String>,
}

/// What a node holds, compactly: sent on every (re)connection so the peer sends back what is missing.
#[derive(Serialize, Deserialize, Clone, Default)]
pub struct Digest {
    pub chain: ChainView,
    /// User -> the post numbers held, as inclusive ranges.
    pub have: BTreeMap<String, Vec<(i64, i64)>>,
    /// DHT key -> (highest "s" seq or -1, number of items).
    pub dht: BTreeMap<String, (i64, usize)>,
}

/// Ascending numbers as inclusive ranges.
pub fn ranges(ks: impl Iterator<Item = i64>) -> Vec<(i64, i64)> {
    let mut out: Vec<(i64, i64)> = Vec::new();
    for k in ks {
        match out.last_mut() {
            Some((_, hi)) if *hi + 1 == k => *hi = k,
            _ => out.push((k, k)),
        }
    }
    out
}

fn in_ranges(r: &[(i64, i64)], k: i64) -> bool {
    // Ranges are sorted: binary search on the low ends.
    let i = r.partition_point(|(lo, _)| *lo <= k);
    i > 0 && r[i - 1].1 >= k
}

fn seq_of(items: &[DhtItem]) -> i64 {
    items
        .first()
        .and_then(|i| i.p.get("seq"))
        .and_then(serde_json::Value::as_i64)
        .unwrap_or(-1)
}

/// A DHT key is "n\0r\0t" with a valid user, a resource within twisterd's limit and "s" or "m".
fn valid_dht_key(key: &str) -> bool {
    let mut parts = key.split('\0');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(n), Some(r), Some(t), None) => {
            !n.is_empty()
                && n.len() <= rules::MAX_USERNAME
                && !r.is_empty()
                && r.len() <= rules::MAX_DHT_RESOURCE
                && (t == "s" || t == "m")
        }
        _ => false,
    }
}

impl Node {
    /// Queues an update for the peers, when this node peers.
    pub(super) fn announce(&mut self, u: Update) {
        if let Some(tx) = &self.peers {
            // The hub may be gone while stopping: then nobody needs to hear it.
            let _ = tx.send(u);
        }
    }

    pub fn chain_view(&self) -> ChainView {
        ChainView {
            height: self.state.height,
            registered: self.state.registered.clone(),
            mempool: self.state.mempool.clone(),
        }
    }

    pub fn digest(&self) -> Digest {
        Digest {
            chain: self.chain_view(),
            have: self
                .state
                .torrents
                .iter()
                .map(|(u, t)| (u.clone(), ranges(t.pieces.keys().copied())))
                .collect(),
            dht: self
                .state
                .dht
                .iter()
                .map(|(k, v)| (k.clone(), (seq_of(v), v.len())))
                .collect(),
        }
    }

    /// What the peer that sent `theirs` lacks: our chain if it adds anything, every piece it does
    /// not hold, and DHT values newer or more numerous than its own.
    pub fn missing_from(&self, theirs: &Digest) -> Vec<Update> {
        let mut out = vec![Update::Chain(self.chain_view())];
        for (user, t) in &self.state.torrents {
            let held = theirs.have.get(user).map(Vec::as_slice).unwrap_or(&[]);
            for (k, piece) in &t.pieces {
                if !in_ranges(held, *k) {
                    out.push(Update::Piece {
                        user: user.clone(),
                        k: *k,
                        piece: piece.clone(),
                    });
                }
            }
        }
        for (key, items) in &self.state.dht {
            let newer = match theirs.dht.get(key) {
                None => true,
                Some((seq, count)) if key.ends_with("\0s") => seq_of(items) > *seq || *count == 0,
                Some((_, count)) => items.len() != *count,
            };
            if newer {
                out.push(Update::Dht {
                    key: key.clone(),
                    items: items.clone(),
                });
            }
        }
        out
    }

    /// Merges an update from a peer; true when it changed anything (then it is passed on to the other
    /// peers, so updates cross nodes that are not connected directly). Malformed input is refused.
    pub fn apply_update(&mut self, u: &Update) -> Result<bool, String> {
        let changed = match u {
            Update::Chain(c) => self.merge_chain(c)?,
            // A stored piece counts itself for the data directory's log (`store_piece`); a DM it
            // delivers changes a conversation, which the snapshot holds.
            Update::Piece { user, k, piece } => return self.merge_piece(user, *k, piece),
            Update::Dht { key, items } => self.merge_dht(key, items)?,
        };
        if changed {
            self.touch();
        }
        Ok(changed)
    }

    fn merge_chain(&mut self, c: &ChainView) -> Result<bool, String> {
        if c.height < 0 {
            return Err("negative height".into());
        }
        if let Some(bad) = c
            .registered
            .keys()
            .chain(c.mempool.iter())
            .find(|u| !rules::is_valid_username(u))
        {
            return Err(format!("invalid user name {bad:?}"));
        }
        let mut changed = false;
        if c.height > self.state.height {
            self.state.height = c.height;
            changed = true;
        }
        for (user, &h) in &c.registered {
            let h = h.clamp(0, c.height);
            match self.state.registered.get_mut(user) {
                Some(mine) if *mine <= h => {}
                Some(mine) => {
                    *mine = h;
                    changed = true;
                }
                None => {
                    self.state.registered.insert(user.clone(), h);
                    changed = true;
                }
            }
        }
        for user in &c.mempool {
            if !self.state.registered.contains_key(user) && !self.state.mempool.contains(user) {
                self.state.mempool.push(user.clone());
                changed = true;
            }
        }
        let before = self.state.mempool.len();
        let registered = &self.state.registered;
        self.state.mempool.retain(|u| !registered.contains_key(u));
        Ok(changed || before != self.state.mempool.len())
    }

    fn merge_piece(&mut self, user: &str, k: i64, piece: &Piece) -> Result<bool, String> {
        if !rules::is_valid_username(user) || k < 0 {
            return Err(format!("invalid piece {user:?}/{k}"));
        }
        if let Some(dm) = &piece.dm {
            if !rules::is_valid_username(&dm.to) {
                return Err(format!("invalid DM recipient {:?}", dm.to));
            }
        }
        if !self.store_piece(
            user,
            k,
            piece.post.clone(),
            piece.flags,
            piece.time,
            piece.dm.clone(),
        ) {
            return Ok(false);
        }
        // A DM reaches a wallet user here who follows the sender, as twisterd decrypts it on arrival.
        if piece.dm.is_some() && self.started.contains(user) && self.deliver_dm(user, k) {
            self.touch();
        }
        Ok(true)
    }

    fn merge_dht(&mut self, key: &str, items: &[DhtItem]) -> Result<bool, String> {
        if !valid_dht_key(key) || items.len() > rules::DHT_MULTI_KEEP {
            return Err("invalid DHT update".into());
        }
        let multi = key.ends_with("\0m");
        let slot = self.state.dht.entry(key.to_string()).or_default();
        if multi {
            let mut changed = false;
            for item in items {
                let dup = slot
                    .iter()
                    .any(|i| i.sig_user == item.sig_user && i.p.get("v") == item.p.get("v"));
                if !dup {
                    slot.push(item.clone());
                    changed = true;
                }
            }
            slot.sort_by_key(|i| i.time);
            if slot.len() > rules::DHT_MULTI_KEEP {
                let excess = slot.len() - rules::DHT_MULTI_KEEP;
                slot.drain(..excess);
            }
            Ok(changed)
        } else {
            let Some(item) = items.first() else {
                return Ok(false);
            };
            let theirs = seq_of(items);
            if slot.is_empty() || theirs > seq_of(slot) {
                *slot = vec![item.clone()];
                return Ok(true);
            }
            Ok(false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_compress_and_find() {
        let r = ranges([0, 1, 2, 5, 7, 8].into_iter());
        assert_eq!(r, vec![(0, 2), (5, 5), (7, 8)]);
        for k in [0, 1, 2, 5, 7, 8] {
            assert!(in_ranges(&r, k), "{k}");
        }
        for k in [-1, 3, 4, 6, 9] {
            assert!(!in_ranges(&r, k), "{k}");
        }
        assert!(!in_ranges(&[], 0));
    }

    fn chain(height: i64, registered: &[(&str, i64)], mempool: &[&str]) -> Update {
        Update::Chain(ChainView {
            height,
            registered: registered
                .iter()
                .map(|(u, h)| (u.to_string(), *h))
                .collect(),
            mempool: mempool.iter().map(|u| u.to_string()).collect(),
        })
    }

    fn fresh() -> Node {
        Node::new(Default::default(), crate::node::Blocks::Manual, 0)
    }

    #[test]
    fn chains_converge_whatever_the_order() {
        let updates = [
            chain(5, &[("alice", 2)], &["bob"]),
            chain(9, &[("alice", 3), ("bob", 7)], &[]),
            chain(4, &[("carol", 4)], &["dave", "bob"]),
        ];
        let mut one = fresh();
        let mut two = fresh();
        for u in &updates {
            one.apply_update(u).unwrap();
        }
        for u in updates.iter().rev() {
            two.apply_update(u).unwrap();
        }
        for n in [&one, &two] {
            assert_eq!(n.state.height, 9, "the highest height");
            assert_eq!(n.state.registered["alice"], 2, "the earliest registration");
            assert_eq!(n.state.registered["bob"], 7);
            assert_eq!(
                n.state.mempool,
                vec!["dave"],
                "registered users leave the mempool"
            );
        }
        // Nothing new: no change reported, so nothing is passed on again.
        assert!(!one.apply_update(&updates[1]).unwrap());
        assert!(one.apply_update(&chain(-1, &[], &[])).is_err());
        assert!(one.apply_update(&chain(10, &[("No Way", 1)], &[])).is_err());
    }

    fn dht(key: &str, seq: i64, v: &str) -> Update {
        Update::Dht {
            key: key.into(),
            items: vec![DhtItem {
                p: serde_json::json!({"seq": seq, "v": v}),
                sig_p: String::new(),
                sig_user: "alice".into(),
                time: seq,
            }],
        }
    }

    #[test]
    fn dht_single_values_keep_the_highest_seq_and_multi_lists_the_union() {
        let mut n = fresh();
        let key = "alice\0profile\0s";
        assert!(n.apply_update(&dht(key, 2, "two")).unwrap());
        assert!(!n.apply_update(&dht(key, 1, "one")).unwrap());
        assert_eq!(n.state.dht[key][0].p["v"], "two");
        let multi = "alice\0tags\0m";
        assert!(n.apply_update(&dht(multi, 0, "x")).unwrap());
        assert!(n.apply_update(&dht(multi, 0, "y")).unwrap());
        assert!(!n.apply_update(&dht(multi, 0, "x")).unwrap());
        assert_eq!(n.state.dht[multi].len(), 2);
        assert!(n.apply_update(&dht("alice\0profile\0q", 1, "bad")).is_err());
    }

    #[test]
    fn a_digest_asks_for_exactly_the_missing_pieces() {
        let mut n = fresh();
        for k in [0, 1, 2, 5] {
            let piece = Piece {
                post: serde_json::json!({"k": k}),
                flags: 0,
                time: 1,
                arrival: 0,
                dm: None,
            };
            n.apply_update(&Update::Piece {
                user: "alice".into(),
                k,
                piece,
            })
            .unwrap();
        }
        let mut theirs = Digest::default();
        theirs.have.insert("alice".into(), vec![(0, 1)]);
        let sent: Vec<i64> = n
            .missing_from(&theirs)
            .iter()
            .filter_map(|u| match u {
                Update::Piece { k, .. } => Some(*k),
                _ => None,
            })
            .collect();
        assert_eq!(sent, vec![2, 5]);
        // The first piece under a number stays, as on the network.
        let other = Piece {
            post: serde_json::json!({"k": "other"}),
            flags: 0,
            time: 1,
            arrival: 0,
            dm: None,
        };
        let u = Update::Piece {
            user: "alice".into(),
            k: 0,
            piece: other,
        };
        assert!(!n.apply_update(&u).unwrap());
        assert_eq!(n.state.torrents["alice"].pieces[&0].post["k"], 0);
        assert_eq!(n.state.torrents["alice"].lastk, Some(5));
    }

    #[test]
    fn dht_keys_are_checked() {
        assert!(valid_dht_key("alice\0profile\0s"));
        assert!(!valid_dht_key("alice\0profile\0x"));
        assert!(!valid_dht_key("alice\0profile"));
        assert!(!valid_dht_key(&format!("alice\0{}\0s", "r".repeat(33))));
    }
}
