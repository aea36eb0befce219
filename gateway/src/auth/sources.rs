//! Token sources: finding the bearer token in a request: the `Authorization` header, a cookie, or a query
//! parameter, as the route allows. Two different tokens in one request are refused, so
//! that no two components can disagree about which one counts.

use http::header;
use pingora::http::RequestHeader;
use thiserror::Error;

use crate::auth::policy::TokenSources;

/// A request that carries its token ambiguously (answered with 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum TokenSourceError {
    /// More than one `Authorization` header.
    #[error("more than one Authorization header")]
    TwoAuthorizationHeaders,
    /// Different tokens in different places (or a repeated cookie/parameter).
    #[error("the request carries more than one token")]
    ConflictingTokens,
}

fn bearer(value: &[u8]) -> Option<&str> {
    let s = std::str::from_utf8(value).ok()?;
    let (scheme, rest) = s.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim_matches(' '))
}

fn cookie_value<'a>(
    req: &'a RequestHeader,
    name: &str,
) -> Result<Option<&'a str>, TokenSourceError> {
    let mut found: Option<&str> = None;
    for h in req.headers.get_all(header::COOKIE) {
        let Ok(text) = h.to_str() else { continue };
        for pair in text.split(';') {
            let Some((k, v)) = pair.trim().split_once('=') else {
                continue;
            };
            if k == name {
                let v = v.trim_matches('"');
                if found.is_some_and(|f| f != v) {
                    return Err(TokenSourceError::ConflictingTokens);
                }
                found = Some(v);
            }
        }
    }
    Ok(found)
}

fn query_value<'a>(
    query: Option<&'a str>,
    name: &str,
) -> Result<Option<&'a str>, TokenSourceError> {
    let mut found = None;
    for pair in query.unwrap_or("").split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == name {
            if found.is_some() {
                return Err(TokenSourceError::ConflictingTokens);
            }
            found = Some(v);
        }
    }
    Ok(found)
}

/// The token the request carries under `sources`, if any.
pub fn extract<'a>(
    req: &'a RequestHeader,
    sources: &TokenSources,
) -> Result<Option<&'a str>, TokenSourceError> {
    let mut token: Option<&str> = None;
    let mut offer = |t: &'a str| -> Result<(), TokenSourceError> {
        match token {
            Some(prev) if prev != t => Err(TokenSourceError::ConflictingTokens),
            _ => {
                token = Some(t);
                Ok(())
            }
        }
    };
    if sources.header {
        let mut values = req.headers.get_all(header::AUTHORIZATION).iter();
        if let Some(first) = values.next() {
            if values.next().is_some() {
                return Err(TokenSourceError::TwoAuthorizationHeaders);
            }
            if let Some(t) = bearer(first.as_bytes()) {
                offer(t)?;
            }
        }
    }
    if let Some(name) = &sources.cookie {
        if let Some(t) = cookie_value(req, name)? {
            offer(t)?;
        }
    }
    if let Some(name) = &sources.query {
        if let Some(t) = query_value(req.uri.query(), name)? {
            offer(t)?;
        }
    }
    Ok(token)
}

/// The query string without parameter `name` (the token never travels further).
pub fn strip_query_param(query: &str, name: &str) -> String {
    query
        .split('&')
        .filter(|pair| pair.split_once('=').map(|(k, _)| k).unwrap_or(pair) != name)
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(uri: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", uri.as_bytes(), None).unwrap();
        for (n, v) in headers {
            r.append_header(n.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn sources() {
        let all = TokenSources {
            header: true,
            cookie: Some("session".into()),
            query: Some("access_token".into()),
        };
        assert_eq!(
            extract(&req("/", &[("Authorization", "Bearer abc")]), &all),
            Ok(Some("abc"))
        );
        assert_eq!(
            extract(&req("/", &[("Authorization", "bearer abc")]), &all),
            Ok(Some("abc"))
        );
        assert_eq!(
            extract(&req("/", &[("Authorization", "Basic abc")]), &all),
            Ok(None)
        );
        assert_eq!(
            extract(&req("/", &[("Cookie", "a=1; session=tok")]), &all),
            Ok(Some("tok"))
        );
        assert_eq!(
            extract(&req("/?x=1&access_token=q", &[]), &all),
            Ok(Some("q"))
        );
        assert_eq!(
            extract(
                &req(
                    "/",
                    &[("Authorization", "Bearer a"), ("Authorization", "Bearer a")]
                ),
                &all
            ),
            Err(TokenSourceError::TwoAuthorizationHeaders)
        );
        assert_eq!(
            extract(
                &req(
                    "/",
                    &[("Authorization", "Bearer a"), ("Cookie", "session=b")]
                ),
                &all
            ),
            Err(TokenSourceError::ConflictingTokens)
        );
        assert_eq!(
            extract(
                &req(
                    "/",
                    &[("Authorization", "Bearer a"), ("Cookie", "session=a")]
                ),
                &all
            ),
            Ok(Some("a"))
        );
        assert_eq!(
            extract(&req("/?access_token=a&access_token=b", &[]), &all),
            Err(TokenSourceError::ConflictingTokens)
        );
        let header_only = TokenSources::default();
        assert_eq!(
            extract(
                &req("/?access_token=q", &[("Cookie", "session=t")]),
                &header_only
            ),
            Ok(None)
        );
        assert_eq!(
            strip_query_param("a=1&access_token=x&b=2", "access_token"),
            "a=1&b=2"
        );
    }
}
