//! Security suite for JWT verification: every case is a request through one real gateway,
//! and every rejection is checked for its exact status, RFC 6750 challenge, JSON error body
//! and reason — and for not having reached the upstream. At the end of each test the admin
//! `/metrics` must count exactly the outcomes the cases produced, and the upstream latency
//! histogram must have seen exactly the accepted requests (so no refused request was proxied).
//!
//! One gateway, one JWKS server and one upstream per test function; the cases are tables.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use portcullis_tests::jwt::{self, b64url, JwksServer, TestKey};
use portcullis_tests::*;
use serde_json::json;

// ---------------------------------------------------------------------------------------------
// Case tables and their runner
// ---------------------------------------------------------------------------------------------

/// What the gateway must answer.
#[derive(Clone, Debug)]
enum Expect {
    /// 200 from the upstream, with `X-Auth-Subject` = this.
    Pass(String),
    /// 401 `invalid_token` with this reason (metrics label; the description is derived).
    Invalid(&'static str),
    /// 401 with the bare challenge: no token was found.
    Missing,
    /// 400 `invalid_request` with this description (no challenge).
    BadRequest(&'static str),
    /// 431 from the connection guard: the header line is over `server.limits.max_header_line`
    /// (which defaults to `auth.max_token_size` + 64), so the token never reaches the verifier.
    HeaderTooLarge,
}

struct Case {
    group: &'static str,
    name: String,
    path: String,
    headers: Vec<(String, String)>,
    expect: Expect,
}

/// Client-facing description of each reason (gateway/src/verify.rs, `AuthError::description`).
fn description(reason: &str) -> &'static str {
    match reason {
        "missing" => "a bearer token is required",
        "too_large" => "the token is too large",
        "malformed" => "the token is malformed",
        "algorithm" => "the token's signing algorithm is not accepted",
        "wrong_type" => "the token is not an access token",
        "crit" => "the token requires unsupported header extensions",
        "untrusted_issuer" => "the token's issuer is not trusted",
        "keys_unavailable" => "the issuer's signing keys are unavailable",
        "unknown_kid" => "the token was signed with an unknown key",
        "no_matching_key" => "no trusted key matches the token",
        "bad_signature" => "the token signature is invalid",
        "expired" => "the token has expired",
        "not_yet_valid" => "the token is not valid yet",
        "issued_in_future" => "the token was issued in the future",
        "invalid_claim" => "the token has an invalid claim",
        "wrong_audience" => "the token is not meant for this audience",
        other => panic!("no description known for reason {other:?}"),
    }
}

/// The cases of one test, with helpers to add them.
struct Table {
    group: &'static str,
    cases: Vec<Case>,
}

impl Table {
    fn new() -> Table {
        Table {
            group: "-",
            cases: Vec::new(),
        }
    }

    /// Following cases belong to `group` (for the failure report).
    fn group(&mut self, group: &'static str) {
        self.group = group;
    }

    /// A request to `path` with these headers.
    fn raw(&mut self, name: impl Into<String>, path: &str, headers: &[(&str, &str)], e: Expect) {
        self.cases.push(Case {
            group: self.group,
            name: name.into(),
            path: path.to_string(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            expect: e,
        });
    }

    /// `Authorization: Bearer <token>` on `/api/check`.
    fn bearer(&mut self, name: impl Into<String>, token: &str, e: Expect) {
        let auth = format!("Bearer {token}");
        self.raw(name, "/api/check", &[("Authorization", &auth)], e);
    }

    fn pass(&mut self, name: impl Into<String>, token: &str, subject: &str) {
        self.bearer(name, token, Expect::Pass(subject.to_string()));
    }

    fn deny(&mut self, name: impl Into<String>, token: &str, reason: &'static str) {
        self.bearer(name, token, Expect::Invalid(reason));
    }

    fn edge_refuses(&mut self, name: impl Into<String>, token: &str) {
        self.bearer(name, token, Expect::HeaderTooLarge);
    }
}

/// Checks the response is the gateway's own error: no upstream marker, JSON body with exactly
/// `error`, `error_description` and `request_id`.
fn gateway_error(resp: &RawResponse, status: u16, error: &str, desc: &str) -> Result<(), String> {
    if resp.status != status {
        return Err(format!(
            "status {} (expected {status}); body {}",
            resp.status,
            short(&resp.body)
        ));
    }
    if let Some(server) = resp.header("x-demo-server") {
        return Err(format!("the upstream ({server}) answered"));
    }
    if resp.header("content-type") != Some("application/json") {
        return Err(format!("content-type {:?}", resp.header("content-type")));
    }
    let body: Value = serde_json::from_slice(&resp.body)
        .map_err(|e| format!("body is not JSON ({e}): {:?}", resp.body))?;
    let obj = body.as_object().ok_or("body is not an object")?;
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    if keys != ["error", "error_description", "request_id"] {
        return Err(format!("body members {keys:?}: {body}"));
    }
    if body["error"] != error || body["error_description"] != desc {
        return Err(format!("body {body}, expected error {error:?} / {desc:?}"));
    }
    let rid = body["request_id"].as_str().unwrap_or("");
    if rid.is_empty() || resp.header("x-request-id") != Some(rid) {
        return Err(format!(
            "request_id {rid:?} vs X-Request-Id {:?}",
            resp.header("x-request-id")
        ));
    }
    Ok(())
}

fn check(port: u16, case: &Case) -> Result<(), String> {
    let headers: Vec<(&str, &str)> = case
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    // A connection closed without an answer (e.g. the gateway's worker panicked) is a failed
    // case, not the end of the table.
    let resp = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        raw_get(port, &case.path, &headers)
    }))
    .map_err(|_| "no complete HTTP response (connection closed)".to_string())?;
    let www = resp.header("www-authenticate");
    match &case.expect {
        Expect::Pass(subject) => {
            if resp.status != 200 {
                return Err(format!(
                    "status {} (expected 200), WWW-Authenticate {www:?}, body {}",
                    resp.status,
                    short(&resp.body)
                ));
            }
            if resp.header("x-demo-server").is_none() {
                return Err("200 without the upstream's X-Demo-Server".into());
            }
            let echo: Value =
                serde_json::from_slice(&resp.body).map_err(|e| format!("echo not JSON: {e}"))?;
            let got = &echo["headers"]["x-auth-subject"];
            if got != subject.as_str() {
                return Err(format!(
                    "upstream saw X-Auth-Subject {got}, expected {subject:?}"
                ));
            }
            if echo["headers"].get("authorization").is_some() {
                return Err("the token was forwarded to the upstream".into());
            }
        }
        Expect::Invalid(reason) => {
            let desc = description(reason);
            gateway_error(&resp, 401, "invalid_token", desc)?;
            let want = format!(
                "Bearer realm=\"portcullis\", error=\"invalid_token\", error_description=\"{desc}\""
            );
            if www != Some(want.as_str()) {
                return Err(format!("WWW-Authenticate {www:?}, expected {want:?}"));
            }
        }
        Expect::Missing => {
            gateway_error(&resp, 401, "unauthorized", description("missing"))?;
            if www != Some("Bearer realm=\"portcullis\"") {
                return Err(format!(
                    "WWW-Authenticate {www:?}, expected the bare challenge"
                ));
            }
        }
        Expect::BadRequest(desc) => {
            gateway_error(&resp, 400, "invalid_request", desc)?;
            if www.is_some() {
                return Err(format!("400 with WWW-Authenticate {www:?}"));
            }
        }
        Expect::HeaderTooLarge => {
            if resp.status != 431 || resp.header("x-demo-server").is_some() {
                return Err(format!(
                    "status {} (expected the gateway's 431), body {}",
                    resp.status,
                    short(&resp.body)
                ));
            }
            let body: Value = serde_json::from_slice(&resp.body)
                .map_err(|e| format!("431 body is not JSON ({e})"))?;
            if body["error"] != "header_too_large" {
                return Err(format!("431 body {body}"));
            }
        }
    }
    Ok(())
}

/// One series' value from a Prometheus text page; 0 when absent.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric_value(text, name, labels).unwrap_or(0.0)
}

/// Runs every case against the gateway, then checks `/metrics` against what the cases
/// produced; panics listing every failure, grouped.
fn run(gw: &Gateway, table: Table, must_see: &[&str]) {
    let mut failures: Vec<String> = Vec::new();
    let mut per_group: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let mut ok = 0u64;
    let mut denied: BTreeMap<&'static str, u64> = BTreeMap::new();
    for case in &table.cases {
        let result = check(gw.port, case);
        let entry = per_group.entry(case.group).or_default();
        match result {
            Ok(()) => {
                entry.0 += 1;
                match &case.expect {
                    Expect::Pass(_) => ok += 1,
                    Expect::Invalid(r) => *denied.entry(*r).or_default() += 1,
                    Expect::Missing => *denied.entry("missing").or_default() += 1,
                    Expect::BadRequest(_) => *denied.entry("two_tokens").or_default() += 1,
                    // Refused before authentication: no auth metric.
                    Expect::HeaderTooLarge => {}
                }
            }
            Err(e) => {
                entry.1 += 1;
                failures.push(format!(
                    "[{}] {} (expected {:?}): {e}",
                    case.group, case.name, case.expect
                ));
            }
        }
    }
    for (group, (pass, fail)) in &per_group {
        eprintln!("group {group}: {pass} passed, {fail} failed");
    }

    // The counters only make sense when every case went as expected.
    if failures.is_empty() {
        let text = client()
            .get(gw.admin_url("/metrics"))
            .send()
            .and_then(|r| r.text())
            .expect("admin /metrics");
        for reason in must_see {
            if !denied.contains_key(reason) {
                failures.push(format!("[metrics] no case produced reason {reason}"));
            }
        }
        for (reason, n) in &denied {
            let got = metric(
                &text,
                "portcullis_auth_total",
                &[("outcome", "denied"), ("reason", reason)],
            );
            if got != *n as f64 {
                failures.push(format!(
                    "[metrics] portcullis_auth_total{{outcome=\"denied\",reason=\"{reason}\"}} = {got}, expected {n}"
                ));
            }
        }
        let got = metric(
            &text,
            "portcullis_auth_total",
            &[("outcome", "ok"), ("reason", "-")],
        );
        if got != ok as f64 {
            failures.push(format!(
                "[metrics] portcullis_auth_total{{outcome=\"ok\"}} = {got}, expected {ok}"
            ));
        }
        let proxied = metric(
            &text,
            "portcullis_upstream_latency_seconds_count",
            &[("upstream", "app")],
        );
        if proxied != ok as f64 {
            failures.push(format!(
                "[metrics] the upstream answered {proxied} requests, but only {ok} were accepted"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n  {}\ngateway stderr (tail):\n{}",
        failures.len(),
        table.cases.len(),
        failures.join("\n  "),
        tail(&gw.proc.stderr_text(), 40)
    );
}

/// The first 200 characters of a body, for messages.
fn short(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    match text.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.into_owned(),
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------------------------
// Gateway set-up and token helpers
// ---------------------------------------------------------------------------------------------

const AUD: &str = "demo";

/// Starts the gateway with `issuers_yaml` (the whole `issuers:` block, and anything else
/// top-level) and the standard upstream + routes, then waits for readiness (keys fetched).
fn gateway(dir: &Path, upstream: &Upstream, extra_yaml: &str) -> Gateway {
    let body = format!(
        "{extra_yaml}upstreams:\n  app:\n    backends: [\"127.0.0.1:{port}\"]\nroutes:\n  - name: api\n    match: {{path: {{prefix: /api/}}}}\n    upstream: app\n  - name: cookie\n    match: {{path: {{prefix: /cookie/}}}}\n    upstream: app\n    token: {{cookie: session}}\n",
        port = upstream.port
    );
    let gw = start_gateway(dir, &body);
    let ready = wait_for(Duration::from_secs(10), || {
        client()
            .get(gw.admin_url("/readyz"))
            .send()
            .map(|r| r.status().as_u16() == 200)
            .unwrap_or(false)
    });
    assert!(
        ready,
        "gateway never became ready:\n{}",
        tail(&gw.proc.stderr_text(), 40)
    );
    gw
}

/// `value` with `key` set.
fn set(mut value: Value, key: &str, member: Value) -> Value {
    value
        .as_object_mut()
        .expect("object")
        .insert(key.into(), member);
    value
}

/// `value` without `key`.
fn unset(mut value: Value, key: &str) -> Value {
    value.as_object_mut().expect("object").remove(key);
    value
}

/// A compact JWS over the given (already encoded) segments, signed over exactly that text —
/// so a lenient decoder would find the signature valid.
fn sign_segments(key: &TestKey, alg: &str, h64: &str, p64: &str) -> String {
    let sig = jwt::signature(key, alg, format!("{h64}.{p64}").as_bytes());
    format!("{h64}.{p64}.{}", b64url(sig))
}

fn segments(token: &str) -> (String, String, String) {
    let v: Vec<&str> = token.split('.').collect();
    assert_eq!(v.len(), 3, "compact JWS");
    (v[0].to_string(), v[1].to_string(), v[2].to_string())
}

/// A valid ES256 token of exactly `target` characters (a `pad` claim, and a header member
/// to reach lengths base64url cannot produce from the claims alone).
fn token_of_len(key: &TestKey, iss: &str, sub: &str, target: usize) -> String {
    let make = |hpad: usize, n: usize| {
        let h = set(
            jwt::header(key.kid(), "ES256"),
            "x",
            json!("h".repeat(hpad)),
        );
        let c = set(jwt::claims(iss, sub, AUD, 300), "pad", json!("p".repeat(n)));
        jwt::sign(key, "ES256", h, c)
    };
    let base = make(0, 0).len();
    let estimate = target.saturating_sub(base) * 3 / 4;
    for hpad in 0..4 {
        for n in estimate.saturating_sub(8)..estimate + 8 {
            let t = make(hpad, n);
            if t.len() == target {
                return t;
            }
        }
    }
    panic!("no token of exactly {target} characters");
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// Every supported algorithm verifies; the header never chooses the key or the algorithm:
/// `none`, HMAC-with-the-RSA-public-key, algorithms off the issuer's list, keys of the wrong
/// curve, embedded `jwk`, `jku`/`x5u` (never fetched), `crit`, degenerate signatures.
#[test]
fn algorithms_keys_and_signatures() {
    let dir = tempdir();
    let rsa = TestKey::rsa(2048).with_kid("rsa");
    let p256 = TestKey::ec_p256().with_kid("p256");
    let p384 = TestKey::ec_p384().with_kid("p384");
    let ed = TestKey::ed25519().with_kid("ed");
    let jwks = JwksServer::serving(&[&rsa, &p256, &p384, &ed]);
    // The attacker's own key server: the gateway must never talk to it.
    let attacker = TestKey::ec_p256().with_kid("attacker");
    let evil = JwksServer::serving(&[&attacker]);

    let secret = jwt::random_id(36); // 48 ASCII bytes
    let hmac = TestKey::hmac(secret.as_bytes());
    std::fs::write(dir.path().join("hmac.secret"), format!("{secret}\n")).unwrap();

    let iss = jwks.issuer_url();
    let iss_es = format!("{iss}/es256-only");
    let iss_hs = "https://hmac.portcullis.test".to_string();
    let up = start_upstream("app", dir.path(), &[]);
    let issuers = format!(
        "issuers:\n  - name: main\n    issuer: {iss}\n    jwks_url: {url}\n    audiences: [demo]\n    algorithms: [RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA]\n  - name: es-only\n    issuer: {iss_es}\n    jwks_url: {iss}/es256-only/jwks.json\n    audiences: [demo]\n    algorithms: [ES256]\n  - name: hmac\n    issuer: {iss_hs}\n    hmac_secret_file: {secret_file}\n    audiences: [demo]\n    algorithms: [HS256, HS384, HS512]\n",
        url = jwks.url(),
        secret_file = dir.path().join("hmac.secret").display(),
    );
    let gw = gateway(dir.path(), &up, &issuers);
    let cl = |sub: &str| jwt::claims(&iss, sub, AUD, 300);
    let mut t = Table::new();

    t.group("valid token per algorithm");
    for (key, alg) in [
        (&rsa, "RS256"),
        (&rsa, "RS384"),
        (&rsa, "RS512"),
        (&rsa, "PS256"),
        (&rsa, "PS384"),
        (&rsa, "PS512"),
        (&p256, "ES256"),
        (&p384, "ES384"),
        (&ed, "EdDSA"),
    ] {
        let sub = format!("user-{alg}");
        let token = jwt::sign(key, alg, jwt::header(key.kid(), alg), cl(&sub));
        t.pass(format!("{alg} valid"), &token, &sub);
        t.deny(
            format!("{alg} one flipped signature bit"),
            &jwt::corrupt_signature(&token),
            "bad_signature",
        );
    }
    let no_kid = json!({"alg": "ES256", "typ": "at+jwt"});
    t.pass(
        "ES256 without kid (one ES256 key in the set)",
        &jwt::sign(&p256, "ES256", no_kid, cl("no-kid")),
        "no-kid",
    );
    for alg in ["HS256", "HS384", "HS512"] {
        let sub = format!("user-{alg}");
        let h = json!({"alg": alg, "typ": "at+jwt"});
        let c = jwt::claims(&iss_hs, &sub, AUD, 300);
        let token = jwt::sign(&hmac, alg, h.clone(), c.clone());
        t.pass(format!("{alg} valid (hmac issuer)"), &token, &sub);
        t.deny(
            format!("{alg} flipped bit"),
            &jwt::corrupt_signature(&token),
            "bad_signature",
        );
        let other = TestKey::hmac(jwt::random_id(36).as_bytes());
        t.deny(
            format!("{alg} signed with another secret"),
            &jwt::sign(&other, alg, h, c),
            "bad_signature",
        );
    }

    t.group("alg none");
    for none in ["none", "None", "NONE", "nOnE"] {
        let h = json!({"alg": none, "kid": "p256", "typ": "at+jwt"});
        // `h.c.`: the empty signature segment is refused before the algorithm is looked at.
        t.deny(
            format!("alg {none}, unsigned"),
            &jwt::unsigned(h.clone(), cl("none")),
            "malformed",
        );
        let (h64, p64, _) = segments(&jwt::unsigned(h.clone(), cl("none")));
        t.deny(
            format!("alg {none}, junk signature"),
            &format!("{h64}.{p64}.AAAA"),
            "algorithm",
        );
        t.deny(
            format!("alg {none}, real ES256 signature"),
            &jwt::sign(&p256, "ES256", h, cl("none")),
            "algorithm",
        );
    }
    t.deny(
        "alg none without kid or typ, unsigned",
        &jwt::unsigned(json!({}), cl("none")),
        "malformed",
    );

    t.group("key confusion (HMAC with the RSA public key)");
    let forms: Vec<(&str, Vec<u8>)> = vec![
        ("SPKI PEM", rsa.public_pem().into_bytes()),
        ("PKCS#1 PEM", rsa.rsa_public_pem_pkcs1().into_bytes()),
        ("SPKI DER", rsa.public_der()),
        ("PKCS#1 DER", rsa.rsa_public_der_pkcs1()),
        ("raw n", rsa.rsa_modulus()),
        ("base64url n", b64url(rsa.rsa_modulus()).into_bytes()),
        ("JWK JSON", rsa.public_jwk().to_string().into_bytes()),
    ];
    for (form, secret) in &forms {
        for alg in ["HS256", "HS384", "HS512"] {
            let token =
                jwt::hs_sign_with_bytes(secret, alg, jwt::header("rsa", alg), cl("mallory"));
            t.deny(
                format!("{alg} keyed with {form}, kid rsa"),
                &token,
                "algorithm",
            );
        }
        let token = jwt::hs_sign_with_bytes(
            secret,
            "HS256",
            json!({"alg": "HS256", "typ": "at+jwt"}),
            cl("mallory"),
        );
        t.deny(
            format!("HS256 keyed with {form}, no kid"),
            &token,
            "algorithm",
        );
    }
    // The same trick against the HMAC issuer's name cannot work either: its secret is private.
    let token = jwt::hs_sign_with_bytes(
        rsa.public_pem().as_bytes(),
        "HS256",
        json!({"alg": "HS256", "typ": "at+jwt"}),
        jwt::claims(&iss_hs, "mallory", AUD, 300),
    );
    t.deny(
        "HS256 keyed with the PEM, hmac issuer",
        &token,
        "bad_signature",
    );

    t.group("algorithm allow-list and key fit");
    t.pass(
        "ES256 for the ES256-only issuer",
        &jwt::sign(
            &p256,
            "ES256",
            jwt::header("p256", "ES256"),
            jwt::claims(&iss_es, "es-user", AUD, 300),
        ),
        "es-user",
    );
    for (key, alg) in [
        (&rsa, "RS256"),
        (&rsa, "PS256"),
        (&ed, "EdDSA"),
        (&p384, "ES384"),
    ] {
        t.deny(
            format!("{alg} (valid key in the JWKS) for the ES256-only issuer"),
            &jwt::sign(
                key,
                alg,
                jwt::header(key.kid(), alg),
                jwt::claims(&iss_es, "x", AUD, 300),
            ),
            "algorithm",
        );
    }
    t.deny(
        "ES384 token naming the P-256 kid",
        &jwt::sign(&p384, "ES384", jwt::header("p256", "ES384"), cl("x")),
        "no_matching_key",
    );
    t.deny(
        "ES256 token naming the P-384 kid",
        &jwt::sign(&p256, "ES256", jwt::header("p384", "ES256"), cl("x")),
        "no_matching_key",
    );
    t.deny(
        "RS256 token naming the Ed25519 kid",
        &jwt::sign(&rsa, "RS256", jwt::header("ed", "RS256"), cl("x")),
        "no_matching_key",
    );
    t.deny(
        "HS256 for the main issuer signed with the HMAC issuer's secret",
        &jwt::sign(
            &hmac,
            "HS256",
            json!({"alg": "HS256", "typ": "at+jwt"}),
            cl("x"),
        ),
        "algorithm",
    );
    t.deny(
        "RS256 for the HMAC issuer",
        &jwt::sign(
            &rsa,
            "RS256",
            jwt::header("rsa", "RS256"),
            jwt::claims(&iss_hs, "x", AUD, 300),
        ),
        "algorithm",
    );
    for alg in ["rs256", "Es256", "EDDSA", "ES256 ", "HS1", "RSA-OAEP", ""] {
        t.deny(
            format!("alg {alg:?} (not an exact JWA name)"),
            &jwt::sign(&p256, "ES256", jwt::header("p256", alg), cl("x")),
            "algorithm",
        );
    }

    t.group("embedded jwk / jku / x5u");
    let attack = |extra: &[(&str, Value)], kid: Option<&str>| {
        let mut h = json!({"alg": "ES256", "typ": "at+jwt"});
        if let Some(kid) = kid {
            h = set(h, "kid", json!(kid));
        }
        for (k, v) in extra {
            h = set(h, k, v.clone());
        }
        jwt::sign(&attacker, "ES256", h, cl("mallory"))
    };
    let jwk = attacker.public_jwk();
    let jku = json!(evil.url());
    let x5u = json!(evil.url_for("/attacker.pem"));
    t.deny(
        "jwk header, kid of the real key",
        &attack(&[("jwk", jwk.clone())], Some("p256")),
        "bad_signature",
    );
    t.deny(
        "jwk header, no kid",
        &attack(&[("jwk", jwk.clone())], None),
        "bad_signature",
    );
    t.deny(
        "jwk header, attacker kid",
        &attack(&[("jwk", jwk.clone())], Some("attacker")),
        "unknown_kid",
    );
    t.deny(
        "jku to the attacker's JWKS, attacker kid",
        &attack(&[("jku", jku.clone())], Some("attacker")),
        "unknown_kid",
    );
    t.deny(
        "jku to the attacker's JWKS, kid of the real key",
        &attack(&[("jku", jku.clone())], Some("p256")),
        "bad_signature",
    );
    t.deny(
        "x5u to the attacker, attacker kid",
        &attack(&[("x5u", x5u.clone())], Some("attacker")),
        "unknown_kid",
    );
    t.deny(
        "x5u to the attacker, no kid",
        &attack(&[("x5u", x5u.clone())], None),
        "bad_signature",
    );
    t.deny(
        "jwk + jku + x5u together",
        &attack(
            &[("jwk", jwk), ("jku", jku), ("x5u", x5u)],
            Some("attacker-2"),
        ),
        "unknown_kid",
    );

    t.group("crit");
    for (name, h) in [
        (
            "crit [exp]",
            set(jwt::header("p256", "ES256"), "crit", json!(["exp"])),
        ),
        (
            "crit [b64] with b64 false",
            set(
                set(jwt::header("p256", "ES256"), "crit", json!(["b64"])),
                "b64",
                json!(false),
            ),
        ),
        (
            "crit [b64] with b64 true",
            set(
                set(jwt::header("p256", "ES256"), "crit", json!(["b64"])),
                "b64",
                json!(true),
            ),
        ),
        (
            "crit []",
            set(jwt::header("p256", "ES256"), "crit", json!([])),
        ),
    ] {
        t.deny(name, &jwt::sign(&p256, "ES256", h, cl("crit")), "crit");
    }

    t.group("degenerate signatures");
    let (h64, p64, _) = segments(&jwt::sign(
        &p256,
        "ES256",
        jwt::header("p256", "ES256"),
        cl("z"),
    ));
    t.deny(
        "ES256 r = s = 0 (64 zero bytes)",
        &format!("{h64}.{p64}.{}", b64url([0u8; 64])),
        "bad_signature",
    );
    t.deny(
        "ES256 DER-encoded r = s = 0",
        &format!("{h64}.{p64}.{}", b64url([0x30, 6, 2, 1, 0, 2, 1, 0])),
        "bad_signature",
    );
    t.deny(
        "ES256 one zero byte",
        &format!("{h64}.{p64}.AA"),
        "bad_signature",
    );
    let (h64, p64, _) = segments(&jwt::sign(
        &ed,
        "EdDSA",
        jwt::header("ed", "EdDSA"),
        cl("z"),
    ));
    t.deny(
        "EdDSA all-zero signature",
        &format!("{h64}.{p64}.{}", b64url([0u8; 64])),
        "bad_signature",
    );
    let (h64, p64, _) = segments(&jwt::sign(
        &rsa,
        "RS256",
        jwt::header("rsa", "RS256"),
        cl("z"),
    ));
    t.deny(
        "RS256 all-zero signature",
        &format!("{h64}.{p64}.{}", b64url([0u8; 256])),
        "bad_signature",
    );

    run(
        &gw,
        t,
        &["bad_signature", "algorithm", "unknown_kid", "crit"],
    );

    // Give any background fetch a moment: the attacker's server must still be untouched.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        evil.fetch_count(),
        0,
        "the attacker's /jwks.json was fetched"
    );
    assert!(
        evil.requests().is_empty(),
        "the gateway contacted the attacker's server: {:?}",
        evil.requests()
    );
    assert!(!evil.was_requested("/attacker.pem"));
    assert!(jwks.fetch_count() >= 1, "the real JWKS was fetched");
}

/// Where the token may come from, and everything that is not a well-formed compact JWS of
/// JSON objects (each signed over exactly the bytes sent, so only parsing can refuse it).
#[test]
fn token_transport_malformed_and_oversized_tokens() {
    let dir = tempdir();
    let key = TestKey::ec_p256().with_kid("k1");
    let jwks = JwksServer::serving(&[&key]);
    let iss = jwks.issuer_url();
    let up = start_upstream("app", dir.path(), &[]);
    let issuers = format!(
        "issuers:\n  - name: main\n    issuer: {iss}\n    jwks_url: {url}\n    audiences: [demo]\n",
        url = jwks.url()
    );
    let gw = gateway(dir.path(), &up, &issuers);
    let cl = |sub: &str| jwt::claims(&iss, sub, AUD, 300);
    let es = |h: Value, c: Value| jwt::sign(&key, "ES256", h, c);
    let good = es(jwt::header("k1", "ES256"), cl("alice"));
    let other = es(jwt::header("k1", "ES256"), cl("bob"));
    let mut t = Table::new();

    t.group("token transport");
    t.raw(
        "no Authorization header",
        "/api/check",
        &[],
        Expect::Missing,
    );
    t.pass("valid token", &good, "alice");
    let lower = format!("bearer {good}");
    t.raw(
        "lower-case scheme",
        "/api/check",
        &[("Authorization", &lower)],
        Expect::Pass("alice".into()),
    );
    for (name, value) in [
        (
            "Basic credentials",
            "Basic dXNlcjpwYXNzd29yZA==".to_string(),
        ),
        ("Basic carrying the token", format!("Basic {good}")),
        ("Token scheme", format!("Token {good}")),
        ("JWT scheme", format!("JWT {good}")),
        ("scheme only", "Bearer".to_string()),
        ("token without scheme", good.clone()),
    ] {
        t.raw(
            name,
            "/api/check",
            &[("Authorization", &value)],
            Expect::Missing,
        );
    }
    let a = format!("Bearer {good}");
    let b = format!("Bearer {other}");
    t.raw(
        "two Authorization headers, same token",
        "/api/check",
        &[("Authorization", &a), ("Authorization", &a)],
        Expect::BadRequest("more than one Authorization header"),
    );
    t.raw(
        "two Authorization headers, different tokens",
        "/api/check",
        &[("Authorization", &a), ("Authorization", &b)],
        Expect::BadRequest("more than one Authorization header"),
    );
    t.raw(
        "Basic then Bearer",
        "/api/check",
        &[
            ("Authorization", "Basic dXNlcjpwYXNz"),
            ("Authorization", &a),
        ],
        Expect::BadRequest("more than one Authorization header"),
    );
    let cookie_good = format!("session={good}");
    let cookie_other = format!("session={other}");
    t.raw(
        "cookie route: cookie only",
        "/cookie/check",
        &[("Cookie", &cookie_good)],
        Expect::Pass("alice".into()),
    );
    t.raw(
        "cookie route: header and cookie agree",
        "/cookie/check",
        &[("Authorization", &a), ("Cookie", &cookie_good)],
        Expect::Pass("alice".into()),
    );
    t.raw(
        "cookie route: header and cookie disagree",
        "/cookie/check",
        &[("Authorization", &a), ("Cookie", &cookie_other)],
        Expect::BadRequest("the request carries more than one token"),
    );
    let two_cookies = format!("session={good}; session={other}");
    t.raw(
        "cookie route: the cookie twice with different tokens",
        "/cookie/check",
        &[("Cookie", &two_cookies)],
        Expect::BadRequest("the request carries more than one token"),
    );
    t.raw(
        "header-only route ignores the cookie",
        "/api/check",
        &[("Cookie", &cookie_good)],
        Expect::Missing,
    );
    t.raw(
        "header-only route ignores a query token",
        &format!("/api/check?access_token={good}"),
        &[],
        Expect::Missing,
    );

    t.group("malformed");
    let (h, p, s) = segments(&good);
    t.deny("1 segment", &h, "malformed");
    t.deny("2 segments", &format!("{h}.{p}"), "malformed");
    t.deny(
        "4 segments (valid token + 1)",
        &format!("{good}.{s}"),
        "malformed",
    );
    t.deny("4 segments, empty last", &format!("{good}."), "malformed");
    t.deny(
        "5 segments (valid token + 2)",
        &format!("{good}.{p}.{s}"),
        "malformed",
    );
    let jwe_h = b64url(r#"{"alg":"RSA-OAEP","enc":"A256GCM","kid":"k1"}"#);
    t.deny(
        "5 segments (JWE shape)",
        &format!("{jwe_h}.{s}.{s}.{s}.{s}"),
        "malformed",
    );
    t.deny("empty header segment", &format!(".{p}.{s}"), "malformed");
    t.deny("empty claims segment", &format!("{h}..{s}"), "malformed");
    t.deny("empty signature segment", &format!("{h}.{p}."), "malformed");
    t.deny("only dots", "..", "malformed");

    // Standard-alphabet base64 (`+`, `/`), signed over exactly those bytes.
    let mut with_alphabet = None;
    for n in 1..64 {
        let hdr = set(jwt::header("k1", "ES256"), "x", json!("?".repeat(n)));
        let enc = b64url(hdr.to_string());
        if enc.contains('_') || enc.contains('-') {
            with_alphabet = Some(enc);
            break;
        }
    }
    let url_safe = with_alphabet.expect("a header encoding with - or _");
    let standard = url_safe.replace('-', "+").replace('_', "/");
    t.deny(
        "header in the standard base64 alphabet (+ /)",
        &sign_segments(&key, "ES256", &standard, &p),
        "malformed",
    );
    t.pass(
        "the same header in base64url (control)",
        &sign_segments(&key, "ES256", &url_safe, &p),
        "alice",
    );
    t.deny(
        "'*' in the claims segment",
        &format!("{h}.{p}*.{s}"),
        "malformed",
    );
    t.deny(
        "'!' in the signature",
        &format!("{h}.{p}.{s}!"),
        "malformed",
    );
    t.deny(
        "space inside the token",
        &format!("{h}.{p} .{s}"),
        "malformed",
    );
    t.deny("percent-encoding", &format!("{h}%2E{p}.{s}"), "malformed");

    // `=` padding: on the header (signed over the padded text) and on the signature.
    let mut hjson = jwt::header("k1", "ES256").to_string();
    let padded = loop {
        let enc = base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE, &hjson);
        if enc.ends_with('=') {
            break enc;
        }
        hjson.insert(hjson.len() - 1, ' ');
    };
    t.deny(
        "= padding on the header",
        &sign_segments(&key, "ES256", &padded, &p),
        "malformed",
    );
    t.pass(
        "the same header unpadded (control)",
        &sign_segments(&key, "ES256", padded.trim_end_matches('='), &p),
        "alice",
    );
    t.deny(
        "= padding on the signature",
        &format!("{good}=="),
        "malformed",
    );
    // 64 bytes = 85⅓ characters: the last one carries 4 bits that must be zero.
    let last = s.chars().last().unwrap();
    let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let idx = alphabet.find(last).unwrap();
    assert_eq!(idx & 0x0f, 0, "canonical last character");
    let noncanon = alphabet.as_bytes()[idx | 1] as char;
    t.deny(
        "non-canonical base64 (trailing bits set) in the signature",
        &format!("{h}.{p}.{}{noncanon}", &s[..s.len() - 1]),
        "malformed",
    );

    let claims_text = cl("alice").to_string();
    let header_text = jwt::header("k1", "ES256").to_string();
    for (name, hdr) in [
        ("header not JSON", "not json".to_string()),
        (
            "header a JSON array",
            r#"["ES256","k1","at+jwt"]"#.to_string(),
        ),
        ("header a JSON string", r#""ES256""#.to_string()),
        ("header a JSON number", "256".to_string()),
        ("header null", "null".to_string()),
        ("header with trailing garbage", format!("{header_text}x")),
        (
            "header truncated",
            header_text[..header_text.len() - 1].to_string(),
        ),
        (
            "duplicate typ in the header",
            r#"{"alg":"ES256","kid":"k1","typ":"at+jwt","typ":"at+jwt"}"#.to_string(),
        ),
        (
            "duplicate alg in the header (none, then ES256)",
            r#"{"alg":"none","kid":"k1","typ":"at+jwt","alg":"ES256"}"#.to_string(),
        ),
        (
            "duplicate kid in the header",
            r#"{"alg":"ES256","kid":"other","typ":"at+jwt","kid":"k1"}"#.to_string(),
        ),
        (
            "header without alg",
            r#"{"kid":"k1","typ":"at+jwt"}"#.to_string(),
        ),
        (
            "alg not a string",
            r#"{"alg":["ES256"],"kid":"k1","typ":"at+jwt"}"#.to_string(),
        ),
        (
            "kid not a string",
            r#"{"alg":"ES256","kid":1,"typ":"at+jwt"}"#.to_string(),
        ),
        (
            "typ not a string",
            r#"{"alg":"ES256","kid":"k1","typ":1}"#.to_string(),
        ),
    ] {
        t.deny(
            name,
            &jwt::sign_raw(&key, "ES256", &hdr, &claims_text),
            "malformed",
        );
    }
    t.deny(
        "header not UTF-8",
        &sign_segments(&key, "ES256", &b64url(b"{\"alg\":\"ES256\xff\"}"), &p),
        "malformed",
    );
    // The claim-side duplicates: each token is otherwise valid, with the later value last.
    let dup_sub = format!(
        "{},\"sub\":\"admin\"}}",
        &claims_text[..claims_text.len() - 1]
    );
    let dup_nested = format!(
        "{},\"app\":{{\"role\":\"user\",\"role\":\"admin\"}}}}",
        &claims_text[..claims_text.len() - 1]
    );
    for (name, body) in [
        ("claims a JSON array", r#"["alice"]"#.to_string()),
        ("claims a JSON string", r#""alice""#.to_string()),
        ("claims null", "null".to_string()),
        ("claims not JSON", "sub=alice".to_string()),
        ("duplicate sub in the claims", dup_sub),
        ("duplicate member in a nested claim", dup_nested),
    ] {
        t.deny(
            name,
            &jwt::sign_raw(&key, "ES256", &header_text, &body),
            "malformed",
        );
    }
    t.pass(
        "claims text with odd whitespace (control)",
        &jwt::sign_raw(&key, "ES256", &header_text, &format!(" {claims_text}\n")),
        "alice",
    );

    t.group("oversized");
    let big = token_of_len(&key, &iss, "big", 9 * 1024);
    t.edge_refuses("9 KiB valid token", &big);
    t.pass(
        "7 KiB valid token",
        &token_of_len(&key, &iss, "seven", 7 * 1024),
        "seven",
    );
    t.pass(
        "exactly 8192 characters",
        &token_of_len(&key, &iss, "edge", 8192),
        "edge",
    );
    t.deny(
        "8193 characters",
        &token_of_len(&key, &iss, "edge2", 8193),
        "too_large",
    );
    t.edge_refuses("64 KiB of junk", &"A".repeat(64 * 1024));

    run(&gw, t, &["malformed", "too_large", "missing", "two_tokens"]);
}

/// Registered claims and the `typ` header: time rules with leeway, strict types, issuer,
/// audience.
#[test]
fn claims_issuer_audience_and_type() {
    let dir = tempdir();
    let key = TestKey::ec_p256().with_kid("k1");
    let jwks = JwksServer::serving(&[&key]);
    let iss = jwks.issuer_url();
    let iss_jwt = format!("{iss}/jwt-typ");
    let up = start_upstream("app", dir.path(), &[]);
    let issuers = format!(
        "issuers:\n  - name: main\n    issuer: {iss}\n    jwks_url: {url}\n    audiences: [demo]\n  - name: plain-jwt\n    issuer: {iss_jwt}\n    jwks_url: {iss}/jwt-typ/jwks.json\n    audiences: [demo]\n    typ: [JWT]\n",
        url = jwks.url()
    );
    let gw = gateway(dir.path(), &up, &issuers);
    let now = jwt::now();
    let es = |h: Value, c: Value| jwt::sign(&key, "ES256", h, c);
    let hdr = || jwt::header("k1", "ES256");
    let cl = |sub: &str| jwt::claims(&iss, sub, AUD, 300);
    let mut t = Table::new();

    t.group("time");
    t.pass("fresh token", &es(hdr(), cl("fresh")), "fresh");
    for (name, member, value, expect) in [
        ("exp now-120", "exp", json!(now - 120), Err("expired")),
        (
            "exp now-31 (just beyond leeway)",
            "exp",
            json!(now - 31),
            Err("expired"),
        ),
        (
            "exp now-10 (within leeway)",
            "exp",
            json!(now - 10),
            Ok("leeway-exp"),
        ),
        (
            "exp fractional",
            "exp",
            json!(now as f64 + 300.5),
            Ok("frac-exp"),
        ),
        ("nbf now+300", "nbf", json!(now + 300), Err("not_yet_valid")),
        (
            "nbf now+10 (within leeway)",
            "nbf",
            json!(now + 10),
            Ok("leeway-nbf"),
        ),
        (
            "iat now+300",
            "iat",
            json!(now + 300),
            Err("issued_in_future"),
        ),
        (
            "iat now+10 (within leeway)",
            "iat",
            json!(now + 10),
            Ok("leeway-iat"),
        ),
        (
            "exp as a string",
            "exp",
            json!("9999999999"),
            Err("invalid_claim"),
        ),
        ("exp 1e300", "exp", json!(1e300), Err("invalid_claim")),
        (
            "exp 99999999999999",
            "exp",
            json!(99_999_999_999_999_i64),
            Err("invalid_claim"),
        ),
        ("exp u64::MAX", "exp", json!(u64::MAX), Err("invalid_claim")),
        ("exp negative", "exp", json!(-1), Err("invalid_claim")),
        ("exp null", "exp", Value::Null, Err("invalid_claim")),
        ("exp true", "exp", json!(true), Err("invalid_claim")),
        (
            "exp an array",
            "exp",
            json!([now + 300]),
            Err("invalid_claim"),
        ),
        (
            "nbf as a string",
            "nbf",
            json!(now.to_string()),
            Err("invalid_claim"),
        ),
        (
            "iat as a string",
            "iat",
            json!(now.to_string()),
            Err("invalid_claim"),
        ),
        ("iat 1e300", "iat", json!(1e300), Err("invalid_claim")),
    ] {
        let sub = expect.unwrap_or("time");
        let token = es(hdr(), set(cl(sub), member, value));
        match expect {
            Ok(s) => t.pass(name, &token, s),
            Err(r) => t.deny(name, &token, r),
        }
    }
    t.deny(
        "exp missing",
        &es(hdr(), unset(cl("x"), "exp")),
        "invalid_claim",
    );
    t.pass(
        "nbf and iat missing (optional)",
        &es(hdr(), unset(unset(cl("no-nbf"), "nbf"), "iat")),
        "no-nbf",
    );

    t.group("issuer");
    for (name, value, reason) in [
        (
            "iss wrong",
            json!("https://evil.example"),
            "untrusted_issuer",
        ),
        (
            "iss with a trailing slash",
            json!(format!("{iss}/")),
            "untrusted_issuer",
        ),
        (
            "iss in upper case",
            json!(iss.to_uppercase()),
            "untrusted_issuer",
        ),
        ("iss empty", json!(""), "untrusted_issuer"),
        (
            "iss an array holding the issuer",
            json!([iss]),
            "invalid_claim",
        ),
        ("iss a number", json!(1), "invalid_claim"),
        ("iss null", Value::Null, "invalid_claim"),
    ] {
        t.deny(name, &es(hdr(), set(cl("x"), "iss", value)), reason);
    }
    t.deny(
        "iss missing",
        &es(hdr(), unset(cl("x"), "iss")),
        "untrusted_issuer",
    );

    t.group("audience");
    for (name, value, expect) in [
        ("aud wrong", json!("other"), Err("wrong_audience")),
        ("aud in upper case", json!("DEMO"), Err("wrong_audience")),
        (
            "aud array with the right one",
            json!(["other", "demo"]),
            Ok("aud-array"),
        ),
        (
            "aud array without it",
            json!(["other", "api"]),
            Err("wrong_audience"),
        ),
        ("aud empty array", json!([]), Err("wrong_audience")),
        ("aud a number", json!(42), Err("invalid_claim")),
        (
            "aud array with a number",
            json!(["demo", 1]),
            Err("invalid_claim"),
        ),
        (
            "aud an object",
            json!({"aud": "demo"}),
            Err("invalid_claim"),
        ),
    ] {
        let sub = expect.unwrap_or("aud");
        let token = es(hdr(), set(cl(sub), "aud", value));
        match expect {
            Ok(s) => t.pass(name, &token, s),
            Err(r) => t.deny(name, &token, r),
        }
    }
    t.deny(
        "aud missing",
        &es(hdr(), unset(cl("x"), "aud")),
        "wrong_audience",
    );
    t.deny(
        "aud null (same as missing)",
        &es(hdr(), set(cl("x"), "aud", Value::Null)),
        "wrong_audience",
    );

    t.group("other registered claims");
    for member in ["sub", "sid", "jti"] {
        t.deny(
            format!("{member} a number"),
            &es(hdr(), set(cl("x"), member, json!(7))),
            "invalid_claim",
        );
    }
    t.deny(
        "sub with CR LF (header injection)",
        &es(
            hdr(),
            set(cl("x"), "sub", json!("a\r\nX-Auth-Roles: admin")),
        ),
        "invalid_claim",
    );

    t.group("typ");
    let typ = |v: Option<Value>| match v {
        Some(v) => set(hdr(), "typ", v),
        None => unset(hdr(), "typ"),
    };
    for (name, value, expect) in [
        ("typ JWT", Some(json!("JWT")), Err("wrong_type")),
        ("typ missing", None, Err("wrong_type")),
        ("typ at+jwt", Some(json!("at+jwt")), Ok("typ-at")),
        (
            "typ application/at+jwt",
            Some(json!("application/at+jwt")),
            Ok("typ-app"),
        ),
        ("typ AT+JWT", Some(json!("AT+JWT")), Ok("typ-upper")),
        (
            "typ id_token-ish (JOSE)",
            Some(json!("JOSE")),
            Err("wrong_type"),
        ),
        (
            "typ at+jwt with a space",
            Some(json!("at+jwt ")),
            Err("wrong_type"),
        ),
        ("typ empty", Some(json!("")), Err("wrong_type")),
        ("typ an array", Some(json!(["at+jwt"])), Err("malformed")),
    ] {
        let sub = expect.unwrap_or("typ");
        let token = es(typ(value), cl(sub));
        match expect {
            Ok(s) => t.pass(name, &token, s),
            Err(r) => t.deny(name, &token, r),
        }
    }
    let jwt_cl = |sub: &str| jwt::claims(&iss_jwt, sub, AUD, 300);
    t.pass(
        "issuer with typ [JWT]: JWT",
        &es(typ(Some(json!("JWT"))), jwt_cl("jwt-typ")),
        "jwt-typ",
    );
    t.pass(
        "issuer with typ [JWT]: application/jwt",
        &es(typ(Some(json!("application/jwt"))), jwt_cl("jwt-app")),
        "jwt-app",
    );
    t.deny(
        "issuer with typ [JWT]: at+jwt",
        &es(typ(Some(json!("at+jwt"))), jwt_cl("x")),
        "wrong_type",
    );
    t.deny(
        "issuer with typ [JWT]: missing",
        &es(typ(None), jwt_cl("x")),
        "wrong_type",
    );

    run(
        &gw,
        t,
        &[
            "expired",
            "not_yet_valid",
            "issued_in_future",
            "invalid_claim",
            "untrusted_issuer",
            "wrong_audience",
            "wrong_type",
        ],
    );
}

/// `auth.max_token_size` raises the limit: the 9 KiB token the default refuses passes.
#[test]
fn max_token_size_is_configurable() {
    let dir = tempdir();
    let key = TestKey::ec_p256().with_kid("k1");
    let jwks = JwksServer::serving(&[&key]);
    let iss = jwks.issuer_url();
    let up = start_upstream("app", dir.path(), &[]);
    let issuers = format!(
        "auth:\n  max_token_size: 16k\nissuers:\n  - name: main\n    issuer: {iss}\n    jwks_url: {url}\n    audiences: [demo]\n",
        url = jwks.url()
    );
    let gw = gateway(dir.path(), &up, &issuers);
    let mut t = Table::new();
    t.group("oversized (max_token_size 16k)");
    t.pass(
        "9 KiB token",
        &token_of_len(&key, &iss, "nine", 9 * 1024),
        "nine",
    );
    t.pass(
        "exactly 16384",
        &token_of_len(&key, &iss, "edge", 16384),
        "edge",
    );
    t.deny("16385", &token_of_len(&key, &iss, "x", 16385), "too_large");
    t.edge_refuses("17 KiB token", &token_of_len(&key, &iss, "x", 17 * 1024));
    run(&gw, t, &["too_large"]);
}

/// HMAC secrets below 32 bytes, and HMAC algorithms on public-key issuers (or the reverse),
/// are configuration errors: `-t` fails and the gateway does not start.
#[test]
fn hmac_configuration_is_checked() {
    let dir = tempdir();
    let write_config = |name: &str, issuer_yaml: &str| {
        let path = dir.path().join(name);
        let text = format!(
            "{}listeners:\n  - address: 127.0.0.1:{}\nadmin:\n  address: 127.0.0.1:{}\n{issuer_yaml}routes:\n  - name: r\n    match: {{path: {{prefix: /}}}}\n    return: 200 \"ok\"\n",
            server_block(dir.path()),
            free_port(),
            free_port()
        );
        std::fs::write(&path, text).unwrap();
        path
    };
    let hmac_issuer = |file: &str, algs: &str| {
        format!(
            "issuers:\n  - name: hmac\n    issuer: https://hmac.test\n    hmac_secret_file: {}\n{algs}",
            dir.path().join(file).display()
        )
    };
    let secrets: [(&str, Vec<u8>, bool); 6] = [
        ("s16", b"0123456789abcdef".to_vec(), false),
        ("s31", vec![b'k'; 31], false),
        ("s31nl", [vec![b'k'; 31], b"\n".to_vec()].concat(), false),
        ("s32", vec![b'k'; 32], true),
        ("s32nl", [vec![b'k'; 32], b"\n".to_vec()].concat(), true),
        ("s48", jwt::random_id(36).into_bytes(), true),
    ];
    let mut failures = Vec::new();
    for (name, bytes, ok) in &secrets {
        std::fs::write(dir.path().join(name), bytes).unwrap();
        let cfg = write_config(&format!("{name}.yaml"), &hmac_issuer(name, ""));
        let (code, out) = check_config(&cfg);
        let good = if *ok {
            code == 0
        } else {
            code != 0 && out.contains("hmac_secret_file") && out.contains("at least 32")
        };
        if !good {
            failures.push(format!("secret {name}: -t exit {code}: {out}"));
        }
    }
    // Start, not just -t: the 16-byte secret stops the gateway.
    let cfg = dir.path().join("s16.yaml");
    let arg = cfg.display().to_string();
    let mut proc = Proc::spawn(
        "gateway-s16",
        &bin("portcullis-gateway"),
        &["-c", &arg],
        dir.path(),
    );
    match proc.wait_exit(Duration::from_secs(10)) {
        Some(code) if code != 0 => {}
        other => failures.push(format!(
            "gateway with a 16-byte HMAC secret: exit {other:?}: {}",
            proc.stderr_text()
        )),
    }

    // Mixing families is refused both ways (the key-confusion door stays shut in config).
    let mixed = [
        (
            "hmac issuer listing RS256",
            hmac_issuer("s48", "    algorithms: [HS256, RS256]\n"),
        ),
        (
            "JWKS issuer listing HS256",
            "issuers:\n  - name: j\n    issuer: https://j.test\n    jwks_url: http://127.0.0.1:9/jwks.json\n    algorithms: [RS256, HS256]\n".to_string(),
        ),
        (
            "alg none listed",
            "issuers:\n  - name: j\n    issuer: https://j.test\n    jwks_url: http://127.0.0.1:9/jwks.json\n    algorithms: [none]\n".to_string(),
        ),
    ];
    for (i, (name, yaml)) in mixed.iter().enumerate() {
        let cfg = write_config(&format!("mixed{i}.yaml"), yaml);
        let (code, out) = check_config(&cfg);
        if code == 0 || !out.contains("algorithms") {
            failures.push(format!("{name}: -t exit {code}: {out}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
