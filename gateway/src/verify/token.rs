//! Token parsing and the verified token: strict JSON, NumericDates, claim lists, identity
//! header values, and the compact [`VerifiedToken`] the cache holds.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use http::HeaderValue;
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};

use super::{AuthError, Issuer};
use crate::jwks::VerifyKey;

/// Which identity header each slot of [`VerifiedToken::identity`] holds, in sending order.
pub const IDENTITY_SLOTS: [&str; 8] = [
    "subject", "issuer", "scopes", "roles", "session", "token-id", "method", "claims",
];
const SLOT_SUBJECT: usize = 0;
const SLOT_SESSION: usize = 4;
pub(super) const SLOT_CLAIMS: usize = 7;

/// List claims kept for route policies, in the order their items are stored.
pub(super) const LIST_SCOPES: usize = 0;
pub(super) const LIST_ROLES: usize = 1;
pub(super) const LIST_AMR: usize = 2;
pub(super) const LIST_AUDIENCES: usize = 3;

/// A verified token: its issuer, the facts route policies need, and the identity headers.
///
/// Cached for every distinct token, so it is kept compact (≈ 1 KiB for an issuer-shaped
/// token, see bench/findings.md): one shared `Bytes` holds every identity header value (the
/// `X-Auth-Claims` value is the payload segment as sent) and the audience strings; the header
/// values and list items are slices of it. The full claims are parsed again from the payload
/// only for routes that need them (claim rules, claim headers).
pub struct VerifiedToken {
    /// Issuer that verified it.
    pub issuer: Arc<Issuer>,
    /// Expiry (seconds since the epoch).
    pub exp: u64,
    /// `auth_time`, else `iat`.
    pub auth_time: Option<u64>,
    /// `iat` (a subject's revocation cut-off is compared with it).
    pub iat: Option<u64>,
    /// Digests of `sid` and `sub` for the issuer's revocation check (empty without a feed).
    pub(crate) revocation_keys: crate::revocation::TokenKeys,
    /// Key-set generation at verification time (skip the revocation check while unchanged).
    pub key_generation: u64,
    /// The key that verified it (its thumbprint is checked against later key sets).
    pub(super) key: Arc<VerifyKey>,
    /// Identity header values by [`IDENTITY_SLOTS`] position, sharing `text`.
    pub(super) identity: [Option<HeaderValue>; 8],
    /// Every header value, then the audiences.
    pub(super) text: Bytes,
    /// `(start, end)` of each list item in `text`: scopes, roles, amr, audiences.
    pub(super) items: Box<[(u32, u32)]>,
    /// End of each list in `items` (scopes, roles, amr, audiences).
    pub(super) list_ends: [u16; 4],
    /// The token's header part in `text` (for [`Self::is_token`]).
    pub(super) head: (u32, u32),
    /// The token's signature part in `text`.
    pub(super) signature: (u32, u32),
}

impl VerifiedToken {
    /// `sub`, if any.
    pub fn subject(&self) -> Option<&str> {
        self.identity[SLOT_SUBJECT]
            .as_ref()
            .and_then(|v| v.to_str().ok())
    }

    /// `sid`, if any.
    pub fn session(&self) -> Option<&str> {
        self.identity[SLOT_SESSION]
            .as_ref()
            .and_then(|v| v.to_str().ok())
    }

    /// Whether this is the verification of exactly `token` (header, payload and signature
    /// compared byte for byte): what makes a cache hit safe under a non-cryptographic key.
    #[inline]
    pub(super) fn is_token(&self, token: &str) -> bool {
        let span = |(a, b): (u32, u32)| self.text.get(a as usize..b as usize).unwrap_or(&[]);
        let (head, signature) = (span(self.head), span(self.signature));
        let payload = self.identity[SLOT_CLAIMS]
            .as_ref()
            .map_or(&[][..], |v| v.as_bytes());
        let t = token.as_bytes();
        let (h, p) = (head.len(), payload.len());
        t.len() == h + p + signature.len() + 2
            && &t[..h] == head
            && t[h] == b'.'
            && &t[h + 1..h + 1 + p] == payload
            && t[h + 1 + p] == b'.'
            && &t[h + 2 + p..] == signature
    }

    /// Thumbprint of the key that verified it.
    pub fn key_thumbprint(&self) -> &str {
        &self.key.thumbprint
    }

    /// The default identity headers present for this token: (suffix slot, value).
    pub fn identity(&self) -> impl Iterator<Item = (usize, &HeaderValue)> {
        self.identity
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.as_ref().map(|v| (i, v)))
    }

    #[inline]
    pub(super) fn list(&self, which: usize) -> impl Iterator<Item = &str> + Clone {
        let start = if which == 0 {
            0
        } else {
            self.list_ends[which - 1] as usize
        };
        let end = self.list_ends[which] as usize;
        self.items[start..end].iter().map(|&(a, b)| {
            // Built from `&str` pieces at verification time, so always UTF-8.
            std::str::from_utf8(&self.text[a as usize..b as usize]).unwrap_or("")
        })
    }

    /// `aud` as a list.
    pub fn audiences(&self) -> impl Iterator<Item = &str> + Clone {
        self.list(LIST_AUDIENCES)
    }

    /// `scope` / `scp` as a list.
    pub fn scopes(&self) -> impl Iterator<Item = &str> + Clone {
        self.list(LIST_SCOPES)
    }

    /// `roles` as a list.
    pub fn roles(&self) -> impl Iterator<Item = &str> + Clone {
        self.list(LIST_ROLES)
    }

    /// `amr` as a list.
    pub fn amr(&self) -> impl Iterator<Item = &str> + Clone {
        self.list(LIST_AMR)
    }

    /// All claims, parsed again from the payload (routes with claim rules or claim headers).
    pub fn claims(&self) -> Result<Map<String, Value>, AuthError> {
        let p64 = self.identity[SLOT_CLAIMS]
            .as_ref()
            .ok_or(AuthError::Malformed)?;
        let json = URL_SAFE_NO_PAD
            .decode(p64.as_bytes())
            .map_err(|_| AuthError::Malformed)?;
        parse_object(&json)
    }

    /// Approximate heap bytes this entry holds (the cache's byte bound).
    pub fn approx_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.text.len()
            + self.items.len() * std::mem::size_of::<(u32, u32)>()
    }
}

/// A claim by dotted path (`app_metadata.plan`) in parsed claims.
pub fn claim_at<'a>(claims: &'a Map<String, Value>, path: &[String]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    let mut v = claims.get(first)?;
    for seg in rest {
        v = v.as_object()?.get(seg)?;
    }
    Some(v)
}

/// Collects a verified token's text into one buffer, recording where each piece lies.
#[derive(Default)]
pub(super) struct TextBuilder {
    pub(super) buf: Vec<u8>,
    pub(super) values: [Option<(u32, u32)>; 8],
    pub(super) items: Vec<(u32, u32)>,
    pub(super) list_ends: [u16; 4],
}

impl TextBuilder {
    #[inline]
    pub(super) fn pos(&self) -> Result<u32, AuthError> {
        u32::try_from(self.buf.len()).map_err(|_| AuthError::InvalidClaim)
    }

    /// Appends `s`, refusing text that could break header framing (control characters,
    /// DEL) or that `HeaderValue::from_str` would refuse (non-ASCII).
    #[inline]
    pub(super) fn push(&mut self, s: &str) -> Result<(u32, u32), AuthError> {
        if !s.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return Err(AuthError::InvalidClaim);
        }
        let start = self.pos()?;
        self.buf.extend_from_slice(s.as_bytes());
        Ok((start, self.pos()?))
    }

    /// Appends text that is never sent as a header (token parts kept for comparison, list
    /// items), so not checked for header safety.
    #[inline]
    pub(super) fn raw(&mut self, s: &str) -> Result<(u32, u32), AuthError> {
        let start = self.pos()?;
        self.buf.extend_from_slice(s.as_bytes());
        Ok((start, self.pos()?))
    }

    /// One identity header value.
    #[inline]
    pub(super) fn value(&mut self, slot: usize, s: &str) -> Result<(), AuthError> {
        self.values[slot] = Some(self.push(s)?);
        Ok(())
    }

    /// An identity header value made of `list` joined by `sep`; the items are recorded as
    /// list `which` (lists must be added in order).
    pub(super) fn joined(
        &mut self,
        slot: usize,
        which: usize,
        list: &[&str],
        sep: &str,
    ) -> Result<(), AuthError> {
        let start = self.pos()?;
        for (i, item) in list.iter().enumerate() {
            if i > 0 {
                self.push(sep)?;
            }
            let span = self.push(item)?;
            self.items.push(span);
        }
        self.values[slot] = Some((start, self.pos()?));
        self.end_list(which)
    }

    /// List `which` made of items appended now, not sent in any header (so any UTF-8).
    #[inline]
    pub(super) fn list(&mut self, which: usize, list: &[&str]) -> Result<(), AuthError> {
        for item in list {
            let span = self.raw(item)?;
            self.items.push(span);
        }
        self.end_list(which)
    }

    #[inline]
    pub(super) fn end_list(&mut self, which: usize) -> Result<(), AuthError> {
        self.list_ends[which] =
            u16::try_from(self.items.len()).map_err(|_| AuthError::InvalidClaim)?;
        Ok(())
    }
}

/// Seconds since the epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Largest accepted NumericDate (9999-12-31): anything beyond is nonsense, not "forever".
const MAX_NUMERIC_DATE: f64 = 253_402_300_799.0;

/// Parses a JSON object rejecting duplicate member names at any depth (two parsers could
/// otherwise disagree on which value counts).
pub(super) fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, AuthError> {
    struct Strict(Value);
    impl<'de> serde::Deserialize<'de> for Strict {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(StrictVisitor).map(Strict)
        }
    }
    struct StrictVisitor;
    impl<'de> serde::de::Visitor<'de> for StrictVisitor {
        type Value = Value;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("JSON")
        }
        fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
            Ok(Value::Bool(v))
        }
        fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
            Ok(Value::from(v))
        }
        fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
            Ok(Value::from(v))
        }
        fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
            Ok(serde_json::Number::from_f64(v)
                .map(Value::Number)
                .unwrap_or(Value::Null))
        }
        fn visit_str<E>(self, v: &str) -> Result<Value, E> {
            Ok(Value::String(v.to_string()))
        }
        fn visit_string<E>(self, v: String) -> Result<Value, E> {
            Ok(Value::String(v))
        }
        fn visit_unit<E>(self) -> Result<Value, E> {
            Ok(Value::Null)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
            let mut out = Vec::new();
            while let Some(Strict(v)) = seq.next_element()? {
                out.push(v);
            }
            Ok(Value::Array(out))
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
            let mut out = Map::new();
            while let Some(key) = map.next_key::<String>()? {
                let Strict(v) = map.next_value()?;
                if out.insert(key, v).is_some() {
                    return Err(serde::de::Error::custom("duplicate member"));
                }
            }
            Ok(Value::Object(out))
        }
    }
    match serde_json::from_slice::<Strict>(bytes) {
        Ok(Strict(Value::Object(m))) => Ok(m),
        _ => Err(AuthError::Malformed),
    }
}

#[inline]
pub(super) fn b64(segment: &str) -> Result<Vec<u8>, AuthError> {
    // The no-pad engine refuses `=` padding and non-alphabet characters.
    URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| AuthError::Malformed)
}

#[inline]
pub(super) fn numeric_date(
    claims: &Map<String, Value>,
    name: &str,
) -> Result<Option<u64>, AuthError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => {
            let f = n.as_f64().ok_or(AuthError::InvalidClaim)?;
            if !f.is_finite() || !(0.0..=MAX_NUMERIC_DATE).contains(&f) {
                return Err(AuthError::InvalidClaim);
            }
            Ok(Some(f as u64))
        }
        Some(_) => Err(AuthError::InvalidClaim),
    }
}

#[inline]
pub(super) fn string_list(
    v: Option<&Value>,
    space_separated: bool,
) -> Result<Vec<&str>, AuthError> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) if space_separated => {
            // RFC 6749 scope tokens are printable; control characters mean a forged claim.
            if s.chars().any(|c| c.is_control()) {
                return Err(AuthError::InvalidClaim);
            }
            Ok(s.split(' ').filter(|t| !t.is_empty()).collect())
        }
        Some(Value::String(s)) => Ok(vec![s.as_str()]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| i.as_str().ok_or(AuthError::InvalidClaim))
            .collect(),
        Some(_) => Err(AuthError::InvalidClaim),
    }
}

/// Header values may carry claim text only when it cannot break the header framing.
#[inline]
pub fn header_value(s: &str) -> Result<HeaderValue, AuthError> {
    if s.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Err(AuthError::InvalidClaim);
    }
    HeaderValue::from_str(s).map_err(|_| AuthError::InvalidClaim)
}

#[inline]
pub(super) fn parse_alg(alg: &str) -> Option<Algorithm> {
    // Exact, case-sensitive names (RFC 7518); `none` in any case is not among them. A table,
    // not `FromStr` + `Debug` re-formatting, so the miss path allocates nothing here.
    Some(match alg {
        "HS256" => Algorithm::HS256,
        "HS384" => Algorithm::HS384,
        "HS512" => Algorithm::HS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "EdDSA" => Algorithm::EdDSA,
        _ => return None,
    })
}

/// Whether `typ` equals one of the `allowed` canonical (lower-case) values, compared as
/// `canonical_typ` would but without allocating on the miss path.
#[inline]
pub(super) fn typ_allowed(typ: &str, allowed: &[String]) -> bool {
    const PREFIX: &str = "application/";
    let bare = match typ.get(..PREFIX.len()) {
        Some(head) if head.eq_ignore_ascii_case(PREFIX) => &typ[PREFIX.len()..],
        _ => typ,
    };
    allowed.iter().any(|a| a.eq_ignore_ascii_case(bare))
}

/// Normalises a `typ` value for comparison (RFC 8725 §3.11: case-insensitive, optional
/// `application/` prefix).
pub fn canonical_typ(t: &str) -> String {
    let lower = t.to_ascii_lowercase();
    lower
        .strip_prefix("application/")
        .map(str::to_string)
        .unwrap_or(lower)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_json_objects() {
        assert!(parse_object(br#"{"a":1,"b":{"c":2}}"#).is_ok());
        assert_eq!(parse_object(br#"{"a":1,"a":2}"#), Err(AuthError::Malformed));
        assert_eq!(
            parse_object(br#"{"a":{"c":1,"c":2}}"#),
            Err(AuthError::Malformed)
        );
        assert_eq!(parse_object(br#"[1,2]"#), Err(AuthError::Malformed));
        assert_eq!(parse_object(br#""x""#), Err(AuthError::Malformed));
        assert_eq!(parse_object(b"not json"), Err(AuthError::Malformed));
    }

    #[test]
    fn algorithm_names_are_exact() {
        assert_eq!(parse_alg("RS256"), Some(Algorithm::RS256));
        assert_eq!(parse_alg("EdDSA"), Some(Algorithm::EdDSA));
        for bad in ["none", "None", "NONE", "rs256", "HS256 ", ""] {
            assert_eq!(parse_alg(bad), None, "{bad}");
        }
    }

    #[test]
    fn numeric_dates_are_typed() {
        let m = |v: Value| {
            parse_object(serde_json::json!({ "exp": v }).to_string().as_bytes()).unwrap()
        };
        assert_eq!(numeric_date(&m(Value::from(10)), "exp"), Ok(Some(10)));
        assert_eq!(
            numeric_date(&m(Value::from("10")), "exp"),
            Err(AuthError::InvalidClaim)
        );
        assert_eq!(
            numeric_date(&m(Value::from(1e300)), "exp"),
            Err(AuthError::InvalidClaim)
        );
        assert_eq!(
            numeric_date(&m(Value::from(-1)), "exp"),
            Err(AuthError::InvalidClaim)
        );
    }

    #[test]
    fn header_values_never_carry_control_characters() {
        assert!(header_value("alice").is_ok());
        assert!(header_value("a\r\nX-Auth-Roles: admin").is_err());
        assert!(header_value("a\u{0}").is_err());
        assert_eq!(canonical_typ("application/AT+JWT"), "at+jwt");
        let allowed = vec![canonical_typ("at+jwt")];
        for ok in [
            "at+jwt",
            "AT+JWT",
            "application/at+jwt",
            "Application/At+Jwt",
        ] {
            assert!(typ_allowed(ok, &allowed), "{ok}");
        }
        for bad in [
            "jwt",
            "application/jwt",
            "xapplication/at+jwt",
            "at+jwt ",
            "",
            "applicatio",
        ] {
            assert!(!typ_allowed(bad, &allowed), "{bad}");
        }
    }
}
