//! The error type shared by the crypto modules.

use thiserror::Error;

/// Why a cryptographic operation failed.
///
/// Messages never contain key material, secrets or passwords: they end up in logs.
#[derive(Debug, Error)]
pub enum CryptoError {
    /// The system could not generate a key of this algorithm (entropy or library failure).
    #[error("could not generate a {alg} signing key")]
    KeyGeneration {
        /// The JWA name of the algorithm.
        alg: &'static str,
    },
    /// A stored or supplied private key does not parse as a key of the expected algorithm,
    /// or is too weak to use.
    #[error("invalid {alg} private key: {reason}")]
    InvalidKey {
        /// The JWA name of the algorithm the key was expected to be.
        alg: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// An algorithm name that the issuer does not sign with.
    #[error("unsupported signing algorithm {0:?} (expected ES256, RS256 or EdDSA)")]
    UnsupportedAlgorithm(String),
    /// A JWK lacks a member needed to compute its RFC 7638 thumbprint, or has an unknown `kty`.
    #[error("invalid JWK: {0}")]
    InvalidJwk(String),
    /// The key-encryption secret is shorter than the minimum.
    #[error("key-encryption secret too short: at least {min} bytes are required")]
    WeakSecret {
        /// Minimum length in bytes.
        min: usize,
    },
    /// A private key is stored encrypted but no key-encryption secret is configured.
    #[error("private key is encrypted at rest but no key-encryption secret is configured")]
    MissingSecret,
    /// A stored private key is not in a recognised `plain:` / `enc:v1:` form.
    #[error("stored private key is malformed: {0}")]
    MalformedStored(&'static str),
    /// Decryption failed: wrong key-encryption secret or tampered ciphertext (AEAD cannot
    /// tell which, by design).
    #[error(
        "could not decrypt the stored private key: wrong key-encryption secret or tampered data"
    )]
    Decrypt,
    /// Deriving the AES key from the key-encryption secret failed inside the library.
    #[error("could not derive the key-encryption key")]
    KeyDerivation,
    /// Encryption failed inside the AEAD implementation.
    #[error("could not encrypt the private key")]
    Encrypt,
    /// Claims to sign were not a JSON object.
    #[error("JWT claims must be a JSON object")]
    ClaimsNotObject,
    /// `jsonwebtoken` refused to sign.
    #[error("could not sign the token: {0}")]
    Jwt(#[from] jsonwebtoken::errors::Error),
    /// argon2 refused the parameters or failed to hash.
    #[error("password hashing failed: {0}")]
    PasswordHash(String),
}
