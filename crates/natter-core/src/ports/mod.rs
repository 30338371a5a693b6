//! The traits through which the domain reaches the outside world. Each states its guarantee;
//! every implementation must keep it (the store contract tests in `natter-server` check).

pub mod broker;
pub mod presence;
pub mod store;

pub use broker::{Broker, Envelope, UserNotice};
pub use presence::{InProcessPresence, PresenceRegistry};
pub use store::{
    Change, CommitListener, EventRecord, HistoryPage, Membership, Store, StoreError, TokenId,
    UserRecord,
};
