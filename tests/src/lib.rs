//! Harness for end-to-end tests: start the real binaries on loopback, talk to them with real
//! clients (reqwest, raw sockets), and stop everything when a test ends — even on panic.
//!
//! The fakes, test keys, JWKS server and PostgreSQL harness come from `portcullis-testkit`
//! (shared with the gateway's and the issuer's unit tests) and are re-exported here under
//! their old paths.

pub mod fake_twilio;
pub mod issuer;

/// Test keys, token minting and the JWKS server ([`portcullis_testkit::jwt`] and
/// [`portcullis_testkit::jwks`]).
pub mod jwt {
    pub use portcullis_testkit::jwks::*;
    pub use portcullis_testkit::jwt::*;
}

pub use portcullis_testkit::{free_port, port_open, recording_upstream, smtp_sink, wait_for};

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use serde_json::Value;

/// Directory holding the workspace's built binaries (`make test` builds them first).
pub fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("PORTCULLIS_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("debug")
}

/// Path of one of the workspace binaries; panics with a hint when it was not built.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace --bins` (make test does)",
        p.display()
    );
    p
}

/// A child process that is stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Proc {
    /// The child.
    pub child: Child,
    /// Label for messages.
    pub name: String,
    /// Where its stdout goes.
    pub stdout: PathBuf,
    /// Where its stderr goes.
    pub stderr: PathBuf,
}

impl Proc {
    /// Starts `program` with `args`, output captured to files in `dir`.
    pub fn spawn(name: &str, program: &Path, args: &[&str], dir: &Path) -> Proc {
        let stdout = dir.join(format!("{name}.stdout"));
        let stderr = dir.join(format!("{name}.stderr"));
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).expect("stdout file"))
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", program.display()));
        Proc {
            child,
            name: name.to_string(),
            stdout,
            stderr,
        }
    }

    /// Process id.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends a signal.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid has no memory-safety concerns.
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits up to `timeout` for exit; returns the exit code if it exited.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status.code().unwrap_or(-1));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        None
    }

    /// Everything it wrote to stderr so far.
    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Everything it wrote to stdout so far.
    pub fn stdout_text(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.running() {
            self.signal(libc::SIGTERM);
            if self.wait_exit(Duration::from_secs(3)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

/// A demo upstream (the workspace's echo server).
pub struct Upstream {
    /// Its process.
    pub proc: Proc,
    /// TCP port, if it listens on one.
    pub port: u16,
}

/// Starts a demo upstream named `name` on a fresh TCP port, plus any `extra` arguments.
pub fn start_upstream(name: &str, dir: &Path, extra: &[&str]) -> Upstream {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec!["--name", name, "--listen", &listen];
    args.extend_from_slice(extra);
    let proc = Proc::spawn(
        &format!("upstream-{name}"),
        &bin("portcullis-demo-upstream"),
        &args,
        dir,
    );
    assert!(
        wait_for(Duration::from_secs(10), || port_open(port)),
        "upstream {name} did not start"
    );
    Upstream { proc, port }
}

/// A running gateway with its config directory.
pub struct Gateway {
    /// Its process.
    pub proc: Proc,
    /// Main HTTP port.
    pub port: u16,
    /// Admin port.
    pub admin_port: u16,
    /// The main config file.
    pub config: PathBuf,
}

impl Gateway {
    /// `http://127.0.0.1:port`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Admin URL.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin_port)
    }

    /// The admin `/metrics` page.
    pub fn metrics(&self) -> String {
        String::from_utf8_lossy(&raw_get(self.admin_port, "/metrics", &[]).body).into_owned()
    }

    /// The admin `/readyz` answer: status and JSON body (`Value::Null` when not JSON).
    pub fn readyz(&self) -> (u16, Value) {
        let r = raw_get(self.admin_port, "/readyz", &[]);
        (
            r.status,
            serde_json::from_slice(&r.body).unwrap_or(Value::Null),
        )
    }

    /// Waits up to `timeout` until `/readyz` answers 200; panics with its last answer and the
    /// gateway's stderr otherwise.
    #[track_caller]
    pub fn wait_ready(&self, timeout: Duration) {
        if !wait_for(timeout, || self.readyz().0 == 200) {
            let (status, body) = self.readyz();
            panic!(
                "gateway not ready after {timeout:?}: /readyz {status} {body}\n{}",
                self.proc.stderr_text()
            );
        }
    }
}

/// The value of the series `name` whose labels include all of `labels` on a Prometheus text
/// page (e.g. [`Gateway::metrics`]), if present.
pub fn metric_value(page: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, label_text) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            if series_name != name {
                return None;
            }
            let pairs: Vec<(&str, &str)> = label_text
                .split(',')
                .filter(|p| !p.is_empty())
                .filter_map(|p| p.split_once('='))
                .map(|(k, v)| (k.trim(), v.trim().trim_matches('"')))
                .collect();
            labels
                .iter()
                .all(|want| pairs.contains(want))
                .then(|| value.trim().parse::<f64>().ok())
                .flatten()
        })
}

/// The `server:` block every test config uses (pid and upgrade socket inside `dir`).
pub fn server_block(dir: &Path) -> String {
    format!(
        "server:\n  threads: 2\n  pid_file: {d}/gw.pid\n  upgrade_sock: {d}/gw-upgrade.sock\n  grace_period: 1s\n  graceful_shutdown_timeout: 1s\n",
        d = dir.display()
    )
}

/// Writes `gateway.yaml` = server block + listener on `port` + admin on `admin_port` + `body`,
/// starts the gateway and waits for its admin `/healthz`.
pub fn start_gateway(dir: &Path, body: &str) -> Gateway {
    start_gateway_with(dir, body, &[])
}

/// Like [`start_gateway`] with extra command-line arguments.
pub fn start_gateway_with(dir: &Path, body: &str, args: &[&str]) -> Gateway {
    start_gateway_full(dir, "", body, args)
}

/// Like [`start_gateway`], with `server_extra` (YAML lines indented by two spaces) added to the
/// `server:` block, e.g. `"  limits:\n    max_head_size: 4k\n"`.
pub fn start_gateway_server(dir: &Path, server_extra: &str, body: &str) -> Gateway {
    start_gateway_full(dir, server_extra, body, &[])
}

fn start_gateway_full(dir: &Path, server_extra: &str, body: &str, args: &[&str]) -> Gateway {
    let port = free_port();
    let admin_port = free_port();
    let config = dir.join("gateway.yaml");
    let text = format!(
        "{}{server_extra}listeners:\n  - address: 127.0.0.1:{port}\nadmin:\n  address: 127.0.0.1:{admin_port}\n{body}",
        server_block(dir)
    );
    std::fs::write(&config, text).expect("write config");
    let config_arg = config.display().to_string();
    let mut all = vec!["-c", config_arg.as_str()];
    all.extend_from_slice(args);
    let mut proc = Proc::spawn("gateway", &bin("portcullis-gateway"), &all, dir);
    let ok = wait_for(Duration::from_secs(15), || {
        port_open(port) && port_open(admin_port)
    });
    if !ok {
        let _ = proc.wait_exit(Duration::from_millis(100));
        panic!("gateway did not start:\n{}", proc.stderr_text());
    }
    Gateway {
        proc,
        port,
        admin_port,
        config,
    }
}

/// Collects the mismatches of a test's many cases, so one run reports all of them.
#[derive(Default)]
pub struct Failures(pub Vec<String>);

impl Failures {
    /// Records `what` under `case` unless `ok`.
    pub fn check(&mut self, ok: bool, case: &str, what: String) {
        if !ok {
            self.0.push(format!("[{case}] {what}"));
        }
    }

    /// Panics listing every recorded failure.
    pub fn assert_none(self) {
        assert!(
            self.0.is_empty(),
            "{} failure(s):\n\n{}",
            self.0.len(),
            self.0.join("\n\n")
        );
    }
}

/// Runs `portcullis-gateway -t -c file`; returns (exit code, stdout + stderr).
pub fn check_config(file: &Path) -> (i32, String) {
    let out = Command::new(bin("portcullis-gateway"))
        .args(["-t", "-c"])
        .arg(file)
        .output()
        .expect("run -t");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// A blocking HTTP client that never uses a proxy from the environment.
pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
}

/// A parsed HTTP/1.1 response from [`raw_request`].
#[derive(Debug)]
pub struct RawResponse {
    /// Status code.
    pub status: u16,
    /// Header lines (lower-case names).
    pub headers: Vec<(String, String)>,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl RawResponse {
    /// First value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// Sends bytes exactly as given (no client-side path cleaning) and reads one response.
pub fn raw_request(stream: &mut (impl Read + Write), request: &str) -> RawResponse {
    stream.write_all(request.as_bytes()).expect("write request");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n = stream.read(&mut chunk).unwrap_or(0);
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(resp) = parse_response(&buf) {
            return resp;
        }
        assert!(Instant::now() < deadline, "response timed out");
    }
    parse_response(&buf)
        .unwrap_or_else(|| panic!("incomplete response: {}", String::from_utf8_lossy(&buf)))
}

/// Sends a raw request over a new TCP connection with `Connection: close` semantics.
pub fn raw_get(port: u16, target: &str, extra_headers: &[(&str, &str)]) -> RawResponse {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).ok();
    let mut req =
        format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    for (n, v) in extra_headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    raw_request(&mut s, &req)
}

fn parse_response(buf: &[u8]) -> Option<RawResponse> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let body_start = end + 4;
    let len = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok());
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        decode_chunked(&buf[body_start..])?
    } else {
        let len = len.unwrap_or(0);
        if buf.len() < body_start + len {
            return None;
        }
        buf[body_start..body_start + len].to_vec()
    };
    Some(RawResponse {
        status,
        headers,
        body,
    })
}

fn decode_chunked(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n")?;
        let size = usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16).ok()?;
        b = &b[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        if b.len() < size + 2 {
            return None;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

/// A self-signed certificate for `localhost` / 127.0.0.1 written as PEM files in `dir`.
pub struct TestCert {
    /// Certificate path.
    pub cert: PathBuf,
    /// Key path.
    pub key: PathBuf,
    /// Certificate PEM text.
    pub pem: String,
}

/// Generates a [`TestCert`] named `name` in `dir`.
pub fn test_cert(dir: &Path, name: &str) -> TestCert {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("rcgen");
    let cert = dir.join(format!("{name}-cert.pem"));
    let key = dir.join(format!("{name}-key.pem"));
    let pem = c.cert.pem();
    std::fs::write(&cert, &pem).expect("write cert");
    std::fs::write(&key, c.key_pair.serialize_pem()).expect("write key");
    TestCert { cert, key, pem }
}

/// The JSON echo of the demo upstream for a GET through the gateway.
pub fn echo(url: &str) -> Value {
    let resp = client().get(url).send().expect("request");
    assert_eq!(resp.status().as_u16(), 200, "GET {url}");
    resp.json().expect("json echo")
}

/// A temporary directory for one test.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("portcullis-e2e-")
        .tempdir()
        .expect("tempdir")
}

/// A copy of the shipped `config/gateway.yaml` and `conf.d/` under `dir` (same layout, so
/// its relative paths resolve inside `dir`), with the revocation feed token the issuer would
/// have written to `data/secrets/feed-token`; returns the copied `config/gateway.yaml`.
pub fn shipped_gateway_config(dir: &Path) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for sub in ["config", "conf.d", "data/secrets"] {
        std::fs::create_dir_all(dir.join(sub)).expect("mkdir");
    }
    std::fs::copy(
        root.join("config/gateway.yaml"),
        dir.join("config/gateway.yaml"),
    )
    .expect("copy gateway.yaml");
    for entry in std::fs::read_dir(root.join("conf.d")).expect("conf.d") {
        let path = entry.expect("conf.d entry").path();
        if let Some(name) = path.file_name() {
            std::fs::copy(&path, dir.join("conf.d").join(name)).expect("copy conf.d");
        }
    }
    std::fs::write(
        dir.join("data/secrets/feed-token"),
        "shipped-test-feed-token\n",
    )
    .expect("feed token");
    dir.join("config/gateway.yaml")
}
