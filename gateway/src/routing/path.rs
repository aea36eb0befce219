//! Request path normalisation: the gateway matches, and forwards, one canonical path.
//!
//! An attacker's favourite trick against path-based rules is a path that the proxy and the
//! application read differently (`/public/..%2Fadmin`, `/public/%2e%2e/admin`, `..;/`).
//! We remove that gap: unreserved percent-escapes are decoded, dot segments resolved, `//`
//! collapsed, and anything whose meaning could differ between two parsers is refused.

use thiserror::Error;

/// Why a request path was refused (answered with 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum PathError {
    /// The request target is not an absolute path.
    #[error("the request path must start with '/'")]
    NotAbsolute,
    /// `%` not followed by two hex digits.
    #[error("malformed percent-encoding in the path")]
    BadEncoding,
    /// `%2F` or `%5C`: an encoded separator that parsers disagree on.
    #[error("encoded '/' or '\\' in the path is not allowed")]
    EncodedSeparator,
    /// `%00` or another control character.
    #[error("NUL or control character in the path is not allowed")]
    ControlCharacter,
    /// `%25` followed by hex digits: double encoding.
    #[error("double percent-encoding in the path is not allowed")]
    DoubleEncoding,
    /// A raw backslash or non-ASCII byte.
    #[error("invalid character in the path")]
    InvalidCharacter,
    /// `..` above the root.
    #[error("the path escapes the root with '..'")]
    EscapesRoot,
    /// A dot segment with parameters (`..;x`), read as `..` by some servers.
    #[error("dot segment with parameters in the path is not allowed")]
    DotSegmentParameters,
    /// Percent-encoded bytes that are not UTF-8 (overlong forms such as `%c0%ae` for `.`,
    /// surrogates, truncated sequences): decoders disagree on what they mean.
    #[error("percent-encoded bytes in the path are not valid UTF-8")]
    InvalidUtf8,
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Normalises a request path (without query) into its canonical form.
pub fn normalize(path: &str) -> Result<String, PathError> {
    if is_canonical(path.as_bytes()) {
        return Ok(path.to_string());
    }
    normalize_in_full(path)
}

/// Whether a path is its own canonical form, as most are: it starts with `/` and has no `%`,
/// no byte that is refused or decoded, no `//`, and no segment starting with `.` (so no dot
/// segments, with or without parameters). One pass, no allocation; anything else takes the
/// full normalisation (a property test checks both agree).
fn is_canonical(bytes: &[u8]) -> bool {
    if bytes.first() != Some(&b'/') {
        return false;
    }
    let mut prev = 0u8;
    for &b in bytes {
        let plain = matches!(b, 0x21..=0x7e) && b != b'%' && b != b'\\';
        if !plain || (prev == b'/' && (b == b'/' || b == b'.')) {
            return false;
        }
        prev = b;
    }
    true
}

fn normalize_in_full(path: &str) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    // First pass: decode what is safe to decode, refuse what is ambiguous.
    let mut decoded = String::with_capacity(bytes.len());
    let mut non_ascii = false;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let (hi, lo) = match (bytes.get(i + 1), bytes.get(i + 2)) {
                    (Some(&h), Some(&l)) => (h, l),
                    _ => return Err(PathError::BadEncoding),
                };
                let v = match (hex_val(hi), hex_val(lo)) {
                    (Some(h), Some(l)) => h << 4 | l,
                    _ => return Err(PathError::BadEncoding),
                };
                match v {
                    b'/' | b'\\' => return Err(PathError::EncodedSeparator),
                    0x00..=0x1f | 0x7f => return Err(PathError::ControlCharacter),
                    b'%' => {
                        let next_is_hex = matches!(
                            (
                                bytes.get(i + 3).copied().and_then(hex_val),
                                bytes.get(i + 4).copied().and_then(hex_val)
                            ),
                            (Some(_), Some(_))
                        );
                        if next_is_hex {
                            return Err(PathError::DoubleEncoding);
                        }
                        decoded.push_str("%25");
                    }
                    v if is_unreserved(v) => decoded.push(v as char),
                    v => {
                        non_ascii |= v >= 0x80;
                        const HEX: &[u8; 16] = b"0123456789ABCDEF";
                        decoded.push('%');
                        decoded.push(HEX[(v >> 4) as usize] as char);
                        decoded.push(HEX[(v & 0xf) as usize] as char);
                    }
                }
                i += 3;
            }
            b'\\' => return Err(PathError::InvalidCharacter),
            0x00..=0x20 | 0x7f => return Err(PathError::ControlCharacter),
            0x80..=0xff => return Err(PathError::InvalidCharacter),
            _ => {
                decoded.push(b as char);
                i += 1;
            }
        }
    }

    if non_ascii && !decodes_to_utf8(bytes) {
        return Err(PathError::InvalidUtf8);
    }

    // Second pass: resolve dot segments and empty segments (RFC 3986 §5.2.4, plus `//`).
    let mut segments: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for seg in decoded.split('/').skip(1) {
        trailing_slash = false;
        let bare = seg.split(';').next().unwrap_or(seg);
        if bare != seg && (bare == "." || bare == "..") {
            return Err(PathError::DotSegmentParameters);
        }
        match seg {
            "" => trailing_slash = true,
            "." => trailing_slash = true,
            ".." => {
                if segments.pop().is_none() {
                    return Err(PathError::EscapesRoot);
                }
                trailing_slash = true;
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing_slash || segments.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// Whether the fully percent-decoded path is UTF-8 (escapes already checked well-formed).
fn decodes_to_utf8(bytes: &[u8]) -> bool {
    let mut raw = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex_val),
            bytes.get(i + 2).copied().and_then(hex_val),
        ) {
            (b'%', Some(h), Some(l)) => {
                raw.push(h << 4 | l);
                i += 3;
            }
            (b, _, _) => {
                raw.push(b);
                i += 1;
            }
        }
    }
    std::str::from_utf8(&raw).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(input: &str, want: &str) {
        assert_eq!(normalize(input).as_deref(), Ok(want), "input {input:?}");
    }

    fn err(input: &str, want: PathError) {
        assert_eq!(normalize(input), Err(want), "input {input:?}");
    }

    #[test]
    fn canonical_paths_pass_through() {
        ok("/", "/");
        ok("/public/hello", "/public/hello");
        ok("/public/hello/", "/public/hello/");
        ok("/a%20b", "/a%20b");
        ok("/a%3fb", "/a%3Fb");
        ok("/a;v=1/b", "/a;v=1/b");
        ok("/100%25", "/100%25");
        ok("/caf%c3%a9", "/caf%C3%A9");
        ok("/%e2%82%ac/%F0%9F%98%80", "/%E2%82%AC/%F0%9F%98%80");
    }

    #[test]
    fn dot_segments_and_slashes_are_resolved() {
        ok("//public//hello", "/public/hello");
        ok("/public/./hello", "/public/hello");
        ok("/public/../admin", "/admin");
        ok("/public/hello/..", "/public/");
        ok("/public/.", "/public/");
        ok("/a/b/../../c", "/c");
        ok("/..%2e/", "/.../");
    }

    #[test]
    fn unreserved_escapes_are_decoded() {
        ok("/%70ublic/hello", "/public/hello");
        ok("/public/%2e%2e/admin", "/admin");
        ok("/public/%2E./admin", "/admin");
        ok("/%7euser", "/~user");
    }

    #[test]
    fn ambiguous_encodings_are_refused() {
        err("/public/..%2Fadmin", PathError::EncodedSeparator);
        err("/public%2fadmin", PathError::EncodedSeparator);
        err("/public%5C..%5Cadmin", PathError::EncodedSeparator);
        err("/public/%00", PathError::ControlCharacter);
        err("/public/%0a", PathError::ControlCharacter);
        err("/public/%252e%252e/admin", PathError::DoubleEncoding);
        err("/public/%2", PathError::BadEncoding);
        err("/public/%zz", PathError::BadEncoding);
        err("/public\\..\\admin", PathError::InvalidCharacter);
        err("/public/..;/admin", PathError::DotSegmentParameters);
        err("/public/.;x/admin", PathError::DotSegmentParameters);
        err("/..", PathError::EscapesRoot);
        err("/public/../../admin", PathError::EscapesRoot);
        err("/%2e%2e/etc/passwd", PathError::EscapesRoot);
        err("public", PathError::NotAbsolute);
        err("/public/%c0%ae%c0%ae/admin/x", PathError::InvalidUtf8);
        err("/public/%ff", PathError::InvalidUtf8);
        err("/public/%c3", PathError::InvalidUtf8);
        err("/public/%c3/x", PathError::InvalidUtf8);
        err("/public/%ed%a0%80", PathError::InvalidUtf8);
        err("/public/%e0%80%af", PathError::InvalidUtf8);
        err("/public/%f8%88%80%80%80", PathError::InvalidUtf8);
        err("*", PathError::NotAbsolute);
    }

    #[test]
    fn canonical_paths_take_the_fast_path() {
        for p in [
            "/",
            "/public/hello",
            "/a/b/",
            "/a;v=1/b",
            "/x.y/z.",
            "/~u/-_!$&'()*+,=:@",
        ] {
            assert!(is_canonical(p.as_bytes()), "{p}");
        }
        for p in [
            "",
            "x",
            "/a//b",
            "/./a",
            "/a/..",
            "/.well-known",
            "/%41",
            "/a\\b",
            "/a b",
        ] {
            assert!(!is_canonical(p.as_bytes()), "{p}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(3000))]

        #[test]
        fn the_fast_path_agrees_with_the_full_normalisation(
            p in "/?[a-z./;%0-9A-F~ \\\\-]{0,24}"
        ) {
            proptest::prop_assert_eq!(normalize(&p), normalize_in_full(&p));
        }
    }
}
