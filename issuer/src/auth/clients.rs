//! OAuth 2.0 clients (RFC 6749 §2) and the rules of the OAuth endpoints: who may use which
//! grant, whose tokens a client may introspect or revoke.
//!
//! Two kinds of client:
//! - the **first-party client**, public (no secret), id `oauth.first_party_client_id`:
//!   password, SMS, anonymous and sign-up logins and their refreshes belong to it;
//! - **confidential clients**, which are API keys: `client_id` = the key's id,
//!   `client_secret` = the key. Their logins (`client_credentials`, `/v1/auth/api-key`) and
//!   refreshes belong to the key.
//!
//! Every session records its client, every access token names it (`client_id`, RFC 9068).
//!
//! Client authentication is optional where RFC 6749 lets a client go without it, but
//! credentials that are presented must be valid, whatever the grant: an unknown `client_id`,
//! a wrong secret, a secret for the public client, or a `client_id` that names another client
//! than the secret are all `invalid_client`.

use serde::{Deserialize, Serialize};

use super::limits::{self, LimitKey};
use super::sessions::{self, Introspection, TokenPair};
use super::{api_key, AuthError};
use crate::app::App;
use crate::crypto::secrets;
use crate::store::{ApiKey, Session};

/// How a request presented (or tried to present) client credentials; an `invalid_client`
/// answer challenges with the same scheme (RFC 6749 §5.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// `Authorization: Basic` (`client_secret_basic`).
    Basic,
    /// `Authorization: ApiKey <key>`.
    ApiKey,
    /// `Authorization: Bearer <admin token>` (introspection and revocation only).
    Bearer,
    /// Form parameters (`client_secret_post`, or `client_id` alone for the public client),
    /// or nothing at all. There is no HTTP scheme to echo: the answer challenges with
    /// Basic, the scheme this issuer prefers (RFC 6749 §5.2 lets a 401 name the supported
    /// schemes).
    Form,
}

/// The `Authorization` header of an OAuth request, as the HTTP layer parsed it.
#[derive(Debug)]
pub enum AuthHeader {
    /// No `Authorization` header.
    Absent,
    /// HTTP Basic: client id and secret (either may be empty).
    Basic {
        /// The user-id part.
        client_id: String,
        /// The password part.
        secret: String,
    },
    /// `ApiKey <key>`.
    ApiKey(String),
    /// `Bearer <token>`.
    Bearer(String),
    /// A header this issuer cannot read as credentials (another scheme, broken Basic).
    Unusable,
}

/// Everything a request presented to identify its client.
#[derive(Debug)]
pub struct Credentials {
    /// The `Authorization` header.
    pub header: AuthHeader,
    /// The form's `client_id`.
    pub client_id: Option<String>,
    /// The form's `client_secret`.
    pub client_secret: Option<String>,
    /// The client address (per-IP budgets: failed keys, the token endpoint, failed refreshes).
    pub ip: String,
}

/// An authenticated OAuth client.
#[derive(Debug)]
pub enum Client {
    /// The first-party public client.
    FirstParty,
    /// A confidential client: this API key (valid: not revoked, not expired).
    Key(Box<ApiKey>),
}

/// Who called introspection or revocation.
#[derive(Debug)]
enum Caller {
    /// The admin token: every token.
    Admin,
    /// An OAuth client: its own tokens, or every token with the matching permission.
    Client(Client),
}

/// What an API key may do beyond logging in; granted at creation (admin API, CLI).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    /// Introspect any token, not only those of the key's own sessions.
    Introspect,
    /// Revoke any token, not only those of the key's own sessions.
    Revoke,
}

impl Permission {
    /// Every permission, in the order help texts list them.
    pub const ALL: [Permission; 2] = [Permission::Introspect, Permission::Revoke];

    /// The name stored and shown (`introspect`, `revoke`).
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Introspect => "introspect",
            Permission::Revoke => "revoke",
        }
    }

    /// The permission of this name.
    pub fn parse(name: &str) -> Option<Permission> {
        Permission::ALL.into_iter().find(|p| p.as_str() == name)
    }
}

/// A grant at the token endpoint, with its parameters.
pub enum Grant {
    /// RFC 6749 §4.3: a login and its password.
    Password {
        /// Email or username.
        username: String,
        /// The password.
        password: String,
        /// The caller's address (failure budgets).
        ip: String,
    },
    /// RFC 6749 §6: a refresh token to rotate.
    RefreshToken(String),
    /// RFC 6749 §4.4: the authenticated client's own login.
    ClientCredentials,
}

impl Credentials {
    /// The scheme an `invalid_client` answer to these credentials challenges with.
    pub fn scheme(&self) -> Scheme {
        match self.header {
            AuthHeader::Basic { .. } | AuthHeader::Unusable => Scheme::Basic,
            AuthHeader::ApiKey(_) => Scheme::ApiKey,
            AuthHeader::Bearer(_) => Scheme::Bearer,
            AuthHeader::Absent => Scheme::Form,
        }
    }
}

impl Client {
    /// Its `client_id`.
    pub fn id<'a>(&'a self, app: &'a App) -> &'a str {
        match self {
            Client::FirstParty => &app.cfg.oauth.first_party_client_id,
            Client::Key(key) => &key.id,
        }
    }

    /// Whether `session` was opened by this client.
    fn owns(&self, session: &Session) -> bool {
        match self {
            Client::FirstParty => session.client_id.is_none(),
            Client::Key(key) => session.client_id.as_deref() == Some(key.id.as_str()),
        }
    }

    /// Whether the client is an API key holding `permission`.
    fn has(&self, permission: Permission) -> bool {
        matches!(self, Client::Key(key) if key.permissions.iter().any(|p| p == permission.as_str()))
    }
}

impl Caller {
    /// Whose budgets of `limits.introspect` and `limits.revoke` a call spends: `admin`, or
    /// the client's id.
    fn name<'a>(&'a self, app: &'a App) -> &'a str {
        match self {
            Caller::Admin => "admin",
            Caller::Client(c) => c.id(app),
        }
    }
}

/// Whether `token` is the admin API token (constant time).
pub(crate) fn is_admin_token(app: &App, token: &str) -> bool {
    secrets::constant_time_eq(&secrets::hash_token(token), &app.admin_token_hash)
}

fn invalid(scheme: Scheme, reason: &'static str) -> AuthError {
    AuthError::InvalidClient { scheme, reason }
}

/// Authenticates the client of a request; `None` when it presented no credentials at all.
///
/// RFC 6749 §2.3: one method per request, so a header credential together with a form
/// `client_secret` is refused; a form `client_id` next to a header credential must name the
/// same client. A bearer token is not a client credential (see [`authenticate_caller`]).
async fn authenticate(app: &App, creds: &Credentials) -> Result<Option<Client>, AuthError> {
    let form_id = creds.client_id.as_deref();
    let form_secret = creds.client_secret.as_deref();
    let (scheme, client_id, secret) = match &creds.header {
        AuthHeader::Absent => match (form_id, form_secret) {
            (None, None) => return Ok(None),
            (id, secret) => (Scheme::Form, id, secret.unwrap_or("")),
        },
        AuthHeader::Basic { client_id, secret } => {
            if form_secret.is_some() {
                return Err(invalid(
                    Scheme::Basic,
                    "use one client authentication method",
                ));
            }
            if form_id.is_some_and(|id| id != client_id) {
                return Err(invalid(
                    Scheme::Basic,
                    "client_id differs from the Basic credentials",
                ));
            }
            (Scheme::Basic, Some(client_id.as_str()), secret.as_str())
        }
        AuthHeader::ApiKey(key) => {
            if form_secret.is_some() {
                return Err(invalid(
                    Scheme::ApiKey,
                    "use one client authentication method",
                ));
            }
            (Scheme::ApiKey, form_id, key.as_str())
        }
        AuthHeader::Bearer(_) => {
            return Err(invalid(
                Scheme::Bearer,
                "a bearer token does not authenticate a client here: use client_secret_basic",
            ))
        }
        AuthHeader::Unusable => {
            return Err(invalid(
                Scheme::Basic,
                "unreadable Authorization header: use Basic client_id:client_secret",
            ))
        }
    };
    // An empty client_id is no client_id (a Basic header of ":secret").
    let client_id = client_id.filter(|id| !id.is_empty());
    let first_party = app.cfg.oauth.first_party_client_id.as_str();
    if client_id == Some(first_party) {
        // A public client has no secret; an empty one is how Basic says so.
        return if secret.is_empty() {
            Ok(Some(Client::FirstParty))
        } else {
            Err(invalid(
                scheme,
                "the first-party client is public: it has no secret",
            ))
        };
    }
    if secret.is_empty() {
        return Err(invalid(
            scheme,
            match client_id {
                Some(_) => "unknown client, or a confidential client without its secret",
                None => "client_id is required",
            },
        ));
    }
    let key = api_key::authenticate(app, secret, &creds.ip)
        .await?
        .ok_or_else(|| {
            invalid(
                scheme,
                "unknown, revoked or expired client secret (API key)",
            )
        })?;
    // The key names its client; a client_id, when given, must be that one.
    if client_id.is_some_and(|id| id != key.id) {
        return Err(invalid(
            scheme,
            "client_id does not match the client secret",
        ));
    }
    Ok(Some(Client::Key(Box::new(key))))
}

/// The token endpoint: authenticates the client when it presented credentials, checks that
/// it may use the grant, and runs the grant.
///
/// - `password`: the first-party client (or no client authentication: the default client);
///   an API key client gets `unauthorized_client` (user logins are first-party).
/// - `client_credentials`: an API key client only (`invalid_client` without one,
///   `unauthorized_client` for the public client, RFC 6749 §4.4).
/// - `refresh_token`: an authenticated client must be the one the session belongs to
///   (`invalid_grant` otherwise, checked before the token is spent). Without client
///   authentication the refresh token alone suffices, as on `POST /v1/auth/refresh`.
pub(crate) async fn token(
    app: &App,
    creds: &Credentials,
    grant: Grant,
) -> Result<TokenPair, AuthError> {
    // `limits.token`: every grant counts, before the grant's own budgets.
    let per_ip = app.cfg.limits.token.per_ip;
    limits::take(&app.store, &[(LimitKey::TokenIp(&creds.ip), per_ip)]).await?;
    let client = authenticate(app, creds).await?;
    match grant {
        Grant::Password {
            username,
            password,
            ip,
        } => {
            if let Some(Client::Key(_)) = client {
                return Err(AuthError::UnauthorizedClient(
                    "the password grant is for the first-party client; an API key logs in \
                     with client_credentials",
                ));
            }
            super::password::grant(app, &username, password, &ip).await
        }
        Grant::ClientCredentials => match client {
            Some(Client::Key(key)) => api_key::login(app, &key).await,
            Some(Client::FirstParty) => Err(AuthError::UnauthorizedClient(
                "client_credentials needs a confidential client (an API key); the \
                 first-party client is public",
            )),
            None => Err(invalid(
                Scheme::Form,
                "client_credentials needs client authentication: the API key's id and the \
                 key as client_id and client_secret",
            )),
        },
        Grant::RefreshToken(refresh) => {
            if let Some(client) = &client {
                // Before rotation: another client's attempt must not spend the token (its
                // owner's next refresh would look like reuse and end the session).
                if let Some(session) = sessions::session_of_refresh(app, &refresh).await? {
                    if !client.owns(&session) {
                        return Err(AuthError::InvalidGrant(
                            "the refresh token was issued to another client",
                        ));
                    }
                }
            }
            sessions::refresh(app, &refresh, &creds.ip).await
        }
    }
}

/// Authenticates the caller of introspection or revocation: the admin token
/// (`Authorization: Bearer`) or an OAuth client; `invalid_client` when neither. Then the
/// token to act on is required (RFC 7009 §2.1 and RFC 7662 §2.1 authenticate first).
async fn authenticate_caller<'t>(
    app: &App,
    creds: &Credentials,
    token: Option<&'t str>,
) -> Result<(Caller, &'t str), AuthError> {
    let caller = if let AuthHeader::Bearer(bearer) = &creds.header {
        if creds.client_id.is_some() || creds.client_secret.is_some() {
            return Err(invalid(
                Scheme::Bearer,
                "use one client authentication method",
            ));
        }
        if !is_admin_token(app, bearer) {
            return Err(invalid(Scheme::Bearer, "not the admin token"));
        }
        Caller::Admin
    } else {
        match authenticate(app, creds).await? {
            Some(client) => Caller::Client(client),
            None => {
                return Err(invalid(
                    Scheme::Form,
                    "authenticate as a client (client_secret_basic, client_secret_post, or \
                     the first-party client_id) or with the admin token",
                ))
            }
        }
    };
    let token = token.ok_or(AuthError::BadRequest("token is required"))?;
    Ok((caller, token))
}

/// Introspection (RFC 7662) as `caller` sees it: the admin token and keys with permission
/// `introspect` see every token, other API keys only the tokens of their own sessions
/// (anything else is reported inactive, so a key learns nothing about other clients'
/// tokens). The public client may not introspect: RFC 7662 §2.1 wants the endpoint
/// protected against token scanning, and a client without a secret protects nothing.
pub(crate) async fn introspect(
    app: &App,
    creds: &Credentials,
    token: Option<&str>,
) -> Result<Introspection, AuthError> {
    let (caller, token) = authenticate_caller(app, creds, token).await?;
    if let Caller::Client(Client::FirstParty) = caller {
        return Err(invalid(
            creds.scheme(),
            "introspection needs a confidential client (an API key) or the admin token",
        ));
    }
    let per_client = app.cfg.limits.introspect.per_client;
    let key = LimitKey::IntrospectClient(caller.name(app));
    limits::take(&app.store, &[(key, per_client)]).await?;
    let found = sessions::introspect(app, token).await?;
    let visible = match (&caller, found.session()) {
        (_, None) => true,
        (Caller::Admin, Some(_)) => true,
        (Caller::Client(c), Some(s)) => c.has(Permission::Introspect) || c.owns(s),
    };
    Ok(if visible {
        found
    } else {
        Introspection::Inactive
    })
}

/// Revocation (RFC 7009) by `caller`: the token's whole session ends when the token belongs
/// to the caller (the public client's tokens by its `client_id` alone: holding the token is
/// the proof), or the caller is the admin token or a key with permission `revoke`. Another
/// client's token, like an unknown one, is answered as revoked and left alone (§2.1).
pub(crate) async fn revoke(
    app: &App,
    creds: &Credentials,
    token: Option<&str>,
) -> Result<(), AuthError> {
    let (caller, token) = authenticate_caller(app, creds, token).await?;
    let per_client = app.cfg.limits.revoke.per_client;
    let key = LimitKey::RevokeClient(caller.name(app));
    limits::take(&app.store, &[(key, per_client)]).await?;
    let Some(session) = sessions::session_of_token(app, token).await? else {
        return Ok(());
    };
    let allowed = match caller {
        Caller::Admin => true,
        Caller::Client(c) => c.has(Permission::Revoke) || c.owns(&session),
    };
    if allowed {
        sessions::revoke_quietly(app, &session.id, "revoked").await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permissions_round_trip_by_name() {
        for p in Permission::ALL {
            assert_eq!(Permission::parse(p.as_str()), Some(p));
            let json = serde_json::to_value(p).expect("serializes");
            assert_eq!(json, p.as_str());
        }
        assert_eq!(Permission::parse("admin"), None);
    }
}
