//! natter's domain: what a chat server does, independent of how bytes arrive or where rows live.
//!
//! This crate does no IO of its own. It reaches storage and other nodes only through the ports in
//! [`ports`], and it receives an authenticated [`UserId`](natter_protocol::UserId), never a token or
//! a password: transports hash the token and have it checked ([`session::Credentials`]) before
//! they build a [`session::Session`].
//!
//! # Layout
//! - [`ports`]: `Store` (durable state; assigns every room event its gapless `RoomSeq`) and
//!   `Broker` (fan-out between nodes; may drop or reorder).
//! - [`in_process`]: the single-node `Broker`, which hands envelopes straight to the local hub.
//! - [`hub`]: which local sessions are in which room; encodes each event once and enqueues the
//!   shared bytes into every subscriber's outbox without ever waiting.
//! - [`session`]: one client connection, whatever its transport: request dispatch, rate limit,
//!   and the ordered per-room stream (gap fill from the store, duplicate drop, resume).
//! - [`presence`]: who is online, away or offline on this node, with changes coalesced.
//! - [`services`]: the rules: who may send, edit, join, kick; validation before any write.
//! - [`app`]: `App`, the cheap-to-clone handle that ties the ports, the hub and the limits together.
//!
//! The protocol's value types (`Message`, `RoomInfo`, `RoomEvent`, ...) double as the domain's
//! read models: the store returns them and the session sends them. Commands the store applies
//! (`ports::store::Change`) are domain types of their own.

pub mod app;
pub mod hub;
pub mod in_process;
pub mod ports;
pub mod presence;
pub mod services;
pub mod session;

pub use app::{App, Limits};

/// Milliseconds since the Unix epoch: the one clock of the domain.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
