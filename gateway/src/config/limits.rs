//! Compiling `server.limits` and the `limit:` rules of the server and of each route.

use std::collections::HashMap;
use std::time::Duration;

use http::HeaderName;
use serde_saphyr::Spanned;

use super::file::{self, LimitFile, LimitsFile, SizeValue};
use super::{dur, ConfigError, Loc, Source};
use crate::limits::head::HeadLimits;
use crate::limits::rules::Rate;
use crate::limits::{EdgeLimits, LimitKey, LimitKind, LimitRule};

/// Pingora's HTTP/1 reader refuses heads over 1 MiB and more than 256 headers on its own.
const PINGORA_MAX_HEAD: u64 = 1 << 20;
const PINGORA_MAX_HEADERS: u64 = 256;

fn size(
    src: &Source,
    v: &Option<Spanned<SizeValue>>,
    key: &str,
    default: u64,
    range: (u64, u64),
) -> Result<u64, ConfigError> {
    let Some(s) = v else { return Ok(default) };
    let n = file::parse_size(&s.value.0).map_err(|e| src.at(s).err(format!("{key}: {e}")))?;
    if n < range.0 || n > range.1 {
        return Err(src.at(s).err(format!(
            "{key}: must be between {} and {} bytes",
            range.0, range.1
        )));
    }
    Ok(n)
}

fn count(
    src: &Source,
    v: &Option<Spanned<u64>>,
    key: &str,
    default: u64,
    range: (u64, u64),
) -> Result<u64, ConfigError> {
    let Some(n) = v else { return Ok(default) };
    if n.value < range.0 || n.value > range.1 {
        return Err(src.at(n).err(format!(
            "{key}: must be between {} and {}",
            range.0, range.1
        )));
    }
    Ok(n.value)
}

fn positive(
    src: &Source,
    v: &Option<Spanned<file::DurationValue>>,
    key: &str,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let d = dur(src, v, key, default)?;
    match v {
        Some(s) if d.is_zero() => Err(src.at(s).err(format!("{key}: must be more than 0"))),
        _ => Ok(d),
    }
}

/// Room for `Authorization: Bearer ` and a little more on a token's header line.
const TOKEN_LINE_OVERHEAD: u64 = 64;

/// `server.limits` with nginx-like defaults. `max_token_size` raises the default header-line
/// bound so that every token the verifier accepts also fits in a header line.
pub(super) fn compile_edge(
    src: &Source,
    l: &LimitsFile,
    max_token_size: usize,
) -> Result<EdgeLimits, ConfigError> {
    let d = EdgeLimits::default();
    let line_default =
        (d.head.max_header_line as u64).max(max_token_size as u64 + TOKEN_LINE_OVERHEAD);
    let max_uri_length = size(
        src,
        &l.max_uri_length,
        "server.limits.max_uri_length",
        d.head.max_uri_length as u64,
        (256, PINGORA_MAX_HEAD / 2),
    )?;
    let max_header_line = size(
        src,
        &l.max_header_line,
        "server.limits.max_header_line",
        line_default,
        (256, PINGORA_MAX_HEAD / 2),
    )?;
    let max_head_size = size(
        src,
        &l.max_head_size,
        "server.limits.max_head_size",
        (d.head.max_head_size as u64)
            .max(max_uri_length)
            .max(max_header_line),
        (1024, PINGORA_MAX_HEAD),
    )?;
    if max_head_size < max_uri_length.max(max_header_line) {
        let at = l.max_head_size.as_ref().map(|s| src.at(s));
        let message =
            "server.limits.max_head_size: must be at least max_uri_length and max_header_line";
        return Err(match at {
            Some(loc) => loc.err(message),
            None => ConfigError::File {
                file: src.name.to_string(),
                message: message.into(),
            },
        });
    }
    let body = size(
        src,
        &l.max_body_size,
        "server.limits.max_body_size",
        d.max_body_size.unwrap_or(0),
        (0, u64::MAX),
    )?;
    let keepalive_timeout = dur(
        src,
        &l.keepalive_timeout,
        "server.limits.keepalive_timeout",
        d.keepalive_timeout,
    )?;
    Ok(EdgeLimits {
        head: HeadLimits {
            max_uri_length: max_uri_length as usize,
            max_header_line: max_header_line as usize,
            max_head_size: max_head_size as usize,
            max_headers: count(
                src,
                &l.max_headers,
                "server.limits.max_headers",
                d.head.max_headers as u64,
                (1, PINGORA_MAX_HEADERS),
            )? as usize,
        },
        max_body_size: (body > 0).then_some(body),
        client_header_timeout: positive(
            src,
            &l.client_header_timeout,
            "server.limits.client_header_timeout",
            d.client_header_timeout,
        )?,
        client_body_timeout: positive(
            src,
            &l.client_body_timeout,
            "server.limits.client_body_timeout",
            d.client_body_timeout,
        )?,
        keepalive_timeout,
        keepalive_requests: count(
            src,
            &l.keepalive_requests,
            "server.limits.keepalive_requests",
            u64::from(d.keepalive_requests),
            (0, u64::from(u32::MAX)),
        )? as u32,
        max_connections: count(
            src,
            &l.max_connections,
            "server.limits.max_connections",
            d.max_connections as u64,
            (1, 1 << 24),
        )? as usize,
        rate_limit_keys: count(
            src,
            &l.rate_limit_keys,
            "server.limits.rate_limit_keys",
            d.rate_limit_keys as u64,
            (64, 1 << 24),
        )? as usize,
    })
}

/// Rules already defined, by name: one name is one budget, so it must mean one thing.
#[derive(Default)]
pub(super) struct RuleNames(HashMap<String, (LimitRule, Loc)>);

/// Compiles one `limit:` list; unnamed rules are called `{prefix}/{index}`.
pub(super) fn compile_rules(
    src: &Source,
    list: &[Spanned<LimitFile>],
    prefix: &str,
    names: &mut RuleNames,
) -> Result<Vec<LimitRule>, ConfigError> {
    let mut out = Vec::with_capacity(list.len());
    for (i, entry) in list.iter().enumerate() {
        let loc = src.at(entry);
        let rule = compile_rule(src, entry, &format!("{prefix}/{i}"))?;
        if out.iter().any(|r: &LimitRule| r.name == rule.name) {
            return Err(loc.err(format!(
                "limit: the rule {:?} appears twice in this list",
                rule.name
            )));
        }
        if let Some((prev, prev_loc)) = names.0.get(&rule.name) {
            if prev != &rule {
                return Err(loc.err(format!(
                    "limit: a different rule named {:?} is defined at {}; rules with one name share one budget and must be identical",
                    rule.name,
                    prev_loc.desc()
                )));
            }
        } else {
            names.0.insert(rule.name.clone(), (rule.clone(), loc));
        }
        out.push(rule);
    }
    Ok(out)
}

fn compile_rule(
    src: &Source,
    entry: &Spanned<LimitFile>,
    default_name: &str,
) -> Result<LimitRule, ConfigError> {
    let e = &entry.value;
    let name = match &e.name {
        None => default_name.to_string(),
        Some(n) => {
            let ok = !n.value.is_empty()
                && n.value.len() <= 64
                && n.value
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.:/".contains(c));
            if !ok {
                return Err(src
                    .at(n)
                    .err("limit.name: up to 64 letters, digits and - _ . : /"));
            }
            n.value.clone()
        }
    };
    let key = parse_key(&e.key.value).map_err(|m| src.at(&e.key).err(format!("limit.key: {m}")))?;
    let kind = match (&e.rate, &e.concurrency) {
        (Some(r), None) => {
            let rate =
                Rate::parse(&r.value).map_err(|m| src.at(r).err(format!("limit.rate: {m}")))?;
            let burst = count(src, &e.burst, "limit.burst", 0, (0, 1_000_000))? as u32;
            LimitKind::Rate { rate, burst }
        }
        (None, Some(_)) => {
            if let Some(b) = &e.burst {
                return Err(src
                    .at(b)
                    .err("limit.burst: only a `rate` limit has a burst"));
            }
            let max = count(src, &e.concurrency, "limit.concurrency", 1, (1, 1_000_000))?;
            LimitKind::Concurrency { max: max as u32 }
        }
        (Some(_), Some(_)) => {
            return Err(src
                .at(entry)
                .err("limit: give `rate` or `concurrency`, not both (use two rules)"))
        }
        (None, None) => {
            return Err(src
                .at(entry)
                .err("limit: missing `rate` (e.g. 10r/s) or `concurrency`"))
        }
    };
    Ok(LimitRule::new(name, key, kind))
}

fn parse_key(s: &str) -> Result<LimitKey, String> {
    let s = s.trim();
    Ok(match s {
        "ip" => LimitKey::Ip,
        "subject" => LimitKey::Subject,
        "session" => LimitKey::Session,
        "client" => LimitKey::Client,
        _ => {
            if let Some(h) = s.strip_prefix("header:") {
                let name = HeaderName::from_bytes(h.trim().as_bytes())
                    .map_err(|_| format!("{h:?} is not a header name"))?;
                LimitKey::Header(name)
            } else if let Some(c) = s.strip_prefix("claim:") {
                let path: Vec<String> = c.trim().split('.').map(str::to_string).collect();
                if path.iter().any(String::is_empty) {
                    return Err(format!(
                        "{c:?} is not a claim path such as tenant or org.id"
                    ));
                }
                LimitKey::Claim(path)
            } else {
                return Err(format!(
                    "{s:?} is not one of ip, subject, session, client, claim:<path>, header:<name>"
                ));
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert_eq!(parse_key("ip"), Ok(LimitKey::Ip));
        assert_eq!(
            parse_key("claim:org.id"),
            Ok(LimitKey::Claim(vec!["org".into(), "id".into()]))
        );
        assert_eq!(
            parse_key("header:X-Api-Key"),
            Ok(LimitKey::Header(HeaderName::from_static("x-api-key")))
        );
        assert!(parse_key("claim:a..b").is_err());
        assert!(parse_key("header:bad header").is_err());
        assert!(parse_key("user").is_err());
    }
}
