//! The documented plugin example (`gateway/examples/plugin.rs`) really verifies tokens.

use std::time::Duration;

use portcullis_tests::jwt::{self, JwksServer, TestKey};
use portcullis_tests::*;

#[test]
fn the_plugin_example_verifies_tokens_in_its_own_proxy() {
    let dir = tempdir();
    let key = TestKey::ec_p256().with_kid("k1");
    let jwks = JwksServer::serving(&[&key]);
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
}
