//! The web dashboard, embedded in the binary (served at `/`, `/dashboard.js`
//! and `/dashboard.css`); it uses only the public HTTP API and the event
//! stream, like any integrator.

use axum::http::HeaderValue;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};

const INDEX: &str = include_str!("../assets/index.html");
const SCRIPT: &str = include_str!("../assets/dashboard.js");
const STYLE: &str = include_str!("../assets/dashboard.css");

fn asset(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

/// `index.html`.
pub fn index() -> Response {
    asset(INDEX, "text/html; charset=utf-8")
}

/// `dashboard.js`.
pub fn script() -> Response {
    asset(SCRIPT, "text/javascript; charset=utf-8")
}

/// `dashboard.css`.
pub fn style() -> Response {
    asset(STYLE, "text/css; charset=utf-8")
}
