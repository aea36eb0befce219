//! Fetching: the two HTTP clients a key source may need (reqwest for `http(s)://`, hyper over
//! a Unix socket for `unix:`), with a body cap, redirect rules and Cache-Control parsing.
//! The revocation feed reader uses the same client and capped GET.

use std::error::Error as StdError;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;

use super::JwksError;

/// Redirects followed by a JWKS or discovery fetch.
const MAX_REDIRECTS: usize = 3;
const ACCEPT_JWKS: &str = "application/jwk-set+json, application/json";

/// A successful HTTP exchange.
pub(crate) struct HttpAnswer {
    pub(crate) status: u16,
    pub(super) etag: Option<String>,
    pub(super) max_age: Option<Duration>,
    pub(crate) body: Vec<u8>,
}

pub(super) fn has_scheme(url: &str, scheme: &str) -> bool {
    url.get(..scheme.len())
        .is_some_and(|s| s.eq_ignore_ascii_case(scheme))
}

/// A client for key and feed fetches: no proxy from the environment, at most
/// [`MAX_REDIRECTS`] redirects and never from https to http, `timeout` per exchange.
pub(crate) fn build_client(timeout: Duration) -> Result<reqwest::Client, JwksError> {
    let redirects = reqwest::redirect::Policy::custom(|attempt| {
        if attempt.previous().len() > MAX_REDIRECTS {
            attempt.error("too many redirects")
        } else if attempt.url().scheme() != "https"
            && attempt.previous().iter().any(|u| u.scheme() == "https")
        {
            attempt.error("redirect from https to plain http refused")
        } else {
            attempt.follow()
        }
    });
    reqwest::Client::builder()
        // Proxy settings from the environment are for people, not for key fetches.
        .no_proxy()
        .redirect(redirects)
        .timeout(timeout)
        .connect_timeout(timeout)
        .user_agent(concat!("portcullis-gateway/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| JwksError::Client(error_chain(&e)))
}

/// An error with its causes, because reqwest and hyper put the useful part in `source()`.
fn error_chain(error: &dyn StdError) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let part = e.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = e.source();
    }
    text
}

/// `max-age` from Cache-Control values; `no-cache`/`no-store` count as 0 (so min_refresh).
pub(super) fn cache_max_age<'a>(values: impl Iterator<Item = &'a str>) -> Option<Duration> {
    let mut max_age = None;
    for directive in values.flat_map(|v| v.split(',')) {
        let directive = directive.trim();
        let (name, value) = directive.split_once('=').unwrap_or((directive, ""));
        let name = name.trim();
        if name.eq_ignore_ascii_case("no-cache") || name.eq_ignore_ascii_case("no-store") {
            return Some(Duration::ZERO);
        }
        if name.eq_ignore_ascii_case("max-age") && max_age.is_none() {
            max_age = value
                .trim()
                .trim_matches('"')
                .parse::<u64>()
                .ok()
                .map(Duration::from_secs);
        }
    }
    max_age
}

fn answer_headers(status: u16, headers: &http::HeaderMap, body: Vec<u8>) -> HttpAnswer {
    HttpAnswer {
        status,
        etag: headers
            .get(http::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        max_age: cache_max_age(
            headers
                .get_all(http::header::CACHE_CONTROL)
                .iter()
                .filter_map(|v| v.to_str().ok()),
        ),
        body,
    }
}

fn too_large(url: &str, limit: usize) -> JwksError {
    JwksError::TooLarge {
        url: url.to_owned(),
        limit,
    }
}

/// Refuses early when the announced length is already over the cap.
fn check_content_length(
    url: &str,
    headers: &http::HeaderMap,
    limit: usize,
) -> Result<(), JwksError> {
    let announced = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match announced {
        Some(len) if len > limit as u64 => Err(too_large(url, limit)),
        _ => Ok(()),
    }
}

fn append_capped(
    buf: &mut Vec<u8>,
    chunk: &[u8],
    url: &str,
    limit: usize,
) -> Result<(), JwksError> {
    if buf.len().saturating_add(chunk.len()) > limit {
        return Err(too_large(url, limit));
    }
    buf.extend_from_slice(chunk);
    Ok(())
}

/// A GET of at most `limit` body bytes, conditional on `etag`, with `bearer` credentials.
pub(crate) async fn http_get(
    client: &reqwest::Client,
    url: &str,
    etag: Option<&str>,
    bearer: Option<&str>,
    limit: usize,
    timeout: Duration,
) -> Result<HttpAnswer, JwksError> {
    let transport = |e: reqwest::Error| {
        if e.is_timeout() {
            JwksError::Timeout {
                url: url.to_owned(),
                timeout,
            }
        } else {
            JwksError::Connect {
                url: url.to_owned(),
                reason: error_chain(&e),
            }
        }
    };
    let mut request = client.get(url).header(http::header::ACCEPT, ACCEPT_JWKS);
    if let Some(tag) = etag {
        request = request.header(http::header::IF_NONE_MATCH, tag);
    }
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    let mut response = request.send().await.map_err(transport)?;
    let status = response.status().as_u16();
    let mut body = Vec::new();
    // Only a 200 carries a document worth reading; any other body is left unread.
    if status == 200 {
        check_content_length(url, response.headers(), limit)?;
        while let Some(chunk) = response.chunk().await.map_err(transport)? {
            append_capped(&mut body, &chunk, url, limit)?;
        }
    }
    Ok(answer_headers(status, response.headers(), body))
}

/// Aborts the spawned connection driver when the exchange ends (or is cancelled).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// GET over HTTP/1.1 on a Unix socket; `rest` is `/path/to.sock:/http/path`.
pub(super) async fn unix_get(
    url: &str,
    rest: &str,
    etag: Option<&str>,
    limit: usize,
) -> Result<HttpAnswer, JwksError> {
    let bad_url = |reason: &str| JwksError::BadUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let transport = |reason: String| JwksError::Connect {
        url: url.to_owned(),
        reason,
    };
    let (socket, path) = rest
        .find(":/")
        .map(|at| (&rest[..at], &rest[at + 1..]))
        .ok_or_else(|| bad_url("expected unix:/path/to.sock:/http/path"))?;
    if socket.is_empty() {
        return Err(bad_url("empty socket path"));
    }
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| transport(format!("connect to {socket}: {e}")))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| transport(error_chain(&e)))?;
    let _driver = AbortOnDrop(tokio::spawn(async move {
        // Errors surface through send_request / the body; nothing to add here.
        let _ = connection.await;
    }));
    let mut request = http::Request::get(path)
        .header(http::header::HOST, "localhost")
        .header(http::header::ACCEPT, ACCEPT_JWKS);
    if let Some(tag) = etag {
        request = request.header(http::header::IF_NONE_MATCH, tag);
    }
    let request = request
        .body(http_body_util::Empty::<Bytes>::new())
        .map_err(|e| bad_url(&e.to_string()))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| transport(error_chain(&e)))?;
    let (parts, mut incoming) = response.into_parts();
    let status = parts.status.as_u16();
    let mut body = Vec::new();
    if status == 200 {
        check_content_length(url, &parts.headers, limit)?;
        while let Some(frame) = incoming.frame().await {
            let frame = frame.map_err(|e| transport(error_chain(&e)))?;
            if let Some(data) = frame.data_ref() {
                append_capped(&mut body, data, url, limit)?;
            }
        }
    }
    Ok(answer_headers(status, &parts.headers, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control_max_age() {
        let parse = |v: &[&str]| cache_max_age(v.iter().copied());
        assert_eq!(
            parse(&["public, max-age=300"]),
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            parse(&["public", "Max-Age=\"60\""]),
            Some(Duration::from_secs(60))
        );
        assert_eq!(parse(&["max-age=300, no-cache"]), Some(Duration::ZERO));
        assert_eq!(parse(&["public"]), None);
        assert_eq!(parse(&["max-age=soon"]), None);
    }
}
