//! The DHT: dhtput and dhtget of "s" (single-writer) and "m" (multi-writer) resources, with their limits.

use super::*;

impl Node {
    pub(super) fn dhtput(&mut self, p: &Params) -> Result<Value, RpcError> {
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
        // twisterd reads seq with json_spirit's get_int: the low 32 bits, signed. A negative seq leaves
        // `p` without one, which its own consistency check then refuses (silently).
        let seq = if p.has(5) {
            Some(i64::from(p.int(5)? as i32))
        } else {
            None
        };
        if !multi && seq.is_some_and(|s| s < 0) {
            self.counters.dht_puts_dropped += 1;
            return Ok(Value::Null);
        }
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

    pub(super) fn dhtget(&mut self, p: &Params) -> Result<Value, RpcError> {
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
