//! Error codes carried by `error` frames, and the WebSocket close codes the server ends a
//! connection with. Both are stable: clients match on them, so a code is never renamed or reused.

use serde::{Deserialize, Serialize};

/// Why a request failed. Serialized as a snake_case string (`"forbidden"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame is not a JSON object with a numeric `id` and a string `type`.
    BadFrame,
    /// The `type` names no request this server knows.
    UnknownType,
    /// A field is missing, has the wrong type, or has a value outside its range.
    InvalidField,
    /// A message body or another field is longer than the server allows.
    TooLarge,
    /// The request needs a session: send `hello` first.
    NotAuthenticated,
    /// `hello` was sent twice on one connection.
    AlreadyAuthenticated,
    /// The token (or cookie) is unknown, expired or revoked, or the password is wrong.
    AuthFailed,
    /// The user may not do this (not a member, not an admin, private room, ...).
    Forbidden,
    /// The room, message or user does not exist (or is not visible to this user).
    NotFound,
    /// The request conflicts with the current state (name taken, already a member, ...).
    Conflict,
    /// Too many requests; `retry_after_ms` says when to try again.
    RateLimited,
    /// Registration is closed on this server.
    RegistrationClosed,
    /// The server cannot serve the request now (storage unavailable); retrying is safe.
    Unavailable,
    /// A bug on the server. The request may or may not have taken effect.
    Internal,
}

impl ErrorCode {
    /// True when sending the same request again later may succeed. Sends are idempotent by
    /// `client_msg_id`, so retrying them is always safe.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::RateLimited | ErrorCode::Unavailable | ErrorCode::Internal
        )
    }
}

/// The WebSocket close codes natter uses (4000–4999 is the range RFC 6455 leaves to applications).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseCode {
    /// The client fell too far behind (its outbound queue overflowed). Nothing is lost: reconnect
    /// and resume from the last sequence seen.
    Resume,
    /// Authentication failed: the token is unknown, expired or revoked. Do not retry with it.
    AuthFailed,
    /// No `hello` arrived in time after the connection opened.
    AuthTimeout,
    /// Nothing arrived from the client within the heartbeat timeout.
    HeartbeatTimeout,
    /// The server is shutting down. Reconnect (with backoff) and resume.
    ShuttingDown,
    /// The session's token was revoked (logout elsewhere).
    Revoked,
    /// A frame was larger than the server's frame limit (RFC 6455 "message too big").
    TooBig,
    /// A frame could not be a natter frame at all (binary where text is expected).
    Unsupported,
    /// The server cannot serve the connection now (storage unavailable). Reconnect with backoff.
    TryAgainLater,
    /// The bytes broke WebSocket framing (RFC 6455 "protocol error").
    ProtocolError,
    /// A text frame was not valid UTF-8 (RFC 6455 "invalid frame payload data").
    InvalidText,
}

impl CloseCode {
    pub const fn code(self) -> u16 {
        match self {
            CloseCode::Resume => 4000,
            CloseCode::AuthFailed => 4001,
            CloseCode::AuthTimeout => 4002,
            CloseCode::HeartbeatTimeout => 4003,
            CloseCode::ShuttingDown => 4004,
            CloseCode::Revoked => 4005,
            CloseCode::TooBig => 1009,
            CloseCode::Unsupported => 1003,
            CloseCode::TryAgainLater => 1013,
            CloseCode::ProtocolError => 1002,
            CloseCode::InvalidText => 1007,
        }
    }

    pub fn from_code(code: u16) -> Option<CloseCode> {
        [
            CloseCode::Resume,
            CloseCode::AuthFailed,
            CloseCode::AuthTimeout,
            CloseCode::HeartbeatTimeout,
            CloseCode::ShuttingDown,
            CloseCode::Revoked,
            CloseCode::TooBig,
            CloseCode::Unsupported,
            CloseCode::TryAgainLater,
            CloseCode::ProtocolError,
            CloseCode::InvalidText,
        ]
        .into_iter()
        .find(|c| c.code() == code)
    }

    /// The close frame's reason text.
    pub const fn reason(self) -> &'static str {
        match self {
            CloseCode::Resume => "slow consumer: reconnect and resume",
            CloseCode::AuthFailed => "authentication failed",
            CloseCode::AuthTimeout => "no hello in time",
            CloseCode::HeartbeatTimeout => "heartbeat timeout",
            CloseCode::ShuttingDown => "server shutting down: reconnect and resume",
            CloseCode::Revoked => "session revoked",
            CloseCode::TooBig => "frame too large",
            CloseCode::Unsupported => "binary frames are not supported",
            CloseCode::TryAgainLater => "server unavailable: try again later",
            CloseCode::ProtocolError => "websocket protocol error",
            CloseCode::InvalidText => "text frame is not valid UTF-8",
        }
    }

    /// True when the client should reconnect (with backoff) and resume.
    pub const fn should_reconnect(self) -> bool {
        matches!(
            self,
            CloseCode::Resume
                | CloseCode::HeartbeatTimeout
                | CloseCode::ShuttingDown
                | CloseCode::TryAgainLater
        )
    }
}
