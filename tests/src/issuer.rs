//! Harness for end-to-end tests of `portcullis-issuer`: a throwaway PostgreSQL cluster (one per
//! test process, a fresh database per test; the test kit's [`Postgres`]), an issuer process on free loopback ports with its
//! own config and secrets in a temporary directory, JSON helpers and token verification
//! against the published JWKS.
//!
//! ```text
//! let Some(db) = db_kind(Backend::Postgres) else { return };   // "SKIPPED: no PostgreSQL"
//! let dir = tempdir();
//! let iss = start_issuer(dir.path(), db, "refresh:\n  reuse_grace: 2s\n");
//! let user = iss.create_user("a@example.com", "correct horse battery", &["admin"]);
//! let pair = iss.password_login("a@example.com", "correct horse battery").pair();
//! let claims = iss.verify(&pair.access);
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use reqwest::blocking::RequestBuilder;
use reqwest::header::HeaderMap;
use serde_json::{json, Value};

use crate::{bin, client, free_port, jwt, port_open, wait_for, Proc};

pub use portcullis_testkit::postgres::Postgres;

// ---------------------------------------------------------------------------------------------
// Databases and issuer processes
// ---------------------------------------------------------------------------------------------

/// Which engine a scenario runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file in the test's temporary directory.
    Sqlite,
    /// A fresh database in the shared throwaway PostgreSQL cluster.
    Postgres,
}

/// The database an issuer uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DbKind {
    /// `sqlite://<dir>/db/issuer.db` inside the directory given to [`start_issuer`].
    Sqlite,
    /// A `postgres://…` URL.
    Postgres(String),
    /// Any database URL, used as is (e.g. another issuer's SQLite file, for a replica).
    Url(String),
}

/// A database for one test on `backend`: for PostgreSQL a fresh database, or `None` (after
/// printing `SKIPPED: no PostgreSQL`) when PostgreSQL is not installed.
pub fn db_kind(backend: Backend) -> Option<DbKind> {
    match backend {
        Backend::Sqlite => Some(DbKind::Sqlite),
        Backend::Postgres => match Postgres::database_url() {
            Some(url) => Some(DbKind::Postgres(url)),
            None => {
                println!("SKIPPED: no PostgreSQL");
                None
            }
        },
    }
}

/// How to start an issuer beyond the defaults of [`start_issuer`].
#[derive(Clone, Debug)]
pub struct IssuerOptions {
    /// The database.
    pub db: DbKind,
    /// Appended to the generated config (top-level keys other than the generated ones and
    /// `password`).
    pub extra_yaml: String,
    /// Lines added inside the `password:` block, e.g. `"max_failures_per_account: 3"`.
    pub password: Vec<String>,
    /// Keep the default (OWASP) argon2 parameters instead of the fast test ones.
    pub default_argon: bool,
    /// The `issuer` (token `iss`) value; default `http://127.0.0.1:<public port>`.
    pub issuer: Option<String>,
    /// `secrets.dir`; default `<dir>/secrets`.
    pub secrets_dir: Option<PathBuf>,
    /// Label of the process (log file names).
    pub name: String,
}

impl IssuerOptions {
    /// Defaults for `db`.
    pub fn new(db: DbKind) -> IssuerOptions {
        IssuerOptions {
            db,
            extra_yaml: String::new(),
            password: Vec::new(),
            default_argon: false,
            issuer: None,
            secrets_dir: None,
            name: "issuer".into(),
        }
    }

    /// Sets [`IssuerOptions::extra_yaml`].
    pub fn extra(mut self, yaml: &str) -> Self {
        self.extra_yaml = yaml.to_string();
        self
    }

    /// Adds a line to the `password:` block.
    pub fn password(mut self, line: &str) -> Self {
        self.password.push(line.to_string());
        self
    }
}

/// A running issuer.
pub struct IssuerProc {
    /// Its process.
    pub proc: Proc,
    /// Public API port.
    pub port: u16,
    /// Admin API port.
    pub admin_port: u16,
    /// The config file it runs with.
    pub config: PathBuf,
    /// The directory of its config and logs.
    pub dir: PathBuf,
    /// The `iss` of its tokens.
    pub issuer: String,
    /// The admin API token (from `secrets/admin-token`).
    pub admin_token: String,
    /// The revocation feed credential (from `secrets/feed-token`, the default
    /// `revocation_feed.token_file`).
    pub feed_token: String,
    /// The database URL written into the config.
    pub database_url: String,
    name: String,
}

/// Starts an issuer with a fresh config in `dir` (free ports, `db`, secrets under
/// `dir/secrets`, fast argon2 parameters) plus `extra_yaml`, and waits for `/healthz`.
pub fn start_issuer(dir: &Path, db: DbKind, extra_yaml: &str) -> IssuerProc {
    start_issuer_with(dir, IssuerOptions::new(db).extra(extra_yaml))
}

/// A config file written by [`write_issuer_config`], not started yet.
#[derive(Clone, Debug)]
pub struct IssuerConfigFile {
    /// The file.
    pub path: PathBuf,
    /// Public API port.
    pub port: u16,
    /// Admin API port.
    pub admin_port: u16,
    /// The `issuer` value.
    pub issuer: String,
    /// `secrets.dir`.
    pub secrets_dir: PathBuf,
    /// `database_url`.
    pub database_url: String,
}

/// Writes the config described by `opts` as `dir/<name>.yaml` on two free ports.
pub fn write_issuer_config(dir: &Path, opts: &IssuerOptions) -> IssuerConfigFile {
    let port = free_port();
    let mut admin_port = free_port();
    while admin_port == port {
        admin_port = free_port();
    }
    let database_url = match &opts.db {
        DbKind::Sqlite => format!("sqlite://{}/db/issuer.db", dir.display()),
        DbKind::Postgres(url) | DbKind::Url(url) => url.clone(),
    };
    let issuer = opts
        .issuer
        .clone()
        .unwrap_or_else(|| format!("http://127.0.0.1:{port}"));
    let secrets_dir = opts
        .secrets_dir
        .clone()
        .unwrap_or_else(|| dir.join("secrets"));
    let mut password = String::from("password:\n");
    if !opts.default_argon {
        password.push_str("  memory_kib: 1024\n  iterations: 1\n");
    }
    for line in &opts.password {
        password.push_str(&format!("  {line}\n"));
    }
    if password == "password:\n" {
        password.clear();
    }
    let text = format!(
        "listen: 127.0.0.1:{port}\nadmin_listen: 127.0.0.1:{admin_port}\ndatabase_url: \"{database_url}\"\n\
         issuer: {issuer}\nsecrets:\n  dir: {secrets}\n{password}{extra}",
        secrets = secrets_dir.display(),
        extra = opts.extra_yaml,
    );
    let path = dir.join(format!("{}.yaml", opts.name));
    std::fs::write(&path, text).expect("write issuer config");
    IssuerConfigFile {
        path,
        port,
        admin_port,
        issuer,
        secrets_dir,
        database_url,
    }
}

/// Writes the config (see [`IssuerOptions`]) as `dir/<name>.yaml` and starts the issuer.
pub fn start_issuer_with(dir: &Path, opts: IssuerOptions) -> IssuerProc {
    let cfg = write_issuer_config(dir, &opts);
    start_issuer_config(dir, &opts.name, cfg)
}

/// Starts an issuer named `name` (log file names) on a config file already written, whose
/// facts `cfg` gives, in `dir`, and waits for `/healthz`.
pub fn start_issuer_config(dir: &Path, name: &str, cfg: IssuerConfigFile) -> IssuerProc {
    let mut iss = IssuerProc {
        proc: spawn_issuer(name, &cfg.path, dir),
        port: cfg.port,
        admin_port: cfg.admin_port,
        config: cfg.path,
        dir: dir.to_path_buf(),
        issuer: cfg.issuer,
        admin_token: String::new(),
        feed_token: String::new(),
        database_url: cfg.database_url,
        name: name.to_string(),
    };
    iss.wait_healthy();
    iss.admin_token = std::fs::read_to_string(cfg.secrets_dir.join("admin-token"))
        .expect("read secrets/admin-token")
        .trim()
        .to_string();
    // Absent when the config names another `revocation_feed.token_file`.
    iss.feed_token = std::fs::read_to_string(cfg.secrets_dir.join("feed-token"))
        .map(|t| t.trim().to_string())
        .unwrap_or_default();
    iss
}

fn spawn_issuer(name: &str, config: &Path, dir: &Path) -> Proc {
    let config = config.display().to_string();
    Proc::spawn(
        name,
        &bin("portcullis-issuer"),
        &["-c", config.as_str()],
        dir,
    )
}

/// A token pair from a successful login.
#[derive(Clone, Debug)]
pub struct Pair {
    /// The access JWT.
    pub access: String,
    /// The opaque refresh token.
    pub refresh: String,
}

impl IssuerProc {
    /// `http://127.0.0.1:<port><path>` on the public API.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The same on the admin API.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin_port)
    }

    fn wait_healthy(&mut self) {
        let url = self.url("/healthz");
        let ok = wait_for(Duration::from_secs(30), || {
            port_open(self.port)
                && port_open(self.admin_port)
                && client()
                    .get(&url)
                    .send()
                    .map(|r| r.status().as_u16() == 200)
                    .unwrap_or(false)
        });
        if !ok {
            let _ = self.proc.wait_exit(Duration::from_millis(200));
            panic!(
                "{} did not become healthy:\n{}",
                self.name,
                self.proc.stderr_text()
            );
        }
    }

    /// Stops the process (SIGTERM) and waits for it to exit; panics if it does not.
    pub fn stop(&mut self) {
        self.proc.signal(libc::SIGTERM);
        let code = self.proc.wait_exit(Duration::from_secs(15));
        assert!(
            code.is_some(),
            "{} did not exit on SIGTERM:\n{}",
            self.name,
            self.proc.stderr_text()
        );
    }

    /// Starts the process again with the same config (ports, database, secrets).
    pub fn start_again(&mut self) {
        assert!(!self.proc.running(), "stop() it first");
        self.proc = spawn_issuer(&format!("{}-again", self.name), &self.config, &self.dir);
        self.wait_healthy();
    }

    /// Runs the issuer CLI with this config: `portcullis-issuer -c <config> <args>`;
    /// returns (exit code, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(bin("portcullis-issuer"))
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .output()
            .expect("run portcullis-issuer");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn admin_auth(&self) -> String {
        format!("Bearer {}", self.admin_token)
    }

    /// `GET /v1/revocations` (`?after=` when given) with the feed credential.
    pub fn revocations(&self, after: Option<i64>) -> Resp {
        let query = after.map(|a| format!("?after={a}")).unwrap_or_default();
        get_with(
            &self.url(&format!("/v1/revocations{query}")),
            Some(&format!("Bearer {}", self.feed_token)),
        )
    }

    /// GET on the admin API with the admin token.
    pub fn admin_get(&self, path: &str) -> Resp {
        send(
            client()
                .get(self.admin_url(path))
                .header("Authorization", self.admin_auth()),
        )
    }

    /// POST JSON on the admin API with the admin token.
    pub fn admin_post(&self, path: &str, body: &Value) -> Resp {
        post_json_with(&self.admin_url(path), Some(&self.admin_auth()), body)
    }

    /// PATCH JSON on the admin API with the admin token.
    pub fn admin_patch(&self, path: &str, body: &Value) -> Resp {
        send(
            client()
                .patch(self.admin_url(path))
                .header("Authorization", self.admin_auth())
                .json(body),
        )
    }

    /// DELETE on the admin API with the admin token.
    pub fn admin_delete(&self, path: &str) -> Resp {
        send(
            client()
                .delete(self.admin_url(path))
                .header("Authorization", self.admin_auth()),
        )
    }

    /// Creates a user through the admin API (201 expected); returns its JSON.
    pub fn create_user(&self, email: &str, password: &str, roles: &[&str]) -> Value {
        let r = self.admin_post(
            "/admin/users",
            &json!({"email": email, "password": password, "roles": roles}),
        );
        assert_eq!(r.status, 201, "create user {email}: {}", r.text);
        r.json()
    }

    /// Creates an API key through the admin API (201 expected); returns its JSON (with
    /// `api_key`, the secret).
    pub fn create_api_key(&self, body: &Value) -> Value {
        let r = self.admin_post("/admin/api-keys", body);
        assert_eq!(r.status, 201, "create API key: {}", r.text);
        r.json()
    }

    /// `POST /v1/auth/password` with a JSON body.
    pub fn password_login(&self, email: &str, password: &str) -> Resp {
        post_json(
            &self.url("/v1/auth/password"),
            &json!({"email": email, "password": password}),
        )
    }

    /// `POST /v1/auth/api-key` with a JSON body.
    pub fn api_key_login(&self, key: &str) -> Resp {
        post_json(&self.url("/v1/auth/api-key"), &json!({ "api_key": key }))
    }

    /// `POST /v1/auth/anonymous`.
    pub fn anonymous_login(&self) -> Resp {
        send(client().post(self.url("/v1/auth/anonymous")))
    }

    /// `POST /v1/users` (sign-up).
    pub fn signup(&self, body: &Value) -> Resp {
        post_json(&self.url("/v1/users"), body)
    }

    /// `POST /v1/auth/refresh`.
    pub fn refresh(&self, refresh_token: &str) -> Resp {
        post_json(
            &self.url("/v1/auth/refresh"),
            &json!({ "refresh_token": refresh_token }),
        )
    }

    /// `GET /v1/users/me` with a bearer token.
    pub fn me(&self, access: &str) -> Resp {
        get_with(&self.url("/v1/users/me"), Some(&format!("Bearer {access}")))
    }

    /// `PATCH /v1/users/me` with a bearer token.
    pub fn patch_me(&self, access: &str, body: &Value) -> Resp {
        send(
            client()
                .patch(self.url("/v1/users/me"))
                .header("Authorization", format!("Bearer {access}"))
                .json(body),
        )
    }

    /// The current JWKS document (200 expected).
    pub fn jwks(&self) -> Value {
        let r = get_with(&self.url("/.well-known/jwks.json"), None);
        assert_eq!(r.status, 200, "JWKS: {}", r.text);
        r.json()
    }

    /// Sorted `kid`s of the current JWKS.
    pub fn jwks_kids(&self) -> Vec<String> {
        kids(&self.jwks())
    }

    /// Verifies an access token against the currently published JWKS (see
    /// [`verify_access_token`]) and returns its claims; panics with the reason otherwise.
    pub fn verify(&self, token: &str) -> Value {
        verify_access_token(token, &self.jwks(), &self.issuer, "demo")
            .unwrap_or_else(|e| panic!("token does not verify against the JWKS: {e}\n{token}"))
    }
}

/// Sorted `kid`s of a JWKS document.
pub fn kids(jwks: &Value) -> Vec<String> {
    let mut k: Vec<String> = jwks["keys"]
        .as_array()
        .expect("JWKS has keys")
        .iter()
        .map(|k| k["kid"].as_str().expect("every JWK has a kid").to_string())
        .collect();
    k.sort();
    k
}

/// The `kid` in a token's JOSE header.
pub fn token_kid(token: &str) -> String {
    jwt::decode_segment(token, 0)["kid"]
        .as_str()
        .expect("token header has a kid")
        .to_string()
}

/// Verifies `token` with jsonwebtoken against the key of `jwks` named by its `kid`: signature,
/// `typ: at+jwt`, `iss`, `aud`, `exp`/`nbf`, and the presence and types of every contract
/// claim (`iss sub aud exp iat nbf jti sid scope roles amr auth_time`). Returns the claims.
pub fn verify_access_token(
    token: &str,
    jwks: &Value,
    issuer: &str,
    audience: &str,
) -> Result<Value, String> {
    let header = jsonwebtoken::decode_header(token).map_err(|e| format!("header: {e}"))?;
    if header.typ.as_deref() != Some("at+jwt") {
        return Err(format!("typ is {:?}, not at+jwt", header.typ));
    }
    let kid = header.kid.clone().ok_or("no kid in the header")?;
    let jwk_json = jwks["keys"]
        .as_array()
        .ok_or("JWKS has no keys array")?
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .ok_or_else(|| format!("kid {kid} is not in the JWKS"))?;
    let jwk: jsonwebtoken::jwk::Jwk =
        serde_json::from_value(jwk_json.clone()).map_err(|e| format!("JWK: {e}"))?;
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| format!("decoding key: {e}"))?;
    if !matches!(
        header.alg,
        Algorithm::ES256 | Algorithm::RS256 | Algorithm::EdDSA
    ) {
        return Err(format!("unexpected alg {:?}", header.alg));
    }
    let mut v = Validation::new(header.alg);
    v.set_issuer(&[issuer]);
    v.set_audience(&[audience]);
    v.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
    v.validate_nbf = true;
    v.leeway = 5;
    let data = jsonwebtoken::decode::<Value>(token, &key, &v).map_err(|e| format!("{e}"))?;
    let c = data.claims;
    for name in ["iss", "sub", "jti", "sid", "scope"] {
        if !c[name].is_string() {
            return Err(format!("claim {name} is not a string: {c}"));
        }
    }
    for name in ["exp", "iat", "nbf", "auth_time"] {
        if !c[name].is_i64() {
            return Err(format!("claim {name} is not an integer: {c}"));
        }
    }
    for name in ["roles", "amr"] {
        if !c[name].is_array() {
            return Err(format!("claim {name} is not an array: {c}"));
        }
    }
    if !(c["aud"].is_string() || c["aud"].is_array()) {
        return Err(format!("claim aud is missing: {c}"));
    }
    Ok(c)
}

// ---------------------------------------------------------------------------------------------
// HTTP helpers
// ---------------------------------------------------------------------------------------------

/// A response, read completely.
#[derive(Debug)]
pub struct Resp {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: HeaderMap,
    /// Body text.
    pub text: String,
}

impl Resp {
    /// The body as JSON; panics when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| {
            panic!(
                "status {} body is not JSON ({e}): {:?}",
                self.status, self.text
            )
        })
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }

    /// Asserts `status` and the error shape `{"error": code, "error_description": text}`
    /// (`code` checked when given); returns the body.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: Option<&str>) -> Value {
        assert_eq!(self.status, status, "expected {status}, got: {}", self.text);
        let v: Value = serde_json::from_str(&self.text).unwrap_or_else(|e| {
            panic!(
                "{status} error body is not JSON ({e}); expected {{\"error\",\"error_description\"}}: {:?}",
                self.text
            )
        });
        assert!(
            v["error"].is_string() && v["error_description"].is_string(),
            "{status} error body lacks error/error_description: {v}"
        );
        if let Some(code) = code {
            assert_eq!(v["error"], code, "error code: {v}");
        }
        v
    }

    /// Asserts a successful login answer (200 or 201) and returns the pair.
    #[track_caller]
    pub fn pair(&self) -> Pair {
        assert!(
            self.status == 200 || self.status == 201,
            "login failed with {}: {}",
            self.status,
            self.text
        );
        let v = self.json();
        assert_eq!(v["token_type"], "Bearer", "{v}");
        assert!(v["expires_in"].as_u64().unwrap_or(0) > 0, "{v}");
        let access = v["access_token"]
            .as_str()
            .expect("access_token")
            .to_string();
        let refresh = v["refresh_token"]
            .as_str()
            .expect("refresh_token")
            .to_string();
        assert!(!access.is_empty() && !refresh.is_empty(), "{v}");
        Pair { access, refresh }
    }
}

/// Sends a request and reads the whole answer; panics on transport errors.
pub fn send(req: RequestBuilder) -> Resp {
    let r = req.send().unwrap_or_else(|e| panic!("request failed: {e}"));
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().unwrap_or_default();
    Resp {
        status,
        headers,
        text,
    }
}

/// POST of a JSON body.
pub fn post_json(url: &str, body: &Value) -> Resp {
    post_json_with(url, None, body)
}

/// POST of a JSON body with an `Authorization` header value.
pub fn post_json_with(url: &str, auth: Option<&str>, body: &Value) -> Resp {
    let mut req = client().post(url).json(body);
    if let Some(a) = auth {
        req = req.header("Authorization", a);
    }
    send(req)
}

/// POST of raw bytes with a given content type (or none).
pub fn post_raw(url: &str, content_type: Option<&str>, body: Vec<u8>) -> Resp {
    let mut req = client().post(url).body(body);
    if let Some(ct) = content_type {
        req = req.header("Content-Type", ct);
    }
    send(req)
}

/// GET with an optional `Authorization` header value.
pub fn get_with(url: &str, auth: Option<&str>) -> Resp {
    let mut req = client().get(url);
    if let Some(a) = auth {
        req = req.header("Authorization", a);
    }
    send(req)
}

/// Runs `portcullis-issuer -t -c file`; returns (exit code, stdout + stderr).
pub fn check_issuer_config(file: &Path) -> (i32, String) {
    let out = Command::new(bin("portcullis-issuer"))
        .args(["-t", "-c"])
        .arg(file)
        .output()
        .expect("run portcullis-issuer -t");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// Runs each scenario `$name(Backend)` twice, as the tests `$name::sqlite` and
/// `$name::postgres` (the PostgreSQL one returns early where no server can be started).
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn sqlite() {
                super::$name($crate::issuer::Backend::Sqlite)
            }
            #[test]
            fn postgres() {
                super::$name($crate::issuer::Backend::Postgres)
            }
        }
    )*};
}
