//! Route policies: which verified tokens a route accepts. Checked on every request, whether
//! the token came from the cache or not.

use http::HeaderName;
use regex::Regex;
use serde_json::{Map, Value};

use crate::verify::{claim_at, VerifiedToken};

/// `all` of the listed values, or `any` one of them.
#[derive(Debug, Clone, PartialEq)]
pub enum Requirement {
    /// Every value must be present.
    All(Vec<String>),
    /// At least one value must be present.
    Any(Vec<String>),
}

impl Requirement {
    fn satisfied_by<'a>(&self, have: impl Iterator<Item = &'a str> + Clone) -> bool {
        let has = |n: &String| have.clone().any(|h| h == n);
        match self {
            Requirement::All(need) => need.iter().all(has),
            Requirement::Any(need) => need.iter().any(has),
        }
    }

    /// The values, space-separated (for `WWW-Authenticate: … scope="…"`).
    pub fn joined(&self) -> String {
        match self {
            Requirement::All(v) | Requirement::Any(v) => v.join(" "),
        }
    }
}

/// The test a claim rule applies.
#[derive(Debug, Clone)]
pub enum ClaimTest {
    /// Equal to this JSON value.
    Equals(Value),
    /// Equal to one of these.
    OneOf(Vec<Value>),
    /// A string matching this regex.
    Regex(Regex),
    /// Present (true) or absent (false).
    Exists(bool),
    /// An array containing this value.
    Contains(Value),
    /// A number greater than.
    Gt(f64),
    /// A number greater than or equal to.
    Gte(f64),
    /// A number less than.
    Lt(f64),
    /// A number less than or equal to.
    Lte(f64),
}

/// One claim rule on a (possibly nested) claim path.
#[derive(Debug, Clone)]
pub struct ClaimRule {
    /// `app_metadata.plan` → `["app_metadata", "plan"]`.
    pub path: Vec<String>,
    /// What must hold.
    pub test: ClaimTest,
}

impl ClaimRule {
    fn holds(&self, claims: &Map<String, Value>) -> bool {
        let v = claim_at(claims, &self.path);
        let num = |v: Option<&Value>| v.and_then(Value::as_f64);
        match &self.test {
            ClaimTest::Exists(want) => v.is_some() == *want,
            ClaimTest::Equals(want) => v == Some(want),
            ClaimTest::OneOf(set) => v.is_some_and(|v| set.contains(v)),
            ClaimTest::Regex(re) => v.and_then(Value::as_str).is_some_and(|s| re.is_match(s)),
            ClaimTest::Contains(item) => v
                .and_then(Value::as_array)
                .is_some_and(|a| a.contains(item)),
            ClaimTest::Gt(n) => num(v).is_some_and(|x| x > *n),
            ClaimTest::Gte(n) => num(v).is_some_and(|x| x >= *n),
            ClaimTest::Lt(n) => num(v).is_some_and(|x| x < *n),
            ClaimTest::Lte(n) => num(v).is_some_and(|x| x <= *n),
        }
    }
}

/// Where the route takes its token from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSources {
    /// `Authorization: Bearer`.
    pub header: bool,
    /// A cookie name.
    pub cookie: Option<String>,
    /// A query parameter (removed before forwarding).
    pub query: Option<String>,
}

impl Default for TokenSources {
    fn default() -> Self {
        TokenSources {
            header: true,
            cookie: None,
            query: None,
        }
    }
}

/// Why a verified token is still not allowed on a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// Issuer not among the route's issuers (401).
    WrongIssuer,
    /// `aud` names none of the route's audiences (401).
    WrongAudience,
    /// Authentication too old for `max_age` (401: sign in again).
    TooOld,
    /// Missing scopes (403); the scopes needed.
    InsufficientScope(String),
    /// Missing roles (403).
    MissingRole,
    /// A claim rule failed (403).
    ClaimRule,
    /// Authentication method not allowed (403).
    Method,
}

impl Denial {
    /// Metrics label.
    pub fn reason(&self) -> &'static str {
        match self {
            Denial::WrongIssuer => "wrong_issuer",
            Denial::WrongAudience => "wrong_audience",
            Denial::TooOld => "too_old",
            Denial::InsufficientScope(_) => "insufficient_scope",
            Denial::MissingRole => "missing_role",
            Denial::ClaimRule => "claim_rule",
            Denial::Method => "auth_method",
        }
    }

    /// Client-facing description.
    pub fn description(&self) -> &'static str {
        match self {
            Denial::WrongIssuer => "the token's issuer is not accepted on this route",
            Denial::WrongAudience => "the token is not meant for this audience",
            Denial::TooOld => "the authentication is too old; sign in again",
            Denial::InsufficientScope(_) => "the token lacks a required scope",
            Denial::MissingRole => "the token lacks a required role",
            Denial::ClaimRule => "the token's claims do not satisfy this route",
            Denial::Method => "this route requires another authentication method",
        }
    }

    /// Whether the answer is 401 (re-authenticate) rather than 403.
    pub fn is_unauthenticated(&self) -> bool {
        matches!(
            self,
            Denial::WrongIssuer | Denial::WrongAudience | Denial::TooOld
        )
    }
}

/// A route's authorisation rules.
#[derive(Debug, Clone, Default)]
pub struct RoutePolicy {
    /// Accepted issuer names (empty: any trusted issuer).
    pub issuers: Vec<String>,
    /// Audiences (None: the issuer's defaults).
    pub audiences: Option<Vec<String>>,
    /// Scope requirement.
    pub scopes: Option<Requirement>,
    /// Role requirement.
    pub roles: Option<Requirement>,
    /// Claim rules, all must hold.
    pub claims: Vec<ClaimRule>,
    /// Accepted `amr` values (any one suffices; empty: any).
    pub amr: Vec<String>,
    /// Maximum seconds since `auth_time` (or `iat`).
    pub max_age: Option<u64>,
    /// Token sources.
    pub sources: TokenSources,
    /// Forward `Authorization` to the upstream.
    pub forward_token: bool,
    /// Extra identity headers: claim path → header name.
    pub claim_headers: Vec<(Vec<String>, HeaderName)>,
    /// Where browsers without a valid token are redirected (`{uri}` placeholder).
    pub login_redirect: Option<String>,
    /// How array claims are written into `claim_headers`.
    pub claim_arrays: ArrayFormat,
}

/// How an array claim becomes one header value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArrayFormat {
    /// Scalars joined with this separator.
    Join(String),
    /// The array as JSON.
    Json,
}

impl Default for ArrayFormat {
    fn default() -> Self {
        ArrayFormat::Join(",".to_string())
    }
}

impl RoutePolicy {
    /// Checks a verified token against the route, at time `now` (seconds). `claims` are the
    /// token's parsed claims, needed only when the route has claim rules (missing: denied).
    pub fn check(
        &self,
        tok: &VerifiedToken,
        claims: Option<&Map<String, Value>>,
        now: u64,
    ) -> Result<(), Denial> {
        if !self.issuers.is_empty() && !self.issuers.contains(&tok.issuer.name) {
            return Err(Denial::WrongIssuer);
        }
        // The route's audiences replace the issuer's defaults; none at all means no check.
        let auds = self.audiences.as_ref().unwrap_or(&tok.issuer.audiences);
        if !auds.is_empty() && !tok.audiences().any(|a| auds.iter().any(|x| x == a)) {
            return Err(Denial::WrongAudience);
        }
        if let Some(max) = self.max_age {
            match tok.auth_time {
                Some(t) if now.saturating_sub(t) <= max + tok.issuer.leeway => {}
                _ => return Err(Denial::TooOld),
            }
        }
        if let Some(req) = &self.scopes {
            if !req.satisfied_by(tok.scopes()) {
                return Err(Denial::InsufficientScope(req.joined()));
            }
        }
        if let Some(req) = &self.roles {
            if !req.satisfied_by(tok.roles()) {
                return Err(Denial::MissingRole);
            }
        }
        if !self.amr.is_empty() && !tok.amr().any(|m| self.amr.iter().any(|x| x == m)) {
            return Err(Denial::Method);
        }
        if !self.claims.is_empty() {
            match claims {
                Some(c) if self.claims.iter().all(|r| r.holds(c)) => {}
                _ => return Err(Denial::ClaimRule),
            }
        }
        Ok(())
    }
}
