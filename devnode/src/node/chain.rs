//! The chain and the node itself: getinfo, help, stop, mining (regtest-style and the dev node's own).

use super::*;

impl Node {
    pub(super) fn getinfo(&mut self, _: &Params) -> Result<Value, RpcError> {
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

    pub(super) fn help(&mut self, p: &Params) -> Result<Value, RpcError> {
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

    pub(super) fn stop(&mut self, _: &Params) -> Result<Value, RpcError> {
        self.stop_requested = true;
        Ok(json!("twister server stopping"))
    }

    pub(super) fn getblockcount(&mut self, _: &Params) -> Result<Value, RpcError> {
        Ok(json!(self.state.height))
    }

    pub(super) fn getgenerate(&mut self, _: &Params) -> Result<Value, RpcError> {
        Ok(json!(matches!(self.blocks, Blocks::Every(_))))
    }

    pub(super) fn setgenerate(&mut self, p: &Params) -> Result<Value, RpcError> {
        if p.bool(0)? {
            self.mine_block();
        }
        Ok(Value::Null)
    }

    pub(super) fn devnode_mine(&mut self, p: &Params) -> Result<Value, RpcError> {
        let n = p.opt_int(0, 1)?;
        if !(0..=100_000).contains(&n) {
            return Err(RpcError::invalid_params("blocks must be 0..100000"));
        }
        for _ in 0..n {
            self.mine_block();
        }
        Ok(json!(self.state.height))
    }

    pub(super) fn devnode_stats(&mut self, _: &Params) -> Result<Value, RpcError> {
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
}
