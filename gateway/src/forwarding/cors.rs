//! CORS for browser apps: answer preflights without a token (the browser never sends one
//! on a preflight) and label responses, per route.

use http::{header, HeaderName, HeaderValue, Method};

/// A route's CORS policy.
#[derive(Debug, Clone)]
pub struct Cors {
    /// Allowed origins, lower case (`*` for any, only without credentials).
    pub origins: Vec<String>,
    /// Allowed methods.
    pub methods: Vec<Method>,
    /// Allowed request headers, lower case.
    pub headers: Vec<String>,
    /// Preflight cache time in seconds.
    pub max_age: u64,
    /// `Access-Control-Allow-Credentials: true`.
    pub credentials: bool,
}

impl Cors {
    /// Whether `origin` may call the route.
    pub fn allows_origin(&self, origin: &str) -> bool {
        let o = origin.to_ascii_lowercase();
        self.origins.iter().any(|a| a == "*" || *a == o)
    }

    /// Headers for an actual (non-preflight) response to an allowed origin.
    pub fn response_headers(&self, origin: &HeaderValue) -> Vec<(HeaderName, HeaderValue)> {
        let mut out = vec![
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone()),
            (header::VARY, HeaderValue::from_static("Origin")),
        ];
        if self.credentials {
            out.push((
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            ));
        }
        out
    }

    /// Headers answering a preflight, or None when the method or headers are not allowed.
    pub fn preflight(
        &self,
        origin: &HeaderValue,
        method: &Method,
        requested: Option<&str>,
    ) -> Option<Vec<(HeaderName, HeaderValue)>> {
        if !self.methods.contains(method) {
            return None;
        }
        let requested: Vec<String> = requested
            .unwrap_or("")
            .split(',')
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect();
        if !requested.iter().all(|h| self.headers.contains(h)) {
            return None;
        }
        let methods: Vec<&str> = self.methods.iter().map(Method::as_str).collect();
        let mut out = self.response_headers(origin);
        out.push((
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_str(&methods.join(", ")).ok()?,
        ));
        if !self.headers.is_empty() {
            out.push((
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_str(&self.headers.join(", ")).ok()?,
            ));
        }
        out.push((
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from(self.max_age),
        ));
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preflight_rules() {
        let c = Cors {
            origins: vec!["https://app.example.com".into()],
            methods: vec![Method::GET, Method::POST],
            headers: vec!["authorization".into(), "content-type".into()],
            max_age: 600,
            credentials: true,
        };
        let o = HeaderValue::from_static("https://app.example.com");
        assert!(c.allows_origin("https://APP.example.com"));
        assert!(!c.allows_origin("https://evil.example.com"));
        assert!(c
            .preflight(&o, &Method::POST, Some("Authorization, Content-Type"))
            .is_some());
        assert!(c.preflight(&o, &Method::DELETE, None).is_none());
        assert!(c.preflight(&o, &Method::GET, Some("x-other")).is_none());
    }
}
