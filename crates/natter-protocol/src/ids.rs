//! Identifiers that cross the wire. Each is a newtype so that a room id can never be passed where a
//! user id is expected; on the wire each is a bare JSON number or string.

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! numeric_id {
    ($(#[$doc:meta])* $name:ident($inner:ty)) => {
        $(#[$doc])*
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub $inner);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl std::str::FromStr for $name {
            type Err = std::num::ParseIntError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                s.parse().map($name)
            }
        }
    };
}

numeric_id!(
    /// A user account, unique on the server.
    UserId(i64)
);
numeric_id!(
    /// A room: a channel, a direct message or a group direct message.
    RoomId(i64)
);
numeric_id!(
    /// A message, unique on the server (across rooms).
    MessageId(i64)
);
numeric_id!(
    /// A position in one room's event stream. Per room, the store hands them out gapless and strictly
    /// increasing (1, 2, 3, ...), in the same transaction that stores the event. 0 means "before
    /// the first event".
    RoomSeq(u64)
);
numeric_id!(
    /// Chosen by the client for each request and echoed in its one reply.
    RequestId(u64)
);

impl RoomSeq {
    pub const ZERO: RoomSeq = RoomSeq(0);

    pub fn next(self) -> RoomSeq {
        RoomSeq(self.0 + 1)
    }
}

/// The client's own id for one send. A retry with the same id returns the first result and never
/// stores a second message. Unique per sender; 1 to 64 characters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ClientMsgId(pub String);

impl ClientMsgId {
    pub const MAX_LEN: usize = 64;
}

impl fmt::Display for ClientMsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
