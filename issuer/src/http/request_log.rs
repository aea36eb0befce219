//! The request log: every answer gets an `X-Request-Id`, is counted by status and logged as
//! one JSON line.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;

use crate::app::App;

/// Sets `X-Request-Id` (kept when the gateway sent a sane one), echoes it, counts the answer
/// in `portcullis_issuer_requests_total{status}`, and writes one JSON access-log line per
/// request.
pub async fn request_log(State(app): State<Arc<App>>, mut req: Request, next: Next) -> Response {
    let start = Instant::now();
    let id = req
        .headers()
        .get("x-request-id")
        .filter(|v| v.len() <= 128 && v.as_bytes().iter().all(|b| b.is_ascii_graphic()))
        .cloned()
        .unwrap_or_else(|| {
            HeaderValue::from_str(&crate::crypto::secrets::random_id())
                .unwrap_or(HeaderValue::from_static("-"))
        });
    req.headers_mut().insert("x-request-id", id.clone());
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let mut resp = next.run(req).await;
    resp.headers_mut().insert("x-request-id", id.clone());
    app.metrics
        .requests
        .with_label_values(&[resp.status().as_str()])
        .inc();
    tracing::info!(
        target: "access",
        request_id = id.to_str().unwrap_or("-"),
        method = %method,
        path = %path,
        status = resp.status().as_u16(),
        duration_ms = start.elapsed().as_secs_f64() * 1000.0,
    );
    resp
}
