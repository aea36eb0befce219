//! End-to-end tests of the issuer as a process: a restart keeps keys and sessions, two
//! replicas share one PostgreSQL, and `-t` checks a config file.

use std::sync::Barrier;
use std::time::{Duration, Instant};

use portcullis_tests::issuer::*;
use portcullis_tests::on_both_backends;
use portcullis_tests::{tempdir, wait_for};
use serde_json::json;

on_both_backends!(restart_keeps_keys_and_sessions, config_check);

const PW: &str = "correct horse battery staple";

// ---------------------------------------------------------------------------------------------
// 8. Restart
// ---------------------------------------------------------------------------------------------

fn restart_keeps_keys_and_sessions(b: Backend) {
    let Some(db) = db_kind(b) else { return };
    let dir = tempdir();
    let mut iss = start_issuer(dir.path(), db, "keys:\n  publish_lead_time: 1h\n");
    iss.create_user("hana@example.com", PW, &["member"]);
    let pair = iss.password_login("hana@example.com", PW).pair();
    let key = iss.create_api_key(&json!({"subject": "svc-restart", "scopes": ["r:1"]}));
    // A published-but-not-yet-signing key must survive too.
    let r = iss.admin_post("/admin/keys/rotate", &json!({}));
    assert!(r.status == 202 || r.status == 200, "{}", r.text);
    let r = get_with(&iss.url("/.well-known/jwks.json"), None);
    let etag = r.header("etag").unwrap();
    let kids_before = kids(&r.json());
    assert_eq!(kids_before.len(), 2);
    let signing_kid = token_kid(&pair.access);

    iss.stop();
    assert!(get_with_timeout(&iss.url("/healthz")).is_none(), "stopped");
    iss.start_again();

    let r = get_with(&iss.url("/.well-known/jwks.json"), None);
    assert_eq!(kids(&r.json()), kids_before, "same keys after the restart");
    assert_eq!(r.header("etag").unwrap(), etag);
    // The existing access token is still accepted.
    let r = iss.me(&pair.access);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["email"], "hana@example.com");
    // The existing refresh token still rotates, and the same key signs.
    let p2 = iss.refresh(&pair.refresh).pair();
    assert_eq!(token_kid(&p2.access), signing_kid);
    let c = iss.verify(&p2.access);
    assert_eq!(c["sid"], iss.verify(&pair.access)["sid"]);
    // The API key (hashed with the pepper in the secrets directory) and the admin token.
    let c = iss.verify(
        &iss.api_key_login(key["api_key"].as_str().unwrap())
            .pair()
            .access,
    );
    assert_eq!(c["sub"], "svc-restart");
    assert_eq!(iss.admin_get("/admin/users").status, 200);
    let token_file = std::fs::read_to_string(dir.path().join("secrets/admin-token")).unwrap();
    assert_eq!(token_file.trim(), iss.admin_token);
}

fn get_with_timeout(url: &str) -> Option<u16> {
    reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap()
        .get(url)
        .send()
        .ok()
        .map(|r| r.status().as_u16())
}

// ---------------------------------------------------------------------------------------------
// 9. Two issuers sharing one PostgreSQL
// ---------------------------------------------------------------------------------------------

#[test]
fn two_issuers_share_postgres() {
    let Some(db) = db_kind(Backend::Postgres) else {
        return;
    };
    let (dir_a, dir_b) = (tempdir(), tempdir());
    let extra = "refresh:\n  reuse_grace: 2s\n";
    let a = start_issuer_with(dir_a.path(), IssuerOptions::new(db.clone()).extra(extra));
    // A replica: same database, same `iss`, same secrets.
    let mut opts = IssuerOptions::new(db).extra(extra);
    opts.issuer = Some(a.issuer.clone());
    opts.secrets_dir = Some(dir_a.path().join("secrets"));
    opts.name = "issuer-b".into();
    let b = start_issuer_with(dir_b.path(), opts);
    assert_eq!(a.admin_token, b.admin_token);

    let ra = get_with(&a.url("/.well-known/jwks.json"), None);
    let rb = get_with(&b.url("/.well-known/jwks.json"), None);
    assert_eq!(ra.json(), rb.json(), "both replicas publish the same JWKS");
    assert_eq!(ra.header("etag"), rb.header("etag"));

    // A user created on one logs in on the other; tokens work across replicas.
    a.create_user("ivan@example.com", PW, &[]);
    let pair = b.password_login("ivan@example.com", PW).pair();
    a.verify(&pair.access);
    assert_eq!(a.me(&pair.access).status, 200);
    let key = b.create_api_key(&json!({"subject": "svc-shared"}));
    a.api_key_login(key["api_key"].as_str().unwrap()).pair();

    // 20 concurrent refreshes of one token, spread over both replicas.
    let pair = a.password_login("ivan@example.com", PW).pair();
    let barrier = Barrier::new(20);
    let started = Instant::now();
    let results: Vec<Resp> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..20)
            .map(|i| {
                let (iss, barrier, rt) =
                    (if i % 2 == 0 { &a } else { &b }, &barrier, &pair.refresh);
                s.spawn(move || {
                    barrier.wait();
                    iss.refresh(rt)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let rotated_at = Instant::now();
    let statuses: Vec<u16> = results.iter().map(|r| r.status).collect();
    for r in &results {
        assert!(
            r.status < 500,
            "5xx on a concurrent refresh: {statuses:?}: {}",
            r.text
        );
    }
    let winners: Vec<Pair> = results
        .iter()
        .filter(|r| r.status == 200)
        .map(Resp::pair)
        .collect();
    assert!(!winners.is_empty(), "no refresh succeeded: {statuses:?}");
    // All of them ran well within the 2 s grace period, so each one got a new pair.
    if started.elapsed() < Duration::from_millis(1500) {
        assert_eq!(winners.len(), 20, "within the grace period: {statuses:?}");
    }
    eprintln!("concurrent refreshes: {statuses:?}");
    for r in results.iter().filter(|r| r.status != 200) {
        r.assert_error(401, Some("invalid_grant"));
    }
    let mut fresh: Vec<&str> = winners.iter().map(|p| p.refresh.as_str()).collect();
    fresh.sort();
    fresh.dedup();
    assert_eq!(
        fresh.len(),
        winners.len(),
        "every success has its own refresh token"
    );

    // A key rotated on one replica reaches the other's JWKS (its 2 s maintenance tick).
    let r = a.admin_post("/admin/keys/rotate", &json!({}));
    assert!(r.status == 202 || r.status == 200, "{}", r.text);
    let new_kid = r.json()["kid"].as_str().unwrap().to_string();
    assert!(a.jwks_kids().contains(&new_kid));

    // After the grace period the token is dead on both, and so is its session.
    std::thread::sleep(Duration::from_millis(3200).saturating_sub(rotated_at.elapsed()));
    assert!(
        wait_for(Duration::from_secs(3), || b.jwks_kids().contains(&new_kid)),
        "replica b never published the key rotated on a"
    );
    assert_eq!(a.jwks(), b.jwks());
    a.refresh(&pair.refresh)
        .assert_error(401, Some("invalid_grant"));
    b.refresh(&pair.refresh)
        .assert_error(401, Some("invalid_grant"));
    for w in &winners {
        a.refresh(&w.refresh).assert_error(401, None);
        b.refresh(&w.refresh).assert_error(401, None);
    }
    assert_eq!(a.me(&winners[0].access).status, 401);
    assert_eq!(b.me(&winners[0].access).status, 401);
}

// ---------------------------------------------------------------------------------------------
// 10. -t
// ---------------------------------------------------------------------------------------------

fn config_check(b: Backend) {
    let Some(db) = db_kind(b) else { return };
    let dir = tempdir();
    let opts = IssuerOptions::new(db).extra("refresh:\n  reuse_grace: 5s\n");
    let cfg = write_issuer_config(dir.path(), &opts);
    let (code, out) = check_issuer_config(&cfg.path);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("successful"), "{out}");
    // -t neither starts the service nor touches the database or the secrets.
    assert!(!dir.path().join("db").exists(), "-t created the database");
    assert!(!cfg.secrets_dir.exists(), "-t created secrets");

    let good = std::fs::read_to_string(&cfg.path).unwrap();
    let lines = good.lines().count();
    let path = cfg.path.display().to_string();

    // Unknown top-level key.
    std::fs::write(&cfg.path, format!("{good}bogus_key: 1\n")).unwrap();
    let (code, out) = check_issuer_config(&cfg.path);
    assert_eq!(code, 1, "{out}");
    let at = format!("{path}:{}", lines + 1);
    assert!(
        out.contains(&at) && out.contains("bogus_key"),
        "want {at} and the key: {out}"
    );

    // Unknown nested key.
    std::fs::write(
        &cfg.path,
        format!("{good}keys:\n  algorithm: ES256\n  rotate_evry: 30d\n"),
    )
    .unwrap();
    let (code, out) = check_issuer_config(&cfg.path);
    assert_eq!(code, 1, "{out}");
    let at = format!("{path}:{}", lines + 3);
    assert!(
        out.contains(&at) && out.contains("rotate_evry"),
        "want {at}: {out}"
    );

    // A bad value.
    std::fs::write(&cfg.path, format!("{good}access_token_ttl: 5x\n")).unwrap();
    let (code, out) = check_issuer_config(&cfg.path);
    assert_eq!(code, 1, "{out}");
    let at = format!("{path}:{}", lines + 1);
    assert!(
        out.contains(&at) && out.contains("access_token_ttl"),
        "want {at}: {out}"
    );

    // A missing file.
    let (code, out) = check_issuer_config(&dir.path().join("missing.yaml"));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("missing.yaml"), "{out}");
}
