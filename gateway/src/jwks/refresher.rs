//! A background refresher for any number of issuer key sets, usable by the gateway and by a
//! Pingora proxy of your own (the plugin use).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::IssuerKeys;

/// How often the loop looks for due refreshes; refreshes themselves follow each issuer's
/// schedule (Cache-Control within the policy's bounds).
const TICK: Duration = Duration::from_millis(200);

/// Called with every key set on every tick.
type Observer = Box<dyn Fn(&IssuerKeys) + Send + Sync>;

/// Which key sets a refresher keeps fresh.
enum KeyList {
    /// A set fixed at construction.
    Fixed(Vec<Arc<IssuerKeys>>),
    /// A set asked for on every tick (the gateway's changes with each reload).
    Following(Box<dyn Fn() -> Vec<Arc<IssuerKeys>> + Send + Sync>),
}

/// Keeps issuer key sets fresh in the background: every due set is refreshed in its own task,
/// so a slow issuer never delays another. Failures are logged and counted by [`IssuerKeys`];
/// the old keys stay in use. Runs as a Pingora [`BackgroundService`] or through [`run`](Self::run).
pub struct KeyRefresher {
    keys: KeyList,
    observer: Option<Observer>,
}

impl KeyRefresher {
    /// A refresher over a fixed list of key sets.
    pub fn new(keys: Vec<Arc<IssuerKeys>>) -> Self {
        KeyRefresher {
            keys: KeyList::Fixed(keys),
            observer: None,
        }
    }

    /// A refresher over a list that may change: `keys` is called on every tick.
    pub fn following(keys: impl Fn() -> Vec<Arc<IssuerKeys>> + Send + Sync + 'static) -> Self {
        KeyRefresher {
            keys: KeyList::Following(Box::new(keys)),
            observer: None,
        }
    }

    /// Calls `observer` for every key set on every tick (for metrics: [`IssuerKeys::stats`]).
    pub fn with_observer(mut self, observer: impl Fn(&IssuerKeys) + Send + Sync + 'static) -> Self {
        self.observer = Some(Box::new(observer));
        self
    }

    /// Fetches every key set in `keys` once, concurrently, waiting at most `timeout`; returns
    /// the names of the issuers still without keys.
    pub async fn initial_fetch(keys: &[Arc<IssuerKeys>], timeout: Duration) -> Vec<String> {
        let fetches = keys.iter().map(|k| async move {
            let _ = tokio::time::timeout(timeout, k.refresh()).await;
        });
        futures::future::join_all(fetches).await;
        keys.iter()
            .filter(|k| !k.is_ready())
            .map(|k| k.name().to_string())
            .collect()
    }

    /// Refreshes due key sets until `shutdown` turns.
    pub async fn run(&self, mut shutdown: ShutdownWatch) {
        // Keyed by the key set's address: one refresh at a time per set.
        let mut running: HashMap<usize, tokio::task::JoinHandle<()>> = HashMap::new();
        let mut tick = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {}
            }
            running.retain(|_, h| !h.is_finished());
            let following;
            let keys = match &self.keys {
                KeyList::Fixed(keys) => keys,
                KeyList::Following(list) => {
                    following = list();
                    &following
                }
            };
            for keys in keys {
                if let Some(observe) = &self.observer {
                    observe(keys);
                }
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

#[async_trait]
impl BackgroundService for KeyRefresher {
    async fn start(&self, shutdown: ShutdownWatch) {
        self.run(shutdown).await
    }
}
