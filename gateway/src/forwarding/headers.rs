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

/// Whether a client-supplied request id is safe to keep (printable, bounded).
pub fn acceptable_request_id(v: &[u8]) -> bool {
    !v.is_empty() && v.len() <= 128 && v.iter().all(|b| b.is_ascii_graphic())
}

/// A fresh 128-bit request id in hex.
pub fn new_request_id() -> String {
    let id: u128 = rand::random();
    format!("{id:032x}")
}
