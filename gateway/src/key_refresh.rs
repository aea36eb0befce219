//! The gateway's key refresh: the [`KeyRefresher`] over the live config's issuers, the JWKS
//! metrics, and `auth.require_keys_at_start`. Runs as a Pingora background service; the
//! request path never waits on it.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::jwks::{IssuerKeys, KeyRefresher};
use crate::metrics::{advance, Metrics};
use crate::reload::LiveConfig;
use crate::server::{Fatal, FatalError};

/// How long `require_keys_at_start` waits for the first keys.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Keeps the live config's issuer key sets fresh.
pub struct GatewayKeyRefresh {
    live: Arc<LiveConfig>,
    refresher: KeyRefresher,
    fatal: Arc<Fatal>,
}

impl GatewayKeyRefresh {
    /// A refresher over the live config's issuers; a missing key set at start (when required)
    /// is reported through `fatal`.
    pub fn new(live: Arc<LiveConfig>, fatal: Arc<Fatal>) -> Self {
        let following = live.clone();
        let metrics = live.metrics.clone();
        let refresher = KeyRefresher::following(move || {
            following.current().issuer_keys.values().cloned().collect()
        })
        .with_observer(move |keys| publish(&metrics, keys));
        GatewayKeyRefresh {
            live,
            refresher,
            fatal,
        }
    }
}

fn publish(m: &Metrics, keys: &IssuerKeys) {
    let s = keys.stats();
    // The key cache counts its fetches; the counters follow it.
    for (result, total) in [("ok", s.fetches_ok), ("error", s.fetches_failed)] {
        advance(
            &m.jwks_fetches.with_label_values(&[keys.name(), result]),
            total,
        );
    }
    m.jwks_age
        .with_label_values(&[keys.name()])
        .set(s.seconds_since_success.map(|a| a as i64).unwrap_or(-1));
    m.jwks_keys
        .with_label_values(&[keys.name()])
        .set(s.keys as i64);
}

#[async_trait]
impl BackgroundService for GatewayKeyRefresh {
    async fn start(&self, shutdown: ShutdownWatch) {
        let cfg = self.live.current();
        if cfg.auth.require_keys_at_start {
            let required: Vec<Arc<IssuerKeys>> = cfg
                .verifier
                .issuers()
                .filter(|i| i.required)
                .map(|i| i.keys.clone())
                .collect();
            let missing = KeyRefresher::initial_fetch(&required, START_TIMEOUT).await;
            if !missing.is_empty() {
                tracing::error!(
                    "auth.require_keys_at_start: no signing keys for issuer(s) {}; exiting",
                    missing.join(", ")
                );
                // The process decides what a fatal start-up error means (it exits 1).
                self.fatal.fail(FatalError::NoKeysAtStart(missing));
                return;
            }
        }
        drop(cfg);
        self.refresher.run(shutdown).await
    }
}
