//! What a role name may be, written once for the issuer (which refuses to store anything
//! else) and the gateway (which refuses tokens carrying anything else).
//!
//! A role is 1 to [`ROLE_MAX_LEN`] bytes of visible ASCII other than space, `"`, `\` and
//! `,` — RFC 6749's scope-token characters (NQCHAR) without the comma. The gateway forwards
//! roles comma-separated in `X-Auth-Roles`, so a role holding a comma, a space or a control
//! character would let one role read as several at the upstream (`"user,admin"`).

/// The longest role name accepted, in bytes.
pub const ROLE_MAX_LEN: usize = 128;

/// The role grammar in words, for error messages and documentation.
pub const ROLE_RULE: &str =
    "1 to 128 visible ASCII characters other than space, comma, '\"' and '\\'";

/// The scope grammar in words.
pub const SCOPE_RULE: &str = "1 to 128 visible ASCII characters other than space, '\"' and '\\'";

/// Whether `role` is a valid role name.
pub fn valid_role(role: &str) -> bool {
    (1..=ROLE_MAX_LEN).contains(&role.len())
        && role
            .bytes()
            .all(|b| matches!(b, 0x21 | 0x23..=0x2b | 0x2d..=0x5b | 0x5d..=0x7e))
}

/// Whether `scope` is an RFC 6749 §3.3 scope-token (1*NQCHAR), at most [`ROLE_MAX_LEN`]
/// bytes: the `scope` claim is space-separated, so a space would make one scope two.
pub fn valid_scope(scope: &str) -> bool {
    (1..=ROLE_MAX_LEN).contains(&scope.len())
        && scope
            .bytes()
            .all(|b| matches!(b, 0x21 | 0x23..=0x5b | 0x5d..=0x7e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_single_header_safe_tokens() {
        for ok in [
            "admin",
            "orders:read",
            "a",
            "realm-management",
            "x.y/z@w+v_1",
            "!#$%&'*-=~",
        ] {
            assert!(valid_role(ok), "{ok}");
        }
        let long = "r".repeat(ROLE_MAX_LEN + 1);
        for bad in [
            "",
            " ",
            "a b",
            "user,admin",
            "a\u{0}",
            "a\nb",
            "a\tb",
            "\"q\"",
            "back\\slash",
            "caf\u{e9}",
            "\u{7f}",
            long.as_str(),
        ] {
            assert!(!valid_role(bad), "{bad:?}");
        }
        assert!(valid_role(&"r".repeat(ROLE_MAX_LEN)));
        assert!(valid_scope("orders:read") && valid_scope("a,b"));
        assert!(!valid_scope("a b") && !valid_scope("") && !valid_scope("\"q\""));
    }
}
