//! `portcullis-issuer`: the companion token service (accounts, logins, JWKS).
//!
//! Not built yet: this crate only reserves its place in the workspace until the issuer issue
//! lands. It exits with an explanation rather than pretending to serve.

fn main() -> std::process::ExitCode {
    eprintln!(
        "portcullis-issuer {}: not available yet in this build; the gateway runs without it",
        env!("CARGO_PKG_VERSION")
    );
    std::process::ExitCode::from(2)
}
