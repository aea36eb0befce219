//! Anonymous sign-in: a new account without credentials (`amr: ["anon"]`), which may later
//! become a regular account with the same id (see [`super::profile`]).

use serde_json::json;

use super::sessions::{self, TokenPair};
use super::AuthError;
use crate::app::App;
use crate::store::NewUser;

/// Creates an anonymous user and logs it in (when anonymous sign-in is enabled).
pub(crate) async fn sign_in(app: &App) -> Result<TokenPair, AuthError> {
    if !app.cfg.anonymous_enabled {
        return Err(AuthError::Disabled("anonymous sign-in is disabled"));
    }
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
