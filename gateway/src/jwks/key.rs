//! The key model: a verification key, its family, one generation of an issuer's keys and
//! the lookup of a token's `kid` and `alg` in it.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use jsonwebtoken::{Algorithm, DecodingKey};

/// Every algorithm jsonwebtoken can verify, to reason about which keys overlap.
const ALL_ALGORITHMS: [Algorithm; 12] = [
    Algorithm::HS256,
    Algorithm::HS384,
    Algorithm::HS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::EdDSA,
];

/// Key type and size, used to match a token's `alg` to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFamily {
    /// RSA (RS256/384/512, PS256/384/512), with its modulus size.
    Rsa {
        /// Modulus length in bits (leading zero bytes ignored).
        bits: usize,
    },
    /// ECDSA on a NIST curve.
    Ec(EcCurve),
    /// EdDSA with Ed25519.
    Ed25519,
    /// Shared secret (HS256/384/512); only ever from local configuration.
    Hmac,
}

/// The NIST curves the gateway verifies with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EcCurve {
    /// P-256, for ES256.
    P256,
    /// P-384, for ES384.
    P384,
}

impl fmt::Display for KeyFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyFamily::Rsa { bits } => write!(f, "RSA-{bits}"),
            KeyFamily::Ec(EcCurve::P256) => f.write_str("EC P-256"),
            KeyFamily::Ec(EcCurve::P384) => f.write_str("EC P-384"),
            KeyFamily::Ed25519 => f.write_str("Ed25519"),
            KeyFamily::Hmac => f.write_str("HMAC"),
        }
    }
}

impl KeyFamily {
    /// Whether a key of this family can verify `alg` at all (ignoring any declared `alg`).
    pub(super) fn supports(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        matches!(
            (self, alg),
            (
                KeyFamily::Rsa { .. },
                RS256 | RS384 | RS512 | PS256 | PS384 | PS512
            ) | (KeyFamily::Ec(EcCurve::P256), ES256)
                | (KeyFamily::Ec(EcCurve::P384), ES384)
                | (KeyFamily::Ed25519, EdDSA)
                | (KeyFamily::Hmac, HS256 | HS384 | HS512)
        )
    }
}

/// One key that can verify token signatures.
#[derive(Clone, Debug)]
pub struct VerifyKey {
    /// The JWK's `kid`, if any.
    pub kid: Option<String>,
    /// Key type and size.
    pub family: KeyFamily,
    /// The JWK's `alg` if it declared one; the key then verifies that algorithm only.
    pub alg: Option<Algorithm>,
    /// Key material ready for jsonwebtoken.
    pub key: DecodingKey,
    /// RFC 7638 SHA-256 thumbprint, base64url (for HMAC: SHA-256 of the secret, base64url).
    pub thumbprint: String,
}

impl VerifyKey {
    /// Whether this key may verify a token signed with `alg`: family must match (RS*/PS* ↔
    /// Rsa, ES256 ↔ P256, ES384 ↔ P384, EdDSA ↔ Ed25519, HS* ↔ Hmac) and, if the JWK declared
    /// `alg`, it must equal `alg`.
    pub fn accepts(&self, alg: Algorithm) -> bool {
        self.family.supports(alg) && self.alg.is_none_or(|declared| declared == alg)
    }

    /// Whether some algorithm could be verified by both keys (so one `kid` would be ambiguous).
    pub(super) fn overlaps(&self, other: &VerifyKey) -> bool {
        ALL_ALGORITHMS
            .iter()
            .any(|&alg| self.accepts(alg) && other.accepts(alg))
    }
}

/// One generation of an issuer's keys.
#[derive(Debug)]
pub struct KeySet {
    /// The usable keys, in document order.
    pub keys: Vec<Arc<VerifyKey>>,
    /// When the source last confirmed these keys (a 304 counts).
    pub fetched_at: SystemTime,
    /// Increments whenever the set of keys changes; stays put when a refresh finds the same keys.
    pub generation: u64,
}

/// Result of looking a token's `kid` and `alg` up in a [`KeySet`].
#[derive(Debug, Clone)]
pub enum KeyLookup {
    /// The key to verify with.
    Found(Arc<VerifyKey>),
    /// No key has the token's `kid` (a refetch may help).
    UnknownKid,
    /// Keys exist, but none (or more than one, without a `kid`) fits the token's `alg`.
    NoMatchingKey,
}

impl KeySet {
    /// kid given: the key with that kid that accepts alg (UnknownKid if no key has that kid,
    /// NoMatchingKey if the kid exists but cannot do alg).
    /// kid absent: Found only when exactly one key in the set accepts alg; otherwise
    /// NoMatchingKey.
    pub fn lookup(&self, kid: Option<&str>, alg: Algorithm) -> KeyLookup {
        match kid {
            Some(kid) => {
                let mut kid_seen = false;
                for key in self.keys.iter().filter(|k| k.kid.as_deref() == Some(kid)) {
                    if key.accepts(alg) {
                        return KeyLookup::Found(key.clone());
                    }
                    kid_seen = true;
                }
                if kid_seen {
                    KeyLookup::NoMatchingKey
                } else {
                    KeyLookup::UnknownKid
                }
            }
            None => {
                // Without a kid, trying keys one after another would let a token pick its key;
                // only an unambiguous set is accepted.
                let mut candidates = self.keys.iter().filter(|k| k.accepts(alg));
                match (candidates.next(), candidates.next()) {
                    (Some(key), None) => KeyLookup::Found(key.clone()),
                    _ => KeyLookup::NoMatchingKey,
                }
            }
        }
    }

    /// Whether a key with this thumbprint is still in the set (tokens verified by a removed
    /// key become invalid).
    pub fn contains_thumbprint(&self, thumbprint: &str) -> bool {
        self.keys.iter().any(|k| k.thumbprint == thumbprint)
    }

    pub(super) fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    /// What identifies the set's content, independent of key order.
    pub(super) fn fingerprint(keys: &[Arc<VerifyKey>]) -> Vec<(&str, Option<&str>, Option<u8>)> {
        let mut out: Vec<_> = keys
            .iter()
            // Algorithm is not Ord; its discriminant is enough to compare.
            .map(|k| {
                (
                    k.thumbprint.as_str(),
                    k.kid.as_deref(),
                    k.alg.map(|a| a as u8),
                )
            })
            .collect();
        out.sort_unstable();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwks::parse::parse_jwks;
    use crate::jwks::test_keys::*;
    use aws_lc_rs::signature::Ed25519KeyPair;
    use serde_json::json;

    fn set_of(keys: Vec<VerifyKey>) -> KeySet {
        KeySet {
            keys: keys.into_iter().map(Arc::new).collect(),
            fetched_at: SystemTime::now(),
            generation: 1,
        }
    }

    fn found(lookup: KeyLookup) -> Option<String> {
        match lookup {
            KeyLookup::Found(k) => Some(k.kid.clone().unwrap_or_default()),
            _ => None,
        }
    }

    #[test]
    fn lookup_rules() {
        let p256 = ec_pair(EcCurve::P256);
        let p384 = ec_pair(EcCurve::P384);
        let ed = Ed25519KeyPair::generate().unwrap();
        let mut rsa = rfc_rsa_jwk();
        rsa["kid"] = json!("r");
        let doc = jwks(&[
            ec_jwk(&p256, "a"),
            ec_jwk(&p384, "b"),
            rsa,
            ed_jwk(&ed, "e"),
        ]);
        let mut keys = parse_jwks(&doc, true).unwrap();
        let set = set_of(keys.clone());

        assert_eq!(
            found(set.lookup(Some("a"), Algorithm::ES256)).as_deref(),
            Some("a")
        );
        // An ES384 key named by a token signed ES256: the kid exists but cannot do the alg.
        assert!(matches!(
            set.lookup(Some("b"), Algorithm::ES256),
            KeyLookup::NoMatchingKey
        ));
        assert!(matches!(
            set.lookup(Some("zz"), Algorithm::ES256),
            KeyLookup::UnknownKid
        ));
        // The JWK declared RS256, so PS256 is refused even though the family fits.
        assert!(matches!(
            set.lookup(Some("r"), Algorithm::PS256),
            KeyLookup::NoMatchingKey
        ));
        assert_eq!(
            found(set.lookup(Some("r"), Algorithm::RS256)).as_deref(),
            Some("r")
        );
        // No kid: fine while exactly one key accepts the alg.
        assert_eq!(
            found(set.lookup(None, Algorithm::ES256)).as_deref(),
            Some("a")
        );
        assert_eq!(
            found(set.lookup(None, Algorithm::EdDSA)).as_deref(),
            Some("e")
        );
        assert!(matches!(
            set.lookup(None, Algorithm::HS256),
            KeyLookup::NoMatchingKey
        ));
        assert!(set.contains_thumbprint(&keys[0].thumbprint));
        assert!(!set.contains_thumbprint("nope"));

        let second = parse_jwks(&jwks(&[ec_jwk(&ec_pair(EcCurve::P256), "c")]), true).unwrap();
        keys.extend(second);
        let set = set_of(keys);
        assert!(matches!(
            set.lookup(None, Algorithm::ES256),
            KeyLookup::NoMatchingKey
        ));
        assert_eq!(
            found(set.lookup(Some("c"), Algorithm::ES256)).as_deref(),
            Some("c")
        );
    }
}
