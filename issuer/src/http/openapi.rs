//! The issuer's two OpenAPI 3.1 documents, generated with utoipa from the
//! `#[utoipa::path]` annotations on the handlers, each served at `GET /openapi.json` on the
//! listener it describes:
//!
//! - the public listener's: the public API (logins, tokens, users, OAuth, JWKS, health), with
//!   nothing of the admin API (no `/admin/...` path, no admin-only schema, answer or security
//!   scheme), since it is what the gateway's `/auth/` route exposes to everybody;
//! - the admin listener's: the admin API (tag `admin`, security scheme `adminToken`) and the
//!   listener's own unguarded operations, `/metrics` and this document.
//!
//! Security schemes: `bearer` (an access token of this issuer), `apiKey`
//! (`Authorization: ApiKey <key>`), `basic` (HTTP Basic: login and password on
//! `/v1/auth/password`, client id and secret on the OAuth endpoints) in the public document;
//! `adminToken` (the admin API token, or an access token with role `admin`) in the admin one,
//! and in the public one for the OAuth introspection and revocation endpoints, which accept
//! the admin token as a client credential.
//! An empty requirement (`{}`) in an operation's `security` means the credentials may come in
//! the body instead.
//!
//! Error answers are documented as [`ErrorBody`](super::ErrorBody), 413 included (the
//! body-size limit's answer is rewritten to that shape by `json_413`); those many operations
//! share are reusable `components/responses` (`http/responses.rs`).
//!
//! The operations come from the routers themselves: each module registers its handlers with
//! `routes!` on a `utoipa_axum` `OpenApiRouter`, which yields the axum routes and their
//! documented paths together; [`public_document`] and [`admin_document`] merge a listener's
//! routers under [`ApiDoc`]'s shared metadata, then drop the components, security schemes
//! and tags none of that listener's operations uses. When adding a route: annotate the
//! handler and register it with `routes!` on the router of the listener that serves it.

use std::collections::BTreeSet;
use std::sync::LazyLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use utoipa::openapi::schema::{AllOfBuilder, AnyOfBuilder, ObjectBuilder, Type};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{admin, operations, public, responses};

/// The metadata both documents start from: info, the shared answers, tags and security
/// schemes (the paths come from the routers; each document keeps only what its operations
/// use, see [`finish`]).
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Portcullis issuer",
        version = env!("CARGO_PKG_VERSION"),
        description = "Token service: logins (password, API key, anonymous, SMS code), access JWTs, \
                       rotating refresh tokens, JWKS, OAuth 2.0 token / introspection / revocation. \
                       Errors answer `{\"error\", \"error_description\"}` with the status shown. \
                       The admin API is described by the admin listener's own `/openapi.json`."
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
        responses::InvalidRole,
        responses::FeedUnauthorized,
    )),
    modifiers(&SecuritySchemes),
    tags(
        (name = "auth", description = "Logins, refresh and logout; every login answers a token pair"),
        (name = "users", description = "Sign-up, the caller's own account, email confirmation and password reset"),
        (name = "oauth", description = "OAuth 2.0: token endpoint (RFC 6749), introspection (RFC 7662), revocation (RFC 7009)"),
        (name = "keys", description = "JWKS and discovery, for token verifiers such as the gateway"),
        (name = "revocations", description = "The revocation feed, for gateways: sessions and subjects whose access tokens are revoked before they expire. Needs the feed credential"),
        (name = "operations", description = "Health and readiness (public listener), Prometheus metrics (admin listener), and this document"),
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
            "feedToken",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The revocation feed credential (`revocation_feed.token_file`, shared \
                         with the gateways)",
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

/// The public listener's document: the public API only.
pub(crate) fn public_document() -> Result<Value, serde_json::Error> {
    let mut doc = ApiDoc::openapi();
    doc.merge(public::routes().into_openapi());
    finish(doc)
}

/// The admin listener's document: the admin API, `/metrics` and this document.
pub(crate) fn admin_document() -> Result<Value, serde_json::Error> {
    let mut doc = ApiDoc::openapi();
    doc.info.title = "Portcullis issuer admin API".into();
    doc.info.description = Some(
        "The admin API of the Portcullis issuer (users, API keys, signing keys, sessions, SMS \
         messages), served on the admin listener (`admin_listen`, loopback by default) with \
         its Prometheus metrics. The operations under `/admin/` need the admin token, or an \
         access token with role `admin` whose session is active; `/metrics` and this document \
         do not (keep the listener private). Errors answer \
         `{\"error\", \"error_description\"}` with the status shown."
            .into(),
    );
    doc.merge(admin::routes().into_openapi());
    doc.merge(operations::routes().into_openapi());
    finish(doc)
}

/// States the field rules, serializes, and drops what the document's operations do not use.
fn finish(mut doc: utoipa::openapi::OpenApi) -> Result<Value, serde_json::Error> {
    // After the merge: it edits schemas that only the routers bring.
    FieldRules.modify(&mut doc);
    let mut doc = serde_json::to_value(doc)?;
    drop_unused(&mut doc);
    Ok(doc)
}

/// Removes the components (schemas, answers), security schemes and tags that no operation
/// of `doc` refers to, directly or through another component: [`ApiDoc`] declares those of
/// both listeners, and neither document should describe what its listener does not serve.
fn drop_unused(doc: &mut Value) {
    let mut reachable = BTreeSet::new();
    let mut todo = Vec::new();
    collect_refs(&doc["paths"], &mut todo);
    while let Some(r) = todo.pop() {
        if let Some(target) = r.strip_prefix('#').and_then(|p| doc.pointer(p)) {
            collect_refs(target, &mut todo);
        }
        reachable.insert(r);
    }
    let mut schemes = BTreeSet::new();
    let mut tags = BTreeSet::new();
    for op in doc["paths"]
        .as_object()
        .into_iter()
        .flat_map(|paths| paths.values())
        .filter_map(Value::as_object)
        .flat_map(|item| item.values())
    {
        for requirement in op["security"].as_array().into_iter().flatten() {
            schemes.extend(
                requirement
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, _)| k.clone()),
            );
        }
        tags.extend(
            op["tags"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(str::to_string),
        );
    }
    if let Some(components) = doc.get_mut("components").and_then(Value::as_object_mut) {
        for (kind, entries) in components.iter_mut() {
            let Some(entries) = entries.as_object_mut() else {
                continue;
            };
            if kind == "securitySchemes" {
                entries.retain(|name, _| schemes.contains(name));
            } else {
                entries
                    .retain(|name, _| reachable.contains(&format!("#/components/{kind}/{name}")));
            }
        }
    }
    if let Some(list) = doc.get_mut("tags").and_then(Value::as_array_mut) {
        list.retain(|t| t["name"].as_str().is_some_and(|n| tags.contains(n)));
    }
}

/// Every `$ref` inside `v`.
fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                match child {
                    Value::String(r) if k == "$ref" => out.push(r.clone()),
                    _ => collect_refs(child, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|child| collect_refs(child, out)),
        _ => {}
    }
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

/// The public document, serialized once.
static PUBLIC_DOCUMENT: LazyLock<String> = LazyLock::new(|| {
    public_document()
        .map(|d| d.to_string())
        .expect("the public OpenAPI document serializes")
});

/// The admin document, serialized once.
static ADMIN_DOCUMENT: LazyLock<String> = LazyLock::new(|| {
    admin_document()
        .map(|d| d.to_string())
        .expect("the admin OpenAPI document serializes")
});

/// A prebuilt document as the answer.
fn json(text: &'static str) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], text).into_response()
}

/// This document: the public API (the admin API's is on the admin listener).
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document of the public API",
               body = Object, content_type = "application/json"))
)]
pub async fn openapi_json() -> Response {
    json(PUBLIC_DOCUMENT.as_str())
}

/// This document: the admin API and the admin listener's operations.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document of the admin API",
               body = Object, content_type = "application/json"))
)]
pub async fn admin_openapi_json() -> Response {
    json(ADMIN_DOCUMENT.as_str())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    use super::*;

    const METHODS: [&str; 8] = [
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];

    fn public() -> Value {
        public_document().expect("serializes")
    }

    fn admin() -> Value {
        admin_document().expect("serializes")
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

    fn names(doc: &Value, pointer: &str) -> BTreeSet<String> {
        doc.pointer(pointer)
            .and_then(Value::as_object)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    fn has(doc: &Value, m: &str, p: &str) -> bool {
        operations(doc).contains(&(m.to_string(), p.to_string()))
    }

    #[test]
    fn openapi_documents_every_router_on_its_listener() {
        // One route of each router module: the merge keeps them all.
        let (public, admin) = (public(), admin());
        for (m, p) in [
            ("get", "/.well-known/jwks.json"),
            ("patch", "/v1/users/me"),
            ("post", "/v1/password/reset"),
            ("post", "/oauth/token"),
            ("post", "/v1/auth/sms/start"),
            ("get", "/healthz"),
            ("get", "/openapi.json"),
        ] {
            assert!(
                has(&public, m, p),
                "{m} {p} missing from the public document"
            );
        }
        for (m, p) in [
            ("delete", "/admin/users/{id}"),
            ("get", "/admin/sms/messages"),
            ("get", "/metrics"),
            ("get", "/openapi.json"),
        ] {
            assert!(has(&admin, m, p), "{m} {p} missing from the admin document");
        }
    }

    #[test]
    fn the_public_document_says_nothing_of_the_admin_listener() {
        let doc = public();
        for (m, p) in operations(&doc) {
            assert!(!p.starts_with("/admin"), "{m} {p} in the public document");
            assert_ne!(p, "/metrics", "metrics are on the admin listener");
        }
        // The admin token is a credential of two public OAuth endpoints too (introspection
        // and revocation accept it like an API key); nothing else public mentions it.
        for (path, item) in doc["paths"].as_object().expect("paths") {
            if item.to_string().contains("adminToken") {
                assert!(
                    ["/oauth/introspect", "/oauth/revoke"].contains(&path.as_str()),
                    "{path} refers to the admin token"
                );
            }
        }
        let responses = names(&doc, "/components/responses");
        let schemas = names(&doc, "/components/schemas");
        for admin_only in ["AdminUnauthorized", "AdminForbidden", "UserNotFound"] {
            assert!(!responses.contains(admin_only), "answer {admin_only}");
        }
        for admin_only in [
            "UserList",
            "SessionList",
            "ApiKeyView",
            "CreatedApiKey",
            "SigningKeyList",
            "CreateUser",
            "SmsMessageList",
        ] {
            assert!(!schemas.contains(admin_only), "schema {admin_only}");
        }
        let tags: Vec<&str> = doc["tags"]
            .as_array()
            .expect("tags")
            .iter()
            .filter_map(|t| t["name"].as_str())
            .collect();
        assert!(!tags.contains(&"admin"), "{tags:?}");
        assert!(!doc.to_string().contains("/admin/"));
    }

    #[test]
    fn the_admin_document_is_the_admin_listener() {
        let doc = admin();
        for (m, p) in operations(&doc) {
            assert!(
                p.starts_with("/admin/") || p == "/metrics" || p == "/openapi.json",
                "{m} {p} is not served by the admin listener"
            );
        }
        assert_eq!(
            names(&doc, "/components/securitySchemes"),
            ["adminToken".to_string()].into()
        );
        assert!(names(&doc, "/components/responses").contains("AdminUnauthorized"));
        assert_eq!(doc["info"]["title"], "Portcullis issuer admin API");
    }

    #[test]
    fn every_reference_resolves_after_the_unused_parts_are_dropped() {
        for doc in [public(), admin()] {
            let mut refs = Vec::new();
            collect_refs(&doc, &mut refs);
            assert!(refs.len() > 10, "{} refs", refs.len());
            for r in refs {
                let pointer = r.strip_prefix('#').expect("a local reference");
                assert!(doc.pointer(pointer).is_some(), "{r} does not resolve");
            }
            // And what is kept is used: each schema is referred to somewhere.
            let text = doc["paths"].to_string() + &doc["components"].to_string();
            for name in names(&doc, "/components/schemas") {
                let r = format!("\"#/components/schemas/{name}\"");
                assert!(text.contains(&r), "{name} is unused");
            }
        }
    }

    #[test]
    fn openapi_states_the_alternatives_and_limits() {
        let (public, admin) = (public(), admin());
        let (ps, admin_schemas) = (
            &public["components"]["schemas"],
            &admin["components"]["schemas"],
        );
        for (name, fields) in ALTERNATIVES {
            let schemas = if ps.get(*name).is_some() {
                ps
            } else {
                admin_schemas
            };
            let any = &schemas[*name]["allOf"][1]["anyOf"];
            let required: Vec<&str> = any
                .as_array()
                .unwrap_or_else(|| panic!("{name}: no anyOf"))
                .iter()
                .map(|alt| alt["required"][0].as_str().expect("a field"))
                .collect();
            assert_eq!(&required, fields, "{name}");
        }
        let schemas = ps;
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
        for (doc, served) in [
            (public(), PUBLIC_DOCUMENT.as_str()),
            (admin(), ADMIN_DOCUMENT.as_str()),
        ] {
            let version = doc["openapi"].as_str().expect("openapi field");
            assert!(version.starts_with("3.1."), "openapi is {version}");
            assert!(doc["info"]["title"]
                .as_str()
                .is_some_and(|t| t.starts_with("Portcullis issuer")));
            assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
            // What /openapi.json serves is the same document.
            let served: Value = serde_json::from_str(served).expect("valid JSON");
            assert_eq!(served, doc);
        }
    }

    #[test]
    fn openapi_operations_are_complete() {
        for doc in [public(), admin()] {
            operations_are_complete(&doc);
        }
    }

    fn operations_are_complete(doc: &Value) {
        let schemes = doc["components"]["securitySchemes"]
            .as_object()
            .expect("security schemes");
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
                }
            }
        }
    }
}
