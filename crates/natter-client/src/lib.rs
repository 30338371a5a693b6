//! A Rust client for natter: what programs, tools and natter's own tests use to talk to a server.
//!
//! - [`register`], [`login`], [`logout`]: the account endpoints over HTTP.
//! - [`Client`]: one WebSocket session that stays up by itself. It reconnects with exponential
//!   backoff and jitter, resumes every room from the last sequence it received (nothing lost,
//!   nothing twice), pings to detect a dead server, and retries sends with the same
//!   `client_msg_id` so a retry never stores a message twice.
//!
//! Events arrive on [`Client::next_event`] in the order the server sent them. The client does
//! not reorder or deduplicate: that is the server's guarantee, and tests check it through here.

mod connection;

pub use connection::{Client, ClientEvent, ConnectionState, Options};
pub use natter_protocol as protocol;

use natter_protocol::{CloseCode, ErrorCode, UserInfo};
use serde::Deserialize;
use serde_json::json;

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum ClientError {
    /// The server answered the request with an error frame or an HTTP error.
    #[error("{code:?}: {message}")]
    Server {
        code: ErrorCode,
        message: String,
        retry_after_ms: Option<u64>,
    },
    /// The connection dropped before the reply came. Retrying is safe for sends.
    #[error("disconnected before the reply arrived")]
    Disconnected,
    /// No reply within the request timeout.
    #[error("timed out waiting for the reply")]
    Timeout,
    /// The client was closed, or the server ended the session for good (auth failed, revoked).
    #[error("the client is closed ({0:?})")]
    Closed(Option<CloseCode>),
    /// The server could not be reached, or said something that is not natter's protocol.
    #[error("transport: {0}")]
    Transport(String),
}

impl ClientError {
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// A login: the token to connect with, and who it belongs to.
#[derive(Debug, Clone, Deserialize)]
pub struct Auth {
    pub token: String,
    pub user: UserInfo,
    pub is_admin: bool,
}

#[derive(Deserialize)]
struct HttpError {
    code: ErrorCode,
    message: String,
}

async fn post(
    base_url: &str,
    path: &str,
    token: Option<&str>,
    body: serde_json::Value,
) -> Result<reqwest::Response, ClientError> {
    let url = format!("{}{path}", base_url.trim_end_matches('/'));
    let mut request = reqwest::Client::new().post(url).json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request
        .send()
        .await
        .map_err(|e| ClientError::Transport(e.to_string()))?;
    if response.status().is_success() {
        return Ok(response);
    }
    let status = response.status();
    match response.json::<HttpError>().await {
        Ok(error) => Err(ClientError::Server {
            code: error.code,
            message: error.message,
            retry_after_ms: None,
        }),
        Err(_) => Err(ClientError::Transport(format!("HTTP {status}"))),
    }
}

async fn auth_reply(response: reqwest::Response) -> Result<Auth, ClientError> {
    response
        .json()
        .await
        .map_err(|e| ClientError::Transport(e.to_string()))
}

/// Creates an account on the server at `base_url` (`http://host:port`) and logs it in.
pub async fn register(
    base_url: &str,
    username: &str,
    password: &str,
    display_name: Option<&str>,
) -> Result<Auth, ClientError> {
    register_as(base_url, None, username, password, display_name).await
}

/// Like [`register`], authenticated as `admin_token` (needed when registration is closed).
pub async fn register_as(
    base_url: &str,
    admin_token: Option<&str>,
    username: &str,
    password: &str,
    display_name: Option<&str>,
) -> Result<Auth, ClientError> {
    let body = json!({"username": username, "password": password, "display_name": display_name});
    auth_reply(post(base_url, "/api/v1/register", admin_token, body).await?).await
}

pub async fn login(base_url: &str, username: &str, password: &str) -> Result<Auth, ClientError> {
    let body = json!({"username": username, "password": password});
    auth_reply(post(base_url, "/api/v1/login", None, body).await?).await
}

/// Revokes the token; its open sessions are closed by the server.
pub async fn logout(base_url: &str, token: &str) -> Result<(), ClientError> {
    post(base_url, "/api/v1/logout", Some(token), json!({}))
        .await
        .map(|_| ())
}

/// The WebSocket URL for a server's base URL: `http://h:p` → `ws://h:p/api/v1/ws`.
pub fn websocket_url(base_url: &str) -> String {
    let base = base_url.trim_end_matches('/');
    let base = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        base.to_owned()
    };
    format!("{base}{}", natter_protocol::WS_PATH)
}

/// A fresh `client_msg_id`: the Unix time in milliseconds (48 bits), then 80 random bits, as 32
/// hex digits. Time first, so the ids a server stores arrive in order and its uniqueness index
/// grows at one end (docs/protocol.md): a random id costs the server a random index page per send.
pub fn new_client_msg_id() -> natter_protocol::ClientMsgId {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let mut random = [0u8; 10];
    // getrandom fails only without an OS random source.
    if getrandom::fill(&mut random).is_err() {
        random = fallback_random();
    }
    client_msg_id_at(millis, random)
}

/// Unique without an OS random source: the process id keeps processes apart, and a counter
/// started from the clock keeps this process's ids apart.
fn fallback_random() -> [u8; 10] {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    let count = COUNTER
        .fetch_add(1, Ordering::Relaxed)
        .wrapping_add(nanos << 16);
    let mut random = [0u8; 10];
    random[..4].copy_from_slice(&std::process::id().to_be_bytes());
    random[4..].copy_from_slice(&count.to_be_bytes()[2..]);
    random
}

fn client_msg_id_at(millis: u64, random: [u8; 10]) -> natter_protocol::ClientMsgId {
    use std::fmt::Write;
    let mut id = format!("{:012x}", millis & 0xffff_ffff_ffff);
    for byte in random {
        let _ = write!(id, "{byte:02x}");
    }
    natter_protocol::ClientMsgId(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_msg_ids_are_32_hex_digits_that_sort_by_creation_time() {
        let earlier = client_msg_id_at(1_795_000_000_000, [0xff; 10]);
        let later = client_msg_id_at(1_795_000_000_001, [0; 10]);
        assert_eq!(earlier.0, "01a1ee565e00ffffffffffffffffffff");
        assert!(earlier.0 < later.0);
        let fresh = new_client_msg_id();
        assert_eq!(fresh.0.len(), 32);
        assert!(
            fresh
                .0
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_ne!(fresh, new_client_msg_id());
        let in_2020 = client_msg_id_at(1_600_000_000_000, [0xff; 10]);
        assert!(
            in_2020.0 < fresh.0,
            "a fresh id sorts after one made in 2020"
        );
    }

    #[test]
    fn without_an_os_random_source_ids_still_differ_and_name_the_process() {
        let (a, b) = (fallback_random(), fallback_random());
        assert_ne!(a, b);
        assert_eq!(a[..4], std::process::id().to_be_bytes());
    }
}
