//! Rate and concurrency limits on routes (`limit:`), like nginx `limit_req` / `limit_conn`,
//! but keyed by what the gateway knows: the client address, a header, or the verified
//! identity (subject, session, client id, any claim).
//!
//! Address and header limits are checked before authentication, so a flood of bad tokens is
//! cut before any signature is checked; identity limits after it, so requests that fail
//! authentication can never spend a user's budget. A request that lacks a rule's key (no
//! such header, no token on an `optional` route) is not counted by that rule, as nginx does
//! with an empty key.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Map, Value};

use super::inflight::{InflightGuard, InflightTable};
use super::rate::{key_hash, RateTable};
use crate::auth::Identity;
use crate::verify::claim_at;

pub use super::rate::Rate;

/// What a limit counts by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitKey {
    /// The client address (after trusted-proxy handling).
    Ip,
    /// A request header's value.
    Header(HeaderName),
    /// The verified `sub` (per issuer).
    Subject,
    /// The verified `sid`.
    Session,
    /// The verified `client_id` claim (RFC 9068), else `azp`.
    Client,
    /// Any verified claim, by dotted path.
    Claim(Vec<String>),
}

impl LimitKey {
    /// Whether the key comes from a verified token (checked after authentication).
    pub fn needs_identity(&self) -> bool {
        !matches!(self, LimitKey::Ip | LimitKey::Header(_))
    }

    fn needs_claims(&self) -> bool {
        matches!(self, LimitKey::Client | LimitKey::Claim(_))
    }
}

/// What a limit bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    /// Requests per period with `burst` more at once (token bucket, never delayed).
    Rate {
        /// The steady rate.
        rate: Rate,
        /// Requests allowed at once above the steady rate.
        burst: u32,
    },
    /// Requests in flight at once.
    Concurrency {
        /// The most in flight.
        max: u32,
    },
}

/// One compiled `limit:` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitRule {
    /// The name in logs, metrics and the `RateLimit` headers; rules with the same name share
    /// one budget (like an nginx zone).
    pub name: String,
    /// Salt of the rule's keys, from its name (stable across reloads).
    id: u32,
    /// What it counts by.
    pub key: LimitKey,
    /// What it bounds.
    pub kind: LimitKind,
    /// The `RateLimit-Policy` value.
    policy: HeaderValue,
}

impl LimitRule {
    /// A rule; `name` must be a token (letters, digits, `-._/:`), which the config checks.
    pub fn new(name: String, key: LimitKey, kind: LimitKind) -> LimitRule {
        let policy = match kind {
            LimitKind::Rate { rate, .. } => {
                format!("\"{name}\";q={};w={}", rate.count, rate.period.as_secs())
            }
            LimitKind::Concurrency { max } => format!("\"{name}\";q={max}"),
        };
        LimitRule {
            id: name_id(&name),
            policy: HeaderValue::from_str(&policy)
                .unwrap_or_else(|_| HeaderValue::from_static("\"limit\"")),
            name,
            key,
            kind,
        }
    }
}

/// FNV-1a of the name: the same rule keeps its buckets across reloads.
fn name_id(name: &str) -> u32 {
    name.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// The bounded tables every rule counts in; created once and carried across reloads.
pub struct LimitState {
    rates: RateTable,
    inflight: Arc<InflightTable>,
}

impl LimitState {
    /// Tables remembering at most `keys` keys each.
    pub fn new(keys: usize) -> LimitState {
        LimitState {
            rates: RateTable::new(keys),
            inflight: Arc::new(InflightTable::new(keys)),
        }
    }
}

/// Concurrency slots a request holds until it ends (dropped with the request context).
#[derive(Default)]
pub struct Held(Vec<InflightGuard>);

/// A request over a limit.
#[derive(Debug)]
pub struct Refusal {
    /// The rule's name.
    pub name: String,
    /// Seconds until a retry may succeed (at least 1).
    pub retry_after: u64,
    /// `RateLimit-Policy`.
    pub policy: HeaderValue,
    /// `RateLimit`.
    pub status: HeaderValue,
}

/// Which rules a check covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Address and header keys, before authentication.
    BeforeAuth,
    /// Identity keys, after authentication succeeded.
    AfterAuth,
}

/// What a request offers as keys.
pub struct Request<'a> {
    /// Client address as text.
    pub client_ip: Option<&'a str>,
    /// Request headers.
    pub headers: &'a HeaderMap,
    /// The verified caller, if any.
    pub identity: Option<&'a Identity>,
}

/// Counts the request against every rule of `stage`; the first rule over its limit refuses.
pub fn check(
    rules: &[LimitRule],
    stage: Stage,
    state: &LimitState,
    req: &Request<'_>,
    held: &mut Held,
) -> Result<(), Refusal> {
    let mut claims: Option<Option<Map<String, Value>>> = None;
    // Rate rules that let the request through, to give back if a later rule refuses it.
    let mut counted: Vec<(u64, Rate)> = Vec::new();
    for rule in rules {
        if rule.key.needs_identity() != (stage == Stage::AfterAuth) {
            continue;
        }
        if rule.key.needs_claims() && claims.is_none() {
            claims = Some(req.identity.and_then(|i| i.token.claims().ok()));
        }
        let claims = claims.as_ref().and_then(Option::as_ref);
        let Some(key) = key_bytes(&rule.key, req, claims) else {
            continue;
        };
        let hash = key_hash(rule.id, key.as_ref());
        match rule.kind {
            LimitKind::Rate { rate, burst } => {
                let v = state.rates.check(hash, rate, burst, Instant::now());
                if !v.allowed {
                    return Err(refuse(state, &counted, rule, v.retry_after));
                }
                counted.push((hash, rate));
            }
            LimitKind::Concurrency { max } => match state.inflight.acquire(hash, max) {
                Ok(guard) => held.0.push(guard),
                Err(_) => return Err(refuse(state, &counted, rule, Duration::from_secs(1))),
            },
        }
    }
    Ok(())
}

/// A refused request counts against no other rule, as with nginx's `limit_req`.
fn refuse(
    state: &LimitState,
    counted: &[(u64, Rate)],
    rule: &LimitRule,
    retry_after: Duration,
) -> Refusal {
    for &(hash, rate) in counted {
        state.rates.refund(hash, rate);
    }
    refusal(rule, retry_after, 0)
}

fn refusal(rule: &LimitRule, retry_after: Duration, remaining: u32) -> Refusal {
    let secs = retry_after
        .as_secs()
        .saturating_add(u64::from(retry_after.subsec_nanos() > 0))
        .max(1);
    let status = format!("\"{}\";r={remaining};t={secs}", rule.name);
    Refusal {
        name: rule.name.clone(),
        retry_after: secs,
        policy: rule.policy.clone(),
        status: HeaderValue::from_str(&status).unwrap_or_else(|_| HeaderValue::from_static("")),
    }
}

fn key_bytes<'a>(
    key: &LimitKey,
    req: &'a Request<'_>,
    claims: Option<&'a Map<String, Value>>,
) -> Option<Cow<'a, [u8]>> {
    let token = req.identity.map(|i| &i.token);
    // Identity keys are scoped by issuer: two issuers may hand out the same `sub`.
    let scoped = |v: &str| {
        let issuer = token.map(|t| t.issuer.name.as_str()).unwrap_or("");
        let mut out = Vec::with_capacity(issuer.len() + 1 + v.len());
        out.extend_from_slice(issuer.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        Cow::Owned(out)
    };
    match key {
        LimitKey::Ip => req.client_ip.map(|ip| Cow::Borrowed(ip.as_bytes())),
        LimitKey::Header(name) => req
            .headers
            .get(name)
            .filter(|v| !v.is_empty())
            .map(|v| Cow::Borrowed(v.as_bytes())),
        LimitKey::Subject => token?.subject().map(scoped),
        LimitKey::Session => token?.session().map(scoped),
        LimitKey::Client => {
            let c = claims?;
            let v = c.get("client_id").or_else(|| c.get("azp"))?;
            v.as_str().map(scoped)
        }
        LimitKey::Claim(path) => match claim_at(claims?, path)? {
            Value::Null => None,
            Value::String(s) => Some(scoped(s)),
            other => Some(scoped(&other.to_string())),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(name: &str, key: LimitKey, count: u32, burst: u32) -> LimitRule {
        LimitRule::new(
            name.into(),
            key,
            LimitKind::Rate {
                rate: Rate {
                    count,
                    period: Duration::from_secs(60),
                },
                burst,
            },
        )
    }

    #[test]
    fn address_rules_run_before_auth_and_identity_rules_after() {
        let state = LimitState::new(1024);
        let headers = HeaderMap::new();
        let rules = vec![
            rule("by-ip", LimitKey::Ip, 1, 0),
            rule("by-sub", LimitKey::Subject, 1, 0),
        ];
        let req = Request {
            client_ip: Some("192.0.2.1"),
            headers: &headers,
            identity: None,
        };
        let mut held = Held::default();
        assert!(check(&rules, Stage::BeforeAuth, &state, &req, &mut held).is_ok());
        let refused = check(&rules, Stage::BeforeAuth, &state, &req, &mut held).unwrap_err();
        assert_eq!(refused.name, "by-ip");
        assert_eq!(refused.policy, "\"by-ip\";q=1;w=60");
        assert!(refused.retry_after >= 59 && refused.retry_after <= 60);
        // Without an identity the subject rule counts nothing, however often.
        for _ in 0..5 {
            assert!(check(&rules, Stage::AfterAuth, &state, &req, &mut held).is_ok());
        }
    }

    #[test]
    fn missing_header_keys_are_not_counted_and_values_are_separate() {
        let state = LimitState::new(1024);
        let rules = vec![rule(
            "tenant",
            LimitKey::Header(HeaderName::from_static("x-tenant")),
            1,
            0,
        )];
        let mut held = Held::default();
        let empty = HeaderMap::new();
        let none = Request {
            client_ip: None,
            headers: &empty,
            identity: None,
        };
        for _ in 0..3 {
            assert!(check(&rules, Stage::BeforeAuth, &state, &none, &mut held).is_ok());
        }
        let mut a = HeaderMap::new();
        a.insert("x-tenant", HeaderValue::from_static("a"));
        let mut b = HeaderMap::new();
        b.insert("x-tenant", HeaderValue::from_static("b"));
        let ra = Request {
            client_ip: None,
            headers: &a,
            identity: None,
        };
        let rb = Request {
            client_ip: None,
            headers: &b,
            identity: None,
        };
        assert!(check(&rules, Stage::BeforeAuth, &state, &ra, &mut held).is_ok());
        assert!(check(&rules, Stage::BeforeAuth, &state, &rb, &mut held).is_ok());
        assert!(check(&rules, Stage::BeforeAuth, &state, &ra, &mut held).is_err());
    }

    #[test]
    fn concurrency_slots_return_when_the_request_ends() {
        let state = LimitState::new(1024);
        let rules = vec![LimitRule::new(
            "conn".into(),
            LimitKey::Ip,
            LimitKind::Concurrency { max: 2 },
        )];
        let headers = HeaderMap::new();
        let req = Request {
            client_ip: Some("192.0.2.9"),
            headers: &headers,
            identity: None,
        };
        let mut first = Held::default();
        let mut second = Held::default();
        let mut third = Held::default();
        assert!(check(&rules, Stage::BeforeAuth, &state, &req, &mut first).is_ok());
        assert!(check(&rules, Stage::BeforeAuth, &state, &req, &mut second).is_ok());
        let refused = check(&rules, Stage::BeforeAuth, &state, &req, &mut third).unwrap_err();
        assert_eq!(refused.retry_after, 1);
        drop(first);
        assert!(check(&rules, Stage::BeforeAuth, &state, &req, &mut third).is_ok());
    }

    #[test]
    fn a_request_refused_by_one_rule_spends_no_other_budget() {
        let state = LimitState::new(1024);
        let headers = HeaderMap::new();
        // "wide": 3 at once; "narrow": 1 at once (both per minute).
        let rules = vec![
            rule("wide", LimitKey::Ip, 1, 2),
            rule("narrow", LimitKey::Ip, 1, 0),
        ];
        let req = Request {
            client_ip: Some("192.0.2.7"),
            headers: &headers,
            identity: None,
        };
        let mut held = Held::default();
        assert!(check(&rules, Stage::BeforeAuth, &state, &req, &mut held).is_ok());
        for _ in 0..5 {
            let r = check(&rules, Stage::BeforeAuth, &state, &req, &mut held).unwrap_err();
            assert_eq!(r.name, "narrow", "\"wide\" was spent by refused requests");
        }
        // "wide" was spent once, not six times: two of its three are left.
        let only_wide = vec![rule("wide", LimitKey::Ip, 1, 2)];
        assert!(check(&only_wide, Stage::BeforeAuth, &state, &req, &mut held).is_ok());
        assert!(check(&only_wide, Stage::BeforeAuth, &state, &req, &mut held).is_ok());
        assert!(check(&only_wide, Stage::BeforeAuth, &state, &req, &mut held).is_err());
    }

    #[test]
    fn rule_ids_are_stable_and_distinct() {
        assert_eq!(name_id("api/0"), name_id("api/0"));
        assert_ne!(name_id("api/0"), name_id("api/1"));
    }
}
