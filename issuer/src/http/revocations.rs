//! `GET /v1/revocations`: the revocation feed for gateways (the domain is
//! `crate::revocation`), on the public listener, where gateways already reach the issuer
//! for its JWKS. It reveals who logged out when, so it answers only the feed credential
//! (`revocation_feed.token_file`): a bearer token, compared in constant time.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::responses::{FeedUnauthorized, Unavailable};
use super::{bearer, query, ApiError, ErrorBody};
use crate::app::App;
use crate::store::{Revocation, RevocationKind, RevocationPage};

/// The feed's route with its documentation.
pub(crate) fn routes() -> OpenApiRouter<Arc<App>> {
    OpenApiRouter::new().routes(routes!(revocations))
}

/// The query of `GET /v1/revocations`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct Cursor {
    /// The `next` of the previous answer. Absent (a reader starting), older than what the
    /// issuer retains, or ahead of the feed: the answer is a snapshot.
    #[param(minimum = -9223372036854775808i64, maximum = 9223372036854775807i64)]
    #[serde(default, deserialize_with = "super::optional_integer_text")]
    after: Option<i64>,
    /// Seconds the reader is prepared to wait for a record (its own request timeout, less
    /// headroom); the wait is the smaller of this and `revocation_feed.max_wait`. Negative
    /// counts as 0 (answer at once).
    #[param(minimum = -9223372036854775808i64, maximum = 9223372036854775807i64)]
    #[serde(default, deserialize_with = "super::optional_integer_text")]
    wait: Option<i64>,
}

/// One record of the feed.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum RecordView {
    /// Every token of session `sid` is revoked.
    Session {
        /// Position in the feed.
        seq: i64,
        /// The session (`sid` claim).
        sid: String,
        /// Unix time after which no access token the record affects is alive: drop it then.
        until: i64,
    },
    /// Every token of subject `sub` issued before `not_before` (`iat` < `not_before`) is
    /// revoked.
    Subject {
        /// Position in the feed.
        seq: i64,
        /// The subject (`sub` claim).
        sub: String,
        /// Unix time: tokens issued earlier are revoked.
        not_before: i64,
        /// Unix time after which no access token the record affects is alive: drop it then.
        until: i64,
    },
}

impl From<Revocation> for RecordView {
    fn from(r: Revocation) -> Self {
        match r.kind {
            RevocationKind::Session { sid } => RecordView::Session {
                seq: r.seq,
                sid,
                until: r.relevant_until,
            },
            RevocationKind::Subject { sub, not_before } => RecordView::Subject {
                seq: r.seq,
                sub,
                not_before,
                until: r.relevant_until,
            },
        }
    }
}

/// An answer of the feed.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct RevocationFeed {
    /// Records in sequence order; only those still relevant.
    pub records: Vec<RecordView>,
    /// The cursor of the next read (`?after=`).
    pub next: i64,
    /// These records start a full snapshot of every still-relevant record: replace what you
    /// hold with them (and with the following pages while `more` is true).
    pub snapshot: bool,
    /// More records are ready after `next`: read on at once.
    pub more: bool,
}

impl From<RevocationPage> for RevocationFeed {
    fn from(p: RevocationPage) -> Self {
        RevocationFeed {
            records: p.records.into_iter().map(RecordView::from).collect(),
            next: p.next,
            snapshot: p.snapshot,
            more: p.more,
        }
    }
}

/// The revocation records after cursor `after`. With none, waits (long poll) up to
/// `revocation_feed.max_wait` (25 s by default, or `wait` seconds if shorter) for one, then answers with what there is
/// (possibly nothing, and the same or a later `next`). A snapshot answers at once.
#[utoipa::path(
    get,
    path = "/v1/revocations",
    tag = "revocations",
    params(Cursor),
    security(("feedToken" = [])),
    responses(
        (status = 200, description = "Records after the cursor, or a snapshot", body = RevocationFeed),
        (status = 400, description = "Bad query string (`after` not a 64-bit integer)", body = ErrorBody),
        (status = 401, response = FeedUnauthorized),
        (status = 503, response = Unavailable),
    )
)]
async fn revocations(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Json<RevocationFeed>, ApiError> {
    let cursor: Cursor = query(q)?;
    let page = app
        .revocations
        .read(
            &app.store,
            bearer(&headers),
            cursor.after,
            cursor.wait.map(|w| Duration::from_secs(w.max(0) as u64)),
        )
        .await?;
    Ok(Json(page.into()))
}
