//! The whole stack: issuer + gateway + demo upstream, as `make run` wires them. A user logs
//! in through the gateway, calls protected routes, refreshes, logs out; an API key works for
//! machines; the gateway verifies the issuer's tokens against its JWKS.

use std::time::Duration;

use portcullis_tests::*;
use serde_json::{json, Value};

struct Stack {
    _issuer: Proc,
    _upstream: Upstream,
    gw: Gateway,
    issuer_admin: u16,
    admin_token: String,
}

fn start(dir: &std::path::Path) -> Stack {
    let ip = free_port();
    let ap = free_port();
    let secrets = dir.join("secrets");
    std::fs::write(
        dir.join("issuer.yaml"),
        format!(
            "listen: 127.0.0.1:{ip}\nadmin_listen: 127.0.0.1:{ap}\ndatabase_url: sqlite://{db}\nissuer: http://127.0.0.1:{ip}\naudiences: [demo]\npassword: {{memory_kib: 1024, iterations: 1}}\nsecrets: {{dir: {s}}}\n",
            db = dir.join("issuer.db").display(),
            s = secrets.display()
        ),
    )
    .unwrap();
    let cfg = dir.join("issuer.yaml");
    let issuer = Proc::spawn(
        "issuer",
        &bin("portcullis-issuer"),
        &["-c", cfg.to_str().unwrap()],
        dir,
    );
    assert!(
        wait_for(Duration::from_secs(15), || port_open(ip) && port_open(ap)),
        "issuer did not start"
    );
    let admin_token = std::fs::read_to_string(secrets.join("admin-token"))
        .unwrap()
        .trim()
        .to_string();
    let upstream = start_upstream("demo", dir, &[]);
    let body = format!(
        "issuers:\n  - name: portcullis\n    issuer: http://127.0.0.1:{ip}\n    jwks_url: http://127.0.0.1:{ip}/.well-known/jwks.json\n    audiences: [demo]\nupstreams:\n  demo:\n    backends: [\"127.0.0.1:{up}\"]\n  issuer:\n    backends: [\"127.0.0.1:{ip}\"]\nroutes:\n  - name: auth\n    match: {{path: {{prefix: /auth/}}}}\n    auth: public\n    upstream: issuer\n    strip_prefix: /auth\n  - name: api\n    match: {{path: {{prefix: /api/}}}}\n    upstream: demo\n  - name: admin\n    match: {{path: {{prefix: /admin/}}}}\n    roles: [admin]\n    upstream: demo\n",
        up = upstream.port
    );
    let gw = start_gateway(dir, &body);
    assert!(
        wait_for(Duration::from_secs(15), || client()
            .get(gw.admin_url("/readyz"))
            .send()
            .map(|r| r.status().as_u16() == 200)
            .unwrap_or(false)),
        "gateway never got the issuer's keys"
    );
    Stack {
        _issuer: issuer,
        _upstream: upstream,
        gw,
        issuer_admin: ap,
        admin_token,
    }
}

fn post(url: &str, body: &Value, bearer: Option<&str>) -> (u16, Value) {
    let mut req = client().post(url).json(body);
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    let resp = req.send().expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().unwrap_or(Value::Null))
}

fn get(url: &str, bearer: Option<&str>) -> (u16, Value) {
    let mut req = client().get(url);
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    let resp = req.send().expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().unwrap_or(Value::Null))
}

#[test]
fn login_through_the_gateway_then_protected_routes_refresh_and_logout() {
    let dir = tempdir();
    let s = start(dir.path());
    let admin = format!("http://127.0.0.1:{}", s.issuer_admin);
    let (st, user) = post(
        &format!("{admin}/admin/users"),
        &json!({"email": "ada@example.com", "password": "correct horse battery", "roles": []}),
        Some(&s.admin_token),
    );
    assert_eq!(st, 201, "{user}");
    let (st, boss) = post(
        &format!("{admin}/admin/users"),
        &json!({"email": "boss@example.com", "password": "another long secret", "roles": ["admin"]}),
        Some(&s.admin_token),
    );
    assert_eq!(st, 201, "{boss}");

    let (st, pair) = post(
        &s.gw.url("/auth/v1/auth/password"),
        &json!({"email": "ada@example.com", "password": "correct horse battery"}),
        None,
    );
    assert_eq!(st, 200, "{pair}");
    let access = pair["access_token"].as_str().unwrap().to_string();
    let refresh = pair["refresh_token"].as_str().unwrap().to_string();

    let (st, echo) = get(&s.gw.url("/api/orders"), Some(&access));
    assert_eq!(st, 200, "{echo}");
    assert_eq!(echo["headers"]["x-auth-subject"], user["id"]);
    assert_eq!(echo["headers"]["x-auth-method"], "pwd");
    assert_eq!(get(&s.gw.url("/api/orders"), None).0, 401);
    assert_eq!(get(&s.gw.url("/admin/panel"), Some(&access)).0, 403);
    let (_, boss_pair) = post(
        &s.gw.url("/auth/v1/auth/password"),
        &json!({"email": "boss@example.com", "password": "another long secret"}),
        None,
    );
    assert_eq!(
        get(
            &s.gw.url("/admin/panel"),
            boss_pair["access_token"].as_str()
        )
        .0,
        200
    );

    // A refresh token is not an access token.
    assert_eq!(get(&s.gw.url("/api/orders"), Some(&refresh)).0, 401);

    let (st, pair2) = post(
        &s.gw.url("/auth/v1/auth/refresh"),
        &json!({"refresh_token": refresh}),
        None,
    );
    assert_eq!(st, 200, "{pair2}");
    let access2 = pair2["access_token"].as_str().unwrap().to_string();
    assert_ne!(pair2["refresh_token"], json!(refresh), "rotated");
    assert_eq!(get(&s.gw.url("/api/orders"), Some(&access2)).0, 200);

    let resp = client()
        .post(s.gw.url("/auth/v1/auth/logout"))
        .bearer_auth(&access2)
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    let (st, err) = post(
        &s.gw.url("/auth/v1/auth/refresh"),
        &json!({"refresh_token": pair2["refresh_token"]}),
        None,
    );
    assert_eq!(st, 401, "{err}");
    assert_eq!(err["error"], "invalid_grant");
}

#[test]
fn api_keys_give_machines_tokens_the_gateway_accepts() {
    let dir = tempdir();
    let s = start(dir.path());
    let admin = format!("http://127.0.0.1:{}", s.issuer_admin);
    let (st, key) = post(
        &format!("{admin}/admin/api-keys"),
        &json!({"subject": "billing-worker", "scopes": ["orders:read"], "roles": ["service"]}),
        Some(&s.admin_token),
    );
    assert_eq!(st, 201, "{key}");
    let secret = key["api_key"].as_str().unwrap();
    let resp = client()
        .post(s.gw.url("/auth/v1/auth/api-key"))
        .header("Authorization", format!("ApiKey {secret}"))
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let pair: Value = resp.json().unwrap();
    let (st, echo) = get(&s.gw.url("/api/x"), pair["access_token"].as_str());
    assert_eq!(st, 200);
    assert_eq!(echo["headers"]["x-auth-subject"], "billing-worker");
    assert_eq!(echo["headers"]["x-auth-scopes"], "orders:read");
    assert_eq!(echo["headers"]["x-auth-roles"], "service");
    assert_eq!(echo["headers"]["x-auth-method"], "key");
}

/// `promtool check metrics` on a metrics page (Prometheus's own linter: names, types, help,
/// counters ending in `_total`); `None` when promtool is not installed (`make test` installs
/// it).
fn promtool(page: &str) -> Option<(bool, String)> {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(page.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some((out.status.success(), text))
}

/// The `# TYPE` of every metric family on a page.
fn types(page: &str) -> Vec<(String, String)> {
    page.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(n, t)| (n.to_string(), t.to_string()))
        .collect()
}

/// Both services' metrics pass promtool and show their counters, typed counter, before any
/// event happened (a series that appears on its first event hides that event from `rate()`).
#[test]
fn metrics_are_well_formed_from_the_start() {
    let dir = tempdir();
    let s = start(dir.path());
    let page = |url: String, token: Option<&str>| {
        let mut req = client().get(url);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = req.send().expect("metrics");
        assert_eq!(r.status().as_u16(), 200);
        r.text().expect("metrics text")
    };
    let gateway = page(s.gw.admin_url("/metrics"), None);
    let issuer = page(
        format!("http://127.0.0.1:{}/metrics", s.issuer_admin),
        Some(&s.admin_token),
    );
    let gateway_types = types(&gateway);
    let issuer_types = types(&issuer);
    for (name, want) in [
        ("portcullis_config_reloads_total", "counter"),
        ("portcullis_jwks_fetches_total", "counter"),
    ] {
        assert!(
            gateway_types.iter().any(|(n, t)| n == name && t == want),
            "gateway: no {want} {name}:\n{gateway}"
        );
    }
    for name in [
        "portcullis_issuer_logins_total",
        "portcullis_issuer_refreshes_total",
        "portcullis_issuer_emails_total",
    ] {
        assert!(
            issuer_types
                .iter()
                .any(|(n, t)| n == name && t == "counter"),
            "issuer: no counter {name}:\n{issuer}"
        );
    }
    assert!(
        issuer.contains("portcullis_issuer_logins_total{method=\"pwd\",result=\"denied\"} 0"),
        "{issuer}"
    );
    // Answers are counted (the first scrape was one).
    let again = page(
        format!("http://127.0.0.1:{}/metrics", s.issuer_admin),
        Some(&s.admin_token),
    );
    assert!(
        again
            .lines()
            .any(|l| l.starts_with("portcullis_issuer_requests_total{status=\"200\"}")),
        "{again}"
    );
    for (service, page, types) in [
        ("gateway", &gateway, &gateway_types),
        ("issuer", &issuer, &issuer_types),
    ] {
        for (name, t) in types {
            assert!(
                !name.ends_with("_total") || t == "counter",
                "{service}: {name} is typed {t}"
            );
        }
        match promtool(page) {
            Some((ok, text)) => assert!(ok, "{service}: promtool check metrics:\n{text}"),
            None => println!("SKIPPED promtool for the {service}: not installed"),
        }
    }
}
