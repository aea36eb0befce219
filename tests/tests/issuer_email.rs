//! End-to-end tests of the email flows against the real issuer binary, each scenario on
//! SQLite and on PostgreSQL: sign-up confirmation mailed through the real lettre SMTP client
//! to a real SMTP server on loopback (`portcullis_tests::smtp_sink`), confirmation, resend,
//! password reset, email change with re-confirmation, link reuse / expiry / supersession,
//! identical answers for unknown addresses, rate limits, SMTP AUTH over STARTTLS, a relay
//! that is down or refusing, and the file mailer of the shipped configuration.

use std::sync::Barrier;
use std::time::{Duration, Instant};

use portcullis_tests::issuer::*;
use portcullis_tests::on_both_backends;
use portcullis_tests::smtp_sink::{ReceivedMail, Refuse, SinkOptions, SmtpSink};
use portcullis_tests::{client, free_port, tempdir, wait_for};
use serde_json::{json, Value};

on_both_backends!(
    signup_confirmation,
    links_expire,
    forgot_and_reset,
    forgot_rate_limits,
    email_change_reconfirms,
    require_confirmed_email,
    smtp_auth_over_starttls,
    smtp_down_or_refusing,
    shipped_config_file_mailer,
    flows_disabled_by_default,
);

const PW: &str = "correct horse battery staple";
const NEW_PW: &str = "a completely new passphrase";
const MAIL_WAIT: Duration = Duration::from_secs(15);

/// The `email:` section for a plain-text relay on loopback at `port`, and loopback as a
/// trusted proxy: the tests play the gateway (see [`forgot`]).
fn email_yaml(port: u16, more: &str) -> String {
    format!(
        "email:\n  enabled: true\n  mailer: smtp\n  from: \"Portcullis Test <no-reply@portcullis.test>\"\n  \
         confirm_url: \"https://app.test/confirm-email?token={{token}}\"\n  \
         reset_url: \"https://app.test/reset-password?token={{token}}\"\n  \
         smtp:\n    host: 127.0.0.1\n    port: {port}\n    tls: none\n    timeout: 3s\n{more}\
         trusted_proxies: [127.0.0.1/32]\n"
    )
}

fn start(b: Backend, dir: &std::path::Path, yaml: &str) -> Option<IssuerProc> {
    let db = db_kind(b)?;
    Some(start_issuer(dir, db, yaml))
}

/// The newest message to `to`, waiting for one to arrive.
#[track_caller]
fn mail_to(sink: &SmtpSink, to: &str) -> ReceivedMail {
    sink.wait_for_message(
        |m| m.rcpt_to.iter().any(|r| r.eq_ignore_ascii_case(to)),
        MAIL_WAIT,
    );
    sink.messages_to(to).pop().expect("a message")
}

/// Waits for the `n`th message to `to` and returns its link token.
#[track_caller]
fn nth_token(sink: &SmtpSink, to: &str, n: usize) -> String {
    let ok = wait_for(MAIL_WAIT, || sink.messages_to(to).len() >= n);
    assert!(
        ok,
        "message #{n} to {to} never came: {:#?}",
        sink.messages()
    );
    let m = &sink.messages_to(to)[n - 1];
    let t = m
        .link_token()
        .unwrap_or_else(|| panic!("no link token: {}", m.data));
    assert_eq!(t.len(), 43, "256-bit base64url token: {t}");
    t
}

fn confirm(iss: &IssuerProc, token: &str) -> Resp {
    post_json(&iss.url("/v1/users/confirm"), &json!({ "token": token }))
}

/// `POST /v1/password/forgot` as if the gateway forwarded it from `ip`.
fn forgot(iss: &IssuerProc, email: &str, ip: &str) -> Resp {
    send(
        client()
            .post(iss.url("/v1/password/forgot"))
            .header("X-Forwarded-For", ip)
            .json(&json!({ "email": email })),
    )
}

fn reset(iss: &IssuerProc, token: &str, pw: &str) -> Resp {
    post_json(
        &iss.url("/v1/password/reset"),
        &json!({"token": token, "new_password": pw}),
    )
}

fn resend(iss: &IssuerProc, access: &str) -> Resp {
    send(
        client()
            .post(iss.url("/v1/users/confirm/resend"))
            .header("Authorization", format!("Bearer {access}")),
    )
}

/// `portcullis_issuer_emails_total{kind, outcome}`.
fn email_metric(iss: &IssuerProc, kind: &str, outcome: &str) -> u64 {
    let text = get_with(&iss.admin_url("/metrics"), None).text;
    let needle =
        format!("portcullis_issuer_emails_total{{kind=\"{kind}\",outcome=\"{outcome}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&needle))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[track_caller]
fn assert_refused(r: &Resp, why: &str) {
    let body = r.assert_error(400, Some("invalid_grant"));
    let text = body["error_description"].as_str().unwrap_or("");
    assert!(text.contains(why), "expected {why:?} in {body}");
}

// ---------------------------------------------------------------------------------------------

fn signup_confirmation(b: Backend) {
    let sink = SmtpSink::start(SinkOptions::default());
    let dir = tempdir();
    let Some(iss) = start(b, dir.path(), &email_yaml(sink.port(), "")) else {
        return;
    };

    // Sign-up answers as before, and the mail goes out through the SMTP client.
    let r = iss.signup(&json!({"email": "Alice@Example.com", "password": PW}));
    assert_eq!(r.status, 201, "{}", r.text);
    let pair = r.pair();
    assert!(iss.me(&pair.access).json()["email_confirmed_at"].is_null());
    let m = mail_to(&sink, "alice@example.com");
    assert_eq!(m.mail_from, "no-reply@portcullis.test");
    assert_eq!(m.rcpt_to, vec!["alice@example.com".to_string()]);
    let from = m.header("From").unwrap_or_default();
    assert!(
        from.contains("Portcullis Test") && from.ends_with("<no-reply@portcullis.test>"),
        "{from}"
    );
    assert_eq!(m.header("To").as_deref(), Some("alice@example.com"));
    assert_eq!(
        m.header("Subject").as_deref(),
        Some("Confirm your email address")
    );
    assert!(
        m.body().contains("https://app.test/confirm-email?token="),
        "{}",
        m.data
    );
    assert!(m.body().contains("alice@example.com") && m.body().contains("1440 minutes"));
    let token = nth_token(&sink, "alice@example.com", 1);
    assert_eq!(email_metric(&iss, "confirm_email", "sent"), 1);

    // Confirm → the account's address is confirmed.
    let r = confirm(&iss, &token);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["email"], "alice@example.com");
    let me = iss.me(&pair.access).json();
    assert!(me["email_confirmed_at"].as_i64().is_some(), "{me}");
    let admin_view = iss.admin_get(&format!("/admin/users/{}", me["id"].as_str().unwrap()));
    assert_eq!(
        admin_view.json()["email_confirmed_at"],
        me["email_confirmed_at"]
    );

    // Reuse, unknown, oversized and malformed tokens are refused without a 5xx.
    assert_refused(&confirm(&iss, &token), "already been used");
    assert_refused(&confirm(&iss, &"A".repeat(43)), "unknown");
    assert_refused(&confirm(&iss, &"A".repeat(10_000)), "unknown");
    post_raw(
        &iss.url("/v1/users/confirm"),
        Some("application/json"),
        b"{".to_vec(),
    )
    .assert_error(400, Some("invalid_request"));
    post_raw(
        &iss.url("/v1/users/confirm"),
        Some("text/plain"),
        b"{}".to_vec(),
    )
    .assert_error(415, None);
    post_json(
        &iss.url("/v1/users/confirm"),
        &json!({"token": "x", "extra": 1}),
    )
    .assert_error(400, Some("invalid_request"));

    // Concurrent uses of one link: exactly one wins.
    iss.signup(&json!({"email": "bob@example.com", "password": PW}))
        .pair();
    let token = nth_token(&sink, "bob@example.com", 1);
    let barrier = Barrier::new(6);
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..6)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    confirm(&iss, &token).status
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 400).count(),
        5,
        "{statuses:?}"
    );

    // Resend: a new link replaces the old one; after confirming, nothing to resend.
    let carol = iss
        .signup(&json!({"email": "carol@example.com", "password": PW}))
        .pair();
    let first = nth_token(&sink, "carol@example.com", 1);
    let r = resend(&iss, &carol.access);
    assert_eq!(r.status, 202, "{}", r.text);
    let second = nth_token(&sink, "carol@example.com", 2);
    assert_ne!(first, second);
    assert_refused(&confirm(&iss, &first), "unknown");
    assert_eq!(confirm(&iss, &second).status, 200);
    resend(&iss, &carol.access).assert_error(400, Some("invalid_request"));
    resend(&iss, "not-a-token").assert_error(401, Some("invalid_token"));
    // Stored tokens are hashes: no mailed token appears in the database file.
    if b == Backend::Sqlite {
        let db_dir = dir.path().join("db");
        for entry in std::fs::read_dir(&db_dir).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            let hay = String::from_utf8_lossy(&bytes);
            assert!(!hay.contains(&first) && !hay.contains(&second));
        }
    }
}

fn links_expire(b: Backend) {
    let sink = SmtpSink::start(SinkOptions::default());
    let dir = tempdir();
    let more = "  confirm_ttl: 2s\n  reset_ttl: 2s\n";
    let Some(iss) = start(b, dir.path(), &email_yaml(sink.port(), more)) else {
        return;
    };
    iss.signup(&json!({"email": "dave@example.com", "password": PW}))
        .pair();
    let confirm_token = nth_token(&sink, "dave@example.com", 1);
    assert_eq!(forgot(&iss, "dave@example.com", "10.0.0.1").status, 202);
    let reset_token = nth_token(&sink, "dave@example.com", 2);
    assert!(sink.messages_to("dave@example.com")[1]
        .body()
        .contains("1 minutes"));
    std::thread::sleep(Duration::from_millis(3_100));
    assert_refused(&confirm(&iss, &confirm_token), "expired");
    assert_refused(&reset(&iss, &reset_token, NEW_PW), "expired");
    // Nothing changed.
    iss.password_login("dave@example.com", PW).pair();
    iss.password_login("dave@example.com", NEW_PW)
        .assert_error(401, None);
}

fn forgot_and_reset(b: Backend) {
    let sink = SmtpSink::start(SinkOptions::default());
    let dir = tempdir();
    let Some(db) = db_kind(b) else { return };
    let opts = IssuerOptions::new(db)
        .extra(&email_yaml(sink.port(), ""))
        .password("max_failures_per_account: 3");
    let iss = start_issuer_with(dir.path(), opts);
    iss.create_user("erin@example.com", PW, &[]);
    let p1 = iss.password_login("erin@example.com", PW).pair();
    let p2 = iss.password_login("erin@example.com", PW).pair();
    // Someone guessing locks the account out (the reset clears that).
    for _ in 0..3 {
        iss.password_login("erin@example.com", "wrong password!")
            .assert_error(401, None);
    }
    iss.password_login("erin@example.com", PW)
        .assert_error(429, Some("too_many_requests"));

    // Known and unknown addresses: the same status and body; only the known one gets mail.
    let known = forgot(&iss, "Erin@Example.com", "10.0.0.1");
    let unknown = forgot(&iss, "nobody@example.com", "10.0.0.2");
    assert_eq!(known.status, 202, "{}", known.text);
    assert_eq!((known.status, &known.text), (unknown.status, &unknown.text));
    let m = mail_to(&sink, "erin@example.com");
    assert_eq!(m.header("Subject").as_deref(), Some("Reset your password"));
    assert!(m.body().contains("https://app.test/reset-password?token="));
    std::thread::sleep(Duration::from_millis(500));
    assert!(sink.messages_to("nobody@example.com").is_empty());
    assert_eq!(sink.messages().len(), 1, "{:#?}", sink.messages());
    // A second request replaces the first link.
    assert_eq!(forgot(&iss, "erin@example.com", "10.0.0.1").status, 202);
    let old = nth_token(&sink, "erin@example.com", 1);
    let token = nth_token(&sink, "erin@example.com", 2);
    assert_refused(&reset(&iss, &old, NEW_PW), "unknown");
    assert_refused(&reset(&iss, &"B".repeat(43), NEW_PW), "unknown");

    // A weak password is refused and the link stays usable.
    reset(&iss, &token, "short").assert_error(422, Some("weak_password"));
    reset(&iss, &token, "password").assert_error(422, Some("weak_password"));
    post_raw(
        &iss.url("/v1/password/reset"),
        Some("application/json"),
        b"[]".to_vec(),
    )
    .assert_error(400, Some("invalid_request"));
    let r = reset(&iss, &token, NEW_PW);
    assert_eq!(r.status, 204, "{}", r.text);

    // New password works (the lock-out is cleared), old one does not; every earlier session
    // is revoked.
    let p3 = iss.password_login("erin@example.com", NEW_PW).pair();
    iss.password_login("erin@example.com", PW)
        .assert_error(401, None);
    for p in [&p1, &p2] {
        iss.refresh(&p.refresh)
            .assert_error(401, Some("invalid_grant"));
        iss.me(&p.access).assert_error(401, Some("invalid_token"));
    }
    let me = iss.me(&p3.access).json();
    assert!(
        me["email_confirmed_at"].as_i64().is_some(),
        "a used reset link proves the mailbox: {me}"
    );
    let sessions = iss
        .admin_get(&format!(
            "/admin/users/{}/sessions",
            me["id"].as_str().unwrap()
        ))
        .json();
    let revoked = sessions["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["revoked_reason"] == "password_reset")
        .count();
    assert_eq!(revoked, 2, "{sessions}");
    // The revocation feed tells gateways: one subject record, at the reset.
    let feed = iss.revocations(None).json();
    let records = feed["records"].as_array().expect("records");
    assert_eq!(records.len(), 1, "{feed}");
    assert_eq!(records[0]["kind"], "subject", "{feed}");
    assert_eq!(records[0]["sub"], me["id"], "{feed}");
    // The token cannot be used again.
    assert_refused(
        &reset(&iss, &token, "yet another passphrase"),
        "already been used",
    );
    iss.password_login("erin@example.com", NEW_PW).pair();

    // Disabled and anonymous accounts get no mail, and the answer is the same.
    let u = iss.create_user("frozen@example.com", PW, &[]);
    let r = iss.admin_patch(
        &format!("/admin/users/{}", u["id"].as_str().unwrap()),
        &json!({"disabled": true}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    let r = forgot(&iss, "frozen@example.com", "10.0.0.3");
    assert_eq!((r.status, &r.text), (unknown.status, &unknown.text));
    std::thread::sleep(Duration::from_millis(500));
    assert!(sink.messages_to("frozen@example.com").is_empty());
    assert_eq!(email_metric(&iss, "reset_password", "sent"), 2);
}

fn forgot_rate_limits(b: Backend) {
    let sink = SmtpSink::start(SinkOptions::default());
    let dir = tempdir();
    let more = "  forgot_per_email_per_hour: 2\n  forgot_per_ip_per_hour: 3\n";
    let Some(iss) = start(b, dir.path(), &email_yaml(sink.port(), more)) else {
        return;
    };
    iss.create_user("gina@example.com", PW, &[]);
    // Per address (from different clients), known and unknown alike.
    for email in ["gina@example.com", "ghost@example.com"] {
        for i in 0..2 {
            let r = forgot(&iss, email, &format!("10.1.{i}.1"));
            assert_eq!(r.status, 202, "{}", r.text);
        }
        let r = forgot(&iss, email, "10.1.9.9");
        r.assert_error(429, Some("too_many_requests"));
        let retry: i64 = r
            .header("retry-after")
            .and_then(|v| v.parse().ok())
            .expect("Retry-After");
        // Sliding one-hour windows: up to two hours when the budget went early in a window.
        assert!((1..=7200).contains(&retry), "{retry}");
    }
    // Per client IP.
    for i in 0..3 {
        let r = forgot(&iss, &format!("user{i}@example.com"), "10.2.0.1");
        assert_eq!(r.status, 202, "{}", r.text);
    }
    forgot(&iss, "user9@example.com", "10.2.0.1").assert_error(429, Some("too_many_requests"));
    assert_eq!(
        forgot(&iss, "user9@example.com", "10.2.0.2").status,
        202,
        "another client is not limited"
    );
    // Only the two requests for the real account sent mail.
    assert!(wait_for(MAIL_WAIT, || sink.messages().len() == 2));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(sink.messages().len(), 2, "{:#?}", sink.messages());
    // Invalid input is a 400, not a 5xx.
    forgot(&iss, "not-an-email", "10.3.0.1").assert_error(400, Some("invalid_request"));
}

fn email_change_reconfirms(b: Backend) {
    let sink = SmtpSink::start(SinkOptions::default());
    let dir = tempdir();
    let Some(iss) = start(b, dir.path(), &email_yaml(sink.port(), "")) else {
        return;
    };
    let p = iss
        .signup(&json!({"email": "frank@example.com", "password": PW}))
        .pair();
    assert_eq!(
        confirm(&iss, &nth_token(&sink, "frank@example.com", 1)).status,
        200
    );
    let confirmed_at = iss.me(&p.access).json()["email_confirmed_at"].clone();
    assert!(confirmed_at.is_i64());

    // The change is pending: the old address stays (and stays confirmed) until the link is used.
    let r = iss.patch_me(&p.access, &json!({"email": "Frank.New@Example.com"}));
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["email"], "frank@example.com");
    assert_eq!(r.json()["email_confirmed_at"], confirmed_at);
    let m = mail_to(&sink, "frank.new@example.com");
    assert_eq!(
        m.header("Subject").as_deref(),
        Some("Confirm your new email address")
    );
    assert_eq!(
        sink.messages_to("frank@example.com").len(),
        1,
        "nothing new to the old address"
    );
    iss.password_login("frank@example.com", PW).pair();
    iss.password_login("frank.new@example.com", PW)
        .assert_error(401, None);
    let token = nth_token(&sink, "frank.new@example.com", 1);
    let r = confirm(&iss, &token);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["email"], "frank.new@example.com");
    let me = iss.me(&p.access).json();
    assert_eq!(me["email"], "frank.new@example.com");
    assert!(me["email_confirmed_at"].is_i64());
    iss.password_login("frank.new@example.com", PW).pair();
    iss.password_login("frank@example.com", PW)
        .assert_error(401, None);
    assert_refused(&confirm(&iss, &token), "already been used");

    // Taken at request time → 409; taken meanwhile → 409 at confirmation, link not spent.
    let g = iss
        .signup(&json!({"email": "gail@example.com", "password": PW}))
        .pair();
    iss.patch_me(&g.access, &json!({"email": "frank.new@example.com"}))
        .assert_error(409, Some("conflict"));
    let r = iss.patch_me(&g.access, &json!({"email": "contested@example.com"}));
    assert_eq!(r.status, 200, "{}", r.text);
    let token = nth_token(&sink, "contested@example.com", 1);
    iss.create_user("contested@example.com", PW, &[]);
    confirm(&iss, &token).assert_error(409, Some("conflict"));
    assert_eq!(iss.me(&g.access).json()["email"], "gail@example.com");

    // An anonymous account's first address is set at once, unconfirmed, and confirmed by link.
    let anon = iss.anonymous_login().pair();
    let r = iss.patch_me(
        &anon.access,
        &json!({"email": "newbie@example.com", "password": "newbie passphrase 1"}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    let me = r.json();
    assert_eq!(me["email"], "newbie@example.com");
    assert_eq!(me["anonymous"], false);
    assert!(me["email_confirmed_at"].is_null());
    let m = mail_to(&sink, "newbie@example.com");
    assert_eq!(
        m.header("Subject").as_deref(),
        Some("Confirm your email address")
    );
    assert_eq!(confirm(&iss, &m.link_token().unwrap()).status, 200);
    assert!(iss.me(&anon.access).json()["email_confirmed_at"].is_i64());
}

fn require_confirmed_email(b: Backend) {
    let sink = SmtpSink::start(SinkOptions::default());
    let dir = tempdir();
    let more = "  require_confirmed_email_for_password_login: true\n";
    let Some(iss) = start(b, dir.path(), &email_yaml(sink.port(), more)) else {
        return;
    };
    // No tokens before the address is confirmed: the account exists, the link is mailed.
    let r = iss.signup(&json!({"email": "Hank@example.com", "password": PW}));
    assert_eq!(r.status, 202, "{}", r.text);
    let body = r.json();
    assert_eq!(body["email"], "hank@example.com", "{body}");
    assert_eq!(body["confirmation_required"], true, "{body}");
    assert!(body["id"].is_string(), "{body}");
    assert!(body.get("access_token").is_none() && body.get("refresh_token").is_none());
    iss.password_login("hank@example.com", PW)
        .assert_error(403, Some("email_not_confirmed"));
    // A wrong password still says only that.
    iss.password_login("hank@example.com", "wrong password!")
        .assert_error(401, Some("invalid_grant"));
    assert_eq!(
        confirm(&iss, &nth_token(&sink, "hank@example.com", 1)).status,
        200
    );
    iss.password_login("hank@example.com", PW).pair();
}

fn smtp_auth_over_starttls(b: Backend) {
    let sink = SmtpSink::start(SinkOptions {
        credentials: Some(("relay-user".into(), "relay pass 42".into())),
        starttls: true,
        ..SinkOptions::default()
    });
    let dir = tempdir();
    let ca = sink.ca_file().expect("CA file").display().to_string();
    let smtp = |pw_file: &str| {
        format!(
            "email:\n  enabled: true\n  mailer: smtp\n  from: no-reply@portcullis.test\n  smtp:\n    \
             host: 127.0.0.1\n    port: {}\n    tls: starttls\n    username: relay-user\n    \
             password_file: {pw_file}\n    ca_file: {ca}\n    timeout: 3s\n",
            sink.port()
        )
    };
    std::fs::write(dir.path().join("smtp-password"), "relay pass 42\n").unwrap();
    std::fs::write(dir.path().join("wrong-password"), "not it\n").unwrap();
    let Some(iss) = start(b, dir.path(), &smtp("smtp-password")) else {
        return;
    };
    iss.signup(&json!({"email": "ivy@example.com", "password": PW}))
        .pair();
    let m = mail_to(&sink, "ivy@example.com");
    assert!(m.tls, "delivered after STARTTLS");
    assert_eq!(m.auth_user.as_deref(), Some("relay-user"));
    assert_eq!(sink.auth_failures(), 0);

    // Implicit TLS (SMTPS), same credentials.
    let smtps = SmtpSink::start(SinkOptions {
        credentials: Some(("relay-user".into(), "relay pass 42".into())),
        implicit_tls: true,
        ..SinkOptions::default()
    });
    let dir4 = tempdir();
    std::fs::write(dir4.path().join("smtp-password"), "relay pass 42\n").unwrap();
    let yaml = smtp("smtp-password")
        .replace(
            &format!("port: {}", sink.port()),
            &format!("port: {}", smtps.port()),
        )
        .replace("tls: starttls", "tls: tls")
        .replace(&ca, &smtps.ca_file().expect("CA").display().to_string());
    let iss4 = start_issuer(dir4.path(), DbKind::Sqlite, &yaml);
    iss4.signup(&json!({"email": "ida@example.com", "password": PW}))
        .pair();
    let m = mail_to(&smtps, "ida@example.com");
    assert!(
        m.tls && m.auth_user.as_deref() == Some("relay-user"),
        "{m:?}"
    );
    // A relay whose certificate is not trusted gets nothing (no ca_file here).
    let dir5 = tempdir();
    std::fs::write(dir5.path().join("smtp-password"), "relay pass 42\n").unwrap();
    let untrusted = yaml.replace(
        &format!("    ca_file: {}\n", smtps.ca_file().expect("CA").display()),
        "",
    );
    assert!(!untrusted.contains("ca_file"), "{untrusted}");
    let iss5 = start_issuer(dir5.path(), DbKind::Sqlite, &untrusted);
    iss5.signup(&json!({"email": "ian@example.com", "password": PW}))
        .pair();
    assert!(wait_for(MAIL_WAIT, || email_metric(
        &iss5,
        "confirm_email",
        "failed"
    ) == 1));
    assert!(smtps.messages_to("ian@example.com").is_empty());

    // Wrong credentials: the relay refuses; sign-up still succeeds; the failure is counted.
    let dir2 = tempdir();
    std::fs::copy(
        dir.path().join("wrong-password"),
        dir2.path().join("wrong-password"),
    )
    .unwrap();
    let db = match b {
        Backend::Sqlite => DbKind::Sqlite,
        Backend::Postgres => DbKind::Postgres(iss.database_url.clone()),
    };
    let iss2 = start_issuer(dir2.path(), db, &smtp("wrong-password"));
    let r = iss2.signup(&json!({"email": "jack@example.com", "password": PW}));
    assert_eq!(r.status, 201, "{}", r.text);
    assert!(wait_for(MAIL_WAIT, || email_metric(
        &iss2,
        "confirm_email",
        "failed"
    ) == 1));
    assert!(sink.auth_failures() >= 1);
    assert!(sink.messages_to("jack@example.com").is_empty());

    // `tls: starttls` never falls back to plain text with a relay that does not offer it.
    let plain = SmtpSink::start(SinkOptions::default());
    let dir3 = tempdir();
    std::fs::write(dir3.path().join("smtp-password"), "relay pass 42\n").unwrap();
    let yaml = smtp("smtp-password").replace(
        &format!("port: {}", sink.port()),
        &format!("port: {}", plain.port()),
    );
    let iss3 = start_issuer(dir3.path(), DbKind::Sqlite, &yaml);
    iss3.signup(&json!({"email": "kim@example.com", "password": PW}))
        .pair();
    assert!(wait_for(MAIL_WAIT, || email_metric(
        &iss3,
        "confirm_email",
        "failed"
    ) == 1));
    assert!(plain.connections() >= 1);
    assert!(plain.messages().is_empty(), "{:#?}", plain.messages());
}

fn smtp_down_or_refusing(b: Backend) {
    let sink = SmtpSink::start(SinkOptions::default());
    let dir = tempdir();
    let Some(iss) = start(b, dir.path(), &email_yaml(sink.port(), "")) else {
        return;
    };
    iss.create_user("lena@example.com", PW, &[]);
    for (i, refuse) in [Refuse::Data(554), Refuse::MailFrom(451)]
        .into_iter()
        .enumerate()
    {
        sink.set_refuse(refuse);
        let r = iss.signup(&json!({"email": format!("new{i}@example.com"), "password": PW}));
        assert_eq!(r.status, 201, "{}", r.text);
        let r = forgot(&iss, "lena@example.com", &format!("10.4.0.{i}"));
        assert_eq!(r.status, 202, "{}", r.text);
        let failed = i as u64 + 1;
        assert!(
            wait_for(MAIL_WAIT, || email_metric(&iss, "confirm_email", "failed")
                == failed
                && email_metric(&iss, "reset_password", "failed") == failed),
            "{refuse:?}: failures not counted"
        );
    }
    assert!(sink.messages().is_empty());
    // The relay recovers: asking again works.
    sink.set_refuse(Refuse::Nothing);
    assert_eq!(forgot(&iss, "lena@example.com", "10.4.1.1").status, 202);
    let token = nth_token(&sink, "lena@example.com", 1);
    assert_eq!(reset(&iss, &token, NEW_PW).status, 204);

    // Nothing listening at all: same answers, within the configured timeout.
    let dir2 = tempdir();
    let db = match b {
        Backend::Sqlite => DbKind::Sqlite,
        Backend::Postgres => DbKind::Postgres(iss.database_url.clone()),
    };
    let iss2 = start_issuer(dir2.path(), db, &email_yaml(free_port(), ""));
    iss2.create_user("nora@example.com", PW, &[]);
    let t = Instant::now();
    let r = iss2.signup(&json!({"email": "down@example.com", "password": PW}));
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(forgot(&iss2, "nora@example.com", "10.4.2.1").status, 202);
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "answers do not wait for the relay"
    );
    assert!(wait_for(MAIL_WAIT, || email_metric(
        &iss2,
        "confirm_email",
        "failed"
    ) == 1
        && email_metric(&iss2, "reset_password", "failed") == 1));
}

/// The `email:` block of `config/issuer.yaml`, as shipped.
fn shipped_email_block() -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/issuer.yaml");
    let text = std::fs::read_to_string(path).expect("config/issuer.yaml");
    let mut out = String::new();
    let mut inside = false;
    for line in text.lines() {
        if line.starts_with("email:") {
            inside = true;
        } else if inside && !line.is_empty() && !line.starts_with([' ', '#']) {
            break;
        }
        if inside {
            out.push_str(line);
            out.push('\n');
        }
    }
    assert!(!out.is_empty(), "config/issuer.yaml has an email: section");
    out
}

fn shipped_config_file_mailer(b: Backend) {
    let root = tempdir();
    // The shipped block writes to ../data/mail relative to the config's directory.
    let cfg_dir = root.path().join("config");
    std::fs::create_dir_all(&cfg_dir).unwrap();
    let block = shipped_email_block();
    assert!(block.contains("mailer: file"), "{block}");
    let Some(iss) = start(b, &cfg_dir, &block) else {
        return;
    };
    let mail_dir = root.path().join("data/mail");
    iss.signup(&json!({"email": "mona@example.com", "password": PW}))
        .pair();
    let files = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(&mail_dir)
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default()
    };
    assert!(
        wait_for(MAIL_WAIT, || files().len() == 1),
        "no .eml in {}",
        mail_dir.display()
    );
    let path = files().pop().unwrap();
    assert_eq!(path.extension().and_then(|e| e.to_str()), Some("eml"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the file holds a live link");
    }
    let raw = std::fs::read_to_string(&path).unwrap();
    assert!(raw.contains("To: mona@example.com"), "{raw}");
    let m = ReceivedMail {
        mail_from: String::new(),
        rcpt_to: Vec::new(),
        data: raw.clone(),
        auth_user: None,
        tls: false,
    };
    let token = m.link_token().unwrap_or_else(|| panic!("no link in {raw}"));
    assert_eq!(confirm(&iss, &token).status, 200);
}

fn flows_disabled_by_default(b: Backend) {
    let dir = tempdir();
    let Some(iss) = start(b, dir.path(), "") else {
        return;
    };
    forgot(&iss, "a@example.com", "10.5.0.1").assert_error(403, Some("disabled"));
    confirm(&iss, &"A".repeat(43)).assert_error(403, Some("disabled"));
    reset(&iss, &"A".repeat(43), NEW_PW).assert_error(403, Some("disabled"));
    // Without the flows, an address change applies at once (the previous behaviour).
    let p = iss
        .signup(&json!({"email": "olga@example.com", "password": PW}))
        .pair();
    resend(&iss, &p.access).assert_error(403, Some("disabled"));
    let r = iss.patch_me(&p.access, &json!({"email": "olga2@example.com"}));
    assert_eq!(r.json()["email"], "olga2@example.com");
    let _: Value = r.json();
}
