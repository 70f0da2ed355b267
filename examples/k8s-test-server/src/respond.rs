//! What request handlers share: the server context and JSON responses.

use crate::auth;
use crate::error::ApiError;
use crate::faults::Faults;
use crate::store::Store;
use crate::util;
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::{Response, StatusCode, header};
use serde_json::Value;
use std::convert::Infallible;
use std::time::Duration;

pub(crate) type Body = UnsyncBoxBody<Bytes, Infallible>;

/// What every request handler needs.
pub(crate) struct Ctx {
    pub store: Store,
    pub tokens: auth::Tokens,
    pub git_version: String,
    pub server_address: String,
    pub bookmark_interval: Duration,
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// Injected failures (test controls, none by default).
    pub faults: Faults,
    /// Ends open watches early, as their timeout would (test control).
    pub end_watches: tokio::sync::watch::Receiver<u64>,
}

pub(crate) fn json_response(code: u16, v: &Value) -> Response<Body> {
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(header::CONTENT_TYPE, "application/json")
        .header("Audit-Id", util::uuid())
        .body(Full::new(Bytes::from(v.to_string())).boxed_unsync())
        .expect("valid response")
}

pub(crate) fn error_response(e: &ApiError) -> Response<Body> {
    let mut resp = json_response(e.code, &e.to_status());
    // responsewriters `ErrorNegotiated`: retryAfterSeconds > 0 is also sent as Retry-After.
    let retry = e
        .details
        .as_ref()
        .and_then(|d| d["retryAfterSeconds"].as_u64());
    if let Some(s) = retry.filter(|s| *s > 0) {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from(s));
    }
    resp
}
