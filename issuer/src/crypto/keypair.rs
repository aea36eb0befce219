//! Signing keys: generation, public JWKs with RFC 7638 key ids, JWKS documents, and the
//! at-rest protection of private keys.
//!
//! Private keys travel as unencrypted PKCS#8 v1 DER inside the process only; whatever is
//! written to the database or a file goes through [`seal`] first.

use std::fmt;
use std::str::FromStr;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::{
    EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, RsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING,
};
use aws_lc_rs::{aead, digest, hkdf, rsa};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::secrets::random_bytes;
use super::CryptoError;

/// A JWS algorithm the issuer can sign access tokens with.
///
/// The variant names are the JWA (`alg`) names, so `Display`, `FromStr` and serde all use
/// the exact strings that appear in token headers and JWKs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KeyAlg {
    /// ECDSA with P-256 and SHA-256 (the default: small keys and signatures, fast).
    ES256,
    /// RSASSA-PKCS1-v1_5 with SHA-256, 2048-bit keys (for verifiers without EC support).
    RS256,
    /// Ed25519 signatures (RFC 8037).
    EdDSA,
}

impl KeyAlg {
    /// The JWA name, as it appears in the JOSE header `alg` and the JWK `alg`.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyAlg::ES256 => "ES256",
            KeyAlg::RS256 => "RS256",
            KeyAlg::EdDSA => "EdDSA",
        }
    }

    /// The matching `jsonwebtoken` algorithm.
    pub fn jwt_algorithm(self) -> jsonwebtoken::Algorithm {
        match self {
            KeyAlg::ES256 => jsonwebtoken::Algorithm::ES256,
            KeyAlg::RS256 => jsonwebtoken::Algorithm::RS256,
            KeyAlg::EdDSA => jsonwebtoken::Algorithm::EdDSA,
        }
    }
}

impl fmt::Display for KeyAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KeyAlg {
    type Err = CryptoError;

    /// Accepts the JWA names in any ASCII case, because they are typed into config files.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [KeyAlg::ES256, KeyAlg::RS256, KeyAlg::EdDSA]
            .into_iter()
            .find(|alg| alg.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| CryptoError::UnsupportedAlgorithm(s.to_owned()))
    }
}

/// A signing key: the private half for the signer, the public JWK for the JWKS.
#[derive(Clone)]
pub struct KeyMaterial {
    /// Algorithm the key signs with.
    pub alg: KeyAlg,
    /// Key id: the RFC 7638 thumbprint of the public JWK (base64url SHA-256), so the same key
    /// always gets the same id on every replica and after every restart.
    pub kid: String,
    /// Unencrypted PKCS#8 v1 DER private key. Seal it with [`seal`] before storing it.
    pub private_pkcs8_der: Vec<u8>,
    /// Public JWK: `kty`, `crv`/`x`/`y` or `n`/`e`, plus `kid`, `alg` and `use: "sig"`.
    pub public_jwk: Value,
}

impl fmt::Debug for KeyMaterial {
    // Hand-written so that a stray `{:?}` in a log line can never print the private key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyMaterial")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .field("private_pkcs8_der", &"<redacted>")
            .field("public_jwk", &self.public_jwk)
            .finish()
    }
}

/// Generates a new signing key: P-256 for ES256, 2048-bit RSA for RS256, Ed25519 for EdDSA.
pub fn generate(alg: KeyAlg) -> Result<KeyMaterial, CryptoError> {
    let failed = |_| CryptoError::KeyGeneration { alg: alg.as_str() };
    let der = match alg {
        KeyAlg::ES256 => EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
            .map_err(failed)?
            .to_pkcs8v1()
            .map_err(failed)?
            .as_ref()
            .to_vec(),
        KeyAlg::RS256 => RsaKeyPair::generate(rsa::KeySize::Rsa2048)
            .map_err(failed)?
            .as_der()
            .map_err(failed)?
            .as_ref()
            .to_vec(),
        // PKCS#8 v1 (seed only) like `openssl genpkey -algorithm ED25519`, for portability.
        KeyAlg::EdDSA => Ed25519KeyPair::generate()
            .map_err(failed)?
            .to_pkcs8v1()
            .map_err(failed)?
            .as_ref()
            .to_vec(),
    };
    // Going through the parser, rather than reading the public half off the fresh key pair,
    // means generated and reloaded keys get their JWK from exactly the same code.
    from_pkcs8(alg, &der)
}

/// Rebuilds the public JWK and the kid from a stored PKCS#8 private key.
///
/// Refuses keys of another algorithm or curve, and RSA keys under 2048 bits (gateways refuse
/// them too, so signing with one would only produce unverifiable tokens).
pub fn from_pkcs8(alg: KeyAlg, der: &[u8]) -> Result<KeyMaterial, CryptoError> {
    let invalid = |reason: String| CryptoError::InvalidKey {
        alg: alg.as_str(),
        reason,
    };
    let mut jwk = match alg {
        KeyAlg::ES256 => {
            let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der)
                .map_err(|e| invalid(e.to_string()))?;
            // SEC1 uncompressed point: 0x04 || X (32 bytes) || Y (32 bytes).
            let (x, y) = match pair.public_key().as_ref() {
                [0x04, xy @ ..] if xy.len() == 64 => xy.split_at(32),
                _ => return Err(invalid("unexpected P-256 public key encoding".into())),
            };
            json!({ "kty": "EC", "crv": "P-256", "x": b64url(x), "y": b64url(y) })
        }
        KeyAlg::RS256 => {
            let pair = RsaKeyPair::from_pkcs8(der).map_err(|e| invalid(e.to_string()))?;
            let bits = pair.public_modulus_len() * 8;
            if bits < 2048 {
                return Err(invalid(format!(
                    "{bits}-bit RSA key; at least 2048 bits are required"
                )));
            }
            let public = pair.public_key();
            json!({
                "kty": "RSA",
                "n": b64url(public.modulus().big_endian_without_leading_zero()),
                "e": b64url(public.exponent().big_endian_without_leading_zero()),
            })
        }
        KeyAlg::EdDSA => {
            let pair = Ed25519KeyPair::from_pkcs8(der).map_err(|e| invalid(e.to_string()))?;
            json!({ "kty": "OKP", "crv": "Ed25519", "x": b64url(pair.public_key().as_ref()) })
        }
    };
    let kid = thumbprint(&jwk)?;
    if let Some(members) = jwk.as_object_mut() {
        members.insert("kid".into(), Value::String(kid.clone()));
        members.insert("alg".into(), Value::String(alg.as_str().into()));
        members.insert("use".into(), Value::String("sig".into()));
    }
    Ok(KeyMaterial {
        alg,
        kid,
        private_pkcs8_der: der.to_vec(),
        public_jwk: jwk,
    })
}

/// RFC 7638 JWK thumbprint: base64url(SHA-256) of the required members in lexicographic
/// order, without whitespace. Other members (`kid`, `alg`, `use`, …) do not take part.
pub fn thumbprint(jwk: &Value) -> Result<String, CryptoError> {
    let member = |name: &str| {
        jwk.get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| CryptoError::InvalidJwk(format!("missing string member {name:?}")))
    };
    // Already in lexicographic order, as RFC 7638 section 3.2 requires.
    let required: &[&str] = match member("kty")? {
        "EC" => &["crv", "kty", "x", "y"],
        "RSA" => &["e", "kty", "n"],
        "OKP" => &["crv", "kty", "x"],
        "oct" => &["k", "kty"],
        other => return Err(CryptoError::InvalidJwk(format!("unknown kty {other:?}"))),
    };
    let mut canonical = String::from("{");
    for (i, name) in required.iter().enumerate() {
        if i > 0 {
            canonical.push(',');
        }
        // Serialising through serde_json gives the JSON string escaping the RFC asks for.
        canonical.push_str(&Value::from(*name).to_string());
        canonical.push(':');
        canonical.push_str(&Value::from(member(name)?).to_string());
    }
    canonical.push('}');
    Ok(b64url(
        digest::digest(&digest::SHA256, canonical.as_bytes()).as_ref(),
    ))
}

/// Members that carry private or symmetric key material in a JWK (RFC 7518 section 6).
const PRIVATE_MEMBERS: &[&str] = &["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// Builds a JWKS document `{"keys": [...]}` from public JWKs.
///
/// Defence in depth for "only public key material": private members are stripped and
/// symmetric (`kty: oct`) or non-object entries are dropped, whatever the caller passed.
pub fn jwks(public_jwks: &[Value]) -> Value {
    let keys: Vec<Value> = public_jwks
        .iter()
        .filter_map(|jwk| {
            let mut members = jwk.as_object()?.clone();
            if members.get("kty").and_then(Value::as_str) == Some("oct") {
                return None;
            }
            for name in PRIVATE_MEMBERS {
                members.remove(*name);
            }
            Some(Value::Object(members))
        })
        .collect();
    json!({ "keys": keys })
}

/// Prefix of a private key encrypted with the key-encryption secret.
const ENC_PREFIX: &str = "enc:v1:";
/// Prefix of a private key stored without encryption (no secret configured).
const PLAIN_PREFIX: &str = "plain:";
/// Minimum length of the key-encryption secret: 256 bits, the AES key size.
pub const MIN_KEK_LEN: usize = 32;
/// HKDF salt and info: fixed, versioned labels so that the same secret used elsewhere
/// (a pepper, say) never yields this AES key.
const HKDF_SALT: &[u8] = b"portcullis-issuer kek v1";
const HKDF_INFO: &[u8] = b"signing-key-at-rest aes-256-gcm";
/// Associated data: binds the ciphertext to its format version, so a blob cannot be
/// replayed under a future format with different semantics.
const SEAL_AAD: &[u8] = ENC_PREFIX.as_bytes();

/// Derives the AES-256-GCM key from the configured secret with HKDF-SHA256.
fn sealing_key(kek: &[u8]) -> Result<aead::LessSafeKey, CryptoError> {
    if kek.len() < MIN_KEK_LEN {
        return Err(CryptoError::WeakSecret { min: MIN_KEK_LEN });
    }
    let info = [HKDF_INFO];
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, HKDF_SALT).extract(kek);
    let okm = prk
        .expand(&info, &aead::AES_256_GCM)
        .map_err(|_| CryptoError::KeyDerivation)?;
    Ok(aead::LessSafeKey::new(aead::UnboundKey::from(okm)))
}

/// Prepares a private key for storage.
///
/// With a key-encryption secret (at least [`MIN_KEK_LEN`] bytes) the key is encrypted with
/// AES-256-GCM under a fresh random 96-bit nonce: `enc:v1:<base64url(nonce|ciphertext|tag)>`.
/// Without one it is stored as `plain:<base64url(der)>`.
pub fn seal(der: &[u8], kek: Option<&[u8]>) -> Result<String, CryptoError> {
    let Some(kek) = kek else {
        return Ok(format!("{PLAIN_PREFIX}{}", b64url(der)));
    };
    let key = sealing_key(kek)?;
    // Random nonces are safe here: a key is sealed a handful of times over its life, far
    // below the 2^32 messages at which random 96-bit nonces start to risk a collision.
    let nonce: [u8; aead::NONCE_LEN] = random_bytes();
    let mut in_out = der.to_vec();
    key.seal_in_place_append_tag(
        aead::Nonce::assume_unique_for_key(nonce),
        aead::Aad::from(SEAL_AAD),
        &mut in_out,
    )
    .map_err(|_| CryptoError::Encrypt)?;
    let mut blob = Vec::with_capacity(nonce.len() + in_out.len());
    blob.extend_from_slice(&nonce);
    blob.extend_from_slice(&in_out);
    Ok(format!("{ENC_PREFIX}{}", b64url(&blob)))
}

/// Recovers a private key written by [`seal`].
///
/// Accepts both forms: `plain:` keys keep loading after a secret is configured, so that a
/// deployment can turn encryption on and re-seal its keys (see [`is_encrypted`]). A wrong
/// secret or any tampering is an error, never garbage key bytes.
pub fn open(stored: &str, kek: Option<&[u8]>) -> Result<Vec<u8>, CryptoError> {
    if let Some(encoded) = stored.strip_prefix(ENC_PREFIX) {
        let key = sealing_key(kek.ok_or(CryptoError::MissingSecret)?)?;
        let blob = URL_SAFE_NO_PAD
            .decode(encoded)
            .map_err(|_| CryptoError::MalformedStored("ciphertext is not base64url"))?;
        if blob.len() < aead::NONCE_LEN + aead::AES_256_GCM.tag_len() {
            return Err(CryptoError::MalformedStored("ciphertext is too short"));
        }
        let (nonce, ciphertext) = blob.split_at(aead::NONCE_LEN);
        let nonce = aead::Nonce::try_assume_unique_for_key(nonce)
            .map_err(|_| CryptoError::MalformedStored("bad nonce"))?;
        let mut in_out = ciphertext.to_vec();
        let plain_len = key
            .open_in_place(nonce, aead::Aad::from(SEAL_AAD), &mut in_out)
            .map_err(|_| CryptoError::Decrypt)?
            .len();
        in_out.truncate(plain_len);
        Ok(in_out)
    } else if let Some(encoded) = stored.strip_prefix(PLAIN_PREFIX) {
        // A configured secret that is too short is a configuration error even here:
        // reporting it now beats discovering it at the first seal.
        if let Some(kek) = kek {
            sealing_key(kek)?;
        }
        URL_SAFE_NO_PAD
            .decode(encoded)
            .map_err(|_| CryptoError::MalformedStored("key is not base64url"))
    } else {
        Err(CryptoError::MalformedStored(
            "unknown format (expected \"enc:v1:\" or \"plain:\")",
        ))
    }
}

/// Whether a stored key is encrypted; lets the store re-seal `plain:` keys once a
/// key-encryption secret has been configured.
pub fn is_encrypted(stored: &str) -> bool {
    stored.starts_with(ENC_PREFIX)
}

fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEK: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn alg_names_round_trip() {
        for alg in [KeyAlg::ES256, KeyAlg::RS256, KeyAlg::EdDSA] {
            assert_eq!(alg.to_string().parse::<KeyAlg>().unwrap(), alg);
            assert_eq!(
                serde_json::to_value(alg).unwrap(),
                Value::from(alg.as_str())
            );
        }
        assert_eq!("es256".parse::<KeyAlg>().unwrap(), KeyAlg::ES256);
        assert_eq!("EDDSA".parse::<KeyAlg>().unwrap(), KeyAlg::EdDSA);
        assert!(matches!(
            "HS256".parse::<KeyAlg>(),
            Err(CryptoError::UnsupportedAlgorithm(_))
        ));
    }

    #[test]
    fn rfc7638_example_thumbprint() {
        // RFC 7638 section 3.1, with extra members that must not change the result.
        let jwk = json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29"
        });
        assert_eq!(
            thumbprint(&jwk).unwrap(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn rfc8037_ed25519_thumbprint() {
        // RFC 8037 appendix A.3.
        let jwk = json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
        });
        assert_eq!(
            thumbprint(&jwk).unwrap(),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
    }

    #[test]
    fn thumbprint_rejects_incomplete_jwk() {
        assert!(thumbprint(&json!({"kty": "EC", "crv": "P-256", "x": "AA"})).is_err());
        assert!(thumbprint(&json!({"kty": "XYZ"})).is_err());
        assert!(thumbprint(&json!({"n": "AA", "e": "AQAB"})).is_err());
    }

    #[test]
    fn generated_keys_have_public_jwk_and_thumbprint_kid() {
        for alg in [KeyAlg::ES256, KeyAlg::RS256, KeyAlg::EdDSA] {
            let key = generate(alg).unwrap();
            let jwk = &key.public_jwk;
            assert_eq!(key.kid, thumbprint(jwk).unwrap(), "{alg}");
            assert_eq!(jwk["kid"], Value::from(key.kid.as_str()));
            assert_eq!(jwk["alg"], Value::from(alg.as_str()));
            assert_eq!(jwk["use"], "sig");
            assert_eq!(key.kid.len(), 43, "base64url SHA-256");
            for private in PRIVATE_MEMBERS {
                assert!(jwk.get(*private).is_none(), "{alg} leaks {private}");
            }
            match alg {
                KeyAlg::ES256 => {
                    assert_eq!(jwk["kty"], "EC");
                    assert_eq!(jwk["crv"], "P-256");
                    let x = URL_SAFE_NO_PAD.decode(jwk["x"].as_str().unwrap()).unwrap();
                    let y = URL_SAFE_NO_PAD.decode(jwk["y"].as_str().unwrap()).unwrap();
                    assert_eq!((x.len(), y.len()), (32, 32));
                }
                KeyAlg::RS256 => {
                    assert_eq!(jwk["kty"], "RSA");
                    assert_eq!(jwk["e"], "AQAB");
                    let n = URL_SAFE_NO_PAD.decode(jwk["n"].as_str().unwrap()).unwrap();
                    assert_eq!(n.len(), 256);
                }
                KeyAlg::EdDSA => {
                    assert_eq!(jwk["kty"], "OKP");
                    assert_eq!(jwk["crv"], "Ed25519");
                    let x = URL_SAFE_NO_PAD.decode(jwk["x"].as_str().unwrap()).unwrap();
                    assert_eq!(x.len(), 32);
                }
            }
            // Reloading the stored key gives the same public key and kid.
            let reloaded = from_pkcs8(alg, &key.private_pkcs8_der).unwrap();
            assert_eq!(reloaded.kid, key.kid);
            assert_eq!(reloaded.public_jwk, key.public_jwk);
        }
    }

    #[test]
    fn distinct_keys_get_distinct_kids() {
        let a = generate(KeyAlg::ES256).unwrap();
        let b = generate(KeyAlg::ES256).unwrap();
        assert_ne!(a.kid, b.kid);
    }

    #[test]
    fn from_pkcs8_rejects_wrong_algorithm_and_garbage() {
        let ec = generate(KeyAlg::ES256).unwrap();
        let ed = generate(KeyAlg::EdDSA).unwrap();
        assert!(from_pkcs8(KeyAlg::RS256, &ec.private_pkcs8_der).is_err());
        assert!(from_pkcs8(KeyAlg::EdDSA, &ec.private_pkcs8_der).is_err());
        assert!(from_pkcs8(KeyAlg::ES256, &ed.private_pkcs8_der).is_err());
        assert!(matches!(
            from_pkcs8(KeyAlg::ES256, b"not a key"),
            Err(CryptoError::InvalidKey { alg: "ES256", .. })
        ));
    }

    #[test]
    fn debug_redacts_private_key() {
        let key = generate(KeyAlg::EdDSA).unwrap();
        let printed = format!("{key:?}");
        assert!(printed.contains("<redacted>"));
        assert!(!printed.contains(&format!("{:?}", key.private_pkcs8_der)));
    }

    #[test]
    fn jwks_wraps_and_strips_private_material() {
        let key = generate(KeyAlg::ES256).unwrap();
        let mut leaky = key.public_jwk.clone();
        leaky["d"] = Value::from("secret");
        let set = jwks(&[
            key.public_jwk.clone(),
            leaky,
            json!({"kty": "oct", "k": "c2VjcmV0"}),
            json!("not a jwk"),
        ]);
        let keys = set["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0], key.public_jwk);
        assert_eq!(keys[1], key.public_jwk);
        assert_eq!(jwks(&[]), json!({"keys": []}));
    }

    #[test]
    fn seal_open_round_trip_encrypted() {
        let der = generate(KeyAlg::ES256).unwrap().private_pkcs8_der;
        let stored = seal(&der, Some(KEK)).unwrap();
        assert!(stored.starts_with("enc:v1:"));
        assert!(is_encrypted(&stored));
        assert_eq!(open(&stored, Some(KEK)).unwrap(), der);
        // Fresh nonce each time: sealing twice never gives the same text.
        assert_ne!(seal(&der, Some(KEK)).unwrap(), stored);
    }

    #[test]
    fn seal_without_secret_is_plain_and_opens_with_or_without_secret() {
        let der = b"some der bytes".to_vec();
        let stored = seal(&der, None).unwrap();
        assert_eq!(stored, format!("plain:{}", URL_SAFE_NO_PAD.encode(&der)));
        assert!(!is_encrypted(&stored));
        assert_eq!(open(&stored, None).unwrap(), der);
        // Migration: a plain key still loads once a secret is configured.
        assert_eq!(open(&stored, Some(KEK)).unwrap(), der);
    }

    #[test]
    fn open_with_wrong_or_missing_secret_fails() {
        let stored = seal(b"private", Some(KEK)).unwrap();
        let other = b"fedcba9876543210fedcba9876543210";
        assert!(matches!(
            open(&stored, Some(other)),
            Err(CryptoError::Decrypt)
        ));
        assert!(matches!(
            open(&stored, None),
            Err(CryptoError::MissingSecret)
        ));
    }

    #[test]
    fn open_detects_tampering() {
        let stored = seal(b"private key bytes", Some(KEK)).unwrap();
        let encoded = stored.strip_prefix("enc:v1:").unwrap();
        let mut blob = URL_SAFE_NO_PAD.decode(encoded).unwrap();
        for i in [0, aead::NONCE_LEN, blob.len() - 1] {
            blob[i] ^= 0x01;
            let tampered = format!("enc:v1:{}", URL_SAFE_NO_PAD.encode(&blob));
            assert!(
                matches!(open(&tampered, Some(KEK)), Err(CryptoError::Decrypt)),
                "byte {i}"
            );
            blob[i] ^= 0x01;
        }
        // Truncated below nonce + tag.
        let short = format!("enc:v1:{}", URL_SAFE_NO_PAD.encode(&blob[..20]));
        assert!(matches!(
            open(&short, Some(KEK)),
            Err(CryptoError::MalformedStored(_))
        ));
    }

    #[test]
    fn short_secret_and_malformed_input_are_refused() {
        assert!(matches!(
            seal(b"x", Some(b"too short")),
            Err(CryptoError::WeakSecret { min: 32 })
        ));
        assert!(matches!(
            open("plain:AAAA", Some(b"too short")),
            Err(CryptoError::WeakSecret { .. })
        ));
        for bad in ["", "garbage", "enc:v2:AAAA", "plain:***", "enc:v1:***"] {
            assert!(open(bad, Some(KEK)).is_err(), "{bad}");
        }
    }
}
