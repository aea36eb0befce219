//! The admin listener: `/healthz`, `/readyz`, `/metrics`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use http::{header, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;

use crate::reload::LiveConfig;

/// Serves the admin endpoints.
pub struct AdminApp {
    live: Arc<LiveConfig>,
    ready: Arc<AtomicBool>,
}

impl AdminApp {
    /// `ready` turns true once the proxy serves and false when it starts shutting down.
    pub fn new(live: Arc<LiveConfig>, ready: Arc<AtomicBool>) -> Self {
        AdminApp { live, ready }
    }

    fn readiness(&self) -> (StatusCode, serde_json::Value) {
        let cfg = self.live.current();
        let upstreams: serde_json::Map<String, serde_json::Value> = cfg
            .upstreams
            .values()
            .map(|g| {
                let up = g.backends.iter().filter(|b| b.state.is_healthy()).count();
                (
                    g.name.clone(),
                    json!({"backends": g.backends.len(), "healthy": up}),
                )
            })
            .collect();
        let issuers: serde_json::Map<String, serde_json::Value> = cfg
            .verifier
            .issuers()
            .map(|i| {
                let mut entry = json!({"keys": i.keys.is_ready(), "required": i.required});
                if let Some(r) = &i.revocations {
                    let s = r.stats();
                    entry["revocation"] = json!({
                        "loaded": s.loaded,
                        "stale": s.stale,
                        "lag_seconds": s.seconds_since_read.map_or(-1, |a| a as i64),
                        "records": s.sessions + s.subjects,
                    });
                }
                (i.name.clone(), entry)
            })
            .collect();
        // Not ready until every required issuer has keys (and its revocation snapshot): a load
        // balancer should not send traffic that would all be refused, or wrongly accepted.
        let ready = self.ready.load(Ordering::Relaxed) && cfg.verifier.ready();
        let status = if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        (
            status,
            json!({"status": if ready { "ready" } else { "not_ready" }, "routes": cfg.router.routes().len(), "upstreams": upstreams, "issuers": issuers}),
        )
    }
}

fn reply(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    if let Ok(v) = resp.body().len().to_string().parse() {
        resp.headers_mut().insert(header::CONTENT_LENGTH, v);
    }
    resp
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_string();
        match path.as_str() {
            "/healthz" => reply(StatusCode::OK, "application/json", br#"{"status":"ok"}"#.to_vec()),
            "/readyz" => {
                let (status, body) = self.readiness();
                reply(status, "application/json", body.to_string().into_bytes())
            }
            "/metrics" => {
                // Revocation state is published at scrape time too, so /metrics never lags
                // behind /readyz (the follower's tick publishes it once a second as well).
                for r in self.live.current().revocations.values() {
                    self.live.metrics.publish_revocations(r);
                }
                reply(StatusCode::OK, "text/plain; version=0.0.4", self.live.metrics.render())
            }
            _ => reply(
                StatusCode::NOT_FOUND,
                "application/json",
                br#"{"error":"not_found","error_description":"admin endpoints: /healthz, /readyz, /metrics"}"#.to_vec(),
            ),
        }
    }
}
