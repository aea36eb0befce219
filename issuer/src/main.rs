//! `portcullis-issuer`: run the token service, or manage it offline (users, API keys,
//! signing keys, migrations) directly on its database.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use portcullis_issuer::app::App;
use portcullis_issuer::config::IssuerConfig;
use portcullis_issuer::crypto::keys::KeyAlg;
use portcullis_issuer::crypto::password::{self, PasswordParams};
use portcullis_issuer::crypto::secrets;
use portcullis_issuer::http;
use portcullis_issuer::keys::KeyRing;
use portcullis_issuer::store::{NewUser, Store, StoreOptions};

/// Portcullis issuer: logins, access tokens, rotating refresh tokens, JWKS.
#[derive(Parser)]
#[command(name = "portcullis-issuer", version)]
struct Cli {
    /// Configuration file.
    #[arg(
        short = 'c',
        long = "config",
        default_value = "config/issuer.yaml",
        global = true
    )]
    config: PathBuf,
    /// Check the configuration and exit 0/1.
    #[arg(short = 't', long = "test")]
    test: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Apply database migrations and exit.
    Migrate,
    /// Manage users.
    #[command(subcommand)]
    Users(UsersCmd),
    /// Manage API keys.
    #[command(subcommand, name = "api-keys")]
    ApiKeys(ApiKeysCmd),
    /// Manage signing keys.
    #[command(subcommand)]
    Keys(KeysCmd),
    /// Create the demo admin, user and API key once, printing their secrets (for `make run`).
    DemoSeed,
}

#[derive(Subcommand)]
enum UsersCmd {
    /// Create a user.
    Add {
        #[arg(long)]
        email: Option<String>,
        #[arg(long)]
        username: Option<String>,
        /// Password (read from PORTCULLIS_PASSWORD when omitted).
        #[arg(long)]
        password: Option<String>,
        /// Comma-separated roles.
        #[arg(long, default_value = "")]
        roles: String,
    },
    /// List users.
    List,
    /// Set a user's password.
    SetPassword { id: String, password: String },
    /// Replace a user's roles (comma-separated).
    SetRoles { id: String, roles: String },
}

#[derive(Subcommand)]
enum ApiKeysCmd {
    /// Create a key bound to a subject; prints the secret once.
    Create {
        #[arg(long)]
        subject: String,
        #[arg(long, default_value = "")]
        name: String,
        #[arg(long, default_value = "")]
        scopes: String,
        #[arg(long, default_value = "")]
        roles: String,
        /// Lifetime in seconds.
        #[arg(long)]
        expires_in: Option<i64>,
    },
    /// List keys (never secrets).
    List,
    /// Revoke a key by id.
    Revoke { id: String },
}

#[derive(Subcommand)]
enum KeysCmd {
    /// List signing keys and their states.
    List,
    /// Publish a new key; it signs after the publish lead time.
    Rotate,
}

fn list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(str::to_string)
        .collect()
}

/// Reads a generated secret, creating it (0600) on first start.
fn secret_file(
    dir: &Path,
    name: &str,
    make: impl FnOnce() -> String,
) -> anyhow::Result<(String, bool)> {
    let path = dir.join(name);
    if let Ok(s) = std::fs::read_to_string(&path) {
        return Ok((s.trim().to_string(), false));
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let value = make();
    std::fs::write(&path, format!("{value}\n"))
        .with_context(|| format!("writing {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok((value, true))
}

async fn build(cfg: IssuerConfig) -> anyhow::Result<Arc<App>> {
    if let Some(p) = cfg.database_url.strip_prefix("sqlite://") {
        if let Some(dir) = Path::new(p).parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
    }
    let store = Store::connect_with(
        &cfg.database_url,
        StoreOptions {
            sqlite_sync: cfg.sqlite_sync,
        },
    )
    .await
    .context("opening the database")?;
    let (pepper, _) = secret_file(&cfg.secrets_dir, "api-key-pepper", secrets::random_token)?;
    let (admin_token, created) =
        secret_file(&cfg.secrets_dir, "admin-token", secrets::random_token)?;
    if created {
        eprintln!(
            "portcullis-issuer: created the admin API token in {}",
            cfg.secrets_dir.join("admin-token").display()
        );
    }
    let kek = std::fs::read(cfg.secrets_dir.join("key-encryption-key"))
        .ok()
        .map(|k| k.trim_ascii().to_vec());
    let alg: KeyAlg = cfg
        .key_alg
        .parse()
        .map_err(|_| anyhow::anyhow!("unsupported key algorithm"))?;
    let retire_after = cfg.access_ttl.as_secs() as i64 + 300;
    let keys = KeyRing::load(
        &store,
        alg,
        kek,
        cfg.key_publish_lead.as_secs() as i64,
        retire_after,
    )
    .await
    .context("loading signing keys")?;
    let password = PasswordParams {
        memory_kib: cfg.argon_memory_kib,
        iterations: cfg.argon_iterations,
        parallelism: cfg.argon_parallelism,
    };
    Ok(Arc::new(App {
        metrics: portcullis_issuer::metrics::Metrics::new().context("registering metrics")?,
        mailer: portcullis_issuer::mail::Mailer::new(&cfg.email)
            .context("configuring the mailer")?,
        sms: portcullis_issuer::sms::SmsLogin::build(cfg.sms.as_ref(), pepper.as_bytes())
            .context("configuring SMS login")?,
        hash_slots: tokio::sync::Semaphore::new(cfg.max_concurrent_hashes),
        store,
        keys,
        pepper: pepper.into_bytes(),
        admin_token_hash: secrets::hash_token(&admin_token),
        password,
        cfg,
    }))
}

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

async fn serve(app: Arc<App>) -> anyhow::Result<()> {
    let public = http::public::router(app.clone())
        .layer(tower_http::limit::RequestBodyLimitLayer::new(
            http::MAX_BODY,
        ))
        .layer(axum::middleware::from_fn(http::json_413))
        .layer(axum::middleware::from_fn(
            portcullis_issuer::metrics::request_log,
        ))
        .into_make_service_with_connect_info::<std::net::SocketAddr>();
    let admin = http::admin::router(app.clone())
        .layer(tower_http::limit::RequestBodyLimitLayer::new(
            http::MAX_BODY,
        ))
        .layer(axum::middleware::from_fn(http::json_413))
        .layer(axum::middleware::from_fn(
            portcullis_issuer::metrics::request_log,
        ));
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

    // Key lifecycle: every replica advances it (idempotently) and rotates on schedule.
    let ticker = app.clone();
    tokio::spawn(async move {
        let mut last_rotation = std::time::Instant::now();
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            if let Err(e) = ticker.keys.tick(&ticker.store).await {
                tracing::warn!("signing-key maintenance failed: {e}");
            }
            if let Some(every) = ticker.cfg.key_rotate_every {
                if last_rotation.elapsed() >= every {
                    last_rotation = std::time::Instant::now();
                    if let Err(e) = ticker.keys.rotate(&ticker.store).await {
                        tracing::warn!("scheduled key rotation failed: {e}");
                    }
                }
            }
        }
    });

    // Housekeeping (store/housekeeping.rs): hourly, the first a minute after start.
    let keeper = app.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(60)).await;
        let mut hourly = tokio::time::interval(Duration::from_secs(3600));
        loop {
            hourly.tick().await;
            match keeper
                .store
                .purge_expired(portcullis_issuer::app::now())
                .await
            {
                Ok(p) if p.total() > 0 => tracing::info!(?p, "deleted ended rows"),
                Ok(_) => {}
                Err(e) => tracing::warn!("housekeeping failed: {e}"),
            }
        }
    });

    let p = axum::serve(pl, public).with_graceful_shutdown(shutdown_signal());
    let a = axum::serve(al, admin).with_graceful_shutdown(shutdown_signal());
    tokio::try_join!(async { p.await }, async { a.await })?;
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let cfg = IssuerConfig::load(&cli.config)?;
    match cli.command {
        None => serve(build(cfg).await?).await,
        Some(Command::Migrate) => {
            let store = Store::connect(&cfg.database_url).await?;
            store.migrate().await?;
            println!("migrations applied");
            Ok(())
        }
        Some(Command::Users(cmd)) => {
            let app = build(cfg).await?;
            match cmd {
                UsersCmd::Add {
                    email,
                    username,
                    password: pw,
                    roles,
                } => {
                    let pw = match pw.or_else(|| std::env::var("PORTCULLIS_PASSWORD").ok()) {
                        Some(p) => p,
                        None => bail!("give --password or PORTCULLIS_PASSWORD"),
                    };
                    if let Err(p) =
                        password::check_policy(&pw, app.cfg.password_min, app.cfg.password_max)
                    {
                        bail!("password rejected: {p:?}");
                    }
                    let hash = password::hash(&pw, &app.password)?;
                    let user = app
                        .store
                        .create_user(&NewUser {
                            email: email.map(|e| e.to_lowercase()),
                            username: username.map(|u| u.to_lowercase()),
                            phone: None,
                            password_hash: Some(hash),
                            roles: list(&roles),
                            app_metadata: serde_json::json!({}),
                            user_metadata: serde_json::json!({}),
                            anonymous: false,
                        })
                        .await?;
                    println!("{}", user.id);
                }
                UsersCmd::List => {
                    for u in app.store.list_users(10_000, 0).await? {
                        println!(
                            "{}\t{}\t{}\t{}",
                            u.id,
                            u.email.unwrap_or_default(),
                            u.username.unwrap_or_default(),
                            u.roles.join(",")
                        );
                    }
                }
                UsersCmd::SetPassword { id, password: pw } => {
                    if let Err(p) =
                        password::check_policy(&pw, app.cfg.password_min, app.cfg.password_max)
                    {
                        bail!("password rejected: {p:?}");
                    }
                    let mut u = app.store.get_user(&id).await?;
                    u.password_hash = Some(password::hash(&pw, &app.password)?);
                    app.store.update_user(&u).await?;
                    app.store
                        .revoke_user_sessions(&id, portcullis_issuer::app::now(), "password_reset")
                        .await?;
                    println!("password set; sessions revoked");
                }
                UsersCmd::SetRoles { id, roles } => {
                    let mut u = app.store.get_user(&id).await?;
                    u.roles = list(&roles);
                    app.store.update_user(&u).await?;
                    println!("roles: {}", u.roles.join(","));
                }
            }
            Ok(())
        }
        Some(Command::ApiKeys(cmd)) => {
            let app = build(cfg).await?;
            match cmd {
                ApiKeysCmd::Create {
                    subject,
                    name,
                    scopes,
                    roles,
                    expires_in,
                } => {
                    let (key, secret) = http::admin::new_api_key(
                        &app,
                        &subject,
                        &name,
                        list(&scopes),
                        list(&roles),
                        expires_in,
                    )
                    .await
                    .map_err(|e| anyhow::anyhow!("{}", e.description))?;
                    println!(
                        "id:      {}\napi key: {secret}\n(the key is shown once)",
                        key.id
                    );
                }
                ApiKeysCmd::List => {
                    for k in app.store.list_api_keys(None).await? {
                        let state = if k.revoked_at.is_some() {
                            "revoked"
                        } else {
                            "active"
                        };
                        println!(
                            "{}\t{}\t{}\t{}\t{}",
                            k.id,
                            k.prefix,
                            k.subject,
                            k.scopes.join(" "),
                            state
                        );
                    }
                }
                ApiKeysCmd::Revoke { id } => {
                    app.store
                        .revoke_api_key(&id, portcullis_issuer::app::now())
                        .await?;
                    println!("revoked");
                }
            }
            Ok(())
        }
        Some(Command::Keys(cmd)) => {
            let app = build(cfg).await?;
            match cmd {
                KeysCmd::List => {
                    for k in app.store.list_signing_keys().await? {
                        println!(
                            "{}\t{}\t{}\tactivates_at={}",
                            k.kid, k.alg, k.state, k.activates_at
                        );
                    }
                }
                KeysCmd::Rotate => {
                    let kid = app.keys.rotate(&app.store).await?;
                    println!(
                        "new key {kid} published; it signs in {}s",
                        app.cfg.key_publish_lead.as_secs()
                    );
                }
            }
            Ok(())
        }
        Some(Command::DemoSeed) => {
            let app = build(cfg).await?;
            if !app.store.list_users(1, 0).await?.is_empty() {
                println!("demo data already present (see data/secrets/demo.txt)");
                return Ok(());
            }
            let admin_pw = secrets::random_token()[..16].to_string();
            let user_pw = secrets::random_token()[..16].to_string();
            let mut out = String::new();
            for (email, pw, roles) in [
                ("admin@example.com", &admin_pw, vec!["admin".to_string()]),
                ("user@example.com", &user_pw, vec![]),
            ] {
                let hash = password::hash(pw, &app.password)?;
                app.store
                    .create_user(&NewUser {
                        email: Some(email.into()),
                        username: None,
                        phone: None,
                        password_hash: Some(hash),
                        roles,
                        app_metadata: serde_json::json!({}),
                        user_metadata: serde_json::json!({}),
                        anonymous: false,
                    })
                    .await?;
                out.push_str(&format!("{email} password: {pw}\n"));
            }
            let (_, key) = http::admin::new_api_key(
                &app,
                "demo-service",
                "demo",
                vec!["orders:read".into()],
                vec!["service".into()],
                None,
            )
            .await
            .map_err(|e| anyhow::anyhow!("{}", e.description))?;
            out.push_str(&format!("demo API key: {key}\n"));
            std::fs::write(app.cfg.secrets_dir.join("demo.txt"), &out)?;
            print!("{out}");
            Ok(())
        }
    }
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
    let cli = Cli::parse();
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
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portcullis-issuer: {e:#}");
            ExitCode::FAILURE
        }
    }
}
