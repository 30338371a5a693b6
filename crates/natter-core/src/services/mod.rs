//! The rules of natter: who may do what, and what a valid request looks like.
//!
//! Each operation validates first (a typed [`ServiceError`] for the caller, nothing written),
//! then performs: one store call, then publishing what was committed. Nothing is published that
//! the store did not commit, and nothing is acknowledged before the commit.

pub mod liveness;
pub mod messages;
pub mod rooms;

use crate::ports::StoreError;
use natter_protocol::ErrorCode;

/// A failed request, ready for the wire: a stable code and a message for the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ServiceError {
    pub code: ErrorCode,
    pub message: String,
}

impl ServiceError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ServiceError {
        ServiceError {
            code,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> ServiceError {
        ServiceError::new(ErrorCode::InvalidField, message)
    }

    pub fn forbidden(message: impl Into<String>) -> ServiceError {
        ServiceError::new(ErrorCode::Forbidden, message)
    }

    pub fn not_found(message: impl Into<String>) -> ServiceError {
        ServiceError::new(ErrorCode::NotFound, message)
    }

    /// The node is shutting down: nothing starts, the client reconnects (to another node, behind
    /// a balancer).
    pub fn shutting_down() -> ServiceError {
        ServiceError::new(
            ErrorCode::Unavailable,
            "the server is shutting down: reconnect",
        )
    }
}

impl From<StoreError> for ServiceError {
    fn from(error: StoreError) -> ServiceError {
        match error {
            StoreError::NotFound(what) => ServiceError::not_found(format!("{what} not found")),
            StoreError::Conflict(what) => ServiceError::new(ErrorCode::Conflict, what),
            StoreError::Forbidden(what) => ServiceError::forbidden(what),
            StoreError::RegistrationClosed => {
                ServiceError::new(ErrorCode::RegistrationClosed, "registration is closed")
            }
            StoreError::Unavailable(detail) => {
                // The detail may name files or SQL; it goes to the log, not to the client.
                tracing::error!(%detail, "store unavailable");
                ServiceError::new(
                    ErrorCode::Unavailable,
                    "storage is unavailable; nothing was changed, try again",
                )
            }
        }
    }
}

/// Checks a single-line text field: trimmed length within `1..=max_chars` (or `0..` when
/// `allow_empty`), and no control characters.
pub(crate) fn check_line(
    field: &str,
    value: &str,
    max_chars: usize,
    allow_empty: bool,
) -> Result<String, ServiceError> {
    let value = value.trim();
    if value.is_empty() && !allow_empty {
        return Err(ServiceError::invalid(format!(
            "`{field}` must not be empty"
        )));
    }
    if value.chars().count() > max_chars {
        return Err(ServiceError::new(
            ErrorCode::TooLarge,
            format!("`{field}` is longer than {max_chars} characters"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(ServiceError::invalid(format!(
            "`{field}` must not contain control characters"
        )));
    }
    Ok(value.to_owned())
}
