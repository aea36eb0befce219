//! Verification keys per issuer: parsing JWKS documents and key files, and keeping each
//! issuer's key set fresh.
//!
//! The hot path is [`IssuerKeys::current`]: one arc-swap load and a staleness check, no lock.
//! Fetching is serialised by a tokio mutex that only fetchers take, so a refresh, an
//! unknown-`kid` refetch and any number of waiting requests share one network round trip.
//!
//! Keys only ever come from the configured source. Nothing a token says (`jku`, `x5u`, `x5c`,
//! a URL in `kid`) is looked at here, and unknown `kid`s trigger at most one refetch per
//! cooldown, so a client cannot make the gateway fetch on its behalf. When no key set is
//! usable (none fetched yet, or the last good one is older than `max_stale`) the answer is
//! "no keys", never "anything goes".

use std::error::Error as StdError;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use http_body_util::BodyExt;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

mod refresher;

pub use refresher::KeyRefresher;

/// RSA moduli below this are refused: too weak, and the verifier (aws-lc, 2048–8192) would
/// reject every signature made with them anyway.
const MIN_RSA_BITS: usize = 2048;
/// Above this aws-lc refuses to verify, and huge moduli make verification a CPU sink.
const MAX_RSA_BITS: usize = 8192;
/// HMAC secrets shorter than the SHA-256 output are brute-forceable (RFC 7518 §3.2).
const MIN_HMAC_SECRET: usize = 32;
/// Key files are small; anything bigger is a wrong path, not a key.
const MAX_KEY_FILE_BYTES: u64 = 1024 * 1024;
/// Redirects followed by a JWKS or discovery fetch.
const MAX_REDIRECTS: usize = 3;
/// Bound on remembered unknown kids (each entry is a kid string of at most `MAX_CACHED_KID`).
const NEGATIVE_CACHE_CAPACITY: u64 = 10_000;
/// Longer kids are not remembered (the cooldown still limits the fetches they can cause).
const MAX_CACHED_KID: usize = 256;
const ACCEPT_JWKS: &str = "application/jwk-set+json, application/json";
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
    fn supports(self, alg: Algorithm) -> bool {
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
    fn overlaps(&self, other: &VerifyKey) -> bool {
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

    fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    /// What identifies the set's content, independent of key order.
    fn fingerprint(keys: &[Arc<VerifyKey>]) -> Vec<(&str, Option<&str>, Option<u8>)> {
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

/// Why keys could not be loaded or fetched.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum JwksError {
    /// The server answered something other than 200 (or 304 to a conditional request).
    #[error("{url}: HTTP status {status}, expected 200")]
    Status {
        /// What was fetched.
        url: String,
        /// The status received.
        status: u16,
    },
    /// No complete answer within `fetch_timeout`.
    #[error("{url}: no complete answer within {timeout:?}")]
    Timeout {
        /// What was fetched.
        url: String,
        /// The limit that passed.
        timeout: Duration,
    },
    /// Connecting, TLS or the HTTP exchange failed.
    #[error("{url}: {reason}")]
    Connect {
        /// What was fetched.
        url: String,
        /// The transport error, with its causes.
        reason: String,
    },
    /// The body was larger than `max_response_bytes`.
    #[error("{url}: response larger than {limit} bytes")]
    TooLarge {
        /// What was fetched.
        url: String,
        /// The configured cap.
        limit: usize,
    },
    /// A 304 arrived but there is no key set it could refer to.
    #[error("{url}: 304 Not Modified but no key set is cached")]
    UnexpectedNotModified {
        /// What was fetched.
        url: String,
    },
    /// The document is not JSON.
    #[error("JWKS document is not JSON: {0}")]
    NotJson(String),
    /// The document is JSON but not an object with a `keys` array.
    #[error("not a JWKS document: no \"keys\" array")]
    NoKeysArray,
    /// Every key of a fetched document was skipped (the reasons were logged).
    #[error("JWKS document has no usable key (see the warnings for each skipped key)")]
    NoUsableKeys,
    /// The OIDC discovery document is unusable.
    #[error("discovery document {url}: {reason}")]
    Discovery {
        /// The discovery URL.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The key source is not `http://`, `https://` or `unix:/socket:/path`.
    #[error("bad key source URL {url:?}: {reason}")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A key file could not be read or holds no usable key.
    #[error("{}: {reason}", path.display())]
    File {
        /// The key file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A PEM key file is malformed or holds something other than a supported public key.
    #[error("{}: bad PEM: {reason}", path.display())]
    BadPem {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// An HMAC secret is too short to be safe.
    #[error("HMAC secret is {len} bytes; at least {min} are required")]
    HmacTooShort {
        /// Length given.
        len: usize,
        /// Minimum length.
        min: usize,
    },
    /// The HTTP client could not be built (TLS set-up).
    #[error("cannot build the JWKS HTTP client: {0}")]
    Client(String),
}

// ---------------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------------

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

fn b64(bytes: &[u8]) -> String {
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
fn loggable(text: &str) -> &str {
    match text.char_indices().nth(64) {
        Some((cut, _)) => &text[..cut],
        None => text,
    }
}

// ---------------------------------------------------------------------------------------------
// Live keys of one issuer
// ---------------------------------------------------------------------------------------------

/// Where an issuer's keys come from.
#[derive(Clone, Debug)]
pub enum KeySource {
    /// `http://…`, `https://…`, or `unix:/path/to.sock:/jwks/path` (HTTP/1.1 over a Unix socket).
    Remote(String),
    /// OIDC discovery: GET `{issuer}/.well-known/openid-configuration`, read `jwks_uri`, then
    /// as Remote (the discovery document is re-read on each refresh).
    Discovery(String),
    /// Keys loaded once from a file or secret; never refreshed.
    Static(Vec<VerifyKey>),
}

/// Refresh and safety bounds (all configurable by the caller).
#[derive(Clone, Debug)]
pub struct RefreshPolicy {
    /// A Cache-Control max-age below this is raised to it.
    pub min_refresh: Duration,
    /// A max-age above this is lowered to it.
    pub max_refresh: Duration,
    /// Refresh interval when the response has no max-age.
    pub default_refresh: Duration,
    /// Next attempt after a failed fetch.
    pub retry_after_failure: Duration,
    /// At most one unknown-kid refetch per issuer per cooldown.
    pub unknown_kid_cooldown: Duration,
    /// An unknown kid that was refetched for and is still unknown is remembered this long.
    pub negative_kid_ttl: Duration,
    /// The last good keys are used this long after the last successful fetch, then dropped
    /// (fail closed).
    pub max_stale: Duration,
    /// Limit for one HTTP exchange (discovery and JWKS each).
    pub fetch_timeout: Duration,
    /// Bigger bodies are refused (read with a cap, never buffered unbounded).
    pub max_response_bytes: usize,
}

impl Default for RefreshPolicy {
    fn default() -> Self {
        RefreshPolicy {
            min_refresh: Duration::from_secs(60),
            max_refresh: Duration::from_secs(3600),
            default_refresh: Duration::from_secs(300),
            retry_after_failure: Duration::from_secs(10),
            unknown_kid_cooldown: Duration::from_secs(30),
            negative_kid_ttl: Duration::from_secs(60),
            max_stale: Duration::from_secs(24 * 3600),
            fetch_timeout: Duration::from_secs(5),
            max_response_bytes: 256 * 1024,
        }
    }
}

/// Counters and ages for metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct IssuerKeyStats {
    /// Successful fetches (200 or 304).
    pub fetches_ok: u64,
    /// Failed fetches (transport, status, size, parse, no usable key).
    pub fetches_failed: u64,
    /// Seconds since the last successful fetch; None if never fetched (always for static keys).
    pub seconds_since_success: Option<f64>,
    /// Keys in the usable set (0 when not ready).
    pub keys: usize,
    /// Generation of the usable set (0 when not ready).
    pub generation: u64,
    /// Refetches started because a token named an unknown kid.
    pub unknown_kid_fetches: u64,
}

/// What to fetch, once static keys have been installed.
#[derive(Debug)]
enum Origin {
    Url(String),
    Discovery(String),
    Static,
}

/// State only fetchers touch, behind the single-flight lock.
struct FetchState {
    /// ETag of the last 200, with the URL it belongs to (discovery may move the JWKS).
    etag: Option<(String, String)>,
    /// Outcome of the last fetch, handed to callers that waited for it.
    last: Result<bool, JwksError>,
}

/// A successful HTTP exchange.
struct HttpAnswer {
    status: u16,
    etag: Option<String>,
    max_age: Option<Duration>,
    body: Vec<u8>,
}

/// Live keys of one issuer.
pub struct IssuerKeys {
    name: String,
    origin: Origin,
    policy: RefreshPolicy,
    /// One client per issuer, so connections (and TLS sessions) are reused across refreshes.
    client: Result<reqwest::Client, JwksError>,
    set: ArcSwapOption<KeySet>,
    /// Origin of the monotonic millisecond stamps below, where 0 means "never".
    epoch: Instant,
    last_success_ms: AtomicU64,
    next_refresh_ms: AtomicU64,
    last_unknown_kid_fetch_ms: AtomicU64,
    generation: AtomicU64,
    /// Fetches finished so far; tells a caller that waited for the lock that it can share.
    completed_fetches: AtomicU64,
    fetch: tokio::sync::Mutex<FetchState>,
    negative_kids: moka::sync::Cache<String, ()>,
    fetches_ok: AtomicU64,
    fetches_failed: AtomicU64,
    unknown_kid_fetches: AtomicU64,
}

impl fmt::Debug for IssuerKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuerKeys")
            .field("name", &self.name)
            .field("origin", &self.origin)
            .field("ready", &self.is_ready())
            .finish_non_exhaustive()
    }
}

impl IssuerKeys {
    /// Keys of issuer `name` from `source`; Static sources are ready at once, the others after
    /// the first successful [`refresh`](Self::refresh).
    pub fn new(name: String, source: KeySource, policy: RefreshPolicy) -> Arc<IssuerKeys> {
        let (origin, initial) = match source {
            KeySource::Remote(url) => (Origin::Url(url), None),
            KeySource::Discovery(issuer) => (Origin::Discovery(issuer), None),
            KeySource::Static(keys) if keys.is_empty() => (Origin::Static, None),
            KeySource::Static(keys) => (
                Origin::Static,
                Some(Arc::new(KeySet {
                    keys: keys.into_iter().map(Arc::new).collect(),
                    fetched_at: SystemTime::now(),
                    generation: 1,
                })),
            ),
        };
        let client = match origin {
            Origin::Static => Err(JwksError::Client("static keys are never fetched".into())),
            _ => build_client(&policy),
        };
        if let Err(e) = &client {
            if !matches!(origin, Origin::Static) {
                tracing::error!(issuer = %name, error = %e, "JWKS fetching disabled");
            }
        }
        let generation = if initial.is_some() { 1 } else { 0 };
        let negative_kids = moka::sync::Cache::builder()
            .max_capacity(NEGATIVE_CACHE_CAPACITY)
            // moka refuses a zero or centuries-long TTL; keep any configured value in range.
            .time_to_live(policy.negative_kid_ttl.clamp(
                Duration::from_millis(1),
                Duration::from_secs(365 * 24 * 3600),
            ))
            .build();
        Arc::new(IssuerKeys {
            name,
            origin,
            client,
            set: ArcSwapOption::new(initial),
            epoch: Instant::now(),
            last_success_ms: AtomicU64::new(0),
            next_refresh_ms: AtomicU64::new(0),
            last_unknown_kid_fetch_ms: AtomicU64::new(0),
            generation: AtomicU64::new(generation),
            completed_fetches: AtomicU64::new(0),
            fetch: tokio::sync::Mutex::new(FetchState {
                etag: None,
                last: Ok(false),
            }),
            negative_kids,
            fetches_ok: AtomicU64::new(0),
            fetches_failed: AtomicU64::new(0),
            unknown_kid_fetches: AtomicU64::new(0),
            policy,
        })
    }

    /// The issuer name given at construction.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The usable key set, or None when there are no keys yet or the last good set is older
    /// than max_stale. Lock-free (arc-swap load); this is the hot path.
    pub fn current(&self) -> Option<Arc<KeySet>> {
        let set = self.set.load_full()?;
        if !self.is_static() && self.since_success_ms()? > millis(self.policy.max_stale) {
            return None;
        }
        Some(set)
    }

    /// Whether keys are usable (`current().is_some()`); readiness waits for this.
    pub fn is_ready(&self) -> bool {
        self.current().is_some()
    }

    /// Fetch now (conditional GET with If-None-Match when an ETag is known; a 304 keeps the
    /// set and only extends freshness). On success schedules the next refresh from
    /// Cache-Control max-age clamped to [min, max] (default_refresh when absent); on failure
    /// keeps the old keys (until max_stale), logs, counts, and schedules retry_after_failure.
    /// Concurrent callers share one fetch. Returns whether the key set changed. Static
    /// sources return `Ok(false)` without doing anything.
    pub async fn refresh(&self) -> Result<bool, JwksError> {
        if self.is_static() {
            return Ok(false);
        }
        self.single_flight(|_| true).await.unwrap_or(Ok(false))
    }

    /// Whether a scheduled refresh is due (for the background loop). Never for static keys.
    pub fn refresh_due(&self) -> bool {
        !self.is_static() && self.now_ms() >= self.next_refresh_ms.load(Ordering::Acquire)
    }

    /// Time until the next scheduled refresh (zero when due), so a background loop can sleep
    /// exactly; None for static keys.
    pub fn next_refresh_in(&self) -> Option<Duration> {
        if self.is_static() {
            return None;
        }
        let next = self.next_refresh_ms.load(Ordering::Acquire);
        Some(Duration::from_millis(next.saturating_sub(self.now_ms())))
    }

    /// Called when a token names a kid not in the set. If the kid is in the negative cache, or
    /// the last unknown-kid refetch was less than unknown_kid_cooldown ago, returns current()
    /// without fetching (after waiting for a fetch that is running, if any). Otherwise does ONE
    /// refetch (concurrent callers wait for the same fetch), remembers the kid in the negative
    /// cache if it is still unknown, and returns current().
    pub async fn refetch_for_unknown_kid(&self, kid: &str) -> Option<Arc<KeySet>> {
        if self.is_static() {
            return self.current();
        }
        let current = self.current();
        if current.as_ref().is_some_and(|s| s.has_kid(kid)) || self.negative_kids.contains_key(kid)
        {
            return current;
        }
        // Inside the cooldown with no fetch running there is nothing to wait for: answer at
        // once, without queueing a flood of bogus kids behind the lock.
        if !self.unknown_kid_cooldown_over() && self.fetch.try_lock().is_ok() {
            return self.current();
        }
        let outcome = self
            .single_flight(IssuerKeys::claim_unknown_kid_fetch)
            .await;
        let current = self.current();
        // Only a fetch that worked proves the kid missing; after a failure it may yet appear.
        if matches!(outcome, Some(Ok(_)))
            && kid.len() <= MAX_CACHED_KID
            && !current.as_ref().is_some_and(|s| s.has_kid(kid))
        {
            self.negative_kids.insert(kid.to_owned(), ());
        }
        current
    }

    /// Counters and ages for metrics: fetches ok, fetches failed, seconds since last
    /// successful fetch (None if never), number of keys.
    pub fn stats(&self) -> IssuerKeyStats {
        let current = self.current();
        IssuerKeyStats {
            fetches_ok: self.fetches_ok.load(Ordering::Relaxed),
            fetches_failed: self.fetches_failed.load(Ordering::Relaxed),
            seconds_since_success: self
                .since_success_ms()
                .map(|ms| Duration::from_millis(ms).as_secs_f64()),
            keys: current.as_ref().map_or(0, |s| s.keys.len()),
            generation: current.as_ref().map_or(0, |s| s.generation),
            unknown_kid_fetches: self.unknown_kid_fetches.load(Ordering::Relaxed),
        }
    }

    fn is_static(&self) -> bool {
        matches!(self.origin, Origin::Static)
    }

    /// Milliseconds on the monotonic clock since `epoch`, plus one so that 0 means "never".
    fn now_ms(&self) -> u64 {
        millis(self.epoch.elapsed()).saturating_add(1)
    }

    fn since_success_ms(&self) -> Option<u64> {
        match self.last_success_ms.load(Ordering::Acquire) {
            0 => None,
            at => Some(self.now_ms().saturating_sub(at)),
        }
    }

    fn unknown_kid_cooldown_over(&self) -> bool {
        match self.last_unknown_kid_fetch_ms.load(Ordering::Acquire) {
            0 => true,
            at => self.now_ms().saturating_sub(at) >= millis(self.policy.unknown_kid_cooldown),
        }
    }

    /// Under the fetch lock: may an unknown kid start a fetch now? Claims the cooldown if so.
    fn claim_unknown_kid_fetch(&self) -> bool {
        if !self.unknown_kid_cooldown_over() {
            return false;
        }
        self.last_unknown_kid_fetch_ms
            .store(self.now_ms(), Ordering::Release);
        self.unknown_kid_fetches.fetch_add(1, Ordering::Relaxed);
        tracing::info!(issuer = %self.name, "token with an unknown kid: refetching keys");
        true
    }

    /// Runs one fetch under the lock, or shares the outcome of a fetch that finished while this
    /// caller waited for the lock. `may_fetch` decides, under the lock, whether a new fetch may
    /// start; None when it said no and nothing was shared.
    async fn single_flight(
        &self,
        may_fetch: impl FnOnce(&IssuerKeys) -> bool,
    ) -> Option<Result<bool, JwksError>> {
        let seen = self.completed_fetches.load(Ordering::Acquire);
        let mut state = self.fetch.lock().await;
        if self.completed_fetches.load(Ordering::Acquire) != seen {
            return Some(state.last.clone());
        }
        if !may_fetch(self) {
            return None;
        }
        let outcome = self.fetch_and_apply(&mut state).await;
        state.last = outcome.clone();
        self.completed_fetches.fetch_add(1, Ordering::Release);
        Some(outcome)
    }

    /// One fetch and its bookkeeping; the caller holds the fetch lock.
    async fn fetch_and_apply(&self, state: &mut FetchState) -> Result<bool, JwksError> {
        let outcome = self.fetch_once(state).await;
        let now = self.now_ms();
        match outcome {
            Ok(Some((url, answer))) if answer.status == 304 => match self.set.load_full() {
                Some(old) => {
                    // Same keys, confirmed now: only freshness moves. Freshness is recorded
                    // before the set is published so current() never sees a set without it.
                    self.succeeded(now, answer.max_age);
                    self.set.store(Some(Arc::new(KeySet {
                        keys: old.keys.clone(),
                        fetched_at: SystemTime::now(),
                        generation: old.generation,
                    })));
                    tracing::debug!(issuer = %self.name, "JWKS not modified");
                    Ok(false)
                }
                None => {
                    state.etag = None;
                    Err(self.failed(now, JwksError::UnexpectedNotModified { url }))
                }
            },
            Ok(Some((url, answer))) => {
                let keys = match parse_jwks(&answer.body, true) {
                    Ok(keys) if keys.is_empty() => Err(JwksError::NoUsableKeys),
                    other => other,
                };
                match keys {
                    Ok(keys) => {
                        self.succeeded(now, answer.max_age);
                        let changed = self.install(keys);
                        state.etag = answer.etag.map(|tag| (url, tag));
                        Ok(changed)
                    }
                    Err(e) => Err(self.failed(now, e)),
                }
            }
            Ok(None) => Ok(false),
            Err(e) => Err(self.failed(now, e)),
        }
    }

    /// Publishes freshly fetched keys; returns whether they differ from the current ones.
    fn install(&self, keys: Vec<VerifyKey>) -> bool {
        let keys: Vec<Arc<VerifyKey>> = keys.into_iter().map(Arc::new).collect();
        let old = self.set.load_full();
        let same = old
            .as_ref()
            .is_some_and(|old| KeySet::fingerprint(&old.keys) == KeySet::fingerprint(&keys));
        let (keys, generation) = match old {
            // Keep the old Arcs so anything holding a key sees the very same one.
            Some(old) if same => (old.keys.clone(), old.generation),
            _ => (keys, self.generation.fetch_add(1, Ordering::AcqRel) + 1),
        };
        if !same {
            tracing::info!(issuer = %self.name, keys = keys.len(), generation, "JWKS key set updated");
        }
        self.set.store(Some(Arc::new(KeySet {
            keys,
            fetched_at: SystemTime::now(),
            generation,
        })));
        !same
    }

    fn succeeded(&self, now: u64, max_age: Option<Duration>) {
        let p = &self.policy;
        let interval = match max_age {
            // max/min rather than clamp: clamp panics on a misconfigured min > max.
            Some(age) => age.max(p.min_refresh).min(p.max_refresh),
            None => p.default_refresh,
        };
        self.fetches_ok.fetch_add(1, Ordering::Relaxed);
        self.last_success_ms.store(now, Ordering::Release);
        self.next_refresh_ms
            .store(now.saturating_add(millis(interval)), Ordering::Release);
    }

    fn failed(&self, now: u64, error: JwksError) -> JwksError {
        self.fetches_failed.fetch_add(1, Ordering::Relaxed);
        self.next_refresh_ms.store(
            now.saturating_add(millis(self.policy.retry_after_failure)),
            Ordering::Release,
        );
        let stale = self
            .since_success_ms()
            .is_none_or(|age| age > millis(self.policy.max_stale));
        if stale && self.set.load().is_some() {
            // current() already hides these keys; dropping them makes it final and frees them.
            self.set.store(None);
            tracing::error!(issuer = %self.name, source = %self.origin_label(), error = %error,
                "JWKS refresh failed and the last good keys are older than max_stale: keys dropped, tokens of this issuer are rejected");
        } else {
            tracing::warn!(issuer = %self.name, source = %self.origin_label(), error = %error,
                "JWKS refresh failed; keeping the previous keys");
        }
        error
    }

    fn origin_label(&self) -> &str {
        match &self.origin {
            Origin::Url(url) | Origin::Discovery(url) => url,
            Origin::Static => "static",
        }
    }

    /// Resolves the JWKS URL and GETs it (conditionally when an ETag is known for that URL).
    async fn fetch_once(
        &self,
        state: &mut FetchState,
    ) -> Result<Option<(String, HttpAnswer)>, JwksError> {
        let url = match &self.origin {
            Origin::Url(url) => url.clone(),
            Origin::Discovery(issuer) => self.discover(issuer).await?,
            Origin::Static => return Ok(None),
        };
        // Conditional only while there is a set a 304 could refer to (keys dropped as stale
        // must be fetched in full).
        let etag = state
            .etag
            .as_ref()
            .filter(|(for_url, _)| *for_url == url && self.set.load().is_some())
            .map(|(_, tag)| tag.as_str());
        let answer = self.get(&url, etag).await?;
        match answer.status {
            200 => Ok(Some((url, answer))),
            304 if etag.is_some() => Ok(Some((url, answer))),
            status => Err(JwksError::Status { url, status }),
        }
    }

    /// Reads `jwks_uri` from the issuer's OIDC discovery document.
    async fn discover(&self, issuer: &str) -> Result<String, JwksError> {
        let base = issuer.trim_end_matches('/');
        let url = format!("{base}/.well-known/openid-configuration");
        let answer = self.get(&url, None).await?;
        if answer.status != 200 {
            return Err(JwksError::Status {
                url,
                status: answer.status,
            });
        }
        let bad = |reason: String| JwksError::Discovery {
            url: url.clone(),
            reason,
        };
        let doc: Value =
            serde_json::from_slice(&answer.body).map_err(|e| bad(format!("not JSON: {e}")))?;
        if let Some(advertised) = doc.get("issuer").and_then(Value::as_str) {
            if advertised.trim_end_matches('/') != base {
                // Tokens are checked against the configured issuer anyway; this is a hint for
                // the operator, not a reason to go without keys.
                tracing::warn!(issuer = %self.name, configured = base, advertised = loggable(advertised),
                    "discovery document names a different issuer");
            }
        }
        let jwks_uri = doc
            .get("jwks_uri")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("no \"jwks_uri\" string".into()))?;
        // The document may not send key fetches to a local socket, nor downgrade to plain
        // HTTP when discovery itself used HTTPS.
        let allowed = has_scheme(jwks_uri, "https://")
            || (has_scheme(jwks_uri, "http://") && !has_scheme(&url, "https://"));
        if !allowed {
            return Err(bad(format!(
                "jwks_uri {:?} must be an https URL (or http for an http issuer)",
                loggable(jwks_uri)
            )));
        }
        Ok(jwks_uri.to_owned())
    }

    /// One GET with the policy's timeout and body cap, over TCP (reqwest) or a Unix socket.
    async fn get(&self, url: &str, etag: Option<&str>) -> Result<HttpAnswer, JwksError> {
        let limit = self.policy.max_response_bytes;
        let exchange = async {
            if let Some(rest) = url.strip_prefix("unix:") {
                unix_get(url, rest, etag, limit).await
            } else if has_scheme(url, "http://") || has_scheme(url, "https://") {
                let client = self.client.as_ref().map_err(Clone::clone)?;
                http_get(client, url, etag, limit, self.policy.fetch_timeout).await
            } else {
                Err(JwksError::BadUrl {
                    url: url.to_owned(),
                    reason: "expected http://, https:// or unix:/socket:/path".into(),
                })
            }
        };
        match tokio::time::timeout(self.policy.fetch_timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(JwksError::Timeout {
                url: url.to_owned(),
                timeout: self.policy.fetch_timeout,
            }),
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn has_scheme(url: &str, scheme: &str) -> bool {
    url.get(..scheme.len())
        .is_some_and(|s| s.eq_ignore_ascii_case(scheme))
}

fn build_client(policy: &RefreshPolicy) -> Result<reqwest::Client, JwksError> {
    let redirects = reqwest::redirect::Policy::custom(|attempt| {
        if attempt.previous().len() > MAX_REDIRECTS {
            attempt.error("too many redirects")
        } else if attempt.url().scheme() != "https"
            && attempt.previous().iter().any(|u| u.scheme() == "https")
        {
            attempt.error("redirect from https to plain http refused")
        } else {
            attempt.follow()
        }
    });
    reqwest::Client::builder()
        // Proxy settings from the environment are for people, not for key fetches.
        .no_proxy()
        .redirect(redirects)
        .timeout(policy.fetch_timeout)
        .connect_timeout(policy.fetch_timeout)
        .user_agent(concat!("portcullis-gateway/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| JwksError::Client(error_chain(&e)))
}

/// An error with its causes, because reqwest and hyper put the useful part in `source()`.
fn error_chain(error: &dyn StdError) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let part = e.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = e.source();
    }
    text
}

/// `max-age` from Cache-Control values; `no-cache`/`no-store` count as 0 (so min_refresh).
fn cache_max_age<'a>(values: impl Iterator<Item = &'a str>) -> Option<Duration> {
    let mut max_age = None;
    for directive in values.flat_map(|v| v.split(',')) {
        let directive = directive.trim();
        let (name, value) = directive.split_once('=').unwrap_or((directive, ""));
        let name = name.trim();
        if name.eq_ignore_ascii_case("no-cache") || name.eq_ignore_ascii_case("no-store") {
            return Some(Duration::ZERO);
        }
        if name.eq_ignore_ascii_case("max-age") && max_age.is_none() {
            max_age = value
                .trim()
                .trim_matches('"')
                .parse::<u64>()
                .ok()
                .map(Duration::from_secs);
        }
    }
    max_age
}

fn answer_headers(status: u16, headers: &http::HeaderMap, body: Vec<u8>) -> HttpAnswer {
    HttpAnswer {
        status,
        etag: headers
            .get(http::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        max_age: cache_max_age(
            headers
                .get_all(http::header::CACHE_CONTROL)
                .iter()
                .filter_map(|v| v.to_str().ok()),
        ),
        body,
    }
}

fn too_large(url: &str, limit: usize) -> JwksError {
    JwksError::TooLarge {
        url: url.to_owned(),
        limit,
    }
}

/// Refuses early when the announced length is already over the cap.
fn check_content_length(
    url: &str,
    headers: &http::HeaderMap,
    limit: usize,
) -> Result<(), JwksError> {
    let announced = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match announced {
        Some(len) if len > limit as u64 => Err(too_large(url, limit)),
        _ => Ok(()),
    }
}

fn append_capped(
    buf: &mut Vec<u8>,
    chunk: &[u8],
    url: &str,
    limit: usize,
) -> Result<(), JwksError> {
    if buf.len().saturating_add(chunk.len()) > limit {
        return Err(too_large(url, limit));
    }
    buf.extend_from_slice(chunk);
    Ok(())
}

async fn http_get(
    client: &reqwest::Client,
    url: &str,
    etag: Option<&str>,
    limit: usize,
    timeout: Duration,
) -> Result<HttpAnswer, JwksError> {
    let transport = |e: reqwest::Error| {
        if e.is_timeout() {
            JwksError::Timeout {
                url: url.to_owned(),
                timeout,
            }
        } else {
            JwksError::Connect {
                url: url.to_owned(),
                reason: error_chain(&e),
            }
        }
    };
    let mut request = client.get(url).header(http::header::ACCEPT, ACCEPT_JWKS);
    if let Some(tag) = etag {
        request = request.header(http::header::IF_NONE_MATCH, tag);
    }
    let mut response = request.send().await.map_err(transport)?;
    let status = response.status().as_u16();
    let mut body = Vec::new();
    // Only a 200 carries a document worth reading; any other body is left unread.
    if status == 200 {
        check_content_length(url, response.headers(), limit)?;
        while let Some(chunk) = response.chunk().await.map_err(transport)? {
            append_capped(&mut body, &chunk, url, limit)?;
        }
    }
    Ok(answer_headers(status, response.headers(), body))
}

/// Aborts the spawned connection driver when the exchange ends (or is cancelled).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// GET over HTTP/1.1 on a Unix socket; `rest` is `/path/to.sock:/http/path`.
async fn unix_get(
    url: &str,
    rest: &str,
    etag: Option<&str>,
    limit: usize,
) -> Result<HttpAnswer, JwksError> {
    let bad_url = |reason: &str| JwksError::BadUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let transport = |reason: String| JwksError::Connect {
        url: url.to_owned(),
        reason,
    };
    let (socket, path) = rest
        .find(":/")
        .map(|at| (&rest[..at], &rest[at + 1..]))
        .ok_or_else(|| bad_url("expected unix:/path/to.sock:/http/path"))?;
    if socket.is_empty() {
        return Err(bad_url("empty socket path"));
    }
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| transport(format!("connect to {socket}: {e}")))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| transport(error_chain(&e)))?;
    let _driver = AbortOnDrop(tokio::spawn(async move {
        // Errors surface through send_request / the body; nothing to add here.
        let _ = connection.await;
    }));
    let mut request = http::Request::get(path)
        .header(http::header::HOST, "localhost")
        .header(http::header::ACCEPT, ACCEPT_JWKS);
    if let Some(tag) = etag {
        request = request.header(http::header::IF_NONE_MATCH, tag);
    }
    let request = request
        .body(http_body_util::Empty::<Bytes>::new())
        .map_err(|e| bad_url(&e.to_string()))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| transport(error_chain(&e)))?;
    let (parts, mut incoming) = response.into_parts();
    let status = parts.status.as_u16();
    let mut body = Vec::new();
    if status == 200 {
        check_content_length(url, &parts.headers, limit)?;
        while let Some(frame) = incoming.frame().await {
            let frame = frame.map_err(|e| transport(error_chain(&e)))?;
            if let Some(data) = frame.data_ref() {
                append_capped(&mut body, data, url, limit)?;
            }
        }
    }
    Ok(answer_headers(status, &parts.headers, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{
        self as sig, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair, RsaPublicKeyComponents,
    };
    use serde_json::json;
    use std::io::{Read, Write};
    use std::sync::atomic::AtomicUsize;
    use std::sync::{Mutex, OnceLock};

    /// The RSA key of RFC 7638 §3.1 and its thumbprint.
    const RFC7638_N: &str = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
    const RFC7638_THUMBPRINT: &str = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs";

    fn rfc_rsa_jwk() -> Value {
        json!({"kty": "RSA", "n": RFC7638_N, "e": "AQAB", "alg": "RS256", "kid": "2011-04-29"})
    }

    fn ec_pair(curve: EcCurve) -> EcdsaKeyPair {
        let alg = match curve {
            EcCurve::P256 => &sig::ECDSA_P256_SHA256_FIXED_SIGNING,
            EcCurve::P384 => &sig::ECDSA_P384_SHA384_FIXED_SIGNING,
        };
        EcdsaKeyPair::generate(alg).unwrap()
    }

    fn ec_jwk(pair: &EcdsaKeyPair, kid: &str) -> Value {
        let point = pair.public_key().as_ref();
        let size = (point.len() - 1) / 2;
        let crv = if size == 32 { "P-256" } else { "P-384" };
        json!({"kty": "EC", "crv": crv, "kid": kid,
               "x": b64(&point[1..1 + size]), "y": b64(&point[1 + size..])})
    }

    fn ed_jwk(pair: &Ed25519KeyPair, kid: &str) -> Value {
        json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64(pair.public_key().as_ref())})
    }

    /// One RSA-2048 key for the whole test run (generation is the slow part).
    fn rsa_pair() -> &'static RsaKeyPair {
        static PAIR: OnceLock<RsaKeyPair> = OnceLock::new();
        PAIR.get_or_init(|| RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap())
    }

    fn rsa_jwk(pair: &RsaKeyPair, kid: &str) -> Value {
        let c = RsaPublicKeyComponents::<Vec<u8>>::from(pair.public_key());
        json!({"kty": "RSA", "kid": kid, "n": b64(&c.n), "e": b64(&c.e)})
    }

    fn jwks(keys: &[Value]) -> Vec<u8> {
        serde_json::to_vec(&json!({ "keys": keys })).unwrap()
    }

    fn kids(keys: &[VerifyKey]) -> Vec<&str> {
        keys.iter().filter_map(|k| k.kid.as_deref()).collect()
    }

    /// Whether `key` verifies a signature over a fixed message made by `sign`.
    fn verifies(key: &VerifyKey, alg: Algorithm, sign: impl Fn(&[u8]) -> Vec<u8>) -> bool {
        let message = b"eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0";
        let signature = b64(&sign(message));
        jsonwebtoken::crypto::verify(&signature, message, &key.key, alg).unwrap()
            && !jsonwebtoken::crypto::verify(&signature, b"tampered", &key.key, alg).unwrap()
    }

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

    #[test]
    fn cache_control_max_age() {
        let parse = |v: &[&str]| cache_max_age(v.iter().copied());
        assert_eq!(
            parse(&["public, max-age=300"]),
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            parse(&["public", "Max-Age=\"60\""]),
            Some(Duration::from_secs(60))
        );
        assert_eq!(parse(&["max-age=300, no-cache"]), Some(Duration::ZERO));
        assert_eq!(parse(&["public"]), None);
        assert_eq!(parse(&["max-age=soon"]), None);
    }

    // ---- a tiny HTTP/1.1 server on std threads, counting what it answers ----

    #[derive(Clone)]
    struct Reply {
        status: u16,
        body: Vec<u8>,
        etag: Option<String>,
        cache_control: Option<String>,
        delay: Duration,
        content_length: bool,
    }

    struct TestServer {
        reply: Mutex<Reply>,
        discovery: Mutex<Option<Value>>,
        hits: AtomicUsize,
        not_modified: AtomicUsize,
    }

    impl TestServer {
        fn new(body: Vec<u8>) -> Arc<TestServer> {
            Arc::new(TestServer {
                reply: Mutex::new(Reply {
                    status: 200,
                    body,
                    etag: Some("\"v1\"".into()),
                    cache_control: Some("max-age=300".into()),
                    delay: Duration::ZERO,
                    content_length: true,
                }),
                discovery: Mutex::new(None),
                hits: AtomicUsize::new(0),
                not_modified: AtomicUsize::new(0),
            })
        }

        fn set(&self, change: impl FnOnce(&mut Reply)) {
            change(&mut self.reply.lock().unwrap());
        }

        fn hits(&self) -> usize {
            self.hits.load(Ordering::SeqCst)
        }

        fn handle(&self, mut stream: impl Read + Write) {
            let mut head = Vec::new();
            let mut chunk = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&chunk[..n]),
                }
            }
            let head = String::from_utf8_lossy(&head).into_owned();
            let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
            let if_none_match = head.lines().find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("if-none-match")
                    .then(|| value.trim().to_owned())
            });
            let discovery = self.discovery.lock().unwrap().clone();
            if let (true, Some(doc)) = (path == "/.well-known/openid-configuration", discovery) {
                let body = serde_json::to_vec(&doc).unwrap();
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(&body);
                return;
            }
            self.hits.fetch_add(1, Ordering::SeqCst);
            let reply = self.reply.lock().unwrap().clone();
            std::thread::sleep(reply.delay);
            let not_modified = reply.status == 200
                && reply.etag.is_some()
                && if_none_match.as_deref() == reply.etag.as_deref();
            let (status, body) = if not_modified {
                self.not_modified.fetch_add(1, Ordering::SeqCst);
                (304, Vec::new())
            } else {
                (reply.status, reply.body)
            };
            let mut out = format!("HTTP/1.1 {status} Whatever\r\nConnection: close\r\n");
            if let Some(tag) = &reply.etag {
                out.push_str(&format!("ETag: {tag}\r\n"));
            }
            if let Some(cc) = &reply.cache_control {
                out.push_str(&format!("Cache-Control: {cc}\r\n"));
            }
            if status != 304 && reply.content_length {
                out.push_str(&format!("Content-Length: {}\r\n", body.len()));
            }
            out.push_str("\r\n");
            let _ = stream.write_all(out.as_bytes());
            let _ = stream.write_all(&body);
        }
    }

    /// Serves on 127.0.0.1; returns the base URL.
    fn serve_tcp(server: &Arc<TestServer>) -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = server.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let server = server.clone();
                std::thread::spawn(move || server.handle(stream));
            }
        });
        format!("http://{addr}")
    }

    fn serve_unix(server: &Arc<TestServer>, path: &Path) {
        let listener = std::os::unix::net::UnixListener::bind(path).unwrap();
        let server = server.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let server = server.clone();
                std::thread::spawn(move || server.handle(stream));
            }
        });
    }

    fn ec_doc(kids: &[&str]) -> Vec<u8> {
        let keys: Vec<Value> = kids
            .iter()
            .map(|kid| ec_jwk(&ec_pair(EcCurve::P256), kid))
            .collect();
        jwks(&keys)
    }

    fn within(d: Option<Duration>, low_secs: u64, high_secs: u64) -> bool {
        d.is_some_and(|d| d > Duration::from_secs(low_secs) && d <= Duration::from_secs(high_secs))
    }

    #[tokio::test]
    async fn refresh_uses_etag_and_clamps_max_age() {
        let server = TestServer::new(ec_doc(&["k1"]));
        server.set(|r| r.cache_control = Some("public, max-age=5".into()));
        let base = serve_tcp(&server);
        let keys = IssuerKeys::new(
            "t".into(),
            KeySource::Remote(format!("{base}/jwks")),
            RefreshPolicy::default(),
        );
        assert!(!keys.is_ready() && keys.current().is_none());
        assert!(keys.refresh_due());

        assert_eq!(keys.refresh().await, Ok(true));
        assert!(keys.is_ready());
        assert_eq!(keys.current().unwrap().generation, 1);
        // max-age=5 is raised to min_refresh (60s).
        assert!(within(keys.next_refresh_in(), 59, 60));
        assert!(!keys.refresh_due());

        // The ETag is sent back; the 304 keeps the set and generation.
        server.set(|r| r.cache_control = Some("max-age=999999".into()));
        let before = keys.current().unwrap();
        assert_eq!(keys.refresh().await, Ok(false));
        assert_eq!(server.not_modified.load(Ordering::SeqCst), 1);
        let after = keys.current().unwrap();
        assert_eq!(after.generation, 1);
        assert!(Arc::ptr_eq(&before.keys[0], &after.keys[0]));
        assert!(after.fetched_at >= before.fetched_at);
        // max-age above max_refresh (1h) is lowered to it.
        assert!(within(keys.next_refresh_in(), 3599, 3600));

        // No max-age: default_refresh (5 min).
        server.set(|r| r.cache_control = None);
        assert_eq!(keys.refresh().await, Ok(false));
        assert!(within(keys.next_refresh_in(), 299, 300));

        // New content under a new ETag: a new generation.
        server.set(|r| {
            r.body = ec_doc(&["k2", "k3"]);
            r.etag = Some("\"v2\"".into());
        });
        assert_eq!(keys.refresh().await, Ok(true));
        let set = keys.current().unwrap();
        assert_eq!((set.generation, set.keys.len()), (2, 2));
        // Same keys under yet another ETag: not a change.
        server.set(|r| r.etag = Some("\"v3\"".into()));
        assert_eq!(keys.refresh().await, Ok(false));
        assert_eq!(keys.current().unwrap().generation, 2);
        // Without an ETag, refreshes are plain GETs.
        server.set(|r| r.etag = None);
        assert_eq!(keys.refresh().await, Ok(false));

        assert_eq!(server.hits(), 6);
        assert_eq!(server.not_modified.load(Ordering::SeqCst), 2);
        let stats = keys.stats();
        assert_eq!(
            (stats.fetches_ok, stats.fetches_failed, stats.keys),
            (6, 0, 2)
        );
        assert!(stats.seconds_since_success.is_some_and(|s| s < 5.0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn unknown_kid_flood_causes_one_fetch() {
        let server = TestServer::new(ec_doc(&["k1"]));
        let base = serve_tcp(&server);
        let keys = IssuerKeys::new(
            "t".into(),
            KeySource::Remote(format!("{base}/jwks")),
            RefreshPolicy::default(),
        );
        assert_eq!(keys.refresh().await, Ok(true));
        // A slow server, so the concurrent callers really overlap the one fetch.
        server.set(|r| r.delay = Duration::from_millis(300));
        let tasks: Vec<_> = (0..10)
            .map(|t| {
                let keys = keys.clone();
                tokio::spawn(async move {
                    for i in 0..10 {
                        let set = keys
                            .refetch_for_unknown_kid(&format!("random-{t}-{i}"))
                            .await;
                        assert!(set.is_some(), "keys stay usable during a flood");
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(
            server.hits(),
            2,
            "one initial fetch and one unknown-kid fetch"
        );
        assert_eq!(keys.stats().unknown_kid_fetches, 1);
        // Still within the cooldown.
        keys.refetch_for_unknown_kid("yet-another").await;
        assert_eq!(server.hits(), 2);
    }

    #[tokio::test]
    async fn unknown_kid_cooldown_and_negative_cache() {
        let server = TestServer::new(ec_doc(&["k1"]));
        let base = serve_tcp(&server);
        let policy = RefreshPolicy {
            unknown_kid_cooldown: Duration::from_millis(800),
            ..RefreshPolicy::default()
        };
        let keys = IssuerKeys::new(
            "t".into(),
            KeySource::Remote(format!("{base}/jwks")),
            policy,
        );
        assert_eq!(keys.refresh().await, Ok(true));

        // A known kid never fetches.
        keys.refetch_for_unknown_kid("k1").await;
        assert_eq!(server.hits(), 1);
        keys.refetch_for_unknown_kid("a").await;
        assert_eq!(server.hits(), 2);
        keys.refetch_for_unknown_kid("b").await;
        assert_eq!(server.hits(), 2, "cooldown");

        tokio::time::sleep(Duration::from_millis(900)).await;
        keys.refetch_for_unknown_kid("a").await;
        assert_eq!(server.hits(), 2, "negative cache");
        keys.refetch_for_unknown_kid("b").await;
        assert_eq!(
            server.hits(),
            3,
            "cooldown over, b not yet known to be missing"
        );

        // A key published later is found by the next refetch.
        server.set(|r| {
            r.body = ec_doc(&["k1", "new"]);
            r.etag = Some("\"v2\"".into());
        });
        tokio::time::sleep(Duration::from_millis(900)).await;
        let set = keys.refetch_for_unknown_kid("new").await.unwrap();
        assert_eq!(server.hits(), 4);
        assert!(matches!(
            set.lookup(Some("new"), Algorithm::ES256),
            KeyLookup::Found(_)
        ));
        assert_eq!(set.generation, 2);
    }

    #[tokio::test]
    async fn failures_keep_old_keys_until_max_stale() {
        let server = TestServer::new(ec_doc(&["k1"]));
        let base = serve_tcp(&server);
        let policy = RefreshPolicy {
            max_stale: Duration::from_millis(1000),
            ..RefreshPolicy::default()
        };
        let keys = IssuerKeys::new(
            "t".into(),
            KeySource::Remote(format!("{base}/jwks")),
            policy,
        );
        assert_eq!(keys.refresh().await, Ok(true));

        server.set(|r| r.status = 500);
        assert!(matches!(
            keys.refresh().await,
            Err(JwksError::Status { status: 500, .. })
        ));
        assert!(keys.is_ready(), "old keys are kept");
        assert!(within(keys.next_refresh_in(), 9, 10), "retry_after_failure");
        server.set(|r| {
            r.status = 200;
            r.etag = None;
            r.body = b"<html>maintenance</html>".to_vec();
        });
        assert!(matches!(keys.refresh().await, Err(JwksError::NotJson(_))));
        server.set(|r| {
            r.body =
                br#"{"keys": [{"kty": "oct", "k": "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"}]}"#
                    .to_vec()
        });
        assert_eq!(keys.refresh().await, Err(JwksError::NoUsableKeys));
        assert!(keys.is_ready());
        let stats = keys.stats();
        assert_eq!(
            (stats.fetches_ok, stats.fetches_failed, stats.keys),
            (1, 3, 1)
        );

        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert!(keys.current().is_none(), "too old: fail closed");
        assert!(!keys.is_ready());
        assert_eq!(keys.stats().keys, 0);
        assert!(keys.refresh().await.is_err());
        assert!(keys.current().is_none());

        server.set(|r| r.body = ec_doc(&["k2"]));
        assert_eq!(keys.refresh().await, Ok(true));
        assert_eq!(keys.current().unwrap().generation, 2);
    }

    #[tokio::test]
    async fn oversized_bodies_are_refused() {
        let mut body = ec_doc(&["k1"]);
        body.truncate(body.len() - 1);
        body.extend(std::iter::repeat_n(b' ', 4096));
        body.push(b'}');
        let server = TestServer::new(body);
        let base = serve_tcp(&server);
        let small = RefreshPolicy {
            max_response_bytes: 1024,
            ..RefreshPolicy::default()
        };
        let keys = IssuerKeys::new(
            "t".into(),
            KeySource::Remote(format!("{base}/jwks")),
            small.clone(),
        );
        assert!(matches!(
            keys.refresh().await,
            Err(JwksError::TooLarge { limit: 1024, .. })
        ));
        // Without Content-Length the cap applies while reading.
        server.set(|r| r.content_length = false);
        assert!(matches!(
            keys.refresh().await,
            Err(JwksError::TooLarge { limit: 1024, .. })
        ));
        assert!(!keys.is_ready());

        let big = RefreshPolicy {
            max_response_bytes: 64 * 1024,
            ..small
        };
        let keys = IssuerKeys::new("t".into(), KeySource::Remote(format!("{base}/jwks")), big);
        assert_eq!(keys.refresh().await, Ok(true));
    }

    #[tokio::test]
    async fn unix_socket_source() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("issuer.sock");
        let server = TestServer::new(ec_doc(&["k1"]));
        serve_unix(&server, &socket);
        let url = format!("unix:{}:/.well-known/jwks.json", socket.display());
        let keys = IssuerKeys::new(
            "t".into(),
            KeySource::Remote(url.clone()),
            RefreshPolicy::default(),
        );
        assert_eq!(keys.refresh().await, Ok(true));
        assert!(keys.is_ready());
        assert_eq!(keys.refresh().await, Ok(false));
        assert_eq!(server.not_modified.load(Ordering::SeqCst), 1);

        let small = RefreshPolicy {
            max_response_bytes: 64,
            ..RefreshPolicy::default()
        };
        let capped = IssuerKeys::new("t".into(), KeySource::Remote(url), small);
        assert!(matches!(
            capped.refresh().await,
            Err(JwksError::TooLarge { .. })
        ));
        server.set(|r| r.content_length = false);
        assert!(matches!(
            capped.refresh().await,
            Err(JwksError::TooLarge { .. })
        ));

        let missing = format!("unix:{}:/jwks", dir.path().join("nobody.sock").display());
        let keys = IssuerKeys::new(
            "t".into(),
            KeySource::Remote(missing),
            RefreshPolicy::default(),
        );
        assert!(matches!(
            keys.refresh().await,
            Err(JwksError::Connect { .. })
        ));
        let no_path = format!("unix:{}", socket.display());
        let keys = IssuerKeys::new(
            "t".into(),
            KeySource::Remote(no_path),
            RefreshPolicy::default(),
        );
        assert!(matches!(
            keys.refresh().await,
            Err(JwksError::BadUrl { .. })
        ));
    }

    #[tokio::test]
    async fn discovery_source() {
        let server = TestServer::new(ec_doc(&["k1"]));
        let base = serve_tcp(&server);
        *server.discovery.lock().unwrap() =
            Some(json!({"issuer": base, "jwks_uri": format!("{base}/jwks")}));
        let keys = IssuerKeys::new(
            "t".into(),
            KeySource::Discovery(format!("{base}/")),
            RefreshPolicy::default(),
        );
        assert_eq!(keys.refresh().await, Ok(true));
        assert_eq!(keys.refresh().await, Ok(false));
        assert_eq!(server.not_modified.load(Ordering::SeqCst), 1);

        // The discovery document cannot point key fetches at a local socket.
        *server.discovery.lock().unwrap() = Some(json!({"jwks_uri": "unix:/run/x.sock:/jwks"}));
        assert!(matches!(
            keys.refresh().await,
            Err(JwksError::Discovery { .. })
        ));
        *server.discovery.lock().unwrap() = Some(json!({"issuer": base}));
        assert!(matches!(
            keys.refresh().await,
            Err(JwksError::Discovery { .. })
        ));
        assert!(keys.is_ready());
    }

    #[tokio::test]
    async fn timeouts_bad_urls_and_refused_connections() {
        let server = TestServer::new(ec_doc(&["k1"]));
        server.set(|r| r.delay = Duration::from_millis(1500));
        let base = serve_tcp(&server);
        let policy = RefreshPolicy {
            fetch_timeout: Duration::from_millis(200),
            ..RefreshPolicy::default()
        };
        let keys = IssuerKeys::new(
            "t".into(),
            KeySource::Remote(format!("{base}/jwks")),
            policy.clone(),
        );
        assert!(matches!(
            keys.refresh().await,
            Err(JwksError::Timeout { .. })
        ));

        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let keys = IssuerKeys::new(
            "t".into(),
            KeySource::Remote(format!("http://{addr}/jwks")),
            policy.clone(),
        );
        assert!(matches!(
            keys.refresh().await,
            Err(JwksError::Connect { .. })
        ));
        assert_eq!(keys.stats().fetches_failed, 1);

        let keys = IssuerKeys::new(
            "t".into(),
            KeySource::Remote("ftp://example/jwks".into()),
            policy,
        );
        assert!(matches!(
            keys.refresh().await,
            Err(JwksError::BadUrl { .. })
        ));
        assert!(!keys.is_ready());
    }

    #[tokio::test]
    async fn static_keys_are_ready_and_never_fetched() {
        let key = hmac_key(&[5u8; 32], Some("h")).unwrap();
        let keys = IssuerKeys::new(
            "s".into(),
            KeySource::Static(vec![key]),
            RefreshPolicy::default(),
        );
        assert_eq!(keys.name(), "s");
        assert!(keys.is_ready());
        assert!(!keys.refresh_due());
        assert_eq!(keys.next_refresh_in(), None);
        assert_eq!(keys.refresh().await, Ok(false));
        let set = keys.refetch_for_unknown_kid("other").await.unwrap();
        assert!(matches!(
            set.lookup(Some("h"), Algorithm::HS256),
            KeyLookup::Found(_)
        ));
        let stats = keys.stats();
        assert_eq!(
            (stats.fetches_ok, stats.keys, stats.seconds_since_success),
            (0, 1, None)
        );

        let empty = IssuerKeys::new(
            "e".into(),
            KeySource::Static(Vec::new()),
            RefreshPolicy::default(),
        );
        assert!(!empty.is_ready());
    }
}
