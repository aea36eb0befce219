//! Smoke test of JWT verification end to end: a valid token passes with identity headers,
//! a missing one gets the RFC 6750 challenge.

use portcullis_tests::jwt::{self, JwksServer, TestKey};
use portcullis_tests::*;

#[test]
fn valid_token_passes_and_identity_headers_reach_the_upstream() {
    let dir = tempdir();
    let key = TestKey::ec_p256().with_kid("k1");
    let jwks = JwksServer::serving(&[&key]);
    let up = start_upstream("app", dir.path(), &[]);
    let body = format!(
        "issuers:\n  - name: test\n    issuer: {iss}\n    jwks_url: {url}\n    audiences: [demo]\nupstreams:\n  app:\n    backends: [\"127.0.0.1:{port}\"]\nroutes:\n  - name: api\n    match: {{path: {{prefix: /api/}}}}\n    upstream: app\n",
        iss = jwks.issuer_url(),
        url = jwks.url(),
        port = up.port
    );
    let gw = start_gateway(dir.path(), &body);
    assert!(
        wait_for(std::time::Duration::from_secs(10), || client()
            .get(gw.admin_url("/readyz"))
            .send()
            .map(|r| r.status().as_u16() == 200)
            .unwrap_or(false)),
        "gateway never became ready"
    );

    let resp = raw_get(gw.port, "/api/x", &[]);
    assert_eq!(resp.status, 401);
    assert_eq!(
        resp.header("www-authenticate"),
        Some("Bearer realm=\"portcullis\"")
    );

    let claims = jwt::claims(&jwks.issuer_url(), "user-1", "demo", 300);
    let token = jwt::sign(&key, "ES256", jwt::header("k1", "ES256"), claims);
    let auth = format!("Bearer {token}");
    let resp = raw_get(
        gw.port,
        "/api/x",
        &[("Authorization", &auth), ("X-Auth-Subject", "admin")],
    );
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    let h = &resp.json()["headers"];
    assert_eq!(h["x-auth-subject"], "user-1");
    assert_eq!(h["x-auth-issuer"], jwks.issuer_url());
    assert_eq!(h["x-auth-scopes"], "read write");
    assert!(
        h.get("authorization").is_none(),
        "the token is not forwarded by default"
    );

    let bad = jwt::corrupt_signature(&token);
    let resp = raw_get(
        gw.port,
        "/api/x",
        &[("Authorization", &format!("Bearer {bad}"))],
    );
    assert_eq!(resp.status, 401);
    assert!(resp
        .header("www-authenticate")
        .unwrap()
        .contains("error=\"invalid_token\""));
}
