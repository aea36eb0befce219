//! Signing keys and access tokens for the benchmarks.
//!
//! Shared by the `tokengen` helper (bench/run.sh) and the criterion micro-benchmarks
//! (`gateway/benches/verifier.rs` includes this file with `#[path]`), so both measure the
//! same token shape: the issuer's (`typ: at+jwt`, `kid`, and the claims
//! `iss, sub, aud, exp, iat, nbf, jti, sid, scope, roles, amr, auth_time`).
//!
//! Only aws-lc-rs, base64 and serde_json are used.

#![allow(dead_code)]

use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _};
use aws_lc_rs::{hmac, rsa};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Value};

/// Base64url without padding (the JOSE encoding).
pub fn b64(data: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(data)
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `n` random bytes, base64url.
pub fn random_id(n: usize) -> String {
    let mut buf = vec![0u8; n];
    SystemRandom::new().fill(&mut buf).expect("system RNG");
    b64(buf)
}

enum Signer {
    Es256(EcdsaKeyPair),
    Rs256(rsa::KeyPair),
    EdDsa(Ed25519KeyPair),
    Hs256(Vec<u8>),
}

/// A freshly generated signing key for one JWS algorithm.
pub struct BenchKey {
    /// `ES256`, `RS256`, `EdDSA` or `HS256`.
    pub alg: &'static str,
    /// The `kid` put in token headers and in the JWK.
    pub kid: String,
    signer: Signer,
}

impl BenchKey {
    /// A new key for `alg` (RSA keys are 2048 bits, like the issuer's).
    pub fn generate(alg: &str) -> BenchKey {
        let (alg, signer) = match alg {
            "ES256" => (
                "ES256",
                Signer::Es256(
                    EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING)
                        .expect("P-256 key"),
                ),
            ),
            "RS256" => (
                "RS256",
                Signer::Rs256(rsa::KeyPair::generate(rsa::KeySize::Rsa2048).expect("RSA key")),
            ),
            "EdDSA" => (
                "EdDSA",
                Signer::EdDsa(Ed25519KeyPair::generate().expect("Ed25519 key")),
            ),
            "HS256" => {
                let mut secret = vec![0u8; 32];
                SystemRandom::new().fill(&mut secret).expect("system RNG");
                ("HS256", Signer::Hs256(secret))
            }
            other => panic!("unsupported algorithm {other}"),
        };
        BenchKey {
            alg,
            kid: format!("bench-{}", alg.to_ascii_lowercase()),
            signer,
        }
    }

    /// The public JWK (None for HMAC keys, which are never published).
    pub fn public_jwk(&self) -> Option<Value> {
        let mut jwk = match &self.signer {
            Signer::Es256(k) => {
                let point = k.public_key().as_ref();
                // Uncompressed point: 0x04 || x || y.
                json!({"kty": "EC", "crv": "P-256", "x": b64(&point[1..33]), "y": b64(&point[33..65])})
            }
            Signer::Rs256(k) => {
                let public = k.public_key();
                json!({
                    "kty": "RSA",
                    "n": b64(public.modulus().big_endian_without_leading_zero()),
                    "e": b64(public.exponent().big_endian_without_leading_zero()),
                })
            }
            Signer::EdDsa(k) => {
                json!({"kty": "OKP", "crv": "Ed25519", "x": b64(k.public_key().as_ref())})
            }
            Signer::Hs256(_) => return None,
        };
        jwk["kid"] = json!(self.kid);
        jwk["alg"] = json!(self.alg);
        jwk["use"] = json!("sig");
        Some(jwk)
    }

    /// The HMAC secret (HS256 keys only).
    pub fn hmac_secret(&self) -> Option<&[u8]> {
        match &self.signer {
            Signer::Hs256(secret) => Some(secret),
            _ => None,
        }
    }

    /// The JWS signature of `input` (ES256 in the fixed r||s form JWS uses).
    pub fn sign(&self, input: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match &self.signer {
            Signer::Es256(k) => k.sign(&rng, input).expect("ES256").as_ref().to_vec(),
            Signer::Rs256(k) => {
                let mut sig = vec![0u8; k.public_modulus_len()];
                k.sign(&signature::RSA_PKCS1_SHA256, &rng, input, &mut sig)
                    .expect("RS256");
                sig
            }
            Signer::EdDsa(k) => k.sign(input).as_ref().to_vec(),
            Signer::Hs256(secret) => hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret), input)
                .as_ref()
                .to_vec(),
        }
    }

    /// A compact JWS over `claims` with header `{alg, typ: at+jwt, kid}`.
    pub fn token(&self, claims: &Value) -> String {
        let header = json!({"alg": self.alg, "typ": "at+jwt", "kid": self.kid});
        let input = format!("{}.{}", b64(header.to_string()), b64(claims.to_string()));
        let sig = self.sign(input.as_bytes());
        format!("{input}.{}", b64(sig))
    }
}

/// Issuer-like access-token claims for user number `i`, valid for `ttl` seconds.
pub fn claims(iss: &str, aud: &str, i: usize, ttl: u64) -> Value {
    let now = now();
    json!({
        "iss": iss,
        "sub": format!("bench-user-{i:06}-{}", random_id(6)),
        "aud": aud,
        "exp": now + ttl,
        "iat": now,
        "nbf": now,
        "auth_time": now,
        "jti": random_id(16),
        "sid": random_id(16),
        "scope": "openid profile orders:read",
        "roles": ["user"],
        "amr": ["pwd"],
    })
}

/// The same token with one bit of its signature flipped (in the middle, so the base64url
/// stays canonical and the token is refused as a bad signature, not as malformed).
pub fn corrupt_signature(token: &str) -> String {
    let (input, sig) = token.rsplit_once('.').expect("compact JWS");
    let mut bytes = URL_SAFE_NO_PAD.decode(sig).expect("base64url signature");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    format!("{input}.{}", b64(bytes))
}
