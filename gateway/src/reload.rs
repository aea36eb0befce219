//! Live configuration and reloads (SIGHUP, `--watch`).
//!
//! The running [`Generation`] sits behind an `ArcSwap`: requests load it once, reloads replace it
//! whole. A config that fails to load is logged and the running one stays.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

use crate::access_log::AccessLog;
use crate::config::ConfigError;
use crate::metrics::Metrics;
use crate::runtime::{self, Carry, Generation};

/// The running configuration plus what outlives any one generation of it.
pub struct LiveConfig {
    path: PathBuf,
    current: ArcSwap<Generation>,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// Access log writer.
    pub access_log: AccessLog,
    reloading: Mutex<()>,
}

impl LiveConfig {
    /// Wraps a freshly loaded config read from `path`.
    pub fn new(
        path: PathBuf,
        cfg: Generation,
        metrics: Arc<Metrics>,
        access_log: AccessLog,
    ) -> Self {
        LiveConfig {
            path,
            current: ArcSwap::from_pointee(cfg),
            metrics,
            access_log,
            reloading: Mutex::new(()),
        }
    }

    /// The config in force now.
    pub fn current(&self) -> Arc<Generation> {
        self.current.load_full()
    }

    /// Re-reads every file and swaps the new config in; on error the old one stays.
    pub fn reload(&self) -> Result<(), ConfigError> {
        // Serialise reloads (SIGHUP and --watch may race); never taken on the request path.
        let _guard = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.current.load_full();
        let carry = Carry::from_generation(&old);
        match runtime::load(&self.path, &carry) {
            Ok(new) => {
                if new.listeners != old.listeners
                    || new.admin != old.admin
                    || new.server != old.server
                {
                    tracing::warn!(
                        "listener or server settings changed: they take effect through a graceful upgrade (start the new process with -u, then send SIGQUIT to the old one); routes and upstreams are reloaded now"
                    );
                }
                if new.limits.rate_limit_keys != old.limits.rate_limit_keys {
                    tracing::warn!(
                        "server.limits.rate_limit_keys changed: the rate-limit tables keep their size until a restart or graceful upgrade; the other limits apply to connections accepted from now on"
                    );
                }
                // Always retarget: this also reopens the file after log rotation.
                self.access_log.retarget(new.access_log.path.clone());
                let routes = new.router.routes().len();
                let upstreams = new.upstreams.len();
                self.current.store(Arc::new(new));
                self.metrics.reloads.with_label_values(&["ok"]).inc();
                tracing::info!(
                    routes,
                    upstreams,
                    "configuration reloaded from {}",
                    self.path.display()
                );
                Ok(())
            }
            Err(e) => {
                self.metrics.reloads.with_label_values(&["error"]).inc();
                tracing::error!("configuration reload rejected, keeping the running config: {e}");
                Err(e)
            }
        }
    }
}

/// Reloads on every SIGHUP, from a dedicated thread (installed before the server starts,
/// so an early SIGHUP never kills the process).
pub fn reload_on_sighup(live: Arc<LiveConfig>) -> std::io::Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP])?;
    std::thread::Builder::new()
        .name("sighup".into())
        .spawn(move || {
            for _ in signals.forever() {
                tracing::info!("SIGHUP: reloading configuration");
                let _ = live.reload();
            }
        })?;
    Ok(())
}

fn fingerprint(files: &[PathBuf]) -> Vec<(PathBuf, Option<SystemTime>, u64)> {
    let mut out = Vec::new();
    let mut dirs: Vec<&Path> = files.iter().filter_map(|f| f.parent()).collect();
    dirs.sort();
    dirs.dedup();
    // Directories too: a new file in conf.d changes its directory's mtime.
    for p in files.iter().map(PathBuf::as_path).chain(dirs) {
        let meta = std::fs::metadata(p).ok();
        out.push((
            p.to_path_buf(),
            meta.as_ref().and_then(|m| m.modified().ok()),
            meta.map(|m| m.len()).unwrap_or(0),
        ));
    }
    out
}

/// Polls the config files and reloads when one changes (`--watch`).
pub fn watch(live: Arc<LiveConfig>, every: Duration) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("config-watch".into())
        .spawn(move || {
            let mut last = fingerprint(&live.current().files);
            loop {
                std::thread::sleep(every);
                let now = fingerprint(&live.current().files);
                if now != last {
                    // Let an editor finish writing before reading.
                    std::thread::sleep(Duration::from_millis(100));
                    tracing::info!("configuration files changed: reloading");
                    let _ = live.reload();
                    last = fingerprint(&live.current().files);
                }
            }
        })?;
    Ok(())
}
