//! Sessions: what every login ends with (a session, an access token, a refresh token), refresh
//! rotation with reuse detection, the caller behind an access token, logout, introspection
//! and revocation.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::AuthError;
use crate::app::{now, App};
use crate::crypto::secrets;
use crate::store::{RotateOutcome, Session, StoreError, User};
use crate::tokens;

/// What every successful login returns.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenPair {
    /// The access JWT.
    pub access_token: String,
    /// Always `Bearer`.
    #[schema(example = "Bearer")]
    pub token_type: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    /// The opaque refresh token.
    pub refresh_token: String,
}

/// Longest refresh token looked up (real ones have 43 characters).
const MAX_REFRESH_LEN: usize = 256;

/// Starts a session of the first-party client for `user` authenticated by `amr` and returns
/// the token pair.
pub(crate) async fn start(
    app: &App,
    user: &User,
    amr: &str,
    scopes: &[String],
    roles: &[String],
) -> Result<TokenPair, AuthError> {
    start_as(app, None, user, amr, scopes, roles).await
}

/// Starts a session of OAuth client `client_id` (`None`: the first-party client, see
/// [`Session::client_id`]) and returns the token pair.
pub(crate) async fn start_as(
    app: &App,
    client_id: Option<&str>,
    user: &User,
    amr: &str,
    scopes: &[String],
    roles: &[String],
) -> Result<TokenPair, AuthError> {
    let t = now();
    let session = Session {
        id: secrets::random_id(),
        user_id: user.id.clone(),
        amr: vec![amr.to_string()],
        scopes: scopes.to_vec(),
        roles: roles.to_vec(),
        created_at: t,
        last_used_at: t,
        expires_at: t + app.cfg.session_lifetime.as_secs() as i64,
        revoked_at: None,
        revoked_reason: None,
        client_id: client_id.map(str::to_string),
    };
    let refresh = secrets::random_token();
    app.store
        .create_session(&session, &secrets::hash_token(&refresh))
        .await?;
    let access_token = tokens::mint(app, user, &session, scopes, roles)?;
    Ok(TokenPair {
        access_token,
        token_type: "Bearer".into(),
        expires_in: app.cfg.access_ttl.as_secs(),
        refresh_token: refresh,
    })
}

/// A machine identity that has no account row.
pub(crate) fn service_user(subject: &str) -> User {
    User {
        id: subject.to_string(),
        email: None,
        username: None,
        phone: None,
        password_hash: None,
        roles: Vec::new(),
        app_metadata: json!({}),
        user_metadata: json!({}),
        anonymous: false,
        email_confirmed_at: None,
        disabled: false,
        created_at: 0,
        updated_at: 0,
    }
}

/// Rotates a refresh token: the answer carries a new pair; the old refresh token is spent.
pub(crate) async fn refresh(app: &App, presented: &str) -> Result<TokenPair, AuthError> {
    if presented.len() > MAX_REFRESH_LEN {
        return Err(AuthError::InvalidGrant("unknown refresh token"));
    }
    let new_refresh = secrets::random_token();
    let outcome = app
        .store
        .rotate_refresh(
            &secrets::hash_token(presented),
            &secrets::hash_token(&new_refresh),
            now(),
            app.cfg.refresh_reuse_grace.as_secs() as i64,
            app.cfg.session_idle.as_secs() as i64,
        )
        .await?;
    let label = match &outcome {
        RotateOutcome::Rotated { .. } => "rotated",
        RotateOutcome::WithinGrace { .. } => "grace",
        RotateOutcome::Reused { .. } => "reused",
        _ => "invalid",
    };
    app.metrics.refreshes.with_label_values(&[label]).inc();
    let session: Session = match outcome {
        RotateOutcome::Rotated { session } | RotateOutcome::WithinGrace { session } => session,
        RotateOutcome::Reused { .. } => {
            return Err(AuthError::InvalidGrant(
                "refresh token reuse detected: the session has been revoked",
            ))
        }
        RotateOutcome::Unknown => return Err(AuthError::InvalidGrant("unknown refresh token")),
        RotateOutcome::SessionInactive => {
            return Err(AuthError::InvalidGrant(
                "the session has expired or was revoked",
            ))
        }
    };
    // A session opened with an API key keeps the roles that key granted (never more, even
    // when the key's subject is an account with other roles); every other session gets the
    // account's current roles, so an admin's change applies at the next refresh.
    let by_key = session.amr.iter().any(|m| m == "key");
    let (user, roles) = match app.store.get_user(&session.user_id).await {
        Ok(u) if !by_key => {
            let roles = u.roles.clone();
            (u, roles)
        }
        Ok(u) => (u, session.roles.clone()),
        Err(StoreError::NotFound) => (service_user(&session.user_id), session.roles.clone()),
        Err(e) => return Err(e.into()),
    };
    if user.disabled {
        return Err(AuthError::InvalidGrant("the account is disabled"));
    }
    let access_token = tokens::mint(app, &user, &session, &session.scopes, &roles)?;
    Ok(TokenPair {
        access_token,
        token_type: "Bearer".into(),
        expires_in: app.cfg.access_ttl.as_secs(),
        refresh_token: new_refresh,
    })
}

/// Whether session `sid` exists and is not revoked (a database error counts as not alive).
pub(crate) async fn is_alive(app: &App, sid: &str) -> bool {
    matches!(app.store.get_session(sid).await, Ok(s) if s.revoked_at.is_none())
}

/// The caller's user and token claims, from a bearer access token whose session is still
/// active and whose account is enabled.
pub(crate) async fn caller(app: &App, bearer: Option<&str>) -> Result<(User, Value), AuthError> {
    let token = bearer.ok_or(AuthError::InvalidToken("a bearer access token is required"))?;
    let claims = tokens::verify(app, token)?;
    let active = match app.store.get_session(tokens::session_id(&claims)).await {
        Ok(s) => s.revoked_at.is_none(),
        Err(StoreError::NotFound) => false,
        Err(e) => return Err(e.into()),
    };
    if !active {
        return Err(AuthError::InvalidToken("the session has been revoked"));
    }
    let sub = claims
        .get("sub")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let user = app
        .store
        .get_user(sub)
        .await
        .map_err(|_| AuthError::InvalidToken("unknown user"))?;
    if user.disabled {
        return Err(AuthError::InvalidToken("the account is disabled"));
    }
    Ok((user, claims))
}

/// What names the session to end at logout.
pub(crate) enum LogoutBy<'a> {
    /// A bearer access token (must be valid).
    AccessToken(&'a str),
    /// A refresh token (an unknown one ends nothing, silently).
    RefreshToken(&'a str),
}

/// Ends a session (reason `logout`); an unknown refresh token or session is not an error.
pub(crate) async fn logout(app: &App, by: LogoutBy<'_>) -> Result<(), AuthError> {
    let session_id = match by {
        LogoutBy::AccessToken(token) => {
            tokens::session_id(&tokens::verify(app, token)?).to_string()
        }
        LogoutBy::RefreshToken(rt) => match session_of_refresh(app, rt).await? {
            Some(s) => s.id,
            None => return Ok(()),
        },
    };
    revoke_quietly(app, &session_id, "logout").await
}

/// Revokes session `sid` with `reason`; a missing session is not an error.
pub(crate) async fn revoke_quietly(app: &App, sid: &str, reason: &str) -> Result<(), AuthError> {
    match app.store.revoke_session(sid, now(), reason).await {
        Ok(()) | Err(StoreError::NotFound) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// What introspection found (RFC 7662).
pub(crate) enum Introspection {
    /// Invalid, unknown, spent, or its session is over.
    Inactive,
    /// A valid access token of a live session.
    Access {
        /// Its claims.
        claims: Value,
        /// Its session.
        session: Session,
    },
    /// A current refresh token of a live session.
    Refresh {
        /// The session.
        session: Session,
        /// When the refresh token was issued.
        issued_at: i64,
    },
}

impl Introspection {
    /// The session of an active token.
    pub(crate) fn session(&self) -> Option<&Session> {
        match self {
            Introspection::Inactive => None,
            Introspection::Access { session, .. } | Introspection::Refresh { session, .. } => {
                Some(session)
            }
        }
    }
}

/// Introspects an access token or a refresh token.
pub(crate) async fn introspect(app: &App, token: &str) -> Result<Introspection, AuthError> {
    // An access token: signature, expiry, and its session still alive.
    if let Ok(claims) = tokens::verify(app, token) {
        return Ok(
            match app.store.get_session(tokens::session_id(&claims)).await {
                Ok(session) if session.revoked_at.is_none() => {
                    Introspection::Access { claims, session }
                }
                Ok(_) | Err(StoreError::NotFound) => Introspection::Inactive,
                Err(e) => return Err(e.into()),
            },
        );
    }
    // A refresh token: current (not rotated) and its session alive.
    let Some(rt) = app
        .store
        .find_refresh_token(&secrets::hash_token(token))
        .await?
    else {
        return Ok(Introspection::Inactive);
    };
    if rt.rotated_at.is_some() {
        return Ok(Introspection::Inactive);
    }
    match app.store.get_session(&rt.session_id).await {
        Ok(s) if s.revoked_at.is_none() && s.expires_at > now() => Ok(Introspection::Refresh {
            session: s,
            issued_at: rt.created_at,
        }),
        _ => Ok(Introspection::Inactive),
    }
}

/// The session a refresh token (current or rotated) belongs to, whatever its state.
pub(crate) async fn session_of_refresh(
    app: &App,
    refresh: &str,
) -> Result<Option<Session>, AuthError> {
    Ok(app
        .store
        .find_session_by_refresh(&secrets::hash_token(refresh))
        .await?)
}

/// The session of a valid access token or of a refresh token (current or rotated), whatever
/// the session's state; `None` for anything else (RFC 7009 revocation).
pub(crate) async fn session_of_token(app: &App, token: &str) -> Result<Option<Session>, AuthError> {
    match tokens::verify(app, token) {
        Ok(claims) => match app.store.get_session(tokens::session_id(&claims)).await {
            Ok(s) => Ok(Some(s)),
            Err(StoreError::NotFound) => Ok(None),
            Err(e) => Err(e.into()),
        },
        Err(_) => session_of_refresh(app, token).await,
    }
}

/// Revokes one session by id with `reason` (`NotFound` when there is none).
pub(crate) async fn revoke(app: &App, sid: &str, reason: &str) -> Result<(), AuthError> {
    Ok(app.store.revoke_session(sid, now(), reason).await?)
}

/// Revokes every session of a subject with `reason` (none is not an error); returns how many.
pub(crate) async fn revoke_all(app: &App, user_id: &str, reason: &str) -> Result<u64, AuthError> {
    Ok(app
        .store
        .revoke_user_sessions(user_id, now(), reason)
        .await?)
}

/// A subject's sessions, revoked ones included.
pub(crate) async fn list(app: &App, user_id: &str) -> Result<Vec<Session>, AuthError> {
    Ok(app.store.list_sessions(user_id).await?)
}
