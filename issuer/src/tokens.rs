//! Access tokens: minting them for a session, and verifying this issuer's own (introspection,
//! `/v1/users/me`, logout, the admin API's role check).

use serde_json::{json, Value};

use crate::app::{now, App};
use crate::crypto::{secrets, CryptoError};
use crate::store::{Session, User};

/// Claims a caller can never set through metadata: they are the token's meaning.
pub const RESERVED_CLAIMS: [&str; 15] = [
    "iss",
    "sub",
    "aud",
    "exp",
    "iat",
    "nbf",
    "jti",
    "sid",
    "scope",
    "roles",
    "amr",
    "auth_time",
    "typ",
    "azp",
    "client_id",
];

/// Why an access token was refused (one answer for every reason: no oracle).
#[derive(Debug, thiserror::Error)]
#[error("invalid or expired access token")]
pub struct InvalidToken;

/// Mints an access token for `user` in `session`.
pub(crate) fn mint(
    app: &App,
    user: &User,
    session: &Session,
    scopes: &[String],
    roles: &[String],
) -> Result<String, CryptoError> {
    let now = now();
    let aud: Value = if app.cfg.audiences.len() == 1 {
        json!(app.cfg.audiences[0])
    } else {
        json!(app.cfg.audiences)
    };
    let mut claims = serde_json::Map::new();
    // Extra per-user claims first, so the registered ones below always win.
    if let Value::Object(extra) = &user.app_metadata {
        for (k, v) in extra {
            if !RESERVED_CLAIMS.contains(&k.as_str()) {
                claims.insert(k.clone(), v.clone());
            }
        }
    }
    let registered = json!({
        "iss": app.cfg.issuer,
        "sub": user.id,
        "aud": aud,
        "exp": now + app.cfg.access_ttl.as_secs() as i64,
        "iat": now,
        "nbf": now,
        "jti": secrets::random_id(),
        "sid": session.id,
        "scope": scopes.join(" "),
        "roles": roles,
        "amr": session.amr,
        "auth_time": session.created_at,
        // RFC 9068 §2.2: the client the token was issued to.
        "client_id": client_id_of(app, session),
    });
    if let Value::Object(r) = registered {
        claims.extend(r);
    }
    app.keys.view().signer.sign(&Value::Object(claims))
}

/// The `client_id` of the client that opened `session` (see [`Session::client_id`]).
pub(crate) fn client_id_of<'a>(app: &'a App, session: &'a Session) -> &'a str {
    session
        .client_id
        .as_deref()
        .unwrap_or(&app.cfg.oauth.first_party_client_id)
}

/// Claims of a valid access token from this issuer (signature, expiry, type, issuer).
pub(crate) fn verify(app: &App, token: &str) -> Result<Value, InvalidToken> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| InvalidToken)?;
    // A refresh token is opaque: it never parses as a JWT, so it cannot pass here.
    if header.typ.as_deref().map(|t| t.to_ascii_lowercase()) != Some("at+jwt".into()) {
        return Err(InvalidToken);
    }
    let kid = header.kid.ok_or(InvalidToken)?;
    let view = app.keys.view();
    let decoding = view.verifiers.get(&kid).ok_or(InvalidToken)?;
    let mut validation = jsonwebtoken::Validation::new(header.alg);
    validation.set_issuer(&[&app.cfg.issuer]);
    validation.set_audience(&app.cfg.audiences);
    validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
    let data =
        jsonwebtoken::decode::<Value>(token, decoding, &validation).map_err(|_| InvalidToken)?;
    Ok(data.claims)
}

/// The `sid` claim of verified claims (empty when absent).
pub(crate) fn session_id(claims: &Value) -> &str {
    claims
        .get("sid")
        .and_then(Value::as_str)
        .unwrap_or_default()
}
