//! One machine's twisterd: wallet, chain height, torrents of posts and DMs, and the DHT, with the rules
//! twister-core enforces. Every RPC method is a function of `Node`; none does I/O. This file holds the
//! state and the method table; the methods live by subject in `chain`, `wallet`, `posts` and `dht`,
//! peering in `replicate`, the crash fault in `forget`.

use crate::error::*;
use crate::params::{user_windows, Params};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use twister_rules::{self as rules, bencode_len, bencode_normalize, errors, PostHeader};

const FLAG_DM: i64 = 2;
/// DHT "m" items expire after about two weeks.
const DHT_MULTI_TTL_S: i64 = 14 * 24 * 3600;
const SPAM_USER: &str = "nobody";
const SPAM_MSG: &str = "Promoted posts are needed to run the network infrastructure. If you want to help, start generating blocks and advertise. [en]";

/// Stores a DM in a conversation where twisterd's `storeNewDM` does: before the first stored DM whose
/// time is equal or later. DMs of one second are therefore listed newest first, not by `k`, and the
/// positions (getdirectmsgs ids) of stored DMs shift when a DM is inserted before them.
pub fn insert_dm(conv: &mut Vec<DmEntry>, dm: DmEntry) {
    let at = conv
        .iter()
        .position(|e| e.time >= dm.time)
        .unwrap_or(conv.len());
    conv.insert(at, dm);
}

/// Everything that survives a restart.
#[derive(Serialize, Deserialize, Default, Clone)]
pub struct State {
    pub height: i64,
    /// User -> height of the block that registered it.
    pub registered: BTreeMap<String, i64>,
    /// Registrations waiting for the next block.
    pub mempool: Vec<String>,
    pub wallet: Vec<WalletUser>,
    pub torrents: BTreeMap<String, Torrent>,
    /// Key: "n/r/t" (n and r cannot contain '\0', so they are joined with it).
    pub dht: BTreeMap<String, Vec<DhtItem>>,
    /// Unix time the promoted post was last put in front of getposts.
    pub spam_shown_at: i64,
    /// Order in which pieces arrived, to keep time ties stable.
    pub arrivals: u64,
}

#[derive(Serialize, Deserialize, Clone)]
pub struct WalletUser {
    pub name: String,
    pub key: String,
    pub following: BTreeSet<String>,
    /// Peer -> the DMs of that conversation this user holds, in twisterd's order (`insert_dm`).
    pub conversations: BTreeMap<String, Vec<DmEntry>>,
}

#[derive(Serialize, Deserialize, Clone, Default)]
pub struct Torrent {
    /// Absent from the data directory's snapshot: pieces are kept in its append-only log.
    #[serde(default)]
    pub pieces: BTreeMap<i64, Piece>,
    /// `k` of the author's newest public post: the next post's `lastk`.
    pub lastk: Option<i64>,
}

#[derive(Serialize, Deserialize, Clone)]
pub struct Piece {
    pub post: Value,
    pub flags: i64,
    pub time: i64,
    pub arrival: u64,
    /// A DM's recipient and text, held apart from the (opaque) post so only sender and recipient read it.
    pub dm: Option<DmSecret>,
}

#[derive(Serialize, Deserialize, Clone)]
pub struct DmSecret {
    pub to: String,
    pub text: String,
}

#[derive(Serialize, Deserialize, Clone, PartialEq)]
pub struct DmEntry {
    pub time: i64,
    pub text: String,
    pub from_me: bool,
    pub from: String,
    pub k: i64,
}

#[derive(Serialize, Deserialize, Clone)]
pub struct DhtItem {
    pub p: Value,
    pub sig_p: String,
    pub sig_user: String,
    pub time: i64,
}

/// How the chain advances.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Blocks {
    /// A block every interval, like the real network (600 s) or faster for development.
    Every(Duration),
    /// Only when asked (`setgenerate true`, `devnode_mine`), like twisterd on regtest.
    Manual,
}

#[derive(Default, Clone, Copy, Serialize)]
pub struct Counters {
    pub calls: u64,
    pub errors: u64,
    pub posts_stored: u64,
    pub dms_stored: u64,
    pub duplicate_k_ignored: u64,
    pub dms_dropped_not_following: u64,
    pub dht_puts_dropped: u64,
    /// Posts and DMs refused for the post budget ("too much posts from user ...").
    pub posts_refused_budget: u64,
}

pub struct Node {
    pub state: State,
    blocks: Blocks,
    next_block_at: Instant,
    spam_interval_s: i64,
    /// Authors whose torrent runs on this node (started by a follow; unfollow does not stop it).
    started: BTreeSet<String>,
    rng: u64,
    pub dirty: bool,
    pub counters: Counters,
    pub stop_requested: bool,
    /// Incremented by every change of `state`: a reply waits until its generation is on disk.
    pub generation: u64,
    /// Where updates for the peers go, when this node peers (`crate::peer`).
    peers: Option<std::sync::mpsc::Sender<Update>>,
    /// Peer connections open now (getinfo's `connections`).
    pub peer_connections: usize,
    /// With a data directory: pieces stored since the last write, for its append-only log.
    pub journal: Option<Vec<(String, i64)>>,
}

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Methods this node answers, with twisterd's usage text (also the -1 answer to a wrong count).
pub struct Method {
    pub name: &'static str,
    pub min: usize,
    pub max: usize,
    pub usage: &'static str,
    pub mutates: bool,
    pub call: fn(&mut Node, &Params) -> Result<Value, RpcError>,
}

macro_rules! method {
    ($name:literal, $min:expr, $max:expr, $mutates:expr, $f:ident, $usage:expr) => {
        Method {
            name: $name,
            min: $min,
            max: $max,
            usage: $usage,
            mutates: $mutates,
            call: Node::$f,
        }
    };
}

pub static METHODS: &[Method] = &[
    method!("createwalletuser", 1, 2, true, createwalletuser, "createwalletuser <username> [replacekey]\nCreate a new key pair for user and add it to wallet\nUse sendnewusertransaction to publish it to the network.\nReturns key secret (keep it safe)"),
    method!("dhtget", 3, 6, false, dhtget, "dhtget <username> <resource> <s(ingle)/m(ulti)> [timeout_ms] [timeout_multi_ms] [min_multi]\nGet resource from dht network"),
    method!("dhtput", 5, 6, true, dhtput, "dhtput <username> <resource> <s(ingle)/m(ulti)> <value> <sig_user> <seq>\nStore resource in dht network"),
    method!("follow", 2, 2, true, follow, "follow <username> [follow_username1,follow_username2,...]\nstart following users"),
    method!("getblockcount", 0, 0, false, getblockcount, "getblockcount\nReturns the number of blocks in the longest block chain."),
    method!("getdirectmsgs", 3, 3, false, getdirectmsgs, "getdirectmsgs <localuser> <count_per_user> '[{\"username\":username,\"max_id\":max_id,\"since_id\":since_id},...]'\nget (locally stored) decrypted direct messages sent/received by user <localuser>\nmax_id and since_id may be omited. up to <count_per_user> are returned for each remote user."),
    method!("getfollowing", 1, 1, false, getfollowing, "getfollowing <username>\nget list of users we follow"),
    method!("getgenerate", 0, 0, false, getgenerate, "getgenerate\nReturns true or false."),
    method!("getinfo", 0, 0, false, getinfo, "getinfo\nReturns an object containing various state info."),
    method!("getlasthave", 1, 2, false, getlasthave, "getlasthave <username> | <groupname> [user1,user2...]\nget last 'have' (higher post number) of each user local user follows.\nif a groupname with an array is given, only those users' last 'have' values will be returned."),
    method!("getposts", 2, 4, false, getposts, "getposts <count> '[{\"username\":username,\"max_id\":max_id,\"since_id\":since_id},...]' [allowed_flags=~2] [required_flags=0]\nget posts from users\nmax_id and since_id may be omited\n(optional) allowed/required flags are bitwise fields (1=RT,2=DM,4=FAV,12=PFAV)"),
    method!("help", 0, 1, false, help, "help [command]\nList commands, or get help for a command."),
    method!("listwalletusers", 0, 0, false, listwalletusers, "listwalletusers\nlist wallet users"),
    method!("newdirectmsg", 4, 5, true, newdirectmsg, "newdirectmsg <from> <k> <to> <msg> [copy_self=false]\nPost a new dm to swarm.\nif copy_self true will increase k twice (two DMs)."),
    // Stores only a piece (the data directory's log has it): no snapshot of the rest needed.
    method!("newpostmsg", 3, 5, false, newpostmsg, "newpostmsg <username> <k> <msg> [reply_n] [reply_k]\nPost a new message to swarm"),
    method!("rescandirectmsgs", 1, 1, true, rescandirectmsgs, "rescandirectmsgs <username>\nrescan all streams of users we follow for new and old directmessages"),
    method!("sendnewusertransaction", 1, 1, true, sendnewusertransaction, "sendnewusertransaction <username>\nSend a transaction registering a previously created new user\nusing createwalletuser or imported with importprivkey\nreturns transaction id"),
    method!("setgenerate", 1, 2, true, setgenerate, "setgenerate <generate> [genproclimit]\n<generate> is true or false to turn generation on or off.\nOn this node (as on regtest) true mines one block at once."),
    method!("stop", 0, 0, false, stop, "stop\nStop twister server."),
    method!("unfollow", 2, 2, true, unfollow, "unfollow <username> [unfollow_username1,unfollow_username2,...]\nstop following users"),
    // Outside twisterd's namespace: the dev node's own controls.
    method!("devnode_mine", 0, 1, true, devnode_mine, "devnode_mine [blocks=1]\nmine blocks at once (dev node only)"),
    method!("devnode_stats", 0, 0, false, devnode_stats, "devnode_stats\ncounters and sizes (dev node only)"),
];

pub fn find_method(name: &str) -> Option<&'static Method> {
    METHODS.iter().find(|m| m.name == name)
}

fn sig_error() -> RpcError {
    RpcError::internal(errors::MSG_SIGNING_FAILED)
}

fn too_many_posts(user: &str) -> RpcError {
    RpcError::invalid_params(errors::too_many_posts(user))
}

fn dht_key(n: &str, r: &str, t: &str) -> String {
    format!("{n}\0{r}\0{t}")
}

impl Node {
    pub fn new(state: State, blocks: Blocks, spam_interval_s: i64) -> Self {
        // A restarted twisterd runs the torrents of the users its wallet follows.
        let started = state
            .wallet
            .iter()
            .flat_map(|w| w.following.iter().cloned())
            .collect();
        let seed = (unix_now() as u64)
            ^ (std::process::id() as u64).rotate_left(32)
            ^ 0x9e37_79b9_7f4a_7c15;
        let next_block_at = Instant::now() + blocks.interval().unwrap_or_default();
        Node {
            state,
            blocks,
            next_block_at,
            spam_interval_s,
            started,
            rng: seed | 1,
            dirty: false,
            counters: Counters::default(),
            stop_requested: false,
            generation: 0,
            peers: None,
            peer_connections: 0,
            journal: None,
        }
    }

    /// From now on every change made by an RPC is also sent to `tx` for the peers.
    pub fn set_peers(&mut self, tx: std::sync::mpsc::Sender<Update>) {
        self.peers = Some(tx);
    }

    /// Marks the state changed: saved at the next flush, and before the reply of the call that changed it.
    pub fn touch(&mut self) {
        self.dirty = true;
        self.generation += 1;
    }

    // ----- chain -----

    /// Brings the height up to date; called before every RPC, so no timer thread is needed.
    pub fn advance_chain(&mut self, now: Instant) {
        if let Blocks::Every(interval) = self.blocks {
            while now >= self.next_block_at {
                self.mine_block();
                self.next_block_at += interval;
            }
        }
    }

    pub fn mine_block(&mut self) {
        self.state.height += 1;
        let h = self.state.height;
        for user in std::mem::take(&mut self.state.mempool) {
            self.state.registered.entry(user).or_insert(h);
        }
        self.touch();
        self.announce_chain();
    }

    // ----- helpers -----

    fn rand(&mut self) -> u64 {
        // xorshift64*: identifiers and fake key material only, nothing secret.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn random_hex(&mut self, bytes: usize, first: Option<u8>) -> String {
        let mut s = String::with_capacity(bytes * 2);
        for i in 0..bytes {
            let b = match (i, first) {
                (0, Some(f)) => f,
                _ => self.rand() as u8,
            };
            const HEX: &[u8; 16] = b"0123456789abcdef";
            s.push(HEX[usize::from(b >> 4)] as char);
            s.push(HEX[usize::from(b & 15)] as char);
        }
        s
    }

    fn signature(&mut self) -> String {
        let first = if self.rand() & 1 == 0 { 0x1f } else { 0x20 };
        self.random_hex(rules::SIGNATURE_BYTES, Some(first))
    }

    fn wallet(&self, name: &str) -> Option<&WalletUser> {
        self.state.wallet.iter().find(|w| w.name == name)
    }

    fn wallet_mut(&mut self, name: &str) -> Option<&mut WalletUser> {
        self.state.wallet.iter_mut().find(|w| w.name == name)
    }

    fn follows(&self, local: &str, author: &str) -> bool {
        self.wallet(local)
            .is_some_and(|w| w.following.contains(author))
    }

    fn next_arrival(&mut self) -> u64 {
        self.state.arrivals += 1;
        self.state.arrivals
    }

    /// twisterd's post-number and signature checks, in its order.
    fn check_post_number(
        &mut self,
        user: &str,
        k: i64,
        signed_height: i64,
    ) -> Result<(), RpcError> {
        let Some(&reg) = self.state.registered.get(user) else {
            return Err(too_many_posts(user));
        };
        if k < 0 || k > rules::max_post_number(self.state.height, reg) {
            self.counters.posts_refused_budget += 1;
            return Err(too_many_posts(user));
        }
        // The post is signed at best-1 with the key valid at that height: one block after registration.
        if signed_height < reg {
            return Err(RpcError::invalid_params(errors::MSG_BAD_POST_SIGNATURE));
        }
        Ok(())
    }

    fn signed_post(&mut self, userpost: Map<String, Value>) -> Value {
        json!({"sig_userpost": self.signature(), "userpost": Value::Object(userpost)})
    }

    /// Delivers DM piece `k` of `from` to its recipient's conversation if the recipient is a wallet user
    /// who follows the sender now; otherwise it is dropped, as twisterd drops it on arrival.
    fn deliver_dm(&mut self, from: &str, k: i64) -> bool {
        let Some(piece) = self.state.torrents.get(from).and_then(|t| t.pieces.get(&k)) else {
            return false;
        };
        let Some(secret) = piece.dm.clone() else {
            return false;
        };
        let time = piece.time;
        if secret.to == from || !self.follows(&secret.to, from) {
            return false;
        }
        let Some(w) = self.wallet_mut(&secret.to) else {
            return false;
        };
        let conv = w.conversations.entry(from.to_string()).or_default();
        // twisterd keeps one of two DMs with the same text in the same second, and a piece once.
        if conv.iter().any(|e| {
            !e.from_me && ((e.time == time && e.text == secret.text) || e.k == k && e.from == from)
        }) {
            return false;
        }
        insert_dm(
            conv,
            DmEntry {
                time,
                text: secret.text,
                from_me: false,
                from: from.to_string(),
                k,
            },
        );
        true
    }

    fn announce_chain(&mut self) {
        if self.peers.is_some() {
            let chain = self.chain_view();
            self.announce(Update::Chain(chain));
        }
    }

    fn announce_piece(&mut self, user: &str, k: i64) {
        if self.peers.is_none() {
            return;
        }
        if let Some(piece) = self.state.torrents.get(user).and_then(|t| t.pieces.get(&k)) {
            let u = Update::Piece {
                user: user.to_string(),
                k,
                piece: piece.clone(),
            };
            self.announce(u);
        }
    }

    fn dm_pieces_of(&self, from: &str) -> Vec<i64> {
        self.state
            .torrents
            .get(from)
            .map(|t| {
                t.pieces
                    .iter()
                    .filter(|(_, p)| p.dm.is_some())
                    .map(|(k, _)| *k)
                    .collect()
            })
            .unwrap_or_default()
    }

    // ----- RPC methods -----
}

impl Blocks {
    pub fn interval(&self) -> Option<Duration> {
        match self {
            Blocks::Every(d) => Some(*d),
            Blocks::Manual => None,
        }
    }
}

mod chain;
mod dht;
mod forget;
mod posts;
mod replicate;
mod wallet;
pub use replicate::{Digest, Update};

#[cfg(test)]
mod dht_tests;
#[cfg(test)]
mod dm_tests;
#[cfg(test)]
mod tests;
