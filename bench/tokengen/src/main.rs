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
    let (Some(out), Some(iss), Some(aud)) = (
        arg(&args, "--out"),
        arg(&args, "--iss"),
        arg(&args, "--aud"),
    ) else {
        eprintln!("usage: tokengen --out DIR --iss ISS --aud AUD [--count N] [--ttl SECS]");
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
