//! The issuer under clients that go away mid-request, against the real binary on SQLite and
//! PostgreSQL.
//!
//! A client that disconnects makes hyper drop the request's handler wherever it is, including
//! inside the database driver while it begins a transaction. Found by the benchmark (wrk
//! closes its connections with requests in flight): such a drop could return a connection to
//! the pool inside an open transaction, and every later login, refresh and admin write failed
//! (`database is locked`, or `attempted to call begin_with at non-zero transaction depth`)
//! until the issuer was restarted. Here many clients send API-key logins and admin deletions
//! and vanish at random points; afterwards logins, refreshes and admin writes must succeed
//! promptly.

use std::io::Write;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use portcullis_tests::issuer::*;
use portcullis_tests::on_both_backends;
use portcullis_tests::{client, tempdir};
use serde_json::json;

on_both_backends!(clients_vanishing_mid_login_do_not_wedge_writes);

/// Concurrent vanishing clients.
const CLIENTS: usize = 16;
/// How long they keep at it.
const STORM: Duration = Duration::from_secs(3);
/// A login after the storm must be answered within this.
const PROMPT: Duration = Duration::from_secs(2);

/// A tiny xorshift generator: the test crate has no `rand`, and any spread of delays will do.
struct Jitter(u64);

impl Jitter {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below.max(1)
    }
}

/// Closes `stream` with a reset (SO_LINGER 0) instead of a FIN.
fn reset(stream: TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket, a correctly sized option value.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    drop(stream);
}

/// One client: sends complete requests and disconnects after a random 0–4 ms, with a FIN or
/// a reset, never reading the answer. Returns how many requests it sent.
fn vanishing_client(port: u16, request: &str, seed: u64) -> usize {
    let mut jitter = Jitter(seed | 1);
    let started = Instant::now();
    let mut sent = 0;
    while started.elapsed() < STORM {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
            continue;
        };
        if stream.write_all(request.as_bytes()).is_err() {
            continue;
        }
        sent += 1;
        let wait = jitter.next(4_000);
        if wait > 200 {
            std::thread::sleep(Duration::from_micros(wait));
        }
        if jitter.next(2) == 0 {
            reset(stream);
        } else {
            drop(stream);
        }
    }
    sent
}

fn clients_vanishing_mid_login_do_not_wedge_writes(b: Backend) {
    let Some(db) = db_kind(b) else { return };
    let dir = tempdir();
    let iss = start_issuer(dir.path(), db, "");
    let created = iss.create_api_key(&json!({"subject": "svc-storm", "roles": ["service"]}));
    let key = created["api_key"].as_str().expect("api_key").to_string();
    // The key works before the storm.
    let r = iss.api_key_login(&key);
    assert_eq!(r.status, 200, "{}", r.text);

    // API-key logins (their sessions are written through the group commit on SQLite) and
    // admin deletions of a missing user (a transaction of their own).
    let login = format!(
        "POST /v1/auth/api-key HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
         Authorization: ApiKey {key}\r\nContent-Length: 0\r\n\r\n",
        port = iss.port
    );
    let delete = format!(
        "DELETE /admin/users/no-such-user HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
         Authorization: Bearer {token}\r\n\r\n",
        port = iss.admin_port,
        token = iss.admin_token
    );
    let threads: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (port, request) = if i % 2 == 0 {
                (iss.port, login.clone())
            } else {
                (iss.admin_port, delete.clone())
            };
            std::thread::spawn(move || {
                vanishing_client(port, &request, 0x9E37_79B9 * (i as u64 + 1))
            })
        })
        .collect();
    let sent: usize = threads
        .into_iter()
        .map(|t| t.join().expect("client thread"))
        .sum();
    assert!(sent > 100, "only {sent} requests sent during the storm");

    // Writes work, promptly, on every pooled connection: more calls than the pools hold.
    let http = client();
    for i in 0..24 {
        let started = Instant::now();
        let r = http
            .post(iss.url("/v1/auth/api-key"))
            .timeout(PROMPT)
            .json(&json!({ "api_key": key }))
            .send()
            .unwrap_or_else(|e| {
                panic!(
                    "login {i} after {sent} abandoned requests: no answer within {PROMPT:?} ({e})\n{}",
                    iss.proc.stderr_text()
                )
            });
        let status = r.status().as_u16();
        let text = r.text().unwrap_or_default();
        assert_eq!(
            status, 200,
            "login {i} after {sent} abandoned requests: {text}"
        );
        assert!(
            started.elapsed() < PROMPT,
            "login {i} took {:?}",
            started.elapsed()
        );
        let refresh = serde_json::from_str::<serde_json::Value>(&text).expect("json")
            ["refresh_token"]
            .as_str()
            .expect("refresh_token")
            .to_string();
        let r = http
            .post(iss.url("/v1/auth/refresh"))
            .timeout(PROMPT)
            .json(&json!({ "refresh_token": refresh }))
            .send()
            .expect("refresh answered in time");
        assert_eq!(r.status().as_u16(), 200, "refresh {i} after the storm");
    }
    // Writes outside a transaction too (admin-created users), and committed: a password
    // login, served by whichever pooled connection, finds each one.
    for i in 0..12 {
        let email = format!("after-storm-{i}@example.com");
        let r = iss.admin_post(
            "/admin/users",
            &json!({"email": email, "password": "correct horse battery staple"}),
        );
        assert_eq!(r.status, 201, "admin write {i} after the storm: {}", r.text);
        let r = iss.password_login(&email, "correct horse battery staple");
        assert_eq!(
            r.status, 200,
            "login of user {i} created after the storm: {}",
            r.text
        );
    }
}

/// `sqlite_synchronous`: `normal` runs (logins and refreshes work), anything but `full` or
/// `normal` is refused by `-t` with file, line and key.
#[test]
fn sqlite_synchronous_setting() {
    let dir = tempdir();
    let bad = write_issuer_config(
        dir.path(),
        &IssuerOptions {
            name: "bad".into(),
            ..IssuerOptions::new(DbKind::Sqlite).extra("sqlite_synchronous: sometimes\n")
        },
    );
    let (code, out) = check_issuer_config(&bad.path);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("bad.yaml:") && out.contains("sqlite_synchronous: use full or normal"),
        "{out}"
    );

    let iss = start_issuer(dir.path(), DbKind::Sqlite, "sqlite_synchronous: normal\n");
    let created = iss.create_api_key(&json!({"subject": "svc-normal"}));
    let r = iss.api_key_login(created["api_key"].as_str().expect("api_key"));
    assert_eq!(r.status, 200, "{}", r.text);
    let r = iss.refresh(&r.pair().refresh);
    assert_eq!(r.status, 200, "{}", r.text);
}
