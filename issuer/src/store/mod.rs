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
//!
//! Writes on a SQLite file go through a pool of one connection (the *writer*): SQLite admits
//! one writer at a time anyway, and writers queueing in-process on the pool wait in order
//! instead of retrying the file lock with the busy handler's sleeps (1 ms, 2 ms, 5 ms, …),
//! which cost more throughput and latency than the writes themselves. The busy timeout still
//! arbitrates between processes sharing the file. Sessions and refresh rotations on a SQLite
//! file are also grouped into shared transactions (`group_commit`): one fsync per group.
//!
//! Cancellation: a request future can be dropped at any `.await` (client gone). No such drop
//! may leave a pooled connection inside a transaction, or every later write waits for a lock
//! nobody will release. sqlx rolls back a `Transaction` that is dropped, but its begin is not
//! cancel-safe (sqlx-sqlite 0.8 leaves `BEGIN IMMEDIATE` open if dropped while checking the
//! result; sqlx-postgres leaves a `BEGIN` it sent unaccounted), so [`Store::begin_write`]
//! begins in a spawned task that always finishes, and both pools refuse a connection that comes
//! back, or would be handed out, inside a transaction (see [`release_check`]).

mod api_keys;
mod error;
mod group_commit;
pub mod housekeeping;
mod limits;
mod links;
mod revocations;
mod session_rows;
mod sessions;
mod signing_keys;
mod sms;
mod users;

#[cfg(test)]
mod tests;

use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::any::{Any, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::pool::PoolConnectionMetadata;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{AnyConnection, AnyPool, Connection, Executor, Transaction};

pub use api_keys::{ApiKey, REASON_API_KEY_REVOKED};
pub use error::StoreError;
pub use limits::LimitCheck;
pub use links::{EmailLink, LinkRefusal};
pub use revocations::{Revocation, RevocationKind, RevocationPage};
pub use session_rows::{RefreshToken, RotateOutcome, Session, REASON_REFRESH_REUSE};
pub use signing_keys::{KeyFuture, KeyTx, SigningKey, KEY_STATES};
pub use sms::SmsMessage;
pub use users::{NewUser, TokenCutoff, User};

/// What the pool hooks return (the driver's boxed-future type, spelled without futures-core).
type HookFuture<'c> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<bool, sqlx::Error>> + Send + 'c>>;

/// The embedded migrations of `issuer/migrations/`, shared by both backends.
static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// How long a SQLite connection waits for another writer before giving up.
const SQLITE_BUSY_TIMEOUT_MS: u32 = 5_000;

/// Connections of a file-based SQLite pool for reads (and the few writes not routed through
/// the writer): readers run in parallel under WAL, so a handful is plenty.
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

/// How a SQLite database makes commits durable (`PRAGMA synchronous`; the file runs in WAL
/// mode). Ignored for PostgreSQL, whose own settings (`synchronous_commit`) govern.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SqliteSync {
    /// `FULL`: the WAL is fsynced at every commit, so a committed write (a logout, a
    /// revocation, a rotated refresh token) survives a power cut or an OS crash.
    #[default]
    Full,
    /// `NORMAL`: fsync only at checkpoints. Commits survive a crash of the issuer process;
    /// a power cut or OS crash can lose the last commits (never corrupts the database).
    Normal,
}

impl SqliteSync {
    /// The value of `PRAGMA synchronous`.
    fn pragma(self) -> &'static str {
        match self {
            SqliteSync::Full => "FULL",
            SqliteSync::Normal => "NORMAL",
        }
    }
}

/// Tuning of [`Store::connect_with`].
#[derive(Clone, Copy, Debug)]
pub struct StoreOptions {
    /// Durability of SQLite commits.
    pub sqlite_sync: SqliteSync,
    /// Seconds after its event that a revocation record stays relevant (and in the feed):
    /// the longest an access token issued before it can still be accepted.
    pub revocation_window: i64,
}

/// [`StoreOptions::revocation_window`] of a store opened without options (offline tools,
/// tests): the default access-token lifetime (15 min) plus the default
/// `revocation_feed.leeway` (60 s). The service passes its configured value.
pub const DEFAULT_REVOCATION_WINDOW: i64 = 900 + 60;

impl Default for StoreOptions {
    fn default() -> StoreOptions {
        StoreOptions {
            sqlite_sync: SqliteSync::default(),
            revocation_window: DEFAULT_REVOCATION_WINDOW,
        }
    }
}

/// Handle on the issuer's database. Cheap to clone: clones share the connection pools.
#[derive(Clone, Debug)]
pub struct Store {
    /// Reads; also the writes of `users`, `limits` and `keys` outside [`Store::begin_write`]
    /// (on SQLite they meet the writer at the file lock, under the busy timeout).
    pool: AnyPool,
    /// Writes: one connection on a SQLite file (see module docs); `pool` itself otherwise.
    writer: AnyPool,
    /// The group-commit queue of a SQLite file (see `group_commit`); `None` otherwise.
    group: Option<tokio::sync::mpsc::Sender<group_commit::Job>>,
    backend: Backend,
    /// Bumped after every commit that appended revocation records (see `revocations`).
    revocation_signal: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
    /// See [`StoreOptions::revocation_window`].
    revocation_window: i64,
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
        Store::connect_with(database_url, StoreOptions::default()).await
    }

    /// [`Store::connect`] with explicit [`StoreOptions`].
    pub async fn connect_with(database_url: &str, opts: StoreOptions) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let target = Target::parse(database_url)?;
        if let Some(parent) = target.sqlite_file.as_deref().and_then(Path::parent) {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| StoreError::Io(format!("{}: {e}", parent.display())))?;
            }
        }
        let sync = opts.sqlite_sync.pragma();
        let sqlite_file = |max: u32| {
            AnyPoolOptions::new()
                .max_connections(max)
                .after_connect(move |conn, _| {
                    Box::pin(async move {
                        // Explicit rather than relying on the driver's default: writers of
                        // other processes queue for this long instead of failing with
                        // "database is locked".
                        conn.execute(
                            format!("PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}").as_str(),
                        )
                        .await?;
                        // Per connection, not stored in the file: see SqliteSync.
                        conn.execute(format!("PRAGMA synchronous = {sync}").as_str())
                            .await?;
                        Ok(())
                    })
                })
                .after_release(release_check)
                .before_acquire(acquire_check)
                // No ping when a connection leaves the pool: sqlx already pings it when it
                // comes back (after release_check), and a connection that died while idle
                // fails its next query like it would fail the ping. That ping was a second
                // round trip to the SQLite worker thread per query, a large share of a read.
                .test_before_acquire(false)
        };
        let (pool, writer) = match (target.backend, &target.sqlite_file) {
            (Backend::Postgres, _) => {
                let pool = AnyPoolOptions::new()
                    .max_connections(POSTGRES_MAX_CONNECTIONS)
                    .after_release(release_check)
                    .before_acquire(acquire_check)
                    // Unlike SQLite's, a PostgreSQL connection dies with the server or the
                    // network while idle: keep the ping, so a restart costs no failed request.
                    .connect(&target.url)
                    .await?;
                (pool.clone(), pool)
            }
            (Backend::Sqlite, Some(_)) => {
                let pool = sqlite_file(SQLITE_MAX_CONNECTIONS)
                    .connect(&target.url)
                    .await?;
                // Waiting for the writer replaces waiting on the busy timeout: same bound.
                let writer = sqlite_file(1)
                    .acquire_timeout(Duration::from_millis(SQLITE_BUSY_TIMEOUT_MS.into()))
                    .connect(&target.url)
                    .await?;
                (pool, writer)
            }
            (Backend::Sqlite, None) => {
                let pool = AnyPoolOptions::new()
                    .max_connections(1)
                    .min_connections(1)
                    // Closing the only connection would drop the whole database.
                    .idle_timeout(None)
                    .max_lifetime(None)
                    .connect(&target.url)
                    .await?;
                (pool.clone(), pool)
            }
        };
        let mut store = Store {
            pool,
            writer,
            group: None,
            backend: target.backend,
            revocation_signal: std::sync::Arc::new(tokio::sync::watch::Sender::new(0)),
            revocation_window: opts.revocation_window,
        };
        if target.sqlite_file.is_some() {
            store.enable_wal().await?;
        }
        store.migrate().await?;
        if target.sqlite_file.is_some() {
            store.group = Some(group_commit::start(store.clone()));
        }
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
    ///
    /// The begin runs in its own task, awaited here: if the caller is dropped meanwhile, the
    /// task still finishes and drops the `Transaction` it made, which rolls back. Awaited
    /// in place, a drop between the driver sending `BEGIN` and building the `Transaction`
    /// returns the connection to the pool inside a transaction (holding SQLite's write lock).
    async fn begin_write(&self) -> Result<Transaction<'static, Any>, StoreError> {
        let writer = self.writer.clone();
        let backend = self.backend;
        let begin = tokio::spawn(async move {
            match backend {
                Backend::Sqlite => writer.begin_with("BEGIN IMMEDIATE").await,
                Backend::Postgres => writer.begin().await,
            }
        });
        match begin.await {
            Ok(tx) => Ok(tx?),
            Err(e) => Err(StoreError::Db(format!("begin: {e}"))),
        }
    }
}

/// `after_release` hook of the pools: a connection coming back inside a transaction is closed
/// (which rolls the transaction back) rather than reused. Closing is the only sound repair:
/// a `ROLLBACK` sent behind the driver's back would leave its transaction depth wrong.
///
/// The depth check is an atomic read; only when it reports a transaction (usually a dropped
/// `Transaction` whose rollback is queued) does a ping let the driver catch up first.
fn release_check(conn: &mut AnyConnection, _meta: PoolConnectionMetadata) -> HookFuture<'_> {
    Box::pin(async move {
        if !conn.is_in_transaction() {
            return Ok(true);
        }
        conn.ping().await?;
        if conn.is_in_transaction() {
            tracing::warn!("closing a database connection returned inside a transaction");
            return Ok(false);
        }
        Ok(true)
    })
}

/// `before_acquire` hook: the same check when a connection leaves the idle queue, catching a
/// transaction whose begin was still queued in the driver when [`release_check`] ran (the
/// pool's release ping has flushed it since).
fn acquire_check(conn: &mut AnyConnection, _meta: PoolConnectionMetadata) -> HookFuture<'_> {
    Box::pin(async move {
        if conn.is_in_transaction() {
            tracing::warn!("discarding an idle database connection left inside a transaction");
            return Ok(false);
        }
        Ok(true)
    })
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
