//! In-process JWT verification: strict parsing, key selection from the issuer's cached JWKS,
//! signature check, time and type rules, and a verified-token cache.
//!
//! The token's own header never decides how it is verified: the issuer is chosen by `iss`,
//! the algorithm must be on that issuer's allow-list and fit the key's type, and keys come
//! only from configuration (`jwk`, `jku`, `x5u`, `x5c` headers are never used).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use http::HeaderValue;
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::jwks::{IssuerKeys, KeyLookup, VerifyKey};

/// A trusted issuer, compiled from config.
pub struct Issuer {
    /// Config label.
    pub name: String,
    /// Exact `iss`.
    pub iss: String,
    /// Its keys (shared across reloads).
    pub keys: Arc<IssuerKeys>,
    /// Allowed algorithms.
    pub algorithms: Vec<Algorithm>,
    /// Default audiences (empty: no audience check unless the route asks).
    pub audiences: Vec<String>,
    /// Clock skew allowance in seconds.
    pub leeway: u64,
    /// Accepted `typ` values, lower case without `application/`; empty disables the check.
    pub typ: Vec<String>,
    /// Whether readiness waits for its keys.
    pub required: bool,
}

/// Why a token was refused. `reason()` is the metrics label; `description()` is safe to
/// send to clients (never token contents).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum AuthError {
    /// No token in the request.
    #[error("no token")]
    Missing,
    /// Larger than the configured limit.
    #[error("token too large")]
    TooLarge,
    /// Not a compact JWS with valid base64url JSON objects.
    #[error("malformed token")]
    Malformed,
    /// `alg` unknown, `none`, or not allowed for the issuer.
    #[error("algorithm not allowed")]
    AlgorithmNotAllowed,
    /// `typ` not accepted.
    #[error("wrong token type")]
    WrongType,
    /// `crit` names extensions we do not understand.
    #[error("unsupported critical header")]
    UnsupportedCrit,
    /// `iss` missing or not a trusted issuer.
    #[error("untrusted issuer")]
    UntrustedIssuer,
    /// The issuer has no usable keys (never fetched, or stale beyond `max_stale`).
    #[error("issuer keys unavailable")]
    KeysUnavailable,
    /// `kid` not in the issuer's key set (after a refetch).
    #[error("unknown key")]
    UnknownKid,
    /// No key of the right type for this token.
    #[error("no matching key")]
    NoMatchingKey,
    /// The signature does not verify.
    #[error("bad signature")]
    BadSignature,
    /// `exp` has passed (beyond leeway).
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("token not yet valid")]
    NotYetValid,
    /// `iat` is in the future.
    #[error("token issued in the future")]
    IssuedInFuture,
    /// A registered claim has the wrong type or an impossible value.
    #[error("invalid claim")]
    InvalidClaim,
    /// `aud` does not name an accepted audience.
    #[error("wrong audience")]
    WrongAudience,
    /// The key that verified a cached token was removed from the issuer's set.
    #[error("key revoked")]
    KeyRevoked,
}

impl AuthError {
    /// Short label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::TooLarge => "too_large",
            AuthError::Malformed => "malformed",
            AuthError::AlgorithmNotAllowed => "algorithm",
            AuthError::WrongType => "wrong_type",
            AuthError::UnsupportedCrit => "crit",
            AuthError::UntrustedIssuer => "untrusted_issuer",
            AuthError::KeysUnavailable => "keys_unavailable",
            AuthError::UnknownKid => "unknown_kid",
            AuthError::NoMatchingKey => "no_matching_key",
            AuthError::BadSignature => "bad_signature",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::IssuedInFuture => "issued_in_future",
            AuthError::InvalidClaim => "invalid_claim",
            AuthError::WrongAudience => "wrong_audience",
            AuthError::KeyRevoked => "key_revoked",
        }
    }

    /// Human-readable description for `WWW-Authenticate` and the JSON body.
    pub fn description(&self) -> &'static str {
        match self {
            AuthError::Missing => "a bearer token is required",
            AuthError::TooLarge => "the token is too large",
            AuthError::Malformed => "the token is malformed",
            AuthError::AlgorithmNotAllowed => "the token's signing algorithm is not accepted",
            AuthError::WrongType => "the token is not an access token",
            AuthError::UnsupportedCrit => "the token requires unsupported header extensions",
            AuthError::UntrustedIssuer => "the token's issuer is not trusted",
            AuthError::KeysUnavailable => "the issuer's signing keys are unavailable",
            AuthError::UnknownKid => "the token was signed with an unknown key",
            AuthError::NoMatchingKey => "no trusted key matches the token",
            AuthError::BadSignature => "the token signature is invalid",
            AuthError::Expired => "the token has expired",
            AuthError::NotYetValid => "the token is not valid yet",
            AuthError::IssuedInFuture => "the token was issued in the future",
            AuthError::InvalidClaim => "the token has an invalid claim",
            AuthError::WrongAudience => "the token is not meant for this audience",
            AuthError::KeyRevoked => "the token's signing key has been retired",
        }
    }
}

/// Which identity header each slot of [`VerifiedToken::identity`] holds, in sending order.
pub const IDENTITY_SLOTS: [&str; 8] = [
    "subject", "issuer", "scopes", "roles", "session", "token-id", "method", "claims",
];
const SLOT_SUBJECT: usize = 0;
const SLOT_SESSION: usize = 4;
const SLOT_CLAIMS: usize = 7;

/// List claims kept for route policies, in the order their items are stored.
const LIST_SCOPES: usize = 0;
const LIST_ROLES: usize = 1;
const LIST_AMR: usize = 2;
const LIST_AUDIENCES: usize = 3;

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
    /// Key-set generation at verification time (skip the revocation check while unchanged).
    pub key_generation: u64,
    /// The key that verified it (its thumbprint is checked against later key sets).
    key: Arc<VerifyKey>,
    /// Identity header values by [`IDENTITY_SLOTS`] position, sharing `text`.
    identity: [Option<HeaderValue>; 8],
    /// Every header value, then the audiences.
    text: Bytes,
    /// `(start, end)` of each list item in `text`: scopes, roles, amr, audiences.
    items: Box<[(u32, u32)]>,
    /// End of each list in `items` (scopes, roles, amr, audiences).
    list_ends: [u16; 4],
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

    fn list(&self, which: usize) -> impl Iterator<Item = &str> + Clone {
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
struct TextBuilder {
    buf: Vec<u8>,
    values: [Option<(u32, u32)>; 8],
    items: Vec<(u32, u32)>,
    list_ends: [u16; 4],
}

impl TextBuilder {
    fn pos(&self) -> Result<u32, AuthError> {
        u32::try_from(self.buf.len()).map_err(|_| AuthError::InvalidClaim)
    }

    /// Appends `s`, refusing text that could break header framing (control characters,
    /// DEL) or that `HeaderValue::from_str` would refuse (non-ASCII).
    fn push(&mut self, s: &str) -> Result<(u32, u32), AuthError> {
        if !s.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return Err(AuthError::InvalidClaim);
        }
        let start = self.pos()?;
        self.buf.extend_from_slice(s.as_bytes());
        Ok((start, self.pos()?))
    }

    /// One identity header value.
    fn value(&mut self, slot: usize, s: &str) -> Result<(), AuthError> {
        self.values[slot] = Some(self.push(s)?);
        Ok(())
    }

    /// An identity header value made of `list` joined by `sep`; the items are recorded as
    /// list `which` (lists must be added in order).
    fn joined(
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
    fn list(&mut self, which: usize, list: &[&str]) -> Result<(), AuthError> {
        for item in list {
            let start = self.pos()?;
            self.buf.extend_from_slice(item.as_bytes());
            self.items.push((start, self.pos()?));
        }
        self.end_list(which)
    }

    fn end_list(&mut self, which: usize) -> Result<(), AuthError> {
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
fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, AuthError> {
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

fn b64(segment: &str) -> Result<Vec<u8>, AuthError> {
    // The no-pad engine refuses `=` padding and non-alphabet characters.
    URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| AuthError::Malformed)
}

fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<u64>, AuthError> {
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

fn string_list(v: Option<&Value>, space_separated: bool) -> Result<Vec<&str>, AuthError> {
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
pub fn header_value(s: &str) -> Result<HeaderValue, AuthError> {
    if s.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Err(AuthError::InvalidClaim);
    }
    HeaderValue::from_str(s).map_err(|_| AuthError::InvalidClaim)
}

fn parse_alg(alg: &str) -> Option<Algorithm> {
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
fn typ_allowed(typ: &str, allowed: &[String]) -> bool {
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

/// Cached verification results, shared by every config generation.
pub struct TokenCache {
    cache: moka::sync::Cache<[u8; 32], Arc<VerifiedToken>>,
}

/// moka's own bookkeeping per entry (entry info, hash-table bucket, deque and timer-wheel
/// nodes, the key), added to each entry's weight; measured with the `cache_memory` example.
const ENTRY_OVERHEAD: usize = 320;

struct ExpireAtExp;

impl moka::Expiry<[u8; 32], Arc<VerifiedToken>> for ExpireAtExp {
    fn expire_after_create(
        &self,
        _k: &[u8; 32],
        v: &Arc<VerifiedToken>,
        _now: std::time::Instant,
    ) -> Option<Duration> {
        // Never outlive the token (leeway included: the hit path re-checks exp anyway).
        Some(Duration::from_secs(
            v.exp
                .saturating_add(v.issuer.leeway)
                .saturating_sub(now_secs()),
        ))
    }
}

impl TokenCache {
    /// A cache bounded to `max_entries` tokens.
    pub fn new(max_entries: u64) -> Self {
        Self::with_limits(max_entries, None)
    }

    /// A cache bounded to `max_entries` tokens and, if given, about `max_bytes` of memory,
    /// whichever is reached first.
    pub fn with_limits(max_entries: u64, max_bytes: Option<u64>) -> Self {
        let max_entries = max_entries.max(1);
        let builder = moka::sync::Cache::builder().expire_after(ExpireAtExp);
        let cache = match max_bytes {
            None => builder.max_capacity(max_entries).build(),
            Some(max_bytes) => {
                // One weighted bound for both limits: every entry weighs at least
                // `max_bytes / max_entries`, so no more than `max_entries` fit, and at least
                // its size in bytes, so no more than `max_bytes` are held.
                let max_bytes = max_bytes.max(1);
                let floor = (max_bytes / max_entries).max(1);
                builder
                    .max_capacity(max_bytes)
                    .weigher(move |_k: &[u8; 32], v: &Arc<VerifiedToken>| -> u32 {
                        let bytes = (v.approx_bytes() + ENTRY_OVERHEAD) as u64;
                        bytes.max(floor).min(max_bytes).min(u32::MAX as u64) as u32
                    })
                    .build()
            }
        };
        TokenCache { cache }
    }

    /// Number of cached tokens (approximate).
    pub fn len(&self) -> u64 {
        self.cache.entry_count()
    }

    /// Whether the cache is empty (approximate).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Total weight of the cached tokens: approximate bytes with a byte bound, else entries.
    pub fn weighted_size(&self) -> u64 {
        self.cache.weighted_size()
    }

    /// Applies pending inserts and evictions now, so `len` is exact (tests, measurements).
    pub fn run_pending_tasks(&self) {
        self.cache.run_pending_tasks();
    }
}

/// Outcome counters the verifier reports (wired to Prometheus by the caller).
pub trait VerifyObserver: Send + Sync {
    /// A cache lookup hit or missed.
    fn cache(&self, hit: bool);
}

/// Verifies tokens for one config generation.
pub struct Verifier {
    issuers: HashMap<String, Arc<Issuer>>,
    max_token_size: usize,
    /// Salt for cache keys so a reload (new rules) never reuses older results.
    generation: u64,
    cache: Arc<TokenCache>,
}

impl Verifier {
    /// A verifier over `issuers`, caching in `cache` under `generation`.
    pub fn new(
        issuers: Vec<Arc<Issuer>>,
        max_token_size: usize,
        generation: u64,
        cache: Arc<TokenCache>,
    ) -> Self {
        Verifier {
            issuers: issuers.into_iter().map(|i| (i.iss.clone(), i)).collect(),
            max_token_size,
            generation,
            cache,
        }
    }

    /// The trusted issuers.
    pub fn issuers(&self) -> impl Iterator<Item = &Arc<Issuer>> {
        self.issuers.values()
    }

    /// Whether every required issuer has keys.
    pub fn ready(&self) -> bool {
        self.issuers
            .values()
            .all(|i| !i.required || i.keys.is_ready())
    }

    fn cache_key(&self, token: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.generation.to_le_bytes());
        h.update(token.as_bytes());
        h.finalize().into()
    }

    /// Verifies a token, from the cache when possible.
    pub async fn verify(
        &self,
        token: &str,
        observer: &dyn VerifyObserver,
    ) -> Result<Arc<VerifiedToken>, AuthError> {
        // Size first: nothing about an oversized token is looked at, hashed or decoded.
        if token.len() > self.max_token_size {
            return Err(AuthError::TooLarge);
        }
        let key = self.cache_key(token);
        if let Some(hit) = self.cache.cache.get(&key) {
            observer.cache(true);
            let now = now_secs();
            if hit.exp.saturating_add(hit.issuer.leeway) <= now {
                self.cache.cache.invalidate(&key);
                return Err(AuthError::Expired);
            }
            match hit.issuer.keys.current() {
                Some(set)
                    if set.generation == hit.key_generation
                        || set.contains_thumbprint(hit.key_thumbprint()) =>
                {
                    return Ok(hit)
                }
                Some(_) => {
                    self.cache.cache.invalidate(&key);
                    return Err(AuthError::KeyRevoked);
                }
                None => return Err(AuthError::KeysUnavailable),
            }
        }
        observer.cache(false);
        let verified = Arc::new(self.verify_uncached(token).await?);
        self.cache.cache.insert(key, verified.clone());
        Ok(verified)
    }

    async fn verify_uncached(&self, token: &str) -> Result<VerifiedToken, AuthError> {
        let mut parts = token.split('.');
        let (Some(h64), Some(p64), Some(s64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Malformed);
        };
        if h64.is_empty() || p64.is_empty() || s64.is_empty() {
            return Err(AuthError::Malformed);
        }
        let header = parse_object(&b64(h64)?)?;
        let claims = parse_object(&b64(p64)?)?;
        // Decode the signature now so malformed encodings fail as such, not as bad signatures;
        // into a stack buffer (RSA-8192 at most is 1,024 bytes) so the miss path allocates
        // nothing for it.
        let mut sig = [0u8; 1024];
        if URL_SAFE_NO_PAD.decode_slice(s64, &mut sig).is_err() {
            b64(s64)?;
        }

        let alg_name = header
            .get("alg")
            .and_then(Value::as_str)
            .ok_or(AuthError::Malformed)?;
        let alg = parse_alg(alg_name).ok_or(AuthError::AlgorithmNotAllowed)?;
        if header.contains_key("crit") {
            // We implement no JWS extensions, so any critical one must be refused (RFC 7515 §4.1.11).
            return Err(AuthError::UnsupportedCrit);
        }
        let iss = match claims.get("iss") {
            Some(Value::String(s)) => s.as_str(),
            Some(_) => return Err(AuthError::InvalidClaim),
            None => return Err(AuthError::UntrustedIssuer),
        };
        let issuer = self
            .issuers
            .get(iss)
            .cloned()
            .ok_or(AuthError::UntrustedIssuer)?;
        if !issuer.algorithms.contains(&alg) {
            return Err(AuthError::AlgorithmNotAllowed);
        }
        if !issuer.typ.is_empty() {
            let typ = match header.get("typ") {
                Some(Value::String(t)) => t.as_str(),
                Some(_) => return Err(AuthError::Malformed),
                None => return Err(AuthError::WrongType),
            };
            if !typ_allowed(typ, &issuer.typ) {
                return Err(AuthError::WrongType);
            }
        }
        let kid = match header.get("kid") {
            None => None,
            Some(Value::String(k)) => Some(k.as_str()),
            Some(_) => return Err(AuthError::Malformed),
        };

        let mut set = issuer.keys.current().ok_or(AuthError::KeysUnavailable)?;
        let mut lookup = set.lookup(kid, alg);
        if let (KeyLookup::UnknownKid, Some(kid)) = (&lookup, kid) {
            // Key rotation: the issuer may have published a new key since our last fetch.
            set = issuer
                .keys
                .refetch_for_unknown_kid(kid)
                .await
                .ok_or(AuthError::KeysUnavailable)?;
            lookup = set.lookup(Some(kid), alg);
        }
        let key = match lookup {
            KeyLookup::Found(k) => k,
            KeyLookup::UnknownKid => return Err(AuthError::UnknownKid),
            KeyLookup::NoMatchingKey => return Err(AuthError::NoMatchingKey),
        };
        let signing_input_len = h64.len() + 1 + p64.len();
        let signing_input = &token.as_bytes()[..signing_input_len];
        match jsonwebtoken::crypto::verify(s64, signing_input, &key.key, alg) {
            Ok(true) => {}
            _ => return Err(AuthError::BadSignature),
        }

        // Registered claims, with strict types.
        let now = now_secs();
        let leeway = issuer.leeway;
        let exp = numeric_date(&claims, "exp")?.ok_or(AuthError::InvalidClaim)?;
        if exp.saturating_add(leeway) <= now {
            return Err(AuthError::Expired);
        }
        if let Some(nbf) = numeric_date(&claims, "nbf")? {
            if nbf > now.saturating_add(leeway) {
                return Err(AuthError::NotYetValid);
            }
        }
        let iat = numeric_date(&claims, "iat")?;
        if iat.is_some_and(|iat| iat > now.saturating_add(leeway)) {
            return Err(AuthError::IssuedInFuture);
        }
        let auth_time = numeric_date(&claims, "auth_time")?.or(iat);
        // The audience is checked per route (a route may replace the issuer's defaults), so
        // that a cached result never depends on which route asked.
        let audiences = string_list(claims.get("aud"), false)?;
        for name in ["sub", "sid", "jti"] {
            if claims.get(name).is_some_and(|v| !v.is_string()) {
                return Err(AuthError::InvalidClaim);
            }
        }
        let mut scopes = string_list(claims.get("scope"), true)?;
        scopes.extend(string_list(claims.get("scp"), true)?);
        let roles = string_list(claims.get("roles"), false)?;
        let amr = string_list(claims.get("amr"), false)?;

        // Identity header values, in sending order, then the audiences: one buffer.
        let text = |name: &str| claims.get(name).and_then(Value::as_str);
        let mut t = TextBuilder::default();
        // Exactly the bytes appended below, so `into_boxed_slice` need not shrink (copy) it.
        let joined_len = |l: &[&str]| {
            l.iter()
                .map(|s| s.len() + 1)
                .sum::<usize>()
                .saturating_sub(1)
        };
        let opt_len = |name: &str| text(name).map_or(0, str::len);
        t.buf.reserve_exact(
            opt_len("sub")
                + iss.len()
                + joined_len(&scopes)
                + joined_len(&roles)
                + opt_len("sid")
                + opt_len("jti")
                + joined_len(&amr)
                + p64.len()
                + audiences.iter().map(|a| a.len()).sum::<usize>(),
        );
        // Exact: no growth on the way and no shrinking copy in `into_boxed_slice`.
        t.items
            .reserve_exact(scopes.len() + roles.len() + amr.len() + audiences.len());
        if let Some(sub) = text("sub") {
            t.value(0, sub)?;
        }
        t.value(1, iss)?;
        t.joined(2, LIST_SCOPES, &scopes, " ")?;
        t.joined(3, LIST_ROLES, &roles, ",")?;
        if let Some(sid) = text("sid") {
            t.value(4, sid)?;
        }
        if let Some(jti) = text("jti") {
            t.value(5, jti)?;
        }
        t.joined(6, LIST_AMR, &amr, ",")?;
        t.value(SLOT_CLAIMS, p64)?;
        t.list(LIST_AUDIENCES, &audiences)?;

        let TextBuilder {
            buf,
            values,
            items,
            list_ends,
        } = t;
        // Exact size: cached for the token's lifetime, spare capacity would be waste.
        let text = Bytes::from(buf.into_boxed_slice());
        let mut identity: [Option<HeaderValue>; 8] = Default::default();
        for (slot, span) in identity.iter_mut().zip(values) {
            if let Some((a, b)) = span {
                // Shares `text`; the bytes were checked by `TextBuilder::push`.
                *slot = Some(
                    HeaderValue::from_maybe_shared(text.slice(a as usize..b as usize))
                        .map_err(|_| AuthError::InvalidClaim)?,
                );
            }
        }

        Ok(VerifiedToken {
            issuer,
            exp,
            auth_time,
            key_generation: set.generation,
            key,
            identity,
            text,
            items: items.into_boxed_slice(),
            list_ends,
        })
    }
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

    /// An HS256 issuer and a signer for its tokens (unit tests need no key files).
    fn hs_fixture() -> (Arc<Issuer>, impl Fn(&Value) -> String) {
        use crate::jwks::{hmac_key, KeySource, RefreshPolicy};
        use hmac::{Hmac, Mac};
        let secret = b"unit-test-secret-unit-test-secret".to_vec();
        let key = hmac_key(&secret, Some("k1")).expect("hmac key");
        let issuer = Arc::new(Issuer {
            name: "main".into(),
            iss: "https://iss.test".into(),
            keys: IssuerKeys::new(
                "main".into(),
                KeySource::Static(vec![key]),
                RefreshPolicy::default(),
            ),
            algorithms: vec![Algorithm::HS256],
            audiences: Vec::new(),
            leeway: 30,
            typ: Vec::new(),
            required: true,
        });
        let sign = move |claims: &Value| {
            let h64 = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","kid":"k1"}"#);
            let p64 = URL_SAFE_NO_PAD.encode(claims.to_string());
            let input = format!("{h64}.{p64}");
            let mut mac = Hmac::<Sha256>::new_from_slice(&secret).expect("hmac");
            mac.update(input.as_bytes());
            let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
            format!("{input}.{sig}")
        };
        (issuer, sign)
    }

    struct Quiet;
    impl VerifyObserver for Quiet {
        fn cache(&self, _hit: bool) {}
    }

    #[test]
    fn compact_token_keeps_every_fact() {
        let (issuer, sign) = hs_fixture();
        let verifier = Verifier::new(vec![issuer], 8192, 1, Arc::new(TokenCache::new(16)));
        let claims = serde_json::json!({
            "iss": "https://iss.test", "sub": "user-1", "aud": ["demo", "d\u{e9}mo"],
            "exp": now_secs() + 600, "iat": now_secs() - 5, "sid": "s-1", "jti": "j-1",
            "scope": "read  write", "scp": ["admin"], "roles": ["a", "b,c"], "amr": ["pwd", "otp"],
            "app_metadata": {"plan": "pro"}
        });
        let token = sign(&claims);
        let t = futures::executor::block_on(verifier.verify(&token, &Quiet)).expect("valid");
        assert_eq!(t.subject(), Some("user-1"));
        assert_eq!(t.audiences().collect::<Vec<_>>(), ["demo", "d\u{e9}mo"]);
        assert_eq!(t.scopes().collect::<Vec<_>>(), ["read", "write", "admin"]);
        // A comma inside a role stays one role (the header joins with commas, lists do not).
        assert_eq!(t.roles().collect::<Vec<_>>(), ["a", "b,c"]);
        assert_eq!(t.amr().collect::<Vec<_>>(), ["pwd", "otp"]);
        assert_eq!(t.auth_time, claims["iat"].as_u64());
        let identity: Vec<(&str, &str)> = t
            .identity()
            .map(|(slot, v)| (IDENTITY_SLOTS[slot], v.to_str().unwrap()))
            .collect();
        let p64 = token.split('.').nth(1).unwrap();
        assert_eq!(
            identity,
            [
                ("subject", "user-1"),
                ("issuer", "https://iss.test"),
                ("scopes", "read write admin"),
                ("roles", "a,b,c"),
                ("session", "s-1"),
                ("token-id", "j-1"),
                ("method", "pwd,otp"),
                ("claims", p64),
            ]
        );
        let parsed = t.claims().expect("claims parse again");
        assert_eq!(Value::Object(parsed.clone()), claims);
        let path = ["app_metadata".to_string(), "plan".to_string()];
        assert_eq!(claim_at(&parsed, &path), Some(&Value::from("pro")));
        // Non-ASCII text cannot become a header value: refused, as before.
        let mut bad = claims.clone();
        bad["sub"] = Value::from("us\u{e9}r");
        assert_eq!(
            futures::executor::block_on(verifier.verify(&sign(&bad), &Quiet)).err(),
            Some(AuthError::InvalidClaim)
        );
    }

    #[test]
    fn cache_is_bounded_by_entries_and_bytes() {
        let (issuer, sign) = hs_fixture();
        let fill = |cache: Arc<TokenCache>| {
            let verifier = Verifier::new(vec![issuer.clone()], 8192, 1, cache.clone());
            let mut weight = 0;
            for i in 0..200 {
                let claims = serde_json::json!({
                    "iss": "https://iss.test", "sub": format!("user-{i}"),
                    "exp": now_secs() + 600, "jti": format!("{i:0>40}")
                });
                let t = futures::executor::block_on(verifier.verify(&sign(&claims), &Quiet))
                    .expect("valid");
                weight = t.approx_bytes() + ENTRY_OVERHEAD;
                cache.run_pending_tasks();
            }
            weight as u64
        };
        let by_entries = Arc::new(TokenCache::with_limits(10, Some(1 << 30)));
        fill(by_entries.clone());
        assert!(by_entries.len() <= 10, "{} entries", by_entries.len());
        assert!(by_entries.len() >= 5, "{} entries", by_entries.len());

        // Room for about 8 of these tokens although 1,000 entries are allowed.
        let probe = Arc::new(TokenCache::with_limits(1000, Some(1 << 30)));
        let weight = fill(probe.clone());
        assert!(
            probe.len() >= 150,
            "no eviction without pressure: {}",
            probe.len()
        );
        let by_bytes = Arc::new(TokenCache::with_limits(1000, Some(8 * weight)));
        fill(by_bytes.clone());
        assert!(by_bytes.len() <= 8, "{} entries", by_bytes.len());
        assert!(by_bytes.weighted_size() <= 8 * weight);
        assert!(by_bytes.len() >= 2, "{} entries", by_bytes.len());
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
