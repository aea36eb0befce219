//! The command line: arguments (nginx habits: `-c`, `-t`) and the offline commands that manage
//! users, API keys, signing keys and migrations directly on the database, through the same
//! services as the API.

use std::path::PathBuf;

use anyhow::bail;
use clap::{Parser, Subcommand};
use portcullis_issuer::app::App;
use portcullis_issuer::config::IssuerConfig;
use portcullis_issuer::crypto::password;
use portcullis_issuer::crypto::secrets;
use portcullis_issuer::http;
use portcullis_issuer::store::{NewUser, Store};

/// Portcullis issuer: logins, access tokens, rotating refresh tokens, JWKS.
#[derive(Parser)]
#[command(name = "portcullis-issuer", version)]
pub struct Cli {
    /// Configuration file.
    #[arg(
        short = 'c',
        long = "config",
        default_value = "config/issuer.yaml",
        global = true
    )]
    pub config: PathBuf,
    /// Check the configuration and exit 0/1.
    #[arg(short = 't', long = "test")]
    pub test: bool,
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

/// Runs the service (no subcommand) or one offline command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let cfg = IssuerConfig::load(&cli.config)?;
    match cli.command {
        None => crate::serve(App::build(cfg).await?).await,
        Some(Command::Migrate) => {
            let store = Store::connect(&cfg.database_url).await?;
            store.migrate().await?;
            println!("migrations applied");
            Ok(())
        }
        Some(Command::Users(cmd)) => {
            let app = App::build(cfg).await?;
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
            let app = App::build(cfg).await?;
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
            let app = App::build(cfg).await?;
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
            let app = App::build(cfg).await?;
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
