//! A route's token policy: issuers, audiences, scopes, roles, claim rules, `amr`, maximum
//! age, token sources and claim headers.

use std::time::Duration;

use http::HeaderName;
use regex::Regex;
use serde_saphyr::Spanned;

use super::file::{ClaimRuleFile, RequirementFile, RouteFile};
use super::{dur, ConfigError, IssuerSpec, Source};
use crate::auth::identity::IdentityPrefix;
use crate::auth::policy::{ClaimRule, ClaimTest, Requirement, RoutePolicy, TokenSources};
use crate::routing::AuthMode;

fn requirement(
    r: &Spanned<RequirementFile>,
    src: &Source,
    key: &str,
) -> Result<Requirement, ConfigError> {
    let req = match &r.value {
        RequirementFile::List(v) => Requirement::All(v.clone()),
        RequirementFile::Set(s) => match (&s.all, &s.any) {
            (Some(all), None) => Requirement::All(all.clone()),
            (None, Some(any)) => Requirement::Any(any.clone()),
            _ => {
                return Err(src
                    .at(r)
                    .err(format!("{key}: give either `all: [...]` or `any: [...]`")))
            }
        },
    };
    let empty = match &req {
        Requirement::All(v) | Requirement::Any(v) => v.is_empty(),
    };
    if empty {
        return Err(src.at(r).err(format!("{key}: the list is empty")));
    }
    Ok(req)
}

fn claim_rule(c: &Spanned<ClaimRuleFile>, src: &Source) -> Result<ClaimRule, ConfigError> {
    let v = &c.value;
    let path: Vec<String> = v.claim.split('.').map(str::to_string).collect();
    if path.iter().any(String::is_empty) {
        return Err(src.at(c).err(format!(
            "claims.claim: {:?} is not a claim path such as app_metadata.plan",
            v.claim
        )));
    }
    let mut tests = Vec::new();
    if let Some(x) = &v.equals {
        tests.push(ClaimTest::Equals(x.clone()));
    }
    if let Some(x) = &v.one_of {
        tests.push(ClaimTest::OneOf(x.clone()));
    }
    if let Some(x) = &v.regex {
        let re = Regex::new(x).map_err(|e| src.at(c).err(format!("claims.regex: {e}")))?;
        tests.push(ClaimTest::Regex(re));
    }
    if let Some(x) = v.exists {
        tests.push(ClaimTest::Exists(x));
    }
    if let Some(x) = &v.contains {
        tests.push(ClaimTest::Contains(x.clone()));
    }
    for (val, make) in [
        (v.gt, ClaimTest::Gt as fn(f64) -> ClaimTest),
        (v.gte, ClaimTest::Gte),
        (v.lt, ClaimTest::Lt),
        (v.lte, ClaimTest::Lte),
    ] {
        if let Some(n) = val {
            tests.push(make(n));
        }
    }
    if tests.len() != 1 {
        return Err(src.at(c).err(
            "claims: each rule takes `claim` and exactly one of equals, one_of, regex, exists, contains, gt, gte, lt, lte",
        ));
    }
    Ok(ClaimRule {
        path,
        test: tests.remove(0),
    })
}

/// Compiles a route's policy keys; `issuers` are the names defined in the config.
pub(super) fn compile_policy(
    src: &Source,
    r: &Spanned<RouteFile>,
    auth: AuthMode,
    issuers: &[IssuerSpec],
    identity: &IdentityPrefix,
) -> Result<RoutePolicy, ConfigError> {
    let v = &r.value;
    let uses_policy = !v.issuers.is_empty()
        || v.audiences.is_some()
        || v.scopes.is_some()
        || v.roles.is_some()
        || !v.claims.is_empty()
        || !v.amr.is_empty()
        || v.max_age.is_some()
        || v.forward_token
        || !v.claim_headers.is_empty()
        || v.token.cookie.is_some()
        || v.token.query.is_some()
        || v.token.header.is_some()
        || v.login_redirect.is_some()
        || v.claim_arrays.is_some();
    if auth == AuthMode::Public && uses_policy {
        return Err(src.at(r).err("auth: token rules (issuers, scopes, roles, claims, …) need `auth: required` or `optional`, not public"));
    }
    let mut names = Vec::new();
    for n in &v.issuers {
        if !issuers.iter().any(|i| i.name == n.value) {
            let known: Vec<&str> = issuers.iter().map(|i| i.name.as_str()).collect();
            return Err(src.at(n).err(format!(
                "issuers: {:?} is not a trusted issuer (defined: {})",
                n.value,
                known.join(", ")
            )));
        }
        names.push(n.value.clone());
    }
    let mut claim_headers = Vec::new();
    for (path, name) in &v.claim_headers {
        let header = HeaderName::from_bytes(name.value.as_bytes()).map_err(|_| {
            src.at(name).err(format!(
                "claim_headers: {:?} is not a valid header name",
                name.value
            ))
        })?;
        // Only names under the identity prefix are stripped from clients, so only they are safe.
        if !identity.owns(header.as_str()) {
            return Err(src.at(name).err(format!(
                "claim_headers: {:?} must start with the identity prefix ({}) so clients cannot forge it",
                name.value,
                identity.as_str()
            )));
        }
        let path: Vec<String> = path.split('.').map(str::to_string).collect();
        if path.iter().any(String::is_empty) {
            return Err(src.at(name).err("claim_headers: empty claim path segment"));
        }
        claim_headers.push((path, header));
    }
    let mut claims = Vec::new();
    for c in &v.claims {
        claims.push(claim_rule(c, src)?);
    }
    let sources = TokenSources {
        header: v.token.header.unwrap_or(true),
        cookie: v.token.cookie.clone(),
        query: v.token.query.clone(),
    };
    if !sources.header
        && sources.cookie.is_none()
        && sources.query.is_none()
        && auth != AuthMode::Public
    {
        return Err(src
            .at(r)
            .err("token: at least one token source (header, cookie or query) is required"));
    }
    Ok(RoutePolicy {
        issuers: names,
        audiences: v.audiences.clone(),
        scopes: v
            .scopes
            .as_ref()
            .map(|s| requirement(s, src, "scopes"))
            .transpose()?,
        roles: v
            .roles
            .as_ref()
            .map(|s| requirement(s, src, "roles"))
            .transpose()?,
        claims,
        amr: v.amr.clone(),
        max_age: match &v.max_age {
            None => None,
            Some(_) => Some(dur(src, &v.max_age, "max_age", Duration::ZERO)?.as_secs()),
        },
        sources,
        forward_token: v.forward_token,
        claim_headers,
        claim_arrays: match &v.claim_arrays {
            None => crate::auth::policy::ArrayFormat::default(),
            Some(a) if a.value == "json" => crate::auth::policy::ArrayFormat::Json,
            Some(a) if !a.value.is_empty() && a.value.len() <= 8 && a.value.chars().all(|c| c.is_ascii_graphic() || c == ' ') => {
                crate::auth::policy::ArrayFormat::Join(a.value.clone())
            }
            Some(a) => return Err(src.at(a).err("claim_arrays: a separator of 1-8 visible characters (e.g. \",\" or \" \"), or json")),
        },
        login_redirect: match &v.login_redirect {
            None => None,
            Some(l) => {
                let ok = (l.value.starts_with("https://")
                    || l.value.starts_with("http://")
                    || l.value.starts_with('/'))
                    && http::HeaderValue::from_str(&l.value).is_ok();
                if !ok {
                    return Err(src.at(l).err("login_redirect: an absolute http(s) URL or a path, e.g. https://login.example.com/?next={uri}"));
                }
                Some(l.value.clone())
            }
        },
    })
}
