//! End-to-end tests of the issuer's HTTP API against the real binary, each scenario on SQLite
//! and on PostgreSQL: JWKS and discovery, password login (admin- and CLI-created users, Basic,
//! lockout, timing), sign-up input handling, `/v1/users/me`, API keys (admin API and CLI),
//! refresh rotation and reuse detection, logout, and the admin API with key rotation.

use std::sync::Barrier;
use std::time::{Duration, Instant};

use base64::Engine as _;
use portcullis_tests::issuer::*;
use portcullis_tests::jwt;
use portcullis_tests::on_both_backends;
use portcullis_tests::{client, tempdir, wait_for};
use serde_json::{json, Value};

on_both_backends!(
    jwks_and_discovery,
    password_login,
    framework_errors_are_json,
    unknown_user_timing,
    signup,
    users_me,
    api_keys,
    api_key_of_disabled_user,
    refresh_rotation,
    admin_api,
    admin_patch_validates_metadata,
    roles_and_scopes_are_validated,
    passwords_are_unicode_normalised,
    key_rotation,
);

const PW: &str = "correct horse battery staple";

fn roles(claims: &Value) -> Vec<String> {
    let mut r: Vec<String> = claims["roles"]
        .as_array()
        .expect("roles array")
        .iter()
        .map(|v| v.as_str().expect("role string").to_string())
        .collect();
    r.sort();
    r
}

fn strs(v: &[&str]) -> Vec<String> {
    let mut r: Vec<String> = v.iter().map(|s| s.to_string()).collect();
    r.sort();
    r
}

// ---------------------------------------------------------------------------------------------
// 1. JWKS and discovery; every login's token verifies against the JWKS
// ---------------------------------------------------------------------------------------------

fn jwks_and_discovery(b: Backend) {
    let Some(db) = db_kind(b) else { return };
    let dir = tempdir();
    let iss = start_issuer(dir.path(), db, "");

    let url = iss.url("/.well-known/jwks.json");
    let r = get_with(&url, None);
    assert_eq!(r.status, 200, "{}", r.text);
    let cc = r.header("cache-control").expect("JWKS has Cache-Control");
    let max_age: u64 = cc
        .split(',')
        .find_map(|d| d.trim().strip_prefix("max-age="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("Cache-Control without max-age: {cc}"));
    assert!(max_age > 0, "{cc}");
    let etag = r.header("etag").expect("JWKS has an ETag");
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "{:?}",
        r.headers
    );
    let jwks = r.json();
    let keys = jwks["keys"].as_array().expect("keys array");
    assert!(!keys.is_empty(), "{jwks}");
    for k in keys {
        for private in ["d", "p", "q", "dp", "dq", "qi", "k", "oth"] {
            assert!(k.get(private).is_none(), "private member {private}: {k}");
        }
        assert!(
            ["EC", "RSA", "OKP"].contains(&k["kty"].as_str().unwrap_or("")),
            "{k}"
        );
        assert_eq!(
            k["kid"].as_str().expect("kid"),
            jwt::jwk_thumbprint(k),
            "kid is the RFC 7638 thumbprint"
        );
    }

    // Conditional GET.
    let r = send(client().get(&url).header("If-None-Match", &etag));
    assert_eq!(r.status, 304, "{}", r.text);
    assert!(r.text.is_empty(), "304 has no body: {:?}", r.text);
    assert_eq!(r.header("etag").as_deref(), Some(etag.as_str()));
    let r = send(
        client()
            .get(&url)
            .header("If-None-Match", "\"something-else\""),
    );
    assert_eq!(r.status, 200);

    // Discovery.
    let r = get_with(&iss.url("/.well-known/openid-configuration"), None);
    assert_eq!(r.status, 200, "{}", r.text);
    let d = r.json();
    assert_eq!(d["issuer"], iss.issuer.as_str());
    assert_eq!(d["jwks_uri"], iss.url("/.well-known/jwks.json"));
    let via_discovery = get_with(d["jwks_uri"].as_str().unwrap(), None).json();
    assert_eq!(via_discovery, jwks);

    // Every login's tokens verify against the published JWKS.
    let user = iss.create_user("alice@example.com", PW, &["admin", "editor"]);
    let uid = user["id"].as_str().unwrap();
    let mut jtis = Vec::new();
    let check = |pair: &Pair, amr: &str| -> Value {
        let c = iss.verify(&pair.access);
        assert_eq!(c["iss"], iss.issuer.as_str(), "{c}");
        assert_eq!(c["aud"], "demo", "{c}");
        assert_eq!(c["amr"], json!([amr]), "{c}");
        let now = jwt::now();
        let (iat, exp, nbf, at) = (
            c["iat"].as_i64().unwrap(),
            c["exp"].as_i64().unwrap(),
            c["nbf"].as_i64().unwrap(),
            c["auth_time"].as_i64().unwrap(),
        );
        assert!((iat - now).abs() <= 5 && nbf <= now + 1 && at <= iat, "{c}");
        assert_eq!(exp - iat, 900, "default access_token_ttl 15m: {c}");
        assert!(!c["sid"].as_str().unwrap().is_empty() && !c["jti"].as_str().unwrap().is_empty());
        let kid = token_kid(&pair.access);
        assert!(iss.jwks_kids().contains(&kid), "kid {kid} is published");
        c
    };

    let pw = iss.password_login("alice@example.com", PW).pair();
    let c = check(&pw, "pwd");
    assert_eq!(c["sub"], uid);
    assert_eq!(roles(&c), strs(&["admin", "editor"]));
    assert_eq!(c["scope"], "");
    jtis.push(c["jti"].clone());

    let su = iss
        .signup(&json!({"email": "bob@example.com", "password": PW}))
        .pair();
    let c = check(&su, "pwd");
    let me = iss.me(&su.access).json();
    assert_eq!(c["sub"], me["id"]);
    jtis.push(c["jti"].clone());

    let anon = iss.anonymous_login().pair();
    let c = check(&anon, "anon");
    jtis.push(c["jti"].clone());

    let key = iss.create_api_key(&json!({"subject": "svc-1", "scopes": ["s:1"], "roles": ["r1"]}));
    let kp = iss.api_key_login(key["api_key"].as_str().unwrap()).pair();
    let c = check(&kp, "key");
    assert_eq!(c["sub"], "svc-1");
    jtis.push(c["jti"].clone());

    let refreshed = iss.refresh(&pw.refresh).pair();
    let c = check(&refreshed, "pwd");
    assert_eq!(c["sub"], uid);
    assert_eq!(
        c["sid"],
        iss.verify(&pw.access)["sid"],
        "refresh keeps the session"
    );
    jtis.push(c["jti"].clone());

    let mut unique = jtis.clone();
    unique.sort_by_key(|v| v.to_string());
    unique.dedup();
    assert_eq!(
        unique.len(),
        jtis.len(),
        "jti is unique per token: {jtis:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Password login
// ---------------------------------------------------------------------------------------------

fn password_login(b: Backend) {
    let Some(db) = db_kind(b) else { return };
    let dir = tempdir();
    let iss = start_issuer_with(
        dir.path(),
        IssuerOptions::new(db).password("max_failures_per_account: 3"),
    );

    // A user from the admin API and one from the CLI (against the same database).
    let alice = iss.create_user("alice@example.com", PW, &["editor", "admin"]);
    let (code, out, err) = iss.cli(&[
        "users",
        "add",
        "--email",
        "bob@example.com",
        "--password",
        "tr0ub4dor and 3 more words",
        "--roles",
        "ops,auditor",
    ]);
    assert_eq!(code, 0, "users add: {out}{err}");
    let bob_id = out.trim().to_string();
    assert!(
        !bob_id.is_empty() && !bob_id.contains(char::is_whitespace),
        "{out}"
    );
    let (code, out, err) = iss.cli(&["users", "list"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&bob_id) && out.contains("alice@example.com"),
        "{out}"
    );

    // JSON body.
    let pair = iss.password_login("alice@example.com", PW).pair();
    let c = iss.verify(&pair.access);
    assert_eq!(c["sub"], alice["id"]);
    assert_eq!(c["amr"], json!(["pwd"]));
    assert_eq!(roles(&c), strs(&["admin", "editor"]));
    // The login is case-insensitive in the email.
    iss.password_login("Alice@Example.COM", PW).pair();

    let pair = iss
        .password_login("bob@example.com", "tr0ub4dor and 3 more words")
        .pair();
    let c = iss.verify(&pair.access);
    assert_eq!(c["sub"], bob_id.as_str());
    assert_eq!(roles(&c), strs(&["auditor", "ops"]));

    // HTTP Basic.
    let basic = |user: &str, pw: &str| {
        let cred = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"));
        send(
            client()
                .post(iss.url("/v1/auth/password"))
                .header("Authorization", format!("Basic {cred}")),
        )
    };
    let pair = basic("alice@example.com", PW).pair();
    let c = iss.verify(&pair.access);
    assert_eq!(c["sub"], alice["id"]);
    assert_eq!(c["amr"], json!(["pwd"]));
    basic("alice@example.com", "not the password").assert_error(401, Some("invalid_grant"));

    // A username account, and a password with colons through Basic.
    let r = iss.admin_post(
        "/admin/users",
        &json!({"username": "Hank", "password": "pass:word:with:colons", "roles": ["ops"]}),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    let hank = r.json();
    let r = post_json(
        &iss.url("/v1/auth/password"),
        &json!({"username": "hank", "password": "pass:word:with:colons"}),
    );
    assert_eq!(iss.verify(&r.pair().access)["sub"], hank["id"]);
    let pair = basic("hank", "pass:word:with:colons").pair();
    assert_eq!(iss.verify(&pair.access)["sub"], hank["id"]);

    // Wrong password and unknown user: the same 401.
    let r = iss.password_login("alice@example.com", "wrong password!!");
    let wrong = r.assert_error(401, Some("invalid_grant"));
    assert!(r.header("www-authenticate").is_some(), "{:?}", r.headers);
    let unknown = iss
        .password_login("nobody@example.com", PW)
        .assert_error(401, Some("invalid_grant"));
    assert_eq!(wrong, unknown, "no account enumeration through the error");
    iss.password_login("' OR '1'='1", "' OR '1'='1")
        .assert_error(401, Some("invalid_grant"));

    // Per-account failure limit: after 3 failures even the right password gets 429.
    iss.create_user("carol@example.com", PW, &[]);
    for i in 0..3 {
        let r = iss.password_login("carol@example.com", "not carol's password");
        assert_eq!(r.status, 401, "failure {i}: {}", r.text);
    }
    let r = iss.password_login("carol@example.com", PW);
    r.assert_error(429, None);
    let retry: i64 = r
        .header("retry-after")
        .expect("429 has Retry-After")
        .parse()
        .expect("Retry-After is seconds");
    assert!(retry > 0, "{retry}");
    let cred = base64::engine::general_purpose::STANDARD.encode(format!("carol@example.com:{PW}"));
    let r = send(
        client()
            .post(iss.url("/v1/auth/password"))
            .header("Authorization", format!("Basic {cred}")),
    );
    assert_eq!(r.status, 429, "Basic is limited too: {}", r.text);
    // Only that account is locked.
    iss.password_login("alice@example.com", PW).pair();

    // Missing or malformed credentials are 400, not 401/5xx.
    post_json(&iss.url("/v1/auth/password"), &json!({"password": PW}))
        .assert_error(400, Some("invalid_request"));
}

/// An unknown account costs about as much as a wrong password for a known one (default
/// argon2 parameters, interleaved samples, medians within 3×).
fn unknown_user_timing(b: Backend) {
    let Some(db) = db_kind(b) else { return };
    let dir = tempdir();
    let mut opts = IssuerOptions::new(db)
        .password("max_failures_per_account: 1000")
        .password("max_failures_per_ip: 1000");
    opts.default_argon = true;
    let iss = start_issuer_with(dir.path(), opts);
    iss.create_user("timing@example.com", PW, &[]);

    let time = |email: &str| {
        let start = Instant::now();
        let r = iss.password_login(email, "definitely wrong password");
        assert_eq!(r.status, 401, "{}", r.text);
        start.elapsed()
    };
    // Warm up both paths once.
    time("timing@example.com");
    time("ghost@example.com");
    let (mut known, mut unknown) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        known.push(time("timing@example.com"));
        unknown.push(time("ghost@example.com"));
    }
    known.sort();
    unknown.sort();
    let (k, u) = (known[2], unknown[2]);
    assert!(
        u * 3 >= k && k * 3 >= u,
        "median unknown-user {u:?} vs known-user wrong password {k:?} (all: {unknown:?} / {known:?})"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Sign-up
// ---------------------------------------------------------------------------------------------

fn signup(b: Backend) {
    let Some(db) = db_kind(b) else { return };
    let dir = tempdir();
    let iss = start_issuer(dir.path(), db, "");
    let url = iss.url("/v1/users");

    let r = iss.signup(&json!({"email": "new@example.com", "password": PW}));
    assert_eq!(r.status, 201, "{}", r.text);
    let pair = r.pair();
    let c = iss.verify(&pair.access);
    assert_eq!(c["amr"], json!(["pwd"]));
    let me = iss.me(&pair.access).json();
    assert_eq!(me["email"], "new@example.com");
    assert_eq!(me["id"], c["sub"]);
    // The new account logs in.
    iss.password_login("new@example.com", PW).pair();

    // Duplicate email (also in another case) → 409.
    iss.signup(&json!({"email": "new@example.com", "password": PW}))
        .assert_error(409, Some("conflict"));
    iss.signup(&json!({"email": "NEW@Example.com", "password": PW}))
        .assert_error(409, Some("conflict"));

    // Weak passwords → 422.
    iss.signup(&json!({"email": "short@example.com", "password": "short"}))
        .assert_error(422, Some("weak_password"));
    iss.signup(&json!({"email": "common@example.com", "password": "password"}))
        .assert_error(422, Some("weak_password"));
    iss.signup(&json!({"email": "common@example.com", "password": "12345678"}))
        .assert_error(422, Some("weak_password"));

    // Malformed JSON → 400; wrong or missing content type → 415; unknown fields or a bad
    // email → 400; > 64 KiB → 413. None of these is a 5xx.
    post_raw(&url, Some("application/json"), b"{\"email\": \"x@".to_vec())
        .assert_error(400, Some("invalid_request"));
    post_raw(&url, Some("application/json"), b"[1,2,3]".to_vec()).assert_error(400, None);
    let valid = serde_json::to_vec(&json!({"email": "ct@example.com", "password": PW})).unwrap();
    post_raw(&url, Some("text/plain"), valid.clone()).assert_error(415, None);
    post_raw(
        &url,
        Some("application/x-www-form-urlencoded"),
        valid.clone(),
    )
    .assert_error(415, None);
    post_raw(&url, None, valid).assert_error(415, None);
    iss.signup(&json!({"email": "x@example.com", "password": PW, "roles": ["admin"]}))
        .assert_error(400, Some("invalid_request"));
    iss.signup(&json!({"email": "not-an-email", "password": PW}))
        .assert_error(400, Some("invalid_request"));
    let huge = json!({"email": "big@example.com", "password": PW,
                      "user_metadata": {"blob": "x".repeat(70 * 1024)}});
    let r = iss.signup(&huge);
    assert!(
        r.status < 500,
        "oversized body got {}: {}",
        r.status,
        r.text
    );
    assert_eq!(r.status, 413, "{}", r.text);
    // (Its body's shape is checked in `framework_errors_are_json`.)
    // Nothing of the refused requests was stored.
    iss.password_login("ct@example.com", PW)
        .assert_error(401, None);
    iss.password_login("big@example.com", PW)
        .assert_error(401, None);

    // SQL-injection-shaped input is data. (Emails are stored lower-cased and may not contain
    // white space, so the payloads are lower case and use /**/ instead of spaces.)
    let email = "x');drop/**/table/**/users;--@example.com";
    let meta = json!({
        "note": "it's \"quoted\" '); DROP TABLE users;-- \\ ` $1 %s",
        "o'reilly": ["a\"b", "c'd", "'; DELETE FROM sessions; --"],
        "nested": {"k\"ey": {"'": "\""}},
    });
    let pair = iss
        .signup(&json!({"email": email, "password": PW, "user_metadata": meta}))
        .pair();
    let me = iss.me(&pair.access).json();
    assert_eq!(me["email"], email);
    assert_eq!(me["user_metadata"], meta);
    // The admin API checks addresses the way sign-up does (it used to store this one as
    // is), and stores an injection-shaped address as data too.
    let spaced = "x'); drop table users;--@example.com";
    let r = iss.admin_post("/admin/users", &json!({"email": spaced, "password": PW}));
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(
        r.json()["error_description"],
        "`email` is not a valid address"
    );
    let by_admin = "y');drop/**/table/**/users;--@example.com";
    let u = iss.create_user(by_admin, PW, &[]);
    assert_eq!(u["email"], by_admin);
    let pair = iss.password_login(by_admin, PW).pair();
    assert_eq!(iss.me(&pair.access).json()["email"], by_admin);
    // The users table is intact.
    iss.password_login("new@example.com", PW).pair();
    iss.password_login(email, PW).pair();
    let list = iss.admin_get("/admin/users").json();
    assert_eq!(list["users"].as_array().unwrap().len(), 3, "{list}");
}

/// Errors produced before a handler runs (body limit, query-string parsing) keep the
/// contract's `{"error", "error_description"}` shape, like the handlers' own errors.
fn framework_errors_are_json(b: Backend) {
    let Some(db) = db_kind(b) else { return };
    let dir = tempdir();
    let iss = start_issuer(dir.path(), db, "");
    let big = serde_json::to_vec(&json!({"refresh_token": "x".repeat(70 * 1024)})).unwrap();
    let mut failures = Vec::new();
    let mut expect = |what: &str, r: Resp, status: u16| {
        let shaped = serde_json::from_str::<Value>(&r.text)
            .is_ok_and(|v| v["error"].is_string() && v["error_description"].is_string());
        if r.status != status || !shaped {
            failures.push(format!(
                "{what}: want {status} with a JSON error body, got {} {:?} (content-type {:?})",
                r.status,
                r.text,
                r.header("content-type")
            ));
        }
    };
    // Handler-level errors for comparison (these already have the shape).
    expect(
        "unknown path",
        get_with(&iss.url("/no/such/path"), None),
        404,
    );
    expect(
        "wrong method",
        send(client().put(iss.url("/v1/users/me"))),
        405,
    );
    // Body larger than 64 KiB.
    expect(
        "POST /v1/auth/refresh with 70 KiB",
        post_raw(
            &iss.url("/v1/auth/refresh"),
            Some("application/json"),
            big.clone(),
        ),
        413,
    );
    expect(
        "POST /v1/users with 70 KiB",
        post_raw(&iss.url("/v1/users"), Some("application/json"), big.clone()),
        413,
    );
    expect(
        "POST /admin/users with 70 KiB",
        send(
            client()
                .post(iss.admin_url("/admin/users"))
                .header("Authorization", format!("Bearer {}", iss.admin_token))
                .header("Content-Type", "application/json")
                .body(big),
        ),
        413,
    );
    // Query strings the handler cannot parse.
    expect(
        "GET /admin/users?limit=abc",
        iss.admin_get("/admin/users?limit=abc"),
        400,
    );
    expect(
        "GET /admin/api-keys?subject=a&subject=b",
        iss.admin_get("/admin/api-keys?subject=a&subject=b"),
        400,
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// 4. /v1/users/me
// ---------------------------------------------------------------------------------------------

fn users_me(b: Backend) {
    let Some(db) = db_kind(b) else { return };
    let dir = tempdir();
    let iss = start_issuer(dir.path(), db, "");

    let pair = iss
        .signup(&json!({"email": "dave@example.com", "password": PW,
                        "user_metadata": {"lang": "en"}}))
        .pair();
    let sub = iss.verify(&pair.access)["sub"].clone();
    let r = iss.me(&pair.access);
    assert_eq!(r.status, 200, "{}", r.text);
    let me = r.json();
    assert_eq!(me["id"], sub);
    assert_eq!(me["email"], "dave@example.com");
    assert_eq!(me["anonymous"], false);
    assert_eq!(me["user_metadata"], json!({"lang": "en"}));
    assert!(
        !r.text.contains("argon2") && me.get("password_hash").is_none(),
        "{}",
        r.text
    );

    // Without a valid token → 401.
    get_with(&iss.url("/v1/users/me"), None).assert_error(401, None);
    iss.me("not.a.token").assert_error(401, None);
    iss.me(&jwt::corrupt_signature(&pair.access))
        .assert_error(401, None);

    // Profile updates.
    let r = iss.patch_me(&pair.access, &json!({"user_metadata": {"theme": "dark"}}));
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["user_metadata"], json!({"theme": "dark"}));
    assert_eq!(
        iss.me(&pair.access).json()["user_metadata"],
        json!({"theme": "dark"})
    );
    iss.patch_me(&pair.access, &json!({"user_metadata": "nope"}))
        .assert_error(400, None);
    iss.patch_me(&pair.access, &json!({"roles": ["admin"]}))
        .assert_error(400, None);

    // An email that belongs to someone else → 409, nothing changed.
    iss.create_user("taken@example.com", PW, &[]);
    iss.patch_me(&pair.access, &json!({"email": "taken@example.com"}))
        .assert_error(409, Some("conflict"));
    assert_eq!(iss.me(&pair.access).json()["email"], "dave@example.com");

    // A password change needs the old password.
    let new_pw = "a brand new passphrase";
    iss.patch_me(&pair.access, &json!({"password": new_pw}))
        .assert_error(400, None);
    iss.patch_me(
        &pair.access,
        &json!({"password": new_pw, "old_password": "not the old one"}),
    )
    .assert_error(401, None);
    iss.password_login("dave@example.com", PW).pair();
    let r = iss.patch_me(
        &pair.access,
        &json!({"password": new_pw, "old_password": PW}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    iss.password_login("dave@example.com", PW)
        .assert_error(401, None);
    let c = iss.verify(&iss.password_login("dave@example.com", new_pw).pair().access);
    assert_eq!(c["sub"], sub);

    // Anonymous → real account, same subject.
    let r = iss.anonymous_login();
    let anon = r.pair();
    let ac = iss.verify(&anon.access);
    assert_eq!(ac["amr"], json!(["anon"]));
    let me = iss.me(&anon.access).json();
    assert_eq!(me["anonymous"], true);
    assert_eq!(me["id"], ac["sub"]);
    assert!(me["email"].is_null(), "{me}");
    let r = iss.patch_me(
        &anon.access,
        &json!({"email": "Upgraded@Example.com", "password": "upgrade passphrase 1"}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    let me = r.json();
    assert_eq!(me["anonymous"], false, "{me}");
    assert_eq!(me["id"], ac["sub"], "same subject after the upgrade");
    assert_eq!(me["email"], "upgraded@example.com");
    let c = iss.verify(
        &iss.password_login("upgraded@example.com", "upgrade passphrase 1")
            .pair()
            .access,
    );
    assert_eq!(c["sub"], ac["sub"]);
    assert_eq!(c["amr"], json!(["pwd"]));
    // The anonymous session still works, same subject.
    let c = iss.verify(&iss.refresh(&anon.refresh).pair().access);
    assert_eq!(c["sub"], ac["sub"]);
}

// ---------------------------------------------------------------------------------------------
// 5. API keys
// ---------------------------------------------------------------------------------------------

/// `key` with one character of its secret part changed (still well-formed).
fn modified(key: &str) -> String {
    let mut chars: Vec<char> = key.chars().collect();
    let last = chars.len() - 1;
    chars[last] = if chars[last] == 'a' { 'b' } else { 'a' };
    chars.into_iter().collect()
}

fn api_keys(b: Backend) {
    let Some(db) = db_kind(b) else { return };
    let dir = tempdir();
    let iss = start_issuer(dir.path(), db, "");

    // Expiring key first, so its two seconds pass while the rest runs.
    let expiring = iss.create_api_key(&json!({"subject": "svc-temp", "expires_in": 1}));
    let expiring_at = Instant::now();

    let created = iss.create_api_key(&json!({
        "subject": "svc-orders", "name": "orders",
        "scopes": ["orders:read", "orders:write"], "roles": ["service"],
    }));
    let secret = created["api_key"]
        .as_str()
        .expect("secret in the create answer");
    let id = created["id"].as_str().unwrap();
    assert!(secret.starts_with("pk_"), "{secret}");

    // Never in a listing.
    let r = iss.admin_get("/admin/api-keys");
    assert_eq!(r.status, 200, "{}", r.text);
    let listed = r.json()["api_keys"].as_array().unwrap().clone();
    assert!(listed.iter().any(|k| k["id"] == id), "{}", r.text);
    let secret_part = secret.rsplit('_').next().unwrap();
    assert!(
        !r.text.contains(secret_part),
        "secret in the list: {}",
        r.text
    );
    assert!(listed.iter().all(|k| k.get("api_key").is_none()));

    // Login with the body and with the header.
    let check = |pair: &Pair| {
        let c = iss.verify(&pair.access);
        assert_eq!(c["sub"], "svc-orders");
        assert_eq!(c["scope"], "orders:read orders:write");
        assert_eq!(c["roles"], json!(["service"]));
        assert_eq!(c["amr"], json!(["key"]));
    };
    let pair = iss.api_key_login(secret).pair();
    check(&pair);
    let r = send(
        client()
            .post(iss.url("/v1/auth/api-key"))
            .header("Authorization", format!("ApiKey {secret}")),
    );
    check(&r.pair());
    // The refreshed token keeps the key's grant.
    check(&iss.refresh(&pair.refresh).pair());

    // A key bound to a user's id names that user and carries the key's grant.
    let user = iss.create_user("owner@example.com", PW, &["member"]);
    let k =
        iss.create_api_key(&json!({"subject": user["id"], "scopes": ["x:y"], "roles": ["bot"]}));
    let owned = iss.api_key_login(k["api_key"].as_str().unwrap()).pair();
    let c = iss.verify(&owned.access);
    assert_eq!(c["sub"], user["id"]);
    assert_eq!(c["scope"], "x:y");
    assert_eq!(c["roles"], json!(["bot"]));
    // Refreshing that session keeps the key's grant, never the account's own roles.
    let c = iss.verify(&iss.refresh(&owned.refresh).pair().access);
    assert_eq!(c["roles"], json!(["bot"]), "{c}");

    // Modified, unknown and malformed keys.
    iss.api_key_login(&modified(secret))
        .assert_error(401, Some("invalid_client"));
    let mut prefix_changed: Vec<char> = secret.chars().collect();
    prefix_changed[3] = if prefix_changed[3] == 'a' { 'b' } else { 'a' };
    iss.api_key_login(&prefix_changed.into_iter().collect::<String>())
        .assert_error(401, Some("invalid_client"));
    iss.api_key_login("pk_nonsense").assert_error(401, None);
    iss.api_key_login(&secret.to_uppercase())
        .assert_error(401, None);

    // Revoked.
    let r = iss.admin_delete(&format!("/admin/api-keys/{id}"));
    assert_eq!(r.status, 204, "{}", r.text);
    iss.api_key_login(secret)
        .assert_error(401, Some("invalid_client"));
    let r = iss.admin_get("/admin/api-keys");
    let k = r.json()["api_keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id)
        .cloned()
        .unwrap();
    assert!(k["revoked_at"].is_i64(), "{k}");

    // Expired.
    let wait = Duration::from_millis(2100).saturating_sub(expiring_at.elapsed());
    std::thread::sleep(wait);
    iss.api_key_login(expiring["api_key"].as_str().unwrap())
        .assert_error(401, Some("invalid_client"));

    // The CLI, against the running service's database and pepper.
    let (code, out, err) = iss.cli(&[
        "api-keys",
        "create",
        "--subject",
        "svc-cli",
        "--name",
        "cli",
        "--scopes",
        "a:read,b:write",
        "--roles",
        "robot",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("no {name} in {out}"))
    };
    let (cli_id, cli_key) = (field("id:"), field("api key:"));
    let c = iss.verify(&iss.api_key_login(&cli_key).pair().access);
    assert_eq!(c["sub"], "svc-cli");
    assert_eq!(c["scope"], "a:read b:write");
    assert_eq!(c["roles"], json!(["robot"]));
    let (code, out, err) = iss.cli(&["api-keys", "list"]);
    assert_eq!(code, 0, "{err}");
    let line = out
        .lines()
        .find(|l| l.starts_with(&cli_id))
        .unwrap_or_else(|| panic!("{cli_id} not listed: {out}"));
    assert!(
        line.contains("svc-cli") && line.contains("active"),
        "{line}"
    );
    assert!(!out.contains(cli_key.rsplit('_').next().unwrap()), "{out}");
    let (code, out, err) = iss.cli(&["api-keys", "revoke", &cli_id]);
    assert_eq!(code, 0, "{out}{err}");
    iss.api_key_login(&cli_key)
        .assert_error(401, Some("invalid_client"));
    let (_, out, _) = iss.cli(&["api-keys", "list"]);
    let line = out.lines().find(|l| l.starts_with(&cli_id)).unwrap();
    assert!(line.contains("revoked"), "{line}");
}

/// An API key bound to a user account stops working when the account is disabled, like the
/// account's password login and refresh tokens do.
fn api_key_of_disabled_user(b: Backend) {
    let Some(db) = db_kind(b) else { return };
    let dir = tempdir();
    let iss = start_issuer(dir.path(), db, "");
    let user = iss.create_user("ivy@example.com", PW, &[]);
    let id = user["id"].as_str().unwrap();
    let key = iss.create_api_key(&json!({"subject": id, "roles": ["bot"]}));
    let secret = key["api_key"].as_str().unwrap();
    iss.api_key_login(secret).pair();
    let r = iss.admin_patch(&format!("/admin/users/{id}"), &json!({"disabled": true}));
    assert_eq!(r.status, 200, "{}", r.text);
    // The account itself is shut: password login and refresh are refused.
    iss.password_login("ivy@example.com", PW)
        .assert_error(401, None);
    // Its API key must be too.
    let r = iss.api_key_login(secret);
    let detail = if r.status == 200 {
        let p = r.pair();
        format!(
            "; the token's /v1/users/me answers {}",
            iss.me(&p.access).status
        )
    } else {
        String::new()
    };
    assert_eq!(
        r.status, 401,
        "API key of a disabled account still logs in: {}{detail}",
        r.text
    );
}

// ---------------------------------------------------------------------------------------------
// 6. Refresh rotation, reuse detection, logout
// ---------------------------------------------------------------------------------------------

fn refresh_rotation(b: Backend) {
    let Some(db) = db_kind(b) else { return };
    let dir = tempdir();
    let iss = start_issuer(dir.path(), db, "refresh:\n  reuse_grace: 2s\n");
    iss.create_user("erin@example.com", PW, &["member"]);

    // Rotation: a new refresh token every time, same session.
    let p0 = iss.password_login("erin@example.com", PW).pair();
    let sid = iss.verify(&p0.access)["sid"].clone();
    let p1 = iss.refresh(&p0.refresh).pair();
    let p2 = iss.refresh(&p1.refresh).pair();
    assert!(p1.refresh != p0.refresh && p2.refresh != p1.refresh && p2.refresh != p0.refresh);
    assert_eq!(iss.verify(&p2.access)["sid"], sid);
    let rotated_at = Instant::now();

    // Two parallel refreshes of the same token (a client racing itself): both succeed.
    let barrier = Barrier::new(2);
    let results: Vec<Resp> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    iss.refresh(&p2.refresh)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let racers: Vec<Pair> = results.iter().map(Resp::pair).collect();
    assert_ne!(racers[0].refresh, racers[1].refresh);
    for p in &racers {
        assert_eq!(iss.verify(&p.access)["sid"], sid);
    }
    assert_eq!(iss.me(&racers[0].access).status, 200);

    // Ten parallel refreshes of one token on one process: no 5xx, all within the grace.
    let p3 = iss.refresh(&racers[0].refresh).pair();
    let barrier = Barrier::new(10);
    let results: Vec<Resp> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..10)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    iss.refresh(&p3.refresh)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let statuses: Vec<u16> = results.iter().map(|r| r.status).collect();
    assert!(statuses.iter().all(|s| *s < 500), "{statuses:?}");
    assert!(statuses.contains(&200), "{statuses:?}");
    let racers: Vec<Pair> = racers
        .into_iter()
        .chain(results.iter().filter(|r| r.status == 200).map(Resp::pair))
        .collect();
    // Another session of the same user, which reuse detection must leave alone.
    let other = iss.password_login("erin@example.com", PW).pair();

    // Unknown refresh tokens.
    iss.refresh("not-a-refresh-token")
        .assert_error(401, Some("invalid_grant"));
    // An access token is not a refresh token, and a refresh token is not an access token.
    iss.refresh(&p2.access)
        .assert_error(401, Some("invalid_grant"));
    iss.me(&racers[1].refresh).assert_error(401, None);
    send(
        client()
            .post(iss.url("/v1/auth/logout"))
            .header("Authorization", format!("Bearer {}", racers[1].refresh)),
    )
    .assert_error(401, None);

    // After the grace period, presenting a rotated token revokes the whole session.
    std::thread::sleep(Duration::from_millis(3200).saturating_sub(rotated_at.elapsed()));
    iss.refresh(&p1.refresh)
        .assert_error(401, Some("invalid_grant"));
    for p in &racers {
        iss.refresh(&p.refresh)
            .assert_error(401, Some("invalid_grant"));
        iss.me(&p.access).assert_error(401, None);
    }

    // Only that session: the user's other session still refreshes.
    let other = iss.refresh(&other.refresh).pair();
    assert_eq!(iss.me(&other.access).status, 200);

    // Logout with the access token revokes the session.
    let q = iss.password_login("erin@example.com", PW).pair();
    let r = send(
        client()
            .post(iss.url("/v1/auth/logout"))
            .header("Authorization", format!("Bearer {}", q.access)),
    );
    assert!(
        r.status == 204 || r.status == 200,
        "{} {}",
        r.status,
        r.text
    );
    iss.refresh(&q.refresh).assert_error(401, None);
    iss.me(&q.access).assert_error(401, None);

    // Logout with the refresh token does too.
    let q = iss.password_login("erin@example.com", PW).pair();
    let r = post_json(
        &iss.url("/v1/auth/logout"),
        &json!({"refresh_token": q.refresh}),
    );
    assert!(
        r.status == 204 || r.status == 200,
        "{} {}",
        r.status,
        r.text
    );
    iss.refresh(&q.refresh).assert_error(401, None);
    iss.me(&q.access).assert_error(401, None);
}

// ---------------------------------------------------------------------------------------------
// 7. Admin API
// ---------------------------------------------------------------------------------------------

fn admin_api(b: Backend) {
    let Some(db) = db_kind(b) else { return };
    let dir = tempdir();
    let iss = start_issuer(dir.path(), db, "");

    // The admin token is required.
    get_with(&iss.admin_url("/admin/users"), None).assert_error(401, None);
    get_with(&iss.admin_url("/admin/users"), Some("Bearer wrong-token")).assert_error(401, None);
    get_with(
        &iss.admin_url("/admin/users"),
        Some(&format!("Basic {}", iss.admin_token)),
    )
    .assert_error(401, None);
    post_json_with(
        &iss.admin_url("/admin/users"),
        Some("Bearer wrong-token"),
        &json!({"email": "sneaky@example.com", "password": PW}),
    )
    .assert_error(401, None);
    post_json(&iss.admin_url("/admin/keys/rotate"), &json!({})).assert_error(401, None);
    // An access token opens the admin API only with role admin and an active session.
    iss.create_user("root@example.com", PW, &["admin"]);
    iss.create_user("plain@example.com", PW, &["viewer"]);
    let root = iss.password_login("root@example.com", PW).pair();
    let plain = iss.password_login("plain@example.com", PW).pair();
    let r = get_with(
        &iss.admin_url("/admin/users"),
        Some(&format!("Bearer {}", root.access)),
    );
    assert_eq!(r.status, 200, "admin-role access token: {}", r.text);
    let r = get_with(
        &iss.admin_url("/admin/users"),
        Some(&format!("Bearer {}", plain.access)),
    );
    assert!(
        r.status == 403 || r.status == 401,
        "non-admin token: {} {}",
        r.status,
        r.text
    );
    r.assert_error(r.status, None);
    get_with(
        &iss.admin_url("/admin/users"),
        Some(&format!("Bearer {}", jwt::corrupt_signature(&root.access))),
    )
    .assert_error(401, None);
    let r = send(
        client()
            .post(iss.url("/v1/auth/logout"))
            .header("Authorization", format!("Bearer {}", root.access)),
    );
    assert!(r.status < 300, "{}", r.text);
    let r = get_with(
        &iss.admin_url("/admin/users"),
        Some(&format!("Bearer {}", root.access)),
    );
    assert!(
        r.status == 403 || r.status == 401,
        "logged-out admin token: {} {}",
        r.status,
        r.text
    );
    // And the admin API is not on the public listener.
    let r = get_with(
        &iss.url("/admin/users"),
        Some(&format!("Bearer {}", iss.admin_token)),
    );
    assert_eq!(r.status, 404, "{}", r.text);

    // Users: create, list, get, patch.
    let u = iss.create_user("frank@example.com", PW, &["viewer"]);
    let id = u["id"].as_str().unwrap().to_string();
    let r = iss.admin_get("/admin/users");
    assert_eq!(r.status, 200);
    assert!(
        r.json()["users"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["id"] == id.as_str()),
        "{}",
        r.text
    );
    assert!(!r.text.contains("argon2"), "{}", r.text);
    let r = iss.admin_get(&format!("/admin/users/{id}"));
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["email"], "frank@example.com");
    assert_eq!(r.json()["roles"], json!(["viewer"]));
    iss.admin_get("/admin/users/does-not-exist")
        .assert_error(404, None);

    let meta = json!({"tenant": "acme", "plan": {"tier": "gold"}, "sub": "evil",
                      "roles": ["root"], "iss": "https://evil.example", "aud": "other",
                      "scope": "everything", "exp": 9999999999i64});
    let r = iss.admin_patch(
        &format!("/admin/users/{id}"),
        &json!({"roles": ["editor", "billing"], "app_metadata": meta}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["app_metadata"], meta);
    let pair = iss.password_login("frank@example.com", PW).pair();
    let c = iss.verify(&pair.access);
    assert_eq!(c["tenant"], "acme", "app_metadata becomes claims: {c}");
    assert_eq!(c["plan"], json!({"tier": "gold"}));
    assert_eq!(c["sub"], id.as_str(), "reserved claims are not overridden");
    assert_eq!(roles(&c), strs(&["billing", "editor"]));
    assert_eq!(c["iss"], iss.issuer.as_str());
    assert_eq!(c["aud"], "demo");
    assert_eq!(c["scope"], "");
    assert!(c["exp"].as_i64().unwrap() < jwt::now() + 3600, "{c}");

    // A role change reaches existing sessions at their next refresh.
    let r = iss.admin_patch(&format!("/admin/users/{id}"), &json!({"roles": ["editor"]}));
    assert_eq!(r.status, 200, "{}", r.text);
    let c2 = iss.verify(&iss.refresh(&pair.refresh).pair().access);
    assert_eq!(roles(&c2), strs(&["editor"]));
    assert_eq!(c2["tenant"], "acme");
    let pair = iss.password_login("frank@example.com", PW).pair();
    let c = iss.verify(&pair.access);

    // Sessions: list and revoke.
    let sid = c["sid"].as_str().unwrap().to_string();
    let r = iss.admin_get(&format!("/admin/users/{id}/sessions"));
    assert_eq!(r.status, 200, "{}", r.text);
    let sessions = r.json()["sessions"].as_array().unwrap().clone();
    let s = sessions
        .iter()
        .find(|s| s["id"] == sid.as_str())
        .unwrap_or_else(|| panic!("{sid} not listed: {}", r.text));
    assert!(s["revoked_at"].is_null(), "{s}");
    assert!(!r.text.contains(&pair.refresh), "{}", r.text);
    assert_eq!(iss.me(&pair.access).status, 200);
    let r = iss.admin_delete(&format!("/admin/sessions/{sid}"));
    assert_eq!(r.status, 204, "{}", r.text);
    let r = iss.admin_get(&format!("/admin/users/{id}/sessions"));
    let s = r.json()["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == sid.as_str())
        .cloned()
        .unwrap();
    assert!(s["revoked_at"].is_i64(), "{s}");
    iss.refresh(&pair.refresh).assert_error(401, None);
    iss.me(&pair.access).assert_error(401, None);
    iss.admin_delete("/admin/sessions/no-such-session")
        .assert_error(404, None);

    // Disable: sessions revoked, no more logins; enable again: logins work.
    let pair = iss.password_login("frank@example.com", PW).pair();
    let r = iss.admin_patch(&format!("/admin/users/{id}"), &json!({"disabled": true}));
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["disabled"], true);
    iss.password_login("frank@example.com", PW)
        .assert_error(401, None);
    iss.refresh(&pair.refresh).assert_error(401, None);
    iss.me(&pair.access).assert_error(401, None);
    let r = iss.admin_patch(&format!("/admin/users/{id}"), &json!({"disabled": false}));
    assert_eq!(r.status, 200, "{}", r.text);
    iss.password_login("frank@example.com", PW).pair();

    // Conflicts are 409, not 5xx.
    iss.admin_post("/admin/users", &json!({"email": "frank@example.com"}))
        .assert_error(409, Some("conflict"));
    iss.create_user("other@example.com", PW, &[]);
    iss.admin_patch(
        &format!("/admin/users/{id}"),
        &json!({"email": "other@example.com"}),
    )
    .assert_error(409, Some("conflict"));

    // Delete: the user is gone and cannot log in.
    let pair = iss.password_login("frank@example.com", PW).pair();
    let r = iss.admin_delete(&format!("/admin/users/{id}"));
    assert_eq!(r.status, 204, "{}", r.text);
    iss.admin_get(&format!("/admin/users/{id}"))
        .assert_error(404, None);
    iss.password_login("frank@example.com", PW)
        .assert_error(401, None);
    iss.refresh(&pair.refresh).assert_error(401, None);
    iss.me(&pair.access).assert_error(401, None);

    // Signing keys: listed, the active one is the one in the JWKS.
    let r = iss.admin_get("/admin/keys");
    assert_eq!(r.status, 200, "{}", r.text);
    let keys = r.json()["keys"].as_array().unwrap().clone();
    assert_eq!(keys.len(), 1, "{}", r.text);
    assert_eq!(keys[0]["state"], "active");
    assert_eq!(iss.jwks_kids(), vec![keys[0]["kid"].as_str().unwrap()]);
    assert!(!r.text.contains("private"), "{}", r.text);
}

/// `PATCH /admin/users/{id}` refuses metadata that is not a JSON object, as creating a user
/// (`POST /admin/users`) and `PATCH /v1/users/me` do.
fn admin_patch_validates_metadata(b: Backend) {
    let Some(db) = db_kind(b) else { return };
    let dir = tempdir();
    let iss = start_issuer(dir.path(), db, "");
    iss.admin_post(
        "/admin/users",
        &json!({"email": "meta@example.com", "app_metadata": "x"}),
    )
    .assert_error(400, None);
    let u = iss.create_user("meta@example.com", PW, &[]);
    let path = format!("/admin/users/{}", u["id"].as_str().unwrap());
    let mut failures = Vec::new();
    for body in [
        json!({"app_metadata": "x"}),
        json!({"app_metadata": [1, 2]}),
        json!({"user_metadata": [1]}),
        json!({"user_metadata": 5}),
    ] {
        let r = iss.admin_patch(&path, &body);
        if r.status != 400 {
            failures.push(format!("PATCH {path} {body} → {} {}", r.status, r.text));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Roles (and API-key scopes) outside the grammar every gateway accepts are refused with 422
/// by every way in — admin create, PATCH, PUT roles, API keys, the CLI — and nothing is
/// stored; valid ones still work.
fn roles_and_scopes_are_validated(b: Backend) {
    let Some(db) = db_kind(b) else { return };
    let dir = tempdir();
    let iss = start_issuer(dir.path(), db, "");
    let u = iss.create_user("roles@example.com", PW, &["staff"]);
    let id = u["id"].as_str().unwrap().to_string();
    let path = format!("/admin/users/{id}");
    let mut failures = Vec::new();
    let mut expect = |what: String, r: Resp, code: &str| {
        if r.status != 422 || r.json()["error"] != code {
            failures.push(format!("{what} → {} {}", r.status, r.text));
        }
    };
    for bad in [
        "",
        "a\u{0}b",
        "a\nb",
        "user,admin",
        "two words",
        "caf\u{e9}",
        "q\"uote",
    ] {
        expect(
            format!("POST /admin/users roles [{bad:?}]"),
            iss.admin_post(
                "/admin/users",
                &json!({"email": "other@example.com", "password": PW, "roles": [bad]}),
            ),
            "invalid_role",
        );
        expect(
            format!("PATCH roles [{bad:?}]"),
            iss.admin_patch(&path, &json!({"roles": ["ok", bad]})),
            "invalid_role",
        );
        expect(
            format!("PUT roles [{bad:?}]"),
            send(
                client()
                    .put(iss.admin_url(&format!("{path}/roles")))
                    .header("Authorization", format!("Bearer {}", iss.admin_token))
                    .json(&json!([bad])),
            ),
            "invalid_role",
        );
        expect(
            format!("POST /admin/api-keys roles [{bad:?}]"),
            iss.admin_post(
                "/admin/api-keys",
                &json!({"subject": "svc", "roles": [bad]}),
            ),
            "invalid_role",
        );
    }
    for bad in ["", "two words", "q\"uote", "a\tb"] {
        expect(
            format!("POST /admin/api-keys scopes [{bad:?}]"),
            iss.admin_post(
                "/admin/api-keys",
                &json!({"subject": "svc", "scopes": [bad]}),
            ),
            "invalid_scope",
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Nothing was stored: the account keeps its role, no second account, no key.
    assert_eq!(roles(&iss.admin_get(&path).json()), strs(&["staff"]));
    assert_eq!(
        iss.admin_get("/admin/api-keys").json()["api_keys"],
        json!([])
    );
    let (code, _, err) = iss.cli(&["users", "set-roles", &id, "admin,two words"]);
    assert_ne!(code, 0, "CLI accepted an invalid role");
    assert!(err.contains("invalid"), "{err}");
    assert_eq!(roles(&iss.admin_get(&path).json()), strs(&["staff"]));
    // The grammar's own edge: printable ASCII such as ':' '/' '@' '.' passes.
    let r = iss.admin_patch(&path, &json!({"roles": ["orders:read", "team/a@b.c"]}));
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(roles(&r.json()), strs(&["orders:read", "team/a@b.c"]));
}

/// NIST SP 800-63B §5.1.1.2: the same characters typed differently (decomposed accent,
/// full-width digits, a ligature) are the same password, at sign-up and at login.
fn passwords_are_unicode_normalised(b: Backend) {
    let Some(db) = db_kind(b) else { return };
    let dir = tempdir();
    let iss = start_issuer(dir.path(), db, "");
    let r = iss.signup(&json!({"email": "nfkc@example.com", "password": "cafe\u{301} \u{fb01}sh \u{ff11}\u{ff12}3"}));
    assert_eq!(r.status, 201, "{}", r.text);
    iss.password_login("nfkc@example.com", "caf\u{e9} fish 123")
        .pair();
    iss.password_login(
        "nfkc@example.com",
        "cafe\u{301} \u{fb01}sh \u{ff11}\u{ff12}3",
    )
    .pair();
    iss.password_login("nfkc@example.com", "cafe fish 123")
        .assert_error(401, Some("invalid_grant"));
}

fn key_state(iss: &IssuerProc, kid: &str) -> String {
    let r = iss.admin_get("/admin/keys");
    assert_eq!(r.status, 200, "{}", r.text);
    r.json()["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid)
        .unwrap_or_else(|| panic!("{kid} not in {}", r.text))["state"]
        .as_str()
        .unwrap()
        .to_string()
}

/// `POST /admin/keys/rotate`: published at once as `next`, signs only after
/// `publish_lead_time`, and the old key stays published (retired) so its tokens verify.
fn key_rotation(b: Backend) {
    let Some(db) = db_kind(b) else { return };
    let dir = tempdir();
    let iss = start_issuer(dir.path(), db, "keys:\n  publish_lead_time: 3s\n");
    iss.create_user("gina@example.com", PW, &[]);

    let r = get_with(&iss.url("/.well-known/jwks.json"), None);
    let etag0 = r.header("etag").unwrap();
    let old = kids(&r.json());
    assert_eq!(old.len(), 1);
    let k0 = old[0].clone();
    let before = iss.password_login("gina@example.com", PW).pair();
    assert_eq!(token_kid(&before.access), k0);

    let r = iss.admin_post("/admin/keys/rotate", &json!({}));
    let rotated_at = Instant::now();
    assert!(r.status == 202 || r.status == 200, "{}", r.text);
    let k1 = r.json()["kid"]
        .as_str()
        .expect("rotate names the new kid")
        .to_string();
    assert_ne!(k1, k0);
    assert_eq!(r.json()["state"], "next");

    // Published at once (new ETag), not signing yet.
    let r = get_with(&iss.url("/.well-known/jwks.json"), None);
    assert_ne!(
        r.header("etag").unwrap(),
        etag0,
        "ETag changes with the key set"
    );
    let now_kids = kids(&r.json());
    assert!(
        now_kids.contains(&k0) && now_kids.contains(&k1),
        "{now_kids:?}"
    );
    assert_eq!(key_state(&iss, &k1), "next");
    assert_eq!(key_state(&iss, &k0), "active");
    let early = iss.password_login("gina@example.com", PW).pair();
    let early_elapsed = rotated_at.elapsed();
    if early_elapsed < Duration::from_secs(2) {
        assert_eq!(
            token_kid(&early.access),
            k0,
            "the new key signed {early_elapsed:?} after rotation, before publish_lead_time"
        );
    }

    // After the lead time (plus a 2 s maintenance tick) new tokens use the new key.
    let mut switched = None;
    let ok = wait_for(Duration::from_secs(10), || {
        let p = iss.anonymous_login().pair();
        let kid = token_kid(&p.access);
        if kid == k1 {
            switched = Some((rotated_at.elapsed(), p));
            true
        } else {
            assert_eq!(kid, k0, "signed by an unknown key");
            false
        }
    });
    assert!(ok, "the new key never started signing");
    let (elapsed, p) = switched.unwrap();
    assert!(
        elapsed >= Duration::from_secs(2),
        "new key signed after only {elapsed:?} (publish_lead_time 3s)"
    );
    iss.verify(&p.access);
    let after = iss.password_login("gina@example.com", PW).pair();
    assert_eq!(token_kid(&after.access), k1);
    iss.verify(&after.access);

    // Tokens of the old key still verify: it is still published, as retired.
    assert_eq!(key_state(&iss, &k0), "retired");
    assert_eq!(key_state(&iss, &k1), "active");
    let c = iss.verify(&before.access);
    assert_eq!(token_kid(&before.access), k0);
    assert!(c["sub"].is_string());
    let r = iss.me(&before.access);
    assert_eq!(r.status, 200, "{}", r.text);
    // Its refresh token now yields new-key tokens.
    let refreshed = iss.refresh(&before.refresh).pair();
    assert_eq!(token_kid(&refreshed.access), k1);
}
