//! Assembles the Pingora server from the compiled config: listeners, the proxy service,
//! the admin service and the health checker.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use pingora::listeners::tls::TlsSettings;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora::services::background::background_service;
use pingora::services::listening::Service;
use thiserror::Error;

use crate::admin::AdminApp;
use crate::config::{ListenerSpec, TlsSpec};
use crate::key_refresh::GatewayKeyRefresh;
use crate::limits::conn::EdgeApp;
use crate::proxy::Gateway;
use crate::reload::LiveConfig;
use crate::revocation::RevocationFollower;
use crate::upstream::health::HealthChecker;

/// Why the server could not be assembled.
#[derive(Debug, Error)]
pub enum ServerError {
    /// A TLS listener could not be set up.
    #[error("TLS listener {addr}: {message}")]
    Tls {
        /// Listener address.
        addr: String,
        /// What failed.
        message: String,
    },
}

/// An error that ends the process after start-up (the server shuts down fast, the binary
/// exits 1).
#[derive(Debug, Error)]
pub enum FatalError {
    /// `auth.require_keys_at_start` and these issuers have no keys.
    #[error("auth.require_keys_at_start: no signing keys for issuer(s) {}", .0.join(", "))]
    NoKeysAtStart(Vec<String>),
}

/// Where background services report a [`FatalError`]; the first one wins.
#[derive(Default)]
pub struct Fatal {
    error: Mutex<Option<FatalError>>,
    notify: tokio::sync::Notify,
}

impl Fatal {
    /// Records `error` and starts a fast shutdown.
    pub fn fail(&self, error: FatalError) {
        let mut slot = self.error.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            let text = error.to_string();
            *slot = Some(error);
            // notify_one keeps a permit when nobody waits yet.
            self.notify.notify_one();
            exit_unless_stopped_in_time(text);
        }
    }

    /// Takes the recorded error, if any.
    fn take(&self) -> Option<FatalError> {
        self.error.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// Pingora's Unix shutdown signals (SIGQUIT upgrade, SIGTERM drain, SIGINT fast) plus a fast
/// shutdown on a [`FatalError`].
struct Signals(Arc<Fatal>);

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let mut upgrade = signal(SignalKind::quit()).expect("SIGQUIT handler");
        let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut interrupt = signal(SignalKind::interrupt()).expect("SIGINT handler");
        tokio::select! {
            _ = upgrade.recv() => ShutdownSignal::GracefulUpgrade,
            _ = terminate.recv() => ShutdownSignal::GracefulTerminate,
            _ = interrupt.recv() => ShutdownSignal::FastShutdown,
            _ = self.0.notify.notified() => ShutdownSignal::FastShutdown,
        }
    }
}

/// How long Pingora's fast shutdown may take after a [`FatalError`] before the process exits 1
/// regardless: a start-up failure must end the process even when a runtime is slow to stop
/// (seen under load: a service still starting kept the shutdown waiting past 20 s).
const FATAL_EXIT_GRACE: Duration = Duration::from_secs(3);

/// The watchdog of a fatal error: if [`run`] has not returned (and the binary exited 1) within
/// [`FATAL_EXIT_GRACE`], the process exits 1 here. Started only once an error is recorded,
/// i.e. after any daemonizing fork.
fn exit_unless_stopped_in_time(text: String) {
    let _ = std::thread::Builder::new()
        .name("fatal-exit".into())
        .spawn(move || {
            std::thread::sleep(FATAL_EXIT_GRACE);
            eprintln!("portcullis-gateway: [emerg] {text} (the shutdown did not finish in time)");
            std::process::exit(1);
        });
}

/// Runs `server` until it shuts down; Err when it stopped for a [`FatalError`].
pub fn run(server: Server, fatal: Arc<Fatal>) -> Result<(), FatalError> {
    let args = RunArgs {
        shutdown_signal: Box::new(Signals(fatal.clone())),
    };
    server.run(args);
    match fatal.take() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Process flags that map onto Pingora's own.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessFlags {
    /// Take listeners over from a running instance (`-u`).
    pub upgrade: bool,
    /// Run in the background (`-d`).
    pub daemon: bool,
}

/// Creates a self-signed certificate for `localhost` at the spec's paths (dev only).
pub fn ensure_self_signed(tls: &TlsSpec) -> Result<(), String> {
    if !tls.self_signed || (tls.cert.exists() && tls.key.exists()) {
        return Ok(());
    }
    let names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    let cert = rcgen::generate_simple_self_signed(names)
        .map_err(|e| format!("generating a certificate: {e}"))?;
    for (path, pem, mode) in [
        (&tls.cert, cert.cert.pem(), 0o644),
        (&tls.key, cert.key_pair.serialize_pem(), 0o600),
    ] {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        std::fs::write(path, pem).map_err(|e| format!("{}: {e}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    tracing::warn!(
        "generated a self-signed development certificate at {}",
        tls.cert.display()
    );
    Ok(())
}

fn path_str(p: &Path) -> String {
    p.display().to_string()
}

/// Builds the Pingora server; the caller runs it with [`run`].
pub fn build(
    live: Arc<LiveConfig>,
    flags: ProcessFlags,
    fatal: Arc<Fatal>,
) -> Result<Server, ServerError> {
    let cfg = live.current();
    let s = &cfg.server;
    let conf = ServerConf {
        threads: s.threads,
        pid_file: s.pid_file.clone(),
        upgrade_sock: s.upgrade_sock.clone(),
        grace_period_seconds: Some(s.grace_period_seconds),
        graceful_shutdown_timeout_seconds: Some(s.graceful_shutdown_timeout_seconds),
        upstream_keepalive_pool_size: s.upstream_keepalive_pool,
        work_stealing: s.work_stealing,
        daemon: flags.daemon,
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade: flags.upgrade,
        daemon: flags.daemon,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    // Bootstrap (receiving listeners from the old process on `-u`) runs as a service so that it
    // happens after daemonising; everything that listens waits for it.
    let bootstrap = server.bootstrap_as_a_service();

    let mut http = pingora::proxy::http_proxy(&server.configuration, Gateway::new(live.clone()));
    // HTTP/2 heads get the same bound as HTTP/1 ones (h2 answers 431 / resets the stream).
    let mut h2 = pingora::protocols::http::v2::server::default_h2_options();
    h2.max_header_list_size(cfg.limits.head.max_head_size as u32);
    http.h2_options = Some(h2);
    // An idle HTTP/2 connection closes like an idle HTTP/1 keep-alive one.
    let mut options = pingora::apps::HttpServerOptions::default();
    if !cfg.limits.keepalive_timeout.is_zero() {
        options.h2_idle_timeout = Some(cfg.limits.keepalive_timeout);
    }
    http.server_options = Some(options);
    let mut proxy = Service::new(
        "portcullis-gateway".to_string(),
        EdgeApp::new(http, live.clone()),
    );
    for l in &cfg.listeners {
        match l {
            ListenerSpec::Tcp { addr, tls: None } => proxy.add_tcp(addr),
            ListenerSpec::Tcp {
                addr,
                tls: Some(tls),
            } => {
                ensure_self_signed(tls).map_err(|message| ServerError::Tls {
                    addr: addr.clone(),
                    message,
                })?;
                let mut settings =
                    TlsSettings::intermediate(&path_str(&tls.cert), &path_str(&tls.key)).map_err(
                        |e| ServerError::Tls {
                            addr: addr.clone(),
                            message: e.to_string(),
                        },
                    )?;
                if tls.http2 {
                    settings.enable_h2();
                }
                proxy.add_tls_with_settings(addr, None, settings);
            }
            ListenerSpec::Unix { path, mode } => {
                proxy.add_uds(&path_str(path), mode.map(std::fs::Permissions::from_mode));
            }
        }
    }

    let ready = Arc::new(AtomicBool::new(false));
    if let Some(admin) = &cfg.admin {
        let mut svc = Service::new(
            "portcullis-admin".to_string(),
            AdminApp::new(live.clone(), ready.clone()),
        );
        match admin {
            ListenerSpec::Tcp { addr, .. } => svc.add_tcp(addr),
            ListenerSpec::Unix { path, mode } => {
                svc.add_uds(&path_str(path), mode.map(std::fs::Permissions::from_mode))
            }
        }
        server.add_service(svc).add_dependency(&bootstrap);
    }
    server.add_service(proxy).add_dependency(&bootstrap);
    server
        .add_service(background_service(
            "portcullis-health",
            HealthChecker::new(live.clone(), ready),
        ))
        .add_dependency(&bootstrap);
    let following = live.clone();
    let metrics = live.metrics.clone();
    let revocations = RevocationFollower::following(move || {
        following.current().revocations.values().cloned().collect()
    })
    .with_observer(move |r| metrics.publish_revocations(r));
    server
        .add_service(background_service("portcullis-revocations", revocations))
        .add_dependency(&bootstrap);
    server
        .add_service(background_service(
            "portcullis-jwks",
            GatewayKeyRefresh::new(live, fatal),
        ))
        .add_dependency(&bootstrap);
    Ok(server)
}
