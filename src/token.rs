//! Bearer tokens: user tokens and per-attempt task tokens, stored only as SHA-256 hashes.

use sha2::{Digest, Sha256};

/// Prefix of per-attempt task tokens (webhook receivers), so they are told from user tokens.
pub const TASK_TOKEN_PREFIX: &str = "spool_task_";

/// Prefix of read tokens for one task's events and messages (`POST /v1/tasks/{id}/stream_token`).
pub const STREAM_TOKEN_PREFIX: &str = "spool_stream_";

/// A new random stream token.
pub fn new_stream_token() -> String {
    let bytes: [u8; 24] = rand::random();
    format!("{STREAM_TOKEN_PREFIX}{}", hex::encode(bytes))
}

/// The hex SHA-256 of a token, as stored.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A new random user token.
pub fn new_token() -> String {
    let bytes: [u8; 24] = rand::random();
    format!("spool_{}", hex::encode(bytes))
}

/// A new random task token.
pub fn new_task_token() -> String {
    let bytes: [u8; 24] = rand::random();
    format!("{TASK_TOKEN_PREFIX}{}", hex::encode(bytes))
}
