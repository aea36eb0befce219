//! Generates the keys and tokens the benchmark runner (bench/run.sh) needs:
//!
//! ```text
//! tokengen --out DIR --iss ISS --aud AUD [--count N] [--ttl SECS]
//! ```
//!
//! writes into DIR
//! - `jwks.json`: the public keys (ES256 P-256, RS256 RSA-2048, EdDSA Ed25519), for the
//!   gateway's `key_file:`;
//! - `tokens-ES256.txt`, `tokens-RS256.txt`, `tokens-EdDSA.txt`: N distinct valid access
//!   tokens each, one per line (distinct `sub`, `jti`, `sid`);
//! - `bad-ES256.txt`, `bad-RS256.txt`, `bad-EdDSA.txt`: the same tokens with one signature
//!   bit flipped.
//!
//! ```text
//! tokengen --sigcheck N --out DIR
//! ```
//!
//! verifies the first token of `DIR/tokens-ES256.txt` against DIR's ES256 key N times: the bare
//! signature check (base64url-decode the signature, aws-lc-rs P-256 verify), which
//! bench/instructions.sh counts under callgrind to compare the gateway's cost per verification.

mod mint;

use std::io::Write as _;
use std::path::PathBuf;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let (Some(n), Some(out)) = (arg(&args, "--sigcheck"), arg(&args, "--out")) {
        let n: usize = n.parse().expect("--sigcheck is a number");
        sigcheck(&PathBuf::from(out), n);
        return;
    }
    let (Some(out), Some(iss), Some(aud)) = (
        arg(&args, "--out"),
        arg(&args, "--iss"),
        arg(&args, "--aud"),
    ) else {
        eprintln!("usage: tokengen --out DIR --iss ISS --aud AUD [--count N] [--ttl SECS]\n       tokengen --sigcheck N --out DIR");
        std::process::exit(2);
    };
    let count: usize = arg(&args, "--count")
        .map(|c| c.parse().expect("--count is a number"))
        .unwrap_or(10_000);
    let ttl: u64 = arg(&args, "--ttl")
        .map(|c| c.parse().expect("--ttl is a number of seconds"))
        .unwrap_or(3600);
    let out = PathBuf::from(out);
    std::fs::create_dir_all(&out).expect("create --out");

    let keys: Vec<mint::BenchKey> = ["ES256", "RS256", "EdDSA"]
        .iter()
        .map(|a| mint::BenchKey::generate(a))
        .collect();
    let jwks = serde_json::json!({
        "keys": keys.iter().filter_map(mint::BenchKey::public_jwk).collect::<Vec<_>>()
    });
    std::fs::write(out.join("jwks.json"), format!("{jwks:#}\n")).expect("write jwks.json");

    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    for key in &keys {
        // RSA signing is ~1 ms per token: spread the work over every core.
        let chunk = count.div_ceil(threads).max(1);
        let tokens: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..count)
                .step_by(chunk)
                .map(|start| {
                    let end = (start + chunk).min(count);
                    let (iss, aud) = (iss.as_str(), aud.as_str());
                    s.spawn(move || {
                        (start..end)
                            .map(|i| key.token(&mint::claims(iss, aud, i, ttl)))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("signing thread"))
                .collect()
        });
        let write = |name: String, lines: &mut dyn Iterator<Item = String>| {
            let file = std::fs::File::create(out.join(&name)).expect("create token file");
            let mut w = std::io::BufWriter::new(file);
            for line in lines {
                writeln!(w, "{line}").expect("write token");
            }
            w.flush().expect("flush token file");
        };
        write(
            format!("tokens-{}.txt", key.alg),
            &mut tokens.iter().cloned(),
        );
        write(
            format!("bad-{}.txt", key.alg),
            &mut tokens.iter().map(|t| mint::corrupt_signature(t)),
        );
        eprintln!("tokengen: {count} {} tokens", key.alg);
    }
}

/// Verifies DIR's first ES256 token `n` times, as `jsonwebtoken::crypto::verify` does for the
/// gateway (base64url signature, aws-lc-rs fixed-size P-256 check); exits 1 if it fails.
fn sigcheck(dir: &std::path::Path, n: usize) {
    use aws_lc_rs::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED};
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;

    let jwks: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("jwks.json")).expect("jwks.json"))
            .expect("jwks.json is JSON");
    let jwk = jwks["keys"]
        .as_array()
        .and_then(|k| k.iter().find(|k| k["alg"] == "ES256"))
        .expect("an ES256 key in jwks.json");
    let coord = |c: &str| URL_SAFE_NO_PAD.decode(jwk[c].as_str().expect("x, y")).expect("base64url");
    let mut point = vec![4u8];
    point.extend(coord("x"));
    point.extend(coord("y"));
    let tokens = std::fs::read_to_string(dir.join("tokens-ES256.txt")).expect("tokens-ES256.txt");
    let token = tokens.lines().next().expect("one token");
    let (input, sig) = token.rsplit_once('.').expect("a JWS");
    for _ in 0..n {
        let sig = URL_SAFE_NO_PAD.decode(sig).expect("base64url signature");
        let key = UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &point);
        if key.verify(input.as_bytes(), &sig).is_err() {
            eprintln!("tokengen: the signature does not verify");
            std::process::exit(1);
        }
    }
}
