//! Password hashing (argon2id, OWASP parameters) and the password policy (NIST SP 800-63B:
//! length limits and a blocklist, no composition rules).

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::{LazyLock, Mutex};

use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use unicode_normalization::{is_nfkc_quick, IsNormalized, UnicodeNormalization};

use super::secrets::random_bytes;
use super::CryptoError;

/// argon2id cost parameters. `Default` is the OWASP Password Storage Cheat Sheet minimum
/// for argon2id: 19 MiB of memory, 2 iterations, 1 lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PasswordParams {
    /// Memory cost in KiB (`m`).
    pub memory_kib: u32,
    /// Number of passes (`t`).
    pub iterations: u32,
    /// Degree of parallelism (`p`).
    pub parallelism: u32,
}

impl Default for PasswordParams {
    fn default() -> Self {
        PasswordParams {
            memory_kib: 19_456,
            iterations: 2,
            parallelism: 1,
        }
    }
}

impl PasswordParams {
    fn hasher(&self) -> Result<Argon2<'static>, CryptoError> {
        let params = Params::new(self.memory_kib, self.iterations, self.parallelism, None)
            .map_err(|e| CryptoError::PasswordHash(e.to_string()))?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
    }
}

/// Argon2 working memory (19 MiB per hash by default) kept between hashes. Allocating it
/// per hash costs page faults and zeroing on every login (with glibc's fixed mmap
/// threshold, see main.rs) or leaves it resident in every allocator arena of the blocking
/// threads (without it: ~760 MiB seen). At most as many buffers exist as hashes ran at once
/// (`max_concurrent_hashes`); the pool keeps a few of them.
static BLOCKS: Mutex<Vec<Vec<Block>>> = Mutex::new(Vec::new());

/// Most buffers the pool keeps.
const MAX_POOLED_BUFFERS: usize = 8;

/// `hasher` over `password` and `salt` into `out`, in a pooled buffer.
fn hash_into_pooled(
    hasher: &Argon2<'_>,
    password: &[u8],
    salt: &[u8],
    out: &mut [u8],
) -> Result<(), argon2::Error> {
    let needed = hasher.params().block_count();
    let pooled = BLOCKS.lock().ok().and_then(|mut pool| pool.pop());
    let mut blocks = match pooled {
        Some(b) if b.len() == needed => b,
        // Other parameters (an old hash being verified): a buffer of the right size.
        _ => vec![Block::default(); needed],
    };
    let result = hasher.hash_password_into_with_memory(password, salt, out, &mut blocks[..]);
    if let Ok(mut pool) = BLOCKS.lock() {
        if pool.len() < MAX_POOLED_BUFFERS {
            pool.push(blocks);
        }
    }
    result
}

/// The NFKC form of a password (NIST SP 800-63B §5.1.1.2), so that the same characters
/// typed on two keyboards (composed "é" or "e" + combining accent, a full-width digit) are
/// the same password. Borrowed when already normalised (every ASCII password).
pub fn normalize(password: &str) -> Cow<'_, str> {
    match is_nfkc_quick(password.chars()) {
        IsNormalized::Yes => Cow::Borrowed(password),
        _ => Cow::Owned(password.nfkc().collect()),
    }
}

/// Hashes a password (its NFKC form) with argon2id and a fresh random 128-bit salt, as a PHC
/// string (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`) that records its own parameters.
pub fn hash(password: &str, p: &PasswordParams) -> Result<String, CryptoError> {
    let password = normalize(password);
    let password = password.as_ref();
    let fail = |e: String| CryptoError::PasswordHash(e);
    let salt_bytes = random_bytes::<16>();
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| fail(e.to_string()))?;
    let hasher = p.hasher()?;
    let output = Output::init_with(Params::DEFAULT_OUTPUT_LEN, |out| {
        hash_into_pooled(&hasher, password.as_bytes(), &salt_bytes, out)
            .map_err(argon2::password_hash::Error::from)
    })
    .map_err(|e| fail(e.to_string()))?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(hasher.params()).map_err(|e| fail(e.to_string()))?,
        salt: Some(salt.as_salt()),
        hash: Some(output),
    };
    Ok(phc.to_string())
}

/// The outcome of checking a password against a stored hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verified {
    /// Wrong password (or an unusable hash).
    No,
    /// The password's NFKC form matches.
    Yes,
    /// The password matches as typed but not its NFKC form: a hash made before passwords
    /// were normalised. The caller replaces it while it has the password.
    Legacy,
}

impl Verified {
    /// Whether the password is right.
    pub fn ok(self) -> bool {
        self != Verified::No
    }
}

/// Checks a password against a PHC string: its NFKC form first, then — only when that
/// differs — the text as typed, which is what hashes made before normalisation hold.
pub fn check(password: &str, phc: &str) -> Verified {
    let normal = normalize(password);
    if verify_exact(&normal, phc) {
        Verified::Yes
    } else if normal != password && verify_exact(password, phc) {
        Verified::Legacy
    } else {
        Verified::No
    }
}

/// Whether `password` is right for `phc` ([`check`] without telling a legacy match apart).
pub fn verify(password: &str, phc: &str) -> bool {
    check(password, phc).ok()
}

/// Checks exactly these characters against a PHC string, using the parameters recorded in it.
///
/// `false` for a wrong password and for an unparsable or non-argon2 hash alike: the caller
/// answers "invalid credentials" either way. The final comparison is constant-time
/// (`password_hash::Output`'s equality).
fn verify_exact(password: &str, phc: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return false;
    };
    let Ok(algorithm) = Algorithm::try_from(parsed.algorithm) else {
        return false;
    };
    let version = match parsed.version.map(Version::try_from) {
        None => Version::default(),
        Some(Ok(v)) => v,
        Some(Err(_)) => return false,
    };
    // Includes the output length of the stored hash.
    let Ok(params) = Params::try_from(&parsed) else {
        return false;
    };
    let mut salt_buf = [0u8; 64];
    let Ok(salt_bytes) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let hasher = Argon2::new(algorithm, version, params);
    let computed = Output::init_with(expected.len(), |out| {
        hash_into_pooled(&hasher, password.as_bytes(), salt_bytes, out)
            .map_err(argon2::password_hash::Error::from)
    });
    matches!(computed, Ok(c) if c == expected)
}

/// Whether a stored hash should be replaced on the next successful login: it is not
/// argon2id v19 with exactly the current parameters and output length (or does not parse).
pub fn needs_rehash(phc: &str, p: &PasswordParams) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return true;
    };
    if parsed.algorithm != Algorithm::Argon2id.ident()
        || parsed.version != Some(Version::V0x13.into())
    {
        return true;
    }
    let Ok(stored) = Params::try_from(&parsed) else {
        return true;
    };
    let output_len = parsed.hash.map(|h| h.len());
    stored.m_cost() != p.memory_kib
        || stored.t_cost() != p.iterations
        || stored.p_cost() != p.parallelism
        || output_len != Some(Params::DEFAULT_OUTPUT_LEN)
}

/// Salt for [`dummy_verify`]; its value is irrelevant, only the work matters.
const DUMMY_SALT: &[u8; 16] = b"portcullis-dummy";

/// Spends the same time as a real [`verify`] with parameters `p`, and throws the result away.
///
/// Called when the account does not exist, so that response times do not tell an attacker
/// which usernames are registered.
pub fn dummy_verify(password: &str, p: &PasswordParams) {
    // Invalid parameters make real hashing fail too; fall back to the defaults (which are
    // valid) so that the dummy still costs what a login normally costs.
    let hasher = p
        .hasher()
        .or_else(|_| PasswordParams::default().hasher())
        .unwrap_or_default();
    // As many hashes as [`check`] computes for a wrong password: two when the text is not
    // in NFKC form, or such a password would tell existing accounts from unknown ones.
    let rounds = if normalize(password) == password {
        1
    } else {
        2
    };
    for _ in 0..rounds {
        let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
        // The outcome is meaningless; black_box keeps the optimiser from discarding the work.
        let succeeded =
            hash_into_pooled(&hasher, password.as_bytes(), DUMMY_SALT, &mut out).is_ok();
        std::hint::black_box((succeeded, out));
    }
}

/// Minimum password length the policy uses when not configured.
pub const DEFAULT_MIN_LEN: usize = 8;
/// Maximum password length the policy uses when not configured.
pub const DEFAULT_MAX_LEN: usize = 128;
/// The lowest maximum the policy will apply: NIST SP 800-63B requires accepting at least
/// 64 characters, so a smaller configured maximum is raised to this.
pub const MIN_MAX_LEN: usize = 64;

/// Why a new password is refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PasswordProblem {
    /// Fewer than `min` characters.
    #[error("password must be at least {min} characters long")]
    TooShort {
        /// Minimum length in characters.
        min: usize,
    },
    /// More than `max` characters.
    #[error("password must be at most {max} characters long")]
    TooLong {
        /// Maximum length in characters.
        max: usize,
    },
    /// On the list of commonly used (breached) passwords.
    #[error("password is too common; choose a less predictable one")]
    Common,
}

/// The shipped blocklist: lower-case, one password per line.
const COMMON_PASSWORDS_TXT: &str = include_str!("common-passwords.txt");

/// The blocklist as a set, parsed on first use.
static COMMON_PASSWORDS: LazyLock<HashSet<&'static str>> = LazyLock::new(|| {
    COMMON_PASSWORDS_TXT
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect()
});

/// Whether `password` is on the common-password list, ignoring case.
pub fn is_common(password: &str) -> bool {
    COMMON_PASSWORDS.contains(password.to_lowercase().as_str())
}

/// Applies the password policy to a new password.
///
/// Length is counted in Unicode scalar values of the NFKC form (what is hashed), not
/// bytes. There are deliberately no composition rules (digits, symbols, …): NIST
/// SP 800-63B found they lead to predictable passwords. `max_len` below [`MIN_MAX_LEN`] is
/// raised to it.
pub fn check_policy(password: &str, min_len: usize, max_len: usize) -> Result<(), PasswordProblem> {
    // The policy judges what is hashed.
    let password = normalize(password);
    let password = password.as_ref();
    let max = max_len.max(MIN_MAX_LEN);
    let len = password.chars().count();
    if len < min_len {
        return Err(PasswordProblem::TooShort { min: min_len });
    }
    if len > max {
        return Err(PasswordProblem::TooLong { max });
    }
    if is_common(password) {
        return Err(PasswordProblem::Common);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};

    #[test]
    fn pooled_hashing_agrees_with_the_argon2_crate() {
        let p = PasswordParams {
            memory_kib: 1024,
            iterations: 1,
            parallelism: 1,
        };
        // Ours, checked by the crate's verifier.
        let ours = hash("pw one", &p).unwrap();
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(Argon2::default()
            .verify_password(b"pw one", &parsed)
            .is_ok());
        assert!(Argon2::default()
            .verify_password(b"pw two", &parsed)
            .is_err());
        // The crate's, with other parameters and algorithm, checked by ours (a pooled buffer
        // of another size is replaced, not misused).
        for (alg, m) in [
            (Algorithm::Argon2id, 2048),
            (Algorithm::Argon2i, 64),
            (Algorithm::Argon2d, 1024),
        ] {
            let theirs = Argon2::new(alg, Version::V0x13, Params::new(m, 2, 1, Some(24)).unwrap())
                .hash_password(
                    b"pw three",
                    &SaltString::encode_b64(b"0123456789abcdef").unwrap(),
                )
                .unwrap()
                .to_string();
            assert!(verify("pw three", &theirs), "{theirs}");
            assert!(!verify("pw four", &theirs), "{theirs}");
        }
        // Many hashes reuse a bounded number of buffers.
        for _ in 0..20 {
            assert!(verify("pw one", &ours));
        }
        assert!(BLOCKS.lock().unwrap().len() <= MAX_POOLED_BUFFERS);
    }
    use std::time::{Duration, Instant};

    /// Small parameters keep the tests fast; the default-parameter path has its own test.
    const FAST: PasswordParams = PasswordParams {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };

    #[test]
    fn default_params_are_owasp_minimum() {
        assert_eq!(
            PasswordParams::default(),
            PasswordParams {
                memory_kib: 19_456,
                iterations: 2,
                parallelism: 1
            }
        );
        let phc = hash("correct horse battery staple", &PasswordParams::default()).unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(verify("correct horse battery staple", &phc));
        assert!(!needs_rehash(&phc, &PasswordParams::default()));
    }

    #[test]
    fn hash_and_verify() {
        let phc = hash("s3cret pässword", &FAST).unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{phc}");
        assert!(verify("s3cret pässword", &phc));
        assert!(!verify("s3cret password", &phc));
        assert!(!verify("", &phc));
        // Random salt: same password, different hashes, both valid.
        let again = hash("s3cret pässword", &FAST).unwrap();
        assert_ne!(phc, again);
        assert!(verify("s3cret pässword", &again));
    }

    #[test]
    fn passwords_are_nfkc_normalised() {
        // Composed "é" and "e" + combining acute; full-width digits and ASCII ones.
        let phc = hash("caf\u{e9} \u{ff11}\u{ff12}\u{ff13}4567", &FAST).unwrap();
        assert_eq!(check("cafe\u{301} 1234567", &phc), Verified::Yes);
        assert_eq!(check("caf\u{e9} 1234567", &phc), Verified::Yes);
        assert_eq!(check("cafe 1234567", &phc), Verified::No);
        assert_eq!(normalize("ascii only"), Cow::Borrowed("ascii only"));
        // A hash made before normalisation (of the text as typed) still verifies, once, as
        // Legacy, so the login replaces it.
        let typed = "cafe\u{301} \u{fb01}";
        let legacy = Argon2::default()
            .hash_password(
                typed.as_bytes(),
                &SaltString::encode_b64(b"0123456789abcdef").unwrap(),
            )
            .unwrap()
            .to_string();
        assert_eq!(check(typed, &legacy), Verified::Legacy);
        assert_eq!(check("caf\u{e9} fi", &legacy), Verified::No);
        // The policy measures the NFKC form: one ligature character is two letters.
        assert_eq!(
            check_policy("\u{fb01}\u{fb01}\u{fb01}x", 8, 64),
            Err(PasswordProblem::TooShort { min: 8 })
        );
        assert!(check_policy("\u{fb01}\u{fb01}\u{fb01}\u{fb01}x", 8, 64).is_ok());
    }

    #[test]
    fn verify_rejects_garbage_hashes() {
        for phc in [
            "",
            "plaintext",
            "$argon2id$v=19$m=64,t=1,p=1$bad",
            "$2b$12$abc",
        ] {
            assert!(!verify("password", phc), "{phc}");
        }
    }

    #[test]
    fn needs_rehash_when_params_or_algorithm_change() {
        let phc = hash("pw", &FAST).unwrap();
        assert!(!needs_rehash(&phc, &FAST));
        assert!(needs_rehash(
            &phc,
            &PasswordParams {
                memory_kib: 128,
                ..FAST
            }
        ));
        assert!(needs_rehash(
            &phc,
            &PasswordParams {
                iterations: 2,
                ..FAST
            }
        ));
        assert!(needs_rehash(
            &phc,
            &PasswordParams {
                parallelism: 2,
                ..FAST
            }
        ));
        assert!(needs_rehash("not a hash", &FAST));
        // argon2i with the same parameters is still upgraded to argon2id.
        let argon2i = Argon2::new(
            Algorithm::Argon2i,
            Version::V0x13,
            Params::new(64, 1, 1, None).unwrap(),
        )
        .hash_password(b"pw", &SaltString::encode_b64(b"0123456789abcdef").unwrap())
        .unwrap()
        .to_string();
        assert!(verify("pw", &argon2i));
        assert!(needs_rehash(&argon2i, &FAST));
    }

    #[test]
    fn invalid_params_are_an_error() {
        let bad = PasswordParams {
            memory_kib: 1,
            iterations: 0,
            parallelism: 0,
        };
        assert!(matches!(
            hash("pw", &bad),
            Err(CryptoError::PasswordHash(_))
        ));
    }

    #[test]
    fn dummy_verify_costs_about_as_much_as_verify() {
        let p = PasswordParams {
            memory_kib: 4096,
            iterations: 2,
            parallelism: 1,
        };
        let phc = hash("pw", &p).unwrap();
        // Interleaved, so that load from parallel tests hits both sides alike.
        let (mut real, mut dummy) = (Duration::ZERO, Duration::ZERO);
        for _ in 0..5 {
            let start = Instant::now();
            assert!(!verify("wrong", &phc));
            real += start.elapsed();
            let start = Instant::now();
            dummy_verify("wrong", &p);
            dummy += start.elapsed();
        }
        // Loose bounds: this guards against a dummy that does no work, not against jitter.
        assert!(dummy * 3 > real, "dummy {dummy:?} vs real {real:?}");
        assert!(dummy < real * 3, "dummy {dummy:?} vs real {real:?}");
        // Invalid parameters must not panic.
        dummy_verify(
            "pw",
            &PasswordParams {
                memory_kib: 0,
                iterations: 0,
                parallelism: 0,
            },
        );
    }

    #[test]
    fn params_deserialize_with_defaults() {
        let p: PasswordParams = serde_json::from_str(r#"{"memory_kib": 65536}"#).unwrap();
        assert_eq!(p.memory_kib, 65_536);
        assert_eq!(p.iterations, 2);
        assert!(serde_json::from_str::<PasswordParams>(r#"{"memory": 1}"#).is_err());
    }

    #[test]
    fn policy_length_limits() {
        assert_eq!(
            check_policy("Xk9#mQ2", 8, 128),
            Err(PasswordProblem::TooShort { min: 8 })
        );
        assert_eq!(check_policy("Xk9#mQ2z", 8, 128), Ok(()));
        let long_ok = "vR7q".repeat(32); // 128
        assert_eq!(check_policy(&long_ok, 8, 128), Ok(()));
        let too_long = format!("{long_ok}x");
        assert_eq!(
            check_policy(&too_long, 8, 128),
            Err(PasswordProblem::TooLong { max: 128 })
        );
        // At least 64 characters are always accepted, whatever the configuration says.
        let sixty_four = "vR7q".repeat(16);
        assert_eq!(check_policy(&sixty_four, 8, 64), Ok(()));
        assert_eq!(check_policy(&sixty_four, 8, 20), Ok(()));
        assert_eq!(
            check_policy(&format!("{sixty_four}x"), 8, 20),
            Err(PasswordProblem::TooLong { max: 64 })
        );
    }

    #[test]
    fn policy_counts_unicode_characters_not_bytes() {
        // 7 characters but 21 bytes: too short.
        assert_eq!(
            check_policy("ñandú猫", 8, 128),
            Err(PasswordProblem::TooShort { min: 8 })
        );
        // 8 characters, far more than 8 bytes: fine.
        assert_eq!(check_policy("ñandú猫猫😀", 8, 128), Ok(()));
        // 64 four-byte characters (256 bytes) fit a 64-character maximum.
        assert_eq!(check_policy(&"😀".repeat(64), 8, 64), Ok(()));
    }

    #[test]
    fn policy_rejects_common_passwords_ignoring_case() {
        for pw in [
            "password",
            "PASSWORD",
            "Password1",
            "12345678",
            "qwertyuiop",
            "iloveyou",
        ] {
            assert_eq!(
                check_policy(pw, 8, 128),
                Err(PasswordProblem::Common),
                "{pw}"
            );
        }
        // Spaces and no composition rules: a passphrase of plain words is fine.
        assert_eq!(check_policy("correct horse battery staple", 8, 128), Ok(()));
        assert_eq!(check_policy("aaaaaaaaaaaaaaaaaaaaz", 8, 128), Ok(()));
    }

    #[test]
    fn common_list_is_large_lowercase_and_loaded_once() {
        let lines: Vec<&str> = COMMON_PASSWORDS_TXT.lines().collect();
        assert!(lines.len() >= 1000, "{} lines", lines.len());
        assert!(COMMON_PASSWORDS.len() >= 1000, "{}", COMMON_PASSWORDS.len());
        for line in lines {
            assert_eq!(line, line.to_lowercase(), "not lower-case: {line:?}");
            assert_eq!(line, line.trim(), "stray whitespace: {line:?}");
        }
        for pw in [
            "123456",
            "password",
            "12345678",
            "qwerty",
            "123456789",
            "letmein",
        ] {
            assert!(is_common(pw), "{pw}");
        }
    }
}
