//! natter's wire contract: every frame a client and a server exchange, and nothing else.
//!
//! This crate is the API boundary. It holds serde types and the codec only: no IO, no tokio, no
//! server logic. A change here is a protocol change: it updates `docs/protocol.md` (whose transcripts
//! `tests/docs.rs` decodes and re-encodes byte for byte) in the same commit.
//!
//! # Layout
//! - [`ids`]: the identifiers that appear on the wire (`RoomId`, `RoomSeq`, `ClientMsgId`, ...).
//! - [`frame`]: `Request` (client → server, each with a request id) and `ServerFrame` (replies,
//!   errors, room events, heartbeats).
//! - [`event`]: the payloads of the per-room event stream and the shapes they carry.
//! - [`error`]: stable error codes and WebSocket close codes.
//! - [`codec`]: decode a client frame with a precise error, encode a server frame.
//! - [`websocket`]: RFC 6455 frame headers and masking, shared by the server and the load tool.

pub mod codec;
pub mod error;
pub mod event;
pub mod frame;
pub mod ids;
pub mod websocket;

pub use codec::{DecodeError, decode_client_frame, decode_server_frame, encode};
pub use error::{CloseCode, ErrorCode};
pub use event::{
    Message, PresenceInfo, PresenceStatus, Role, RoomEvent, RoomInfo, RoomKind, UserInfo,
    Visibility,
};
pub use frame::{ClientFrame, EventFrame, Request, ServerFrame};
pub use ids::{ClientMsgId, MessageId, RequestId, RoomId, RoomSeq, UserId};

/// The protocol version a server announces in its `welcome`; bumped on an incompatible change.
pub const PROTOCOL_VERSION: u32 = 1;

/// The path of the WebSocket endpoint.
pub const WS_PATH: &str = "/api/v1/ws";
