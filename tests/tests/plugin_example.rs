//! The documented plugin example (`gateway/examples/plugin.rs`) really verifies tokens.

use std::time::Duration;

use portcullis_tests::jwt::{self, JwksServer, TestKey};
use portcullis_tests::*;

#[test]
fn the_plugin_example_verifies_tokens_in_its_own_proxy() {
    let dir = tempdir();
    let key = TestKey::ec_p256().with_kid("k1");
    let jwks = JwksServer::serving(&[&key]);
    // The issuer's revocation feed, as the issuer answers it: one logged-out session.
    let feed = |records: serde_json::Value, next: i64, snapshot: bool| {
        serde_json::json!({"records": records, "next": next, "snapshot": snapshot, "more": false})
            .to_string()
            .into_bytes()
    };
    let revoked = serde_json::json!([{"seq": 1, "kind": "session", "sid": "logged-out", "until": 4_000_000_000u64}]);
    jwks.set_route("/v1/revocations", Some((200, feed(revoked, 1, true))));
    jwks.set_route(
        "/v1/revocations?after=1",
        Some((200, feed(serde_json::json!([]), 1, false))),
    );
    let token_file = dir.path().join("feed-token");
    std::fs::write(&token_file, "feed-secret\n").unwrap();
    let up = start_upstream("app", dir.path(), &[]);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let upstream = format!("127.0.0.1:{}", up.port);
    let example = bin_dir().join("examples/plugin");
    assert!(
        example.exists(),
        "build it first: cargo build -p portcullis-gateway --examples"
    );
    let _proxy = Proc::spawn(
        "plugin",
        &example,
        &[
            "--listen",
            &listen,
            "--upstream",
            &upstream,
            "--issuer",
            &jwks.issuer_url(),
            "--jwks",
            &jwks.url(),
            "--revocations",
            &jwks.url_for("/v1/revocations"),
            "--feed-token-file",
            token_file.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert!(
        wait_for(Duration::from_secs(10), || port_open(port)),
        "example did not start"
    );
    assert!(
        jwks.wait_for_fetches(1, Duration::from_secs(10)),
        "example never fetched the JWKS"
    );

    assert_eq!(raw_get(port, "/x", &[]).status, 401);
    let token = jwt::sign(
        &key,
        "ES256",
        jwt::header("k1", "ES256"),
        jwt::claims(&jwks.issuer_url(), "svc-9", "demo", 60),
    );
    let resp = raw_get(
        port,
        "/x",
        &[
            ("Authorization", &format!("Bearer {token}")),
            ("X-Auth-Subject", "root"),
        ],
    );
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json()["headers"]["x-auth-subject"], "svc-9");
    assert_eq!(
        raw_get(
            port,
            "/x",
            &[(
                "Authorization",
                &format!("Bearer {}", jwt::corrupt_signature(&token))
            )]
        )
        .status,
        401
    );

    // The library's revocation check: a token of the logged-out session is refused, at once
    // and again when cached; another session of the same subject passes.
    assert!(
        wait_for(Duration::from_secs(10), || jwks
            .was_requested("/v1/revocations")),
        "example never read the revocation feed"
    );
    let with_sid = |sid: &str| {
        let mut claims = jwt::claims(&jwks.issuer_url(), "svc-9", "demo", 60);
        claims["sid"] = serde_json::json!(sid);
        let t = jwt::sign(&key, "ES256", jwt::header("k1", "ES256"), claims);
        vec![("Authorization".to_string(), format!("Bearer {t}"))]
    };
    let status = |h: &[(String, String)]| {
        let h: Vec<(&str, &str)> = h.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        raw_get(port, "/x", &h).status
    };
    let revoked = with_sid("logged-out");
    assert!(
        wait_for(Duration::from_secs(5), || status(&revoked) == 401),
        "a revoked session's token still passes the plugin"
    );
    assert_eq!(status(&revoked), 401);
    assert_eq!(status(&with_sid("still-in")), 200);
    let log = jwks.request_log();
    assert!(
        log.iter().any(|r| r.path.starts_with("/v1/revocations")
            && r.header("authorization") == Some("Bearer feed-secret")),
        "the feed was read without its credential"
    );
}
