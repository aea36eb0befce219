//! Anonymous sign-in: a new account without credentials (`amr: ["anon"]`), which may later
//! become a regular account with the same id (see [`super::profile`]).

use serde_json::json;

use super::limits::{self, LimitKey};
use super::sessions::{self, TokenPair};
use super::AuthError;
use crate::app::App;
use crate::store::NewUser;

/// Creates an anonymous user and logs it in (when anonymous sign-in is enabled), within the
/// budgets of `limits.anonymous` (per client address `ip`, and in total: every call adds a
/// row to the users table).
pub(crate) async fn sign_in(app: &App, ip: &str) -> Result<TokenPair, AuthError> {
    if !app.cfg.anonymous_enabled {
        return Err(AuthError::Disabled("anonymous sign-in is disabled"));
    }
    let rule = &app.cfg.limits.anonymous;
    limits::take(
        &app.store,
        &[
            (LimitKey::AnonymousIp(ip), rule.per_ip),
            (LimitKey::AnonymousGlobal, rule.global),
        ],
    )
    .await?;
    let user = app
        .store
        .create_user(&NewUser {
            email: None,
            username: None,
            phone: None,
            password_hash: None,
            roles: Vec::new(),
            app_metadata: json!({}),
            user_metadata: json!({}),
            anonymous: true,
        })
        .await?;
    let pair = sessions::start(app, &user, "anon", &[], &[]).await?;
    app.metrics.login("anon", true);
    Ok(pair)
}
