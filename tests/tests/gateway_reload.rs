//! Live configuration changes end to end: SIGHUP reload under load, a rejected reload,
//! `--watch`, the graceful upgrade (`-u` + SIGQUIT) and the JSON access log.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis_tests::*;

/// Routes and upstreams every test here starts from: `/version` answers `version`,
/// `/svc/` proxies to upstream `target` (both `a` and `b` are always defined).
fn body(version: &str, target: &str, a: u16, b: u16) -> String {
    format!(
        "upstreams:
  a:
    backends: [\"127.0.0.1:{a}\"]
  b:
    backends: [\"127.0.0.1:{b}\"]
routes:
  - name: version
    match: {{path: {{exact: /version}}}}
    auth: public
    return: 200 \"{version}\"
  - name: svc
    match: {{path: {{prefix: /svc/}}}}
    auth: public
    upstream: {target}
"
    )
}

/// Replaces a file's content in one step (write a sibling, rename), as editors do, so a
/// reader never sees half a file.
fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("x")
    ));
    std::fs::write(&tmp, text).expect("write temp file");
    std::fs::rename(&tmp, path).expect("rename into place");
}

/// GET over a fresh connection with `Connection: close`; errors are returned, not panics.
fn try_get(port: u16, target: &str) -> Result<(u16, String), String> {
    let addr = ([127, 0, 0, 1], port).into();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    s.set_write_timeout(Some(Duration::from_secs(5))).ok();
    let req =
        format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)
        .map_err(|e| format!("read: {e} after {} bytes", buf.len()))?;
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no complete head in {:?}", String::from_utf8_lossy(&buf)))?;
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line: {head}"))?;
    let body = &buf[end + 4..];
    let len = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(n, _)| n.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok());
    if let Some(len) = len {
        if body.len() < len {
            return Err(format!("short body: {} of {len} bytes", body.len()));
        }
        return Ok((status, String::from_utf8_lossy(&body[..len]).into_owned()));
    }
    Ok((status, String::from_utf8_lossy(body).into_owned()))
}

/// The `server` of a demo upstream echo.
fn echo_server(body: &str) -> Option<String> {
    serde_json::from_str::<Value>(body).ok()?["server"]
        .as_str()
        .map(String::from)
}

/// The admin `/metrics` page.
fn metrics(gw: &Gateway) -> String {
    client()
        .get(gw.admin_url("/metrics"))
        .send()
        .and_then(|r| r.text())
        .unwrap_or_default()
}

/// Value of one sample (`name{labels}`) on a metrics page, if present.
fn sample(page: &str, series: &str) -> Option<f64> {
    page.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

const RELOAD_OK: &str = "portcullis_config_reloads_total{result=\"ok\"}";
const RELOAD_ERR: &str = "portcullis_config_reloads_total{result=\"error\"}";

/// `GET /version` body over a fresh connection (empty on any failure).
fn version(port: u16) -> String {
    match try_get(port, "/version") {
        Ok((200, b)) => b,
        _ => String::new(),
    }
}

#[test]
fn sighup_reload_under_load_loses_no_request() {
    let dir = tempdir();
    let a = start_upstream("a", dir.path(), &[]);
    let b = start_upstream("b", dir.path(), &[]);
    let gw = start_gateway(dir.path(), &body("v1", "a", a.port, b.port));
    assert_eq!(version(gw.port), "v1");

    let start = Instant::now();
    let run_for = Duration::from_millis(2500);
    let mut workers = Vec::new();
    for t in 0..4 {
        let (vurl, surl) = (gw.url("/version"), gw.url(&format!("/svc/t{t}")));
        workers.push(std::thread::spawn(move || {
            // One keep-alive client per thread: connections survive the reload.
            let c = client();
            let mut tally = Tally::default();
            while start.elapsed() < run_for {
                tally.check(&c, &vurl, |v| v == "v1", |v| v == "v2");
                tally.check(
                    &c,
                    &surl,
                    |body| echo_server(body).as_deref() == Some("a"),
                    |body| echo_server(body).as_deref() == Some("b"),
                );
            }
            tally
        }));
    }

    std::thread::sleep(Duration::from_millis(700));
    write_atomic(
        &gw.config,
        &std::fs::read_to_string(&gw.config).unwrap().replace(
            &body("v1", "a", a.port, b.port),
            &body("v2", "b", a.port, b.port),
        ),
    );
    gw.proc.signal(libc::SIGHUP);
    let reloaded = wait_for(Duration::from_secs(5), || version(gw.port) == "v2");
    assert!(
        reloaded,
        "the new route was not served after SIGHUP:\n{}",
        gw.proc.stderr_text()
    );

    let (mut total, mut old, mut all_failures, mut threads_saw_new) = (0, 0, Vec::new(), 0);
    for w in workers {
        let tally = w.join().expect("worker panicked");
        total += tally.ok;
        old += tally.old;
        all_failures.extend(tally.failures);
        // Both URLs switched: the fixed route and the proxied one.
        threads_saw_new += u32::from(tally.new_seen.len() == 2);
    }
    assert!(
        all_failures.is_empty(),
        "{} failed requests out of {}: {:?}",
        all_failures.len(),
        total as usize + all_failures.len(),
        &all_failures[..all_failures.len().min(10)]
    );
    eprintln!("reload under load: {total} requests, {old} before the reload");
    assert!(old > 0, "no request was served by the old config");
    assert!(
        total >= 100,
        "the load was too small to mean anything: {total} requests"
    );
    assert_eq!(
        threads_saw_new, 4,
        "every worker saw the old and then the new version of both routes"
    );

    // After the reload: the new route and the new upstream, and the reload was counted.
    assert_eq!(version(gw.port), "v2");
    assert_eq!(echo(&gw.url("/svc/after"))["server"], "b");
    let page = metrics(&gw);
    assert_eq!(sample(&page, RELOAD_OK), Some(1.0), "{page}");
    assert_ne!(sample(&page, RELOAD_ERR), Some(1.0));
}

/// What one load thread saw.
#[derive(Default)]
struct Tally {
    ok: u32,
    /// Answers of the old version.
    old: u32,
    failures: Vec<String>,
    /// URLs for which the new version was seen (after that, the old one is a failure).
    new_seen: std::collections::BTreeSet<String>,
}

impl Tally {
    /// One GET: a 200 with the old body (until the new one was seen) or the new body passes.
    fn check(
        &mut self,
        c: &reqwest::blocking::Client,
        url: &str,
        is_old: impl Fn(&str) -> bool,
        is_new: impl Fn(&str) -> bool,
    ) {
        let after = self.new_seen.contains(url);
        match c
            .get(url)
            .send()
            .and_then(|r| Ok((r.status().as_u16(), r.text()?)))
        {
            Ok((200, body)) if is_new(&body) => {
                self.new_seen.insert(url.to_string());
                self.ok += 1;
            }
            Ok((200, body)) if is_old(&body) && !after => {
                self.ok += 1;
                self.old += 1;
            }
            other => self.failures.push(format!(
                "{url} (new version seen before: {after}): {other:?}"
            )),
        }
    }
}

#[test]
fn rejected_reload_keeps_the_running_config() {
    let dir = tempdir();
    let a = start_upstream("a", dir.path(), &[]);
    let b = start_upstream("b", dir.path(), &[]);
    let mut gw = start_gateway(dir.path(), &body("v1", "a", a.port, b.port));
    let good = std::fs::read_to_string(&gw.config).unwrap();

    // Invalid YAML (a mapping inside a plain scalar) on a known line, in a change that must
    // not take effect.
    let broken = good.replace("return: 200 \"v1\"", "return: 200 \"v2\": oops");
    let bad_line = broken
        .lines()
        .position(|l| l.contains("oops"))
        .expect("edited line")
        + 1;
    write_atomic(&gw.config, &broken);
    gw.proc.signal(libc::SIGHUP);
    let counted = wait_for(Duration::from_secs(5), || {
        sample(&metrics(&gw), RELOAD_ERR) == Some(1.0)
    });
    let page = metrics(&gw);
    assert!(
        counted,
        "no failed reload counted:\n{page}\n{}",
        gw.proc.stderr_text()
    );
    assert!(
        page.contains("portcullis_config_reloads_total{result=\"error\"} 1"),
        "{page}"
    );
    assert_ne!(sample(&page, RELOAD_OK), Some(1.0), "{page}");

    // Still the old config, for fixed and proxied routes alike.
    assert_eq!(version(gw.port), "v1");
    assert_eq!(echo(&gw.url("/svc/x"))["server"], "a");
    assert!(gw.proc.running(), "the gateway must keep running");

    // The log names the file and the line.
    let at = format!("{}:{bad_line}:", gw.config.display());
    let logged = wait_for(Duration::from_secs(2), || {
        gw.proc.stderr_text().contains(&at)
    });
    let log = gw.proc.stderr_text();
    assert!(logged, "expected {at} in the gateway's stderr:\n{log}");
    let line = log.lines().find(|l| l.contains(&at)).unwrap();
    assert!(
        line.contains("ERROR") || line.to_ascii_lowercase().contains("error"),
        "{line}"
    );
    assert!(line.contains("reload"), "{line}");

    // Fixing the file and reloading again works.
    write_atomic(
        &gw.config,
        &good.replace(
            &body("v1", "a", a.port, b.port),
            &body("v2", "b", a.port, b.port),
        ),
    );
    gw.proc.signal(libc::SIGHUP);
    assert!(
        wait_for(Duration::from_secs(5), || version(gw.port) == "v2"),
        "{}",
        gw.proc.stderr_text()
    );
    assert_eq!(echo(&gw.url("/svc/x"))["server"], "b");
    let page = metrics(&gw);
    assert_eq!(sample(&page, RELOAD_OK), Some(1.0), "{page}");
    assert_eq!(sample(&page, RELOAD_ERR), Some(1.0), "{page}");
}

#[test]
fn watch_reloads_when_a_conf_file_changes() {
    let dir = tempdir();
    let confd = dir.path().join("conf.d");
    std::fs::create_dir(&confd).unwrap();
    let route = |name: &str, path: &str, text: &str| {
        format!("routes:\n  - name: {name}\n    match: {{path: {{exact: {path}}}}}\n    auth: public\n    return: 200 \"{text}\"\n")
    };
    let routes_file = confd.join("10-routes.yaml");
    std::fs::write(&routes_file, route("version", "/version", "v1")).unwrap();
    let gw = start_gateway_with(dir.path(), "include: [\"conf.d/*.yaml\"]\n", &["--watch"]);
    assert_eq!(version(gw.port), "v1");

    // Editing an included file is picked up without any signal.
    write_atomic(&routes_file, &route("version", "/version", "v2-watched"));
    let t0 = Instant::now();
    let seen = wait_for(Duration::from_secs(5), || version(gw.port) == "v2-watched");
    let took = t0.elapsed();
    assert!(
        seen,
        "--watch did not reload the edited file:\n{}",
        gw.proc.stderr_text()
    );
    assert!(took <= Duration::from_secs(3), "--watch took {took:?}");

    // A new file in the included directory is picked up too.
    std::fs::write(confd.join(".20-new.tmp"), route("added", "/added", "added")).unwrap();
    std::fs::rename(confd.join(".20-new.tmp"), confd.join("20-new.yaml")).unwrap();
    let t0 = Instant::now();
    let seen = wait_for(
        Duration::from_secs(5),
        || matches!(try_get(gw.port, "/added"), Ok((200, b)) if b == "added"),
    );
    let took = t0.elapsed();
    assert!(
        seen,
        "--watch did not pick up a new conf.d file:\n{}",
        gw.proc.stderr_text()
    );
    assert!(took <= Duration::from_secs(3), "--watch took {took:?}");
    assert_eq!(version(gw.port), "v2-watched");
    assert_eq!(sample(&metrics(&gw), RELOAD_OK), Some(2.0));
}

#[test]
fn graceful_upgrade_hands_over_the_listeners_without_failures() {
    let dir = tempdir();
    let a = start_upstream("a", dir.path(), &[]);
    let b = start_upstream("b", dir.path(), &[]);
    let mut old = start_gateway(dir.path(), &body("v1", "a", a.port, b.port));
    let port = old.port;
    assert_eq!(version(port), "v1");

    // Load on fresh connections (`Connection: close`) for the whole switch.
    let stop = Arc::new(AtomicBool::new(false));
    let switched = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for t in 0..3 {
        let (stop, switched) = (stop.clone(), switched.clone());
        workers.push(std::thread::spawn(move || {
            let (mut ok, mut failures, mut versions) =
                (0u32, Vec::new(), std::collections::BTreeMap::new());
            while !stop.load(Ordering::Relaxed) {
                let old_gone = switched.load(Ordering::Relaxed);
                match try_get(port, "/version") {
                    Ok((200, v)) if v == "v2" || (v == "v1" && !old_gone) => {
                        ok += 1;
                        *versions.entry(v).or_insert(0u32) += 1;
                    }
                    other => failures.push(format!("/version (old exited: {old_gone}): {other:?}")),
                }
                match try_get(port, &format!("/svc/t{t}")) {
                    Ok((200, body)) if echo_server(&body).is_some() => ok += 1,
                    other => failures.push(format!("/svc (old exited: {old_gone}): {other:?}")),
                }
            }
            (ok, failures, versions)
        }));
    }
    std::thread::sleep(Duration::from_millis(300));

    // The new process reads the same file, where only the fixed answer changed, so we can
    // tell which process served a request.
    let text = std::fs::read_to_string(&old.config)
        .unwrap()
        .replace("\"v1\"", "\"v2\"");
    write_atomic(&old.config, &text);
    let sock = dir.path().join("gw-upgrade.sock");
    let _ = std::fs::remove_file(&sock);
    let config_arg = old.config.display().to_string();
    let mut new = Proc::spawn(
        "gateway-new",
        &bin("portcullis-gateway"),
        &["-c", &config_arg, "-u"],
        dir.path(),
    );
    let listening = wait_for(Duration::from_secs(10), || sock.exists());
    assert!(
        listening,
        "the new process never opened {}:\n{}",
        sock.display(),
        new.stderr_text()
    );

    old.proc.signal(libc::SIGQUIT);
    let took_over = wait_for(Duration::from_secs(10), || version(port) == "v2");
    assert!(
        took_over,
        "the new process never answered:\nnew:\n{}\nold:\n{}",
        new.stderr_text(),
        old.proc.stderr_text()
    );
    let code = old.proc.wait_exit(Duration::from_secs(15));
    assert!(
        code.is_some(),
        "the old process did not exit after SIGQUIT:\n{}",
        old.proc.stderr_text()
    );
    switched.store(true, Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(700));
    stop.store(true, Ordering::Relaxed);

    let (mut total, mut failures, mut versions) =
        (0u32, Vec::new(), std::collections::BTreeMap::new());
    for w in workers {
        let (ok, f, v) = w.join().expect("worker panicked");
        total += ok;
        failures.extend(f);
        for (k, n) in v {
            *versions.entry(k).or_insert(0) += n;
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} requests failed during the upgrade: {:?}\nnew:\n{}\nold:\n{}",
        failures.len(),
        total as usize + failures.len(),
        &failures[..failures.len().min(10)],
        new.stderr_text(),
        old.proc.stderr_text()
    );
    eprintln!("upgrade: {total} requests, answers by version {versions:?}");
    assert!(
        versions.contains_key("v1") && versions.contains_key("v2"),
        "{versions:?}"
    );
    assert_eq!(code, Some(0), "old process exit code");
    let old_log = old.proc.stderr_text();
    assert!(
        !old_log.contains("Unable to send listener sockets"),
        "{old_log}"
    );

    // Only the new process is left, on the same ports, admin included.
    assert!(
        new.running(),
        "the new process died:\n{}",
        new.stderr_text()
    );
    assert_eq!(version(port), "v2");
    assert_eq!(
        echo(&format!("http://127.0.0.1:{port}/svc/after"))["server"],
        "a"
    );
    let health = client()
        .get(old.admin_url("/healthz"))
        .send()
        .map(|r| r.status().as_u16());
    assert_eq!(health.ok(), Some(200), "admin listener after the upgrade");
}

#[test]
fn json_access_log_has_one_line_per_request() {
    let dir = tempdir();
    let up = start_upstream("app", dir.path(), &[]);
    let log = dir.path().join("access.log");
    let body = format!(
        "access_log: {{format: json, path: {}}}\nupstreams:\n  app:\n    backends: [\"127.0.0.1:{}\"]\nroutes:\n  - name: public\n    match: {{path: {{prefix: /public/}}}}\n    auth: public\n    upstream: app\n  - name: private\n    match: {{path: {{prefix: /private/}}}}\n    upstream: app\n",
        log.display(),
        up.port
    );
    let gw = start_gateway(dir.path(), &body);
    let resp = raw_get(gw.port, "/public/x?y=1", &[("User-Agent", "e2e-test")]);
    assert_eq!(resp.status, 200);
    let rid = resp.header("x-request-id").expect("request id").to_string();
    let denied = raw_get(gw.port, "/private/x", &[]);
    assert_eq!(denied.status, 401);
    let denied_rid = denied
        .header("x-request-id")
        .expect("request id")
        .to_string();

    let lines = || -> Vec<Value> {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}"))
            })
            .collect()
    };
    let flushed = wait_for(Duration::from_secs(3), || lines().len() >= 2);
    assert!(
        flushed,
        "access log lines not written: {:?}",
        std::fs::read_to_string(&log)
    );
    let all = lines();
    let find = |id: &str| {
        all.iter()
            .find(|l| l["request_id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("no line for {id}: {all:?}"))
    };

    let l = find(&rid);
    assert_eq!(l["route"], "public");
    assert_eq!(l["status"], 200);
    assert_eq!(l["upstream"], format!("127.0.0.1:{}", up.port));
    assert_eq!(l["method"], "GET");
    assert_eq!(l["uri"], "/public/x?y=1");
    assert_eq!(l["user_agent"], "e2e-test");
    let ms = l["duration_ms"].as_f64().expect("duration_ms is a number");
    assert!((0.0..20_000.0).contains(&ms), "duration_ms {ms}");

    let l = find(&denied_rid);
    assert_eq!(l["route"], "private");
    assert_eq!(l["status"], 401);
    assert_eq!(l["upstream"], "-");
    assert!(l["duration_ms"].is_number());
}
