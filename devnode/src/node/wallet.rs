//! The wallet and follows: createwalletuser, listwalletusers, sendnewusertransaction, follow, unfollow, getfollowing, getlasthave.

use super::*;

impl Node {
    pub(super) fn createwalletuser(&mut self, p: &Params) -> Result<Value, RpcError> {
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

    pub(super) fn listwalletusers(&mut self, _: &Params) -> Result<Value, RpcError> {
        Ok(json!(self
            .state
            .wallet
            .iter()
            .map(|w| w.name.clone())
            .collect::<Vec<_>>()))
    }

    pub(super) fn sendnewusertransaction(&mut self, p: &Params) -> Result<Value, RpcError> {
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

    pub(super) fn require_wallet_local(&self, name: &str) -> Result<(), RpcError> {
        // twisterd itself would create an empty following list for any name; the dev node is stricter.
        if self.wallet(name).is_none() {
            return Err(RpcError::new(
                RPC_WALLET_INVALID_ACCOUNT_NAME,
                errors::MSG_USER_NOT_IN_WALLET,
            ));
        }
        Ok(())
    }

    pub(super) fn follow(&mut self, p: &Params) -> Result<Value, RpcError> {
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

    pub(super) fn unfollow(&mut self, p: &Params) -> Result<Value, RpcError> {
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

    pub(super) fn getfollowing(&mut self, p: &Params) -> Result<Value, RpcError> {
        let local = p.str(0)?;
        let list: Vec<String> = self
            .wallet(local)
            .map(|w| w.following.iter().cloned().collect())
            .unwrap_or_default();
        Ok(json!(list))
    }

    pub(super) fn getlasthave(&mut self, p: &Params) -> Result<Value, RpcError> {
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
}
