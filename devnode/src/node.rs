//! One machine's twisterd: wallet, chain height, torrents of posts and DMs, and the DHT, with the rules
//! twister-core enforces. Every RPC method is a function of `Node`; none does I/O.

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
    fn check_post_number(&self, user: &str, k: i64, signed_height: i64) -> Result<(), RpcError> {
        let Some(&reg) = self.state.registered.get(user) else {
            return Err(too_many_posts(user));
        };
        if k < 0 || k > rules::max_post_number(self.state.height, reg) {
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

    fn getinfo(&mut self, _: &Params) -> Result<Value, RpcError> {
        let mut o = Map::new();
        for (k, v) in [
            ("version", json!(94000)),
            ("protocolversion", json!(70003)),
            ("walletversion", json!(60000)),
            ("blocks", json!(self.state.height)),
            ("timeoffset", json!(0)),
            ("connections", json!(self.peer_connections)),
            ("addrman_total", json!(0)),
            ("addrman_get", json!(0)),
            ("dht_nodes", json!(0)),
            ("dht_global_nodes", json!(0)),
            ("proxy", json!("")),
            ("ext_port1", json!(0)),
            ("ext_port2", json!(0)),
            ("difficulty", json!(0.0)),
            ("testnet", json!(false)),
            ("public_server_mode", json!(false)),
            ("errors", json!("")),
            ("ext_addr_net1", json!("")),
            ("ext_addr_net2", json!("")),
            ("dht_torrents", json!(self.started.len())),
        ] {
            o.insert(k.into(), v);
        }
        for k in [
            "num_peers",
            "peerlist_size",
            "num_active_requests",
            "download_rate",
            "upload_rate",
            "dht_download_rate",
            "dht_upload_rate",
            "ip_overhead_download_rate",
            "ip_overhead_upload_rate",
            "payload_download_rate",
            "payload_upload_rate",
            "total_download",
            "total_upload",
            "total_dht_download",
            "total_dht_upload",
            "total_ip_overhead_download",
            "total_ip_overhead_upload",
            "total_payload_download",
            "total_payload_upload",
        ] {
            o.insert(k.into(), json!(0));
        }
        Ok(Value::Object(o))
    }

    fn help(&mut self, p: &Params) -> Result<Value, RpcError> {
        if p.has(0) {
            let name = p.str(0)?;
            return Ok(match find_method(name) {
                Some(m) => json!(m.usage),
                None => json!(format!("help: unknown command: {name}")),
            });
        }
        let lines: Vec<&str> = METHODS
            .iter()
            .map(|m| m.usage.lines().next().unwrap_or(m.name))
            .collect();
        Ok(json!(lines.join("\n")))
    }

    fn stop(&mut self, _: &Params) -> Result<Value, RpcError> {
        self.stop_requested = true;
        Ok(json!("twister server stopping"))
    }

    fn getblockcount(&mut self, _: &Params) -> Result<Value, RpcError> {
        Ok(json!(self.state.height))
    }

    fn getgenerate(&mut self, _: &Params) -> Result<Value, RpcError> {
        Ok(json!(matches!(self.blocks, Blocks::Every(_))))
    }

    fn setgenerate(&mut self, p: &Params) -> Result<Value, RpcError> {
        if p.bool(0)? {
            self.mine_block();
        }
        Ok(Value::Null)
    }

    fn devnode_mine(&mut self, p: &Params) -> Result<Value, RpcError> {
        let n = p.opt_int(0, 1)?;
        if !(0..=100_000).contains(&n) {
            return Err(RpcError::invalid_params("blocks must be 0..100000"));
        }
        for _ in 0..n {
            self.mine_block();
        }
        Ok(json!(self.state.height))
    }

    fn devnode_stats(&mut self, _: &Params) -> Result<Value, RpcError> {
        let pieces: usize = self.state.torrents.values().map(|t| t.pieces.len()).sum();
        let dht_items: usize = self.state.dht.values().map(|v| v.len()).sum();
        Ok(json!({
            "height": self.state.height,
            "wallet_users": self.state.wallet.len(),
            "registered_users": self.state.registered.len(),
            "pieces": pieces,
            "dht_items": dht_items,
            "counters": self.counters,
        }))
    }

    fn createwalletuser(&mut self, p: &Params) -> Result<Value, RpcError> {
        let name = p.str(0)?.to_string();
        let replace = p.opt_bool(1, false)?;
        // WIF private key: 52 base58 characters (fake: nothing here is signed for real).
        const B58: &[u8] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
        let mut key = String::from(if self.rand() & 1 == 0 { "K" } else { "L" });
        for _ in 1..52 {
            key.push(B58[(self.rand() % B58.len() as u64) as usize] as char);
        }
        match self.wallet_mut(&name) {
            Some(w) if replace => w.key = key.clone(),
            Some(_) => {
                return Err(RpcError::new(
                    RPC_WALLET_INVALID_ACCOUNT_NAME,
                    errors::MSG_USER_EXISTS_IN_WALLET,
                ))
            }
            None => self.state.wallet.push(WalletUser {
                name,
                key: key.clone(),
                following: BTreeSet::new(),
                conversations: BTreeMap::new(),
            }),
        }
        Ok(json!(key))
    }

    fn listwalletusers(&mut self, _: &Params) -> Result<Value, RpcError> {
        Ok(json!(self
            .state
            .wallet
            .iter()
            .map(|w| w.name.clone())
            .collect::<Vec<_>>()))
    }

    fn sendnewusertransaction(&mut self, p: &Params) -> Result<Value, RpcError> {
        let name = p.str(0)?;
        if self.wallet(name).is_none() {
            return Err(RpcError::new(
                RPC_WALLET_INVALID_ACCOUNT_NAME,
                errors::MSG_USER_NOT_IN_WALLET,
            ));
        }
        let pending = self.state.mempool.iter().any(|u| u == name);
        if !rules::is_valid_username(name) || pending || self.state.registered.contains_key(name) {
            return Err(RpcError::new(RPC_VERIFY_REJECTED, errors::MSG_TX_REJECTED));
        }
        self.state.mempool.push(name.to_string());
        self.announce_chain();
        Ok(json!(self.random_hex(32, None)))
    }

    fn require_wallet_local(&self, name: &str) -> Result<(), RpcError> {
        // twisterd itself would create an empty following list for any name; the dev node is stricter.
        if self.wallet(name).is_none() {
            return Err(RpcError::new(
                RPC_WALLET_INVALID_ACCOUNT_NAME,
                errors::MSG_USER_NOT_IN_WALLET,
            ));
        }
        Ok(())
    }

    fn follow(&mut self, p: &Params) -> Result<Value, RpcError> {
        let local = p.str(0)?.to_string();
        let users = p.str_list(1)?;
        self.require_wallet_local(&local)?;
        for u in users {
            // Users not (yet) in a block are skipped silently.
            if !self.state.registered.contains_key(u) {
                continue;
            }
            if let Some(w) = self.wallet_mut(&local) {
                w.following.insert(u.to_string());
            }
            // A torrent that starts now downloads every piece: its DMs reach those who follow now.
            if self.started.insert(u.to_string()) {
                for k in self.dm_pieces_of(u) {
                    self.deliver_dm(u, k);
                }
            }
        }
        Ok(Value::Null)
    }

    fn unfollow(&mut self, p: &Params) -> Result<Value, RpcError> {
        let local = p.str(0)?.to_string();
        let users = p.str_list(1)?;
        self.require_wallet_local(&local)?;
        if let Some(w) = self.wallet_mut(&local) {
            for u in users {
                w.following.remove(u);
            }
        }
        Ok(Value::Null)
    }

    fn getfollowing(&mut self, p: &Params) -> Result<Value, RpcError> {
        let local = p.str(0)?;
        let list: Vec<String> = self
            .wallet(local)
            .map(|w| w.following.iter().cloned().collect())
            .unwrap_or_default();
        Ok(json!(list))
    }

    fn getlasthave(&mut self, p: &Params) -> Result<Value, RpcError> {
        let local = p.str(0)?;
        let only: Option<Vec<&str>> = if p.has(1) { Some(p.str_list(1)?) } else { None };
        let mut out = Map::new();
        if let Some(w) = self.wallet(local) {
            for u in &w.following {
                if only.as_ref().is_some_and(|o| !o.contains(&u.as_str())) {
                    continue;
                }
                let last = self
                    .state
                    .torrents
                    .get(u)
                    .and_then(|t| t.pieces.keys().next_back().copied())
                    .unwrap_or(-1);
                out.insert(u.clone(), json!(last));
            }
        }
        Ok(Value::Object(out))
    }

    fn newpostmsg(&mut self, p: &Params) -> Result<Value, RpcError> {
        let user = p.str(0)?.to_string();
        let k = p.int(1)?;
        let text = p.str(2)?.to_string();
        let reply = match p.len() {
            5 => Some((p.str(3)?.to_string(), p.int(4)?)),
            4 => {
                return Err(RpcError::misc(
                    find_method("newpostmsg").map(|m| m.usage).unwrap_or(""),
                ))
            }
            _ => None,
        };
        if self.wallet(&user).is_none() {
            return Err(sig_error());
        }
        let time = unix_now();
        let height = self.state.height - 1;
        let lastk = self.state.torrents.get(&user).and_then(|t| t.lastk);
        let header = PostHeader {
            user: &user,
            k,
            lastk,
            height,
            time,
            reply: reply.as_ref().map(|(n, k)| (n.as_str(), *k)),
        };
        if rules::post_size(&header, &text) > rules::MAX_POST_BYTES {
            return Err(RpcError::invalid_params(errors::MSG_BAD_POST_SIZE));
        }
        self.check_post_number(&user, k, height)?;

        let (msg, msg2) = rules::split_msg(&text);
        let mut up = Map::new();
        up.insert("height".into(), json!(height));
        up.insert("k".into(), json!(k));
        if let Some(lk) = lastk {
            up.insert("lastk".into(), json!(lk));
        }
        up.insert("msg".into(), json!(msg));
        if let Some(m2) = msg2 {
            up.insert("msg2".into(), json!(m2));
        }
        up.insert("n".into(), json!(user));
        if let Some((rn, rk)) = &reply {
            up.insert("reply".into(), json!({"k": rk, "n": rn}));
        }
        up.insert("time".into(), json!(time));
        let post = self.signed_post(up);
        if self.store_piece(&user, k, post.clone(), 0, time, None) {
            self.announce_piece(&user, k);
        }
        Ok(post)
    }

    /// Adds a piece to the author's torrent. A `k` already held is ignored silently, as on the network.
    fn store_piece(
        &mut self,
        user: &str,
        k: i64,
        post: Value,
        flags: i64,
        time: i64,
        dm: Option<DmSecret>,
    ) -> bool {
        if self
            .state
            .torrents
            .get(user)
            .is_some_and(|t| t.pieces.contains_key(&k))
        {
            self.counters.duplicate_k_ignored += 1;
            return false;
        }
        let arrival = self.next_arrival();
        let public = dm.is_none();
        let t = self.state.torrents.entry(user.to_string()).or_default();
        t.pieces.insert(
            k,
            Piece {
                post,
                flags,
                time,
                arrival,
                dm,
            },
        );
        if public {
            // Pieces from peers may come in any order: the newest post is the highest number.
            t.lastk = Some(t.lastk.map_or(k, |l| l.max(k)));
            self.counters.posts_stored += 1;
        } else {
            self.counters.dms_stored += 1;
        }
        // Pieces go to the data directory's append-only log, not the snapshot (see `store`).
        self.generation += 1;
        if let Some(j) = &mut self.journal {
            j.push((user.to_string(), k));
        }
        true
    }

    fn dm_post(
        &mut self,
        from: &str,
        k: i64,
        to: &str,
        text: &str,
        time: i64,
        height: i64,
    ) -> Value {
        let plain = rules::dm_plaintext_len(to, text.len());
        let body_len = plain.div_ceil(rules::DM_BLOCK) * rules::DM_BLOCK;
        let key_first = if self.rand() & 1 == 0 { 2 } else { 3 };
        let dm = json!({
            "body": self.random_hex(body_len, None),
            "key": self.random_hex(rules::DM_KEY_BYTES, Some(key_first)),
            "mac": self.random_hex(rules::DM_MAC_BYTES, None),
            "orig": plain,
        });
        let mut up = Map::new();
        up.insert("dm".into(), dm);
        up.insert("height".into(), json!(height));
        up.insert("k".into(), json!(k));
        up.insert("msg".into(), json!(""));
        up.insert("msg2".into(), json!(""));
        up.insert("n".into(), json!(from));
        up.insert("time".into(), json!(time));
        self.signed_post(up)
    }

    fn newdirectmsg(&mut self, p: &Params) -> Result<Value, RpcError> {
        let from = p.str(0)?.to_string();
        let k = p.int(1)?;
        let to = p.str(2)?.to_string();
        let text = p.str(3)?.to_string();
        let copy_self = p.opt_bool(4, false)?;
        if self.wallet(&from).is_none() {
            return Err(sig_error());
        }
        if !self.state.registered.contains_key(&to) {
            return Err(RpcError::internal(errors::MSG_ENCRYPT_FAILED));
        }
        let time = unix_now();
        let height = self.state.height - 1;
        let header = PostHeader {
            user: &from,
            k,
            lastk: None,
            height,
            time,
            reply: None,
        };
        if rules::dm_size(&header, &to, text.len()) > rules::MAX_POST_BYTES {
            return Err(RpcError::invalid_params(errors::MSG_BAD_POST_SIZE));
        }
        self.check_post_number(&from, k, height)?;
        if copy_self {
            self.check_post_number(&from, k + 1, height)?;
        }

        let post = self.dm_post(&from, k, &to, &text, time, height);
        let secret = DmSecret {
            to: to.clone(),
            text: text.clone(),
        };
        let stored = self.store_piece(&from, k, post.clone(), FLAG_DM, time, Some(secret));
        if stored {
            self.announce_piece(&from, k);
        }
        // The sender keeps its own copy: locally, or as a second piece encrypted to itself.
        let sender_k = if copy_self {
            let copy = self.dm_post(&from, k + 1, &from, &text, time, height);
            let own = DmSecret {
                to: from.clone(),
                text: text.clone(),
            };
            let copied = self.store_piece(&from, k + 1, copy, FLAG_DM, time, Some(own));
            if copied {
                self.announce_piece(&from, k + 1);
            }
            copied.then_some(k + 1)
        } else {
            stored.then_some(k)
        };
        if let Some(sk) = sender_k {
            if let Some(w) = self.wallet_mut(&from) {
                insert_dm(
                    w.conversations.entry(to.clone()).or_default(),
                    DmEntry {
                        time,
                        text: text.clone(),
                        from_me: true,
                        from: from.clone(),
                        k: sk,
                    },
                );
            }
        }
        if stored && !self.deliver_dm(&from, k) && to != from {
            self.counters.dms_dropped_not_following += 1;
        }
        Ok(post)
    }

    fn getposts(&mut self, p: &Params) -> Result<Value, RpcError> {
        let count = p.int(0)?;
        let windows = user_windows(p.array(1)?)?;
        let allowed = p.opt_int(2, !FLAG_DM)?;
        let required = p.opt_int(3, 0)?;
        let mut found: Vec<(i64, i64, u64, &Value)> = Vec::new();
        for w in &windows {
            if !self.started.contains(&w.username) {
                continue;
            }
            let Some(t) = self.state.torrents.get(&w.username) else {
                continue;
            };
            for (k, piece) in &t.pieces {
                let flags_ok = piece.flags & !allowed == 0 && piece.flags & required == required;
                if flags_ok && w.contains(*k) {
                    found.push((piece.time, *k, piece.arrival, &piece.post));
                }
            }
        }
        // Newest first by time, as twisterd sorts (not by k).
        found.sort_by(|a, b| (b.0, b.1, b.2).cmp(&(a.0, a.1, a.2)));
        let mut out: Vec<Value> = Vec::new();
        let now = unix_now();
        if self.spam_interval_s > 0
            && now - self.state.spam_shown_at >= self.spam_interval_s
            && count > 0
        {
            self.state.spam_shown_at = now;
            self.dirty = true;
            self.generation += 1;
            let h = self.state.height;
            out.push(json!({"sig_userpost": "", "userpost": {"height": h, "k": h, "msg": SPAM_MSG, "n": SPAM_USER, "time": now}}));
        }
        let room = (count.max(0) as usize).saturating_sub(out.len());
        out.extend(found.into_iter().take(room).map(|(_, _, _, v)| v.clone()));
        Ok(Value::Array(out))
    }

    fn getdirectmsgs(&mut self, p: &Params) -> Result<Value, RpcError> {
        let local = p.str(0)?;
        let count = p.int(1)?;
        let windows = user_windows(p.array(2)?)?;
        let mut out = Map::new();
        let Some(w) = self.wallet(local) else {
            return Ok(Value::Object(out));
        };
        for win in &windows {
            let Some(conv) = w.conversations.get(&win.username) else {
                continue;
            };
            // ids are positions in the conversation as twisterd keeps it (see `insert_dm`).
            let picked: Vec<Value> = conv
                .iter()
                .enumerate()
                .filter(|(id, _)| win.contains(*id as i64))
                .map(|(id, e)| json!({"id": id, "time": e.time, "text": e.text, "fromMe": e.from_me, "from": e.from, "k": e.k}))
                .collect();
            let skip = picked.len().saturating_sub(count.max(0) as usize);
            let picked: Vec<Value> = picked.into_iter().skip(skip).collect();
            if !picked.is_empty() {
                out.insert(win.username.clone(), Value::Array(picked));
            }
        }
        Ok(Value::Object(out))
    }

    fn rescandirectmsgs(&mut self, p: &Params) -> Result<Value, RpcError> {
        let local = p.str(0)?;
        let following: Vec<String> = self
            .wallet(local)
            .map(|w| w.following.iter().cloned().collect())
            .unwrap_or_default();
        for from in following {
            for k in self.dm_pieces_of(&from) {
                let to_local = self.state.torrents[&from].pieces[&k]
                    .dm
                    .as_ref()
                    .is_some_and(|s| s.to == local);
                if to_local {
                    self.deliver_dm(&from, k);
                }
            }
        }
        Ok(Value::Null)
    }

    fn dhtput(&mut self, p: &Params) -> Result<Value, RpcError> {
        let n = p.str(0)?.to_string();
        let r = p.str(1)?.to_string();
        let t = p.str(2)?.to_string();
        let value = p.value(3)?;
        let sig_user = p.str(4)?.to_string();
        if self.wallet(&sig_user).is_none() {
            return Err(RpcError::new(
                RPC_WALLET_INVALID_ACCOUNT_NAME,
                errors::MSG_SIG_USER_NOT_IN_WALLET,
            ));
        }
        let multi = t == "m";
        if !multi && !p.has(5) {
            return Err(RpcError::new(RPC_WALLET_ERROR, errors::MSG_SEQ_REQUIRED));
        }
        let seq = if p.has(5) { Some(p.int(5)?) } else { None };
        if !multi && n != sig_user {
            return Err(RpcError::new(RPC_WALLET_ERROR, errors::MSG_SINGLE_OWNER));
        }
        // From here on the network drops what it does not like without telling the writer.
        let time = unix_now();
        let height = if self.state.registered.contains_key(&sig_user) {
            self.state.height
        } else {
            0
        };
        let mut pm = Map::new();
        pm.insert("height".into(), json!(height));
        if !multi {
            pm.insert("seq".into(), json!(seq.unwrap_or(0)));
        }
        pm.insert(
            "target".into(),
            json!({"n": n, "r": r, "t": if multi { "m" } else { "s" }}),
        );
        pm.insert("time".into(), json!(time));
        pm.insert("v".into(), bencode_normalize(value));
        let pv = Value::Object(pm);
        let limit = if multi {
            rules::MAX_DHT_MULTI
        } else {
            rules::MAX_DHT_SINGLE
        };
        if r.len() > rules::MAX_DHT_RESOURCE || bencode_len(&pv) > limit {
            self.counters.dht_puts_dropped += 1;
            return Ok(Value::Null);
        }
        let item = DhtItem {
            p: pv,
            sig_p: self.signature(),
            sig_user: sig_user.clone(),
            time,
        };
        let key = dht_key(&n, &r, if multi { "m" } else { "s" });
        let slot = self.state.dht.entry(key.clone()).or_default();
        if multi {
            slot.retain(|i| !(i.sig_user == item.sig_user && i.p.get("v") == item.p.get("v")));
            slot.push(item);
            if slot.len() > rules::DHT_MULTI_KEEP {
                let excess = slot.len() - rules::DHT_MULTI_KEEP;
                slot.drain(..excess);
            }
        } else {
            let stored_seq = slot
                .first()
                .and_then(|i| i.p.get("seq"))
                .and_then(Value::as_i64);
            if stored_seq.is_some_and(|s| seq.unwrap_or(0) <= s) {
                self.counters.dht_puts_dropped += 1;
                return Ok(Value::Null);
            }
            *slot = vec![item];
        }
        if self.peers.is_some() {
            let items = self.state.dht.get(&key).cloned().unwrap_or_default();
            self.announce(Update::Dht { key, items });
        }
        Ok(Value::Null)
    }

    fn dhtget(&mut self, p: &Params) -> Result<Value, RpcError> {
        let n = p.str(0)?;
        let r = p.str(1)?;
        let t = if p.str(2)? == "m" { "m" } else { "s" };
        // Timeouts are read (and type-checked) as twisterd does; one machine answers at once.
        let _timeout_ms = p.opt_int(3, 10_000)?;
        let _multi_ms = p.opt_int(4, 100)?;
        let _min_multi = p.opt_int(5, 3)?;
        let now = unix_now();
        let items: Vec<Value> = self
            .state
            .dht
            .get(&dht_key(n, r, t))
            .map(|v| {
                v.iter()
                    .rev()
                    .filter(|i| t == "s" || now - i.time < DHT_MULTI_TTL_S)
                    .map(|i| json!({"p": i.p, "sig_p": i.sig_p, "sig_user": i.sig_user}))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Value::Array(items))
    }
}

impl Blocks {
    pub fn interval(&self) -> Option<Duration> {
        match self {
            Blocks::Every(d) => Some(*d),
            Blocks::Manual => None,
        }
    }
}

mod forget;
mod replicate;
pub use replicate::{Digest, Update};

#[cfg(test)]
mod tests;
