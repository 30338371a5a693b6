//! Serves the web app embedded at build time (see `build.rs`).
//!
//! Hashed files under `/assets/` never change, so browsers may keep them for a year;
//! `index.html` is revalidated every time so a new release is picked up at the next load. Any other
//! path that is not an API route gets `index.html`, so the app's own URLs survive a reload.

use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

mod generated {
    include!(concat!(env!("OUT_DIR"), "/web_assets.rs"));
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next().unwrap_or_default() {
        "html" => "text/html; charset=utf-8",
        "js" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "json" => "application/json",
        "woff2" => "font/woff2",
        _ => "application/octet-stream",
    }
}

fn asset(path: &str) -> Option<&'static [u8]> {
    generated::ASSETS
        .iter()
        .find(|(url, _)| *url == path)
        .map(|(_, bytes)| *bytes)
}

/// # `GET /*` (everything the API does not claim)
/// - An embedded file by its path; `/` and unknown paths get `index.html`.
pub async fn serve(method: Method, uri: Uri) -> Response {
    let path = uri.path();
    if path.starts_with("/api/") || !(method == Method::GET || method == Method::HEAD) {
        return crate::http::ApiError::new(
            natter_protocol::ErrorCode::NotFound,
            "no such endpoint",
        )
        .into_response();
    }
    if let Some(bytes) = asset(path).filter(|_| path != "/index.html") {
        let cache = if path.starts_with("/assets/") {
            "public, max-age=31536000, immutable"
        } else {
            "no-cache"
        };
        return (
            [(CONTENT_TYPE, content_type(path)), (CACHE_CONTROL, cache)],
            bytes,
        )
            .into_response();
    }
    match asset("/index.html") {
        Some(index) => (
            [
                (CONTENT_TYPE, "text/html; charset=utf-8"),
                (CACHE_CONTROL, "no-cache"),
            ],
            index,
        )
            .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            "the web app was not built into this binary (run `npm run build` in web/)",
        )
            .into_response(),
    }
}
