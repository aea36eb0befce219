//! Signing access tokens.
//!
//! The JOSE header is exactly `{typ, alg, kid}` with `typ: at+jwt` (RFC 9068), so that an
//! access token can never be mistaken for an ID token or another JWT the gateway might see.
//! Which claims go in is the token module's business; this one only signs.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::Value;

use super::keypair::{self, KeyAlg, KeyMaterial};
use super::CryptoError;

/// The `typ` header of every access token (RFC 9068 section 2.1).
pub const ACCESS_TOKEN_TYP: &str = "at+jwt";

/// Signs access tokens with one signing key.
pub struct Signer {
    key: EncodingKey,
    kid: String,
    alg: KeyAlg,
}

impl fmt::Debug for Signer {
    // Hand-written: the encoding key is private material and must not reach logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// Builds a signer for `material`.
    ///
    /// Re-derives the public key from the private one and refuses a `kid` that is not its
    /// thumbprint: a mix-up between stored keys and ids would otherwise produce tokens that
    /// no published JWK verifies.
    pub fn new(material: &KeyMaterial) -> Result<Signer, CryptoError> {
        let der = &material.private_pkcs8_der;
        let derived = keypair::from_pkcs8(material.alg, der)?;
        if derived.kid != material.kid {
            return Err(CryptoError::InvalidKey {
                alg: material.alg.as_str(),
                reason: "kid is not the RFC 7638 thumbprint of this key".into(),
            });
        }
        let key = match material.alg {
            KeyAlg::ES256 => EncodingKey::from_ec_der(der),
            KeyAlg::EdDSA => EncodingKey::from_ed_der(der),
            // jsonwebtoken's RSA signer wants PKCS#1, not PKCS#8; its PEM reader unwraps a
            // PKCS#8 "PRIVATE KEY" into PKCS#1, which saves us a hand-written DER parser.
            KeyAlg::RS256 => EncodingKey::from_rsa_pem(pkcs8_pem(der).as_bytes())?,
        };
        Ok(Signer {
            key,
            kid: material.kid.clone(),
            alg: material.alg,
        })
    }

    /// The key id put in every token header (and published in the JWKS).
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The signing algorithm.
    pub fn alg(&self) -> KeyAlg {
        self.alg
    }

    /// Signs `claims` (a JSON object) into a compact JWS with header
    /// `{"typ":"at+jwt","alg":…,"kid":…}`.
    pub fn sign(&self, claims: &Value) -> Result<String, CryptoError> {
        if !claims.is_object() {
            return Err(CryptoError::ClaimsNotObject);
        }
        let header = Header {
            typ: Some(ACCESS_TOKEN_TYP.to_owned()),
            kid: Some(self.kid.clone()),
            ..Header::new(self.alg.jwt_algorithm())
        };
        Ok(jsonwebtoken::encode(&header, claims, &self.key)?)
    }
}

/// Wraps PKCS#8 DER in a PEM "PRIVATE KEY" block with the usual 64-column lines.
fn pkcs8_pem(der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let mut pem = String::with_capacity(body.len() + body.len() / 64 + 64);
    pem.push_str("-----BEGIN PRIVATE KEY-----\n");
    // Base64 output is ASCII, so splitting on byte boundaries never splits a character.
    for line in body.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    pem
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::keypair::generate;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use jsonwebtoken::jwk::Jwk;
    use jsonwebtoken::{DecodingKey, Validation};
    use serde_json::json;

    fn claims() -> Value {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        json!({
            "iss": "https://issuer.test",
            "sub": "user-1",
            "aud": "demo",
            "iat": now,
            "nbf": now,
            "exp": now + 300,
            "jti": "token-1",
            "scope": "read write",
            "roles": ["admin"],
            "amr": ["pwd"],
        })
    }

    #[test]
    fn tokens_verify_against_the_published_jwk_for_every_algorithm() {
        for alg in [KeyAlg::ES256, KeyAlg::RS256, KeyAlg::EdDSA] {
            let material = generate(alg).unwrap();
            let signer = Signer::new(&material).unwrap();
            assert_eq!(signer.kid(), material.kid);
            assert_eq!(signer.alg(), alg);
            let token = signer.sign(&claims()).unwrap();

            // Verify like a gateway would: only from the public JWK out of the JWKS.
            let jwks = keypair::jwks(std::slice::from_ref(&material.public_jwk));
            let jwk: Jwk = serde_json::from_value(jwks["keys"][0].clone()).unwrap();
            let key = DecodingKey::from_jwk(&jwk).unwrap();
            let mut validation = Validation::new(alg.jwt_algorithm());
            validation.set_audience(&["demo"]);
            validation.set_issuer(&["https://issuer.test"]);
            let data = jsonwebtoken::decode::<Value>(&token, &key, &validation).unwrap();
            assert_eq!(data.claims["sub"], "user-1", "{alg}");
            assert_eq!(data.header.typ.as_deref(), Some("at+jwt"));
            assert_eq!(data.header.kid.as_deref(), Some(material.kid.as_str()));
            assert_eq!(data.header.alg, alg.jwt_algorithm());

            // The header holds exactly typ, alg and kid.
            let header_b64 = token.split('.').next().unwrap();
            let header: Value =
                serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header_b64).unwrap()).unwrap();
            assert_eq!(
                header,
                json!({"typ": "at+jwt", "alg": alg.as_str(), "kid": material.kid})
            );
        }
    }

    #[test]
    fn token_does_not_verify_with_another_key() {
        let signer = Signer::new(&generate(KeyAlg::ES256).unwrap()).unwrap();
        let other = generate(KeyAlg::ES256).unwrap();
        let token = signer.sign(&claims()).unwrap();
        let jwk: Jwk = serde_json::from_value(other.public_jwk).unwrap();
        let mut validation = Validation::new(jsonwebtoken::Algorithm::ES256);
        validation.set_audience(&["demo"]);
        let key = DecodingKey::from_jwk(&jwk).unwrap();
        assert!(jsonwebtoken::decode::<Value>(&token, &key, &validation).is_err());
    }

    #[test]
    fn signer_refuses_mismatched_kid_and_non_object_claims() {
        let mut material = generate(KeyAlg::EdDSA).unwrap();
        let signer = Signer::new(&material).unwrap();
        assert!(matches!(
            signer.sign(&json!(["not", "an", "object"])),
            Err(CryptoError::ClaimsNotObject)
        ));
        material.kid = "some-other-kid".into();
        assert!(matches!(
            Signer::new(&material),
            Err(CryptoError::InvalidKey { .. })
        ));
        material.private_pkcs8_der = b"garbage".to_vec();
        assert!(Signer::new(&material).is_err());
    }

    #[test]
    fn debug_does_not_print_the_key() {
        let signer = Signer::new(&generate(KeyAlg::ES256).unwrap()).unwrap();
        let printed = format!("{signer:?}");
        assert!(printed.contains("kid"));
        assert!(!printed.contains("key:"));
    }
}
