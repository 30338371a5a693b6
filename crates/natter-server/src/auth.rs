//! Accounts and login sessions: password hashing, session tokens, and the HTTP endpoints that
//! register, log in and log out.
//!
//! A session token is 32 random bytes, hex-encoded, given to the client once. The store keeps
//! only its SHA-256 ([`TokenId`]), so a leaked database holds no usable token. Passwords are
//! hashed with argon2id on the blocking pool. Neither a token nor a password is ever logged.

use crate::http::{ApiError, ServerState, read_json};
use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::header::{AUTHORIZATION, COOKIE, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use natter_core::ports::store::{TokenId, UserRecord};
use natter_core::ports::{Envelope, UserNotice};
use natter_core::session::Credentials;
use natter_protocol::{ErrorCode, UserInfo};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const COOKIE_NAME: &str = "natter_token";

/// A session token as the client holds it.
pub struct Token(String);

impl Token {
    fn generate() -> Result<Token, ApiError> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| ApiError::internal(format!("random: {e}")))?;
        Ok(Token(bytes.iter().map(|b| format!("{b:02x}")).collect()))
    }

    pub fn id(token: &str) -> TokenId {
        TokenId(Sha256::digest(token.as_bytes()).into())
    }
}

/// Each argon2 run takes ~19 MiB and a core for tens of milliseconds: at most this many at once,
/// so a burst of logins queues instead of exhausting memory.
static HASHING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(4);

async fn hash_password(password: String) -> Result<String, ApiError> {
    let _permit = HASHING
        .acquire()
        .await
        .map_err(|e| ApiError::internal(format!("hash semaphore: {e}")))?;
    tokio::task::spawn_blocking(move || {
        Argon2::default()
            .hash_password(password.as_bytes())
            .map(|hash| hash.to_string())
            .map_err(|e| ApiError::internal(format!("argon2: {e}")))
    })
    .await
    .map_err(|e| ApiError::internal(format!("argon2 task: {e}")))?
}

async fn verify_password(password: String, hash: String) -> bool {
    let Ok(_permit) = HASHING.acquire().await else {
        return false;
    };
    tokio::task::spawn_blocking(move || {
        PasswordHash::new(&hash)
            .map(|parsed| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
            .unwrap_or(false)
    })
    .await
    .unwrap_or(false)
}

/// The token a request carries: `Authorization: Bearer …`, else the session cookie.
pub fn request_token(headers: &HeaderMap) -> Option<String> {
    let bearer = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_owned());
    bearer.or_else(|| cookie_token(headers))
}

pub fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE_NAME)
        .map(|(_, value)| value.to_owned())
}

/// The account behind a token, if the token is valid now.
pub async fn authenticate(
    state: &ServerState,
    token: &str,
) -> Result<Option<Credentials>, ApiError> {
    Ok(Credentials::check(&state.app, Token::id(token)).await?)
}

#[derive(Deserialize)]
pub struct RegisterRequest {
    pub username: String,
    pub password: String,
    #[serde(default)]
    pub display_name: Option<String>,
}

#[derive(Deserialize)]
pub struct LoginRequest {
    pub username: String,
    pub password: String,
}

/// What register and login answer with.
#[derive(Serialize)]
pub struct AuthReply {
    pub token: String,
    pub user: UserInfo,
    pub is_admin: bool,
}

const MIN_PASSWORD: usize = 8;
const MAX_PASSWORD: usize = 1024;

fn check_username(username: &str) -> Result<String, ApiError> {
    let username = username.trim().to_lowercase();
    let valid_chars = username
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_.-".contains(c));
    if !(2..=32).contains(&username.len()) || !valid_chars {
        return Err(ApiError::new(
            ErrorCode::InvalidField,
            "`username` must be 2 to 32 characters: letters, digits, `_`, `.` or `-`",
        ));
    }
    Ok(username)
}

fn check_password(password: &str) -> Result<(), ApiError> {
    if !(MIN_PASSWORD..=MAX_PASSWORD).contains(&password.len()) {
        return Err(ApiError::new(
            ErrorCode::InvalidField,
            format!("`password` must be {MIN_PASSWORD} to {MAX_PASSWORD} bytes"),
        ));
    }
    Ok(())
}

fn session_cookie(state: &ServerState, token: &str, max_age_secs: u64) -> HeaderValue {
    let secure = if state.config.settings.cookie_secure {
        "; Secure"
    } else {
        ""
    };
    HeaderValue::from_str(&format!(
        "{COOKIE_NAME}={token}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age_secs}{secure}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static(""))
}

async fn start_session(
    state: &ServerState,
    user: UserRecord,
    status: StatusCode,
) -> Result<Response, ApiError> {
    let token = Token::generate()?;
    let ttl_ms = state.config.settings.token_ttl_days as i64 * 86_400_000;
    state
        .app
        .store
        .insert_token(
            Token::id(&token.0),
            user.info.id,
            natter_core::now_ms() + ttl_ms,
        )
        .await?;
    let cookie = session_cookie(state, &token.0, (ttl_ms / 1000) as u64);
    let reply = AuthReply {
        token: token.0,
        user: user.info,
        is_admin: user.is_admin,
    };
    Ok((status, [(SET_COOKIE, cookie)], Json(reply)).into_response())
}

/// # `POST /api/v1/register`
/// - Body `{"username", "password", "display_name"?}`; answers 201 with a token and the user.
/// - The first account becomes the server's admin.
/// - With registration closed, only the first account, or a request authenticated as an admin,
///   may register (`registration_closed` otherwise).
pub async fn register(
    State(state): State<ServerState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request: RegisterRequest = read_json(&body)?;
    let username = check_username(&request.username)?;
    check_password(&request.password)?;
    let display_name = request.display_name.unwrap_or_else(|| username.clone());
    let display_name = display_name.trim();
    if display_name.is_empty()
        || display_name.chars().count() > 64
        || display_name.chars().any(char::is_control)
    {
        return Err(ApiError::new(
            ErrorCode::InvalidField,
            "`display_name` must be 1 to 64 printable characters",
        ));
    }
    let only_if_first = match state.config.settings.registration {
        crate::config::Registration::Open => false,
        crate::config::Registration::Closed => {
            let admin = match request_token(&headers) {
                Some(token) => authenticate(&state, &token).await?,
                None => None,
            };
            !admin.is_some_and(|credentials| credentials.user.is_admin)
        }
    };
    let hash = hash_password(request.password).await?;
    let user = state
        .app
        .store
        .create_user(&username, display_name, &hash, only_if_first)
        .await?;
    tracing::info!(user_id = %user.info.id, %username, admin = user.is_admin, "account created");
    start_session(&state, user, StatusCode::CREATED).await
}

/// # `POST /api/v1/login`
/// - Body `{"username", "password"}`; answers 200 with a new token and sets the session cookie.
/// - A wrong username or password answers 401 `auth_failed`, the same for both.
pub async fn login(State(state): State<ServerState>, body: Bytes) -> Result<Response, ApiError> {
    let request: LoginRequest = read_json(&body)?;
    let username = request.username.trim().to_lowercase();
    let found = state.app.store.credentials(&username).await?;
    // Hash even for an unknown user, so the answer's timing does not tell which names exist.
    let (user, hash) = match found {
        Some((user, hash)) => (Some(user), hash),
        None => (None, state.dummy_hash.clone()),
    };
    let valid = verify_password(request.password, hash).await;
    match user {
        Some(user) if valid => start_session(&state, user, StatusCode::OK).await,
        _ => Err(ApiError::new(
            ErrorCode::AuthFailed,
            "wrong username or password",
        )),
    }
}

/// # `POST /api/v1/logout`
/// - Revokes the token given as `Authorization: Bearer` or cookie, closes its WebSocket sessions
///   (close code 4005), clears the cookie. Answers 204.
pub async fn logout(
    State(state): State<ServerState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let token = request_token(&headers)
        .ok_or_else(|| ApiError::new(ErrorCode::NotAuthenticated, "no token given"))?;
    let Some(Credentials { user, token: id }) = authenticate(&state, &token).await? else {
        return Err(ApiError::new(
            ErrorCode::AuthFailed,
            "unknown or expired token",
        ));
    };
    state.app.store.revoke_token(id).await?;
    state
        .app
        .publish(Envelope::User {
            user_id: user.info.id,
            notice: UserNotice::TokenRevoked { token: id },
        })
        .await;
    Ok((
        StatusCode::NO_CONTENT,
        [(SET_COOKIE, session_cookie(&state, "", 0))],
    )
        .into_response())
}

/// A real argon2 hash of a random password, verified against when a login names no account.
pub async fn dummy_hash() -> Result<String, ApiError> {
    let password = Token::generate()?.0;
    hash_password(password).await
}
