//! Background JWKS refresh for every remote issuer of the live config, plus the JWKS
//! metrics. Runs as a Pingora background service; the request path never waits on it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::jwks::IssuerKeys;
use crate::reload::LiveConfig;

/// Keeps issuer key sets fresh.
pub struct KeyRefresher {
    live: Arc<LiveConfig>,
}

impl KeyRefresher {
    /// A refresher over the live config's issuers.
    pub fn new(live: Arc<LiveConfig>) -> Self {
        KeyRefresher { live }
    }
}

fn publish(live: &LiveConfig, keys: &IssuerKeys) {
    let s = keys.stats();
    let m = &live.metrics;
    // The key cache counts its fetches; the counters follow it (never backwards: a cache that
    // a reload replaced starts again from zero).
    for (result, total) in [("ok", s.fetches_ok), ("error", s.fetches_failed)] {
        let counter = m.jwks_fetches.with_label_values(&[keys.name(), result]);
        if total > counter.get() {
            counter.inc_by(total - counter.get());
        }
    }
    m.jwks_age
        .with_label_values(&[keys.name()])
        .set(s.seconds_since_success.map(|a| a as i64).unwrap_or(-1));
    m.jwks_keys
        .with_label_values(&[keys.name()])
        .set(s.keys as i64);
}

/// Fetches the keys of every required remote issuer once, waiting at most `timeout`;
/// returns the names of issuers still without keys.
pub async fn initial_fetch(keys: Vec<Arc<IssuerKeys>>, timeout: Duration) -> Vec<String> {
    let fetches = keys.iter().map(|k| async move {
        let _ = tokio::time::timeout(timeout, k.refresh()).await;
    });
    futures::future::join_all(fetches).await;
    keys.iter()
        .filter(|k| !k.is_ready())
        .map(|k| k.name().to_string())
        .collect()
}

#[async_trait]
impl BackgroundService for KeyRefresher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let cfg = self.live.current();
        if cfg.auth.require_keys_at_start {
            let required: Vec<Arc<IssuerKeys>> = cfg
                .verifier
                .issuers()
                .filter(|i| i.required)
                .map(|i| i.keys.clone())
                .collect();
            let missing = initial_fetch(required, Duration::from_secs(10)).await;
            if !missing.is_empty() {
                tracing::error!(
                    "auth.require_keys_at_start: no signing keys for issuer(s) {}; exiting",
                    missing.join(", ")
                );
                std::process::exit(1);
            }
        }
        let mut running: HashMap<usize, tokio::task::JoinHandle<()>> = HashMap::new();
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {}
            }
            let cfg = self.live.current();
            running.retain(|_, h| !h.is_finished());
            for keys in cfg.issuer_keys.values() {
                publish(&self.live, keys);
                let id = Arc::as_ptr(keys) as usize;
                if running.contains_key(&id) || !keys.refresh_due() {
                    continue;
                }
                let keys = keys.clone();
                running.insert(
                    id,
                    tokio::spawn(async move {
                        // Failures are logged and counted inside; the old keys stay in use.
                        let _ = keys.refresh().await;
                    }),
                );
            }
        }
    }
}
