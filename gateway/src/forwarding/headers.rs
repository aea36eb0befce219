//! Header edits: per-route `set` / `add` / `remove`, and request ids.

use http::{HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};

/// Per-route header edits, compiled from `set` / `add` / `remove`.
#[derive(Debug, Clone, Default)]
pub struct HeaderOps {
    /// Replace (or create) these headers.
    pub set: Vec<(HeaderName, HeaderValue)>,
    /// Append these headers.
    pub add: Vec<(HeaderName, HeaderValue)>,
    /// Delete these headers.
    pub remove: Vec<HeaderName>,
}

impl HeaderOps {
    /// Whether there is nothing to do (the common case; lets callers skip work).
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    /// Applies the edits to a request going upstream.
    pub fn apply_request(&self, req: &mut RequestHeader) -> pingora::Result<()> {
        for name in &self.remove {
            req.remove_header(name);
        }
        for (name, value) in &self.set {
            req.insert_header(name.clone(), value.clone())?;
        }
        for (name, value) in &self.add {
            req.append_header(name.clone(), value.clone())?;
        }
        Ok(())
    }

    /// Applies the edits to a response going downstream.
    pub fn apply_response(&self, resp: &mut ResponseHeader) -> pingora::Result<()> {
        for name in &self.remove {
            resp.remove_header(name);
        }
        for (name, value) in &self.set {
            resp.insert_header(name.clone(), value.clone())?;
        }
        for (name, value) in &self.add {
            resp.append_header(name.clone(), value.clone())?;
        }
        Ok(())
    }
}

/// `X-Forwarded-For` (a constant: looking a header up by `&str` parses the name every time).
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`.
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`.
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Whether a client-supplied request id is safe to keep (printable, bounded).
pub fn acceptable_request_id(v: &[u8]) -> bool {
    !v.is_empty() && v.len() <= 128 && v.iter().all(|b| b.is_ascii_graphic())
}

/// A fresh 128-bit request id in lower-case hex, as a header value (written by hand: this runs
/// on every request, and `format!` costs several times the random number).
pub fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let id: u128 = rand::random();
    let mut text = [0u8; 32];
    for (i, digit) in text.iter_mut().enumerate() {
        *digit = HEX[((id >> (124 - 4 * i)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&text).unwrap_or(HeaderValue::from_static(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_fresh_lower_case_hex() {
        let a = new_request_id();
        let b = new_request_id();
        assert_ne!(a, b);
        for id in [a, b] {
            assert_eq!(id.len(), 32);
            assert!(id
                .as_bytes()
                .iter()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c)));
        }
    }
}
