//! Access log: one line per request, written by a dedicated thread so the request path
//! never blocks on disk or a slow stdout.

use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::time::Duration;

use serde_json::json;

use crate::config::LogFormat;

/// Everything one access log line says.
pub struct Entry<'a> {
    /// Client address (after trusted-proxy resolution).
    pub client: &'a str,
    /// Request method.
    pub method: &'a str,
    /// Request target as received.
    pub uri: &'a str,
    /// `HTTP/1.1`, `HTTP/2`.
    pub version: &'a str,
    /// Response status (0 if none was sent).
    pub status: u16,
    /// Response body bytes sent.
    pub bytes: usize,
    /// `Referer` header.
    pub referer: &'a str,
    /// `User-Agent` header.
    pub user_agent: &'a str,
    /// Matched route, `-` if none.
    pub route: &'a str,
    /// Backend used, `-` if none.
    pub upstream: &'a str,
    /// Whole request duration.
    pub duration: Duration,
    /// Request id.
    pub request_id: &'a str,
    /// Auth outcome (`public`, `anonymous`, `ok`, `denied`).
    pub auth: &'a str,
    /// Why auth failed, `-` otherwise.
    pub auth_reason: &'a str,
    /// Verified subject, `-` if none (never the token).
    pub subject: &'a str,
    /// The rate or concurrency limit that refused the request, `-` otherwise.
    pub limit: &'a str,
}

impl Entry<'_> {
    /// Renders the line in the chosen format.
    pub fn render(&self, format: LogFormat) -> String {
        let now = time::OffsetDateTime::now_utc();
        match format {
            LogFormat::Combined => {
                let ts = now
                    .format(time::macros::format_description!(
                        "[day]/[month repr:short]/[year]:[hour]:[minute]:[second] +0000"
                    ))
                    .unwrap_or_default();
                format!(
                    "{} - {} [{}] \"{} {} {}\" {} {} \"{}\" \"{}\" route={} upstream={} rt={:.3} auth={} reason={} rid={} limit={}",
                    self.client,
                    escape(self.subject),
                    ts,
                    self.method,
                    escape(self.uri),
                    self.version,
                    self.status,
                    self.bytes,
                    escape(self.referer),
                    escape(self.user_agent),
                    self.route,
                    self.upstream,
                    self.duration.as_secs_f64(),
                    self.auth,
                    self.auth_reason,
                    self.request_id,
                    self.limit
                )
            }
            LogFormat::Json => json!({
                "time": now.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
                "client": self.client,
                "method": self.method,
                "uri": self.uri,
                "protocol": self.version,
                "status": self.status,
                "bytes": self.bytes,
                "referer": self.referer,
                "user_agent": self.user_agent,
                "route": self.route,
                "upstream": self.upstream,
                "duration_ms": self.duration.as_secs_f64() * 1000.0,
                "auth": self.auth,
                "auth_reason": self.auth_reason,
                "subject": self.subject,
                "request_id": self.request_id,
                "limit": self.limit,
            })
            .to_string(),
        }
    }
}

/// Escapes quotes and control characters like nginx does in `combined`.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c)
            }
            c if c.is_control() => out.push_str(&format!("\\x{:02X}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

enum Msg {
    Line(String),
    Target(Option<PathBuf>),
}

/// Handle to the writer thread.
pub struct AccessLog {
    tx: SyncSender<Msg>,
}

/// Lines that may wait for the writer before new ones are dropped (and counted).
const QUEUE: usize = 65_536;

impl AccessLog {
    /// Starts the writer thread, writing to `path` (or stdout).
    pub fn start(path: Option<PathBuf>) -> std::io::Result<AccessLog> {
        let (tx, rx) = sync_channel(QUEUE);
        let out = open(&path)?;
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || writer(rx, out))?;
        Ok(AccessLog { tx })
    }

    /// Queues a line; returns false if it had to be dropped.
    pub fn write(&self, line: String) -> bool {
        !matches!(
            self.tx.try_send(Msg::Line(line)),
            Err(TrySendError::Full(_))
        )
    }

    /// Switches (or reopens, for log rotation) the target file.
    pub fn retarget(&self, path: Option<PathBuf>) {
        let _ = self.tx.send(Msg::Target(path));
    }
}

fn open(path: &Option<PathBuf>) -> std::io::Result<Box<dyn Write + Send>> {
    Ok(match path {
        None => Box::new(std::io::stdout()),
        Some(p) => Box::new(OpenOptions::new().create(true).append(true).open(p)?),
    })
}

fn writer(rx: Receiver<Msg>, out: Box<dyn Write + Send>) {
    let mut out = BufWriter::new(out);
    loop {
        // Flush when idle so lines show up promptly without a syscall per line under load.
        let msg = match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(m) => m,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                let _ = out.flush();
                continue;
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        };
        match msg {
            Msg::Line(l) => {
                let _ = out.write_all(l.as_bytes());
                let _ = out.write_all(b"\n");
            }
            Msg::Target(p) => match open(&p) {
                Ok(w) => {
                    let _ = out.flush();
                    out = BufWriter::new(w);
                }
                Err(e) => tracing::error!(
                    "access log: cannot open {:?}: {e}; keeping the previous target",
                    p
                ),
            },
        }
    }
    let _ = out.flush();
}
