//! Posts and DMs: newpostmsg, newdirectmsg, getposts, getdirectmsgs, rescandirectmsgs, under twister-core's rules.

use super::*;

impl Node {
    pub(super) fn newpostmsg(&mut self, p: &Params) -> Result<Value, RpcError> {
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
    pub(super) fn store_piece(
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

    pub(super) fn dm_post(
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

    pub(super) fn newdirectmsg(&mut self, p: &Params) -> Result<Value, RpcError> {
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

    pub(super) fn getposts(&mut self, p: &Params) -> Result<Value, RpcError> {
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

    pub(super) fn getdirectmsgs(&mut self, p: &Params) -> Result<Value, RpcError> {
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

    pub(super) fn rescandirectmsgs(&mut self, p: &Params) -> Result<Value, RpcError> {
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
}
