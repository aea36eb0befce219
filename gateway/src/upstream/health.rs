//! Active health checks, run as a Pingora background service.
//!
//! Each tick reads the live config, so groups added or changed by a reload are checked from
//! the next tick on. Results land in the backends' shared atomic state that `select` reads.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::http::RequestHeader;
use pingora::lb::health_check::{HealthCheck as _, HttpHealthCheck, TcpHealthCheck};
use pingora::lb::Backend as LbBackend;
use pingora::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::reload::LiveConfig;
use crate::upstream::{Backend, BackendAddress, HealthCheck, HealthCheckKind, UpstreamGroup};

/// Runs health checks and flags readiness for the admin listener.
pub struct HealthChecker {
    live: Arc<LiveConfig>,
    ready: Arc<AtomicBool>,
}

impl HealthChecker {
    /// `ready` is set while the server runs and cleared when shutdown begins.
    pub fn new(live: Arc<LiveConfig>, ready: Arc<AtomicBool>) -> Self {
        HealthChecker { live, ready }
    }
}

fn lb_backend(addr: &BackendAddress) -> Option<LbBackend> {
    let addr = match addr {
        BackendAddress::Tcp(a) | BackendAddress::Tls { addr: a, .. } => PingoraAddr::Inet(*a),
        BackendAddress::Unix(p) => {
            PingoraAddr::Unix(std::os::unix::net::SocketAddr::from_pathname(p).ok()?)
        }
    };
    Some(LbBackend {
        addr,
        weight: 1,
        ext: http::Extensions::new(),
    })
}

/// Runs one check of one backend; true when healthy.
async fn check_once(backend: &Backend, hc: &HealthCheck) -> bool {
    let Some(target) = lb_backend(&backend.address) else {
        return false;
    };
    let mut options = backend.peer.options.clone();
    options.connection_timeout = Some(hc.timeout);
    options.read_timeout = Some(hc.timeout);
    options.write_timeout = Some(hc.timeout);
    let result = match &hc.kind {
        HealthCheckKind::Tcp => {
            let mut check = match &backend.address {
                BackendAddress::Tls { host, .. } => TcpHealthCheck::new_tls(host),
                _ => TcpHealthCheck::new(),
            };
            check.peer_template.options = options;
            tokio::time::timeout(hc.timeout, check.check(&target)).await
        }
        HealthCheckKind::Http { path, host } => {
            let mut check = HttpHealthCheck::new(host, backend.peer.is_tls());
            let mut template = backend.peer.clone();
            template.options = options;
            check.peer_template = template;
            match RequestHeader::build("GET", path.as_bytes(), None) {
                Ok(mut req) => {
                    if req.insert_header("Host", host.as_str()).is_err() {
                        return false;
                    }
                    check.req = req;
                }
                Err(_) => return false,
            }
            check.validator = Some(Box::new(|resp| {
                let s = resp.status.as_u16();
                if (200..400).contains(&s) {
                    Ok(())
                } else {
                    pingora::Error::e_explain(
                        pingora::ErrorType::CustomCode("unhealthy status", s),
                        "health check",
                    )
                }
            }));
            tokio::time::timeout(hc.timeout, check.check(&target)).await
        }
    };
    matches!(result, Ok(Ok(())))
}

async fn check_group(live: Arc<LiveConfig>, group: Arc<UpstreamGroup>) {
    let Some(hc) = group.health_check.clone() else {
        return;
    };
    let checks = group.backends.iter().map(|b| check_once(b, &hc));
    let results = futures::future::join_all(checks).await;
    for (b, ok) in group.backends.iter().zip(results) {
        if let Some(up) = b
            .state
            .observe_check(ok, hc.healthy_threshold, hc.unhealthy_threshold)
        {
            if up {
                tracing::info!(upstream = %group.name, backend = %b.label, "health check passed: backend is up");
            } else {
                tracing::warn!(upstream = %group.name, backend = %b.label, "health check failed: backend is down");
            }
        }
        live.metrics
            .backend_up
            .with_label_values(&[group.name.as_str(), b.label.as_str()])
            .set(b.state.is_healthy() as i64);
    }
}

#[async_trait]
impl BackgroundService for HealthChecker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        self.ready.store(true, Ordering::Relaxed);
        let mut next_due: HashMap<String, Instant> = HashMap::new();
        let mut running: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = shutdown.changed() => {
                    self.ready.store(false, Ordering::Relaxed);
                    return;
                }
                _ = tick.tick() => {}
            }
            let cfg = self.live.current();
            let now = Instant::now();
            running.retain(|_, h| !h.is_finished());
            next_due.retain(|name, _| cfg.upstreams.contains_key(name));
            for (name, group) in &cfg.upstreams {
                let Some(hc) = &group.health_check else {
                    continue;
                };
                if running.contains_key(name) || next_due.get(name).is_some_and(|&t| t > now) {
                    continue;
                }
                next_due.insert(name.clone(), now + hc.interval);
                let handle = tokio::spawn(check_group(self.live.clone(), group.clone()));
                running.insert(name.clone(), handle);
            }
        }
    }
}
