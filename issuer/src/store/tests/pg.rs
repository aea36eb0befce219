//! A throwaway PostgreSQL for the store tests.
//!
//! One cluster per test process (initdb costs a second or two; each test gets its own
//! database instead), created in a temporary directory on a free loopback port and stopped
//! when the process exits. The binaries are looked up on `PATH`, then in the usual package
//! locations. initdb and pg_ctl refuse to run as root, so when the tests run as root the
//! cluster belongs to the `postgres` user, or `nobody`.

use std::env;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, OnceLock};

use sqlx::{Connection, Executor};

use crate::store::{new_id, Store};

/// The running cluster, taken and dropped (stopped) at process exit.
static CLUSTER: Mutex<Option<Cluster>> = Mutex::new(None);

/// Outcome of the one start attempt: `Ok(None)` when PostgreSQL is not installed.
static STARTED: OnceLock<Result<Option<u16>, String>> = OnceLock::new();

struct Cluster {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    /// uid/gid to run the binaries as, when we are root.
    run_as: Option<(u32, u32)>,
}

impl Cluster {
    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(program));
        // A working directory and HOME the unprivileged user can read.
        cmd.current_dir(self.dir.path())
            .env("HOME", self.dir.path())
            .env_remove("PGDATA")
            .env_remove("PGPORT")
            .env_remove("PGHOST");
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
        }
        cmd
    }

    fn start(bin: PathBuf) -> Result<Cluster, String> {
        let run_as = unprivileged_user();
        let dir = match run_as {
            // Root's TMPDIR may not be reachable by the cluster's owner; /tmp always is.
            Some(_) => tempfile::Builder::new()
                .prefix("portcullis-pg-")
                .tempdir_in("/tmp"),
            None => tempfile::Builder::new().prefix("portcullis-pg-").tempdir(),
        }
        .map_err(|e| format!("tempdir: {e}"))?;
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .map_err(|e| format!("chown {}: {e}", dir.path().display()))?;
        }
        let mut cluster = Cluster {
            bin,
            dir,
            port: 0,
            run_as,
        };
        let data = cluster.data();
        let out = cluster
            .command("initdb")
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ])
            .arg("-D")
            .arg(&data)
            .output()
            .map_err(|e| format!("initdb: {e}"))?;
        check(&out, "initdb")?;
        // The free port can be taken between probing and binding: retry with another.
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port()?;
            let options = format!(
                "-p {port} -k \"{}\" -c listen_addresses=127.0.0.1 -c max_connections=500 \
                 -c fsync=off -c synchronous_commit=off -c full_page_writes=off",
                cluster.dir.path().display()
            );
            let out = cluster
                .command("pg_ctl")
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(cluster.dir.path().join("postgres.log"))
                .args(["-o", &options, "-w", "-t", "60", "start"])
                .output()
                .map_err(|e| format!("pg_ctl: {e}"))?;
            match check(&out, "pg_ctl start") {
                Ok(()) => {
                    cluster.port = port;
                    return Ok(cluster);
                }
                Err(e) => {
                    let log = std::fs::read_to_string(cluster.dir.path().join("postgres.log"))
                        .unwrap_or_default();
                    last = format!("{e}\n{log}");
                }
            }
        }
        Err(last)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.port != 0 {
            // Immediate: nothing in a throwaway cluster is worth a shutdown checkpoint.
            let _ = self
                .command("pg_ctl")
                .arg("-D")
                .arg(self.data())
                .args(["-m", "immediate", "-w", "stop"])
                .output();
        }
    }
}

fn check(out: &Output, what: &str) -> Result<(), String> {
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("free port: {e}"))
}

/// When running as root: the uid/gid of `postgres` or else `nobody` (65534 if neither is
/// listed). `None` when not root.
fn unprivileged_user() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let lookup = |name: &str| {
        passwd.lines().find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            match fields.as_slice() {
                [user, _, uid, gid, ..] if *user == name => {
                    Some((uid.parse().ok()?, gid.parse().ok()?))
                }
                _ => None,
            }
        })
    };
    Some(
        lookup("postgres")
            .or_else(|| lookup("nobody"))
            .unwrap_or((65534, 65534)),
    )
}

/// The directory holding both `initdb` and `pg_ctl`: from `PATH`, else the newest of the
/// distribution locations (Debian keeps them out of `PATH`).
fn find_bin_dir() -> Option<PathBuf> {
    let usable = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Some(path) = env::var_os("PATH") {
        for dir in env::split_paths(&path) {
            if usable(&dir) {
                // /usr/local/bin/initdb may be a symlink into the real bin directory.
                let real = std::fs::canonicalize(dir.join("initdb"))
                    .ok()
                    .and_then(|p| p.parent().map(Path::to_path_buf))
                    .filter(|d| usable(d));
                return Some(real.unwrap_or(dir));
            }
        }
    }
    let mut candidates: Vec<(Vec<u32>, PathBuf)> = Vec::new();
    let mut scan = |parent: &str, prefix: &str| {
        let Ok(entries) = std::fs::read_dir(parent) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(version) = name.strip_prefix(prefix) else {
                continue;
            };
            let version: Vec<u32> = version.split('.').filter_map(|p| p.parse().ok()).collect();
            let bin = entry.path().join("bin");
            if usable(&bin) {
                candidates.push((version, bin));
            }
        }
    };
    scan("/usr/lib/postgresql", "");
    scan("/usr", "pgsql-");
    candidates.sort();
    candidates
        .pop()
        .map(|(_, bin)| bin)
        .or_else(|| Some(PathBuf::from("/usr/local/pgsql/bin")).filter(|d| usable(d)))
}

extern "C" fn stop_at_exit() {
    if let Ok(mut cluster) = CLUSTER.lock() {
        drop(cluster.take());
    }
}

/// Starts the shared cluster once; its port, or `None` without PostgreSQL binaries.
fn port() -> Option<u16> {
    let started = STARTED.get_or_init(|| {
        let Some(bin) = find_bin_dir() else {
            return Ok(None);
        };
        let cluster = Cluster::start(bin)?;
        let port = cluster.port;
        if let Ok(mut slot) = CLUSTER.lock() {
            *slot = Some(cluster);
        }
        // SAFETY: registers a plain function; it only touches the mutex-guarded cluster.
        unsafe {
            libc::atexit(stop_at_exit);
        }
        Ok(Some(port))
    });
    match started {
        Ok(port) => *port,
        // Installed but broken is a failure, not a skip.
        Err(e) => panic!("PostgreSQL is installed but the test cluster did not start: {e}"),
    }
}

/// URL of a fresh, empty database in the shared cluster, or `None` without PostgreSQL.
pub(super) async fn database_url() -> Option<String> {
    let port = tokio::task::spawn_blocking(port)
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
    let name = format!("t_{}", new_id());
    let mut admin = sqlx::postgres::PgConnection::connect(&format!(
        "postgres://postgres@127.0.0.1:{port}/postgres"
    ))
    .await
    .expect("connect to the test cluster");
    admin
        .execute(format!("CREATE DATABASE {name}").as_str())
        .await
        .expect("create test database");
    admin.close().await.ok();
    Some(format!("postgres://postgres@127.0.0.1:{port}/{name}"))
}

/// A store on a fresh database, or `None` without PostgreSQL.
pub(super) async fn store() -> Option<Store> {
    let url = database_url().await?;
    Some(Store::connect(&url).await.expect("connect store"))
}
