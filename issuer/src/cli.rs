//! The command line: arguments (nginx habits: `-c`, `-t`) and the offline commands that manage
//! users, API keys, signing keys and migrations directly on the database, through the same
//! services as the API.

use std::path::PathBuf;

use anyhow::bail;
use clap::{Parser, Subcommand};
use portcullis_issuer::accounts::{self, AccountError, NewAccount};
use portcullis_issuer::app::App;
use portcullis_issuer::auth::api_key::{self, NewApiKey};
use portcullis_issuer::auth::clients::Permission;
use portcullis_issuer::config::IssuerConfig;
use portcullis_issuer::crypto::secrets;
use portcullis_issuer::signing_keys;
use portcullis_issuer::store::Store;

/// An account error as the CLI reports it (a policy refusal says which rule).
fn account_error(e: AccountError) -> anyhow::Error {
    match e {
        AccountError::WeakPassword(p) => anyhow::anyhow!("password rejected: {p:?}"),
        e => e.into(),
    }
}

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
    /// Delete what has ended (the hourly housekeeping of the service, run now): sessions,
    /// rate-limit windows, email links, SMS codes and messages, revocation records.
    Purge,
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
        /// What it may do beyond logging in, comma-separated: `introspect`, `revoke` (any
        /// token at /oauth/introspect, /oauth/revoke; without them only its own).
        #[arg(long, value_delimiter = ',', value_parser = permission)]
        permissions: Vec<Permission>,
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

/// Parses one name of `--permissions`.
fn permission(name: &str) -> Result<Permission, String> {
    Permission::parse(name.trim()).ok_or_else(|| {
        let known: Vec<&str> = Permission::ALL.iter().map(|p| p.as_str()).collect();
        format!("unknown permission {name:?} (known: {})", known.join(", "))
    })
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
        Some(Command::Purge) => {
            let app = App::build(cfg).await?;
            let purged = app
                .store
                .purge_expired(portcullis_issuer::app::now())
                .await?;
            println!("{purged:?}");
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
                    let new = NewAccount {
                        email,
                        username,
                        password: Some(pw),
                        roles: list(&roles),
                        ..NewAccount::default()
                    };
                    let user = accounts::create(&app, new).await.map_err(account_error)?;
                    println!("{}", user.id);
                }
                UsersCmd::List => {
                    for u in accounts::list(&app, 10_000, 0).await? {
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
                    accounts::set_password(&app, &id, pw)
                        .await
                        .map_err(account_error)?;
                    println!("password set; sessions revoked");
                }
                UsersCmd::SetRoles { id, roles } => {
                    let u = accounts::set_roles(&app, &id, list(&roles)).await?;
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
                    permissions,
                    expires_in,
                } => {
                    let new = NewApiKey {
                        subject: &subject,
                        name: &name,
                        scopes: list(&scopes),
                        roles: list(&roles),
                        permissions,
                        expires_in,
                    };
                    let (key, secret) = api_key::create(&app, new).await?;
                    println!(
                        "id:      {}\napi key: {secret}\n(the key is shown once)",
                        key.id
                    );
                }
                ApiKeysCmd::List => {
                    for k in api_key::list(&app, None).await? {
                        let state = if k.revoked_at.is_some() {
                            "revoked"
                        } else {
                            "active"
                        };
                        println!(
                            "{}\t{}\t{}\t{}\t{}\tpermissions={}",
                            k.id,
                            k.prefix,
                            k.subject,
                            k.scopes.join(" "),
                            state,
                            k.permissions.join(",")
                        );
                    }
                }
                ApiKeysCmd::Revoke { id } => {
                    api_key::revoke(&app, &id).await?;
                    println!("revoked");
                }
            }
            Ok(())
        }
        Some(Command::Keys(cmd)) => {
            let app = App::build(cfg).await?;
            match cmd {
                KeysCmd::List => {
                    for k in signing_keys::list(&app.store).await? {
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
            if !accounts::list(&app, 1, 0).await?.is_empty() {
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
                let new = NewAccount {
                    email: Some(email.into()),
                    password: Some(pw.clone()),
                    roles,
                    ..NewAccount::default()
                };
                accounts::create(&app, new).await.map_err(account_error)?;
                out.push_str(&format!("{email} password: {pw}\n"));
            }
            let new = NewApiKey {
                subject: "demo-service",
                name: "demo",
                scopes: vec!["orders:read".into()],
                roles: vec!["service".into()],
                permissions: Vec::new(),
                expires_in: None,
            };
            let (_, key) = api_key::create(&app, new).await?;
            out.push_str(&format!("demo API key: {key}\n"));
            std::fs::write(app.cfg.secrets_dir.join("demo.txt"), &out)?;
            print!("{out}");
            Ok(())
        }
    }
}
