//! Request middleware: bearer-token auth, the in-flight limit (429), the body and request
//! timeouts (408, 503) and per-route metrics.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::{ApiError, Kind};
use crate::extract::read_bytes;
use crate::AppState;

/// 401 unless `Authorization: Bearer <api key>` matches (when a key is configured).
pub async fn auth(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Some(key) = &state.config.api_key {
        let given = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let ok = given.is_some_and(|g| constant_time_eq(g.trim().as_bytes(), key.as_bytes()));
        if !ok {
            let msg = if given.is_none() {
                "missing bearer token: send `Authorization: Bearer <api key>`"
            } else {
                "invalid API key"
            };
            return ApiError::new(Kind::Unauthorized, msg).into_response();
        }
    }
    next.run(req).await
}

/// Compares without an early exit, so the time taken does not tell how much of a key matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Reads the whole body (408 past `body_timeout`, 413 past `max_body_bytes`), then takes an
/// in-flight permit or answers 429 with `Retry-After`. Reading first means a slow uploader holds
/// only its connection, never one of the `max_in_flight` permits.
pub async fn limit_in_flight(
    State(state): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    let c = &state.config;
    let openai = req.uri().path().starts_with("/v1/");
    let shape = |e: ApiError| if openai { e.openai() } else { e };
    let (parts, body) = req.into_parts();
    let bytes = match tokio::time::timeout(c.body_timeout, read_bytes(body, c.max_body_bytes)).await
    {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(e)) => return shape(e).into_response(),
        Err(_) => {
            let msg = format!(
                "request body not received within {} s (--body-timeout-secs)",
                c.body_timeout.as_secs_f64()
            );
            return shape(ApiError::new(Kind::RequestTimeout, msg)).into_response();
        }
    };
    let Ok(_permit) = state.in_flight.clone().try_acquire_owned() else {
        let mut e = ApiError::new(
            Kind::Overloaded,
            format!(
                "too many requests in flight (limit {}, --max-in-flight); retry later",
                c.max_in_flight
            ),
        );
        e.retry_after = Some(1);
        return shape(e).into_response();
    };
    next.run(Request::from_parts(parts, Body::from(bytes))).await
}

/// 503 when a request, body read included, is not answered within `request_timeout`.
pub async fn request_timeout(
    State(state): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    let limit = state.config.request_timeout;
    let openai = req.uri().path().starts_with("/v1/");
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => {
            let msg = format!(
                "request not answered within {} s (--request-timeout-secs)",
                limit.as_secs_f64()
            );
            let e = ApiError::new(Kind::Timeout, msg);
            if openai { e.openai() } else { e }.into_response()
        }
    }
}

/// Counts every answer by route template and status, and times it.
pub async fn track(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let route =
        req.extensions().get::<MatchedPath>().map_or("unmatched", |p| p.as_str()).to_string();
    let m = &state.metrics;
    m.http_in_flight.inc();
    let started = Instant::now();
    let resp = next.run(req).await;
    m.http_in_flight.dec();
    m.http_duration.with_label_values(&[&route]).observe(started.elapsed().as_secs_f64());
    m.http_requests.with_label_values(&[&route, resp.status().as_str()]).inc();
    resp
}

#[cfg(test)]
mod tests {
    #[test]
    fn constant_time_eq_compares_whole_keys() {
        assert!(super::constant_time_eq(b"secret", b"secret"));
        assert!(!super::constant_time_eq(b"secret", b"secreT"));
        assert!(!super::constant_time_eq(b"secret", b"secret2"));
        assert!(!super::constant_time_eq(b"", b"x"));
    }
}
