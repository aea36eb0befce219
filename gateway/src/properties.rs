//! Property tests (run in `make test`, a few hundred cases each): the token parser, the path
//! normaliser and the router never panic, and their answers are consistent. Crate-internal
//! (they drive private modules), so they live here rather than in `tests/`.

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::Method;
use proptest::prelude::*;

use crate::routing::path::normalize;
use crate::verify::{AuthError, TokenCache, Verifier, VerifyObserver};

struct Quiet;
impl VerifyObserver for Quiet {
    fn cache(&self, _hit: bool) {}
}

fn verify(token: &str) -> Result<(), AuthError> {
    let verifier = Verifier::new(Vec::new(), 8 * 1024, 1, Arc::new(TokenCache::new(16)));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(verifier.verify(token, &Quiet)).map(|_| ())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn arbitrary_strings_never_verify(s in ".{0,300}") {
        prop_assert!(verify(&s).is_err());
    }

    #[test]
    fn arbitrary_json_segments_never_verify(header in "[ -~]{0,80}", claims in "[ -~]{0,120}", sig in "[A-Za-z0-9_-]{0,90}") {
        let token = format!("{}.{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(claims), sig);
        // No issuer is trusted here, so nothing may pass, whatever the header says.
        prop_assert!(verify(&token).is_err());
    }

    #[test]
    fn normalisation_is_idempotent_and_safe(path in "/[a-zA-Z0-9%./;_~-]{0,60}") {
        if let Ok(n) = normalize(&path) {
            prop_assert_eq!(normalize(&n), Ok(n.clone()));
            prop_assert!(n.starts_with('/'));
            prop_assert!(!n.split('/').any(|seg| seg == ".." || seg == "."));
            prop_assert!(!n.contains("//"));
            prop_assert!(!n.to_ascii_lowercase().contains("%2f"));
        }
    }

    #[test]
    fn router_lookup_never_panics(host in "[a-z.]{0,20}", path in "/[a-z/]{0,30}", m in 0usize..4) {
        let cfg_text = "listeners: [{address: 127.0.0.1:1}]\nroutes:\n  - {name: a, auth: public, return: 200 \"a\", match: {path: {prefix: /a/}}}\n  - {name: b, auth: public, return: 200 \"b\", match: {host: \"*.x.com\", path: {regex: \"^/b\"}, methods: [GET]}}\n  - {name: c, auth: public, return: 200 \"c\", match: {path: {exact: /c}}}\n";
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("g.yaml");
        std::fs::write(&file, cfg_text).expect("write");
        let cfg = crate::config::load(&file, &Default::default()).expect("config");
        let method = [Method::GET, Method::POST, Method::DELETE, Method::OPTIONS][m].clone();
        let _ = cfg.router.lookup(&host, &path, &method);
    }
}
