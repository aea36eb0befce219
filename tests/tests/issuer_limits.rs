//! End-to-end tests of the issuer's limits on every endpoint that creates, sends or guesses
//! (issue 12): anonymous sign-in, sign-up, confirmation resend, every mail, link submissions,
//! failed refreshes, the OAuth token endpoint, introspection and revocation per client, and
//! API-key failures; each scenario on SQLite and on PostgreSQL, against the real binary.
//!
//! Clients are told apart by their real source address (127.0.0.x: the whole block is
//! loopback), not by a forwarding header, so the tests hold whatever `trusted_proxies` says. Small
//! budgets come from each test's `limits:` section; one scenario waits for a real window
//! boundary (20 s windows) to show that a burst straddling it is still limited.

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use portcullis_tests::issuer::*;
use portcullis_tests::on_both_backends;
use portcullis_tests::smtp_sink::{SinkOptions, SmtpSink};
use portcullis_tests::{tempdir, wait_for};
use serde_json::{json, Value};

on_both_backends!(
    anonymous_per_ip_and_global,
    signup_per_ip_and_global,
    mail_ceiling,
    confirm_resend_per_account_and_ip,
    link_submissions_per_ip,
    failed_refreshes_per_ip,
    token_endpoint_per_ip,
    api_key_failures_per_ip,
    introspection_and_revocation_per_client,
    burst_straddling_a_window_boundary,
);

const PW: &str = "correct horse battery staple";
const A: &str = "127.0.0.11";
const B: &str = "127.0.0.12";
const C: &str = "127.0.0.13";

/// A client whose connections come from `ip` (a loopback address).
fn from(ip: &str) -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .no_proxy()
        .local_address(ip.parse::<IpAddr>().expect("an address"))
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
}

fn start(b: Backend, dir: &std::path::Path, yaml: &str) -> Option<IssuerProc> {
    let db = db_kind(b)?;
    Some(start_issuer(dir, db, yaml))
}

/// The `email:` section for the SMTP sink on `port`.
fn email_yaml(port: u16) -> String {
    format!(
        "email:\n  enabled: true\n  mailer: smtp\n  from: no-reply@portcullis.test\n  \
         confirm_url: \"https://app.test/confirm?token={{token}}\"\n  \
         reset_url: \"https://app.test/reset?token={{token}}\"\n  \
         smtp: {{host: 127.0.0.1, port: {port}, tls: none, timeout: 3s}}\n"
    )
}

/// Asserts a 429 with the JSON error body and a `Retry-After` of 1 second to two `window`s
/// (the sliding estimate spreads a window's hits evenly over it, so a budget spent early in a
/// window is still partly counted during the next); returns it.
#[track_caller]
fn assert_limited(r: &Resp, window: i64) -> i64 {
    r.assert_error(429, Some("too_many_requests"));
    let retry: i64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("429 without an integer Retry-After: {:?}", r.headers));
    assert!(
        (1..=2 * window).contains(&retry),
        "Retry-After {retry} not in 1..={}",
        2 * window
    );
    retry
}

fn anonymous(iss: &IssuerProc, ip: &str) -> Resp {
    send(from(ip).post(iss.url("/v1/auth/anonymous")))
}

fn signup(iss: &IssuerProc, ip: &str, email: &str, password: &str) -> Resp {
    send(
        from(ip)
            .post(iss.url("/v1/users"))
            .json(&json!({"email": email, "password": password})),
    )
}

fn post_json_from(iss: &IssuerProc, ip: &str, path: &str, body: &Value) -> Resp {
    send(from(ip).post(iss.url(path)).json(body))
}

fn resend(iss: &IssuerProc, ip: &str, access: &str) -> Resp {
    send(
        from(ip)
            .post(iss.url("/v1/users/confirm/resend"))
            .bearer_auth(access),
    )
}

fn form_from(iss: &IssuerProc, ip: &str, path: &str, auth: Option<&str>, form: &str) -> Resp {
    let mut req = from(ip)
        .post(iss.url(path))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(form.to_string());
    if let Some(a) = auth {
        req = req.header("Authorization", a);
    }
    send(req)
}

fn api_key_login_from(iss: &IssuerProc, ip: &str, key: &str) -> Resp {
    post_json_from(iss, ip, "/v1/auth/api-key", &json!({ "api_key": key }))
}

/// A fresh API key of a machine subject; returns (id, secret).
fn api_key(iss: &IssuerProc, subject: &str) -> (String, String) {
    let k = iss.create_api_key(&json!({"subject": subject, "name": subject}));
    (
        k["id"].as_str().expect("id").to_string(),
        k["api_key"].as_str().expect("api_key").to_string(),
    )
}

/// A syntactically plausible API key that does not exist.
const BAD_KEY: &str = "pk_nosuchkey_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

// ---------------------------------------------------------------------------------------------

/// The reported symptom: 180 anonymous accounts from one address in seconds, all 201.
fn anonymous_per_ip_and_global(b: Backend) {
    let dir = tempdir();
    let yaml = "limits:\n  anonymous: {per_ip: 3, global: 5, window: 1h}\n";
    let Some(iss) = start(b, dir.path(), yaml) else {
        return;
    };
    for _ in 0..3 {
        anonymous(&iss, A).pair();
    }
    assert_limited(&anonymous(&iss, A), 3600);
    // Another address has its own budget, until the global ceiling (5) is reached.
    anonymous(&iss, B).pair();
    anonymous(&iss, B).pair();
    assert_limited(&anonymous(&iss, B), 3600);
    assert_limited(&anonymous(&iss, C), 3600);
    let users = iss.admin_get("/admin/users?limit=100").json();
    let anonymous_users = users["users"]
        .as_array()
        .map(|a| a.iter().filter(|u| u["anonymous"] == true).count());
    assert_eq!(anonymous_users, Some(5), "{users}");
}

/// The reported symptom: 12 sign-ups from one address in seconds, each mailing a link.
fn signup_per_ip_and_global(b: Backend) {
    let sink = SmtpSink::start(SinkOptions::default());
    let dir = tempdir();
    let yaml = format!(
        "{}limits:\n  signup: {{per_ip: 3, global: 5}}\n",
        email_yaml(sink.port())
    );
    let Some(iss) = start(b, dir.path(), &yaml) else {
        return;
    };
    // A refused password does not spend the budget.
    signup(&iss, A, "weak@example.com", "password").assert_error(422, Some("weak_password"));
    for i in 0..3 {
        let r = signup(&iss, A, &format!("a{i}@example.com"), PW);
        assert_eq!(r.status, 201, "{}", r.text);
    }
    assert_limited(&signup(&iss, A, "a3@example.com", PW), 3600);
    for i in 0..2 {
        let r = signup(&iss, B, &format!("b{i}@example.com"), PW);
        assert_eq!(r.status, 201, "{}", r.text);
    }
    assert_limited(&signup(&iss, B, "b2@example.com", PW), 3600);
    assert_limited(&signup(&iss, C, "c0@example.com", PW), 3600);
    // One confirmation mail per account created, none for the refused ones.
    assert!(wait_for(Duration::from_secs(15), || sink.messages().len() >= 5));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(sink.messages().len(), 5);
    assert!(iss.password_login("a3@example.com", PW).status == 401);
}

/// `limits.mail.global` counts every mail, whatever sends it.
fn mail_ceiling(b: Backend) {
    let sink = SmtpSink::start(SinkOptions::default());
    let dir = tempdir();
    let yaml = format!(
        "{}limits:\n  mail: {{global: 2}}\n",
        email_yaml(sink.port())
    );
    let Some(iss) = start(b, dir.path(), &yaml) else {
        return;
    };
    let mut pairs = Vec::new();
    for i in 0..3 {
        let r = signup(&iss, A, &format!("m{i}@example.com"), PW);
        assert_eq!(r.status, 201, "sign-up still works: {}", r.text);
        pairs.push(r.pair());
        // One at a time, so that which mails go out is deterministic.
        let sent = i.min(1) + 1;
        assert!(wait_for(Duration::from_secs(15), || sink.messages().len() >= sent));
    }
    let limited = wait_for(Duration::from_secs(15), || {
        metric(&iss, "confirm_email", "limited") == 1
    });
    assert!(limited, "the third mail is counted as limited");
    assert_eq!(sink.messages().len(), 2, "{:#?}", sink.messages());
    // Endpoints that only send mail say so with a 429.
    assert_limited(
        &post_json_from(
            &iss,
            B,
            "/v1/password/forgot",
            &json!({"email": "m0@example.com"}),
        ),
        3600,
    );
    assert_limited(&resend(&iss, B, &pairs[2].access), 3600);
    assert_eq!(sink.messages().len(), 2);
}

/// `portcullis_issuer_emails_total{kind, outcome}`.
fn metric(iss: &IssuerProc, kind: &str, outcome: &str) -> u64 {
    let text = get_with(&iss.admin_url("/metrics"), None).text;
    let needle =
        format!("portcullis_issuer_emails_total{{kind=\"{kind}\",outcome=\"{outcome}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&needle))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn confirm_resend_per_account_and_ip(b: Backend) {
    let sink = SmtpSink::start(SinkOptions::default());
    let dir = tempdir();
    let yaml = format!(
        "{}limits:\n  confirm_resend: {{per_account: 2, per_ip: 3}}\n",
        email_yaml(sink.port())
    );
    let Some(iss) = start(b, dir.path(), &yaml) else {
        return;
    };
    let users: Vec<Pair> = (0..3)
        .map(|i| signup(&iss, C, &format!("r{i}@example.com"), PW).pair())
        .collect();
    // Per account: two resends, then 429, from any address.
    for _ in 0..2 {
        assert_eq!(resend(&iss, A, &users[0].access).status, 202);
    }
    assert_limited(&resend(&iss, A, &users[0].access), 3600);
    assert_limited(&resend(&iss, B, &users[0].access), 3600);
    // Per address: A has spent 2 of 3; another account gets one more from A, then 429.
    assert_eq!(resend(&iss, A, &users[1].access).status, 202);
    assert_limited(&resend(&iss, A, &users[2].access), 3600);
    assert_eq!(resend(&iss, B, &users[2].access).status, 202);
}

/// `limits.email_confirm` and `limits.password_reset`: link tokens submitted per address.
fn link_submissions_per_ip(b: Backend) {
    let sink = SmtpSink::start(SinkOptions::default());
    let dir = tempdir();
    let yaml = format!(
        "{}limits:\n  email_confirm: {{per_ip: 3}}\n  password_reset: {{per_ip: 3}}\n",
        email_yaml(sink.port())
    );
    let Some(iss) = start(b, dir.path(), &yaml) else {
        return;
    };
    signup(&iss, C, "links@example.com", PW).pair();
    let confirm_token = nth_token(&sink, "links@example.com", 1);
    for _ in 0..3 {
        post_json_from(
            &iss,
            A,
            "/v1/users/confirm",
            &json!({"token": "x".repeat(43)}),
        )
        .assert_error(400, Some("invalid_grant"));
    }
    // A guesser that has spent its budget cannot use even a right token...
    assert_limited(
        &post_json_from(
            &iss,
            A,
            "/v1/users/confirm",
            &json!({ "token": confirm_token }),
        ),
        3600,
    );
    // ...which still works from elsewhere.
    let r = post_json_from(
        &iss,
        B,
        "/v1/users/confirm",
        &json!({ "token": confirm_token }),
    );
    assert_eq!(r.status, 200, "{}", r.text);

    assert_eq!(
        post_json_from(
            &iss,
            C,
            "/v1/password/forgot",
            &json!({"email": "links@example.com"})
        )
        .status,
        202
    );
    let reset_token = nth_token(&sink, "links@example.com", 2);
    let bad = json!({"token": "y".repeat(43), "new_password": "a brand new passphrase"});
    for _ in 0..3 {
        post_json_from(&iss, A, "/v1/password/reset", &bad)
            .assert_error(400, Some("invalid_grant"));
    }
    let good = json!({"token": reset_token, "new_password": "a brand new passphrase"});
    assert_limited(&post_json_from(&iss, A, "/v1/password/reset", &good), 3600);
    assert_eq!(
        post_json_from(&iss, B, "/v1/password/reset", &good).status,
        204
    );
}

/// The link token of the `n`th mail to `to`.
#[track_caller]
fn nth_token(sink: &SmtpSink, to: &str, n: usize) -> String {
    assert!(wait_for(Duration::from_secs(15), || sink
        .messages_to(to)
        .len()
        >= n));
    sink.messages_to(to)[n - 1]
        .link_token()
        .expect("a link token")
}

/// `limits.refresh`: failed refreshes per address, at both refresh endpoints.
fn failed_refreshes_per_ip(b: Backend) {
    let dir = tempdir();
    let Some(iss) = start(b, dir.path(), "limits:\n  refresh: {per_ip: 3}\n") else {
        return;
    };
    let pair = anonymous(&iss, C).pair();
    let refresh = |ip: &str, token: &str| {
        post_json_from(
            &iss,
            ip,
            "/v1/auth/refresh",
            &json!({ "refresh_token": token }),
        )
    };
    // Successes never count.
    let pair = refresh(A, &pair.refresh).pair();
    let pair = refresh(A, &pair.refresh).pair();
    for i in 0..3 {
        refresh(A, &format!("guess-{i}")).assert_error(401, Some("invalid_grant"));
    }
    assert_limited(&refresh(A, "guess-3"), 3600);
    assert_limited(&refresh(A, &pair.refresh), 3600);
    let form = format!("grant_type=refresh_token&refresh_token={}", pair.refresh);
    assert_limited(&form_from(&iss, A, "/oauth/token", None, &form), 3600);
    refresh(B, &pair.refresh).pair();
}

/// `limits.token`: every grant at `/oauth/token` per address.
fn token_endpoint_per_ip(b: Backend) {
    let dir = tempdir();
    let Some(iss) = start(b, dir.path(), "limits:\n  token: {per_ip: 3, window: 1m}\n") else {
        return;
    };
    iss.create_user("tok@example.com", PW, &[]);
    let (_, key) = api_key(&iss, "svc-token");
    let cc = format!("grant_type=client_credentials&client_secret={key}");
    let pw = format!(
        "grant_type=password&username=tok@example.com&password={}",
        PW.replace(' ', "+")
    );
    assert_eq!(form_from(&iss, A, "/oauth/token", None, &cc).status, 200);
    assert_eq!(form_from(&iss, A, "/oauth/token", None, &pw).status, 200);
    assert_eq!(form_from(&iss, A, "/oauth/token", None, &cc).status, 200);
    assert_limited(&form_from(&iss, A, "/oauth/token", None, &cc), 60);
    assert_limited(&form_from(&iss, A, "/oauth/token", None, &pw), 60);
    assert_eq!(form_from(&iss, B, "/oauth/token", None, &cc).status, 200);
    // The other login endpoints are not this limit's business.
    api_key_login_from(&iss, A, &key).pair();
}

/// `limits.api_key`: failed key authentications per address, wherever a key is presented.
fn api_key_failures_per_ip(b: Backend) {
    let dir = tempdir();
    let Some(iss) = start(b, dir.path(), "limits:\n  api_key: {per_ip: 3}\n") else {
        return;
    };
    let (_, key) = api_key(&iss, "svc-guess");
    // Successes never count.
    for _ in 0..4 {
        api_key_login_from(&iss, A, &key).pair();
    }
    api_key_login_from(&iss, A, BAD_KEY).assert_error(401, Some("invalid_client"));
    let cc = format!("grant_type=client_credentials&client_secret={BAD_KEY}");
    form_from(&iss, A, "/oauth/token", None, &cc).assert_error(401, Some("invalid_client"));
    let introspect = |ip: &str, k: &str| {
        form_from(
            &iss,
            ip,
            "/oauth/introspect",
            Some(&format!("ApiKey {k}")),
            "token=x",
        )
    };
    introspect(A, BAD_KEY).assert_error(401, Some("invalid_client"));
    // Three failures: A is locked out everywhere, even with the right key.
    assert_limited(&api_key_login_from(&iss, A, BAD_KEY), 900);
    assert_limited(&api_key_login_from(&iss, A, &key), 900);
    let cc = format!("grant_type=client_credentials&client_secret={key}");
    assert_limited(&form_from(&iss, A, "/oauth/token", None, &cc), 900);
    assert_limited(&introspect(A, &key), 900);
    assert_limited(
        &form_from(
            &iss,
            A,
            "/oauth/revoke",
            Some(&format!("ApiKey {key}")),
            "token=x",
        ),
        900,
    );
    api_key_login_from(&iss, B, &key).pair();
    assert_eq!(introspect(B, &key).status, 200);
}

/// `limits.introspect` and `limits.revoke`: per authenticated client, not per address.
fn introspection_and_revocation_per_client(b: Backend) {
    let dir = tempdir();
    let yaml = "limits:\n  introspect: {per_client: 3, window: 1m}\n  \
                revoke: {per_client: 2, window: 1m}\n";
    let Some(iss) = start(b, dir.path(), yaml) else {
        return;
    };
    let (_, k1) = api_key(&iss, "svc-one");
    let (_, k2) = api_key(&iss, "svc-two");
    let access = api_key_login_from(&iss, C, &k1).pair().access;
    let call = |path: &str, ip: &str, k: &str| {
        form_from(
            &iss,
            ip,
            path,
            Some(&format!("ApiKey {k}")),
            &format!("token={access}"),
        )
    };
    for ip in [A, B, A] {
        let r = call("/oauth/introspect", ip, &k1);
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.json()["active"], true);
    }
    assert_limited(&call("/oauth/introspect", C, &k1), 60);
    assert_eq!(call("/oauth/introspect", A, &k2).status, 200);
    let admin = form_from(
        &iss,
        A,
        "/oauth/introspect",
        Some(&format!("Bearer {}", iss.admin_token)),
        &format!("token={access}"),
    );
    assert_eq!(admin.status, 200, "the admin token is its own client");

    assert_eq!(call("/oauth/revoke", A, &k2).status, 200);
    assert_eq!(call("/oauth/revoke", B, &k2).status, 200);
    assert_limited(&call("/oauth/revoke", C, &k2), 60);
    assert_eq!(call("/oauth/revoke", C, &k1).status, 200);
}

/// "Windows are fixed: 22 failures spread across a window boundary never hit the limit." A
/// budget of 2 per 20 s: 2 sign-ins in one window, then one just after the boundary.
/// Fixed windows admitted it (a fresh window); the sliding window refuses it, with a
/// `Retry-After` that is the real wait: after it, the next sign-in is admitted.
fn burst_straddling_a_window_boundary(b: Backend) {
    const WINDOW: u64 = 20;
    let dir = tempdir();
    let yaml = format!("limits:\n  anonymous: {{per_ip: 2, window: {WINDOW}s}}\n");
    let Some(iss) = start(b, dir.path(), &yaml) else {
        return;
    };
    // Start the burst with at least 5 s left in the window, so that it fits in it.
    if until_boundary(WINDOW) < Duration::from_secs(5) {
        std::thread::sleep(until_boundary(WINDOW) + Duration::from_millis(100));
    }
    let window_of_burst = unix_now().as_secs() / WINDOW;
    for _ in 0..2 {
        anonymous(&iss, A).pair();
    }
    assert_eq!(
        unix_now().as_secs() / WINDOW,
        window_of_burst,
        "the burst took too long to fit in one window"
    );
    std::thread::sleep(until_boundary(WINDOW) + Duration::from_millis(200));
    let r = anonymous(&iss, A);
    let elapsed = unix_now().as_secs() % WINDOW;
    // 2 × (20 - e) / 20 + 1 > 2 for e < 10 s into the new window: refused.
    assert!(
        elapsed < 10,
        "the request came {elapsed}s after the boundary"
    );
    let retry = assert_limited(&r, WINDOW as i64);
    // One more fits once 2 × left / 20 ≤ 1, i.e. 10 s into the window.
    std::thread::sleep(Duration::from_secs(retry as u64));
    anonymous(&iss, A).pair();
}

fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
}

/// Time until the next multiple of `window` seconds since the epoch (the issuer's windows).
fn until_boundary(window: u64) -> Duration {
    let now = unix_now();
    let next = (now.as_secs() / window + 1) * window;
    Duration::from_secs(next) - now
}

// ---------------------------------------------------------------------------------------------

/// `portcullis-issuer -t` names file, line and key of a bad limit.
#[test]
fn bad_limits_are_config_errors() {
    let dir = tempdir();
    for (yaml, line, needle) in [
        (
            "limits:\n  signup:\n    per_ip: 0\n",
            3,
            "limits.signup.per_ip: 0 is not a count",
        ),
        (
            "limits:\n  anonymous:\n    per_account: 2\n",
            3,
            "limits.anonymous.per_account: this limit has no such scope",
        ),
        (
            "limits:\n  token:\n    window: never\n",
            3,
            "limits.token.window",
        ),
    ] {
        let path = dir.path().join("issuer.yaml");
        std::fs::write(&path, yaml).expect("write");
        let (code, out) = check_issuer_config(&path);
        assert_eq!(code, 1, "{yaml:?}: {out}");
        assert!(
            out.contains(&format!("issuer.yaml:{line}:")) && out.contains(needle),
            "{yaml:?}: {out}"
        );
    }
    std::fs::write(
        dir.path().join("issuer.yaml"),
        "limits:\n  anonymous: {per_ip: off, global: 10, window: 10m}\n",
    )
    .expect("write");
    let (code, out) = check_issuer_config(&dir.path().join("issuer.yaml"));
    assert_eq!(code, 0, "{out}");
}
