//! In-process tests of the admin API and the account service the CLI uses: the service is
//! built by `App::build` and served from this process, no binary involved.

use std::sync::Arc;
use std::time::Duration;

use portcullis_issuer::accounts::{self, AccountError, NewAccount};
use portcullis_issuer::app::App;
use portcullis_issuer::config::IssuerConfig;
use serde_json::{json, Value};

struct Harness {
    app: Arc<App>,
    admin_url: String,
    admin_token: String,
    _dir: tempfile::TempDir,
}

/// Builds the service on a fresh SQLite file with one hashing slot and serves its admin API
/// on an ephemeral loopback port.
async fn start() -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg_path = dir.path().join("issuer.yaml");
    std::fs::write(
        &cfg_path,
        "database_url: sqlite://./issuer.db\n\
         secrets:\n  dir: ./secrets\n\
         password:\n  memory_kib: 8192\n  iterations: 1\n  max_concurrent_hashes: 1\n",
    )
    .expect("write config");
    let cfg = IssuerConfig::load(&cfg_path).expect("config");
    let app = App::build(cfg).await.expect("build");
    let admin_token = std::fs::read_to_string(dir.path().join("secrets/admin-token"))
        .expect("admin token")
        .trim()
        .to_string();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let admin_url = format!("http://{}", listener.local_addr().expect("addr"));
    let router = portcullis_issuer::http::admin_app(app.clone());
    tokio::spawn(async move { axum::serve(listener, router).await });
    Harness {
        app,
        admin_url,
        admin_token,
        _dir: dir,
    }
}

impl Harness {
    async fn admin(&self, method: reqwest::Method, path: &str, body: Value) -> (u16, Value) {
        let resp = reqwest::Client::new()
            .request(method, format!("{}{path}", self.admin_url))
            .bearer_auth(&self.admin_token)
            .json(&body)
            .send()
            .await
            .expect("send");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_user_creation_waits_for_a_hashing_slot() {
    let h = Arc::new(start().await);
    // Hold the only slot: a create with a password must wait for it, like sign-up does.
    let permit = h.app.hash_slots.acquire().await.expect("permit");
    let h2 = h.clone();
    let pending = tokio::spawn(async move {
        h2.admin(
            reqwest::Method::POST,
            "/admin/users",
            json!({"email": "slot@example.com", "password": "a fine passphrase"}),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !pending.is_finished(),
        "the admin API hashed without a hashing slot"
    );
    drop(permit);
    let (status, user) = pending.await.expect("join");
    assert_eq!(status, 201, "{user}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_account_creation_waits_for_a_hashing_slot() {
    let h = start().await;
    let permit = h.app.hash_slots.acquire().await.expect("permit");
    let app = h.app.clone();
    let pending = tokio::spawn(async move {
        let new = NewAccount {
            email: Some("cli@example.com".into()),
            password: Some("a fine passphrase".into()),
            ..NewAccount::default()
        };
        accounts::create(&app, new).await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !pending.is_finished(),
        "the CLI hashed without a hashing slot"
    );
    drop(permit);
    let user = pending.await.expect("join").expect("created");
    assert_eq!(user.email.as_deref(), Some("cli@example.com"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_trims_and_validates_emails_like_sign_up() {
    let h = start().await;
    let (status, user) = h
        .admin(
            reqwest::Method::POST,
            "/admin/users",
            json!({"email": "  Bob@Example.COM \n"}),
        )
        .await;
    assert_eq!(status, 201, "{user}");
    assert_eq!(user["email"], "bob@example.com");

    let (status, err) = h
        .admin(
            reqwest::Method::POST,
            "/admin/users",
            json!({"email": "bob at example"}),
        )
        .await;
    assert_eq!(status, 400, "{err}");
    assert_eq!(err["error"], "invalid_request");
    assert_eq!(err["error_description"], "`email` is not a valid address");

    let id = user["id"].as_str().expect("id");
    let (status, user) = h
        .admin(
            reqwest::Method::PATCH,
            &format!("/admin/users/{id}"),
            json!({"email": " New@Example.com "}),
        )
        .await;
    assert_eq!(status, 200, "{user}");
    assert_eq!(user["email"], "new@example.com");

    let (status, err) = h
        .admin(
            reqwest::Method::PATCH,
            &format!("/admin/users/{id}"),
            json!({"email": "new@localhost"}),
        )
        .await;
    assert_eq!(status, 400, "{err}");
    assert_eq!(err["error_description"], "`email` is not a valid address");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_account_creation_trims_and_validates_emails() {
    let h = start().await;
    let new = NewAccount {
        email: Some(" Carol@Example.ORG ".into()),
        password: Some("a fine passphrase".into()),
        ..NewAccount::default()
    };
    let user = accounts::create(&h.app, new).await.expect("created");
    assert_eq!(user.email.as_deref(), Some("carol@example.org"));
    let new = NewAccount {
        email: Some("carol".into()),
        password: Some("a fine passphrase".into()),
        ..NewAccount::default()
    };
    assert!(matches!(
        accounts::create(&h.app, new).await,
        Err(AccountError::InvalidEmail)
    ));
}

/// Builds the service in `dir` (secrets in `dir/secrets`) and returns the start-up error.
async fn build_error(dir: &std::path::Path) -> String {
    let cfg_path = dir.join("issuer.yaml");
    std::fs::write(
        &cfg_path,
        "database_url: sqlite://./issuer.db\nsecrets:\n  dir: ./secrets\n",
    )
    .expect("write config");
    let cfg = IssuerConfig::load(&cfg_path).expect("config");
    match App::build(cfg).await {
        Ok(_) => "started".into(),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn an_unreadable_key_encryption_key_stops_the_start() {
    // A directory where the file should be: unreadable even for root (EISDIR).
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("secrets/key-encryption-key")).expect("mkdir");
    let err = build_error(dir.path()).await;
    assert!(
        err.contains("reading") && err.contains("key-encryption-key"),
        "an unreadable KEK must not be taken as absent (keys would be stored unencrypted): {err}"
    );
}

#[tokio::test]
async fn an_unreadable_generated_secret_is_not_replaced() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("secrets/admin-token")).expect("mkdir");
    let err = build_error(dir.path()).await;
    assert!(
        err.contains("reading") && err.contains("admin-token"),
        "an unreadable admin token must stop the start, not be regenerated: {err}"
    );
    assert!(dir.path().join("secrets/admin-token").is_dir());
}
