//! Store implementations. Only this folder knows SQL.

pub mod postgres;
pub mod schema;
pub mod sqlite;

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;
