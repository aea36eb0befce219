//! One-time codes: generated from the CSPRNG, stored only as an HMAC bound to the phone.

use aws_lc_rs::hmac;
use rand::Rng as _;

/// Derives and holds the key code hashes are made with.
pub struct CodeHasher {
    key: hmac::Key,
}

impl CodeHasher {
    /// A hasher keyed from the server secret (`secrets/api-key-pepper`): a leaked database
    /// alone is not enough to test the 10^6 candidate codes against a hash.
    pub fn new(server_secret: &[u8]) -> CodeHasher {
        // A purpose-specific key, so a code hash can never be confused with an API-key hash.
        let root = hmac::Key::new(hmac::HMAC_SHA256, server_secret);
        let derived = hmac::sign(&root, b"portcullis sms one-time code v1");
        CodeHasher {
            key: hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()),
        }
    }

    /// Hex HMAC-SHA256 over `phone ‖ 0x00 ‖ code`: the same code for another number has
    /// another hash, so a stored hash cannot be replayed against a different phone.
    pub fn hash(&self, phone_e164: &str, code: &str) -> String {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(phone_e164.as_bytes());
        ctx.update(&[0]);
        ctx.update(code.as_bytes());
        crate::crypto::to_hex(ctx.sign().as_ref())
    }

    /// Whether `code` matches `stored` for `phone_e164`, compared in constant time.
    pub fn matches(&self, phone_e164: &str, code: &str, stored: &str) -> bool {
        crate::crypto::secrets::constant_time_eq(&self.hash(phone_e164, code), stored)
    }
}

/// A fresh code of `len` decimal digits, each drawn uniformly from the thread CSPRNG
/// (ChaCha12 reseeded from the OS), so a code carries `len · log2(10)` bits.
pub fn generate(len: usize) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| char::from(b'0' + rng.random_range(0..10u8)))
        .collect()
}

/// Whether `code` looks like a code at all (digits, sane length): anything else is refused
/// before it costs an attempt.
pub fn well_formed(code: &str, len: usize) -> bool {
    code.len() == len && code.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_digits_of_the_right_length_and_vary() {
        for len in 6..=10 {
            let c = generate(len);
            assert!(well_formed(&c, len), "{c}");
        }
        let many: std::collections::BTreeSet<String> = (0..200).map(|_| generate(6)).collect();
        assert!(many.len() > 190, "codes repeat too often: {}", many.len());
        // Every digit appears in every position over enough draws (no fixed position).
        let mut seen = [[false; 10]; 6];
        for _ in 0..2000 {
            for (i, b) in generate(6).bytes().enumerate() {
                seen[i][usize::from(b - b'0')] = true;
            }
        }
        assert!(seen.iter().all(|p| p.iter().all(|d| *d)));
    }

    #[test]
    fn hashes_are_bound_to_phone_code_and_key() {
        let h = CodeHasher::new(b"secret");
        let a = h.hash("+12015550123", "123456");
        assert_eq!(a.len(), 64);
        assert!(!a.contains("123456"));
        assert!(h.matches("+12015550123", "123456", &a));
        assert!(!h.matches("+12015550123", "123457", &a));
        assert!(!h.matches("+12015550124", "123456", &a));
        // No ambiguity between where the phone ends and the code starts.
        assert_ne!(h.hash("+1201555012", "3123456"), a);
        assert_ne!(CodeHasher::new(b"other").hash("+12015550123", "123456"), a);
        assert_eq!(h.hash("+12015550123", "123456"), a);
    }

    #[test]
    fn well_formed_codes() {
        assert!(well_formed("012345", 6));
        assert!(!well_formed("12345", 6));
        assert!(!well_formed("12345a", 6));
        assert!(!well_formed("１２３４５６", 6));
    }
}
