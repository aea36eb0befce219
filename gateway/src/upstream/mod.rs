//! Upstream groups: backends, weighted round-robin, passive failure tracking and the
//! state that active health checks update.
//!
//! Selection is lock-free: the weighted schedule is computed once at config compile time and
//! walked with one atomic counter; backend health lives in atomics shared (by `Arc`) between
//! the config generations that contain the same backend, so a reload keeps what was learnt.

pub(crate) mod health;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pingora::upstreams::peer::HttpPeer;

/// Where a backend lives.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BackendAddress {
    /// Plain HTTP over TCP.
    Tcp(std::net::SocketAddr),
    /// HTTPS over TCP; `host` is the name used for SNI and certificate verification.
    Tls {
        /// Resolved socket address.
        addr: std::net::SocketAddr,
        /// Host name as written in the config.
        host: String,
    },
    /// Plain HTTP over a Unix domain socket.
    Unix(std::path::PathBuf),
}

impl fmt::Display for BackendAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendAddress::Tcp(a) => write!(f, "{a}"),
            BackendAddress::Tls { addr, .. } => write!(f, "https://{addr}"),
            BackendAddress::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// Health and failure counters of one backend; shared across config reloads.
#[derive(Debug)]
pub struct BackendState {
    /// Result of active health checks (true until a check says otherwise, like nginx).
    healthy: AtomicBool,
    consecutive_ok: AtomicU32,
    consecutive_fail: AtomicU32,
    passive_fails: AtomicU32,
    fail_window_start_ms: AtomicU64,
    down_until_ms: AtomicU64,
}

impl Default for BackendState {
    fn default() -> Self {
        BackendState {
            healthy: AtomicBool::new(true),
            consecutive_ok: AtomicU32::new(0),
            consecutive_fail: AtomicU32::new(0),
            passive_fails: AtomicU32::new(0),
            fail_window_start_ms: AtomicU64::new(0),
            down_until_ms: AtomicU64::new(0),
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl BackendState {
    /// Whether active health checks consider the backend up.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    fn passively_down(&self, now: u64) -> bool {
        self.down_until_ms.load(Ordering::Relaxed) > now
    }

    /// Records one active health check result; returns `Some(new_state)` when it flipped.
    pub fn observe_check(
        &self,
        ok: bool,
        healthy_threshold: u32,
        unhealthy_threshold: u32,
    ) -> Option<bool> {
        if ok {
            self.consecutive_fail.store(0, Ordering::Relaxed);
            let n = self.consecutive_ok.fetch_add(1, Ordering::Relaxed) + 1;
            if !self.is_healthy() && n >= healthy_threshold {
                self.healthy.store(true, Ordering::Relaxed);
                // A backend that passes its health check again should get traffic at once.
                self.down_until_ms.store(0, Ordering::Relaxed);
                self.passive_fails.store(0, Ordering::Relaxed);
                return Some(true);
            }
        } else {
            self.consecutive_ok.store(0, Ordering::Relaxed);
            let n = self.consecutive_fail.fetch_add(1, Ordering::Relaxed) + 1;
            if self.is_healthy() && n >= unhealthy_threshold {
                self.healthy.store(false, Ordering::Relaxed);
                return Some(false);
            }
        }
        None
    }
}

/// One backend of a group.
pub struct Backend {
    /// Where it is.
    pub address: BackendAddress,
    /// Printable form for logs and metrics.
    pub label: String,
    /// Relative weight for round-robin.
    pub weight: u32,
    /// Prebuilt peer (TLS settings, timeouts); cloned per request.
    pub peer: HttpPeer,
    /// Live state, shared with older config generations.
    pub state: Arc<BackendState>,
}

/// Active health check settings.
#[derive(Debug, Clone)]
pub struct HealthCheck {
    /// TCP connect or HTTP request.
    pub kind: HealthCheckKind,
    /// Time between checks.
    pub interval: Duration,
    /// Time allowed for one check.
    pub timeout: Duration,
    /// Consecutive successes to mark a backend up.
    pub healthy_threshold: u32,
    /// Consecutive failures to mark a backend down.
    pub unhealthy_threshold: u32,
}

/// What a health check does.
#[derive(Debug, Clone)]
pub enum HealthCheckKind {
    /// Connect and close.
    Tcp,
    /// `GET path` with `Host: host`; any 2xx or 3xx is healthy.
    Http {
        /// Request path.
        path: String,
        /// Host header.
        host: String,
    },
}

/// A named group of backends with its balancing and failure policy.
pub struct UpstreamGroup {
    /// Name from the config.
    pub name: String,
    /// The backends, in config order.
    pub backends: Vec<Backend>,
    /// Smooth weighted round-robin order of backend indexes.
    schedule: Vec<usize>,
    cursor: AtomicUsize,
    /// Extra attempts on another backend after a connect failure.
    pub retries: u32,
    /// Connect failures within `fail_timeout` that take a backend out.
    pub max_fails: u32,
    /// How long a failing backend stays out (and the window failures are counted in).
    pub fail_timeout: Duration,
    /// Optional active health check.
    pub health_check: Option<HealthCheck>,
}

/// Smooth weighted round-robin (as nginx does it), unrolled once into a fixed schedule.
fn weighted_schedule(weights: &[u32]) -> Vec<usize> {
    let total: i64 = weights.iter().map(|&w| w as i64).sum();
    let mut current = vec![0i64; weights.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, &w) in current.iter_mut().zip(weights) {
            *c += w as i64;
        }
        let Some((best, _)) = current
            .iter()
            .enumerate()
            .max_by_key(|&(i, &c)| (c, -(i as i64)))
        else {
            break;
        };
        current[best] -= total;
        out.push(best);
    }
    out
}

impl UpstreamGroup {
    /// Builds a group; `backends` must not be empty (the compiler checks).
    pub fn new(
        name: String,
        backends: Vec<Backend>,
        retries: u32,
        max_fails: u32,
        fail_timeout: Duration,
        health_check: Option<HealthCheck>,
    ) -> Self {
        let weights: Vec<u32> = backends.iter().map(|b| b.weight).collect();
        UpstreamGroup {
            name,
            schedule: weighted_schedule(&weights),
            backends,
            cursor: AtomicUsize::new(0),
            retries,
            max_fails,
            fail_timeout,
            health_check,
        }
    }

    /// Picks the next backend not in `tried`; `None` when no backend can take the request.
    ///
    /// Backends failed by health checks are skipped. Backends failed passively are skipped
    /// too, unless nothing else is left (then, like nginx, we try rather than fail outright).
    pub fn select(&self, tried: &[usize]) -> Option<usize> {
        let len = self.schedule.len();
        if len == 0 {
            return None;
        }
        let now = now_ms();
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        let mut fallback = None;
        for k in 0..len {
            let idx = self.schedule[(start + k) % len];
            if tried.contains(&idx) {
                continue;
            }
            let state = &self.backends[idx].state;
            if !state.is_healthy() {
                continue;
            }
            if state.passively_down(now) {
                fallback.get_or_insert(idx);
                continue;
            }
            return Some(idx);
        }
        fallback
    }

    /// Records a failed connection to backend `idx` (nginx `max_fails` / `fail_timeout`).
    pub fn report_failure(&self, idx: usize) {
        let Some(b) = self.backends.get(idx) else {
            return;
        };
        if self.max_fails == 0 {
            return;
        }
        let now = now_ms();
        let window = self.fail_timeout.as_millis() as u64;
        let start = b.state.fail_window_start_ms.load(Ordering::Relaxed);
        let fails = if now.saturating_sub(start) > window {
            b.state.fail_window_start_ms.store(now, Ordering::Relaxed);
            b.state.passive_fails.store(1, Ordering::Relaxed);
            1
        } else {
            b.state.passive_fails.fetch_add(1, Ordering::Relaxed) + 1
        };
        if fails >= self.max_fails {
            b.state.down_until_ms.store(now + window, Ordering::Relaxed);
            b.state.passive_fails.store(0, Ordering::Relaxed);
            tracing::warn!(upstream = %self.name, backend = %b.label, "backend marked down for {:?} after {fails} failure(s)", self.fail_timeout);
        }
    }

    /// Clears passive failures after a successful connection.
    pub fn report_success(&self, idx: usize) {
        if let Some(b) = self.backends.get(idx) {
            if b.state.passive_fails.load(Ordering::Relaxed) != 0 {
                b.state.passive_fails.store(0, Ordering::Relaxed);
            }
        }
    }
}

/// Reuses the live state of backends that exist (same group, same address) in the old config.
#[derive(Default)]
pub struct StateCarry(HashMap<(String, BackendAddress), Arc<BackendState>>);

impl StateCarry {
    /// Collects the states of every backend of the given groups.
    pub fn from_groups<'a>(groups: impl Iterator<Item = &'a Arc<UpstreamGroup>>) -> Self {
        let mut map = HashMap::new();
        for g in groups {
            for b in &g.backends {
                map.insert((g.name.clone(), b.address.clone()), b.state.clone());
            }
        }
        StateCarry(map)
    }

    /// The previous state of this backend, or a fresh one.
    pub fn state_for(&self, group: &str, addr: &BackendAddress) -> Arc<BackendState> {
        self.0
            .get(&(group.to_string(), addr.clone()))
            .cloned()
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(weights: &[u32]) -> UpstreamGroup {
        let backends = weights
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                let addr: std::net::SocketAddr =
                    format!("127.0.0.1:{}", 10000 + i).parse().unwrap();
                Backend {
                    address: BackendAddress::Tcp(addr),
                    label: addr.to_string(),
                    weight: w,
                    peer: HttpPeer::new(addr, false, String::new()),
                    state: Arc::default(),
                }
            })
            .collect();
        UpstreamGroup::new("g".into(), backends, 1, 1, Duration::from_secs(10), None)
    }

    #[test]
    fn weighted_round_robin_is_smooth_and_proportional() {
        assert_eq!(weighted_schedule(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        let g = group(&[1, 1]);
        let picks: Vec<_> = (0..4).map(|_| g.select(&[]).unwrap()).collect();
        assert_eq!(picks, vec![0, 1, 0, 1]);
    }

    #[test]
    fn failed_backends_are_skipped_and_tried_ones_excluded() {
        let g = group(&[1, 1]);
        g.report_failure(1);
        for _ in 0..4 {
            assert_eq!(g.select(&[]), Some(0));
        }
        // Only the passively-failed one is left: it is tried rather than failing outright.
        assert_eq!(g.select(&[0]), Some(1));
        g.backends[0].state.observe_check(false, 1, 1);
        assert_eq!(g.select(&[1]), None);
        assert_eq!(g.backends[0].state.observe_check(true, 2, 1), None);
        assert_eq!(g.backends[0].state.observe_check(true, 2, 1), Some(true));
        assert_eq!(g.select(&[1]), Some(0));
    }
}
