//! Transports end to end: TLS and Unix-socket listeners downstream, Unix-socket and TLS
//! backends upstream.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use portcullis_tests::*;

/// Writes a full `gateway.yaml` with the given `listeners:` entries (YAML list items,
/// indented by two spaces) plus an admin listener and `body`, starts the gateway and waits
/// until the admin port answers and `ready` holds.
fn start_gateway_listeners(
    dir: &Path,
    listeners: &str,
    body: &str,
    mut ready: impl FnMut() -> bool,
) -> Proc {
    let admin_port = free_port();
    let config = dir.join("gateway.yaml");
    let text = format!(
        "{}listeners:\n{listeners}admin:\n  address: 127.0.0.1:{admin_port}\n{body}",
        server_block(dir)
    );
    std::fs::write(&config, text).expect("write config");
    let config_arg = config.display().to_string();
    let mut proc = Proc::spawn(
        "gateway",
        &bin("portcullis-gateway"),
        &["-c", &config_arg],
        dir,
    );
    let ok = wait_for(Duration::from_secs(15), || port_open(admin_port) && ready());
    if !ok {
        let _ = proc.wait_exit(Duration::from_millis(100));
        panic!("gateway did not start:\n{}", proc.stderr_text());
    }
    proc
}

/// One public route `/public/` to the upstream group `app` with the given backends YAML.
fn public_route(backends: &str) -> String {
    format!(
        "upstreams:\n  app:\n    backends: {backends}\nroutes:\n  - name: public\n    match: {{path: {{prefix: /public/}}}}\n    auth: public\n    upstream: app\n"
    )
}

/// A TLS listener entry on `port` with `cert` (HTTP/2 offered through ALPN when `http2`).
fn tls_listener(cert: &TestCert, port: u16, http2: bool) -> String {
    format!(
        "  - address: 127.0.0.1:{port}\n    tls: {{cert: {}, key: {}{}}}\n",
        cert.cert.display(),
        cert.key.display(),
        if http2 { "" } else { ", http2: false" }
    )
}

/// A gateway with `listeners` and one public route `/public/` to `up`.
fn start_public(dir: &Path, listeners: &str, up: &Upstream, ready: impl FnMut() -> bool) -> Proc {
    let route = public_route(&format!("[\"127.0.0.1:{}\"]", up.port));
    start_gateway_listeners(dir, listeners, &route, ready)
}

/// A reqwest client over rustls that trusts exactly `pem` (plus the platform roots).
fn tls_client(pem: &str, http1_only: bool) -> reqwest::blocking::Client {
    let mut b = reqwest::blocking::Client::builder()
        .no_proxy()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).expect("cert"))
        .timeout(Duration::from_secs(10));
    if http1_only {
        b = b.http1_only();
    }
    b.build().expect("tls client")
}

#[test]
fn downstream_tls_listener_serves_http1_and_http2_via_alpn() {
    let dir = tempdir();
    let cert = test_cert(dir.path(), "gw");
    let up = start_upstream("app", dir.path(), &[]);
    let plain = free_port();
    let h2 = free_port();
    let h1 = free_port();
    let listeners = format!(
        "  - address: 127.0.0.1:{plain}\n{}{}",
        tls_listener(&cert, h2, true),
        tls_listener(&cert, h1, false)
    );
    let _gw = start_public(dir.path(), &listeners, &up, || {
        port_open(plain) && port_open(h2) && port_open(h1)
    });

    // Default TLS listener: ALPN offers h2, so a client that speaks it gets HTTP/2.
    let client = tls_client(&cert.pem, false);
    for host in ["localhost", "127.0.0.1"] {
        let resp = client
            .get(format!("https://{host}:{h2}/public/tls?x=1"))
            .send()
            .expect("https request");
        assert_eq!(resp.status().as_u16(), 200);
        assert_eq!(
            resp.version(),
            reqwest::Version::HTTP_2,
            "ALPN should pick h2 on {host}"
        );
        let echo: Value = resp.json().expect("json");
        assert_eq!(echo["server"], "app");
        assert_eq!(echo["path"], "/public/tls");
        assert_eq!(echo["query"], "x=1");
        assert_eq!(
            echo["headers"]["x-forwarded-proto"], "https",
            "the gateway knows the request came over TLS"
        );
    }

    // The same listener still serves HTTP/1.1 clients.
    let resp = tls_client(&cert.pem, true)
        .get(format!("https://localhost:{h2}/public/one"))
        .send()
        .expect("https/1.1");
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.version(), reqwest::Version::HTTP_11);
    assert_eq!(
        resp.json::<Value>().unwrap()["headers"]["x-forwarded-proto"],
        "https"
    );

    // `http2: false`: even an h2-capable client is answered over HTTP/1.1.
    let resp = client
        .get(format!("https://localhost:{h1}/public/one"))
        .send()
        .expect("https to h1-only listener");
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.version(), reqwest::Version::HTTP_11);
    assert_eq!(resp.json::<Value>().unwrap()["server"], "app");

    // It is real TLS: a client that does not trust the certificate is refused …
    let untrusting = reqwest::blocking::Client::builder()
        .no_proxy()
        .use_rustls_tls()
        .build()
        .unwrap();
    assert!(untrusting
        .get(format!("https://localhost:{h2}/public/x"))
        .send()
        .is_err());
    // … and the plain listener still answers with x-forwarded-proto http.
    assert_eq!(
        echo(&format!("http://127.0.0.1:{plain}/public/x"))["headers"]["x-forwarded-proto"],
        "http"
    );
}

#[test]
fn downstream_unix_socket_listener_with_mode() {
    let dir = tempdir();
    let up = start_upstream("app", dir.path(), &[]);
    let plain = free_port();
    let sock = dir.path().join("gw.sock");
    let private = dir.path().join("gw-private.sock");
    let listeners = format!(
        "  - address: 127.0.0.1:{plain}\n  - unix: {}\n    mode: \"0660\"\n  - unix: {}\n    mode: \"0600\"\n",
        sock.display(),
        private.display()
    );
    let _gw = start_gateway_listeners(
        dir.path(),
        &listeners,
        &public_route(&format!("[\"127.0.0.1:{}\"]", up.port)),
        || {
            port_open(plain)
                && UnixStream::connect(&sock).is_ok()
                && UnixStream::connect(&private).is_ok()
        },
    );

    let mut s = UnixStream::connect(&sock).expect("connect unix listener");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let resp = raw_request(
        &mut s,
        "GET /public/over-uds?q=2 HTTP/1.1\r\nHost: uds.local\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    let echo = resp.json();
    assert_eq!(echo["server"], "app");
    assert_eq!(echo["path"], "/public/over-uds");
    assert_eq!(echo["query"], "q=2");
    assert_eq!(echo["headers"]["host"], "uds.local");
    assert_eq!(echo["headers"]["x-forwarded-proto"], "http");
    assert!(
        resp.header("x-request-id").is_some(),
        "answered by the gateway, not something else"
    );

    let mode = |p: &Path| {
        std::fs::metadata(p)
            .expect("socket metadata")
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(
        mode(&sock),
        0o660,
        "mode \"0660\" is applied to the socket file"
    );
    assert_eq!(
        mode(&private),
        0o600,
        "mode \"0600\" is applied to the socket file"
    );
}

#[test]
fn upstream_over_unix_socket() {
    let dir = tempdir();
    let sock = dir.path().join("up.sock");
    let sock_arg = sock.display().to_string();
    let _up = Proc::spawn(
        "upstream-uds",
        &bin("portcullis-demo-upstream"),
        &["--name", "uds", "--unix", &sock_arg],
        dir.path(),
    );
    assert!(
        wait_for(Duration::from_secs(10), || UnixStream::connect(&sock)
            .is_ok()),
        "unix upstream did not start"
    );
    let gw = start_gateway(dir.path(), &public_route(&format!("[\"unix:{sock_arg}\"]")));

    for _ in 0..3 {
        let resp = raw_get(gw.port, "/public/via-socket?n=1", &[]);
        assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
        let echo = resp.json();
        assert_eq!(echo["server"], "uds");
        assert_eq!(echo["listener"], "unix");
        assert_eq!(echo["path"], "/public/via-socket");
        assert_eq!(echo["query"], "n=1");
    }
}

/// Starts a demo upstream named `secure` serving HTTPS with a fresh self-signed certificate;
/// returns it with its port and the certificate path.
fn start_tls_upstream(dir: &Path) -> (Proc, u16, String) {
    let cert = test_cert(dir, "up");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let (c, k) = (
        cert.cert.display().to_string(),
        cert.key.display().to_string(),
    );
    let up = Proc::spawn(
        "upstream-tls",
        &bin("portcullis-demo-upstream"),
        &[
            "--name",
            "secure",
            "--tls-listen",
            &listen,
            "--tls-cert",
            &c,
            "--tls-key",
            &k,
        ],
        dir,
    );
    assert!(
        wait_for(Duration::from_secs(10), || port_open(port)),
        "TLS upstream did not start"
    );
    (up, port, c)
}

/// Three groups in front of the same HTTPS backend: `trusted` (ca_file = its certificate),
/// `system-roots` (no tls block: verification against the platform roots) and `unverified`
/// (`verify: false`), routed at `/trusted/`, `/system/` and `/unverified/`.
fn tls_groups(port: u16, ca: &str) -> String {
    format!(
        "upstreams:\n  trusted:\n    backends: [\"https://localhost:{port}\"]\n    tls: {{ca_file: {ca}}}\n  system-roots:\n    backends: [\"https://localhost:{port}\"]\n  unverified:\n    backends: [\"https://localhost:{port}\"]\n    tls: {{verify: false}}\nroutes:\n  - name: trusted\n    match: {{path: {{prefix: /trusted/}}}}\n    auth: public\n    upstream: trusted\n  - name: system-roots\n    match: {{path: {{prefix: /system/}}}}\n    auth: public\n    upstream: system-roots\n  - name: unverified\n    match: {{path: {{prefix: /unverified/}}}}\n    auth: public\n    upstream: unverified\n"
    )
}

#[test]
fn upstream_over_tls_verifies_the_certificate() {
    let dir = tempdir();
    let (up, port, ca) = start_tls_upstream(dir.path());
    let gw = start_gateway(dir.path(), &tls_groups(port, &ca));

    // Without ca_file, verification against the system roots is on by default: refused.
    // (Asked first, while no verified connection to this backend sits in the pool — see
    // `verified_upstream_tls_connections_are_not_reused_by_a_group_with_other_trust`.)
    let resp = raw_get(gw.port, "/system/x", &[]);
    assert_eq!(resp.status, 502, "{}", String::from_utf8_lossy(&resp.body));
    assert_eq!(resp.json()["error"], "bad_gateway");
    assert_eq!(resp.header("content-type"), Some("application/json"));
    // The refused handshake really reached the upstream and failed there.
    assert!(
        wait_for(Duration::from_secs(5), || up
            .stderr_text()
            .contains("TLS handshake")),
        "the upstream saw no failed handshake:\n{}",
        up.stderr_text()
    );

    // ca_file trusts the self-signed certificate: the request arrives over TLS.
    let resp = raw_get(gw.port, "/trusted/x?y=1", &[]);
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    let echo = resp.json();
    assert_eq!(echo["server"], "secure");
    assert_eq!(echo["listener"], "tls");
    assert_eq!(echo["path"], "/trusted/x");
    assert_eq!(echo["query"], "y=1");

    // verify: false is the explicit opt-out, and it still talks TLS.
    let resp = raw_get(gw.port, "/unverified/x", &[]);
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    assert_eq!(resp.json()["listener"], "tls");
}

/// A connection verified against one group's `ca_file` must not serve a group whose trust
/// store does not accept that certificate. Pingora's connection-pool key (`HttpPeer`'s hash)
/// covers address, SNI and the verify flags but not `options.ca`, so unless the gateway
/// separates the pools (e.g. `HttpPeer::group_key`), the keep-alive connection opened for
/// `trusted` is handed to `system-roots`.
#[test]
fn verified_upstream_tls_connections_are_not_reused_by_a_group_with_other_trust() {
    let dir = tempdir();
    let (_up, port, ca) = start_tls_upstream(dir.path());
    let gw = start_gateway(dir.path(), &tls_groups(port, &ca));

    let resp = raw_get(gw.port, "/trusted/x", &[]);
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    // The trusted connection is now idle in the pool; the system-roots group must still refuse.
    for _ in 0..3 {
        let resp = raw_get(gw.port, "/system/x", &[]);
        assert_eq!(
            resp.status,
            502,
            "a group without ca_file reached the self-signed backend over a connection verified for another group: {}",
            String::from_utf8_lossy(&resp.body)
        );
    }
}

/// The head bounds hold on TLS listeners too: over HTTP/1.1 the connection guard answers 431,
/// over HTTP/2 the h2 header-list bound (= `server.limits.max_head_size`) refuses the request;
/// neither reaches the upstream.
#[test]
fn head_limits_hold_over_tls_and_http2() {
    let dir = tempdir();
    let cert = test_cert(dir.path(), "gw");
    let up = start_upstream("app", dir.path(), &[]);
    let tls = free_port();
    let _gw = start_public(dir.path(), &tls_listener(&cert, tls, true), &up, || {
        port_open(tls)
    });
    let url = format!("https://localhost:{tls}/public/big");
    // Five 7 KiB headers: every line is within 8 KiB, the head is over 32 KiB.
    let big = "b".repeat(7 * 1024);
    for (http1_only, want) in [
        (true, reqwest::Version::HTTP_11),
        (false, reqwest::Version::HTTP_2),
    ] {
        let client = tls_client(&cert.pem, http1_only);
        let ok = client.get(&url).send().expect("normal request");
        assert_eq!((ok.status().as_u16(), ok.version()), (200, want));
        let mut req = client.get(&url);
        for i in 0..5 {
            req = req.header(format!("x-big-{i}"), big.as_str());
        }
        match req.send() {
            Ok(resp) => {
                assert_eq!(
                    resp.status().as_u16(),
                    431,
                    "{want:?}: a 35 KiB head was answered {}",
                    resp.status()
                );
                assert!(resp.headers().get("x-demo-server").is_none());
            }
            // h2 may refuse the stream instead of answering it; never forwarded either way.
            Err(e) => assert!(!http1_only, "HTTP/1.1 over TLS: no 431 but {e}"),
        }
    }
}
