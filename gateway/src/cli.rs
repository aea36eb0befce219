//! The command line (nginx habits): run, check (`-t`), upgrade (`-u`), daemon (`-d`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

use crate::access_log::AccessLog;
use crate::metrics::Metrics;
use crate::reload::{self, LiveConfig};
use crate::runtime;
use crate::server::{self, Fatal, ProcessFlags};

/// Portcullis gateway: an authenticating reverse proxy built on Pingora.
#[derive(Parser, Debug)]
#[command(name = "portcullis-gateway", version)]
struct Cli {
    /// Main configuration file.
    #[arg(short = 'c', long = "config", default_value = "config/gateway.yaml")]
    config: PathBuf,
    /// Check the configuration and exit (0 when valid, 1 otherwise).
    #[arg(short = 't', long = "test")]
    test: bool,
    /// Take over the listeners of a running instance (graceful upgrade; then SIGQUIT the old one).
    #[arg(short = 'u', long = "upgrade")]
    upgrade: bool,
    /// Run in the background.
    #[arg(short = 'd', long = "daemon")]
    daemon: bool,
    /// Also reload when a config file changes (polls every second).
    #[arg(long)]
    watch: bool,
}

/// The `portcullis-gateway` command: parses the arguments, sets up logging, then checks the
/// config (`-t`) or runs the gateway until it shuts down.
pub fn cli_main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,pingora_core=warn,pingora_proxy=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();

    if cli.test {
        return match runtime::load(&cli.config, &runtime::Carry::default()) {
            Ok(cfg) => {
                println!(
                    "portcullis-gateway: the configuration file {} syntax is ok ({} files, {} routes, {} upstreams)",
                    cli.config.display(),
                    cfg.files.len(),
                    cfg.router.routes().len(),
                    cfg.upstreams.len()
                );
                println!(
                    "portcullis-gateway: configuration file {} test is successful",
                    cli.config.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("portcullis-gateway: [emerg] {e}");
                eprintln!(
                    "portcullis-gateway: configuration file {} test failed",
                    cli.config.display()
                );
                ExitCode::FAILURE
            }
        };
    }

    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portcullis-gateway: [emerg] {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let cfg = runtime::load(&cli.config, &runtime::Carry::default())?;
    let metrics = Arc::new(Metrics::new().context("registering metrics")?);
    let access_log =
        AccessLog::start(cfg.access_log.path.clone()).context("opening the access log")?;
    let live = Arc::new(LiveConfig::new(
        cli.config.clone(),
        cfg,
        metrics,
        access_log,
    ));
    reload::reload_on_sighup(live.clone()).context("installing the SIGHUP handler")?;
    if cli.watch {
        reload::watch(live.clone(), Duration::from_secs(1))
            .context("starting the config watcher")?;
    }
    let flags = ProcessFlags {
        upgrade: cli.upgrade,
        daemon: cli.daemon,
    };
    let fatal = Arc::new(Fatal::default());
    let server = server::build(live.clone(), flags, fatal.clone())?;
    for l in &live.current().listeners {
        tracing::info!("listening on {}", l.describe());
    }
    if let Some(a) = &live.current().admin {
        tracing::info!("admin on {}", a.describe());
    }
    server::run(server, fatal)?;
    Ok(())
}
