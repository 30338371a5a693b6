//! The HTTP surface: the router, the shared state handlers see, and the one place where an error
//! becomes an HTTP status and a JSON body.

use crate::auth;
use crate::config::Config;
use crate::transport::{self, websocket};
use axum::Json;
use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use natter_core::App;
use natter_core::ports::StoreError;
use natter_core::services::ServiceError;
use natter_protocol::{ErrorCode, WS_PATH};
use serde::de::DeserializeOwned;
use serde_json::json;
use std::sync::Arc;

/// What every handler can reach. Cheap to clone.
#[derive(Clone)]
pub struct ServerState {
    pub app: App,
    pub config: Arc<Config>,
    /// An argon2 hash checked when a login names no account, so both cases take as long.
    pub dummy_hash: String,
    /// Request budgets for the HTTP transports, per token.
    pub rpc_limits: Arc<crate::transport::http::RpcLimits>,
}

/// An HTTP error: a stable code (the same codes as the WebSocket protocol) and a message.
#[derive(Debug)]
pub struct ApiError {
    code: ErrorCode,
    message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
        }
    }

    /// Logs the detail; the client learns only that something went wrong.
    pub fn internal(detail: String) -> ApiError {
        tracing::error!(%detail, "internal error");
        ApiError::new(ErrorCode::Internal, "internal error")
    }

    fn status(&self) -> StatusCode {
        match self.code {
            ErrorCode::BadFrame | ErrorCode::UnknownType | ErrorCode::InvalidField => {
                StatusCode::BAD_REQUEST
            }
            ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::NotAuthenticated | ErrorCode::AuthFailed => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden | ErrorCode::RegistrationClosed => StatusCode::FORBIDDEN,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::Conflict | ErrorCode::AlreadyAuthenticated => StatusCode::CONFLICT,
            ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<ServiceError> for ApiError {
    fn from(error: ServiceError) -> ApiError {
        ApiError::new(error.code, error.message)
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> ApiError {
        ServiceError::from(error).into()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "code": self.code,
            "message": self.message,
            "retryable": self.code.retryable(),
        });
        (self.status(), Json(body)).into_response()
    }
}

/// Parses a JSON request body with an `invalid_field` error that says what is wrong.
pub fn read_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::new(ErrorCode::InvalidField, format!("request body: {e}")))
}

/// # `GET /healthz`
/// - 200 `ok` when the store answers, 503 otherwise.
async fn healthz(State(state): State<ServerState>) -> Response {
    match state.app.store.health().await {
        Ok(()) => (StatusCode::OK, "ok").into_response(),
        Err(error) => {
            tracing::warn!(%error, "health check failed");
            (StatusCode::SERVICE_UNAVAILABLE, "store unavailable").into_response()
        }
    }
}

/// Auth bodies are tiny; anything larger is refused before it is read.
const MAX_BODY_BYTES: usize = 16 * 1024;

pub fn router(state: ServerState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/api/v1/register", post(auth::register))
        .route("/api/v1/login", post(auth::login))
        .route("/api/v1/logout", post(auth::logout))
        .route(WS_PATH, get(websocket::upgrade))
        .route(
            "/api/v1/rpc",
            post(transport::http::rpc)
                .layer(DefaultBodyLimit::max(state.app.limits.max_frame_bytes)),
        )
        .route("/api/v1/sse", get(transport::http::sse))
        .route("/api/v1/poll", get(transport::http::poll))
        .fallback(crate::web_assets::serve)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}
