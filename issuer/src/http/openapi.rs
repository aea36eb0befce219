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
//! `/v1/auth/password`, client id and secret on the OAuth endpoints) and `adminToken` (the
//! admin API token, or an access token with role `admin`). An empty requirement (`{}`) in an
//! operation's `security` means the credentials may come in the body instead.
//!
//! Error answers are documented as [`ErrorBody`](super::ErrorBody), 413 included (the
//! body-size limit's answer is rewritten to that shape by `json_413`); those many operations
//! share are reusable `components/responses` (`http/responses.rs`).
//!
//! The operations come from the routers themselves: each module registers its handlers with
//! `routes!` on a `utoipa_axum` `OpenApiRouter`, which yields the axum routes and their
//! documented paths together; `document()` merges them under [`ApiDoc`]'s metadata. When
//! adding a route: annotate the handler and register it with `routes!`.

use std::sync::LazyLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::schema::{AllOfBuilder, AnyOfBuilder, ObjectBuilder, Type};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::server::{ServerBuilder, ServerVariableBuilder};
use utoipa::{Modify, OpenApi};

use super::{admin, public, responses};

/// The document's metadata: info, tags and security schemes (the paths come from the
/// routers, see `document()`).
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
    components(responses(
        responses::MalformedBody,
        responses::InvalidToken,
        responses::InvalidClient,
        responses::PayloadTooLarge,
        responses::NotJson,
        responses::NotForm,
        responses::TooManyRequests,
        responses::Unavailable,
        responses::EmailDisabled,
        responses::AdminUnauthorized,
        responses::AdminForbidden,
        responses::UserNotFound,
    )),
    modifiers(&SecuritySchemes),
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
                         `client_id:client_secret` on the OAuth endpoints \
                         (`client_secret_basic`): an API key's id and the key, or the \
                         first-party client's id and an empty secret",
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

/// The issuer's API, public and admin: [`ApiDoc`]'s metadata plus the operations of the
/// public and admin routers, the admin ones pointed at the admin listener.
pub(crate) fn document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.merge(public::routes().into_openapi());
    doc.merge(admin::routes().into_openapi());
    // After the merge: they edit paths and schemas that only the routers bring.
    AdminListener.modify(&mut doc);
    FieldRules.modify(&mut doc);
    doc
}

/// Bodies that need at least one of several optional fields: (schema, fields).
const ALTERNATIVES: &[(&str, &[&str])] = &[
    ("PasswordLogin", &["email", "username"]),
    ("CreateUser", &["email", "username"]),
];

/// Fields that need another one when given (not null): (schema, field, needs).
const DEPENDENT: &[(&str, &str, &str)] = &[("UpdateMe", "password", "old_password")];

/// States the rules between a body's fields that the derive cannot say, since the handlers
/// answer 400 when one is broken: the derived object becomes `allOf: [object, anyOf: ...]`,
/// the `anyOf` listing either the alternatives (`required: [f]` each) or, for a dependent
/// field, "it is null or absent" / "the field it needs is present".
struct FieldRules;

impl Modify for FieldRules {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let Some(components) = doc.components.as_mut() else {
            return;
        };
        let mut rules: Vec<(&str, AnyOfBuilder)> = Vec::new();
        for (name, fields) in ALTERNATIVES {
            let any = fields.iter().fold(AnyOfBuilder::new(), |any, field| {
                any.item(ObjectBuilder::new().required(*field))
            });
            rules.push((name, any));
        }
        for (name, field, needs) in DEPENDENT {
            let null = ObjectBuilder::new().schema_type(Type::Null);
            let any = AnyOfBuilder::new()
                .item(ObjectBuilder::new().property(*field, null))
                .item(ObjectBuilder::new().required(*needs));
            rules.push((name, any));
        }
        for (name, any) in rules {
            let Some(object) = components.schemas.remove(name) else {
                continue;
            };
            let all = AllOfBuilder::new().item(object).item(any);
            components.schemas.insert(name.to_string(), all.into());
        }
    }
}

/// The document, serialized once.
static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
    document()
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

    const METHODS: [&str; 8] = [
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];

    fn document() -> Value {
        let json = super::document().to_json().expect("serializes");
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

    #[test]
    fn openapi_documents_every_router() {
        // One route of each router module: the merge keeps them all.
        let documented = operations(&document());
        for (m, p) in [
            ("get", "/.well-known/jwks.json"),
            ("patch", "/v1/users/me"),
            ("post", "/v1/password/reset"),
            ("post", "/oauth/token"),
            ("post", "/v1/auth/sms/start"),
            ("get", "/openapi.json"),
            ("delete", "/admin/users/{id}"),
            ("get", "/admin/sms/messages"),
        ] {
            assert!(
                documented.contains(&(m.to_string(), p.to_string())),
                "{m} {p} missing from the document"
            );
        }
    }

    #[test]
    fn openapi_states_the_alternatives_and_limits() {
        let doc = document();
        let schemas = &doc["components"]["schemas"];
        for (name, fields) in ALTERNATIVES {
            let any = &schemas[*name]["allOf"][1]["anyOf"];
            let required: Vec<&str> = any
                .as_array()
                .unwrap_or_else(|| panic!("{name}: no anyOf"))
                .iter()
                .map(|alt| alt["required"][0].as_str().expect("a field"))
                .collect();
            assert_eq!(&required, fields, "{name}");
        }
        // A new password needs the old one.
        let any = &schemas["UpdateMe"]["allOf"][1]["anyOf"];
        assert_eq!(any[0]["properties"]["password"]["type"], "null");
        assert_eq!(any[1]["required"][0], "old_password");
        // The documented password limit is the configuration's default.
        let max = crate::config::DEFAULT_PASSWORD_MAX as u64;
        assert_eq!(
            schemas["PasswordLogin"]["allOf"][0]["properties"]["password"]["maxLength"],
            max
        );
        let grants = schemas["TokenForm"]["oneOf"].as_array().expect("oneOf");
        assert_eq!(grants[0]["properties"]["password"]["maxLength"], max);
        // Every grant requires grant_type, pinned to one value.
        for g in grants {
            assert_eq!(g["required"][0], "grant_type");
            assert_eq!(
                g["properties"]["grant_type"]["enum"]
                    .as_array()
                    .map(Vec::len),
                Some(1)
            );
        }
        // Regions are the codes the phone parser knows.
        let regions = schemas["SmsStart"]["properties"]["region"]["enum"]
            .as_array()
            .expect("region enum");
        assert!(regions.len() > 200 && regions.contains(&"US".into()));
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
                // Every shared answer it refers to is declared.
                for (status, resp) in responses {
                    if let Some(r) = resp["$ref"].as_str() {
                        let name = r
                            .strip_prefix("#/components/responses/")
                            .expect("a response");
                        assert!(
                            doc["components"]["responses"][name].is_object(),
                            "{m} {path} {status}: {r} is not declared"
                        );
                    }
                }
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
