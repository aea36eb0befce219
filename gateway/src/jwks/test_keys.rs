//! Key pairs and JWK documents for the jwks unit tests.

use std::sync::OnceLock;

use aws_lc_rs::signature::{
    self as sig, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair, RsaPublicKeyComponents,
};
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};

use super::parse::b64;
use super::{EcCurve, VerifyKey};

/// The RSA key of RFC 7638 §3.1 and its thumbprint.
pub(super) const RFC7638_N: &str = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
pub(super) const RFC7638_THUMBPRINT: &str = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs";

pub(super) fn rfc_rsa_jwk() -> Value {
    json!({"kty": "RSA", "n": RFC7638_N, "e": "AQAB", "alg": "RS256", "kid": "2011-04-29"})
}

pub(super) fn ec_pair(curve: EcCurve) -> EcdsaKeyPair {
    let alg = match curve {
        EcCurve::P256 => &sig::ECDSA_P256_SHA256_FIXED_SIGNING,
        EcCurve::P384 => &sig::ECDSA_P384_SHA384_FIXED_SIGNING,
    };
    EcdsaKeyPair::generate(alg).unwrap()
}

pub(super) fn ec_jwk(pair: &EcdsaKeyPair, kid: &str) -> Value {
    let point = pair.public_key().as_ref();
    let size = (point.len() - 1) / 2;
    let crv = if size == 32 { "P-256" } else { "P-384" };
    json!({"kty": "EC", "crv": crv, "kid": kid,
           "x": b64(&point[1..1 + size]), "y": b64(&point[1 + size..])})
}

pub(super) fn ed_jwk(pair: &Ed25519KeyPair, kid: &str) -> Value {
    json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64(pair.public_key().as_ref())})
}

/// One RSA-2048 key for the whole test run (generation is the slow part).
pub(super) fn rsa_pair() -> &'static RsaKeyPair {
    static PAIR: OnceLock<RsaKeyPair> = OnceLock::new();
    PAIR.get_or_init(|| RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap())
}

pub(super) fn rsa_jwk(pair: &RsaKeyPair, kid: &str) -> Value {
    let c = RsaPublicKeyComponents::<Vec<u8>>::from(pair.public_key());
    json!({"kty": "RSA", "kid": kid, "n": b64(&c.n), "e": b64(&c.e)})
}

pub(super) fn jwks(keys: &[Value]) -> Vec<u8> {
    serde_json::to_vec(&json!({ "keys": keys })).unwrap()
}

pub(super) fn kids(keys: &[VerifyKey]) -> Vec<&str> {
    keys.iter().filter_map(|k| k.kid.as_deref()).collect()
}

/// Whether `key` verifies a signature over a fixed message made by `sign`.
pub(super) fn verifies(key: &VerifyKey, alg: Algorithm, sign: impl Fn(&[u8]) -> Vec<u8>) -> bool {
    let message = b"eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0";
    let signature = b64(&sign(message));
    jsonwebtoken::crypto::verify(&signature, message, &key.key, alg).unwrap()
        && !jsonwebtoken::crypto::verify(&signature, b"tampered", &key.key, alg).unwrap()
}
