//! Shared service state and the operations every login ends with: create a session, mint an
//! access token, hand out a refresh token.

use std::sync::Arc;

use serde::Serialize;
use serde_json::{json, Value};

use crate::config::IssuerConfig;
use crate::crypto::password::PasswordParams;
use crate::crypto::secrets;
use crate::keys::KeyRing;
use crate::store::{Session, Store, User};

/// Everything handlers need.
pub struct App {
    /// Configuration.
    pub cfg: IssuerConfig,
    /// Database.
    pub store: Store,
    /// Signing keys.
    pub keys: Arc<KeyRing>,
    /// HMAC pepper for API-key hashes.
    pub pepper: Vec<u8>,
    /// SHA-256 of the admin API token.
    pub admin_token_hash: String,
    /// argon2id parameters.
    pub password: PasswordParams,
    /// Bounds concurrent password hashing (argon2 is memory-hard by design).
    pub hash_slots: tokio::sync::Semaphore,
    /// Prometheus metrics.
    pub metrics: crate::metrics::Metrics,
    /// Delivers the mails of the email flows (see `cfg.email`).
    pub mailer: crate::mail::Mailer,
    /// SMS one-time-code login (`None` when the `sms:` section is absent).
    pub sms: Option<crate::sms::SmsLogin>,
}

/// What every successful login returns.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TokenPair {
    /// The access JWT.
    pub access_token: String,
    /// Always `Bearer`.
    #[schema(example = "Bearer")]
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    /// The opaque refresh token.
    pub refresh_token: String,
}

pub use portcullis_common::time::unix_now as now;

/// Claims a caller can never set through metadata: they are the token's meaning.
pub const RESERVED_CLAIMS: [&str; 14] = [
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
];

impl App {
    /// Mints an access token for `user` in `session`.
    pub fn access_token(
        &self,
        user: &User,
        session: &Session,
        scopes: &[String],
        roles: &[String],
    ) -> Result<String, crate::crypto::CryptoError> {
        let now = now();
        let aud: Value = if self.cfg.audiences.len() == 1 {
            json!(self.cfg.audiences[0])
        } else {
            json!(self.cfg.audiences)
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
            "iss": self.cfg.issuer,
            "sub": user.id,
            "aud": aud,
            "exp": now + self.cfg.access_ttl.as_secs() as i64,
            "iat": now,
            "nbf": now,
            "jti": secrets::random_id(),
            "sid": session.id,
            "scope": scopes.join(" "),
            "roles": roles,
            "amr": session.amr,
            "auth_time": session.created_at,
        });
        if let Value::Object(r) = registered {
            claims.extend(r);
        }
        self.keys.view().signer.sign(&Value::Object(claims))
    }

    /// Starts a session for `user` authenticated by `amr` and returns the token pair.
    pub async fn login(
        &self,
        user: &User,
        amr: &str,
        scopes: &[String],
        roles: &[String],
    ) -> Result<TokenPair, crate::http::ApiError> {
        let t = now();
        let session = Session {
            id: secrets::random_id(),
            user_id: user.id.clone(),
            amr: vec![amr.to_string()],
            scopes: scopes.to_vec(),
            roles: roles.to_vec(),
            created_at: t,
            last_used_at: t,
            expires_at: t + self.cfg.session_lifetime.as_secs() as i64,
            revoked_at: None,
            revoked_reason: None,
        };
        let refresh = secrets::random_token();
        self.store
            .create_session(&session, &secrets::hash_token(&refresh))
            .await?;
        let access_token = self.access_token(user, &session, scopes, roles)?;
        Ok(TokenPair {
            access_token,
            token_type: "Bearer",
            expires_in: self.cfg.access_ttl.as_secs(),
            refresh_token: refresh,
        })
    }
}
