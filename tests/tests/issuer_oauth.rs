//! End-to-end tests of the issuer's OAuth 2.0 surface against the real binary, each scenario
//! on SQLite and on PostgreSQL: the `client_id` claim (RFC 9068), client authentication at
//! the token endpoint (RFC 6749 §2.3, §5.2), introspection (RFC 7662) and revocation
//! (RFC 7009) limited to the caller's own tokens unless its key has the permission, the API
//! key permissions (admin API, CLI), the RFC 8414 metadata and discovery documents (and the
//! gateway finding the keys through discovery), and a third-party client (authlib) doing
//! every flow with its defaults against the shipped configuration.

use std::sync::OnceLock;
use std::time::Duration;

use base64::Engine as _;
use portcullis_tests::issuer::*;
use portcullis_tests::on_both_backends;
use portcullis_tests::{client, jwt, start_gateway, start_upstream, tempdir, wait_for};
use serde_json::{json, Value};

on_both_backends!(
    metadata_documents,
    client_id_claim,
    token_endpoint_client_authentication,
    refresh_token_of_another_client,
    introspection_visibility,
    revocation_ownership,
    key_permissions_admin_and_cli,
    authlib_session,
);

const PW: &str = "correct horse battery staple";
const BASIC_CHALLENGE: &str = "Basic realm=\"portcullis-issuer\"";

/// `Authorization: Basic` of `id:secret`.
fn basic(id: &str, secret: &str) -> String {
    let raw = format!("{id}:{secret}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

/// POST of a form to the public API, with an optional `Authorization` header.
fn form(iss: &IssuerProc, path: &str, auth: Option<&str>, pairs: &[(&str, &str)]) -> Resp {
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish();
    let mut req = client()
        .post(iss.url(path))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(body);
    if let Some(a) = auth {
        req = req.header("Authorization", a);
    }
    send(req)
}

/// The claims of a JWT, unverified (the tokens are verified by [`IssuerProc::verify`]).
fn claims(token: &str) -> Value {
    jwt::decode_segment(token, 1)
}

/// Asserts a 401 `invalid_client` with exactly this challenge.
#[track_caller]
fn assert_invalid_client(r: &Resp, challenge: &str) {
    r.assert_error(401, Some("invalid_client"));
    assert_eq!(
        r.header("www-authenticate").as_deref(),
        Some(challenge),
        "{}",
        r.text
    );
}

/// An API key client: (client_id, client_secret).
struct Key {
    id: String,
    secret: String,
}

fn key(iss: &IssuerProc, subject: &str, permissions: &[&str]) -> Key {
    let k = iss.create_api_key(&json!({"subject": subject, "permissions": permissions}));
    Key {
        id: k["id"].as_str().expect("id").to_string(),
        secret: k["api_key"].as_str().expect("api_key").to_string(),
    }
}

/// A password login at `/oauth/token` without client authentication.
fn user_pair(iss: &IssuerProc, email: &str) -> Pair {
    form(
        iss,
        "/oauth/token",
        None,
        &[
            ("grant_type", "password"),
            ("username", email),
            ("password", PW),
        ],
    )
    .pair()
}

/// A `client_credentials` login of `k` (Basic).
fn key_pair(iss: &IssuerProc, k: &Key) -> Pair {
    form(
        iss,
        "/oauth/token",
        Some(&basic(&k.id, &k.secret)),
        &[("grant_type", "client_credentials")],
    )
    .pair()
}

fn admin_bearer(iss: &IssuerProc) -> String {
    format!("Bearer {}", iss.admin_token)
}

/// Introspects `token` as the admin.
fn admin_introspect(iss: &IssuerProc, token: &str) -> Value {
    let r = form(
        iss,
        "/oauth/introspect",
        Some(&admin_bearer(iss)),
        &[("token", token)],
    );
    assert_eq!(r.status, 200, "{}", r.text);
    r.json()
}

// ---------------------------------------------------------------------------------------------
// 1. RFC 8414 metadata and discovery: exactly what is implemented
// ---------------------------------------------------------------------------------------------

fn metadata_documents(b: Backend) {
    let Some(db) = db_kind(b) else { return };
    let dir = tempdir();
    let iss = start_issuer(dir.path(), db, "");
    let base = iss.issuer.clone();
    let expected = json!({
        "issuer": base,
        "token_endpoint": format!("{base}/oauth/token"),
        "jwks_uri": format!("{base}/.well-known/jwks.json"),
        "introspection_endpoint": format!("{base}/oauth/introspect"),
        "revocation_endpoint": format!("{base}/oauth/revoke"),
        "grant_types_supported": ["password", "refresh_token", "client_credentials"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "response_types_supported": [],
        "response_modes_supported": [],
        "revocation_feed_endpoint": format!("{base}/v1/revocations"),
    });
    for path in [
        "/.well-known/oauth-authorization-server",
        "/.well-known/openid-configuration",
    ] {
        let r = get_with(&iss.url(path), None);
        assert_eq!(r.status, 200, "{path}: {}", r.text);
        assert!(
            r.header("content-type")
                .is_some_and(|c| c.starts_with("application/json")),
            "{path}: {:?}",
            r.headers
        );
        let doc = r.json();
        // Field by field, so that a failure names the field; then nothing else is listed
        // (no ID-token algorithms, no authorization endpoint, no subject types).
        for (field, want) in expected.as_object().expect("object") {
            assert_eq!(&doc[field], want, "{path}: {field}");
        }
        assert_eq!(doc, expected, "{path}: unexpected members");
    }
    // Every endpoint listed answers where it says (a POST without a body is refused as
    // such, not with 404).
    for field in [
        "token_endpoint",
        "introspection_endpoint",
        "revocation_endpoint",
    ] {
        let url = expected[field].as_str().expect("url");
        let r = send(client().post(url));
        assert_eq!(r.status, 415, "{field} {url}: {}", r.text);
    }
    let jwks = get_with(expected["jwks_uri"].as_str().expect("url"), None);
    assert_eq!(jwks.status, 200);

    // The gateway's discovery-based key lookup reads this document and verifies the
    // issuer's tokens with the keys it finds.
    let upstream = start_upstream("demo", dir.path(), &[]);
    let gw = start_gateway(
        dir.path(),
        &format!(
            "issuers:\n  - name: portcullis\n    issuer: {base}\n    discovery: true\n    audiences: [demo]\n\
             upstreams:\n  demo:\n    backends: [\"127.0.0.1:{up}\"]\n\
             routes:\n  - name: api\n    match: {{path: {{prefix: /api/}}}}\n    upstream: demo\n",
            up = upstream.port
        ),
    );
    iss.create_user("disco@example.com", PW, &[]);
    let pair = user_pair(&iss, "disco@example.com");
    let passes = || {
        client()
            .get(gw.url("/api/x"))
            .header("Authorization", format!("Bearer {}", pair.access))
            .send()
            .map(|r| r.status().as_u16() == 200)
            .unwrap_or(false)
    };
    assert!(
        wait_for(Duration::from_secs(15), passes),
        "the gateway never verified a token with keys found through discovery"
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Every access token names its client (RFC 9068 §2.2), and refresh keeps it
// ---------------------------------------------------------------------------------------------

fn client_id_claim(b: Backend) {
    let Some(db) = db_kind(b) else { return };
    let dir = tempdir();
    let iss = start_issuer(dir.path(), db, "oauth:\n  first_party_client_id: my-app\n");
    let user = iss.create_user("alice@example.com", PW, &[]);
    let uid = user["id"].as_str().expect("id");
    let k = key(&iss, uid, &[]);
    let check = |pair: &Pair, client: &str, what: &str| {
        let c = iss.verify(&pair.access);
        assert_eq!(c["client_id"], client, "{what}: {c}");
        let refreshed = iss.refresh(&pair.refresh).pair();
        let c = iss.verify(&refreshed.access);
        assert_eq!(c["client_id"], client, "{what}, refreshed: {c}");
    };
    check(
        &iss.password_login("alice@example.com", PW).pair(),
        "my-app",
        "/v1/auth/password",
    );
    check(
        &iss.anonymous_login().pair(),
        "my-app",
        "/v1/auth/anonymous",
    );
    check(
        &iss.signup(&json!({"email": "bob@example.com", "password": PW}))
            .pair(),
        "my-app",
        "sign-up",
    );
    check(
        &user_pair(&iss, "alice@example.com"),
        "my-app",
        "password grant",
    );
    check(
        &iss.api_key_login(&k.secret).pair(),
        &k.id,
        "/v1/auth/api-key",
    );
    check(&key_pair(&iss, &k), &k.id, "client_credentials");
    // Metadata cannot forge the claim.
    let r = iss.admin_patch(
        &format!("/admin/users/{uid}"),
        &json!({"app_metadata": {"client_id": "forged", "plan": "pro"}}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    let c = iss.verify(&iss.password_login("alice@example.com", PW).pair().access);
    assert_eq!(
        (&c["client_id"], &c["plan"]),
        (&json!("my-app"), &json!("pro"))
    );
    // The admin API's session list names each session's client: the key's id, or null for
    // the first-party client.
    let r = iss.admin_get(&format!("/admin/users/{uid}/sessions"));
    assert_eq!(r.status, 200, "{}", r.text);
    let sessions = r.json()["sessions"].as_array().expect("sessions").clone();
    let by_key = sessions
        .iter()
        .filter(|s| s["client_id"] == k.id.as_str())
        .count();
    let first_party = sessions.iter().filter(|s| s["client_id"].is_null()).count();
    assert!(
        by_key >= 2 && first_party >= 2 && by_key + first_party == sessions.len(),
        "{}",
        r.text
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Client authentication at the token endpoint: presented credentials count on every grant
// ---------------------------------------------------------------------------------------------

fn token_endpoint_client_authentication(b: Backend) {
    let Some(db) = db_kind(b) else { return };
    let dir = tempdir();
    let iss = start_issuer(dir.path(), db, "");
    iss.create_user("alice@example.com", PW, &[]);
    let k = key(&iss, "svc-a", &[]);
    let other = key(&iss, "svc-b", &[]);
    let password = [
        ("grant_type", "password"),
        ("username", "alice@example.com"),
        ("password", PW),
    ];
    let with = |extra: &[(&'static str, &'static str)]| -> Vec<(&str, &str)> {
        password.iter().chain(extra).copied().collect()
    };
    let token =
        |auth: Option<&str>, pairs: &[(&str, &str)]| form(&iss, "/oauth/token", auth, pairs);

    // The password grant succeeds without client authentication, with the first-party
    // client by id alone (`none`), and with Basic and an empty secret.
    for (auth, pairs, what) in [
        (None, with(&[]), "no client authentication"),
        (None, with(&[("client_id", "portcullis")]), "none"),
        (
            Some(basic("portcullis", "")),
            with(&[]),
            "Basic, empty secret",
        ),
        (
            Some(basic("portcullis", "")),
            with(&[("client_id", "portcullis")]),
            "Basic and the same client_id",
        ),
        (
            None,
            with(&[("client_id", "portcullis"), ("client_secret", "")]),
            "client_secret_post, empty secret",
        ),
    ] {
        let r = token(auth.as_deref(), &pairs);
        let pair = r.pair();
        assert_eq!(claims(&pair.access)["client_id"], "portcullis", "{what}");
        assert_eq!(
            r.header("cache-control").as_deref(),
            Some("no-store"),
            "{what}"
        );
    }

    // Wrong credentials fail the password grant even though the password is right.
    let wrong_secret = basic(&k.id, &other.secret);
    for (auth, pairs, challenge, what) in [
        (
            Some(wrong_secret.clone()),
            with(&[]),
            BASIC_CHALLENGE,
            "Basic: another key's secret",
        ),
        (
            Some(basic(&k.id, "pk_wrong")),
            with(&[]),
            BASIC_CHALLENGE,
            "Basic: a malformed secret",
        ),
        (
            Some(basic("nobody", &k.secret)),
            with(&[]),
            BASIC_CHALLENGE,
            "Basic: client_id of no client",
        ),
        (
            Some(basic("portcullis", &k.secret)),
            with(&[]),
            BASIC_CHALLENGE,
            "Basic: a secret for the public client",
        ),
        (
            Some(basic(&k.id, "")),
            with(&[]),
            BASIC_CHALLENGE,
            "Basic: a confidential client without its secret",
        ),
        (
            Some("Basic !!!".to_string()),
            with(&[]),
            BASIC_CHALLENGE,
            "Basic: not base64",
        ),
        (
            Some("Digest x".to_string()),
            with(&[]),
            BASIC_CHALLENGE,
            "an unknown scheme",
        ),
        (
            None,
            with(&[("client_id", "nobody")]),
            BASIC_CHALLENGE,
            "form: unknown client_id",
        ),
        (
            None,
            with(&[("client_id", "portcullis"), ("client_secret", "x")]),
            BASIC_CHALLENGE,
            "form: a secret for the public client",
        ),
        (
            Some("ApiKey pk_wrong".to_string()),
            with(&[]),
            "ApiKey realm=\"portcullis-issuer\"",
            "ApiKey: a wrong key",
        ),
        (
            Some(admin_bearer(&iss)),
            with(&[]),
            "Bearer realm=\"portcullis-issuer\"",
            "Bearer is no client authentication",
        ),
    ] {
        let r = token(auth.as_deref(), &pairs);
        assert_eq!(r.status, 401, "{what}: {}", r.text);
        assert_invalid_client(&r, challenge);
    }
    // client_secret_post: a secret that is not the client's, and one client per request.
    let (kid, ksecret, osecret) = (k.id.as_str(), k.secret.as_str(), other.secret.as_str());
    let mut mismatch = password.to_vec();
    mismatch.extend([("client_id", kid), ("client_secret", osecret)]);
    assert_invalid_client(&token(None, &mismatch), BASIC_CHALLENGE);
    let mut two_methods = password.to_vec();
    two_methods.push(("client_secret", ksecret));
    assert_invalid_client(
        &token(Some(&basic(&k.id, &k.secret)), &two_methods),
        BASIC_CHALLENGE,
    );
    let mut other_id = password.to_vec();
    other_id.push(("client_id", "portcullis"));
    assert_invalid_client(
        &token(Some(&basic(&k.id, &k.secret)), &other_id),
        BASIC_CHALLENGE,
    );
    // A valid API key may not log users in with their password.
    token(Some(&basic(&k.id, &k.secret)), &password).assert_error(400, Some("unauthorized_client"));

    // client_credentials: Basic, client_secret_post (the secret names its client, so
    // client_id may be left out), `Authorization: ApiKey`.
    let cc = [("grant_type", "client_credentials")];
    for (auth, extra, what) in [
        (Some(basic(&k.id, &k.secret)), vec![], "Basic"),
        (
            None,
            vec![("client_id", kid), ("client_secret", ksecret)],
            "client_secret_post",
        ),
        (
            None,
            vec![("client_secret", ksecret)],
            "client_secret alone",
        ),
        (Some(format!("ApiKey {ksecret}")), vec![], "ApiKey header"),
    ] {
        let pairs: Vec<(&str, &str)> = cc.iter().copied().chain(extra).collect();
        let pair = token(auth.as_deref(), &pairs).pair();
        let c = iss.verify(&pair.access);
        assert_eq!(
            (&c["client_id"], &c["sub"]),
            (&json!(k.id), &json!("svc-a")),
            "{what}"
        );
    }
    let r = token(None, &cc);
    assert_invalid_client(&r, BASIC_CHALLENGE);
    assert_invalid_client(&token(Some(&wrong_secret), &cc), BASIC_CHALLENGE);
    token(
        None,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "portcullis"),
        ],
    )
    .assert_error(400, Some("unauthorized_client"));
    // A revoked key is no client any more.
    assert_eq!(
        iss.admin_delete(&format!("/admin/api-keys/{}", other.id))
            .status,
        204
    );
    assert_invalid_client(
        &token(Some(&basic(&other.id, &other.secret)), &cc),
        BASIC_CHALLENGE,
    );

    // refresh_token with a wrong client credential fails even with a good refresh token.
    let pair = user_pair(&iss, "alice@example.com");
    let r = token(
        Some(&basic("portcullis", "not-empty")),
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &pair.refresh),
        ],
    );
    assert_invalid_client(&r, BASIC_CHALLENGE);
    // ... and the refresh token was not spent by the refused attempt.
    token(
        None,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &pair.refresh),
        ],
    )
    .pair();

    // The JSON API-key login challenges with the scheme it takes.
    let r = iss.api_key_login("pk_wrong");
    assert_invalid_client(&r, "ApiKey realm=\"portcullis-issuer\"");
}

// ---------------------------------------------------------------------------------------------
// 4. A refresh token belongs to its client
// ---------------------------------------------------------------------------------------------

fn refresh_token_of_another_client(b: Backend) {
    let Some(db) = db_kind(b) else { return };
    let dir = tempdir();
    let iss = start_issuer(dir.path(), db, "");
    iss.create_user("alice@example.com", PW, &[]);
    let k = key(&iss, "svc-a", &[]);
    let k2 = key(&iss, "svc-b", &[]);
    let refresh = |auth: Option<&str>, extra: &[(&str, &str)], rt: &str| {
        let mut pairs = vec![("grant_type", "refresh_token"), ("refresh_token", rt)];
        pairs.extend_from_slice(extra);
        form(&iss, "/oauth/token", auth, &pairs)
    };
    let user = user_pair(&iss, "alice@example.com");
    let machine = key_pair(&iss, &k);

    // Another client presenting them: invalid_grant (RFC 6749 §5.2), 400, no challenge.
    for (auth, extra, rt, what) in [
        (
            Some(basic(&k.id, &k.secret)),
            vec![],
            &user.refresh,
            "a key refreshing the user's",
        ),
        (
            Some(basic(&k2.id, &k2.secret)),
            vec![],
            &machine.refresh,
            "a key refreshing another key's",
        ),
        (
            None,
            vec![("client_id", "portcullis")],
            &machine.refresh,
            "the public client refreshing a key's",
        ),
    ] {
        let r = refresh(auth.as_deref(), &extra, rt);
        r.assert_error(400, Some("invalid_grant"));
        assert!(
            r.header("www-authenticate").is_none(),
            "{what}: {:?}",
            r.headers
        );
    }
    // None of those attempts spent a token or ended a session: the owners refresh (no reuse
    // detection fired), with their own client authentication.
    let user2 = refresh(None, &[("client_id", "portcullis")], &user.refresh).pair();
    let machine2 = refresh(Some(&basic(&k.id, &k.secret)), &[], &machine.refresh).pair();
    assert_eq!(iss.verify(&user2.access)["client_id"], "portcullis");
    assert_eq!(iss.verify(&machine2.access)["client_id"], json!(k.id));
    // Without client authentication the refresh token alone still works (as on
    // /v1/auth/refresh), and keeps the session's client.
    let machine3 = refresh(None, &[], &machine2.refresh).pair();
    assert_eq!(iss.verify(&machine3.access)["client_id"], json!(k.id));
}

// ---------------------------------------------------------------------------------------------
// 5. Introspection: own tokens, or every token with the permission
// ---------------------------------------------------------------------------------------------

fn introspection_visibility(b: Backend) {
    let Some(db) = db_kind(b) else { return };
    let dir = tempdir();
    let iss = start_issuer(dir.path(), db, "");
    let user = iss.create_user("alice@example.com", PW, &["editor"]);
    let uid = user["id"].as_str().expect("id");
    let plain = key(&iss, "svc-a", &[]);
    let rs = key(&iss, "resource-server", &["introspect"]);
    let revoker = key(&iss, "svc-r", &["revoke"]);
    let user_tokens = user_pair(&iss, "alice@example.com");
    let own = key_pair(&iss, &plain);
    let introspect = |auth: Option<&str>, extra: &[(&str, &str)], token: &str| {
        let mut pairs = vec![("token", token)];
        pairs.extend_from_slice(extra);
        form(&iss, "/oauth/introspect", auth, &pairs)
    };

    // An access token: its claims, token_type Bearer (RFC 7662 §2.2) and its client.
    for (auth, what) in [
        (admin_bearer(&iss), "admin token"),
        (basic(&rs.id, &rs.secret), "key with permission introspect"),
    ] {
        let r = introspect(Some(&auth), &[], &user_tokens.access);
        assert_eq!(r.status, 200, "{what}: {}", r.text);
        let v = r.json();
        let c = iss.verify(&user_tokens.access);
        assert_eq!(v["active"], true, "{what}: {v}");
        assert_eq!(v["token_type"], "Bearer", "{what}: {v}");
        assert_eq!(v["client_id"], "portcullis", "{what}: {v}");
        for claim in [
            "sub", "sid", "iss", "exp", "iat", "jti", "scope", "roles", "amr", "aud",
        ] {
            assert_eq!(v[claim], c[claim], "{what}: {claim}");
        }
        assert_eq!(v["sub"], uid);
        // A refresh token: active, its client and session, no token_type (not an access
        // token).
        let v = introspect(Some(&auth), &[], &user_tokens.refresh).json();
        assert_eq!(v["active"], true, "{what}: {v}");
        assert_eq!(v["client_id"], "portcullis", "{what}: {v}");
        assert_eq!(
            (&v["sub"], &v["sid"]),
            (&json!(uid), &c["sid"]),
            "{what}: {v}"
        );
        assert!(v.get("token_type").is_none(), "{what}: {v}");
    }
    // A key without the permission sees its own tokens, by every client authentication...
    for (auth, extra, what) in [
        (Some(basic(&plain.id, &plain.secret)), vec![], "Basic"),
        (
            None,
            vec![
                ("client_id", plain.id.as_str()),
                ("client_secret", plain.secret.as_str()),
            ],
            "client_secret_post",
        ),
        (Some(format!("ApiKey {}", plain.secret)), vec![], "ApiKey"),
    ] {
        let v = introspect(auth.as_deref(), &extra, &own.access).json();
        assert_eq!(
            (&v["active"], &v["token_type"]),
            (&json!(true), &json!("Bearer")),
            "{what}: {v}"
        );
        assert_eq!(v["client_id"], json!(plain.id), "{what}: {v}");
        let v = introspect(auth.as_deref(), &extra, &own.refresh).json();
        assert_eq!(v["active"], true, "{what}: {v}");
        // ... and anybody else's as exactly {"active": false}, however valid.
        for t in [&user_tokens.access, &user_tokens.refresh] {
            let r = introspect(auth.as_deref(), &extra, t);
            assert_eq!(r.status, 200, "{what}: {}", r.text);
            assert_eq!(r.json(), json!({"active": false}), "{what}");
        }
    }
    // Permission `revoke` is not `introspect`.
    let v = introspect(
        Some(&basic(&revoker.id, &revoker.secret)),
        &[],
        &user_tokens.access,
    )
    .json();
    assert_eq!(v, json!({"active": false}));
    // The public client may not introspect (no secret: no protection against scanning).
    let r = introspect(None, &[("client_id", "portcullis")], &user_tokens.access);
    assert_invalid_client(&r, BASIC_CHALLENGE);
    let r = introspect(Some(&basic("portcullis", "")), &[], &user_tokens.access);
    assert_invalid_client(&r, BASIC_CHALLENGE);
    // Failed or missing authentication: 401 with the scheme used (Basic for the form).
    for (auth, extra, challenge, what) in [
        (None, vec![], BASIC_CHALLENGE, "nothing"),
        (
            Some(basic(&plain.id, &rs.secret)),
            vec![],
            BASIC_CHALLENGE,
            "Basic, another key's secret",
        ),
        (
            None,
            vec![
                ("client_id", plain.id.as_str()),
                ("client_secret", "pk_wrong"),
            ],
            BASIC_CHALLENGE,
            "form, wrong secret",
        ),
        (
            Some("ApiKey pk_wrong".to_string()),
            vec![],
            "ApiKey realm=\"portcullis-issuer\"",
            "ApiKey, wrong",
        ),
        (
            Some("Bearer not-the-admin-token".to_string()),
            vec![],
            "Bearer realm=\"portcullis-issuer\"",
            "Bearer, wrong",
        ),
    ] {
        let r = introspect(auth.as_deref(), &extra, &user_tokens.access);
        assert_eq!(r.status, 401, "{what}: {}", r.text);
        assert_invalid_client(&r, challenge);
    }
    // Authentication comes first; then the token is required.
    form(&iss, "/oauth/introspect", Some(&admin_bearer(&iss)), &[])
        .assert_error(400, Some("invalid_request"));
    assert_invalid_client(&form(&iss, "/oauth/introspect", None, &[]), BASIC_CHALLENGE);
}

// ---------------------------------------------------------------------------------------------
// 6. Revocation: own tokens, or every token with the permission; others' answered 200
// ---------------------------------------------------------------------------------------------

fn revocation_ownership(b: Backend) {
    let Some(db) = db_kind(b) else { return };
    let dir = tempdir();
    let iss = start_issuer(dir.path(), db, "");
    iss.create_user("alice@example.com", PW, &[]);
    let plain = key(&iss, "svc-a", &[]);
    let revoker = key(&iss, "svc-r", &["revoke"]);
    let inspector = key(&iss, "svc-i", &["introspect"]);
    let revoke = |auth: Option<&str>, extra: &[(&str, &str)], token: &str| {
        let mut pairs = vec![("token", token)];
        pairs.extend_from_slice(extra);
        let r = form(&iss, "/oauth/revoke", auth, &pairs);
        assert_eq!(r.status, 200, "{}", r.text);
    };
    let active = |token: &str| admin_introspect(&iss, token)["active"] == true;

    // Another client's token: 200, and nothing happens.
    let user = user_pair(&iss, "alice@example.com");
    let machine = key_pair(&iss, &plain);
    revoke(Some(&basic(&plain.id, &plain.secret)), &[], &user.access);
    revoke(Some(&basic(&plain.id, &plain.secret)), &[], &user.refresh);
    revoke(
        Some(&basic(&inspector.id, &inspector.secret)),
        &[],
        &user.refresh,
    );
    revoke(None, &[("client_id", "portcullis")], &machine.refresh);
    revoke(Some(&basic("portcullis", "")), &[], &machine.access);
    assert!(
        active(&user.access) && active(&user.refresh),
        "the user's session survived"
    );
    assert!(active(&machine.access), "the key's session survived");
    // Unknown tokens: 200 as well.
    revoke(Some(&basic(&plain.id, &plain.secret)), &[], "no-such-token");

    // Own tokens: the key by its credentials, the public client by its client_id alone
    // (holding the token is the proof); the whole session ends.
    revoke(
        Some(&basic(&plain.id, &plain.secret)),
        &[],
        &machine.refresh,
    );
    assert!(!active(&machine.access), "the key revoked its own session");
    revoke(None, &[("client_id", "portcullis")], &user.refresh);
    assert!(
        !active(&user.access),
        "the public client revoked its own session"
    );
    form(&iss, "/v1/auth/refresh", None, &[]).assert_error(415, None);
    iss.refresh(&user.refresh)
        .assert_error(401, Some("invalid_grant"));

    // Permission `revoke` and the admin token: any token.
    let user = user_pair(&iss, "alice@example.com");
    revoke(
        Some(&basic(&revoker.id, &revoker.secret)),
        &[],
        &user.access,
    );
    assert!(
        !active(&user.refresh),
        "a key with permission revoke revoked the user's session"
    );
    let user = user_pair(&iss, "alice@example.com");
    revoke(Some(&admin_bearer(&iss)), &[], &user.refresh);
    assert!(
        !active(&user.access),
        "the admin token revoked the user's session"
    );

    // Authentication is required, and must be valid.
    let user = user_pair(&iss, "alice@example.com");
    for (auth, extra) in [
        (None, vec![]),
        (None, vec![("client_id", "nobody")]),
        (Some(basic(&plain.id, &revoker.secret)), vec![]),
        (Some(basic("portcullis", "x")), vec![]),
    ] {
        let mut pairs = vec![("token", user.refresh.as_str())];
        pairs.extend(extra);
        assert_invalid_client(
            &form(&iss, "/oauth/revoke", auth.as_deref(), &pairs),
            BASIC_CHALLENGE,
        );
    }
    assert!(active(&user.refresh), "refused revocations changed nothing");
}

// ---------------------------------------------------------------------------------------------
// 7. The permissions of API keys: admin API and CLI
// ---------------------------------------------------------------------------------------------

fn key_permissions_admin_and_cli(b: Backend) {
    let Some(db) = db_kind(b) else { return };
    let dir = tempdir();
    let iss = start_issuer(dir.path(), db, "");
    iss.create_user("alice@example.com", PW, &[]);
    let user = user_pair(&iss, "alice@example.com");

    let created = iss.create_api_key(
        &json!({"subject": "rs", "permissions": ["revoke", "introspect", "introspect"]}),
    );
    assert_eq!(
        created["permissions"],
        json!(["introspect", "revoke"]),
        "{created}"
    );
    let plain = iss.create_api_key(&json!({"subject": "svc"}));
    assert_eq!(plain["permissions"], json!([]), "{plain}");
    let r = iss.admin_post(
        "/admin/api-keys",
        &json!({"subject": "x", "permissions": ["admin"]}),
    );
    r.assert_error(400, Some("invalid_request"));
    let list = iss.admin_get("/admin/api-keys").json();
    // Keys made in the same second list in id order: compare by subject.
    let shown: std::collections::BTreeMap<&str, &Value> = list["api_keys"]
        .as_array()
        .expect("api_keys")
        .iter()
        .map(|k| (k["subject"].as_str().expect("subject"), &k["permissions"]))
        .collect();
    assert_eq!(
        shown,
        [
            ("rs", &json!(["introspect", "revoke"])),
            ("svc", &json!([]))
        ]
        .into()
    );

    // The CLI grants them too, shows them in its list, and refuses unknown ones.
    let (code, out, err) = iss.cli(&[
        "api-keys",
        "create",
        "--subject",
        "cli-rs",
        "--permissions",
        "introspect",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let id = out
        .lines()
        .find_map(|l| l.strip_prefix("id:"))
        .expect("id line")
        .trim()
        .to_string();
    let secret = out
        .lines()
        .find_map(|l| l.strip_prefix("api key:"))
        .expect("key line")
        .trim()
        .to_string();
    let (code, out, err) = iss.cli(&["api-keys", "list"]);
    assert_eq!(code, 0, "{out}{err}");
    let line = out
        .lines()
        .find(|l| l.starts_with(&id))
        .expect("the key is listed");
    assert!(line.ends_with("\tpermissions=introspect"), "{line}");
    let (code, _, err) = iss.cli(&[
        "api-keys",
        "create",
        "--subject",
        "x",
        "--permissions",
        "introspect,root",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("unknown permission \"root\""), "{err}");

    // What the permission grants: the CLI-made key sees the user's token.
    let v = form(
        &iss,
        "/oauth/introspect",
        Some(&basic(&id, &secret)),
        &[("token", &user.access)],
    )
    .json();
    assert_eq!(
        (&v["active"], &v["client_id"]),
        (&json!(true), &json!("portcullis")),
        "{v}"
    );
}

// ---------------------------------------------------------------------------------------------
// 8. A third-party client: authlib, defaults only, against the shipped configuration
// ---------------------------------------------------------------------------------------------

/// The python of `target/py-venv` (authlib, requests), made by `scripts/py-venv.sh` once per
/// test process.
fn python() -> &'static str {
    static PYTHON: OnceLock<String> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
        let out = std::process::Command::new(format!("{root}/scripts/py-venv.sh"))
            .output()
            .expect("run scripts/py-venv.sh");
        assert!(
            out.status.success(),
            "scripts/py-venv.sh failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    })
}

/// `config/issuer.yaml` as shipped (the one `make run` uses), on free ports, with its data
/// under `dir` and the database `db`.
fn shipped_issuer(dir: &std::path::Path, db: DbKind) -> IssuerProc {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let shipped = std::fs::read_to_string(root.join("config/issuer.yaml")).expect("shipped config");
    let port = portcullis_tests::free_port();
    let mut admin_port = portcullis_tests::free_port();
    while admin_port == port {
        admin_port = portcullis_tests::free_port();
    }
    let issuer = format!("http://127.0.0.1:{port}");
    let database_url = match db {
        DbKind::Sqlite => "sqlite://../data/issuer.db".to_string(),
        DbKind::Postgres(url) | DbKind::Url(url) => url,
    };
    // Only the top-level lines that name ports or the database change; every relative path
    // stays relative to the config file, as with `make run`.
    let text: Vec<String> = shipped
        .lines()
        .map(|l| match l.split_once(':').map(|(k, _)| k) {
            Some("listen") => format!("listen: 127.0.0.1:{port}"),
            Some("admin_listen") => format!("admin_listen: 127.0.0.1:{admin_port}"),
            Some("issuer") => format!("issuer: {issuer}"),
            Some("database_url") => format!("database_url: \"{database_url}\""),
            _ => l.to_string(),
        })
        .collect();
    let config_dir = dir.join("config");
    std::fs::create_dir_all(&config_dir).expect("config dir");
    let path = config_dir.join("issuer.yaml");
    std::fs::write(&path, text.join("\n")).expect("write config");
    start_issuer_config(
        dir,
        "issuer-shipped",
        IssuerConfigFile {
            path,
            port,
            admin_port,
            issuer,
            secrets_dir: dir.join("data/secrets"),
            database_url,
        },
    )
}

fn authlib_session(b: Backend) {
    let Some(db) = db_kind(b) else { return };
    let python = python();
    let dir = tempdir();
    let iss = shipped_issuer(dir.path(), db);
    let user = iss.create_user("alice@example.com", PW, &[]);
    let machine = key(&iss, "svc-a", &[]);
    let rs = key(&iss, "resource-server", &["introspect", "revoke"]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/py/authlib_oauth.py");
    let out = std::process::Command::new(python)
        .arg(script)
        .env("PC_ISSUER", &iss.issuer)
        .env("PC_FIRST_PARTY", "portcullis")
        .env("PC_USERNAME", "alice@example.com")
        .env("PC_PASSWORD", PW)
        .env("PC_USER_ID", user["id"].as_str().expect("id"))
        .env("PC_MACHINE_ID", &machine.id)
        .env("PC_MACHINE_SECRET", &machine.secret)
        .env("PC_RS_ID", &rs.id)
        .env("PC_RS_SECRET", &rs.secret)
        .env_remove("AUTHLIB_INSECURE_TRANSPORT")
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("authlib: all checks passed"),
        "authlib session failed:\n{stdout}\n{stderr}"
    );
}
