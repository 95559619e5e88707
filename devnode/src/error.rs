//! twisterd's JSON-RPC error codes and the HTTP status each one is sent with.

use serde_json::{json, Value};

pub const RPC_MISC_ERROR: i64 = -1;
pub const RPC_WALLET_ERROR: i64 = -4;
pub const RPC_WALLET_INVALID_ACCOUNT_NAME: i64 = -11;
pub const RPC_VERIFY_REJECTED: i64 = -22;
pub const RPC_BUSY: i64 = -25;
pub const RPC_INVALID_REQUEST: i64 = -32600;
pub const RPC_METHOD_NOT_FOUND: i64 = -32601;
pub const RPC_INVALID_PARAMS: i64 = -32602;
pub const RPC_INTERNAL_ERROR: i64 = -32603;
pub const RPC_PARSE_ERROR: i64 = -32700;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct RpcError {
    pub code: i64,
    pub message: String,
}

impl RpcError {
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        RpcError {
            code,
            message: message.into(),
        }
    }
    pub fn misc(message: impl Into<String>) -> Self {
        Self::new(RPC_MISC_ERROR, message)
    }
    pub fn invalid_params(message: impl Into<String>) -> Self {
        Self::new(RPC_INVALID_PARAMS, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(RPC_INTERNAL_ERROR, message)
    }

    /// The HTTP status twisterd answers a lone (non-batch) error with.
    pub fn http_status(&self) -> u16 {
        match self.code {
            RPC_INVALID_REQUEST => 400,
            RPC_METHOD_NOT_FOUND => 404,
            _ => 500,
        }
    }

    pub fn to_json(&self) -> Value {
        json!({"code": self.code, "message": self.message})
    }
}
