//! The shipped configuration (`config/gateway.yaml` + `conf.d/`) on its documented ports:
//! `/public/` is proxied, `/api/` answers the RFC 6750 challenge without a token and passes
//! a token of the trusted issuer (played here by a JWKS server on the issuer's port 8081,
//! which also answers the revocation feed's snapshot), `/admin/` needs role `admin`.

use std::time::Duration;

use portcullis_tests::jwt::{self, JwksServer, TestKey};
use portcullis_tests::*;
use serde_json::json;

#[test]
fn shipped_config_protects_api_and_admin_and_injects_identity() {
    for port in [8080, 8443, 9901, 9000, 8081] {
        if port_open(port) {
            eprintln!("SKIPPED: port {port} is in use (is `make run` running?)");
            return;
        }
    }
    let dir = tempdir();
    let key = TestKey::ec_p256().with_kid("shipped");
    let issuer = JwksServer::start_on(8081);
    issuer.set_keys(vec![key.public_jwk()]);
    let empty = |snapshot: bool| {
        json!({"records": [], "next": 0, "snapshot": snapshot, "more": false})
            .to_string()
            .into_bytes()
    };
    issuer.set_route("/v1/revocations", Some((200, empty(true))));
    issuer.set_route("/v1/revocations?after=0", Some((200, empty(false))));
    let upstream = Proc::spawn(
        "demo",
        &bin("portcullis-demo-upstream"),
        &["--name", "demo", "--listen", "127.0.0.1:9000"],
        dir.path(),
    );
    assert!(wait_for(Duration::from_secs(10), || port_open(9000)));
    let config = shipped_gateway_config(dir.path());
    let _gw = Proc::spawn(
        "gateway",
        &bin("portcullis-gateway"),
        &["-c", config.to_str().unwrap()],
        dir.path(),
    );
    assert!(
        wait_for(Duration::from_secs(15), || client()
            .get("http://127.0.0.1:9901/readyz")
            .send()
            .map(|r| r.status().as_u16() == 200)
            .unwrap_or(false)),
        "gateway not ready"
    );
    // The JWKS is fetched in the background at start; wait for it so the first token passes.
    assert!(
        wait_for(Duration::from_secs(10), || client()
            .get("http://127.0.0.1:9901/readyz")
            .send()
            .ok()
            .and_then(|r| r.json::<serde_json::Value>().ok())
            .is_some_and(|v| v["issuers"]["portcullis"]["keys"] == true)),
        "the issuer's keys were never fetched"
    );
    assert!(issuer.was_requested("/.well-known/jwks.json"));

    let public = raw_get(8080, "/public/hello", &[]);
    assert_eq!(public.status, 200);
    assert_eq!(public.json()["path"], "/public/hello");

    let none = raw_get(8080, "/api/orders", &[]);
    assert_eq!(none.status, 401);
    assert_eq!(
        none.header("www-authenticate"),
        Some("Bearer realm=\"portcullis\"")
    );

    let sign = |claims: serde_json::Value| {
        jwt::sign(&key, "ES256", jwt::header("shipped", "ES256"), claims)
    };
    let mut claims = jwt::claims("http://127.0.0.1:8081", "user-42", "demo", 300);
    let user = sign(claims.clone());
    let ok = raw_get(
        8080,
        "/api/orders",
        &[("Authorization", &format!("Bearer {user}"))],
    );
    assert_eq!(ok.status, 200, "{}", String::from_utf8_lossy(&ok.body));
    assert_eq!(ok.json()["headers"]["x-auth-subject"], "user-42");

    let wrong_aud = sign(jwt::claims(
        "http://127.0.0.1:8081",
        "user-42",
        "other",
        300,
    ));
    assert_eq!(
        raw_get(
            8080,
            "/api/orders",
            &[("Authorization", &format!("Bearer {wrong_aud}"))]
        )
        .status,
        401
    );

    assert_eq!(
        raw_get(
            8080,
            "/admin/panel",
            &[("Authorization", &format!("Bearer {user}"))]
        )
        .status,
        403
    );
    claims["roles"] = json!(["admin"]);
    let admin = sign(claims);
    let ok = raw_get(
        8080,
        "/admin/panel",
        &[("Authorization", &format!("Bearer {admin}"))],
    );
    assert_eq!(ok.status, 200);
    assert_eq!(ok.json()["headers"]["x-auth-roles"], "admin");
    drop(upstream);
}
