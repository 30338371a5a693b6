//! Transports: each turns its kind of connection into calls on a `natter_core::session::Session`
//! and writes what the session's stream yields.
//!
//! - [`websocket`]: the first choice, one socket both ways.
//! - [`http`]: for networks that break WebSocket upgrades: requests as `POST /api/v1/rpc`, events
//!   as Server-Sent Events or long-polling. Every HTTP request stands alone (the client carries
//!   its cursors), so a client's requests and its stream may land on different nodes.

pub mod http;
pub mod websocket;

use axum::http::HeaderMap;
use axum::http::header::{HOST, ORIGIN};

/// True when a browser page at the request's `Origin` may use the session cookie: no `Origin`
/// (not a browser), the server's own origin, or one listed in `allowed_origins`.
pub(crate) fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let Some(origin) = headers.get(ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let origin = origin.trim_end_matches('/');
    if allowed
        .iter()
        .any(|a| a.trim_end_matches('/').eq_ignore_ascii_case(origin))
    {
        return true;
    }
    let host = headers.get(HOST).and_then(|h| h.to_str().ok());
    match (origin.split_once("://"), host) {
        (Some((_, origin_host)), Some(host)) => origin_host.eq_ignore_ascii_case(host),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderMap;

    fn headers(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(HOST, host.parse().unwrap());
        if let Some(origin) = origin {
            headers.insert(ORIGIN, origin.parse().unwrap());
        }
        headers
    }

    #[test]
    fn the_cookie_counts_only_from_the_same_or_an_allowed_origin() {
        let allowed = vec!["https://app.example.com".to_owned()];
        assert!(origin_allowed(&headers(None, "chat:8080"), &allowed));
        assert!(origin_allowed(
            &headers(Some("http://chat:8080"), "chat:8080"),
            &allowed
        ));
        assert!(origin_allowed(
            &headers(Some("https://app.example.com"), "chat:8080"),
            &allowed
        ));
        assert!(!origin_allowed(
            &headers(Some("https://evil.example"), "chat:8080"),
            &allowed
        ));
        assert!(!origin_allowed(
            &headers(Some("http://chat:8081"), "chat:8080"),
            &allowed
        ));
    }
}
