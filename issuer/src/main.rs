//! `portcullis-issuer`: run the token service, or manage it offline (users, API keys,
//! signing keys, migrations) directly on its database. Arguments and offline commands are in
//! [`cli`]; the service itself is built by the library ([`App::build`]).

mod cli;

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use portcullis_issuer::app::App;
use portcullis_issuer::config::IssuerConfig;
use portcullis_issuer::http;

async fn shutdown_signal() {
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term => {},
    }
}

/// Serves the public and admin APIs until SIGTERM or Ctrl-C, with the maintenance tasks.
async fn serve(app: Arc<App>) -> anyhow::Result<()> {
    let public =
        http::public_app(app.clone()).into_make_service_with_connect_info::<std::net::SocketAddr>();
    let admin = http::admin_app(app.clone());
    let pl = tokio::net::TcpListener::bind(app.cfg.listen)
        .await
        .with_context(|| format!("binding {}", app.cfg.listen))?;
    let al = tokio::net::TcpListener::bind(app.cfg.admin_listen)
        .await
        .with_context(|| format!("binding {}", app.cfg.admin_listen))?;
    tracing::info!(
        "public API on http://{}, admin API on http://{}",
        app.cfg.listen,
        app.cfg.admin_listen
    );
    app.spawn_maintenance();
    // Waiting feed reads end with the signal, so the graceful shutdown need not wait them out.
    let feed = app.clone();
    let p = axum::serve(pl, public).with_graceful_shutdown(async move {
        shutdown_signal().await;
        feed.revocations.stop();
    });
    let a = axum::serve(al, admin).with_graceful_shutdown(shutdown_signal());
    tokio::try_join!(async { p.await }, async { a.await })?;
    Ok(())
}

/// Allocations at least this large get their own mapping, returned to the system when freed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 256 * 1024;

/// Fixes glibc's mmap threshold. By default glibc raises it to the size of the largest mapped
/// block freed so far, so after the first 19 MiB argon2 buffer large blocks come from the heap
/// arenas of whichever blocking threads ran them and stay resident there: the issuer's memory
/// grew to ~760 MiB during password logins although at most `max_concurrent_hashes` run at
/// once. (argon2 buffers themselves are pooled, see crypto::password.)
fn fix_malloc_thresholds() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // An operator's MALLOC_MMAP_THRESHOLD_ wins.
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
        // SAFETY: mallopt only changes allocator parameters; called before any other thread
        // exists.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        }
    }
}

fn main() -> ExitCode {
    fix_malloc_thresholds();
    let cli = cli::Cli::parse();
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if cli.test {
        return match IssuerConfig::load(&cli.config) {
            Ok(_) => {
                println!(
                    "portcullis-issuer: configuration file {} test is successful",
                    cli.config.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("portcullis-issuer: [emerg] {e}");
                ExitCode::FAILURE
            }
        };
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("portcullis-issuer: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portcullis-issuer: {e:#}");
            ExitCode::FAILURE
        }
    }
}
