//! `portcullis-gateway -t`: a good configuration passes; every broken one fails with exit
//! code 1 and a message naming the file, the line and the key, like `nginx -t`.

use std::path::{Path, PathBuf};

use portcullis_tests::*;

/// A config directory: `gateway.yaml` plus whatever `conf.d/` files a test writes.
struct ConfDir {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
}

impl ConfDir {
    fn new() -> ConfDir {
        let tmp = tempdir();
        let dir = tmp.path().to_path_buf();
        std::fs::create_dir(dir.join("conf.d")).expect("mkdir conf.d");
        ConfDir { _tmp: tmp, dir }
    }

    /// Writes `rel` (relative to the config directory) and returns its full path.
    fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.dir.join(rel);
        std::fs::write(&p, text).expect("write config file");
        p
    }

    /// Writes the main file: a valid server/listener/upstream preamble plus `rest`.
    fn main(&self, rest: &str) -> PathBuf {
        let text = format!("{}{rest}", preamble(&self.dir));
        self.write("gateway.yaml", &text)
    }
}

/// A valid head of a main file: server block, one listener, upstream `app`.
fn preamble(dir: &Path) -> String {
    format!(
        "{}listeners:\n  - address: 127.0.0.1:18080\nupstreams:\n  app:\n    backends: [\"127.0.0.1:19000\"]\n",
        server_block(dir)
    )
}

/// 1-based number of the first line of `file` containing `needle`.
fn line_of(file: &Path, needle: &str) -> usize {
    let text = std::fs::read_to_string(file).expect("read back");
    text.lines()
        .position(|l| l.contains(needle))
        .map(|i| i + 1)
        .unwrap_or_else(|| panic!("{needle:?} not in {}", file.display()))
}

/// Runs `-t` on `main` and checks exit code 1 plus an error at `file:line` naming `key`.
fn expect_error(main: &Path, file: &Path, line: usize, key: &str) -> String {
    let (code, out) = check_config(main);
    assert_eq!(code, 1, "expected exit code 1:\n{out}");
    let emerg = out
        .lines()
        .find(|l| l.contains("[emerg]"))
        .unwrap_or_else(|| panic!("no [emerg] line:\n{out}"));
    let at = format!("{}:{line}:", file.display());
    assert!(
        emerg.contains(&at),
        "expected the error at {at} (file:line), got:\n{out}"
    );
    assert!(
        emerg.contains(key),
        "expected the error to name {key:?}, got:\n{out}"
    );
    assert!(
        out.contains(&format!(
            "configuration file {} test failed",
            main.display()
        )),
        "{out}"
    );
    out
}

#[test]
fn a_good_config_with_includes_passes() {
    let c = ConfDir::new();
    let main = c.main("routes:\n  - name: main-route\n    match: {path: {prefix: /m/}}\n    auth: public\n    upstream: app\ninclude: [\"conf.d/*.yaml\"]\n");
    c.write(
        "conf.d/10-a.yaml",
        "upstreams:\n  other:\n    backends: [\"127.0.0.1:19001\"]\n    timeouts: {connect: 250ms, read: 2m}\nroutes:\n  - name: a\n    match: {path: {prefix: /a/}, methods: [GET]}\n    auth: public\n    upstream: other\n",
    );
    // The same path with other methods, or with a host, is not ambiguous.
    c.write(
        "conf.d/20-b.yaml",
        "routes:\n  - name: b\n    match: {path: {prefix: /a/}, methods: [POST]}\n    upstream: app\n  - name: b-host\n    match: {host: a.example.com, path: {prefix: /a/}}\n    upstream: app\n  - name: b-fixed\n    match: {path: {exact: /ok}}\n    return: 200 \"ok\"\n",
    );
    // Not matched by the glob: must not be read.
    c.write("conf.d/README.txt", "this: [is not yaml\n");
    let (code, out) = check_config(&main);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("test is successful"), "{out}");
    assert!(out.contains("3 files, 5 routes, 2 upstreams"), "{out}");
}

#[test]
fn the_shipped_config_passes() {
    let dir = tempdir();
    let main = shipped_gateway_config(dir.path());
    let (code, out) = check_config(&main);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("test is successful"), "{out}");
}

#[test]
fn unknown_key_in_the_main_file() {
    let c = ConfDir::new();
    let main = c.main("routes:\n  - name: r\n    match: {path: {prefix: /r/}}\n    auth: public\n    upstream: app\n    colour: red\n");
    expect_error(&main, &main, line_of(&main, "colour:"), "colour");
}

#[test]
fn unknown_top_level_key_in_the_main_file() {
    let c = ConfDir::new();
    let main = c.main("routez: []\n");
    expect_error(&main, &main, line_of(&main, "routez:"), "routez");
}

#[test]
fn unknown_key_in_an_included_file_names_that_file() {
    let c = ConfDir::new();
    let main = c.main("include: [\"conf.d/*.yaml\"]\n");
    c.write(
        "conf.d/10-ok.yaml",
        "routes:\n  - name: ok\n    match: {path: {prefix: /ok/}}\n    upstream: app\n",
    );
    let inc = c.write(
        "conf.d/20-bad.yaml",
        "routes:\n  - name: bad\n    match:\n      path: {prefix: /bad/}\n    upstream: app\n    colour: red\n",
    );
    let out = expect_error(&main, &inc, line_of(&inc, "colour:"), "colour");
    assert!(!out.contains("10-ok.yaml"), "{out}");
}

#[test]
fn duplicate_route_names_across_included_files() {
    let c = ConfDir::new();
    let main = c.main("include: [\"conf.d/*.yaml\"]\n");
    // Written out of order: the lexically later file is the duplicate, whatever the
    // directory listing order is.
    let later = c.write(
        "conf.d/20-b.yaml",
        "routes:\n  - name: other\n    match: {path: {prefix: /o/}}\n    upstream: app\n  - name: shared\n    match: {path: {prefix: /b/}}\n    upstream: app\n",
    );
    let earlier = c.write(
        "conf.d/10-a.yaml",
        "routes:\n  - name: shared\n    match: {path: {prefix: /a/}}\n    upstream: app\n",
    );
    let out = expect_error(&main, &later, line_of(&later, "name: shared"), "name");
    assert!(out.contains("\"shared\""), "{out}");
    let first = format!(
        "{}:{}",
        earlier.display(),
        line_of(&earlier, "name: shared")
    );
    assert!(
        out.contains(&first),
        "expected the first definition {first} to be named:\n{out}"
    );
}

#[test]
fn two_routes_with_the_same_match() {
    let c = ConfDir::new();
    let main = c.main(
        "routes:\n  - name: one\n    match: {path: {prefix: /x/}, methods: [GET, POST]}\n    upstream: app\n  - name: two\n    match: {path: {prefix: /x/}, methods: [post]}\n    upstream: app\n",
    );
    let out = expect_error(&main, &main, line_of(&main, "name: two"), "match");
    assert!(out.contains("\"one\""), "the other route is named:\n{out}");
}

#[test]
fn route_to_an_undefined_upstream() {
    let c = ConfDir::new();
    let main =
        c.main("routes:\n  - name: r\n    match: {path: {prefix: /r/}}\n    upstream: nope\n");
    let out = expect_error(&main, &main, line_of(&main, "upstream: nope"), "upstream");
    assert!(out.contains("\"nope\""), "{out}");
}

#[test]
fn missing_or_invalid_tls_certificate() {
    let c = ConfDir::new();
    let cert = test_cert(&c.dir, "good");
    let main = c.write(
        "gateway.yaml",
        &format!(
            "{}listeners:\n  - address: 127.0.0.1:18443\n    tls:\n      cert: missing-cert.pem\n      key: {}\n",
            server_block(&c.dir),
            cert.key.display()
        ),
    );
    let out = expect_error(&main, &main, line_of(&main, "cert: missing"), "tls.cert");
    // Relative to the main file's directory, and the resolved path is shown.
    assert!(
        out.contains(&c.dir.join("missing-cert.pem").display().to_string()),
        "{out}"
    );

    // A file that exists but holds no certificate is refused too.
    c.write("garbage.pem", "not a certificate\n");
    let main = c.write(
        "gateway.yaml",
        &format!(
            "{}listeners:\n  - address: 127.0.0.1:18443\n    tls:\n      cert: garbage.pem\n      key: {}\n",
            server_block(&c.dir),
            cert.key.display()
        ),
    );
    expect_error(&main, &main, line_of(&main, "cert: garbage"), "tls.cert");

    // The same listener with a real pair passes: the failures above came from the cert.
    let main = c.write(
        "gateway.yaml",
        &format!(
            "{}listeners:\n  - address: 127.0.0.1:18443\n    tls:\n      cert: {}\n      key: {}\n",
            server_block(&c.dir),
            cert.cert.display(),
            cert.key.display()
        ),
    );
    let (code, out) = check_config(&main);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn invalid_regex() {
    let c = ConfDir::new();
    let main = c.main(
        "routes:\n  - name: r\n    match:\n      path: {regex: \"^/(x\"}\n    upstream: app\n",
    );
    expect_error(&main, &main, line_of(&main, "regex:"), "match.path.regex");
}

#[test]
fn bad_duration() {
    let c = ConfDir::new();
    let main = c.write(
        "gateway.yaml",
        "server:\n  threads: 2\n  grace_period: 5x\nlisteners:\n  - address: 127.0.0.1:18080\n",
    );
    expect_error(
        &main,
        &main,
        line_of(&main, "grace_period:"),
        "grace_period",
    );
}

#[test]
fn bad_duration_in_an_upstream_timeout() {
    let c = ConfDir::new();
    let main = c.main("include: [\"conf.d/*.yaml\"]\n");
    let inc = c.write(
        "conf.d/10-up.yaml",
        "upstreams:\n  slow:\n    backends: [\"127.0.0.1:19002\"]\n    timeouts:\n      connect: 2s\n      read: soon\n",
    );
    expect_error(&main, &inc, line_of(&inc, "read: soon"), "read");
}

#[test]
fn yaml_syntax_error() {
    let c = ConfDir::new();
    let main = c.main("routes:\n  - name: r\n    match: {path: {prefix: /r/}}\n    auth: public: yes\n    upstream: app\n");
    let (code, out) = check_config(&main);
    assert_eq!(code, 1, "{out}");
    let at = format!(
        "{}:{}:",
        main.display(),
        line_of(&main, "auth: public: yes")
    );
    assert!(out.contains(&at), "expected {at} in:\n{out}");
}

#[test]
fn yaml_syntax_error_in_an_included_file() {
    let c = ConfDir::new();
    let main = c.main("include: [\"conf.d/*.yaml\"]\n");
    let inc = c.write(
        "conf.d/10-x.yaml",
        "routes:\n  - name: r\n    match: {path: {prefix: /r/}}\n   upstream: app\n",
    );
    let (code, out) = check_config(&main);
    assert_eq!(code, 1, "{out}");
    let at = format!("{}:{}:", inc.display(), line_of(&inc, "   upstream: app"));
    assert!(out.contains(&at), "expected {at} in:\n{out}");
}

#[test]
fn listener_with_both_address_and_unix() {
    let c = ConfDir::new();
    let main = c.write(
        "gateway.yaml",
        &format!(
            "{}listeners:\n  - address: 127.0.0.1:18080\n    unix: {}/gw.sock\n",
            server_block(&c.dir),
            c.dir.display()
        ),
    );
    expect_error(
        &main,
        &main,
        line_of(&main, "address: 127.0.0.1:18080"),
        "listeners",
    );
}

#[test]
fn include_of_a_missing_file_names_the_include_line() {
    let c = ConfDir::new();
    let main = c.main("include:\n  - conf.d/extra.yaml\n");
    expect_error(&main, &main, line_of(&main, "conf.d/extra.yaml"), "include");
    // A glob that matches nothing is fine (an empty conf.d).
    let main = c.main("include:\n  - conf.d/*.yaml\n");
    let (code, out) = check_config(&main);
    assert_eq!(code, 0, "{out}");
}

/// Includes resolve against the main file's directory (not the working directory) and merge
/// in lexical order: between two regex routes that both match, the one from the
/// lexically earlier file wins, whichever file was written first.
#[test]
fn includes_merge_in_lexical_order_at_runtime() {
    let dir = tempdir();
    std::fs::create_dir(dir.path().join("conf.d")).expect("mkdir");
    let route = |name: &str, re: &str| {
        format!("routes:\n  - name: {name}\n    match: {{path: {{regex: \"{re}\"}}}}\n    auth: public\n    return: 200 \"{name}\"\n")
    };
    // Two different regexes that both match /lex/x.
    std::fs::write(
        dir.path().join("conf.d/20-late.yaml"),
        route("late", "^/lex/"),
    )
    .expect("write");
    std::fs::write(
        dir.path().join("conf.d/10-early.yaml"),
        route("early", "^/le"),
    )
    .expect("write");
    let gw = start_gateway(dir.path(), "include: [\"conf.d/*.yaml\"]\n");
    let resp = raw_get(gw.port, "/lex/x", &[]);
    assert_eq!(resp.status, 200);
    assert_eq!(String::from_utf8_lossy(&resp.body), "early");
}
