//! A throwaway PostgreSQL for tests: one cluster per test process (initdb costs a second or
//! two), a fresh database per test ([`Postgres::database_url`] runs `createdb`).
//!
//! The cluster lives in a temporary directory, listens on a free loopback port (retried when
//! the port is taken between probing and binding), trusts local connections as `postgres`,
//! runs without fsync, and is stopped when the process exits. The binaries are looked up on
//! `PATH` (following a symlink into the real bin directory), then in the usual package
//! locations (the newest `/usr/lib/postgresql/<v>/bin`, `/usr/pgsql-<v>/bin`,
//! `/usr/local/pgsql/bin`). initdb and pg_ctl refuse to run as root, so when the tests run as
//! root the cluster belongs to the `postgres` user, or `nobody`.
//!
//! Without PostgreSQL binaries every entry point returns `None` (the caller skips, e.g. with
//! `println!("SKIPPED: no PostgreSQL")`); installed but unable to start is a panic.
//!
//! ```text
//! let Some(url) = Postgres::database_url() else { return };        // blocking tests
//! let Some(url) = Postgres::database_url_async().await else { return }; // inside tokio
//! ```

use std::env;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, OnceLock};

/// The running cluster, taken and dropped (stopped) at process exit.
static CLUSTER: Mutex<Option<Cluster>> = Mutex::new(None);

/// Outcome of the one start attempt: `Ok(None)` when PostgreSQL is not installed.
static STARTED: OnceLock<Result<Option<Started>, String>> = OnceLock::new();

/// What callers need of the running cluster (the cluster itself stays in [`CLUSTER`]).
#[derive(Clone)]
struct Started {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    run_as: Option<(u32, u32)>,
}

struct Cluster {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    /// uid/gid to run the binaries as, when we are root.
    run_as: Option<(u32, u32)>,
}

/// `bin/program` run in `dir` (as `run_as` when given), without the caller's libpq settings.
fn pg_command(bin: &Path, dir: &Path, run_as: Option<(u32, u32)>, program: &str) -> Command {
    let mut cmd = Command::new(bin.join(program));
    // A working directory and HOME the unprivileged user can read.
    cmd.current_dir(dir)
        .env("HOME", dir)
        .env_remove("PGDATA")
        .env_remove("PGPORT")
        .env_remove("PGHOST")
        .env_remove("PGUSER")
        .env_remove("PGDATABASE")
        .env_remove("PGPASSWORD");
    if let Some((uid, gid)) = run_as {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

impl Cluster {
    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn command(&self, program: &str) -> Command {
        pg_command(&self.bin, self.dir.path(), self.run_as, program)
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
            let port = crate::free_port();
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

/// When running as root: the uid/gid of `postgres` or else `nobody` (65534 if neither is
/// listed). `None` when not root.
fn unprivileged_user() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    Some(
        passwd_ids(&passwd, "postgres")
            .or_else(|| passwd_ids(&passwd, "nobody"))
            .unwrap_or((65534, 65534)),
    )
}

/// uid and gid of `name` in an `/etc/passwd` text.
fn passwd_ids(passwd: &str, name: &str) -> Option<(u32, u32)> {
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        match fields.as_slice() {
            [user, _, uid, gid, ..] if *user == name => {
                Some((uid.parse().ok()?, gid.parse().ok()?))
            }
            _ => None,
        }
    })
}

/// The binaries the harness runs.
const PROGRAMS: [&str; 3] = ["initdb", "pg_ctl", "createdb"];

fn usable(dir: &Path) -> bool {
    PROGRAMS.iter().all(|p| dir.join(p).is_file())
}

/// The directory holding `initdb`, `pg_ctl` and `createdb`: from `PATH`, else the newest of
/// the distribution locations (Debian keeps them out of `PATH`).
fn find_bin_dir() -> Option<PathBuf> {
    if let Some(path) = env::var_os("PATH") {
        for dir in env::split_paths(&path) {
            if dir.join("initdb").is_file() && dir.join("pg_ctl").is_file() {
                // /usr/local/bin/initdb may be a symlink into the real bin directory.
                let real = std::fs::canonicalize(dir.join("initdb"))
                    .ok()
                    .and_then(|p| p.parent().map(Path::to_path_buf))
                    .filter(|d| usable(d));
                if let Some(real) = real {
                    return Some(real);
                }
                if usable(&dir) {
                    return Some(dir);
                }
            }
        }
    }
    newest_bin_dir(&[("/usr/lib/postgresql", ""), ("/usr", "pgsql-")])
        .or_else(|| Some(PathBuf::from("/usr/local/pgsql/bin")).filter(|d| usable(d)))
}

/// The usable `<parent>/<prefix><version>/bin` with the highest version, over all `roots`.
fn newest_bin_dir(roots: &[(&str, &str)]) -> Option<PathBuf> {
    let mut candidates: Vec<(Vec<u32>, PathBuf)> = Vec::new();
    for (parent, prefix) in roots {
        let Ok(entries) = std::fs::read_dir(parent) else {
            continue;
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
    }
    candidates.sort();
    candidates.pop().map(|(_, bin)| bin)
}

extern "C" fn stop_at_exit() {
    if let Ok(mut cluster) = CLUSTER.lock() {
        drop(cluster.take());
    }
}

/// The throwaway PostgreSQL cluster shared by the tests of one process.
pub struct Postgres;

impl Postgres {
    fn started() -> Option<Started> {
        let started = STARTED.get_or_init(|| {
            let Some(bin) = find_bin_dir() else {
                return Ok(None);
            };
            let cluster = Cluster::start(bin)?;
            let started = Started {
                bin: cluster.bin.clone(),
                dir: cluster.dir.path().to_path_buf(),
                port: cluster.port,
                run_as: cluster.run_as,
            };
            if let Ok(mut slot) = CLUSTER.lock() {
                *slot = Some(cluster);
            }
            // SAFETY: registers a plain function; it only touches the mutex-guarded cluster.
            unsafe {
                libc::atexit(stop_at_exit);
            }
            Ok(Some(started))
        });
        match started {
            Ok(s) => s.clone(),
            // Installed but broken is a failure, not a skip.
            Err(e) => panic!("PostgreSQL is installed but the test cluster did not start: {e}"),
        }
    }

    /// Port of the shared cluster (started on first use), or `None` without PostgreSQL.
    pub fn port() -> Option<u16> {
        Self::started().map(|s| s.port)
    }

    /// URL of a fresh, empty database in the shared cluster (`postgres://postgres@127.0.0.1:
    /// <port>/t_<random>`), or `None` without PostgreSQL. Blocks: the first call starts the
    /// cluster.
    pub fn database_url() -> Option<String> {
        let s = Self::started()?;
        let name = format!("t_{}", crate::hex(&crate::jwt::random_bytes(12)));
        let out = pg_command(&s.bin, &s.dir, s.run_as, "createdb")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &s.port.to_string(),
                "-U",
                "postgres",
            ])
            .arg(&name)
            .output()
            .expect("run createdb");
        check(&out, "createdb").unwrap_or_else(|e| panic!("{e}"));
        Some(format!("postgres://postgres@127.0.0.1:{}/{name}", s.port))
    }

    /// [`Postgres::database_url`] for async tests: runs on tokio's blocking pool, so starting
    /// the cluster does not stall the runtime's workers.
    pub async fn database_url_async() -> Option<String> {
        tokio::task::spawn_blocking(Self::database_url)
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwd_lookup() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\n\
                      nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n\
                      postgres:x:105:111:PostgreSQL administrator:/var/lib/postgresql:/bin/bash\n";
        assert_eq!(passwd_ids(passwd, "postgres"), Some((105, 111)));
        assert_eq!(passwd_ids(passwd, "nobody"), Some((65534, 65534)));
        assert_eq!(passwd_ids(passwd, "post"), None);
        assert_eq!(passwd_ids("broken:x:abc:1:\n", "broken"), None);
        // SAFETY: geteuid has no preconditions and cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        assert_eq!(unprivileged_user().is_some(), root);
    }

    #[test]
    fn newest_version_wins() {
        let root = tempfile::tempdir().unwrap();
        for version in ["9.6", "15", "16.2", "broken"] {
            let bin = root.path().join(version).join("bin");
            std::fs::create_dir_all(&bin).unwrap();
            // "broken" lacks createdb.
            for p in PROGRAMS
                .iter()
                .filter(|p| version != "broken" || **p != "createdb")
            {
                std::fs::write(bin.join(p), "").unwrap();
            }
        }
        let parent = root.path().to_str().unwrap();
        assert_eq!(
            newest_bin_dir(&[(parent, "")]),
            Some(root.path().join("16.2/bin"))
        );
        assert_eq!(newest_bin_dir(&[(parent, "pgsql-")]), None);
        assert_eq!(newest_bin_dir(&[("/nonexistent-dir", "")]), None);
    }

    #[test]
    fn fresh_database_per_call() {
        let Some(a) = Postgres::database_url() else {
            println!("SKIPPED: no PostgreSQL");
            return;
        };
        let b = Postgres::database_url().expect("second database");
        assert_ne!(a, b);
        let port = Postgres::port().expect("port");
        assert!(
            a.starts_with(&format!("postgres://postgres@127.0.0.1:{port}/t_")),
            "{a}"
        );
        assert!(crate::port_open(port));
        // The database exists: creating it again is refused.
        let s = Postgres::started().unwrap();
        let name = a.rsplit('/').next().unwrap();
        let out = pg_command(&s.bin, &s.dir, s.run_as, "createdb")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-U",
                "postgres",
                name,
            ])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{name} already exists");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn async_variant() {
        let Some(url) = Postgres::database_url_async().await else {
            println!("SKIPPED: no PostgreSQL");
            return;
        };
        assert!(url.starts_with("postgres://postgres@127.0.0.1:"), "{url}");
    }
}
