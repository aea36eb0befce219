//! JWK and PEM parsing: JWKS documents, key files and HMAC secrets into [`VerifyKey`]s.

use std::path::Path;
use std::str::FromStr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::{EcCurve, JwksError, KeyFamily, VerifyKey};

/// RSA moduli below this are refused: too weak, and the verifier (aws-lc, 2048–8192) would
/// reject every signature made with them anyway.
const MIN_RSA_BITS: usize = 2048;
/// Above this aws-lc refuses to verify, and huge moduli make verification a CPU sink.
const MAX_RSA_BITS: usize = 8192;
/// HMAC secrets shorter than the SHA-256 output are brute-forceable (RFC 7518 §3.2).
const MIN_HMAC_SECRET: usize = 32;
/// Key files are small; anything bigger is a wrong path, not a key.
const MAX_KEY_FILE_BYTES: u64 = 1024 * 1024;

/// Parses a JWKS document. `remote == true` (fetched over the network): refuse `kty: oct` keys
/// (skip them with a warning, never error the whole set). RSA keys outside 2048–8192 bits are
/// skipped whatever the source, because the verifier cannot use them. Keys with unsupported
/// kty/crv, `use` other than "sig", `key_ops` without "verify", invalid material, `alg: "none"`
/// or an unknown alg are skipped with a warning, as is a second key reusing a `kid` for the
/// same algorithms (which would make lookups ambiguous). Error only when the document is not a
/// JSON object with a "keys" array; an empty result is `Ok(vec![])`.
pub fn parse_jwks(body: &[u8], remote: bool) -> Result<Vec<VerifyKey>, JwksError> {
    let doc: Value = serde_json::from_slice(body).map_err(|e| JwksError::NotJson(e.to_string()))?;
    let Some(entries) = doc.get("keys").and_then(Value::as_array) else {
        return Err(JwksError::NoKeysArray);
    };
    let mut keys: Vec<VerifyKey> = Vec::with_capacity(entries.len());
    for (index, entry) in entries.iter().enumerate() {
        let kid = entry.get("kid").and_then(Value::as_str).map(loggable);
        let key = match parse_jwk(entry, remote) {
            Ok(key) => key,
            Err(reason) => {
                tracing::warn!(index, kid, "JWKS key skipped: {reason}");
                continue;
            }
        };
        if let Some(prev) = keys.iter().find(|k| {
            k.kid == key.kid
                && (k.kid.is_some() || k.thumbprint == key.thumbprint)
                && k.overlaps(&key)
        }) {
            if prev.thumbprint != key.thumbprint {
                tracing::warn!(
                    index,
                    kid,
                    "JWKS key skipped: an earlier key has the same kid for the same algorithms"
                );
            }
            continue;
        }
        keys.push(key);
    }
    Ok(keys)
}

/// One JWK, or why it is skipped.
fn parse_jwk(jwk: &Value, remote: bool) -> Result<VerifyKey, String> {
    let obj = jwk.as_object().ok_or("not a JSON object")?;
    let kty = str_member(obj, "kty")?.ok_or("no \"kty\"")?;
    let kid = str_member(obj, "kid")?.map(str::to_owned);
    if let Some(usage) = str_member(obj, "use")? {
        if usage != "sig" {
            return Err(format!("\"use\" is {usage:?}, not \"sig\""));
        }
    }
    if let Some(ops) = obj.get("key_ops") {
        let ops = ops.as_array().ok_or("\"key_ops\" is not an array")?;
        if !ops.iter().any(|op| op.as_str() == Some("verify")) {
            return Err("\"key_ops\" does not include \"verify\"".into());
        }
    }
    let alg = match str_member(obj, "alg")? {
        None => None,
        Some("none") => return Err("alg \"none\" is never accepted".into()),
        Some(name) => Some(
            Algorithm::from_str(name)
                .map_err(|_| format!("unsupported alg {:?}", loggable(name)))?,
        ),
    };
    let material = match kty {
        "RSA" => {
            let n = b64_member(obj, "n")?;
            let e = b64_member(obj, "e")?;
            rsa_material(&n, &e)?
        }
        "EC" => {
            let crv = str_member(obj, "crv")?.ok_or("no \"crv\"")?;
            let curve = match crv {
                "P-256" => EcCurve::P256,
                "P-384" => EcCurve::P384,
                other => return Err(format!("unsupported EC curve {:?}", loggable(other))),
            };
            ec_material(curve, &b64_member(obj, "x")?, &b64_member(obj, "y")?)?
        }
        "OKP" => match str_member(obj, "crv")?.ok_or("no \"crv\"")? {
            "Ed25519" => ed25519_material(&b64_member(obj, "x")?)?,
            other => return Err(format!("unsupported OKP curve {:?}", loggable(other))),
        },
        // A shared secret published over the network is no secret: anyone who can read the
        // JWKS could mint tokens.
        "oct" if remote => return Err("symmetric (kty \"oct\") key in a remote key set".into()),
        "oct" => hmac_material(&b64_member(obj, "k")?).map_err(|e| e.to_string())?,
        other => return Err(format!("unsupported kty {:?}", loggable(other))),
    };
    if let Some(alg) = alg {
        if !material.family.supports(alg) {
            return Err(format!(
                "alg {alg:?} does not fit a {} key",
                material.family
            ));
        }
    }
    Ok(material.into_key(kid, alg))
}

/// Key material before the JWK's metadata is attached.
struct Material {
    family: KeyFamily,
    key: DecodingKey,
    thumbprint: String,
}

impl Material {
    fn into_key(self, kid: Option<String>, alg: Option<Algorithm>) -> VerifyKey {
        VerifyKey {
            kid,
            family: self.family,
            alg,
            key: self.key,
            thumbprint: self.thumbprint,
        }
    }
}

/// A member that must be a string if present.
fn str_member<'a>(obj: &'a Map<String, Value>, name: &str) -> Result<Option<&'a str>, String> {
    match obj.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("\"{name}\" is not a string")),
    }
}

/// A required base64url member, decoded.
fn b64_member(obj: &Map<String, Value>, name: &str) -> Result<Vec<u8>, String> {
    let text = str_member(obj, name)?.ok_or_else(|| format!("no \"{name}\""))?;
    URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|e| format!("\"{name}\" is not base64url: {e}"))
}

pub(super) fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn sha256_b64(bytes: &[u8]) -> String {
    b64(&Sha256::digest(bytes))
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

/// Builds an RSA key from big-endian modulus and exponent (leading zeros allowed).
fn rsa_material(n: &[u8], e: &[u8]) -> Result<Material, String> {
    let n = strip_leading_zeros(n);
    let e = strip_leading_zeros(e);
    let bits = match n.first() {
        Some(&top) => (n.len() - 1) * 8 + (8 - top.leading_zeros() as usize),
        None => 0,
    };
    if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
        return Err(format!(
            "RSA key of {bits} bits (between {MIN_RSA_BITS} and {MAX_RSA_BITS} required)"
        ));
    }
    // RSA exponents are odd and at least 3 (e = 1 makes "signatures" trivial); aws-lc takes up
    // to 33 bits, so 8 bytes is a generous sanity bound.
    let exponent_ok = match e {
        [] => false,
        [single] => *single >= 3 && single & 1 == 1,
        [.., last] => e.len() <= 8 && last & 1 == 1,
    };
    if !exponent_ok {
        return Err("invalid RSA public exponent".into());
    }
    // Canonical (minimal) encodings, as RFC 7638 requires for the thumbprint.
    let (n64, e64) = (b64(n), b64(e));
    let key = DecodingKey::from_rsa_components(&n64, &e64).map_err(|e| e.to_string())?;
    let thumbprint = sha256_b64(format!(r#"{{"e":"{e64}","kty":"RSA","n":"{n64}"}}"#).as_bytes());
    Ok(Material {
        family: KeyFamily::Rsa { bits },
        key,
        thumbprint,
    })
}

/// Builds an EC key from its affine coordinates (each exactly the curve's field size).
fn ec_material(curve: EcCurve, x: &[u8], y: &[u8]) -> Result<Material, String> {
    let (size, crv) = match curve {
        EcCurve::P256 => (32, "P-256"),
        EcCurve::P384 => (48, "P-384"),
    };
    if x.len() != size || y.len() != size {
        return Err(format!("{crv} coordinates must be {size} bytes each"));
    }
    let (x64, y64) = (b64(x), b64(y));
    let key = DecodingKey::from_ec_components(&x64, &y64).map_err(|e| e.to_string())?;
    let thumbprint =
        sha256_b64(format!(r#"{{"crv":"{crv}","kty":"EC","x":"{x64}","y":"{y64}"}}"#).as_bytes());
    Ok(Material {
        family: KeyFamily::Ec(curve),
        key,
        thumbprint,
    })
}

fn ed25519_material(x: &[u8]) -> Result<Material, String> {
    if x.len() != 32 {
        return Err("Ed25519 public key must be 32 bytes".into());
    }
    let x64 = b64(x);
    let key = DecodingKey::from_ed_components(&x64).map_err(|e| e.to_string())?;
    let thumbprint =
        sha256_b64(format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x64}"}}"#).as_bytes());
    Ok(Material {
        family: KeyFamily::Ed25519,
        key,
        thumbprint,
    })
}

fn hmac_material(secret: &[u8]) -> Result<Material, JwksError> {
    if secret.len() < MIN_HMAC_SECRET {
        return Err(JwksError::HmacTooShort {
            len: secret.len(),
            min: MIN_HMAC_SECRET,
        });
    }
    Ok(Material {
        family: KeyFamily::Hmac,
        key: DecodingKey::from_secret(secret),
        // A hash, never the secret itself: thumbprints end up in caches and logs.
        thumbprint: sha256_b64(secret),
    })
}

/// An HMAC key; secrets shorter than 32 bytes are refused.
pub fn hmac_key(secret: &[u8], kid: Option<&str>) -> Result<VerifyKey, JwksError> {
    Ok(hmac_material(secret)?.into_key(kid.map(str::to_owned), None))
}

/// Loads a local key file: a JWKS JSON document (or a single JWK object; remote=false rules,
/// so `oct` keys are allowed) or one or more PEM public keys (RSA "PUBLIC KEY"/"RSA PUBLIC
/// KEY", EC P-256/P-384, Ed25519 SPKI). `kid`, when given, is set on every loaded key that has
/// no kid of its own (so PEM keys get kid None unless `kid` is given). Unlike remote sets, a
/// bad PEM block is an error, and a file with no usable key is an error.
pub fn load_key_file(path: &Path, kid: Option<&str>) -> Result<Vec<VerifyKey>, JwksError> {
    let file_error = |reason: String| JwksError::File {
        path: path.to_owned(),
        reason,
    };
    let size = std::fs::metadata(path)
        .map_err(|e| file_error(e.to_string()))?
        .len();
    if size > MAX_KEY_FILE_BYTES {
        return Err(file_error(format!(
            "{size} bytes; a key file is at most {MAX_KEY_FILE_BYTES}"
        )));
    }
    let data = std::fs::read(path).map_err(|e| file_error(e.to_string()))?;
    let first = data.iter().find(|b| !b.is_ascii_whitespace());
    let mut keys = if first == Some(&b'{') {
        let doc: Value =
            serde_json::from_slice(&data).map_err(|e| file_error(format!("not JSON: {e}")))?;
        if doc.get("keys").is_none() && doc.get("kty").is_some() {
            // A lone JWK: report its problem precisely instead of "no keys".
            vec![parse_jwk(&doc, false).map_err(file_error)?]
        } else {
            parse_jwks(&data, false).map_err(|e| file_error(e.to_string()))?
        }
    } else {
        parse_pem_keys(path, &data)?
    };
    if keys.is_empty() {
        return Err(file_error(
            "no usable key (see the warnings for each skipped key)".into(),
        ));
    }
    if let Some(kid) = kid {
        for key in keys.iter_mut().filter(|k| k.kid.is_none()) {
            key.kid = Some(kid.to_owned());
        }
    }
    Ok(keys)
}

fn parse_pem_keys(path: &Path, data: &[u8]) -> Result<Vec<VerifyKey>, JwksError> {
    let bad = |reason: String| JwksError::BadPem {
        path: path.to_owned(),
        reason,
    };
    let mut keys = Vec::new();
    for block in x509_parser::pem::Pem::iter_from_buffer(data) {
        let pem = block.map_err(|e| bad(e.to_string()))?;
        let material = match pem.label.as_str() {
            "PUBLIC KEY" => spki_material(&pem.contents),
            "RSA PUBLIC KEY" => pkcs1_material(&pem.contents),
            label if label.contains("PRIVATE KEY") => {
                Err("the file holds a private key; give the gateway only the public key".into())
            }
            label => Err(format!("unsupported PEM block {label:?}")),
        };
        keys.push(material.map_err(bad)?.into_key(None, None));
    }
    if keys.is_empty() {
        return Err(bad("neither a JWKS document nor a PEM public key".into()));
    }
    Ok(keys)
}

/// A SubjectPublicKeyInfo ("PUBLIC KEY") of a supported type.
fn spki_material(der: &[u8]) -> Result<Material, String> {
    use x509_parser::oid_registry::{
        OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
        OID_SIG_ED25519,
    };
    use x509_parser::prelude::{FromDer, SubjectPublicKeyInfo};
    use x509_parser::public_key::PublicKey;

    let (_, spki) =
        SubjectPublicKeyInfo::from_der(der).map_err(|e| format!("not a public key: {e}"))?;
    let oid = &spki.algorithm.algorithm;
    if *oid == OID_PKCS1_RSAENCRYPTION {
        match spki.parsed() {
            Ok(PublicKey::RSA(rsa)) => rsa_material(rsa.modulus, rsa.exponent),
            _ => Err("malformed RSA public key".into()),
        }
    } else if *oid == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve_oid = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .ok_or("EC public key without a named curve")?;
        let (curve, size) = if curve_oid == OID_EC_P256 {
            (EcCurve::P256, 32)
        } else if curve_oid == OID_NIST_EC_P384 {
            (EcCurve::P384, 48)
        } else {
            return Err(format!("unsupported EC curve {curve_oid}"));
        };
        match spki.subject_public_key.data.as_ref() {
            [4, point @ ..] if point.len() == 2 * size => {
                let (x, y) = point.split_at(size);
                ec_material(curve, x, y)
            }
            _ => Err("EC public key is not an uncompressed point of the curve's size".into()),
        }
    } else if *oid == OID_SIG_ED25519 {
        ed25519_material(spki.subject_public_key.data.as_ref())
    } else {
        Err(format!("unsupported public key algorithm {oid}"))
    }
}

/// A PKCS#1 RSAPublicKey ("RSA PUBLIC KEY").
fn pkcs1_material(der: &[u8]) -> Result<Material, String> {
    use x509_parser::prelude::FromDer;
    use x509_parser::public_key::RSAPublicKey;

    let (_, rsa) = RSAPublicKey::from_der(der).map_err(|_| "malformed RSA public key")?;
    rsa_material(rsa.modulus, rsa.exponent)
}

/// Attacker-influenced text (kids, algs from a remote document) shortened for logs.
pub(super) fn loggable(text: &str) -> &str {
    match text.char_indices().nth(64) {
        Some((cut, _)) => &text[..cut],
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwks::test_keys::*;
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{self as sig, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
    use serde_json::json;

    #[test]
    fn rfc7638_example_thumbprint() {
        let keys = parse_jwks(&jwks(&[rfc_rsa_jwk()]), true).unwrap();
        assert_eq!(keys.len(), 1);
        let key = &keys[0];
        assert_eq!(key.thumbprint, RFC7638_THUMBPRINT);
        assert_eq!(key.family, KeyFamily::Rsa { bits: 2048 });
        assert_eq!(key.alg, Some(Algorithm::RS256));
        assert_eq!(key.kid.as_deref(), Some("2011-04-29"));
    }

    #[test]
    fn parsed_keys_verify_real_signatures() {
        let rng = SystemRandom::new();
        let p256 = ec_pair(EcCurve::P256);
        let p384 = ec_pair(EcCurve::P384);
        let ed = Ed25519KeyPair::generate().unwrap();
        let rsa = rsa_pair();
        let doc = jwks(&[
            ec_jwk(&p256, "p256"),
            ec_jwk(&p384, "p384"),
            ed_jwk(&ed, "ed"),
            rsa_jwk(rsa, "rsa"),
        ]);
        let keys = parse_jwks(&doc, true).unwrap();
        assert_eq!(kids(&keys), ["p256", "p384", "ed", "rsa"]);
        assert_eq!(keys[0].family, KeyFamily::Ec(EcCurve::P256));
        assert_eq!(keys[1].family, KeyFamily::Ec(EcCurve::P384));
        assert_eq!(keys[2].family, KeyFamily::Ed25519);
        assert_eq!(keys[3].family, KeyFamily::Rsa { bits: 2048 });

        let ec_sign = |pair: &EcdsaKeyPair, m: &[u8]| pair.sign(&rng, m).unwrap().as_ref().to_vec();
        assert!(verifies(&keys[0], Algorithm::ES256, |m| ec_sign(&p256, m)));
        assert!(verifies(&keys[1], Algorithm::ES384, |m| ec_sign(&p384, m)));
        assert!(verifies(&keys[2], Algorithm::EdDSA, |m| ed
            .sign(m)
            .as_ref()
            .to_vec()));
        assert!(verifies(&keys[3], Algorithm::RS256, |m| {
            let mut out = vec![0; rsa.public_modulus_len()];
            rsa.sign(&sig::RSA_PKCS1_SHA256, &rng, m, &mut out).unwrap();
            out
        }));
        assert!(verifies(&keys[3], Algorithm::PS256, |m| {
            let mut out = vec![0; rsa.public_modulus_len()];
            rsa.sign(&sig::RSA_PSS_SHA256, &rng, m, &mut out).unwrap();
            out
        }));
    }

    #[test]
    fn unsafe_or_unusable_keys_are_skipped_not_fatal() {
        let good = ec_pair(EcCurve::P256);
        let other = ec_pair(EcCurve::P256);
        let with = |extra: Value| {
            let mut jwk = ec_jwk(&good, "x");
            for (k, v) in extra.as_object().unwrap() {
                jwk[k] = v.clone();
            }
            jwk
        };
        let mut short_x = ec_jwk(&other, "short");
        short_x["x"] = json!(b64(&[1u8; 31]));
        let doc = jwks(&[
            ec_jwk(&good, "good"),
            json!({"kty": "oct", "kid": "sym", "k": b64(&[7u8; 32])}),
            json!({"kty": "oct", "kid": "sym-short", "k": b64(&[7u8; 16])}),
            json!({"kty": "RSA", "kid": "rsa1024", "n": b64(&[0xC1u8; 128]), "e": "AQAB"}),
            with(json!({"kid": "none", "alg": "none"})),
            with(json!({"kid": "unknown-alg", "alg": "XS999"})),
            with(json!({"kid": "wrong-alg", "alg": "RS256"})),
            with(json!({"kid": "p384-alg", "alg": "ES384"})),
            with(json!({"kid": "enc", "use": "enc"})),
            with(json!({"kid": "ops", "key_ops": ["encrypt"]})),
            with(json!({"kid": "p521", "crv": "P-521"})),
            with(json!({"kid": "bad-b64", "y": "!!!"})),
            with(json!({"kid": 17})),
            short_x,
            json!({"kty": "OKP", "crv": "X25519", "kid": "x25519", "x": b64(&[1u8; 32])}),
            json!({"kty": "RSA", "kid": "no-e", "n": RFC7638_N}),
            json!({"kty": "RSA", "kid": "e-is-1", "n": RFC7638_N, "e": "AQ"}),
            json!({"kty": "RSA", "kid": "e-even", "n": RFC7638_N, "e": "AQAA"}),
            json!({"kid": "no-kty"}),
            json!("not an object"),
            // Same kid, same algorithms, different key: lookups would be ambiguous.
            ec_jwk(&other, "good"),
            // A kid shared by keys of different families is fine...
            json!({"kty": "OKP", "crv": "Ed25519", "kid": "good", "x": b64(&[3u8; 32])}),
            // ...but not once it is ambiguous for some algorithm.
            json!({"kty": "OKP", "crv": "Ed25519", "kid": "good", "x": b64(&[4u8; 32])}),
            // The very same key again is a harmless duplicate.
            ec_jwk(&good, "good"),
            with(json!({"kid": "sig-ok", "use": "sig", "key_ops": ["verify"], "alg": "ES256"})),
        ]);
        let remote = parse_jwks(&doc, true).unwrap();
        assert_eq!(kids(&remote), ["good", "good", "sig-ok"]);
        assert_eq!(remote[1].family, KeyFamily::Ed25519);
        assert_eq!(remote[2].alg, Some(Algorithm::ES256));
        // Local files may hold HMAC secrets; everything else is refused the same way.
        let local = parse_jwks(&doc, false).unwrap();
        assert_eq!(kids(&local), ["good", "sym", "good", "sig-ok"]);
        assert_eq!(local[1].family, KeyFamily::Hmac);
    }

    #[test]
    fn documents_without_a_keys_array_are_errors() {
        assert!(matches!(
            parse_jwks(b"nope", true),
            Err(JwksError::NotJson(_))
        ));
        for doc in [&b"[]"[..], b"{}", br#"{"keys": {}}"#, br#""keys""#] {
            assert_eq!(parse_jwks(doc, true).unwrap_err(), JwksError::NoKeysArray);
        }
        assert!(parse_jwks(br#"{"keys": []}"#, true).unwrap().is_empty());
    }

    #[test]
    fn hmac_keys_need_32_bytes() {
        assert_eq!(
            hmac_key(&[1u8; 31], None).unwrap_err(),
            JwksError::HmacTooShort { len: 31, min: 32 }
        );
        let key = hmac_key(&[1u8; 32], Some("h")).unwrap();
        assert_eq!(key.kid.as_deref(), Some("h"));
        assert_eq!(key.family, KeyFamily::Hmac);
        assert!(key.accepts(Algorithm::HS256) && key.accepts(Algorithm::HS512));
        assert!(!key.accepts(Algorithm::RS256) && !key.accepts(Algorithm::ES256));
        assert_eq!(key.thumbprint, b64(&Sha256::digest([1u8; 32])));
    }

    fn pem(label: &str, der: &[u8]) -> String {
        let text = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = text
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        format!(
            "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
            lines.join("\n")
        )
    }

    #[test]
    fn key_files_hold_pem_or_jwks() {
        let dir = tempfile::tempdir().unwrap();
        let ec = ec_pair(EcCurve::P384);
        let ed = Ed25519KeyPair::generate().unwrap();
        let rsa = rsa_pair();
        let pem_path = dir.path().join("keys.pem");
        let text = [
            pem("PUBLIC KEY", ec.public_key().as_der().unwrap().as_ref()),
            pem("PUBLIC KEY", ed.public_key().as_der().unwrap().as_ref()),
            pem("RSA PUBLIC KEY", rsa.public_key().as_ref()),
            pem("PUBLIC KEY", rsa.public_key().as_der().unwrap().as_ref()),
        ]
        .join("\n");
        std::fs::write(&pem_path, text).unwrap();

        let keys = load_key_file(&pem_path, None).unwrap();
        let families: Vec<_> = keys.iter().map(|k| k.family).collect();
        assert_eq!(
            families,
            [
                KeyFamily::Ec(EcCurve::P384),
                KeyFamily::Ed25519,
                KeyFamily::Rsa { bits: 2048 },
                KeyFamily::Rsa { bits: 2048 }
            ]
        );
        assert!(keys.iter().all(|k| k.kid.is_none() && k.alg.is_none()));
        // The PEM and JWK forms of a key have the same RFC 7638 thumbprint.
        let as_jwk = parse_jwks(&jwks(&[ec_jwk(&ec, "x"), rsa_jwk(rsa, "y")]), true).unwrap();
        assert_eq!(keys[0].thumbprint, as_jwk[0].thumbprint);
        assert_eq!(keys[2].thumbprint, as_jwk[1].thumbprint);
        assert_eq!(keys[3].thumbprint, as_jwk[1].thumbprint);
        let named = load_key_file(&pem_path, Some("k1")).unwrap();
        assert!(named.iter().all(|k| k.kid.as_deref() == Some("k1")));

        let private = dir.path().join("private.pem");
        std::fs::write(&private, pem("PRIVATE KEY", &[0u8; 8])).unwrap();
        assert!(matches!(
            load_key_file(&private, None),
            Err(JwksError::BadPem { .. })
        ));
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "hello").unwrap();
        assert!(matches!(
            load_key_file(&garbage, None),
            Err(JwksError::BadPem { .. })
        ));
        assert!(matches!(
            load_key_file(&dir.path().join("missing"), None),
            Err(JwksError::File { .. })
        ));

        // Local JWKS: symmetric keys allowed; `kid` fills in only where the JWK has none.
        let json_path = dir.path().join("keys.json");
        let secret = json!({"kty": "oct", "k": b64(&[9u8; 32])});
        std::fs::write(&json_path, jwks(&[secret.clone(), ec_jwk(&ec, "own")])).unwrap();
        let keys = load_key_file(&json_path, Some("fill")).unwrap();
        assert_eq!(kids(&keys), ["fill", "own"]);
        assert_eq!(keys[0].family, KeyFamily::Hmac);
        // A lone JWK works too.
        std::fs::write(&json_path, serde_json::to_vec(&secret).unwrap()).unwrap();
        assert_eq!(load_key_file(&json_path, None).unwrap().len(), 1);
        std::fs::write(&json_path, br#"{"keys": [{"kty": "oct", "k": "AAAA"}]}"#).unwrap();
        assert!(matches!(
            load_key_file(&json_path, None),
            Err(JwksError::File { .. })
        ));
    }
}
