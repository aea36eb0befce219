//! JWT toolkit for tests of token verification: test keys of every supported kind and token
//! minting that encodes exactly the JSON a test hands it (so hostile headers are easy to
//! build). The JWKS server that publishes such keys is [`crate::jwks::JwksServer`].
//!
//! Everything here is synchronous, so plain `#[test]` functions can use it.
//!
//! ```text
//! let key = TestKey::rsa(2048).with_kid("k1");
//! let jwks = JwksServer::serving(&[&key]);
//! let token = sign(&key, "RS256", header(key.kid(), "RS256"), claims(&jwks.issuer_url(), "alice", "api", 300));
//! ```

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

// ---------------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------------

/// Base64url without padding (the JOSE encoding).
pub fn b64url(data: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(data)
}

/// Decodes base64url without padding; panics on bad input (test helper).
pub fn b64url_decode(text: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD
        .decode(text)
        .unwrap_or_else(|e| panic!("bad base64url {text:?}: {e}"))
}

pub use portcullis_common::time::unix_now as now;

/// `n` random bytes from the system RNG.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    aws_lc_rs::rand::fill(&mut buf).expect("system RNG");
    buf
}

/// A random base64url identifier made from `n` random bytes.
pub fn random_id(n: usize) -> String {
    b64url(random_bytes(n))
}

/// PEM armour with 64-character lines and a trailing newline.
pub fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Minimal DER reading and writing, enough for RSA key formats.
mod der {
    pub const SEQUENCE: u8 = 0x30;
    pub const INTEGER: u8 = 0x02;
    pub const BIT_STRING: u8 = 0x03;
    pub const OCTET_STRING: u8 = 0x04;

    /// AlgorithmIdentifier for rsaEncryption (1.2.840.113549.1.1.1) with NULL parameters.
    pub const RSA_ALGORITHM_ID: &[u8] = &[
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];

    pub fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let len = content.len();
        if len < 0x80 {
            out.push(len as u8);
        } else {
            let bytes: Vec<u8> = len
                .to_be_bytes()
                .into_iter()
                .skip_while(|b| *b == 0)
                .collect();
            out.push(0x80 | bytes.len() as u8);
            out.extend_from_slice(&bytes);
        }
        out.extend_from_slice(content);
        out
    }

    /// DER INTEGER holding the unsigned big-endian value `be`.
    pub fn uint(be: &[u8]) -> Vec<u8> {
        let trimmed = strip_zeros(be);
        let mut content = Vec::with_capacity(trimmed.len() + 1);
        if trimmed.is_empty() || trimmed[0] & 0x80 != 0 {
            content.push(0);
        }
        content.extend_from_slice(trimmed);
        tlv(INTEGER, &content)
    }

    pub fn strip_zeros(be: &[u8]) -> &[u8] {
        let first = be.iter().position(|b| *b != 0).unwrap_or(be.len());
        &be[first..]
    }

    /// Splits one TLV off the front of `input`: (tag, content, rest).
    pub fn read(input: &[u8]) -> (u8, &[u8], &[u8]) {
        assert!(input.len() >= 2, "truncated DER");
        let tag = input[0];
        let (len, header) = if input[1] < 0x80 {
            (input[1] as usize, 2)
        } else {
            let n = (input[1] & 0x7f) as usize;
            assert!(n > 0 && n <= 8 && input.len() >= 2 + n, "bad DER length");
            let len = input[2..2 + n]
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | *b as usize);
            (len, 2 + n)
        };
        assert!(input.len() >= header + len, "truncated DER");
        (tag, &input[header..header + len], &input[header + len..])
    }

    pub fn expect(input: &[u8], want: u8) -> (&[u8], &[u8]) {
        let (tag, content, rest) = read(input);
        assert_eq!(tag, want, "unexpected DER tag");
        (content, rest)
    }
}

/// RSA keys below 2048 bits: aws-lc-rs refuses to generate or sign with them, so these go to
/// the aws-lc C library directly (the same one aws-lc-rs wraps).
mod small_rsa {
    use aws_lc_sys as ffi;
    use sha2::{Digest as _, Sha256, Sha384, Sha512};
    use std::ptr;

    struct Rsa(*mut ffi::RSA);
    impl Drop for Rsa {
        fn drop(&mut self) {
            // SAFETY: the pointer came from an aws-lc constructor and is freed exactly once.
            unsafe { ffi::RSA_free(self.0) }
        }
    }

    struct Bn(*mut ffi::BIGNUM);
    impl Drop for Bn {
        fn drop(&mut self) {
            // SAFETY: as above.
            unsafe { ffi::BN_free(self.0) }
        }
    }

    /// A fresh RSA key of `bits` bits (e = 65537) as a PKCS#1 RSAPrivateKey DER.
    pub fn generate(bits: usize) -> Vec<u8> {
        // SAFETY: every pointer is checked for null before use, owned by a guard that frees it,
        // and the output buffer of RSA_private_key_to_bytes is copied then released with
        // OPENSSL_free as its documentation requires.
        unsafe {
            let e = Bn(ffi::BN_new());
            assert!(!e.0.is_null(), "BN_new failed");
            assert_eq!(ffi::BN_set_word(e.0, 65537), 1, "BN_set_word failed");
            let rsa = Rsa(ffi::RSA_new());
            assert!(!rsa.0.is_null(), "RSA_new failed");
            assert_eq!(
                ffi::RSA_generate_key_ex(rsa.0, bits as _, e.0, ptr::null_mut()),
                1,
                "RSA_generate_key_ex({bits}) failed"
            );
            let mut out: *mut u8 = ptr::null_mut();
            let mut len: usize = 0;
            assert_eq!(
                ffi::RSA_private_key_to_bytes(&mut out, &mut len, rsa.0),
                1,
                "RSA_private_key_to_bytes failed"
            );
            let der = std::slice::from_raw_parts(out, len).to_vec();
            ffi::OPENSSL_free(out.cast());
            der
        }
    }

    /// Signs `msg` with RS*/PS* (`alg`) using a PKCS#1 RSAPrivateKey DER of any size.
    pub fn sign(pkcs1: &[u8], alg: &str, msg: &[u8]) -> Vec<u8> {
        let (pss, bits) = match alg {
            "RS256" => (false, 256),
            "RS384" => (false, 384),
            "RS512" => (false, 512),
            "PS256" => (true, 256),
            "PS384" => (true, 384),
            "PS512" => (true, 512),
            other => panic!("{other} is not an RSA signature algorithm"),
        };
        let digest: Vec<u8> = match bits {
            256 => Sha256::digest(msg).to_vec(),
            384 => Sha384::digest(msg).to_vec(),
            _ => Sha512::digest(msg).to_vec(),
        };
        // SAFETY: the RSA object is checked for null and freed by its guard; the output buffer
        // is RSA_size bytes long, which is the most either signing function writes.
        unsafe {
            let (nid, md) = match bits {
                256 => (ffi::NID_sha256, ffi::EVP_sha256()),
                384 => (ffi::NID_sha384, ffi::EVP_sha384()),
                _ => (ffi::NID_sha512, ffi::EVP_sha512()),
            };
            let rsa = Rsa(ffi::RSA_private_key_from_bytes(pkcs1.as_ptr(), pkcs1.len()));
            assert!(!rsa.0.is_null(), "RSA_private_key_from_bytes failed");
            let size = ffi::RSA_size(rsa.0) as usize;
            let mut sig = vec![0u8; size];
            let written = if pss {
                let mut out_len: usize = 0;
                let ok = ffi::RSA_sign_pss_mgf1(
                    rsa.0,
                    &mut out_len,
                    sig.as_mut_ptr(),
                    size,
                    digest.as_ptr(),
                    digest.len(),
                    md,
                    md,
                    digest.len() as _,
                );
                // PSS with a hash-sized salt needs 2 * hash length + 2 bytes of encoded message,
                // so e.g. PS512 does not fit a 1024-bit modulus.
                assert_eq!(
                    ok,
                    1,
                    "RSA_sign_pss_mgf1 failed: {alg} may not fit a {}-bit modulus",
                    size * 8
                );
                out_len
            } else {
                let mut out_len: std::os::raw::c_uint = 0;
                let ok = ffi::RSA_sign(
                    nid as _,
                    digest.as_ptr(),
                    digest.len() as _,
                    sig.as_mut_ptr(),
                    &mut out_len,
                    rsa.0,
                );
                assert_eq!(ok, 1, "RSA_sign failed");
                out_len as usize
            };
            sig.truncate(written);
            sig
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------------------------

/// What a [`TestKey`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    /// RSA with a modulus of `bits` bits (e = 65537).
    Rsa { bits: usize },
    /// ECDSA on P-256 (ES256).
    EcP256,
    /// ECDSA on P-384 (ES384).
    EcP384,
    /// Ed25519 (EdDSA).
    Ed25519,
    /// A shared HMAC secret (HS256/384/512).
    Hmac,
}

#[derive(Clone)]
enum Material {
    Rsa {
        bits: usize,
        /// PKCS#1 RSAPrivateKey DER.
        pkcs1: Vec<u8>,
        /// Modulus and public exponent, big-endian without leading zeros.
        n: Vec<u8>,
        e: Vec<u8>,
    },
    Ec {
        p384: bool,
        pkcs8: Vec<u8>,
        spki: Vec<u8>,
        x: Vec<u8>,
        y: Vec<u8>,
    },
    Ed25519 {
        pkcs8: Vec<u8>,
        spki: Vec<u8>,
        x: Vec<u8>,
    },
    Hmac {
        secret: Vec<u8>,
    },
}

/// A key pair (or HMAC secret) with the JWK metadata it is published under.
///
/// `kid` is random unless set with [`TestKey::with_kid`]; the JWK `use` is `"sig"` and no `alg`
/// member is published unless set with [`TestKey::with_alg`].
#[derive(Clone)]
pub struct TestKey {
    kid: Option<String>,
    alg: Option<String>,
    key_use: Option<String>,
    material: Material,
}

impl std::fmt::Debug for TestKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestKey")
            .field("kind", &self.kind())
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish()
    }
}

impl TestKey {
    fn new(material: Material) -> TestKey {
        TestKey {
            kid: Some(random_id(9)),
            alg: None,
            key_use: Some("sig".into()),
            material,
        }
    }

    /// A fresh RSA key of `bits` bits. 2048/3072/4096/8192 come from aws-lc-rs; other sizes
    /// (1024 for "weak key refused" tests) from the aws-lc C library directly. A 1024-bit key
    /// signs RS256/384/512 and PS256/384, not PS512 (its salt does not fit).
    pub fn rsa(bits: usize) -> TestKey {
        use aws_lc_rs::encoding::AsDer as _;
        use aws_lc_rs::rsa::{KeyPair, KeySize};
        let size = match bits {
            2048 => Some(KeySize::Rsa2048),
            3072 => Some(KeySize::Rsa3072),
            4096 => Some(KeySize::Rsa4096),
            8192 => Some(KeySize::Rsa8192),
            _ => None,
        };
        let pkcs1 = match size {
            Some(size) => {
                let pair = KeyPair::generate(size).expect("RSA key generation");
                let pkcs8 = pair.as_der().expect("RSA PKCS#8 encoding");
                // PrivateKeyInfo ::= SEQUENCE { version, AlgorithmIdentifier, OCTET STRING }
                let (info, _) = der::expect(pkcs8.as_ref(), der::SEQUENCE);
                let (_, _, rest) = der::read(info); // version
                let (_, _, rest) = der::read(rest); // algorithm
                let (pkcs1, _) = der::expect(rest, der::OCTET_STRING);
                pkcs1.to_vec()
            }
            None => small_rsa::generate(bits),
        };
        // RSAPrivateKey ::= SEQUENCE { version, n, e, d, ... }
        let (seq, _) = der::expect(&pkcs1, der::SEQUENCE);
        let (_, rest) = der::expect(seq, der::INTEGER);
        let (n, rest) = der::expect(rest, der::INTEGER);
        let (e, _) = der::expect(rest, der::INTEGER);
        let n = der::strip_zeros(n).to_vec();
        let e = der::strip_zeros(e).to_vec();
        assert_eq!(n.len() * 8, bits, "RSA modulus has the requested size");
        TestKey::new(Material::Rsa { bits, pkcs1, n, e })
    }

    /// A fresh ECDSA P-256 key (ES256).
    pub fn ec_p256() -> TestKey {
        TestKey::ec(false)
    }

    /// A fresh ECDSA P-384 key (ES384).
    pub fn ec_p384() -> TestKey {
        TestKey::ec(true)
    }

    fn ec(p384: bool) -> TestKey {
        use aws_lc_rs::encoding::{AsDer as _, PublicKeyX509Der};
        use aws_lc_rs::signature::{
            EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING,
            ECDSA_P384_SHA384_FIXED_SIGNING,
        };
        let alg = if p384 {
            &ECDSA_P384_SHA384_FIXED_SIGNING
        } else {
            &ECDSA_P256_SHA256_FIXED_SIGNING
        };
        let pair = EcdsaKeyPair::generate(alg).expect("EC key generation");
        let pkcs8 = pair.to_pkcs8v1().expect("EC PKCS#8").as_ref().to_vec();
        let public = pair.public_key();
        let spki: PublicKeyX509Der<'static> = public.as_der().expect("EC SPKI");
        let point = public.as_ref();
        let coord = if p384 { 48 } else { 32 };
        assert_eq!(point.len(), 1 + 2 * coord, "uncompressed EC point");
        assert_eq!(point[0], 4, "uncompressed EC point");
        TestKey::new(Material::Ec {
            p384,
            pkcs8,
            spki: spki.as_ref().to_vec(),
            x: point[1..1 + coord].to_vec(),
            y: point[1 + coord..].to_vec(),
        })
    }

    /// A fresh Ed25519 key (EdDSA).
    pub fn ed25519() -> TestKey {
        use aws_lc_rs::encoding::{AsDer as _, PublicKeyX509Der};
        use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair as _};
        let pair = Ed25519KeyPair::generate().expect("Ed25519 key generation");
        let pkcs8 = pair.to_pkcs8v1().expect("Ed25519 PKCS#8").as_ref().to_vec();
        let public = pair.public_key();
        let spki: PublicKeyX509Der<'static> = public.as_der().expect("Ed25519 SPKI");
        TestKey::new(Material::Ed25519 {
            pkcs8,
            spki: spki.as_ref().to_vec(),
            x: public.as_ref().to_vec(),
        })
    }

    /// An HMAC secret (published as a `kty: oct` JWK).
    pub fn hmac(secret: impl AsRef<[u8]>) -> TestKey {
        TestKey::new(Material::Hmac {
            secret: secret.as_ref().to_vec(),
        })
    }

    /// Sets the key id.
    pub fn with_kid(mut self, kid: impl Into<String>) -> TestKey {
        self.kid = Some(kid.into());
        self
    }

    /// Removes the key id: the JWK has no `kid` member and [`TestKey::kid`] returns `""`.
    pub fn without_kid(mut self) -> TestKey {
        self.kid = None;
        self
    }

    /// Publishes an `alg` member in the JWK.
    pub fn with_alg(mut self, alg: impl Into<String>) -> TestKey {
        self.alg = Some(alg.into());
        self
    }

    /// Sets the JWK `use` member (`None` leaves it out; the default is `"sig"`).
    pub fn with_use(mut self, key_use: Option<&str>) -> TestKey {
        self.key_use = key_use.map(str::to_string);
        self
    }

    /// The key id, or `""` after [`TestKey::without_kid`].
    pub fn kid(&self) -> &str {
        self.kid.as_deref().unwrap_or("")
    }

    /// The JWK `alg` member, if one is published.
    pub fn alg(&self) -> Option<&str> {
        self.alg.as_deref()
    }

    pub fn kind(&self) -> KeyKind {
        match &self.material {
            Material::Rsa { bits, .. } => KeyKind::Rsa { bits: *bits },
            Material::Ec { p384: false, .. } => KeyKind::EcP256,
            Material::Ec { p384: true, .. } => KeyKind::EcP384,
            Material::Ed25519 { .. } => KeyKind::Ed25519,
            Material::Hmac { .. } => KeyKind::Hmac,
        }
    }

    /// The public JWK (RFC 7517/7518/8037): `kty`, `kid`, `use`, `alg` (when set) and
    /// `n`/`e`, `crv`/`x`/`y` or `crv`/`x`; for HMAC `kty: oct` with the secret in `k`.
    pub fn public_jwk(&self) -> Value {
        let mut jwk = match &self.material {
            Material::Rsa { n, e, .. } => json!({"kty": "RSA", "n": b64url(n), "e": b64url(e)}),
            Material::Ec { p384, x, y, .. } => json!({
                "kty": "EC",
                "crv": if *p384 { "P-384" } else { "P-256" },
                "x": b64url(x),
                "y": b64url(y),
            }),
            Material::Ed25519 { x, .. } => json!({"kty": "OKP", "crv": "Ed25519", "x": b64url(x)}),
            Material::Hmac { secret } => json!({"kty": "oct", "k": b64url(secret)}),
        };
        let obj = jwk.as_object_mut().expect("object");
        if let Some(kid) = &self.kid {
            obj.insert("kid".into(), kid.clone().into());
        }
        if let Some(key_use) = &self.key_use {
            obj.insert("use".into(), key_use.clone().into());
        }
        if let Some(alg) = &self.alg {
            obj.insert("alg".into(), alg.clone().into());
        }
        jwk
    }

    /// RFC 7638 JWK thumbprint (SHA-256, base64url) of the public key.
    pub fn thumbprint(&self) -> String {
        jwk_thumbprint(&self.public_jwk())
    }

    /// SubjectPublicKeyInfo DER of the public key. Panics for HMAC keys.
    pub fn public_der(&self) -> Vec<u8> {
        match &self.material {
            Material::Rsa { .. } => {
                let mut bits = vec![0u8]; // no unused bits
                bits.extend(self.rsa_public_der_pkcs1());
                let mut content = der::RSA_ALGORITHM_ID.to_vec();
                content.extend(der::tlv(der::BIT_STRING, &bits));
                der::tlv(der::SEQUENCE, &content)
            }
            Material::Ec { spki, .. } | Material::Ed25519 { spki, .. } => spki.clone(),
            Material::Hmac { .. } => panic!("an HMAC key has no public key"),
        }
    }

    /// SubjectPublicKeyInfo PEM (`-----BEGIN PUBLIC KEY-----`). Panics for HMAC keys.
    pub fn public_pem(&self) -> String {
        pem("PUBLIC KEY", &self.public_der())
    }

    /// PKCS#8 PrivateKeyInfo DER of the private key. Panics for HMAC keys.
    pub fn private_pkcs8_der(&self) -> Vec<u8> {
        match &self.material {
            Material::Rsa { pkcs1, .. } => {
                let mut content = der::uint(&[0]);
                content.extend_from_slice(der::RSA_ALGORITHM_ID);
                content.extend(der::tlv(der::OCTET_STRING, pkcs1));
                der::tlv(der::SEQUENCE, &content)
            }
            Material::Ec { pkcs8, .. } | Material::Ed25519 { pkcs8, .. } => pkcs8.clone(),
            Material::Hmac { .. } => panic!("an HMAC key has no private key document"),
        }
    }

    /// PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`). Panics for HMAC keys.
    pub fn private_pem(&self) -> String {
        pem("PRIVATE KEY", &self.private_pkcs8_der())
    }

    fn rsa_parts(&self) -> (&[u8], &[u8], &[u8]) {
        match &self.material {
            Material::Rsa { pkcs1, n, e, .. } => (pkcs1, n, e),
            _ => panic!("{:?} is not an RSA key", self.kind()),
        }
    }

    /// RSA public key as SubjectPublicKeyInfo DER (same as [`TestKey::public_der`]).
    pub fn rsa_public_der(&self) -> Vec<u8> {
        self.rsa_parts();
        self.public_der()
    }

    /// RSA public key as SubjectPublicKeyInfo PEM, `-----BEGIN PUBLIC KEY-----`
    /// (same as [`TestKey::public_pem`]).
    pub fn rsa_public_pem(&self) -> String {
        self.rsa_parts();
        self.public_pem()
    }

    /// RSA public key as PKCS#1 RSAPublicKey DER (`SEQUENCE { n, e }`).
    pub fn rsa_public_der_pkcs1(&self) -> Vec<u8> {
        let (_, n, e) = self.rsa_parts();
        let mut content = der::uint(n);
        content.extend(der::uint(e));
        der::tlv(der::SEQUENCE, &content)
    }

    /// RSA public key as PKCS#1 PEM, `-----BEGIN RSA PUBLIC KEY-----`.
    pub fn rsa_public_pem_pkcs1(&self) -> String {
        pem("RSA PUBLIC KEY", &self.rsa_public_der_pkcs1())
    }

    /// RSA private key as PKCS#1 RSAPrivateKey DER.
    pub fn rsa_private_der_pkcs1(&self) -> Vec<u8> {
        self.rsa_parts().0.to_vec()
    }

    /// The raw RSA modulus `n`, big-endian without leading zeros.
    pub fn rsa_modulus(&self) -> Vec<u8> {
        self.rsa_parts().1.to_vec()
    }

    /// The raw RSA public exponent `e`, big-endian without leading zeros.
    pub fn rsa_exponent(&self) -> Vec<u8> {
        self.rsa_parts().2.to_vec()
    }

    /// The HMAC secret. Panics for other keys.
    pub fn hmac_secret(&self) -> &[u8] {
        match &self.material {
            Material::Hmac { secret } => secret,
            _ => panic!("{:?} is not an HMAC key", self.kind()),
        }
    }
}

/// `{"keys": [...]}` with the public JWKs of `keys`.
pub fn jwks(keys: &[&TestKey]) -> Value {
    json!({"keys": keys.iter().map(|k| k.public_jwk()).collect::<Vec<_>>()})
}

/// RFC 7638 thumbprint (SHA-256, base64url) of a JWK given as JSON: the required members for
/// its `kty`, in lexicographic order, without whitespace.
pub fn jwk_thumbprint(jwk: &Value) -> String {
    let kty = jwk["kty"].as_str().expect("JWK has a kty");
    let members: &[&str] = match kty {
        "RSA" => &["e", "kty", "n"],
        "EC" => &["crv", "kty", "x", "y"],
        "OKP" => &["crv", "kty", "x"],
        "oct" => &["k", "kty"],
        other => panic!("no thumbprint members known for kty {other}"),
    };
    let parts: Vec<String> = members
        .iter()
        .map(|m| {
            let v = jwk[*m].as_str().unwrap_or_else(|| panic!("JWK lacks {m}"));
            format!("{}:{}", Value::from(*m), Value::from(v))
        })
        .collect();
    b64url(Sha256::digest(
        format!("{{{}}}", parts.join(",")).as_bytes(),
    ))
}

// ---------------------------------------------------------------------------------------------
// Tokens
// ---------------------------------------------------------------------------------------------

/// A standard header for an access token: `alg`, `kid` and `typ: at+jwt`.
pub fn header(kid: &str, alg: &str) -> Value {
    json!({"alg": alg, "kid": kid, "typ": "at+jwt"})
}

/// A standard access-token claim set valid from now for `ttl_secs` (negative: already expired):
/// iss, sub, aud, exp, iat, nbf, jti (random), sid (random), scope "read write", roles ["user"],
/// amr ["pwd"], auth_time.
pub fn claims(iss: &str, sub: &str, aud: &str, ttl_secs: i64) -> Value {
    let now = now();
    json!({
        "iss": iss,
        "sub": sub,
        "aud": aud,
        "exp": now + ttl_secs,
        "iat": now,
        "nbf": now,
        "jti": random_id(12),
        "sid": random_id(12),
        "scope": "read write",
        "roles": ["user"],
        "amr": ["pwd"],
        "auth_time": now,
    })
}

fn json_text(v: &Value) -> String {
    serde_json::to_string(v).expect("JSON serialises")
}

/// A compact JWS over exactly `header` and `claims` (as serialised by serde_json), signed with
/// `key` using `alg`. The header is not touched: its `alg`/`kid`/`typ`/`crit`/`jku`... are
/// whatever the test put there, so the header may lie about the signing algorithm.
/// `alg` `"none"` yields an empty signature. Panics when `key` cannot sign with `alg`
/// (use [`hs_sign_with_bytes`] to HMAC-sign with arbitrary bytes).
pub fn sign(key: &TestKey, alg: &str, header: Value, claims: Value) -> String {
    sign_raw(key, alg, &json_text(&header), &json_text(&claims))
}

/// Like [`sign`], but the header and payload are the given texts byte for byte (duplicate
/// members, non-objects, odd whitespace, invalid JSON...).
pub fn sign_raw(key: &TestKey, alg: &str, header_json: &str, claims_json: &str) -> String {
    let input = format!("{}.{}", b64url(header_json), b64url(claims_json));
    let sig = signature(key, alg, input.as_bytes());
    format!("{input}.{}", b64url(sig))
}

/// HMAC-signs (`alg` HS256/384/512) with arbitrary secret bytes — e.g. an RSA public key's PEM,
/// DER or modulus, for the algorithm-confusion attack.
pub fn hs_sign_with_bytes(secret: &[u8], alg: &str, header: Value, claims: Value) -> String {
    sign(&TestKey::hmac(secret), alg, header, claims)
}

/// An unsecured JWS: `header` and `claims` as given and an empty signature (`h.c.`). If the
/// header has no `alg` member, `"alg": "none"` is added; otherwise it is left as given, so
/// tests can try `"None"`, `"NONE"`...
pub fn unsigned(header: Value, claims: Value) -> String {
    let mut header = header;
    if let Some(obj) = header.as_object_mut() {
        obj.entry("alg").or_insert_with(|| "none".into());
    }
    format!(
        "{}.{}.",
        b64url(json_text(&header)),
        b64url(json_text(&claims))
    )
}

/// The raw signature of `message` (normally `b64(header).b64(claims)`) with `key` and `alg`.
/// RSA keys below 2048 bits are signed through aws-lc directly (jsonwebtoken refuses them);
/// everything else goes through `jsonwebtoken::crypto::sign`.
pub fn signature(key: &TestKey, alg: &str, message: &[u8]) -> Vec<u8> {
    if alg == "none" {
        return Vec::new();
    }
    let algorithm: Algorithm = alg
        .parse()
        .unwrap_or_else(|_| panic!("unknown signing algorithm {alg:?}"));
    let encoding_key = match (&key.material, alg) {
        (Material::Hmac { secret }, "HS256" | "HS384" | "HS512") => {
            EncodingKey::from_secret(secret)
        }
        (
            Material::Rsa { bits, pkcs1, .. },
            "RS256" | "RS384" | "RS512" | "PS256" | "PS384" | "PS512",
        ) => {
            if *bits < 2048 {
                return small_rsa::sign(pkcs1, alg, message);
            }
            EncodingKey::from_rsa_der(pkcs1)
        }
        (
            Material::Ec {
                p384: false, pkcs8, ..
            },
            "ES256",
        )
        | (
            Material::Ec {
                p384: true, pkcs8, ..
            },
            "ES384",
        ) => EncodingKey::from_ec_der(pkcs8),
        (Material::Ed25519 { pkcs8, .. }, "EdDSA") => EncodingKey::from_ed_der(pkcs8),
        _ => panic!("a {:?} key cannot sign {alg}", key.kind()),
    };
    let sig = jsonwebtoken::crypto::sign(message, &encoding_key, algorithm)
        .unwrap_or_else(|e| panic!("signing {alg} with {:?}: {e}", key.kind()));
    b64url_decode(&sig)
}

/// The token with one signature bit flipped (still valid base64url, same length).
pub fn corrupt_signature(token: &str) -> String {
    let (input, sig) = token.rsplit_once('.').expect("a compact JWS");
    let mut bytes = b64url_decode(sig);
    assert!(!bytes.is_empty(), "token has no signature to corrupt");
    bytes[0] ^= 0x01;
    format!("{input}.{}", b64url(bytes))
}

/// Decodes one segment (0 header, 1 payload) of a compact JWS as JSON.
pub fn decode_segment(token: &str, index: usize) -> Value {
    let seg = token.split('.').nth(index).expect("segment exists");
    serde_json::from_slice(&b64url_decode(seg)).expect("segment is JSON")
}

// ---------------------------------------------------------------------------------------------
// Unit tests: the toolkit itself is known-good
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::jwk::{Jwk, ThumbprintHash};
    use jsonwebtoken::{decode, DecodingKey, Validation};
    use std::sync::OnceLock;

    const ISS: &str = "https://issuer.test";
    const AUD: &str = "api";

    fn rsa2048() -> &'static TestKey {
        static KEY: OnceLock<TestKey> = OnceLock::new();
        KEY.get_or_init(|| TestKey::rsa(2048).with_kid("rsa"))
    }

    fn rsa1024() -> &'static TestKey {
        static KEY: OnceLock<TestKey> = OnceLock::new();
        KEY.get_or_init(|| TestKey::rsa(1024).with_kid("weak"))
    }

    fn jwk_of(key: &TestKey) -> Jwk {
        serde_json::from_value(key.public_jwk()).expect("jsonwebtoken parses the JWK")
    }

    fn validation(alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.set_audience(&[AUD]);
        v.set_issuer(&[ISS]);
        v.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        v.validate_nbf = true;
        v
    }

    /// Signs with `alg` and checks jsonwebtoken accepts the token against the published JWK.
    fn round_trip(key: &TestKey, alg: &str) {
        let hdr = header(key.kid(), alg);
        let cl = claims(ISS, "alice", AUD, 300);
        let token = sign(key, alg, hdr.clone(), cl.clone());
        assert_eq!(decode_segment(&token, 0), hdr);
        let dk = DecodingKey::from_jwk(&jwk_of(key)).expect("decoding key from JWK");
        let data = decode::<Value>(&token, &dk, &validation(alg.parse().unwrap()))
            .unwrap_or_else(|e| panic!("{alg} token does not verify: {e}"));
        assert_eq!(data.claims, cl);
        assert_eq!(data.header.kid.as_deref(), Some(key.kid()));
        assert_eq!(data.header.typ.as_deref(), Some("at+jwt"));

        // A flipped signature bit is refused: the check above is not vacuous.
        let bad = corrupt_signature(&token);
        assert!(decode::<Value>(&bad, &dk, &validation(alg.parse().unwrap())).is_err());
    }

    #[test]
    fn rsa_algorithms_verify_against_the_jwk() {
        for alg in ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"] {
            round_trip(rsa2048(), alg);
        }
        let jwk = rsa2048().public_jwk();
        assert_eq!(jwk["kty"], "RSA");
        assert_eq!(jwk["use"], "sig");
        assert_eq!(jwk["e"], "AQAB");
        assert!(jwk.get("alg").is_none());
        assert_eq!(rsa2048().rsa_modulus().len(), 256);
    }

    #[test]
    fn ec_and_ed_algorithms_verify_against_the_jwk() {
        let p256 = TestKey::ec_p256().with_alg("ES256");
        round_trip(&p256, "ES256");
        let jwk = p256.public_jwk();
        assert_eq!(
            (jwk["kty"].as_str(), jwk["crv"].as_str()),
            (Some("EC"), Some("P-256"))
        );
        assert_eq!(jwk["alg"], "ES256");
        assert_eq!(b64url_decode(jwk["x"].as_str().unwrap()).len(), 32);
        assert_eq!(b64url_decode(jwk["y"].as_str().unwrap()).len(), 32);

        let p384 = TestKey::ec_p384();
        round_trip(&p384, "ES384");
        let jwk = p384.public_jwk();
        assert_eq!(jwk["crv"], "P-384");
        assert_eq!(b64url_decode(jwk["y"].as_str().unwrap()).len(), 48);

        let ed = TestKey::ed25519();
        round_trip(&ed, "EdDSA");
        let jwk = ed.public_jwk();
        assert_eq!(
            (jwk["kty"].as_str(), jwk["crv"].as_str()),
            (Some("OKP"), Some("Ed25519"))
        );
        assert!(jwk.get("y").is_none());
    }

    #[test]
    fn hmac_algorithms_verify_against_the_jwk() {
        let key =
            TestKey::hmac(b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef");
        for alg in ["HS256", "HS384", "HS512"] {
            round_trip(&key, alg);
        }
        assert_eq!(key.public_jwk()["kty"], "oct");
        assert_eq!(
            b64url_decode(key.public_jwk()["k"].as_str().unwrap()),
            key.hmac_secret()
        );
    }

    #[test]
    fn public_key_documents_are_consistent() {
        let key = rsa2048();
        // The SPKI PEM is a working RSA public key for jsonwebtoken, and matches the JWK.
        let cl = claims(ISS, "alice", AUD, 300);
        let token = sign(key, "RS256", header(key.kid(), "RS256"), cl);
        let from_pem = DecodingKey::from_rsa_pem(key.public_pem().as_bytes()).unwrap();
        assert!(decode::<Value>(&token, &from_pem, &validation(Algorithm::RS256)).is_ok());
        let from_pkcs1_pem =
            DecodingKey::from_rsa_pem(key.rsa_public_pem_pkcs1().as_bytes()).unwrap();
        assert!(decode::<Value>(&token, &from_pkcs1_pem, &validation(Algorithm::RS256)).is_ok());
        assert!(key.public_pem().starts_with("-----BEGIN PUBLIC KEY-----\n"));
        assert!(key
            .rsa_public_pem_pkcs1()
            .starts_with("-----BEGIN RSA PUBLIC KEY-----\n"));
        assert_eq!(key.rsa_public_pem(), key.public_pem());
        assert_eq!(key.rsa_public_der(), key.public_der());

        // The PKCS#8 private key round-trips through aws-lc-rs.
        aws_lc_rs::rsa::KeyPair::from_pkcs8(&key.private_pkcs8_der()).expect("RSA PKCS#8");
        let enc = EncodingKey::from_rsa_pem(key.private_pem().as_bytes()).expect("private PEM");
        let t2 = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::RS256),
            &claims(ISS, "bob", AUD, 60),
            &enc,
        )
        .unwrap();
        assert!(decode::<Value>(&t2, &from_pem, &validation(Algorithm::RS256)).is_ok());

        for k in [TestKey::ec_p256(), TestKey::ec_p384(), TestKey::ed25519()] {
            assert!(k.public_pem().starts_with("-----BEGIN PUBLIC KEY-----\n"));
            assert!(k.private_pem().starts_with("-----BEGIN PRIVATE KEY-----\n"));
        }
        let ec = TestKey::ec_p256();
        let token = sign(
            &ec,
            "ES256",
            header(ec.kid(), "ES256"),
            claims(ISS, "a", AUD, 60),
        );
        let dk = DecodingKey::from_ec_pem(ec.public_pem().as_bytes()).unwrap();
        assert!(decode::<Value>(&token, &dk, &validation(Algorithm::ES256)).is_ok());
    }

    #[test]
    fn weak_rsa_key_signs_but_jsonwebtoken_refuses_it() {
        let key = rsa1024();
        assert_eq!(key.kind(), KeyKind::Rsa { bits: 1024 });
        assert_eq!(key.rsa_modulus().len(), 128);
        let token = sign(
            key,
            "RS256",
            header(key.kid(), "RS256"),
            claims(ISS, "a", AUD, 60),
        );
        let (input, sig) = token.rsplit_once('.').unwrap();
        // The signature is genuine: aws-lc-rs's legacy verifier (1024-bit minimum) accepts it.
        let public = aws_lc_rs::signature::RsaPublicKeyComponents {
            n: key.rsa_modulus(),
            e: key.rsa_exponent(),
        };
        public
            .verify(
                &aws_lc_rs::signature::RSA_PKCS1_1024_8192_SHA256_FOR_LEGACY_USE_ONLY,
                input.as_bytes(),
                &b64url_decode(sig),
            )
            .expect("1024-bit RS256 signature verifies");
        // ...and the normal verifier used by jsonwebtoken refuses the small key.
        let dk = DecodingKey::from_jwk(&jwk_of(key)).unwrap();
        assert!(decode::<Value>(&token, &dk, &validation(Algorithm::RS256)).is_err());
        // PSS with a small key produces a modulus-sized signature (PS512 cannot fit: with a
        // 64-byte salt it needs more than 1024 bits).
        for alg in ["PS256", "PS384", "RS384", "RS512"] {
            assert_eq!(signature(key, alg, b"x").len(), 128, "{alg}");
        }
        // The PKCS#1 private DER is usable by the PEM parser as well.
        assert!(key.private_pem().contains("PRIVATE KEY"));
    }

    #[test]
    fn key_confusion_and_unsigned_tokens_are_well_formed() {
        let key = rsa2048();
        let pem = key.public_pem();
        let token = hs_sign_with_bytes(
            pem.as_bytes(),
            "HS256",
            header(key.kid(), "HS256"),
            claims(ISS, "mallory", AUD, 60),
        );
        let dk = DecodingKey::from_secret(pem.as_bytes());
        assert!(decode::<Value>(&token, &dk, &validation(Algorithm::HS256)).is_ok());

        let none = unsigned(json!({"typ": "JWT"}), claims(ISS, "m", AUD, 60));
        assert!(none.ends_with('.'));
        assert_eq!(decode_segment(&none, 0)["alg"], "none");
        let upper = unsigned(json!({"alg": "NONE"}), json!({}));
        assert_eq!(decode_segment(&upper, 0)["alg"], "NONE");
        assert_eq!(
            sign(key, "none", json!({"alg": "none"}), json!({})),
            format!("{}.{}.", b64url(r#"{"alg":"none"}"#), b64url("{}"))
        );
    }

    #[test]
    fn sign_raw_encodes_text_byte_for_byte() {
        let key = TestKey::ec_p256();
        let h = r#"{"alg":"ES256","alg":"none","kid":"x"}"#;
        let c = r#"["not", "an", "object"]"#;
        let token = sign_raw(&key, "ES256", h, c);
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(b64url_decode(parts[0]), h.as_bytes());
        assert_eq!(b64url_decode(parts[1]), c.as_bytes());
        assert_eq!(b64url_decode(parts[2]).len(), 64);
    }

    #[test]
    #[should_panic(expected = "cannot sign HS256")]
    fn asymmetric_key_refuses_hmac() {
        let key = TestKey::ed25519();
        sign(&key, "HS256", json!({}), json!({}));
    }

    #[test]
    fn claims_and_header_have_the_standard_shape() {
        let c = claims(ISS, "alice", AUD, 120);
        for m in [
            "iss",
            "sub",
            "aud",
            "exp",
            "iat",
            "nbf",
            "jti",
            "sid",
            "auth_time",
        ] {
            assert!(c.get(m).is_some(), "{m}");
        }
        assert_eq!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(), 120);
        assert_eq!(c["scope"], "read write");
        assert_eq!(c["roles"], json!(["user"]));
        assert_eq!(c["amr"], json!(["pwd"]));
        assert_ne!(c["jti"], claims(ISS, "alice", AUD, 120)["jti"]);
        assert_eq!(
            header("k1", "RS256"),
            json!({"alg": "RS256", "kid": "k1", "typ": "at+jwt"})
        );
    }

    #[test]
    fn kid_alg_and_use_metadata() {
        let key = TestKey::hmac(b"s");
        assert!(!key.kid().is_empty());
        assert_ne!(key.kid(), TestKey::hmac(b"s").kid());
        let key = key.with_kid("k1").with_alg("HS256");
        assert_eq!(key.public_jwk()["kid"], "k1");
        assert_eq!(key.public_jwk()["alg"], "HS256");
        let bare = key.without_kid().with_use(None);
        assert_eq!(bare.kid(), "");
        assert!(bare.public_jwk().get("kid").is_none());
        assert!(bare.public_jwk().get("use").is_none());
        let enc = TestKey::ec_p256().with_use(Some("enc"));
        assert_eq!(enc.public_jwk()["use"], "enc");
    }

    #[test]
    fn thumbprints_follow_rfc7638() {
        // The example of RFC 7638 §3.1.
        let example = json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29"
        });
        assert_eq!(
            jwk_thumbprint(&example),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
        // Agrees with jsonwebtoken for every key type.
        for key in [
            rsa2048().clone(),
            TestKey::ec_p256(),
            TestKey::ec_p384(),
            TestKey::ed25519(),
            TestKey::hmac(b"secret"),
        ] {
            assert_eq!(
                key.thumbprint(),
                jwk_of(&key).thumbprint(ThumbprintHash::SHA256),
                "{:?}",
                key.kind()
            );
        }
    }
}
