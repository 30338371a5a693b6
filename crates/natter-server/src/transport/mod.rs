//! Transports: each turns its kind of connection into calls on a `natter_core::session::Session`
//! and writes what the session's stream yields. Only WebSocket exists today.

pub mod websocket;
