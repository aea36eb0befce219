//! End-to-end tests of the issuer's revocation feed (`GET /v1/revocations`, issue 13 item 1)
//! against the real binary, on SQLite and on PostgreSQL: every event that ends a session or a
//! subject's tokens appends its record; the long poll answers at once on a new record and
//! empty after `max_wait`; cursors, snapshots and the credential; pruning; a restart keeps the
//! sequence; two replicas serve one sequence and wake each other's readers.

use std::time::{Duration, Instant};

use portcullis_tests::issuer::*;
use portcullis_tests::on_both_backends;
use portcullis_tests::{client, tempdir};
use serde_json::{json, Value};

on_both_backends!(
    every_event_appends_its_record,
    long_poll_wakes_and_times_out,
    cursors_snapshots_and_credential,
    pruning_keeps_what_matters,
    replicas_share_the_sequence,
);

const PW: &str = "correct horse battery staple";

/// A short long poll, so that a read with nothing new costs the tests little.
const FEED: &str = "revocation_feed:\n  max_wait: 2s\n";

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Reads the feed after `cursor` (which must be retained): the records, the cursor moved on.
fn read_after(iss: &IssuerProc, cursor: &mut i64) -> Vec<Value> {
    let r = iss.revocations(Some(*cursor));
    assert_eq!(r.status, 200, "{}", r.text);
    let v = r.json();
    assert_eq!(v["snapshot"], false, "{v}");
    let next = v["next"].as_i64().expect("next");
    assert!(next >= *cursor, "{v}");
    *cursor = next;
    v["records"].as_array().expect("records").clone()
}

/// The one record the last event appended, checked to be of `kind` for `id`.
fn expect_one(iss: &IssuerProc, cursor: &mut i64, kind: &str, id: &str, what: &str) -> Value {
    let before = *cursor;
    let records = read_after(iss, cursor);
    assert_eq!(records.len(), 1, "{what}: {records:?}");
    let r = records[0].clone();
    assert_eq!(r["kind"], kind, "{what}: {r}");
    let field = if kind == "session" { "sid" } else { "sub" };
    assert_eq!(r[field], id, "{what}: {r}");
    assert_eq!(
        r["seq"].as_i64(),
        Some(before + 1),
        "{what}: contiguous: {r}"
    );
    assert_eq!(*cursor, before + 1, "{what}");
    // 15 min of access-token lifetime (the default) plus the default leeway of 60 s.
    let until = r["until"].as_i64().expect("until");
    assert!((until - now() - 960).abs() <= 5, "{what}: until {until}");
    if kind == "subject" {
        let nb = r["not_before"].as_i64().expect("not_before");
        assert!((now() - nb).abs() <= 5, "{what}: not_before {nb}");
    }
    r
}

fn sid_of(iss: &IssuerProc, access: &str) -> String {
    iss.verify(access)["sid"].as_str().expect("sid").to_string()
}

fn nothing_new(iss: &IssuerProc, cursor: &mut i64, what: &str) {
    let records = read_after(iss, cursor);
    assert!(records.is_empty(), "{what} appended {records:?}");
}

// ---------------------------------------------------------------------------------------------
// Every event kind appends its record
// ---------------------------------------------------------------------------------------------

fn every_event_appends_its_record(b: Backend) {
    let Some(db) = db_kind(b) else { return };
    let dir = tempdir();
    let extra = format!("{FEED}refresh:\n  reuse_grace: 0s\n");
    let iss = start_issuer(dir.path(), db, &extra);
    let alice = iss.create_user("alice@example.com", PW, &["editor", "viewer"]);
    let uid = alice["id"].as_str().expect("id").to_string();
    let mut cursor = 0;
    nothing_new(&iss, &mut cursor, "creating a user");

    // Logout.
    let p = iss.password_login("alice@example.com", PW).pair();
    nothing_new(&iss, &mut cursor, "a login");
    let r = post_json(
        &iss.url("/v1/auth/logout"),
        &json!({"refresh_token": p.refresh}),
    );
    assert!(r.status == 204 || r.status == 200, "{}", r.text);
    expect_one(
        &iss,
        &mut cursor,
        "session",
        &sid_of(&iss, &p.access),
        "logout",
    );
    // Logging out again appends nothing.
    post_json(
        &iss.url("/v1/auth/logout"),
        &json!({"refresh_token": p.refresh}),
    );
    nothing_new(&iss, &mut cursor, "a second logout");

    // Refresh-token reuse (no grace period).
    let p = iss.password_login("alice@example.com", PW).pair();
    let p2 = iss.refresh(&p.refresh).pair();
    nothing_new(&iss, &mut cursor, "a refresh");
    iss.refresh(&p.refresh)
        .assert_error(401, Some("invalid_grant"));
    expect_one(
        &iss,
        &mut cursor,
        "session",
        &sid_of(&iss, &p2.access),
        "refresh reuse",
    );

    // Admin session revocation.
    let p = iss.password_login("alice@example.com", PW).pair();
    let sid = sid_of(&iss, &p.access);
    let r = iss.admin_delete(&format!("/admin/sessions/{sid}"));
    assert_eq!(r.status, 204, "{}", r.text);
    expect_one(&iss, &mut cursor, "session", &sid, "admin session revoke");

    // API key revoked: the sessions it opened.
    let key = iss.create_api_key(&json!({"subject": uid, "name": "ci"}));
    let k = iss
        .api_key_login(key["api_key"].as_str().expect("api_key"))
        .pair();
    let r = iss.admin_delete(&format!(
        "/admin/api-keys/{}",
        key["id"].as_str().expect("key id")
    ));
    assert_eq!(r.status, 204, "{}", r.text);
    expect_one(
        &iss,
        &mut cursor,
        "session",
        &sid_of(&iss, &k.access),
        "API key revoked",
    );
    iss.refresh(&k.refresh)
        .assert_error(401, Some("invalid_grant"));

    // Role removal ends the tokens (subject record); adding a role does not.
    let r = iss.admin_patch(
        &format!("/admin/users/{uid}"),
        &json!({"roles": ["editor", "viewer", "author"]}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    nothing_new(&iss, &mut cursor, "adding a role");
    let r = iss.admin_patch(
        &format!("/admin/users/{uid}"),
        &json!({"roles": ["author"]}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    expect_one(&iss, &mut cursor, "subject", &uid, "role removal");

    // Password change by the user.
    let p = iss.password_login("alice@example.com", PW).pair();
    let new_pw = "an entirely different passphrase";
    let r = iss.patch_me(&p.access, &json!({"password": new_pw, "old_password": PW}));
    assert_eq!(r.status, 200, "{}", r.text);
    expect_one(&iss, &mut cursor, "subject", &uid, "password change");

    // Password reset (the CLI's set-password, through the same service as the API).
    let (code, out, err) = iss.cli(&["users", "set-password", &uid, PW]);
    assert_eq!(code, 0, "{out}{err}");
    expect_one(&iss, &mut cursor, "subject", &uid, "password reset");

    // User disabled, then deleted.
    let r = iss.admin_patch(&format!("/admin/users/{uid}"), &json!({"disabled": true}));
    assert_eq!(r.status, 200, "{}", r.text);
    expect_one(&iss, &mut cursor, "subject", &uid, "user disabled");
    let r = iss.admin_delete(&format!("/admin/users/{uid}"));
    assert!(r.status == 204 || r.status == 200, "{}", r.text);
    expect_one(&iss, &mut cursor, "subject", &uid, "user deleted");

    // Admin "revoke every session" of a subject.
    let bob = iss.create_user("bob@example.com", PW, &[]);
    let bob_id = bob["id"].as_str().expect("id");
    let r = iss.admin_delete(&format!("/admin/users/{bob_id}/sessions"));
    assert_eq!(r.status, 204, "{}", r.text);
    expect_one(&iss, &mut cursor, "subject", bob_id, "revoke all sessions");
}

// ---------------------------------------------------------------------------------------------
// Long poll
// ---------------------------------------------------------------------------------------------

fn long_poll_wakes_and_times_out(b: Backend) {
    let Some(db) = db_kind(b) else { return };
    let dir = tempdir();
    let iss = start_issuer(dir.path(), db, FEED);
    iss.create_user("carol@example.com", PW, &[]);
    let start = iss.revocations(None).json();
    assert_eq!(start["snapshot"], true, "{start}");
    let cursor = start["next"].as_i64().expect("next");

    // Nothing happens: an empty answer after max_wait (2 s), same cursor.
    let t = Instant::now();
    let v = iss.revocations(Some(cursor)).json();
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(1900) && waited < Duration::from_secs(4),
        "{waited:?}"
    );
    assert_eq!(v["records"], json!([]), "{v}");
    assert_eq!(v["next"].as_i64(), Some(cursor));
    assert_eq!(v["snapshot"], false);

    // A reader that asks for less (`wait`, its own timeout) is answered sooner; a negative
    // wait answers at once, a longer one is capped by max_wait.
    let feed_auth = format!("Bearer {}", iss.feed_token);
    for (wait, low, high) in [("1", 900, 1900), ("-5", 0, 900), ("3600", 1900, 4000)] {
        let t = Instant::now();
        let r = get_with(
            &iss.url(&format!("/v1/revocations?after={cursor}&wait={wait}")),
            Some(&feed_auth),
        );
        let waited = t.elapsed();
        assert_eq!(r.status, 200, "wait={wait}: {}", r.text);
        assert!(
            waited >= Duration::from_millis(low) && waited < Duration::from_millis(high),
            "wait={wait}: {waited:?}"
        );
    }
    let bad = get_with(
        &iss.url(&format!("/v1/revocations?after={cursor}&wait=soon")),
        Some(&feed_auth),
    );
    assert_eq!(bad.status, 400, "{}", bad.text);

    // A logout while a read waits: the read answers at once with it.
    let p = iss.password_login("carol@example.com", PW).pair();
    let sid = sid_of(&iss, &p.access);
    std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let t = Instant::now();
            (iss.revocations(Some(cursor)).json(), t.elapsed())
        });
        std::thread::sleep(Duration::from_millis(500));
        let logged_out = Instant::now();
        let r = send(
            client()
                .post(iss.url("/v1/auth/logout"))
                .header("Authorization", format!("Bearer {}", p.access)),
        );
        assert!(r.status == 204 || r.status == 200, "{}", r.text);
        let (v, waited) = reader.join().expect("reader");
        let lag = logged_out.elapsed();
        assert!(
            lag < Duration::from_millis(1000),
            "answered {lag:?} after the logout"
        );
        assert!(
            waited >= Duration::from_millis(400),
            "it waited: {waited:?}"
        );
        assert_eq!(v["records"][0]["sid"], sid.as_str(), "{v}");
        assert_eq!(v["next"].as_i64(), Some(cursor + 1), "{v}");
    });
}

// ---------------------------------------------------------------------------------------------
// Cursors, snapshots, credential, restart
// ---------------------------------------------------------------------------------------------

fn cursors_snapshots_and_credential(b: Backend) {
    let Some(db) = db_kind(b) else { return };
    let dir = tempdir();
    let mut iss = start_issuer(dir.path(), db, FEED);
    assert!(!iss.feed_token.is_empty(), "the feed token is generated");
    let url = iss.url("/v1/revocations?after=0");

    // The credential is required: none, a wrong one, the admin token, an access token.
    iss.create_user("dave@example.com", PW, &["admin"]);
    let p = iss.password_login("dave@example.com", PW).pair();
    for auth in [
        None,
        Some("Bearer wrong".to_string()),
        Some(format!("Bearer {}", iss.admin_token)),
        Some(format!("Bearer {}", p.access)),
        Some(format!("Basic {}", iss.feed_token)),
    ] {
        let r = get_with(&url, auth.as_deref());
        let body = r.assert_error(401, Some("invalid_token"));
        assert!(r.header("www-authenticate").is_some(), "{auth:?}: {body}");
    }
    // A malformed cursor.
    let r = get_with(
        &iss.url("/v1/revocations?after=soon"),
        Some(&format!("Bearer {}", iss.feed_token)),
    );
    r.assert_error(400, Some("invalid_request"));

    // Three logouts.
    let mut sids = Vec::new();
    for _ in 0..3 {
        let p = iss.password_login("dave@example.com", PW).pair();
        sids.push(sid_of(&iss, &p.access));
        post_json(
            &iss.url("/v1/auth/logout"),
            &json!({"refresh_token": p.refresh}),
        );
    }
    let all_sids = |v: &Value| -> Vec<String> {
        v["records"]
            .as_array()
            .expect("records")
            .iter()
            .map(|r| r["sid"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    // Without a cursor, and with one from the future: a snapshot of everything relevant.
    for after in [None, Some(99)] {
        let v = iss.revocations(after).json();
        assert_eq!(v["snapshot"], true, "{after:?}: {v}");
        assert_eq!(v["more"], false, "{v}");
        assert_eq!(all_sids(&v), sids, "{v}");
        assert_eq!(v["next"].as_i64(), Some(3), "{v}");
    }
    let v = iss.revocations(Some(1)).json();
    assert_eq!(v["snapshot"], false);
    assert_eq!(all_sids(&v), sids[1..], "{v}");

    // A restart keeps the sequence and the credential.
    let token = iss.feed_token.clone();
    iss.stop();
    iss.start_again();
    let p = iss.password_login("dave@example.com", PW).pair();
    post_json(
        &iss.url("/v1/auth/logout"),
        &json!({"refresh_token": p.refresh}),
    );
    let mut cursor = 3;
    let records = read_after(&iss, &mut cursor);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["seq"], 4);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("secrets/feed-token"))
            .expect("token")
            .trim(),
        token
    );
}

// ---------------------------------------------------------------------------------------------
// Pruning
// ---------------------------------------------------------------------------------------------

fn pruning_keeps_what_matters(b: Backend) {
    let Some(db) = db_kind(b) else { return };
    let dir = tempdir();
    // Records matter for 2 s (access-token lifetime, no leeway).
    let extra = "access_token_ttl: 2s\nrevocation_feed:\n  max_wait: 1s\n  leeway: 0s\n";
    let iss = start_issuer(dir.path(), db, extra);
    iss.create_user("erin@example.com", PW, &[]);
    let logout = || {
        let p = iss.password_login("erin@example.com", PW).pair();
        post_json(
            &iss.url("/v1/auth/logout"),
            &json!({"refresh_token": p.refresh}),
        );
        sid_of(&iss, &p.access)
    };
    logout();
    logout();
    std::thread::sleep(Duration::from_millis(3100));
    let fresh = logout();
    let (code, out, err) = iss.cli(&["purge"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("revocations: 2"), "{out}");

    // Cursor 0 (or 1) is older than what is retained: a snapshot of the one record that
    // still matters. Cursor 2 is retained: the same record, incrementally.
    for after in [0, 1] {
        let v = iss.revocations(Some(after)).json();
        assert_eq!(v["snapshot"], true, "{after}: {v}");
        assert_eq!(v["records"].as_array().map(Vec::len), Some(1), "{v}");
        assert_eq!(v["records"][0]["sid"], fresh.as_str());
        assert_eq!(v["next"], 3);
    }
    let v = iss.revocations(Some(2)).json();
    assert_eq!(v["snapshot"], false, "{v}");
    assert_eq!(v["records"][0]["seq"], 3, "{v}");
    // Once it has expired too, it is no longer handed out, and is pruned.
    std::thread::sleep(Duration::from_millis(3100));
    let v = iss.revocations(None).json();
    assert_eq!(v["records"], json!([]), "{v}");
    let (code, out, err) = iss.cli(&["purge"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("revocations: 1"), "{out}");
}

// ---------------------------------------------------------------------------------------------
// Replicas
// ---------------------------------------------------------------------------------------------

/// Two replicas on one database serve one sequence; a logout on A wakes a read waiting on B
/// (PostgreSQL: LISTEN/NOTIFY, within a second; SQLite file shared by two processes: the
/// readers' periodic re-check, within about two seconds).
fn replicas_share_the_sequence(b: Backend) {
    let Some(db) = db_kind(b) else { return };
    let (dir_a, dir_b) = (tempdir(), tempdir());
    let a = start_issuer_with(dir_a.path(), IssuerOptions::new(db).extra(FEED));
    // A replica: the same database (SQLite: A's file), `iss` and secrets.
    let mut opts = IssuerOptions::new(DbKind::Url(a.database_url.clone())).extra(FEED);
    opts.issuer = Some(a.issuer.clone());
    opts.secrets_dir = Some(dir_a.path().join("secrets"));
    opts.name = "issuer-b".into();
    let b_iss = start_issuer_with(dir_b.path(), opts);
    assert_eq!(a.feed_token, b_iss.feed_token);

    a.create_user("frank@example.com", PW, &[]);
    let start = b_iss.revocations(None).json();
    let cursor = start["next"].as_i64().expect("next");
    let bound = match b {
        Backend::Postgres => Duration::from_millis(1000),
        Backend::Sqlite => Duration::from_millis(2600),
    };
    for round in 0..3 {
        let p = a.password_login("frank@example.com", PW).pair();
        let sid = sid_of(&a, &p.access);
        let after = cursor + round;
        std::thread::scope(|s| {
            let reader = s.spawn(|| b_iss.revocations(Some(after)).json());
            std::thread::sleep(Duration::from_millis(400));
            let logged_out = Instant::now();
            post_json(
                &a.url("/v1/auth/logout"),
                &json!({"refresh_token": p.refresh}),
            );
            let v = reader.join().expect("reader");
            let lag = logged_out.elapsed();
            assert!(
                lag < bound,
                "round {round}: B answered {lag:?} after A's logout"
            );
            assert_eq!(v["records"][0]["sid"], sid.as_str(), "{v}");
            assert_eq!(v["records"][0]["seq"].as_i64(), Some(after + 1), "{v}");
        });
    }
    // The same sequence on both.
    let va = a.revocations(Some(cursor)).json();
    let vb = b_iss.revocations(Some(cursor)).json();
    assert_eq!(va, vb);
    assert_eq!(va["records"].as_array().map(Vec::len), Some(3), "{va}");
}
