//! The issuer's OpenAPI 3.1 document, generated with utoipa from the `#[utoipa::path]`
//! annotations on the handlers, served at `GET /openapi.json` on the public listener.
//!
//! One document covers both listeners. The admin API's operations are merged in with the tag
//! `admin` and the security scheme `adminToken`; since they are served only on the admin
//! listener, each `/admin/...` path item carries its own `servers` entry,
//! `http://{admin_listen}` (the variable defaults to the shipped `127.0.0.1:8082`). The admin
//! listener does not serve the document: fetch it from the public one.
//!
//! Security schemes: `bearer` (an access token of this issuer), `apiKey`
//! (`Authorization: ApiKey <key>`), `basic` (HTTP Basic: login and password on
//! `/v1/auth/password`, client id and API key on the OAuth endpoints) and `adminToken` (the
//! admin API token, or an access token with role `admin`). An empty requirement (`{}`) in an
//! operation's `security` means the credentials may come in the body instead.
//!
//! Error answers are documented as [`ErrorBody`](super::ErrorBody), 413 included (the
//! body-size limit's answer is rewritten to that shape by `json_413`).
//!
//! When adding a route: annotate the handler, list it in [`ApiDoc`] below and in `ROUTES` in
//! this module's tests (which also checks that list against the routers' sources).

use std::sync::LazyLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::server::{ServerBuilder, ServerVariableBuilder};
use utoipa::{Modify, OpenApi};

use super::{admin, email, oauth, public, sms, ErrorBody};
use crate::auth::TokenPair;

/// The issuer's API, public and admin.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Portcullis issuer",
        version = env!("CARGO_PKG_VERSION"),
        description = "Token service: logins (password, API key, anonymous), access JWTs, rotating \
                       refresh tokens, JWKS, OAuth 2.0 token / introspection / revocation, and the \
                       admin API (served on the admin listener only). Errors answer \
                       `{\"error\", \"error_description\"}` with the status shown."
    ),
    paths(
        public::jwks,
        public::discovery,
        public::password_login,
        public::api_key_login,
        public::anonymous_login,
        public::refresh,
        public::logout,
        public::signup,
        public::me,
        public::update_me,
        email::confirm,
        email::resend,
        email::forgot,
        email::reset,
        public::healthz,
        public::readyz,
        public::metrics,
        openapi_json,
        oauth::token,
        oauth::introspect,
        oauth::revoke,
        admin::list_users,
        admin::create_user,
        admin::get_user,
        admin::update_user,
        admin::delete_user,
        admin::set_roles,
        admin::list_sessions,
        admin::revoke_user_sessions,
        admin::revoke_session,
        admin::list_api_keys,
        admin::create_api_key,
        admin::revoke_api_key,
        admin::list_keys,
        admin::rotate_keys,
        sms::sms_start,
        sms::sms_verify,
        sms::sms_status,
        sms::list_messages,
    ),
    components(schemas(
        ErrorBody,
        TokenPair,
        public::UserView,
        public::JwksDocument,
        public::DiscoveryDocument,
        public::HealthStatus,
        public::PasswordLogin,
        public::ApiKeyLogin,
        public::RefreshBody,
        public::LogoutBody,
        public::SignupBody,
        public::UpdateMe,
        email::ConfirmBody,
        email::ForgotBody,
        email::ResetBody,
        email::AcceptedBody,
        email::ConfirmedBody,
        oauth::GrantType,
        oauth::TokenForm,
        oauth::IntrospectForm,
        oauth::RevokeForm,
        oauth::Introspection,
        admin::UserList,
        admin::CreateUser,
        admin::UpdateUser,
        admin::SessionView,
        admin::SessionList,
        admin::CreateApiKey,
        admin::ApiKeyView,
        admin::CreatedApiKey,
        admin::ApiKeyList,
        admin::SigningKeyView,
        admin::SigningKeyList,
        admin::RotatedKey,
        sms::SmsStart,
        sms::SmsStarted,
        sms::SmsVerify,
        sms::SmsStatusForm,
        sms::SmsMessageView,
        sms::SmsMessageList,
    )),
    modifiers(&SecuritySchemes, &AdminListener),
    tags(
        (name = "auth", description = "Logins, refresh and logout; every login answers a token pair"),
        (name = "users", description = "Sign-up, the caller's own account, email confirmation and password reset"),
        (name = "oauth", description = "OAuth 2.0: token endpoint (RFC 6749), introspection (RFC 7662), revocation (RFC 7009)"),
        (name = "keys", description = "JWKS and discovery, for token verifiers such as the gateway"),
        (name = "operations", description = "Health, readiness, metrics and this document"),
        (name = "admin", description = "The admin API, served only on the admin listener (`admin_listen`, loopback by default). \
                                        Needs the admin token, or an access token with role `admin` whose session is active."),
    )
)]
pub struct ApiDoc;

/// Adds the security schemes the operations refer to.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "An access token of this issuer (`Authorization: Bearer <jwt>`) whose \
                         session is still active",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "apiKey",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "Authorization",
                "An API key in the Authorization header with the `ApiKey` scheme: \
                 `Authorization: ApiKey <key>`",
            ))),
        );
        components.add_security_scheme(
            "basic",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Basic)
                    .description(Some(
                        "HTTP Basic: `login:password` on `/v1/auth/password`; \
                         `client_id:api_key` on the OAuth endpoints (`client_secret_basic`)",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "adminToken",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The admin API token (`secrets/admin-token`), or an access token of this \
                         issuer with role `admin` whose session is active",
                    ))
                    .build(),
            ),
        );
    }
}

/// Points the admin paths at the admin listener.
struct AdminListener;

impl Modify for AdminListener {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let server = ServerBuilder::new()
            .url("http://{admin_listen}")
            .description(Some("The admin listener (not the public one)"))
            .parameter(
                "admin_listen",
                ServerVariableBuilder::new()
                    .default_value("127.0.0.1:8082")
                    .description(Some("The `admin_listen` address of the configuration")),
            )
            .build();
        for (path, item) in doc.paths.paths.iter_mut() {
            if path.starts_with("/admin/") {
                item.servers = Some(vec![server.clone()]);
            }
        }
    }
}

/// The document, serialized once.
static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
    ApiDoc::openapi()
        .to_json()
        .expect("the OpenAPI document serializes")
});

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API (public and admin)",
               body = Object, content_type = "application/json"))
)]
pub async fn openapi_json() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        DOCUMENT.as_str(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    use super::*;

    /// Every route the routers register: (method, path).
    const ROUTES: &[(&str, &str)] = &[
        // public.rs
        ("get", "/.well-known/jwks.json"),
        ("get", "/.well-known/openid-configuration"),
        ("post", "/v1/auth/password"),
        ("post", "/v1/auth/api-key"),
        ("post", "/v1/auth/anonymous"),
        ("post", "/v1/auth/refresh"),
        ("post", "/v1/auth/logout"),
        ("post", "/v1/users"),
        ("get", "/v1/users/me"),
        ("patch", "/v1/users/me"),
        ("post", "/v1/users/confirm"),
        ("post", "/v1/users/confirm/resend"),
        ("post", "/v1/password/forgot"),
        ("post", "/v1/password/reset"),
        ("get", "/healthz"),
        ("get", "/readyz"),
        ("get", "/metrics"),
        ("get", "/openapi.json"),
        // oauth.rs
        ("post", "/oauth/token"),
        ("post", "/oauth/introspect"),
        ("post", "/oauth/revoke"),
        // admin.rs
        ("get", "/admin/users"),
        ("post", "/admin/users"),
        ("get", "/admin/users/{id}"),
        ("patch", "/admin/users/{id}"),
        ("delete", "/admin/users/{id}"),
        ("put", "/admin/users/{id}/roles"),
        ("get", "/admin/users/{id}/sessions"),
        ("delete", "/admin/users/{id}/sessions"),
        ("delete", "/admin/sessions/{id}"),
        ("get", "/admin/api-keys"),
        ("post", "/admin/api-keys"),
        ("delete", "/admin/api-keys/{id}"),
        ("get", "/admin/keys"),
        ("post", "/admin/keys/rotate"),
        // sms.rs
        ("post", "/v1/auth/sms/start"),
        ("post", "/v1/auth/sms/verify"),
        ("post", "/v1/webhooks/sms-status"),
        ("get", "/admin/sms/messages"),
    ];

    const METHODS: [&str; 8] = [
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];

    fn document() -> Value {
        let json = ApiDoc::openapi().to_json().expect("serializes");
        serde_json::from_str(&json).expect("valid JSON")
    }

    /// (method, path) of every operation in the document.
    fn operations(doc: &Value) -> BTreeSet<(String, String)> {
        let mut out = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for m in METHODS {
                if item.get(m).is_some() {
                    out.insert((m.to_string(), path.clone()));
                }
            }
        }
        out
    }

    fn expected() -> BTreeSet<(String, String)> {
        ROUTES
            .iter()
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .collect()
    }

    /// The `.route(path, get(h).post(h2))` calls of a router's source, as (method, path).
    fn routes_in_source(src: &str) -> BTreeSet<(String, String)> {
        let mut out = BTreeSet::new();
        let mut rest = src;
        while let Some(at) = rest.find(".route(") {
            rest = &rest[at + ".route(".len()..];
            // The call's arguments, up to the matching parenthesis.
            let mut depth = 1;
            let end = rest
                .char_indices()
                .find_map(|(i, c)| {
                    match c {
                        '(' => depth += 1,
                        ')' => depth -= 1,
                        _ => {}
                    }
                    (depth == 0).then_some(i)
                })
                .expect("balanced .route( call");
            let call = &rest[..end];
            let path = call.split('"').nth(1).expect("a literal path");
            // Method routers are the identifiers directly followed by `(`.
            let mut ident = String::new();
            for c in call.chars() {
                if c.is_alphanumeric() || c == '_' {
                    ident.push(c);
                    continue;
                }
                if c == '(' && METHODS.contains(&ident.as_str()) {
                    out.insert((ident.clone(), path.to_string()));
                }
                ident.clear();
            }
            rest = &rest[end..];
        }
        out
    }

    #[test]
    fn openapi_route_list_matches_the_routers() {
        let mut in_source = routes_in_source(include_str!("public.rs"));
        in_source.extend(routes_in_source(include_str!("oauth.rs")));
        in_source.extend(routes_in_source(include_str!("admin.rs")));
        in_source.extend(routes_in_source(include_str!("sms.rs")));
        let unlisted: Vec<_> = in_source.difference(&expected()).cloned().collect();
        let gone: Vec<_> = expected().difference(&in_source).cloned().collect();
        assert!(
            unlisted.is_empty() && gone.is_empty(),
            "ROUTES must list exactly the routes the routers register; \
             add {unlisted:?}, remove {gone:?}"
        );
    }

    #[test]
    fn openapi_documents_every_route() {
        let documented = operations(&document());
        let missing: Vec<_> = expected().difference(&documented).cloned().collect();
        let extra: Vec<_> = documented.difference(&expected()).cloned().collect();
        assert!(
            missing.is_empty(),
            "routes missing from the document: {missing:?}"
        );
        assert!(
            extra.is_empty(),
            "documented operations with no route: {extra:?}"
        );
    }

    #[test]
    fn openapi_serializes_as_3_1() {
        let doc = document();
        let version = doc["openapi"].as_str().expect("openapi field");
        assert!(version.starts_with("3.1."), "openapi is {version}");
        assert_eq!(doc["info"]["title"], "Portcullis issuer");
        assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
        // What /openapi.json serves is the same document.
        let served: Value = serde_json::from_str(&DOCUMENT).expect("valid JSON");
        assert_eq!(served, doc);
    }

    #[test]
    fn openapi_operations_are_complete() {
        let doc = document();
        let schemes = doc["components"]["securitySchemes"]
            .as_object()
            .expect("security schemes");
        for name in ["bearer", "apiKey", "basic", "adminToken"] {
            assert!(schemes.contains_key(name), "security scheme {name}");
        }
        let mut ids = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for m in METHODS {
                let Some(op) = item.get(m) else { continue };
                let id = op["operationId"].as_str().expect("operationId");
                assert!(ids.insert(id.to_string()), "duplicate operationId {id}");
                let responses = op["responses"].as_object().expect("responses");
                assert!(
                    responses.keys().any(|s| s.starts_with('2') || s == "304"),
                    "{m} {path}: no success response"
                );
                // Every security requirement names a declared scheme.
                for req in op["security"].as_array().into_iter().flatten() {
                    for name in req.as_object().expect("requirement").keys() {
                        assert!(schemes.contains_key(name), "{m} {path}: scheme {name}");
                    }
                }
                // A JSON body can be refused as the wrong media type or malformed.
                if op["requestBody"]["content"]
                    .get("application/json")
                    .is_some()
                    || op["requestBody"]["content"]
                        .get("application/x-www-form-urlencoded")
                        .is_some()
                {
                    for status in ["400", "413", "415"] {
                        assert!(responses.contains_key(status), "{m} {path}: no {status}");
                    }
                }
                if path.starts_with("/admin/") {
                    assert_eq!(op["tags"], serde_json::json!(["admin"]), "{m} {path}");
                    assert_eq!(
                        op["security"],
                        serde_json::json!([{"adminToken": []}]),
                        "{m} {path}"
                    );
                    for status in ["401", "403"] {
                        assert!(responses.contains_key(status), "{m} {path}: no {status}");
                    }
                    assert!(item["servers"].is_array(), "{path}: admin listener server");
                }
            }
        }
    }
}
