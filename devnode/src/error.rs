//! twisterd's JSON-RPC error codes and the HTTP status each one is sent with.

use serde_json::{json, Value};

// The codes live in twister-rules, shared with the plugin that recognises them.
pub use twister_rules::errors::{
    RPC_BUSY, RPC_INTERNAL_ERROR, RPC_INVALID_PARAMS, RPC_INVALID_REQUEST, RPC_METHOD_NOT_FOUND,
    RPC_MISC_ERROR, RPC_PARSE_ERROR, RPC_VERIFY_REJECTED, RPC_WALLET_ERROR,
    RPC_WALLET_INVALID_ACCOUNT_NAME,
};

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
