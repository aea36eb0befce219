//! Cryptographic primitives of the issuer, one module per concern.
//!
//! - [`keys`]: signing key generation, RFC 7638 key ids, JWKS documents, at-rest sealing.
//! - [`jwt`]: signing access tokens (`typ: at+jwt`).
//! - [`password`]: argon2id password hashing and the password policy.
//! - [`secrets`]: server-generated secrets (refresh tokens, API keys, ids) and their hashes.
//!
//! Everything here is synchronous and free of I/O so that the store and HTTP layers decide
//! where the (sometimes expensive) work runs.

pub mod error;
pub mod jwt;
pub mod keypair;
pub mod password;
pub mod secrets;

pub use error::CryptoError;

/// Lower-case hexadecimal encoding; small enough not to justify a dependency.
pub(crate) fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::to_hex;

    #[test]
    fn hex_encodes_lowercase() {
        assert_eq!(to_hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
        assert_eq!(to_hex(&[]), "");
    }
}
