//! Persistent storage of the issuer: users, API keys, sessions and refresh tokens, signing
//! keys and shared rate-limit counters.
//!
//! One implementation serves SQLite (single node, the default) and PostgreSQL (many issuer
//! replicas sharing one database) through sqlx's `Any` driver, with one set of portable
//! migrations (`issuer/migrations/`) applied on [`Store::connect`].
//!
//! Conventions: timestamps are unix seconds (`i64`); operations that change state take `now`
//! from the caller when the outcome depends on it (rotation, revocation, rate limits), so
//! tests and replicas agree on the clock they reason with; `get_*` returns
//! [`StoreError::NotFound`] for a missing row while `find_*` returns `Ok(None)`.
//!
//! Operations that read and then write (refresh rotation, user deletion, signing-key
//! rotation) run in one transaction. On SQLite that transaction is `BEGIN IMMEDIATE`, so it
//! holds the write lock from its first statement: a deferred transaction that upgrades from
//! read to write fails with `SQLITE_BUSY` instead of waiting for the busy timeout.

mod api_keys;
mod error;
mod keys;
mod limits;
mod sessions;
mod users;

#[cfg(test)]
mod tests;

use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::any::{Any, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{AnyPool, Executor, Transaction};

pub use api_keys::ApiKey;
pub use error::StoreError;
pub use keys::{KeyFuture, KeyTx, SigningKey, KEY_STATES};
pub use sessions::{RefreshToken, RotateOutcome, Session, REASON_REFRESH_REUSE};
pub use users::{NewUser, User};

/// The embedded migrations of `issuer/migrations/`, shared by both backends.
static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// How long a SQLite connection waits for another writer before giving up.
const SQLITE_BUSY_TIMEOUT_MS: u32 = 5_000;

/// Connections of a file-based SQLite pool: readers run in parallel under WAL, writers queue
/// on the busy timeout, so a handful is plenty.
const SQLITE_MAX_CONNECTIONS: u32 = 8;

/// Connections per issuer process to PostgreSQL.
const POSTGRES_MAX_CONNECTIONS: u32 = 10;

/// Which database engine a [`Store`] talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Embedded SQLite (a file under `data/`, or in memory for tests).
    Sqlite,
    /// PostgreSQL, shared by issuer replicas.
    Postgres,
}

/// Handle on the issuer's database. Cheap to clone: clones share one connection pool.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

/// A database URL, classified and rewritten into the form the `Any` driver should get.
struct Target {
    backend: Backend,
    url: String,
    /// `Some(path)` for a file-based SQLite database.
    sqlite_file: Option<std::path::PathBuf>,
}

impl Target {
    fn parse(database_url: &str) -> Result<Target, StoreError> {
        if database_url.starts_with("postgres://") || database_url.starts_with("postgresql://") {
            return Ok(Target {
                backend: Backend::Postgres,
                url: database_url.to_string(),
                sqlite_file: None,
            });
        }
        let Some(rest) = database_url.strip_prefix("sqlite:") else {
            return Err(StoreError::Invalid(
                "database_url must start with sqlite: or postgres://".into(),
            ));
        };
        let rest = rest.strip_prefix("//").unwrap_or(rest);
        let (db, params) = match rest.split_once('?') {
            Some((db, params)) => (db, Some(params)),
            None => (rest, None),
        };
        let has_param = |name: &str| {
            params.is_some_and(|p| p.split('&').any(|kv| kv.split('=').next() == Some(name)))
        };
        let in_memory =
            db == ":memory:" || params.is_some_and(|p| p.split('&').any(|kv| kv == "mode=memory"));
        if in_memory {
            return Ok(Target {
                backend: Backend::Sqlite,
                url: database_url.to_string(),
                sqlite_file: None,
            });
        }
        if db.is_empty() {
            return Err(StoreError::Invalid("sqlite URL names no file".into()));
        }
        // Let sqlx decode the file name exactly as it will when connecting.
        let options = SqliteConnectOptions::from_str(database_url)
            .map_err(|e| StoreError::Invalid(format!("sqlite URL: {e}")))?;
        let path = options.get_filename().to_path_buf();
        // `sqlite://data/x.db` would reach the driver through `url::Url`, which reads `data`
        // as a host and lower-cases it; the `sqlite:<path>` form keeps the path verbatim.
        let mut url = format!("sqlite:{}", encode_path(&path));
        let mut query: Vec<&str> = params
            .map(|p| p.split('&').filter(|kv| !kv.is_empty()).collect())
            .unwrap_or_default();
        if !has_param("mode") {
            // Create the file on first start, like an embedded database should.
            query.push("mode=rwc");
        }
        url.push('?');
        url.push_str(&query.join("&"));
        Ok(Target {
            backend: Backend::Sqlite,
            url,
            sqlite_file: Some(path),
        })
    }
}

/// Percent-encodes the characters that would end or corrupt the path part of a URL; sqlx
/// percent-decodes the path again.
fn encode_path(path: &Path) -> String {
    let mut out = String::new();
    for c in path.to_string_lossy().chars() {
        match c {
            '%' => out.push_str("%25"),
            '?' => out.push_str("%3F"),
            '#' => out.push_str("%23"),
            _ => out.push(c),
        }
    }
    out
}

impl Store {
    /// Connects to `database_url` (`sqlite://data/issuer.db`, `sqlite::memory:`,
    /// `postgres://…`) and applies pending migrations.
    ///
    /// A SQLite file and its directory are created when missing; file databases run in WAL
    /// mode with a busy timeout. An in-memory database lives in exactly one connection (every
    /// new connection would be a new, empty database), so it is only for tests: a
    /// transaction held open there (see [`Store::lock_signing_keys`]) blocks every other call.
    pub async fn connect(database_url: &str) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let target = Target::parse(database_url)?;
        if let Some(parent) = target.sqlite_file.as_deref().and_then(Path::parent) {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| StoreError::Io(format!("{}: {e}", parent.display())))?;
            }
        }
        let options = match (target.backend, &target.sqlite_file) {
            (Backend::Postgres, _) => {
                AnyPoolOptions::new().max_connections(POSTGRES_MAX_CONNECTIONS)
            }
            (Backend::Sqlite, Some(_)) => AnyPoolOptions::new()
                .max_connections(SQLITE_MAX_CONNECTIONS)
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        // Explicit rather than relying on the driver's default: writers
                        // queue for this long instead of failing with "database is locked".
                        // `synchronous` stays FULL: a revocation must survive a power cut.
                        conn.execute(
                            format!("PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}").as_str(),
                        )
                        .await?;
                        Ok(())
                    })
                }),
            (Backend::Sqlite, None) => AnyPoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                // Closing the only connection would drop the whole database.
                .idle_timeout(None)
                .max_lifetime(None),
        };
        let pool = options.connect(&target.url).await?;
        let store = Store {
            pool,
            backend: target.backend,
        };
        if target.sqlite_file.is_some() {
            store.enable_wal().await?;
        }
        store.migrate().await?;
        Ok(store)
    }

    /// Switches a SQLite file to WAL, which persists in the file. Done once per process
    /// rather than per connection: changing the journal mode needs an exclusive lock that
    /// does not wait on the busy timeout, so a short retry covers replicas starting at once.
    async fn enable_wal(&self) -> Result<(), StoreError> {
        let mut last = String::new();
        for _ in 0..20 {
            match sqlx::query_scalar::<_, String>("PRAGMA journal_mode = WAL")
                .fetch_one(&self.pool)
                .await
            {
                Ok(mode) if mode.eq_ignore_ascii_case("wal") => return Ok(()),
                Ok(mode) => last = format!("journal_mode stayed {mode}"),
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(StoreError::Db(format!("cannot enable WAL: {last}")))
    }

    /// Applies pending migrations. Idempotent; on PostgreSQL sqlx serialises concurrent
    /// replicas with an advisory lock.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    /// The engine behind this store.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Whether the database answers a trivial query (for `/readyz`).
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }

    /// Begins a transaction that will write: `BEGIN IMMEDIATE` on SQLite (see module docs).
    async fn begin_write(&self) -> Result<Transaction<'static, Any>, StoreError> {
        let tx = match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        };
        Ok(tx)
    }
}

/// Current unix time in seconds, for the timestamps the store sets itself.
fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A new random 128-bit id, hex-encoded.
fn new_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Encodes a string list for a TEXT column.
fn encode_list(list: &[String]) -> Result<String, StoreError> {
    serde_json::to_string(list).map_err(|e| StoreError::Invalid(format!("list: {e}")))
}

/// Decodes a string list stored by [`encode_list`].
fn decode_list(text: &str, column: &str) -> Result<Vec<String>, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("{column}: {e}")))
}

/// Decodes a JSON document from a TEXT column.
fn decode_json(text: &str, column: &str) -> Result<serde_json::Value, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("{column}: {e}")))
}
