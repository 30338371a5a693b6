//! natter's integration tests: the real server on an ephemeral port, spoken to through the real
//! client crate (and, for bad input, a bare WebSocket).

mod support;

mod accounts;
mod authorization;
mod bad_input;
mod deploy;
mod durability;
mod failures;
mod liveness;
mod messaging;
mod migrations;
mod multi_node;
mod resume;
mod rooms;
mod soak;
mod store_contract;
mod transports;
