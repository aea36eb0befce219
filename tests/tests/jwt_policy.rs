//! Route policies and identity headers of in-process JWT verification, end to end: scopes,
//! roles, amr, max_age, route audiences and issuers, claim rules, identity headers (defaults,
//! forgeries, claim mappings, header injection), token sources, `auth: optional`, the config
//! checks of policy keys, and the nginx `auth_request` migration through `/_portcullis/verify`.
//!
//! Each test starts one gateway with many routes and loops over cases; a case records every
//! mismatch and the test fails at the end listing all of them. Every allowed case checks the
//! upstream's echo (the path and the subject of *this* request's token), every refused case
//! checks the status and that the gateway, not the upstream, answered.
//!
//! The nginx `auth_request` snippet that [`nginx_auth_request_uses_the_verify_endpoint`] runs
//! (with the real ports in place of 9000 for the upstream and 8080 for the gateway):
//!
//! ```nginx
//! location /api/ {
//!     auth_request /_auth;
//!     auth_request_set $sub $upstream_http_x_auth_subject;
//!     proxy_set_header X-Auth-Subject $sub;
//!     proxy_pass http://127.0.0.1:9000;
//! }
//! location = /_auth {
//!     internal;
//!     proxy_pass http://127.0.0.1:8080/_portcullis/verify;
//!     proxy_pass_request_body off;
//!     proxy_set_header Content-Length "";
//!     proxy_set_header X-Original-URI $request_uri;
//!     proxy_set_header X-Original-Method $request_method;
//! }
//! ```

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use portcullis_tests::jwt::{self, JwksServer, TestKey};
use portcullis_tests::*;
use serde_json::json;

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

/// A token issuer: an ES256 key published by its own JWKS server.
struct TestIssuer {
    key: TestKey,
    jwks: JwksServer,
}

impl TestIssuer {
    fn new() -> TestIssuer {
        let key = TestKey::ec_p256().with_kid("k1");
        let jwks = JwksServer::serving(&[&key]);
        TestIssuer { key, jwks }
    }

    /// `issuers:` entry named `name` (default audience `demo`).
    fn yaml(&self, name: &str) -> String {
        format!(
            "  - name: {name}\n    issuer: {}\n    jwks_url: {}\n    audiences: [demo]\n",
            self.jwks.issuer_url(),
            self.jwks.url()
        )
    }

    /// The standard claims (sub, aud demo, scope "read write", roles [user], amr [pwd], …).
    fn claims(&self, sub: &str) -> Value {
        jwt::claims(&self.jwks.issuer_url(), sub, "demo", 300)
    }

    fn sign(&self, claims: &Value) -> String {
        jwt::sign(
            &self.key,
            "ES256",
            jwt::header("k1", "ES256"),
            claims.clone(),
        )
    }

    /// Standard claims that expired ten minutes ago (beyond any leeway).
    fn claims_expired(&self, sub: &str) -> Value {
        let now = jwt::now();
        edit(
            self.claims(sub),
            json!({"iat": now - 1200, "nbf": now - 1200, "auth_time": now - 1200, "exp": now - 600}),
            &[],
        )
    }

    /// A token for subject `sub`: the standard claims, then `set` merged in, then `remove`d.
    fn token(&self, sub: &str, set: Value, remove: &[&str]) -> String {
        self.sign(&edit(self.claims(sub), set, remove))
    }
}

/// `claims` with the members of `set` replaced/added and `remove` taken out.
fn edit(mut claims: Value, set: Value, remove: &[&str]) -> Value {
    let obj = claims.as_object_mut().expect("claims object");
    if let Value::Object(set) = set {
        obj.extend(set);
    }
    for r in remove {
        obj.remove(*r);
    }
    claims
}

/// One route entry proxying paths under `prefix` to upstream `app`, plus `policy` lines.
fn route(name: &str, prefix: &str, policy: &str) -> String {
    let mut s =
        format!("  - name: {name}\n    match: {{path: {{prefix: {prefix}}}}}\n    upstream: app\n");
    for line in policy.lines() {
        s.push_str("    ");
        s.push_str(line);
        s.push('\n');
    }
    s
}

/// Starts the echo upstream `app` and a gateway trusting `issuers` with `routes`; waits until
/// the gateway is ready (every issuer's keys fetched).
fn start(dir: &Path, issuers: &[(&str, &TestIssuer)], routes: &[String]) -> (Upstream, Gateway) {
    let up = start_upstream("app", dir, &[]);
    let issuers: String = issuers.iter().map(|(n, i)| i.yaml(n)).collect();
    let body = format!(
        "issuers:\n{issuers}upstreams:\n  app:\n    backends: [\"127.0.0.1:{}\"]\nroutes:\n{}",
        up.port,
        routes.concat()
    );
    let gw = start_gateway(dir, &body);
    wait_ready(&gw);
    (up, gw)
}

fn wait_ready(gw: &Gateway) {
    assert!(
        wait_for(Duration::from_secs(10), || client()
            .get(gw.admin_url("/readyz"))
            .send()
            .map(|r| r.status().as_u16() == 200)
            .unwrap_or(false)),
        "gateway never became ready:\n{}",
        gw.proc.stderr_text()
    );
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// GET `target` with `Authorization: Bearer token` (when given) and `extra` headers.
fn get(port: u16, target: &str, token: Option<&str>, extra: &[(&str, &str)]) -> RawResponse {
    let auth = token.map(bearer);
    let mut headers: Vec<(&str, &str)> = Vec::new();
    if let Some(a) = &auth {
        headers.push(("Authorization", a));
    }
    headers.extend_from_slice(extra);
    raw_get(port, target, &headers)
}

fn body_text(resp: &RawResponse) -> String {
    String::from_utf8_lossy(&resp.body).into_owned()
}

/// Checks a response against the expected status. 200: the upstream answered for `path`
/// and (when `sub` is given) saw `X-Auth-Subject: sub`. Otherwise: the gateway answered with
/// a JSON error (and an RFC 6750 challenge for 401/403).
fn verdict(resp: &RawResponse, want: u16, path: &str, sub: Option<&str>) -> Result<(), String> {
    if resp.status != want {
        return Err(format!(
            "status {} (want {want}); www-authenticate {:?}; body {}",
            resp.status,
            resp.header("www-authenticate"),
            body_text(resp)
        ));
    }
    let Ok(body) = serde_json::from_slice::<Value>(&resp.body) else {
        return Err(format!("body is not JSON: {}", body_text(resp)));
    };
    if want == 200 {
        if body["server"] != "app" || body["path"] != path {
            return Err(format!("not the upstream's echo for {path}: {body}"));
        }
        if let Some(sub) = sub {
            if body["headers"]["x-auth-subject"] != sub {
                return Err(format!(
                    "upstream saw x-auth-subject {} (want {sub:?})",
                    body["headers"]["x-auth-subject"]
                ));
            }
        }
    } else {
        if body.get("server").is_some() || !body["error"].is_string() {
            return Err(format!("not a gateway error answer: {body}"));
        }
        if matches!(want, 401 | 403)
            && !resp
                .header("www-authenticate")
                .is_some_and(|c| c.starts_with("Bearer realm=\"portcullis\""))
        {
            return Err(format!(
                "missing Bearer challenge: {:?}",
                resp.header("www-authenticate")
            ));
        }
    }
    Ok(())
}

/// Collects every failed case of a test so one run reports all of them.
#[derive(Default)]
struct Failures(Vec<String>);

impl Failures {
    fn note(&mut self, label: &str, r: Result<(), String>) {
        if let Err(e) = r {
            self.0.push(format!("{label}: {e}"));
        }
    }

    fn check(&mut self, label: &str, ok: bool, detail: impl FnOnce() -> String) {
        if !ok {
            self.0.push(format!("{label}: {}", detail()));
        }
    }

    #[track_caller]
    fn finish(self) {
        assert!(
            self.0.is_empty(),
            "{} failed case(s):\n  {}",
            self.0.len(),
            self.0.join("\n  ")
        );
    }
}

/// One table row: the token's `sub` (also the case's label), the path, the claims to set on
/// top of the standard ones, the claims to remove, and the expected status.
type Row = (
    &'static str,
    &'static str,
    Value,
    &'static [&'static str],
    u16,
);

/// Sends one request per row with a token of `iss`; an allowed row must reach the upstream
/// with `X-Auth-Subject` equal to its label, so it proves this very token was used.
fn run_rows(gw: &Gateway, iss: &TestIssuer, rows: Vec<Row>, f: &mut Failures) {
    for (sub, path, set, remove, want) in rows {
        let token = iss.token(sub, set, remove);
        let resp = get(gw.port, path, Some(&token), &[]);
        f.note(
            &format!("{sub} ({path})"),
            verdict(&resp, want, path, Some(sub)),
        );
    }
}

/// The `x-auth-*` entries of an echo's `header_list` (any spelling), by raw name.
fn identity_entries(echo: &Value) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for pair in echo["header_list"].as_array().expect("header_list") {
        let name = pair[0].as_str().unwrap().to_ascii_lowercase();
        if name.replace('_', "-").starts_with("x-auth-") {
            out.entry(name)
                .or_default()
                .push(pair[1].as_str().unwrap().to_string());
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// 1. Scopes
// ---------------------------------------------------------------------------------------------

#[test]
fn scopes_all_and_any_from_scope_and_scp() {
    let dir = tempdir();
    let iss = TestIssuer::new();
    let (_up, gw) = start(
        dir.path(),
        &[("main", &iss)],
        &[
            route("all", "/all/", "scopes: {all: [a, b]}"),
            route("any", "/any/", "scopes: {any: [a, b]}"),
            route("list", "/list/", "scopes: [a, b]"),
        ],
    );
    let none: &[&str] = &[];
    let no_scope: &[&str] = &["scope"];
    #[rustfmt::skip]
    let rows: Vec<Row> = vec![
        // all: [a, b]
        ("all-scope-a-b", "/all/x", json!({"scope": "a b"}), none, 200),
        ("all-scope-b-c-a", "/all/x", json!({"scope": "b c a"}), none, 200),
        ("all-scp-a-b", "/all/x", json!({"scp": ["a", "b"]}), no_scope, 200),
        ("all-scope-a", "/all/x", json!({"scope": "a"}), none, 403),
        ("all-scp-b", "/all/x", json!({"scp": ["b"]}), no_scope, 403),
        ("all-scope-comma", "/all/x", json!({"scope": "a,b"}), none, 403),
        ("all-scope-ab", "/all/x", json!({"scope": "ab"}), none, 403),
        ("all-no-scope", "/all/x", json!({}), no_scope, 403),
        // any: [a, b]
        ("any-scope-b", "/any/x", json!({"scope": "b"}), none, 200),
        ("any-scope-c-a", "/any/x", json!({"scope": "c a"}), none, 200),
        ("any-scp-a", "/any/x", json!({"scp": ["a"]}), no_scope, 200),
        ("any-scp-c-b", "/any/x", json!({"scp": ["c", "b"]}), no_scope, 200),
        ("any-scope-c", "/any/x", json!({"scope": "c"}), none, 403),
        ("any-scope-ab", "/any/x", json!({"scope": "ab"}), none, 403),
        ("any-scope-upper", "/any/x", json!({"scope": "A B"}), none, 403),
        ("any-scp-c", "/any/x", json!({"scp": ["c"]}), no_scope, 403),
        ("any-no-scope", "/any/x", json!({}), no_scope, 403),
        // A plain list means all.
        ("list-scope-a-b", "/list/x", json!({"scope": "a b"}), none, 200),
        ("list-scope-a", "/list/x", json!({"scope": "a"}), none, 403),
    ];
    let mut f = Failures::default();
    run_rows(&gw, &iss, rows, &mut f);

    // The 403 challenge and body name the error and the scopes the route needs.
    for path in ["/all/x", "/any/x", "/list/x"] {
        let token = iss.token("challenge", json!({"scope": "c"}), &[]);
        let resp = get(gw.port, path, Some(&token), &[]);
        let label = format!("insufficient_scope challenge ({path})");
        f.note(&label, verdict(&resp, 403, path, None));
        let challenge = resp.header("www-authenticate").unwrap_or("").to_string();
        f.check(
            &label,
            challenge.starts_with(
                "Bearer realm=\"portcullis\", error=\"insufficient_scope\", error_description=\"",
            ) && challenge.ends_with("\", scope=\"a b\""),
            || format!("WWW-Authenticate: {challenge}"),
        );
        let body: Value = serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
        f.check(&label, body["error"] == "insufficient_scope", || {
            format!("body {body}")
        });
    }
    f.finish();
}

// ---------------------------------------------------------------------------------------------
// 2. Roles, amr, max_age, route audiences, route issuers
// ---------------------------------------------------------------------------------------------

#[test]
fn roles_amr_max_age_audiences_and_route_issuers() {
    let dir = tempdir();
    let first = TestIssuer::new();
    let second = TestIssuer::new();
    let (_up, gw) = start(
        dir.path(),
        &[("first", &first), ("second", &second)],
        &[
            route("plain", "/plain/", ""),
            route("roles-all", "/roles-all/", "roles: {all: [admin, user]}"),
            route("roles-any", "/roles-any/", "roles: {any: [admin, auditor]}"),
            route("amr", "/amr/", "amr: [sms]"),
            route("max-age", "/max-age/", "max_age: 60s"),
            route("billing", "/billing/", "audiences: [billing]"),
            route("second-only", "/second-only/", "issuers: [second]"),
        ],
    );
    let now = jwt::now();
    let none: &[&str] = &[];
    #[rustfmt::skip]
    let rows: Vec<Row> = vec![
        // roles: {all: [admin, user]}
        ("roles-all-both", "/roles-all/x", json!({"roles": ["user", "admin"]}), none, 200),
        ("roles-all-user", "/roles-all/x", json!({"roles": ["user"]}), none, 403),
        ("roles-all-admin", "/roles-all/x", json!({"roles": ["admin"]}), none, 403),
        // A string is one role; "admin user" is outside the role grammar (a space), so the
        // token is refused outright rather than read as one odd role (common::claims).
        ("roles-all-string", "/roles-all/x", json!({"roles": "admin user"}), none, 401),
        ("roles-all-string-one", "/roles-all/x", json!({"roles": "admin"}), none, 403),
        ("roles-all-comma", "/roles-all/x", json!({"roles": ["admin,user"]}), none, 401),
        ("roles-all-none", "/roles-all/x", json!({}), &["roles"], 403),
        // roles: {any: [admin, auditor]}
        ("roles-any-auditor", "/roles-any/x", json!({"roles": ["auditor"]}), none, 200),
        ("roles-any-x-admin", "/roles-any/x", json!({"roles": ["x", "admin"]}), none, 200),
        ("roles-any-user", "/roles-any/x", json!({"roles": ["user"]}), none, 403),
        ("roles-any-empty", "/roles-any/x", json!({"roles": []}), none, 403),
        ("roles-any-upper", "/roles-any/x", json!({"roles": ["ADMIN"]}), none, 403),
        // amr: [sms]
        ("amr-pwd", "/amr/x", json!({"amr": ["pwd"]}), none, 403),
        ("amr-pwd-sms", "/amr/x", json!({"amr": ["pwd", "sms"]}), none, 200),
        ("amr-sms", "/amr/x", json!({"amr": ["sms"]}), none, 200),
        ("amr-upper", "/amr/x", json!({"amr": ["SMS"]}), none, 403),
        ("amr-none", "/amr/x", json!({}), &["amr"], 403),
        // max_age: 60s (plus the issuer's 30 s leeway); auth_time, else iat.
        ("max-age-fresh", "/max-age/x", json!({"auth_time": now - 5}), none, 200),
        ("max-age-old", "/max-age/x", json!({"auth_time": now - 600}), none, 401),
        ("max-age-iat", "/max-age/x", json!({}), &["auth_time"], 200),
        ("max-age-old-iat", "/max-age/x", json!({"iat": now - 600, "nbf": now - 600}), &["auth_time"], 401),
        ("max-age-no-time", "/max-age/x", json!({}), &["auth_time", "iat"], 401),
        // audiences: [billing] replaces the issuer's default [demo] on this route only.
        ("billing-aud-billing", "/billing/x", json!({"aud": "billing"}), none, 200),
        ("billing-aud-both", "/billing/x", json!({"aud": ["demo", "billing"]}), none, 200),
        ("billing-aud-demo", "/billing/x", json!({"aud": "demo"}), none, 401),
        ("billing-aud-other", "/billing/x", json!({"aud": "other"}), none, 401),
        ("plain-aud-billing", "/plain/x", json!({"aud": "billing"}), none, 401),
        ("plain-aud-demo", "/plain/x", json!({"aud": "demo"}), none, 200),
        // issuers: [second]: a valid token of the first trusted issuer is refused there.
        ("second-only-first", "/second-only/x", json!({}), none, 401),
        ("plain-first", "/plain/x", json!({}), none, 200),
    ];
    let mut f = Failures::default();
    run_rows(&gw, &first, rows, &mut f);
    #[rustfmt::skip]
    let rows: Vec<Row> = vec![
        ("second-only-second", "/second-only/x", json!({}), none, 200),
        ("plain-second", "/plain/x", json!({}), none, 200),
    ];
    run_rows(&gw, &second, rows, &mut f);
    let t = |sub: &str, set: Value| first.token(sub, set, &[]);

    // 401 answers carry invalid_token; 403 answers insufficient_scope.
    for (label, path, token, want_error) in [
        (
            "max-age-old",
            "/max-age/x",
            t("e1", json!({"auth_time": now - 600})),
            "invalid_token",
        ),
        (
            "second-only-first",
            "/second-only/x",
            first.token("e2", json!({}), &[]),
            "invalid_token",
        ),
        (
            "roles-all-user",
            "/roles-all/x",
            t("e3", json!({"roles": ["user"]})),
            "insufficient_scope",
        ),
        (
            "amr-pwd",
            "/amr/x",
            t("e4", json!({"amr": ["pwd"]})),
            "insufficient_scope",
        ),
    ] {
        let resp = get(gw.port, path, Some(&token), &[]);
        let challenge = resp.header("www-authenticate").unwrap_or("").to_string();
        f.check(
            &format!("{label} error code"),
            challenge.contains(&format!("error=\"{want_error}\""))
                && !challenge.contains("scope=\""),
            || format!("status {} WWW-Authenticate: {challenge}", resp.status),
        );
    }
    f.finish();
}

// ---------------------------------------------------------------------------------------------
// 3. Claim rules
// ---------------------------------------------------------------------------------------------

#[test]
fn claim_rules_on_nested_paths() {
    let dir = tempdir();
    let iss = TestIssuer::new();
    let rule = |name: &str, test: &str| {
        route(
            name,
            &format!("/{name}/"),
            &format!("claims:\n  - claim: {test}"),
        )
    };
    let (_up, gw) = start(
        dir.path(),
        &[("main", &iss)],
        &[
            rule("eq-str", "app_metadata.plan\n    equals: pro"),
            rule("eq-bool", "app_metadata.verified\n    equals: true"),
            rule("eq-num", "app_metadata.level\n    equals: 3"),
            rule("one-of", "app_metadata.plan\n    one_of: [pro, enterprise]"),
            rule(
                "regex",
                "app_metadata.email\n    regex: '^[a-z]+@example\\.com$'",
            ),
            rule("exists", "app_metadata.org.id\n    exists: true"),
            rule("absent", "app_metadata.banned\n    exists: false"),
            rule("contains", "app_metadata.groups\n    contains: eng"),
            rule("gt", "app_metadata.level\n    gt: 2"),
            rule("gte", "app_metadata.level\n    gte: 3"),
            rule("lt", "app_metadata.level\n    lt: 4"),
            rule("lte", "app_metadata.level\n    lte: 3"),
        ],
    );
    let base = json!({
        "plan": "pro",
        "verified": true,
        "level": 3,
        "email": "alice@example.com",
        "org": {"id": "o1"},
        "groups": ["eng", "ops"],
    });
    let none: &[&str] = &[];
    // Rows set `app_metadata` to `base` with `md(set, remove)` applied.
    let md =
        |set: Value, remove: &[&str]| json!({ "app_metadata": edit(base.clone(), set, remove) });
    let ok = || md(json!({}), &[]);
    #[rustfmt::skip]
    let rows: Vec<Row> = vec![
        // equals (string)
        ("eq-str-pro", "/eq-str/x", ok(), none, 200),
        ("eq-str-free", "/eq-str/x", md(json!({"plan": "free"}), &[]), none, 403),
        ("eq-str-case", "/eq-str/x", md(json!({"plan": "Pro"}), &[]), none, 403),
        ("eq-str-array", "/eq-str/x", md(json!({"plan": ["pro"]}), &[]), none, 403),
        ("eq-str-missing", "/eq-str/x", md(json!({}), &["plan"]), none, 403),
        ("eq-str-top-level", "/eq-str/x", json!({"plan": "pro"}), none, 403),
        ("eq-str-flat-key", "/eq-str/x", json!({"app_metadata.plan": "pro"}), none, 403),
        // equals (bool)
        ("eq-bool-true", "/eq-bool/x", ok(), none, 200),
        ("eq-bool-false", "/eq-bool/x", md(json!({"verified": false}), &[]), none, 403),
        ("eq-bool-string", "/eq-bool/x", md(json!({"verified": "true"}), &[]), none, 403),
        ("eq-bool-one", "/eq-bool/x", md(json!({"verified": 1}), &[]), none, 403),
        // equals (number)
        ("eq-num-3", "/eq-num/x", ok(), none, 200),
        ("eq-num-4", "/eq-num/x", md(json!({"level": 4}), &[]), none, 403),
        ("eq-num-string", "/eq-num/x", md(json!({"level": "3"}), &[]), none, 403),
        // one_of
        ("one-of-pro", "/one-of/x", ok(), none, 200),
        ("one-of-enterprise", "/one-of/x", md(json!({"plan": "enterprise"}), &[]), none, 200),
        ("one-of-free", "/one-of/x", md(json!({"plan": "free"}), &[]), none, 403),
        ("one-of-array", "/one-of/x", md(json!({"plan": ["pro"]}), &[]), none, 403),
        ("one-of-missing", "/one-of/x", md(json!({}), &["plan"]), none, 403),
        // regex (anchored in the config)
        ("regex-match", "/regex/x", ok(), none, 200),
        ("regex-suffix", "/regex/x", md(json!({"email": "alice@example.com.evil.org"}), &[]), none, 403),
        ("regex-prefix", "/regex/x", md(json!({"email": "Mallory alice@example.com"}), &[]), none, 403),
        ("regex-array", "/regex/x", md(json!({"email": ["alice@example.com"]}), &[]), none, 403),
        ("regex-missing", "/regex/x", md(json!({}), &["email"]), none, 403),
        // exists: true (app_metadata.org.id) / false (app_metadata.banned)
        ("exists-present", "/exists/x", ok(), none, 200),
        ("exists-missing", "/exists/x", md(json!({"org": {"name": "o"}}), &[]), none, 403),
        ("exists-not-object", "/exists/x", md(json!({"org": "o1"}), &[]), none, 403),
        ("absent-ok", "/absent/x", ok(), none, 200),
        ("absent-present", "/absent/x", md(json!({"banned": false}), &[]), none, 403),
        ("absent-elsewhere", "/absent/x", json!({"banned": true, "app_metadata": base.clone()}), none, 200),
        // contains (array)
        ("contains-eng", "/contains/x", ok(), none, 200),
        ("contains-ops-only", "/contains/x", md(json!({"groups": ["ops"]}), &[]), none, 403),
        ("contains-string", "/contains/x", md(json!({"groups": "eng"}), &[]), none, 403),
        ("contains-prefix", "/contains/x", md(json!({"groups": ["engineering"]}), &[]), none, 403),
        ("contains-missing", "/contains/x", md(json!({}), &["groups"]), none, 403),
        // gt 2 / gte 3 / lt 4 / lte 3 on app_metadata.level (3 in `base`)
        ("gt-3", "/gt/x", ok(), none, 200),
        ("gt-2", "/gt/x", md(json!({"level": 2}), &[]), none, 403),
        ("gt-string", "/gt/x", md(json!({"level": "3"}), &[]), none, 403),
        ("gt-missing", "/gt/x", md(json!({}), &["level"]), none, 403),
        ("gte-3", "/gte/x", ok(), none, 200),
        ("gte-2.5", "/gte/x", md(json!({"level": 2.5}), &[]), none, 403),
        ("lt-3", "/lt/x", ok(), none, 200),
        ("lt-4", "/lt/x", md(json!({"level": 4}), &[]), none, 403),
        ("lte-3", "/lte/x", ok(), none, 200),
        ("lte-3.5", "/lte/x", md(json!({"level": 3.5}), &[]), none, 403),
        ("lte-string", "/lte/x", md(json!({"level": "1"}), &[]), none, 403),
    ];
    let mut f = Failures::default();
    run_rows(&gw, &iss, rows, &mut f);
    f.finish();
}

// ---------------------------------------------------------------------------------------------
// 4. Identity headers
// ---------------------------------------------------------------------------------------------

#[test]
fn identity_headers_come_only_from_the_verified_token() {
    let dir = tempdir();
    let iss = TestIssuer::new();
    let (_up, gw) = start(
        dir.path(),
        &[("main", &iss)],
        &[
            route("id", "/id/", ""),
            route(
                "mapped",
                "/mapped/",
                "claim_headers:\n  app_metadata.plan: X-Auth-Plan\n  app_metadata.groups: X-Auth-Groups\n  app_metadata.profile: X-Auth-Profile\n  app_metadata.level: X-Auth-Level",
            ),
            route("fwd", "/fwd/", "forward_token: true"),
        ],
    );
    let mut f = Failures::default();
    let forged = [
        ("X-Auth-Subject", "admin"),
        ("x-auth-subject", "root"),
        ("X_Auth_Roles", "admin"),
        ("x-auth-roles", "admin"),
        ("X-AUTH-SCOPES", "everything"),
        ("X-Auth-Issuer", "https://evil.example"),
        ("X-Auth-Session", "stolen"),
        ("X-Auth-Token-Id", "forged"),
        ("x_auth_method", "hwk"),
        ("X-Auth-Claims", "eyJzdWIiOiJhZG1pbiJ9"),
        ("X-Auth-Plan", "enterprise"),
        ("X-Auth-Extra", "x"),
    ];

    // Every default identity header, from the token, exactly once despite the forgeries.
    let claims = edit(
        iss.claims("user-42"),
        json!({"roles": ["user", "admin"], "amr": ["pwd", "otp"], "scope": "read write"}),
        &[],
    );
    let token = iss.sign(&claims);
    let resp = get(gw.port, "/id/x", Some(&token), &forged);
    f.note("defaults", verdict(&resp, 200, "/id/x", Some("user-42")));
    if resp.status == 200 {
        let echo = resp.json();
        let expected: BTreeMap<String, Vec<String>> = [
            ("x-auth-subject", "user-42".to_string()),
            ("x-auth-issuer", iss.jwks.issuer_url()),
            ("x-auth-scopes", "read write".to_string()),
            ("x-auth-roles", "user,admin".to_string()),
            (
                "x-auth-session",
                claims["sid"].as_str().unwrap().to_string(),
            ),
            (
                "x-auth-token-id",
                claims["jti"].as_str().unwrap().to_string(),
            ),
            ("x-auth-method", "pwd,otp".to_string()),
            (
                "x-auth-claims",
                token.split('.').nth(1).unwrap().to_string(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), vec![v]))
        .collect();
        let got = identity_entries(&echo);
        f.check("defaults: exact identity headers", got == expected, || {
            format!("got {got:#?}\nwant {expected:#?}")
        });
        let decoded = echo["headers"]["x-auth-claims"]
            .as_str()
            .map(|c| serde_json::from_slice::<Value>(&jwt::b64url_decode(c)).ok());
        f.check(
            "defaults: x-auth-claims decodes to the claims",
            decoded == Some(Some(claims.clone())),
            || format!("decoded {decoded:?}"),
        );
        f.check(
            "defaults: Authorization is not forwarded",
            echo["headers"].get("authorization").is_none(),
            || format!("{}", echo["headers"]["authorization"]),
        );
    }

    // Without sub/sid/jti there is no subject/session/token-id header, forged or not.
    let token = iss.token("unused", json!({}), &["sub", "sid", "jti"]);
    let resp = get(gw.port, "/id/x", Some(&token), &forged);
    f.note("no sub", verdict(&resp, 200, "/id/x", None));
    if resp.status == 200 {
        let got = identity_entries(&resp.json());
        let names: Vec<&str> = got.keys().map(String::as_str).collect();
        f.check(
            "no sub: only the headers the token supports",
            names
                == [
                    "x-auth-claims",
                    "x-auth-issuer",
                    "x-auth-method",
                    "x-auth-roles",
                    "x-auth-scopes",
                ]
                && got.values().all(|v| v.len() == 1),
            || format!("{got:#?}"),
        );
    }

    // claim_headers: string, array (comma-joined), object (JSON), number.
    let profile = json!({"tier": "gold", "seats": 5, "tags": ["a", "b"]});
    let token = iss.token(
        "mapped-user",
        json!({"app_metadata": {"plan": "pro", "groups": ["eng", "ops"], "profile": profile, "level": 3}}),
        &[],
    );
    let resp = get(gw.port, "/mapped/x", Some(&token), &forged);
    f.note(
        "claim_headers",
        verdict(&resp, 200, "/mapped/x", Some("mapped-user")),
    );
    if resp.status == 200 {
        let echo = resp.json();
        let got = identity_entries(&echo);
        for (name, want) in [
            ("x-auth-plan", "pro"),
            ("x-auth-groups", "eng,ops"),
            ("x-auth-level", "3"),
        ] {
            f.check(
                &format!("claim_headers: {name}"),
                got.get(name) == Some(&vec![want.to_string()]),
                || format!("{:?}", got.get(name)),
            );
        }
        let prof = got.get("x-auth-profile").cloned().unwrap_or_default();
        f.check(
            "claim_headers: x-auth-profile is the object as JSON",
            prof.len() == 1 && serde_json::from_str::<Value>(&prof[0]).ok() == Some(profile),
            || format!("{prof:?}"),
        );
        f.check(
            "claim_headers: forged names that are not mapped are gone",
            !got.contains_key("x-auth-extra")
                && got.keys().all(|k| !k.contains('_'))
                && got["x-auth-subject"] == ["mapped-user"],
            || format!("{got:#?}"),
        );
    }

    // A mapped claim the token lacks: no header, and the forged one is gone.
    let token = iss.token("no-plan", json!({}), &[]);
    let resp = get(gw.port, "/mapped/x", Some(&token), &forged);
    f.note(
        "claim_headers absent",
        verdict(&resp, 200, "/mapped/x", Some("no-plan")),
    );
    if resp.status == 200 {
        let got = identity_entries(&resp.json());
        f.check(
            "claim_headers absent: no x-auth-plan",
            !got.contains_key("x-auth-plan"),
            || format!("{got:#?}"),
        );
    }

    // CR/LF (or any control character) in a header-bound claim: 401, nothing injected.
    let injections = [
        (
            "sub CRLF",
            "/id/x",
            json!({"sub": "a\r\nX-Auth-Roles: admin"}),
        ),
        ("sub LF", "/id/x", json!({"sub": "a\nX-Auth-Roles: admin"})),
        (
            "sid CRLF",
            "/id/x",
            json!({"sid": "s\r\nX-Auth-Roles: admin"}),
        ),
        (
            "roles CRLF",
            "/id/x",
            json!({"roles": ["user\r\nX-Auth-Roles: admin"]}),
        ),
        (
            "jti CRLF",
            "/id/x",
            json!({"jti": "j\r\nX-Auth-Roles: admin"}),
        ),
        (
            "amr CRLF",
            "/id/x",
            json!({"amr": ["pwd\r\nX-Auth-Roles: admin"]}),
        ),
        (
            "mapped CRLF",
            "/mapped/x",
            json!({"app_metadata": {"plan": "pro\r\nX-Auth-Roles: admin"}}),
        ),
        (
            "mapped array CRLF",
            "/mapped/x",
            json!({"app_metadata": {"groups": ["eng\r\nX-Auth-Roles: admin"]}}),
        ),
    ];
    for (label, path, set) in injections {
        let token = iss.token("injector", set, &[]);
        let resp = get(gw.port, path, Some(&token), &[]);
        f.note(label, verdict(&resp, 401, path, None));
        f.check(
            &format!("{label}: nothing injected into the response"),
            resp.header("x-auth-roles").is_none() && !body_text(&resp).contains("admin"),
            || format!("{:?} {}", resp.headers, body_text(&resp)),
        );
    }
    // A `scope` with control characters is not a scope list (RFC 6749): the token is refused.
    let token = iss.token(
        "scope-crlf",
        json!({"scope": "read\r\nX-Auth-Roles: admin"}),
        &[],
    );
    let resp = get(gw.port, "/id/x", Some(&token), &[]);
    f.note("scope CRLF", verdict(&resp, 401, "/id/x", None));
    f.check(
        "scope CRLF: nothing injected",
        resp.header("x-auth-roles").is_none() && !body_text(&resp).contains("admin"),
        || format!("{:?} {}", resp.headers, body_text(&resp)),
    );
    // The same claim where no header is built from it is harmless (only base64 in X-Auth-Claims).
    let token = iss.token(
        "unmapped-crlf",
        json!({"app_metadata": {"plan": "pro\r\nX-Auth-Roles: admin"}}),
        &[],
    );
    let resp = get(gw.port, "/id/x", Some(&token), &[]);
    f.note(
        "unmapped CRLF",
        verdict(&resp, 200, "/id/x", Some("unmapped-crlf")),
    );
    if resp.status == 200 {
        let echo = resp.json();
        f.check(
            "unmapped CRLF: roles are the token's",
            identity_entries(&echo).get("x-auth-roles") == Some(&vec!["user".to_string()]),
            || format!("{}", echo["header_list"]),
        );
    }

    // forward_token: true keeps Authorization (and still adds the identity).
    let token = iss.token("forwarded", json!({}), &[]);
    let resp = get(gw.port, "/fwd/x", Some(&token), &[]);
    f.note(
        "forward_token",
        verdict(&resp, 200, "/fwd/x", Some("forwarded")),
    );
    if resp.status == 200 {
        let echo = resp.json();
        f.check(
            "forward_token: Authorization reaches the upstream",
            echo["headers"]["authorization"] == bearer(&token),
            || format!("{}", echo["headers"]["authorization"]),
        );
    }
    f.finish();
}

// ---------------------------------------------------------------------------------------------
// 5. Token sources
// ---------------------------------------------------------------------------------------------

/// (label, target, `Authorization: Bearer` token, `Cookie` header, status, upstream's subject)
type SourceCase<'a> = (
    &'a str,
    String,
    Option<&'a str>,
    Option<String>,
    u16,
    Option<&'a str>,
);

#[test]
fn token_sources_cookie_query_and_header_off() {
    let dir = tempdir();
    let iss = TestIssuer::new();
    let (_up, gw) = start(
        dir.path(),
        &[("main", &iss)],
        &[
            route("hdr", "/hdr/", ""),
            route("cookie", "/cookie/", "token: {cookie: session}"),
            route("query", "/query/", "token: {query: access_token}"),
            route(
                "cookie-only",
                "/cookie-only/",
                "token: {header: false, cookie: session}",
            ),
        ],
    );
    let t = |sub: &str| iss.token(sub, json!({}), &[]);
    let c = t("cookie-user");
    let q = t("query-user");
    let k = t("cookie-only-user");
    let other = t("other");
    let header_user = t("header-user");
    let bad = jwt::corrupt_signature(&c);
    let cookie = |name: &str, token: &str| Some(format!("theme=dark; {name}={token}; lang=en"));
    let mut f = Failures::default();

    #[rustfmt::skip]
    let cases: Vec<SourceCase> = vec![
        // token: {cookie: session} (the header stays on)
        ("cookie", "/cookie/x".into(), None, cookie("session", &c), 200, Some("cookie-user")),
        ("cookie: none", "/cookie/x".into(), None, Some("theme=dark".into()), 401, None),
        ("cookie: other name", "/cookie/x".into(), None, cookie("sess", &c), 401, None),
        ("cookie: bad token", "/cookie/x".into(), None, cookie("session", &bad), 401, None),
        ("cookie: header still on", "/cookie/x".into(), Some(&other), None, 200, Some("other")),
        ("cookie: header and cookie differ", "/cookie/x".into(), Some(&other), cookie("session", &c), 400, None),
        ("hdr route ignores cookies", "/hdr/x".into(), None, cookie("session", &c), 401, None),
        // token: {query: access_token}
        ("query", format!("/query/x?a=1&access_token={q}&b=2"), None, None, 200, Some("query-user")),
        ("query alone", format!("/query/x?access_token={q}"), None, None, 200, Some("query-user")),
        ("query: missing", "/query/x?a=1".into(), None, None, 401, None),
        ("query: similar name", format!("/query/x?xaccess_token={q}"), None, None, 401, None),
        ("query: header and query differ", format!("/query/x?access_token={q}"), Some(&other), None, 400, None),
        ("query: header and query agree", format!("/query/x?access_token={q}"), Some(&q), None, 200, Some("query-user")),
        ("query: parameter twice", format!("/query/x?access_token={q}&access_token={other}"), None, None, 400, None),
        ("hdr route ignores the query", format!("/hdr/x?access_token={q}"), None, None, 401, None),
        // token: {header: false, cookie: session}: Authorization is not even looked at.
        ("header off: header token refused", "/cookie-only/x".into(), Some(&k), None, 401, None),
        ("header off: cookie", "/cookie-only/x".into(), None, cookie("session", &k), 200, Some("cookie-only-user")),
        ("header off: garbage header ignored", "/cookie-only/x".into(), Some("garbage"), cookie("session", &k), 200, Some("cookie-only-user")),
        ("header off: other header token ignored", "/cookie-only/x".into(), Some(&header_user), cookie("session", &k), 200, Some("cookie-only-user")),
    ];
    let mut responses = BTreeMap::new();
    for (label, target, token, cookie, want, sub) in cases {
        let extra: Vec<(&str, &str)> = cookie.iter().map(|c| ("Cookie", c.as_str())).collect();
        let resp = get(gw.port, &target, token, &extra);
        let path = target.split('?').next().unwrap();
        f.note(label, verdict(&resp, want, path, sub));
        responses.insert(label, resp);
    }

    // The query token never travels further; the other parameters do.
    let resp = &responses["query"];
    if resp.status == 200 {
        let echo = resp.json();
        f.check(
            "query: other parameters remain",
            echo["query"] == "a=1&b=2",
            || format!("query {}", echo["query"]),
        );
        f.check(
            "query: the token is nowhere in the upstream request",
            !body_text(resp).contains(&q) && !body_text(resp).contains("access_token"),
            || body_text(resp),
        );
    }
    let resp = &responses["query alone"];
    if resp.status == 200 {
        let echo = resp.json();
        f.check(
            "query alone: no query forwarded",
            echo["query"].is_null(),
            || format!("query {}", echo["query"]),
        );
    }
    // A route that does not read the query treats the request as carrying no token at all.
    let resp = &responses["hdr route ignores the query"];
    f.check(
        "hdr route ignores the query: bare challenge",
        resp.header("www-authenticate") == Some("Bearer realm=\"portcullis\""),
        || format!("{:?}", resp.header("www-authenticate")),
    );
    f.finish();
}

// ---------------------------------------------------------------------------------------------
// 6. auth: optional
// ---------------------------------------------------------------------------------------------

#[test]
fn optional_auth_identifies_when_it_can_and_refuses_bad_tokens() {
    let dir = tempdir();
    let iss = TestIssuer::new();
    let (_up, gw) = start(
        dir.path(),
        &[("main", &iss)],
        &[route("opt", "/opt/", "auth: optional")],
    );
    let mut f = Failures::default();
    let forged = [("X-Auth-Subject", "admin"), ("X_Auth_Roles", "admin")];

    let resp = get(gw.port, "/opt/x", None, &forged);
    f.note("anonymous", verdict(&resp, 200, "/opt/x", None));
    if resp.status == 200 {
        let got = identity_entries(&resp.json());
        f.check("anonymous: no identity headers", got.is_empty(), || {
            format!("{got:#?}")
        });
    }

    let token = iss.token("opt-user", json!({}), &[]);
    let resp = get(gw.port, "/opt/x", Some(&token), &forged);
    f.note("valid", verdict(&resp, 200, "/opt/x", Some("opt-user")));
    if resp.status == 200 {
        let got = identity_entries(&resp.json());
        f.check(
            "valid: identity headers",
            got.get("x-auth-issuer") == Some(&vec![iss.jwks.issuer_url()])
                && got.get("x-auth-roles") == Some(&vec!["user".to_string()])
                && got.get("x-auth-scopes") == Some(&vec!["read write".to_string()])
                && !got.contains_key("x_auth_roles"),
            || format!("{got:#?}"),
        );
    }

    let other = TestIssuer::new();
    for (label, token) in [
        ("bad signature", jwt::corrupt_signature(&token)),
        ("expired", iss.sign(&iss.claims_expired("expired"))),
        ("untrusted issuer", other.token("stranger", json!({}), &[])),
        ("garbage", "not-a-jwt".to_string()),
    ] {
        let resp = get(gw.port, "/opt/x", Some(&token), &forged);
        f.note(label, verdict(&resp, 401, "/opt/x", None));
        let challenge = resp.header("www-authenticate").unwrap_or("");
        f.check(
            &format!("{label}: invalid_token"),
            challenge.contains("error=\"invalid_token\""),
            || challenge.to_string(),
        );
    }
    f.finish();
}

// ---------------------------------------------------------------------------------------------
// 7. Config errors
// ---------------------------------------------------------------------------------------------

#[test]
fn policy_config_errors_name_file_line_and_key() {
    let dir = tempdir();
    let path = dir.path().join("gateway.yaml");
    let head = format!(
        "{}listeners:\n  - address: 127.0.0.1:18080\nupstreams:\n  app:\n    backends: [\"127.0.0.1:19000\"]\n",
        server_block(dir.path())
    );
    let issuer = |extra: &str| {
        format!(
            "issuers:\n  - name: main\n    issuer: https://id.example\n    jwks_url: http://127.0.0.1:1/jwks.json\n{extra}"
        )
    };
    let good_route =
        "  - name: ok\n    match: {path: {prefix: /ok/}}\n    upstream: app\n    scopes: [read]\n";
    let mut f = Failures::default();

    // The base is valid, so each error below is the case's own.
    std::fs::write(&path, format!("{head}{}routes:\n{good_route}", issuer(""))).unwrap();
    let (code, out) = check_config(&path);
    f.check("base config passes", code == 0, || out.clone());

    // (label, issuer extra lines, routes text, needle on the offending line, key named as `key:`)
    let cases: [(&str, &str, String, &str, &str); 7] = [
        (
            "policy key on a public route",
            "",
            "  - name: pub\n    match: {path: {prefix: /pub/}}\n    auth: public\n    upstream: app\n    scopes: [read]\n".to_string(),
            "- name: pub",
            "auth",
        ),
        (
            "claim_headers on a public route",
            "",
            "  - name: pub2\n    match: {path: {prefix: /pub2/}}\n    auth: public\n    upstream: app\n    claim_headers: {sub: X-Auth-Sub}\n".to_string(),
            "- name: pub2",
            "auth",
        ),
        (
            "claim_headers name without the prefix",
            "",
            "  - name: ch\n    match: {path: {prefix: /ch/}}\n    upstream: app\n    claim_headers:\n      sub: X-Auth-Subject2\n      app_metadata.plan: X-Plan\n".to_string(),
            "X-Plan",
            "claim_headers",
        ),
        (
            "claim_headers name with a look-alike prefix",
            "",
            "  - name: ch2\n    match: {path: {prefix: /ch2/}}\n    upstream: app\n    claim_headers:\n      app_metadata.plan: X-Author-Plan\n".to_string(),
            "X-Author-Plan",
            "claim_headers",
        ),
        (
            "unknown issuer in a route",
            "",
            "  - name: iss\n    match: {path: {prefix: /iss/}}\n    upstream: app\n    issuers:\n      - main\n      - nope\n".to_string(),
            "- nope",
            "issuers",
        ),
        (
            "claim rule with two tests",
            "",
            "  - name: two\n    match: {path: {prefix: /two/}}\n    upstream: app\n    claims:\n      - claim: app_metadata.plan\n        equals: pro\n        regex: '^p'\n".to_string(),
            "- claim: app_metadata.plan",
            "claims",
        ),
        (
            "HS256 on a jwks_url issuer",
            "    algorithms: [ES256, HS256]\n",
            good_route.to_string(),
            "algorithms:",
            "algorithms",
        ),
    ];
    for (label, issuer_extra, routes, needle, key) in cases {
        let text = format!(
            "{head}{}routes:\n{good_route}{routes}",
            issuer(issuer_extra)
        );
        std::fs::write(&path, &text).unwrap();
        let line = text
            .lines()
            .position(|l| l.contains(needle))
            .map(|i| i + 1)
            .unwrap_or_else(|| panic!("{needle:?} not in the config"));
        let (code, out) = check_config(&path);
        let emerg = out
            .lines()
            .find(|l| l.contains("[emerg]"))
            .unwrap_or("")
            .to_string();
        let at = format!("{}:{line}:", path.display());
        f.check(
            label,
            code == 1
                && emerg.contains(&at)
                && emerg.contains(&format!("{key}:"))
                && out.contains("test failed"),
            || format!("want exit 1 and [emerg] at {at} naming {key:?}; got exit {code}:\n{out}"),
        );
    }
    f.finish();
}

// ---------------------------------------------------------------------------------------------
// 8. nginx auth_request migration
// ---------------------------------------------------------------------------------------------

/// The `location` blocks of the module docs, byte for byte; the test swaps in the real ports
/// for 9000 (upstream) and 8080 (gateway).
const NGINX_LOCATIONS: &str = r#"location /api/ {
    auth_request /_auth;
    auth_request_set $sub $upstream_http_x_auth_subject;
    proxy_set_header X-Auth-Subject $sub;
    proxy_pass http://127.0.0.1:9000;
}
location = /_auth {
    internal;
    proxy_pass http://127.0.0.1:8080/_portcullis/verify;
    proxy_pass_request_body off;
    proxy_set_header Content-Length "";
    proxy_set_header X-Original-URI $request_uri;
    proxy_set_header X-Original-Method $request_method;
}"#;

/// Where `which nginx` finds nginx, if it is installed.
fn nginx_path() -> Option<String> {
    let out = std::process::Command::new("which")
        .arg("nginx")
        .output()
        .ok()?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !path.is_empty()).then_some(path)
}

/// nginx `auth_request` in front of the upstream, asking the gateway's verify endpoint; the
/// snippet is the one in the module docs.
#[test]
fn nginx_auth_request_uses_the_verify_endpoint() {
    // The snippet the README copies must be exactly what runs here.
    let source = include_str!("jwt_policy.rs");
    let documented: String = NGINX_LOCATIONS
        .lines()
        .map(|l| format!("//! {l}\n"))
        .collect();
    assert!(
        source.contains(&documented),
        "the module docs' nginx snippet differs from NGINX_LOCATIONS"
    );

    let Some(nginx) = nginx_path() else {
        eprintln!("SKIPPED nginx_auth_request_uses_the_verify_endpoint: nginx is not installed (make test installs it)");
        return;
    };
    let dir = tempdir();
    let d = dir.path();
    let iss = TestIssuer::new();
    let (up, gw) = start(
        d,
        &[("main", &iss)],
        &[route("api", "/api/", "scopes: {all: [orders:read]}")],
    );
    let port = free_port();
    let locations = NGINX_LOCATIONS
        .replace("127.0.0.1:9000", &format!("127.0.0.1:{}", up.port))
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{}", gw.port));
    let indented: String = locations
        .lines()
        .map(|l| format!("        {l}\n"))
        .collect();
    let conf = format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log info;\nevents {{ worker_connections 64; }}\nhttp {{\n    access_log {d}/nginx-access.log;\n    client_body_temp_path {d}/client_body;\n    proxy_temp_path {d}/proxy;\n    fastcgi_temp_path {d}/fastcgi;\n    uwsgi_temp_path {d}/uwsgi;\n    scgi_temp_path {d}/scgi;\n    server {{\n        listen 127.0.0.1:{port};\n{indented}    }}\n}}\n",
        d = d.display()
    );
    let conf_path = d.join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let conf_arg = conf_path.display().to_string();
    let prefix_arg = format!("{}/", d.display());
    let err_arg = d.join("nginx-startup.log").display().to_string();
    let mut proc = Proc::spawn(
        "nginx",
        Path::new(&nginx),
        &["-c", &conf_arg, "-p", &prefix_arg, "-e", &err_arg],
        d,
    );
    if !wait_for(Duration::from_secs(10), || port_open(port)) {
        let _ = proc.wait_exit(Duration::from_millis(200));
        panic!(
            "nginx did not start:\n{}\n{}\n{}",
            proc.stderr_text(),
            std::fs::read_to_string(d.join("nginx-error.log")).unwrap_or_default(),
            std::fs::read_to_string(&err_arg).unwrap_or_default()
        );
    }

    let mut f = Failures::default();
    let good = iss.token("nginx-user", json!({"scope": "orders:read profile"}), &[]);
    let no_scope = iss.token("nginx-reader", json!({"scope": "read write"}), &[]);

    // No token: nginx answers 401 itself, relaying the gateway's challenge.
    let resp = raw_get(port, "/api/orders", &[]);
    f.check("no token: 401", resp.status == 401, || {
        format!("{} {}", resp.status, body_text(&resp))
    });
    f.check(
        "no token: challenge relayed",
        resp.header("www-authenticate") == Some("Bearer realm=\"portcullis\""),
        || format!("{:?}", resp.headers),
    );
    f.check(
        "no token: upstream not reached",
        !body_text(&resp).contains("\"server\""),
        || body_text(&resp),
    );

    // Valid token with the scope: the upstream sees the gateway's subject, not the client's.
    let resp = raw_get(
        port,
        "/api/orders?page=2",
        &[
            ("Authorization", &bearer(&good)),
            ("X-Auth-Subject", "admin"),
        ],
    );
    f.check("valid: 200", resp.status == 200, || {
        format!("{} {}", resp.status, body_text(&resp))
    });
    if resp.status == 200 {
        let echo = resp.json();
        f.check(
            "valid: upstream echo",
            echo["server"] == "app" && echo["path"] == "/api/orders" && echo["query"] == "page=2",
            || echo.to_string(),
        );
        let subjects: Vec<&Value> = echo["header_list"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p[0] == "x-auth-subject")
            .map(|p| &p[1])
            .collect();
        f.check(
            "valid: X-Auth-Subject from the gateway, once",
            subjects == [&json!("nginx-user")],
            || format!("{subjects:?}"),
        );
    }

    // Valid token without the route's scope: 403.
    let resp = raw_get(
        port,
        "/api/orders",
        &[("Authorization", &bearer(&no_scope))],
    );
    f.check("missing scope: 403", resp.status == 403, || {
        format!("{} {}", resp.status, body_text(&resp))
    });
    f.check(
        "missing scope: upstream not reached",
        !body_text(&resp).contains("\"server\""),
        || body_text(&resp),
    );

    // A bad token: 401.
    let resp = raw_get(
        port,
        "/api/orders",
        &[("Authorization", &bearer(&jwt::corrupt_signature(&good)))],
    );
    f.check("bad token: 401", resp.status == 401, || {
        format!("{} {}", resp.status, body_text(&resp))
    });

    // The internal location is not reachable from outside.
    let resp = raw_get(port, "/_auth", &[("Authorization", &bearer(&good))]);
    f.check("/_auth is internal", resp.status == 404, || {
        format!("{} {}", resp.status, body_text(&resp))
    });

    // The verify endpoint itself, as nginx calls it.
    let resp = raw_get(
        gw.port,
        "/_portcullis/verify",
        &[
            ("Authorization", &bearer(&good)),
            ("X-Original-URI", "/api/orders?page=2"),
            ("X-Original-Method", "GET"),
            ("X-Auth-Subject", "admin"),
        ],
    );
    f.check(
        "verify endpoint: 200 with identity headers",
        resp.status == 200
            && resp.header("x-auth-subject") == Some("nginx-user")
            && resp
                .headers
                .iter()
                .filter(|(n, _)| n == "x-auth-subject")
                .count()
                == 1
            && resp.header("x-auth-scopes") == Some("orders:read profile"),
        || format!("{} {:?}", resp.status, resp.headers),
    );
    let resp = raw_get(
        gw.port,
        "/_portcullis/verify",
        &[
            ("Authorization", &bearer(&no_scope)),
            ("X-Original-URI", "/api/orders"),
            ("X-Original-Method", "GET"),
        ],
    );
    f.check(
        "verify endpoint: 403 insufficient_scope",
        resp.status == 403
            && resp.header("www-authenticate").is_some_and(|c| {
                c.contains("error=\"insufficient_scope\"") && c.ends_with("scope=\"orders:read\"")
            }),
        || format!("{} {:?}", resp.status, resp.headers),
    );
    f.finish();
    drop(proc);
}
