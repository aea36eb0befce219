//! The compiled route model and the router that picks one route per request.
//!
//! Precedence (documented in the README): routes are grouped by host — exact host first,
//! then wildcard hosts (longest suffix first), then routes without a host. Within the first
//! group that matches, paths are tried like nginx `location`s: exact, then regexes in config
//! order (files in lexical order, then position), then prefixes, longest first. Among routes
//! with the same path, one that lists the request's method beats one that lists none. The
//! first route that matches every condition wins; if only the method failed, the answer is
//! 405 with `Allow`.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method};
use regex::Regex;

use crate::auth::policy::RoutePolicy;
use crate::forwarding::cors::Cors;
use crate::forwarding::headers::HeaderOps;
use crate::upstream::UpstreamGroup;

/// Whether a route needs a verified token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// No token needed; identity headers are still stripped.
    Public,
    /// A token is verified when present; requests without one pass anonymously.
    Optional,
    /// A valid token is required (the default).
    Required,
}

/// Host condition.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostMatch {
    /// Any host.
    Any,
    /// Exactly this host (lower case, no port).
    Exact(String),
    /// `*.example.com`, stored as `.example.com`.
    Wildcard(String),
}

/// Path condition.
#[derive(Debug, Clone)]
pub enum PathMatch {
    /// The whole path.
    Exact(String),
    /// A prefix; without a trailing `/` it only matches at a segment boundary.
    Prefix(String),
    /// A regex over the normalised path.
    Regex(Regex),
}

impl PathMatch {
    fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(p) => p == path,
            PathMatch::Prefix(p) => {
                path.starts_with(p.as_str())
                    && (p.ends_with('/')
                        || path.len() == p.len()
                        || path.as_bytes()[p.len()] == b'/')
            }
            PathMatch::Regex(r) => r.is_match(path),
        }
    }
}

/// A canned response (`return:`).
#[derive(Debug, Clone)]
pub struct FixedResponse {
    /// Status code.
    pub status: u16,
    /// Body, possibly empty.
    pub body: Bytes,
    /// `Location` for redirects.
    pub location: Option<HeaderValue>,
}

/// What a route does with a request.
pub enum Action {
    /// Forward to a group of backends.
    Proxy(Arc<UpstreamGroup>),
    /// Answer directly.
    Respond(FixedResponse),
}

/// How the forwarded path is derived from the matched path.
#[derive(Debug, Clone)]
pub enum PathRewrite {
    /// Forward the normalised path unchanged.
    None,
    /// Remove this prefix (the result always starts with `/`).
    StripPrefix(String),
    /// Replace the first match of the regex.
    Regex(Regex, String),
}

impl PathRewrite {
    /// The path to forward for a normalised request path.
    pub fn apply(&self, path: &str) -> String {
        match self {
            PathRewrite::None => path.to_string(),
            PathRewrite::StripPrefix(p) => match path.strip_prefix(p.as_str()) {
                Some(rest) if rest.starts_with('/') => rest.to_string(),
                Some(rest) => format!("/{rest}"),
                None => path.to_string(),
            },
            PathRewrite::Regex(re, rep) => {
                let out = re.replace(path, rep.as_str());
                if out.starts_with('/') {
                    out.into_owned()
                } else {
                    format!("/{out}")
                }
            }
        }
    }
}

/// What `Host` the upstream sees.
#[derive(Debug, Clone)]
pub enum HostHeader {
    /// The client's `Host` (default, like `proxy_set_header Host $host`).
    Preserve,
    /// The backend's own address.
    Upstream,
    /// A fixed value.
    Fixed(HeaderValue),
}

/// One compiled route.
pub struct Route {
    /// Unique name (metrics, logs).
    pub name: String,
    /// Host condition.
    pub host: HostMatch,
    /// Path condition.
    pub path: PathMatch,
    /// Allowed methods; empty means any.
    pub methods: Vec<Method>,
    /// Auth requirement.
    pub auth: AuthMode,
    /// Proxy or fixed answer.
    pub action: Action,
    /// Path sent upstream.
    pub rewrite: PathRewrite,
    /// Host header policy.
    pub host_header: HostHeader,
    /// Edits to the upstream request.
    pub request_headers: HeaderOps,
    /// Edits to the response.
    pub response_headers: HeaderOps,
    /// Maximum request body in bytes (413 above); `None`: unlimited.
    pub max_body_size: Option<u64>,
    /// Longest pause between two reads of the request body.
    pub client_body_timeout: std::time::Duration,
    /// Rate and concurrency limits.
    pub limits: Vec<crate::limits::LimitRule>,
    /// Token rules (issuers, audiences, scopes, roles, claims, sources).
    pub policy: RoutePolicy,
    /// CORS policy, if the route serves browsers on other origins.
    pub cors: Option<Cors>,
}

/// Outcome of routing one request.
pub enum RouteMatch<'a> {
    /// This route takes it.
    Found(&'a Arc<Route>),
    /// A path matched but not with this method; the allowed methods.
    MethodNotAllowed(Vec<Method>),
    /// Nothing matched.
    NotFound,
}

#[derive(Default)]
struct PathTable {
    exact: HashMap<String, Vec<Arc<Route>>>,
    regex: Vec<Arc<Route>>,
    prefix: Vec<Arc<Route>>,
}

impl PathTable {
    fn insert(&mut self, r: Arc<Route>) {
        match &r.path {
            PathMatch::Exact(p) => self.exact.entry(p.clone()).or_default().push(r),
            PathMatch::Regex(_) => self.regex.push(r),
            PathMatch::Prefix(_) => self.prefix.push(r),
        }
    }

    fn finish(&mut self) {
        fn prefix_len(r: &Route) -> usize {
            match &r.path {
                PathMatch::Prefix(p) => p.len(),
                _ => 0,
            }
        }
        // Stable sorts keep config order as the final tie-break.
        for routes in self.exact.values_mut() {
            routes.sort_by_key(|r| r.methods.is_empty());
        }
        self.prefix.sort_by(|a, b| {
            prefix_len(b)
                .cmp(&prefix_len(a))
                .then(a.methods.is_empty().cmp(&b.methods.is_empty()))
        });
    }

    fn lookup<'a>(
        &'a self,
        path: &str,
        method: &Method,
        allowed: &mut Vec<Method>,
    ) -> Option<&'a Arc<Route>> {
        let exact = self.exact.get(path).into_iter().flatten();
        let regex = self.regex.iter().filter(|r| r.path.matches(path));
        let prefix = self.prefix.iter().filter(|r| r.path.matches(path));
        for r in exact.chain(regex).chain(prefix) {
            if r.methods.is_empty() || r.methods.contains(method) {
                return Some(r);
            }
            for m in &r.methods {
                if !allowed.contains(m) {
                    allowed.push(m.clone());
                }
            }
        }
        None
    }
}

/// All routes, indexed for lookup.
#[derive(Default)]
pub struct Router {
    exact_hosts: HashMap<String, PathTable>,
    wildcard_hosts: Vec<(String, PathTable)>,
    any_host: PathTable,
    routes: Vec<Arc<Route>>,
}

impl Router {
    /// Indexes routes given in config order (ambiguity was rejected by the compiler).
    pub fn new(routes: Vec<Arc<Route>>) -> Router {
        let mut router = Router::default();
        for r in &routes {
            let table = match &r.host {
                HostMatch::Any => &mut router.any_host,
                HostMatch::Exact(h) => router.exact_hosts.entry(h.clone()).or_default(),
                HostMatch::Wildcard(s) => {
                    match router.wildcard_hosts.iter().position(|(x, _)| x == s) {
                        Some(i) => &mut router.wildcard_hosts[i].1,
                        None => {
                            router
                                .wildcard_hosts
                                .push((s.clone(), PathTable::default()));
                            let last = router.wildcard_hosts.len() - 1;
                            &mut router.wildcard_hosts[last].1
                        }
                    }
                }
            };
            table.insert(r.clone());
        }
        router
            .wildcard_hosts
            .sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
        router.any_host.finish();
        router.exact_hosts.values_mut().for_each(PathTable::finish);
        router
            .wildcard_hosts
            .iter_mut()
            .for_each(|(_, t)| t.finish());
        router.routes = routes;
        router
    }

    /// Every route in config order.
    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }

    /// Finds the route for a lower-case host (no port), a normalised path and a method.
    pub fn lookup(&self, host: &str, path: &str, method: &Method) -> RouteMatch<'_> {
        let mut allowed = Vec::new();
        let exact = self.exact_hosts.get(host).into_iter();
        let wild = self
            .wildcard_hosts
            .iter()
            .filter(|(suffix, _)| host.len() > suffix.len() && host.ends_with(suffix.as_str()))
            .map(|(_, t)| t);
        for table in exact.chain(wild).chain(std::iter::once(&self.any_host)) {
            if let Some(r) = table.lookup(path, method, &mut allowed) {
                return RouteMatch::Found(r);
            }
        }
        if allowed.is_empty() {
            RouteMatch::NotFound
        } else {
            RouteMatch::MethodNotAllowed(allowed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, host: HostMatch, path: PathMatch, methods: &[&str]) -> Arc<Route> {
        Arc::new(Route {
            name: name.into(),
            host,
            path,
            methods: methods.iter().map(|m| m.parse().unwrap()).collect(),
            auth: AuthMode::Public,
            action: Action::Respond(FixedResponse {
                status: 200,
                body: Bytes::new(),
                location: None,
            }),
            rewrite: PathRewrite::None,
            host_header: HostHeader::Preserve,
            request_headers: HeaderOps::default(),
            response_headers: HeaderOps::default(),
            max_body_size: None,
            client_body_timeout: std::time::Duration::from_secs(60),
            limits: Vec::new(),
            policy: RoutePolicy::default(),
            cors: None,
        })
    }

    fn name(r: RouteMatch<'_>) -> String {
        match r {
            RouteMatch::Found(r) => r.name.clone(),
            RouteMatch::MethodNotAllowed(m) => format!("405 {m:?}"),
            RouteMatch::NotFound => "404".into(),
        }
    }

    #[test]
    fn precedence() {
        let pre = |p: &str| PathMatch::Prefix(p.into());
        let router = Router::new(vec![
            route("root", HostMatch::Any, pre("/"), &[]),
            route("api", HostMatch::Any, pre("/api/"), &[]),
            route("api-v1", HostMatch::Any, pre("/api/v1/"), &[]),
            route("api-post", HostMatch::Any, pre("/api/"), &["POST"]),
            route(
                "exact",
                HostMatch::Any,
                PathMatch::Exact("/api/status".into()),
                &[],
            ),
            route(
                "re",
                HostMatch::Any,
                PathMatch::Regex(Regex::new("^/api/v[0-9]+/users$").unwrap()),
                &[],
            ),
            route(
                "host",
                HostMatch::Exact("a.example.com".into()),
                pre("/api/"),
                &[],
            ),
            route(
                "wild",
                HostMatch::Wildcard(".example.com".into()),
                pre("/"),
                &[],
            ),
            route("get-only", HostMatch::Any, pre("/ro"), &["GET", "HEAD"]),
        ]);
        let get = Method::GET;
        assert_eq!(name(router.lookup("x", "/", &get)), "root");
        assert_eq!(name(router.lookup("x", "/api/x", &get)), "api");
        assert_eq!(
            name(router.lookup("x", "/api/x", &Method::POST)),
            "api-post"
        );
        assert_eq!(name(router.lookup("x", "/api/v1/x", &get)), "api-v1");
        assert_eq!(name(router.lookup("x", "/api/status", &get)), "exact");
        assert_eq!(name(router.lookup("x", "/api/v1/users", &get)), "re");
        assert_eq!(
            name(router.lookup("a.example.com", "/api/v1/users", &get)),
            "host"
        );
        assert_eq!(name(router.lookup("a.example.com", "/other", &get)), "wild");
        assert_eq!(name(router.lookup("example.com", "/other", &get)), "root");
        assert_eq!(name(router.lookup("x", "/ro/x", &get)), "get-only");
        assert_eq!(name(router.lookup("x", "/rox", &get)), "root");
        assert_eq!(name(router.lookup("x", "/ro", &Method::DELETE)), "root");
        let only = Router::new(vec![route(
            "get-only",
            HostMatch::Any,
            pre("/ro"),
            &["GET"],
        )]);
        assert_eq!(name(only.lookup("x", "/ro", &Method::DELETE)), "405 [GET]");
        assert_eq!(name(only.lookup("x", "/nope", &get)), "404");
    }

    #[test]
    fn rewrites() {
        assert_eq!(
            PathRewrite::StripPrefix("/auth".into()).apply("/auth/v1/x"),
            "/v1/x"
        );
        assert_eq!(
            PathRewrite::StripPrefix("/auth/".into()).apply("/auth/v1"),
            "/v1"
        );
        assert_eq!(PathRewrite::StripPrefix("/auth".into()).apply("/auth"), "/");
        let re = Regex::new("^/old/(.*)$").unwrap();
        assert_eq!(
            PathRewrite::Regex(re, "/new/$1".into()).apply("/old/a/b"),
            "/new/a/b"
        );
    }
}
