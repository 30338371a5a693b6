//! Store implementations. Only this folder knows SQL.

pub mod schema;
pub mod sqlite;

pub use sqlite::SqliteStore;
