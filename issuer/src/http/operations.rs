//! What the admin listener serves without the admin token: Prometheus metrics and the admin
//! API's OpenAPI document. Like the gateway's admin listener, it relies on where the listener
//! is (loopback by default) rather than on a credential, so that Prometheus can scrape it with
//! a plain `static_configs` target. Neither is served on the public listener, which the
//! gateway's `/auth/` route exposes to everybody: the counters tell an outsider how many
//! logins fail and which methods are in use, and the admin document maps the admin API.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::App;

/// The unguarded routes of the admin listener with their documentation (composed with the
/// guarded admin API by [`super::admin_app`]).
pub(crate) fn routes() -> OpenApiRouter<Arc<App>> {
    OpenApiRouter::new()
        .routes(routes!(metrics))
        .routes(routes!(super::openapi::admin_openapi_json))
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((status = 200, description = "Prometheus text format 0.0.4", body = String,
               content_type = "text/plain; version=0.0.4"))
)]
async fn metrics(State(app): State<Arc<App>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
        .into_response()
}
