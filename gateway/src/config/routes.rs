//! The `routes` section: matches, actions, rewrites, header edits, per-route limits and
//! policies.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method};
use regex::Regex;
use serde_saphyr::Spanned;

use super::file::{self, HeaderOpsFile, IncludeFile, MainFile, PathMatchFile, RouteFile};
use super::{cors, dur, limits, policy, ConfigError, IssuerSpec, Loc, Source};
use crate::auth::identity::IdentityPrefix;
use crate::forwarding::headers::HeaderOps;
use crate::limits::EdgeLimits;
use crate::routing::path;
use crate::routing::{
    Action, AuthMode, FixedResponse, HostHeader, HostMatch, PathMatch, PathRewrite, Route,
};
use crate::upstream::UpstreamGroup;

/// Routes with equal keys compete for the same requests.
type MatchKey = (HostMatch, u8, String);

/// What every route is compiled against.
pub(super) struct RouteContext<'a> {
    /// Upstream groups by name.
    pub(super) upstreams: &'a BTreeMap<String, Arc<UpstreamGroup>>,
    /// The identity header prefix (routes may not set headers under it).
    pub(super) identity: &'a IdentityPrefix,
    /// Trusted issuers (route policies name them).
    pub(super) issuers: &'a [IssuerSpec],
    /// Request limits.
    pub(super) edge: &'a EdgeLimits,
    /// `server.limit` rules every route inherits.
    pub(super) default_rules: &'a [crate::limits::LimitRule],
}

/// `routes` in merge order (the main file, then included files in lexical order): unique
/// names, no two routes competing for the same requests.
pub(super) fn compile_routes(
    main_src: &Source,
    main: &MainFile,
    includes: &[(Source, IncludeFile)],
    ctx: RouteContext<'_>,
    rule_names: &mut limits::RuleNames,
) -> Result<Vec<Arc<Route>>, ConfigError> {
    // Routes in merge order: the main file, then included files in lexical order.
    let mut route_defs: Vec<(&Source, &Spanned<RouteFile>)> =
        main.routes.iter().map(|r| (main_src, r)).collect();
    for (src, inc) in includes {
        route_defs.extend(inc.routes.iter().map(|r| (src, r)));
    }
    let mut routes: Vec<Arc<Route>> = Vec::new();
    let mut names: HashMap<String, Loc> = HashMap::new();
    let mut match_keys: HashMap<MatchKey, Vec<(Vec<Method>, String, String)>> = HashMap::new();
    for (src, r) in route_defs {
        let loc = src.at(&r.value.name);
        if let Some(prev) = names.get(&r.value.name.value) {
            return Err(loc.err(format!(
                "name: route {:?} is already defined at {}",
                r.value.name.value,
                prev.desc()
            )));
        }
        let route_limits = RouteLimits {
            edge: ctx.edge,
            default_rules: ctx.default_rules,
            names: rule_names,
        };
        let route = compile_route(
            src,
            r,
            ctx.upstreams,
            ctx.identity,
            ctx.issuers,
            route_limits,
        )?;
        let (kind, text) = match &route.path {
            PathMatch::Exact(p) => (0, p.clone()),
            PathMatch::Prefix(p) => (1, p.clone()),
            PathMatch::Regex(re) => (2, re.as_str().to_string()),
        };
        let same = match_keys
            .entry((route.host.clone(), kind, text))
            .or_default();
        for (methods, other, other_loc) in same.iter() {
            let overlap = (methods.is_empty() && route.methods.is_empty())
                || methods.iter().any(|m| route.methods.contains(m));
            if overlap {
                return Err(src.at(r).err(format!(
                    "match: route {:?} has the same host, path and methods as route {other:?} ({other_loc}); which one wins would be ambiguous",
                    route.name
                )));
            }
        }
        same.push((route.methods.clone(), route.name.clone(), loc.desc()));
        names.insert(route.name.clone(), loc);
        routes.push(Arc::new(route));
    }

    Ok(routes)
}

/// Parses `return:` in nginx style: `200 "ok"`, `204`, `301 https://example.com/`.
fn parse_return(s: &str) -> Result<FixedResponse, String> {
    let s = s.trim();
    let (code, rest) = s.split_once(char::is_whitespace).unwrap_or((s, ""));
    let status: u16 = code
        .parse()
        .ok()
        .filter(|c| (200..=599).contains(c))
        .ok_or_else(|| format!("{code:?} is not a status code between 200 and 599"))?;
    let rest = rest.trim();
    let text = if rest.len() >= 2 && rest.starts_with('"') && rest.ends_with('"') {
        &rest[1..rest.len() - 1]
    } else {
        rest
    };
    if (300..400).contains(&status) && status != 304 {
        if text.is_empty() {
            return Err(format!("a {status} redirect needs a target URL"));
        }
        let location =
            HeaderValue::from_str(text).map_err(|_| format!("{text:?} is not a valid Location"))?;
        return Ok(FixedResponse {
            status,
            body: Bytes::new(),
            location: Some(location),
        });
    }
    Ok(FixedResponse {
        status,
        body: Bytes::from(text.to_string()),
        location: None,
    })
}

fn compile_header_ops(
    src: &Source,
    ops: &HeaderOpsFile,
    key: &str,
    identity: Option<&IdentityPrefix>,
) -> Result<HeaderOps, ConfigError> {
    let name_of = |n: &str, loc: Loc| -> Result<HeaderName, ConfigError> {
        let name = HeaderName::from_bytes(n.as_bytes())
            .map_err(|_| loc.err(format!("{key}: {n:?} is not a valid header name")))?;
        if let Some(p) = identity {
            if p.owns(name.as_str()) {
                return Err(loc.err(format!(
                    "{key}: {n:?} is an identity header; only verified tokens may set those"
                )));
            }
        }
        Ok(name)
    };
    let mut out = HeaderOps::default();
    for (list, target) in [(&ops.set, &mut out.set), (&ops.add, &mut out.add)] {
        for (n, v) in list {
            let name = name_of(n, src.at(v))?;
            let value = HeaderValue::from_str(&v.value).map_err(|_| {
                src.at(v)
                    .err(format!("{key}: value of {n:?} is not a valid header value"))
            })?;
            target.push((name, value));
        }
    }
    for n in &ops.remove {
        out.remove.push(name_of(&n.value, src.at(n))?);
    }
    Ok(out)
}

/// What a route's limits are compiled against.
struct RouteLimits<'a> {
    edge: &'a EdgeLimits,
    default_rules: &'a [crate::limits::LimitRule],
    names: &'a mut limits::RuleNames,
}

fn compile_route(
    src: &Source,
    r: &Spanned<RouteFile>,
    upstreams: &BTreeMap<String, Arc<UpstreamGroup>>,
    identity: &IdentityPrefix,
    issuers: &[IssuerSpec],
    lim: RouteLimits<'_>,
) -> Result<Route, ConfigError> {
    let v = &r.value;
    let name = route_name(src, v)?;
    let host = host_match(src, v)?;
    let path = path_match(src, v)?;
    let methods = methods(src, v)?;
    let auth = auth_mode(src, v)?;
    let action = action(src, r, upstreams)?;
    let rewrite = rewrite(src, r)?;
    let host_header = host_header(src, v)?;
    let policy = policy::compile_policy(src, r, auth, issuers, identity)?;
    let name_for_limits = name.clone();
    let cors = v
        .cors
        .as_ref()
        .map(|c| cors::compile_cors(src, c))
        .transpose()?;
    Ok(Route {
        policy,
        cors,
        name,
        host,
        path,
        methods,
        auth,
        action,
        rewrite,
        host_header,
        request_headers: compile_header_ops(
            src,
            &v.request_headers,
            "request_headers",
            Some(identity),
        )?,
        response_headers: compile_header_ops(src, &v.response_headers, "response_headers", None)?,
        // `0` means unlimited, as in nginx's `client_max_body_size 0`.
        max_body_size: match &v.max_body_size {
            None => lim.edge.max_body_size,
            Some(m) => Some(
                file::parse_size(&m.value.0)
                    .map_err(|e| src.at(m).err(format!("max_body_size: {e}")))?,
            )
            .filter(|&n| n > 0),
        },
        client_body_timeout: {
            let d = dur(
                src,
                &v.client_body_timeout,
                "client_body_timeout",
                lim.edge.client_body_timeout,
            )?;
            if d.is_zero() {
                return Err(src.at(r).err("client_body_timeout: must be more than 0"));
            }
            d
        },
        limits: match &v.limit {
            None => lim.default_rules.to_vec(),
            Some(list) => limits::compile_rules(src, list, &name_for_limits, lim.names)?,
        },
    })
}

/// `name`: letters, digits and `- _ . : /`.
fn route_name(src: &Source, v: &RouteFile) -> Result<String, ConfigError> {
    let name = v.name.value.trim().to_string();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:/".contains(c))
    {
        return Err(src
            .at(&v.name)
            .err("name: use letters, digits and - _ . : /"));
    }
    Ok(name)
}

/// `match.host`: an exact host name or a `*.domain` wildcard, lower case, no port.
fn host_match(src: &Source, v: &RouteFile) -> Result<HostMatch, ConfigError> {
    let host = match &v.matcher.host {
        None => HostMatch::Any,
        Some(h) => {
            let lower = h.value.trim().to_ascii_lowercase();
            let (wild, bare) = match lower.strip_prefix("*.") {
                Some(rest) => (true, rest.to_string()),
                None => (false, lower.clone()),
            };
            let valid = !bare.is_empty()
                && bare.split('.').all(|l| {
                    !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                });
            if !valid {
                return Err(src.at(h).err(format!(
                    "match.host: {:?} is not a host name or *.domain wildcard (no port)",
                    h.value
                )));
            }
            if wild {
                HostMatch::Wildcard(format!(".{bare}"))
            } else {
                HostMatch::Exact(bare)
            }
        }
    };
    Ok(host)
}

/// `match.path`: exact, prefix (written as the normalised form it matches) or regex.
fn path_match(src: &Source, v: &RouteFile) -> Result<PathMatch, ConfigError> {
    let path = match &v.matcher.path {
        None => PathMatch::Prefix("/".into()),
        Some(p) => {
            let loc = src.at(p);
            match &p.value {
                PathMatchFile::Exact(s) | PathMatchFile::Prefix(s) => {
                    let norm = path::normalize(s)
                        .map_err(|e| loc.err(format!("match.path: {s:?}: {e}")))?;
                    if &norm != s
                        && !(matches!(p.value, PathMatchFile::Prefix(_)) && norm == format!("{s}/"))
                    {
                        return Err(loc.err(format!("match.path: {s:?} never matches a normalised request path; write {norm:?}")));
                    }
                    if matches!(p.value, PathMatchFile::Exact(_)) {
                        PathMatch::Exact(s.clone())
                    } else {
                        PathMatch::Prefix(s.clone())
                    }
                }
                PathMatchFile::Regex(s) => PathMatch::Regex(
                    Regex::new(s).map_err(|e| loc.err(format!("match.path.regex: {e}")))?,
                ),
            }
        }
    };
    Ok(path)
}

/// `match.methods`, upper case, without repeats.
fn methods(src: &Source, v: &RouteFile) -> Result<Vec<Method>, ConfigError> {
    let mut methods = Vec::new();
    for m in &v.matcher.methods {
        let upper = m.value.trim().to_ascii_uppercase();
        let method = Method::from_bytes(upper.as_bytes()).map_err(|_| {
            src.at(m).err(format!(
                "match.methods: {:?} is not an HTTP method",
                m.value
            ))
        })?;
        if !methods.contains(&method) {
            methods.push(method);
        }
    }
    Ok(methods)
}

/// `auth`: required (the default), optional or public.
fn auth_mode(src: &Source, v: &RouteFile) -> Result<AuthMode, ConfigError> {
    let auth = match &v.auth {
        None => AuthMode::Required,
        Some(a) => match a.value.as_str() {
            "public" => AuthMode::Public,
            "optional" => AuthMode::Optional,
            "required" => AuthMode::Required,
            other => {
                return Err(src.at(a).err(format!(
                    "auth: {other:?} is not one of required, optional, public"
                )))
            }
        },
    };
    Ok(auth)
}

/// `upstream` (a defined group) or `return` (a fixed response), exactly one.
fn action(
    src: &Source,
    r: &Spanned<RouteFile>,
    upstreams: &BTreeMap<String, Arc<UpstreamGroup>>,
) -> Result<Action, ConfigError> {
    let v = &r.value;
    let action = match (&v.upstream, &v.fixed) {
        (Some(u), None) => match upstreams.get(&u.value) {
            Some(g) => Action::Proxy(g.clone()),
            None => {
                let known: Vec<&str> = upstreams.keys().map(String::as_str).collect();
                return Err(src.at(u).err(format!(
                    "upstream: {:?} is not defined (defined: {})",
                    u.value,
                    known.join(", ")
                )));
            }
        },
        (None, Some(f)) => Action::Respond(
            parse_return(&f.value).map_err(|e| src.at(f).err(format!("return: {e}")))?,
        ),
        (Some(_), Some(_)) => {
            return Err(src
                .at(r)
                .err("upstream, return: a route either proxies or returns, not both"))
        }
        (None, None) => {
            return Err(src
                .at(r)
                .err("upstream: missing (or give `return:` for a fixed response)"))
        }
    };
    Ok(action)
}

/// `strip_prefix` or `rewrite` (regex and replacement), at most one.
fn rewrite(src: &Source, r: &Spanned<RouteFile>) -> Result<PathRewrite, ConfigError> {
    let v = &r.value;
    let rewrite = match (&v.strip_prefix, &v.rewrite) {
        (Some(_), Some(_)) => {
            return Err(src.at(r).err("strip_prefix, rewrite: use one or the other"))
        }
        (Some(p), None) => {
            if !p.value.starts_with('/') {
                return Err(src.at(p).err("strip_prefix: must start with '/'"));
            }
            PathRewrite::StripPrefix(p.value.clone())
        }
        (None, Some(rw)) => {
            let re = Regex::new(&rw.value.regex)
                .map_err(|e| src.at(rw).err(format!("rewrite.regex: {e}")))?;
            PathRewrite::Regex(re, rw.value.replacement.clone())
        }
        (None, None) => PathRewrite::None,
    };
    Ok(rewrite)
}

/// `host_header`: preserve (the default), upstream, or a fixed value.
fn host_header(src: &Source, v: &RouteFile) -> Result<HostHeader, ConfigError> {
    let host_header = match &v.host_header {
        None => HostHeader::Preserve,
        Some(h) => match h.value.as_str() {
            "preserve" => HostHeader::Preserve,
            "upstream" => HostHeader::Upstream,
            other => HostHeader::Fixed(HeaderValue::from_str(other).map_err(|_| {
                src.at(h).err(format!(
                    "host_header: {other:?} is not a valid header value"
                ))
            })?),
        },
    };
    Ok(host_header)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_forms() {
        let r = parse_return(r#"200 "ok""#).unwrap();
        assert_eq!((r.status, &r.body[..]), (200, &b"ok"[..]));
        let r = parse_return("301 https://example.com/").unwrap();
        assert_eq!(r.location.unwrap(), "https://example.com/");
        assert_eq!(parse_return("204").unwrap().body.len(), 0);
        assert!(parse_return("302").is_err());
        assert!(parse_return("99 x").is_err());
    }
}
