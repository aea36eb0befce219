//! A route's `cors` block.

use std::time::Duration;

use http::HeaderName;
use serde_saphyr::Spanned;

use super::file;
use super::{dur, ConfigError, Source};

/// Compiles a route's CORS block.
pub(super) fn compile_cors(
    src: &Source,
    c: &Spanned<file::CorsFile>,
) -> Result<crate::forwarding::cors::Cors, ConfigError> {
    let v = &c.value;
    if v.origins.is_empty() {
        return Err(src
            .at(c)
            .err("cors.origins: at least one origin (or \"*\") is required"));
    }
    let origins: Vec<String> = v
        .origins
        .iter()
        .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
        .collect();
    if v.credentials && origins.iter().any(|o| o == "*") {
        return Err(src
            .at(c)
            .err("cors: `credentials: true` cannot be combined with origin \"*\""));
    }
    let mut methods = Vec::new();
    for m in v.methods.clone().unwrap_or_else(|| {
        ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
            .map(String::from)
            .to_vec()
    }) {
        methods.push(
            http::Method::from_bytes(m.to_ascii_uppercase().as_bytes()).map_err(|_| {
                src.at(c)
                    .err(format!("cors.methods: {m:?} is not a method"))
            })?,
        );
    }
    let headers: Vec<String> = v
        .headers
        .clone()
        .unwrap_or_else(|| vec!["authorization".into(), "content-type".into()])
        .iter()
        .map(|h| h.to_ascii_lowercase())
        .collect();
    for h in &headers {
        HeaderName::from_bytes(h.as_bytes()).map_err(|_| {
            src.at(c)
                .err(format!("cors.headers: {h:?} is not a header name"))
        })?;
    }
    Ok(crate::forwarding::cors::Cors {
        origins,
        methods,
        headers,
        max_age: dur(src, &v.max_age, "cors.max_age", Duration::from_secs(600))?.as_secs(),
        credentials: v.credentials,
    })
}
