//! twisterd's JSON-RPC error codes and the messages it answers with, in one place: the dev node
//! answers with them and the plugin recognises them, so the two cannot drift apart.
//!
//! Codes and texts are twisterd 0.9.40's (twister-core's `rpcprotocol.h` and the recording in
//! `devnode/tests/data`).

pub const RPC_MISC_ERROR: i64 = -1;
pub const RPC_WALLET_ERROR: i64 = -4;
pub const RPC_WALLET_INVALID_ACCOUNT_NAME: i64 = -11;
pub const RPC_VERIFY_REJECTED: i64 = -22;
pub const RPC_TIMEOUT: i64 = -24;
pub const RPC_BUSY: i64 = -25;
pub const RPC_INVALID_REQUEST: i64 = -32600;
pub const RPC_METHOD_NOT_FOUND: i64 = -32601;
pub const RPC_INVALID_PARAMS: i64 = -32602;
pub const RPC_INTERNAL_ERROR: i64 = -32603;
pub const RPC_PARSE_ERROR: i64 = -32700;

/// Messages whose wording carries meaning (the code alone does not tell them apart).
pub const MSG_BAD_POST_SIZE: &str = "bad bencoded post size";
pub const MSG_BAD_POST_SIGNATURE: &str = "bad post signature";
pub const MSG_SIGNING_FAILED: &str = "error signing post with private key of user";
pub const MSG_ENCRYPT_FAILED: &str = "error encrypting to pubkey of destination user";
pub const MSG_USER_NOT_IN_WALLET: &str = "Error: no such user in wallet";
pub const MSG_USER_EXISTS_IN_WALLET: &str = "Error: this username exists in wallet";
pub const MSG_SIG_USER_NOT_IN_WALLET: &str = "Error: no sig_user in wallet";
pub const MSG_TX_REJECTED: &str = "TX rejected";
pub const MSG_SEQ_REQUIRED: &str = "Seq parameter required for single";
pub const MSG_SINGLE_OWNER: &str = "Username must be the same as sig_user for single";
const TOO_MANY_POSTS_PREFIX: &str = "too much posts from user";

/// twisterd's refusal of a post number beyond the user's budget.
pub fn too_many_posts(user: &str) -> String {
    format!("{TOO_MANY_POSTS_PREFIX} '{user}' rejecting post")
}

/// What an RPC error means to a caller, from its code and message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The post number is beyond `2*(blocks since registration)+20`: wait for a block.
    OutOfBudget,
    /// The user cannot post yet (registration not in a block, or only just): wait for a block.
    BadSignature,
    /// The signed post would exceed 2048 bytes bencoded.
    TooLarge,
    /// The user (or DHT signer) is not in this node's wallet.
    NotInWallet,
    /// `createwalletuser` of a user the wallet already holds.
    AlreadyInWallet,
    /// A registration transaction twisterd refused (already registered or pending).
    TxRejected,
    /// The node is busy (-25) or timed out internally (-24): try again later.
    Busy,
    /// Method unknown to this node.
    NoSuchMethod,
    /// Anything else.
    Other,
}

impl Refusal {
    pub fn classify(code: i64, message: &str) -> Refusal {
        match code {
            RPC_INVALID_PARAMS if message.starts_with(TOO_MANY_POSTS_PREFIX) => {
                Refusal::OutOfBudget
            }
            RPC_INVALID_PARAMS if message == MSG_BAD_POST_SIGNATURE => Refusal::BadSignature,
            RPC_INVALID_PARAMS if message == MSG_BAD_POST_SIZE => Refusal::TooLarge,
            RPC_WALLET_INVALID_ACCOUNT_NAME if message == MSG_USER_EXISTS_IN_WALLET => {
                Refusal::AlreadyInWallet
            }
            RPC_WALLET_INVALID_ACCOUNT_NAME => Refusal::NotInWallet,
            RPC_INTERNAL_ERROR if message == MSG_SIGNING_FAILED => Refusal::NotInWallet,
            RPC_VERIFY_REJECTED => Refusal::TxRejected,
            RPC_BUSY | RPC_TIMEOUT => Refusal::Busy,
            RPC_METHOD_NOT_FOUND => Refusal::NoSuchMethod,
            _ => Refusal::Other,
        }
    }

    /// Refusals that a new block (and only time) cures.
    pub fn waits_for_a_block(self) -> bool {
        matches!(self, Refusal::OutOfBudget | Refusal::BadSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_messages_twisterd_sends_are_classified() {
        let cases = [
            (
                RPC_INVALID_PARAMS,
                too_many_posts("alice"),
                Refusal::OutOfBudget,
            ),
            (
                RPC_INVALID_PARAMS,
                MSG_BAD_POST_SIGNATURE.into(),
                Refusal::BadSignature,
            ),
            (
                RPC_INVALID_PARAMS,
                MSG_BAD_POST_SIZE.into(),
                Refusal::TooLarge,
            ),
            (
                RPC_WALLET_INVALID_ACCOUNT_NAME,
                MSG_USER_NOT_IN_WALLET.into(),
                Refusal::NotInWallet,
            ),
            (
                RPC_WALLET_INVALID_ACCOUNT_NAME,
                MSG_USER_EXISTS_IN_WALLET.into(),
                Refusal::AlreadyInWallet,
            ),
            (
                RPC_INTERNAL_ERROR,
                MSG_SIGNING_FAILED.into(),
                Refusal::NotInWallet,
            ),
            (
                RPC_VERIFY_REJECTED,
                MSG_TX_REJECTED.into(),
                Refusal::TxRejected,
            ),
            (RPC_BUSY, "busy".into(), Refusal::Busy),
            (
                RPC_METHOD_NOT_FOUND,
                "Method not found".into(),
                Refusal::NoSuchMethod,
            ),
            (RPC_INVALID_PARAMS, "something else".into(), Refusal::Other),
        ];
        for (code, message, want) in cases {
            assert_eq!(Refusal::classify(code, &message), want, "{code} {message}");
        }
        assert!(Refusal::OutOfBudget.waits_for_a_block());
        assert!(!Refusal::TooLarge.waits_for_a_block());
    }

    #[test]
    fn the_recorded_budget_refusal_reads_as_out_of_budget() {
        // Verbatim from the recording of twisterd 0.9.40.
        let recorded = "too much posts from user 'alice' rejecting post";
        assert_eq!(recorded, too_many_posts("alice"));
        assert_eq!(Refusal::classify(-32602, recorded), Refusal::OutOfBudget);
    }
}
