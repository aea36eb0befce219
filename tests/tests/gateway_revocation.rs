//! End-to-end tests of the gateway's side of the revocation feed (issue 13, "logout means logout
//! at the edge"): real issuer, real gateways and the echo upstream on loopback.
//!
//! - [`every_event_kind`] (SQLite and PostgreSQL): for each event that appends a record to the
//!   issuer's feed (logout, `/oauth/revoke`, admin session revoke, refresh-token reuse, API key
//!   revoked, user disabled, user deleted, password reset by the CLI, password change, role
//!   removal, admin "revoke every session"), the event's tokens pass at two gateways before
//!   and are refused (401 "the session was revoked") after, at both, on a proxy route and at the
//!   verify endpoint, whether the gateway had cached the token (presented three times before)
//!   or never seen it; tokens of other sessions and subjects keep passing throughout; a login
//!   after a subject event passes; a gateway restarted after the events refuses them on the
//!   first request once `/readyz` says 200 (the snapshot is loaded before ready).
//! - [`issuer_restart_and_feed_outage_under_each_policy`]: events before a restart of the
//!   issuer, during it (the CLI writes while the server is down) and after it all reach the
//!   gateways; during the outage `on_stale: accept` keeps accepting (stale gauge 1, what was
//!   known still refused) and `on_stale: refuse` refuses ("the issuer's revocation feed is
//!   unavailable"); both recover.
//! - [`the_feed_is_found_through_discovery`]: no `url`: `revocation_feed_endpoint` of the
//!   discovery document.
//! - [`a_wrong_feed_credential_keeps_the_gateway_unready`]: a required issuer without its
//!   snapshot keeps `/readyz` at 503 while failed reads are counted.
//! - [`config_errors_name_file_and_line`]: `-t` rejects a broken `revocation:` block at
//!   `file:line` and accepts good ones (relative `token_file` resolved against the config file).
//! - [`metrics_readiness_and_access_log_follow_the_feed`]: records, events, reads, lag, stale,
//!   refusal reasons in `portcullis_auth_total` and in the access log, `/readyz` details.
//! - [`revocations_survive_reloads`]: SIGHUP with the feed unchanged and changed: a revoked
//!   token is refused at every request throughout, later events arrive, counters keep counting.
//! - [`a_feed_larger_than_a_page`]: 1,100 records (one revoked API key's sessions), more than
//!   the issuer's 1,000-record answers: as increments and as a paged snapshot.
//! - [`records_apply_only_to_their_issuer`]: another trusted issuer's token with the revoked
//!   `sub` and `sid` passes.
//!
//! Propagation is awaited by polling with a deadline ([`PROPAGATION`]); the only sleeps wait for
//! the next wall-clock second where `iat`'s one-second resolution requires it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use portcullis_tests::issuer::*;
use portcullis_tests::on_both_backends;
use portcullis_tests::*;
use serde_json::json;

on_both_backends!(every_event_kind);

const PW: &str = "correct horse battery staple";
const NEW_PW: &str = "an entirely different passphrase";
const REVOKED: &str = "the session was revoked";
const UNAVAILABLE: &str = "the issuer's revocation feed is unavailable";
/// How long a revocation may take to reach a gateway here. The target is under a second; a
/// record written by the issuer CLI into SQLite waits for the issuer's 2 s re-check.
const PROPAGATION: Duration = Duration::from_secs(5);
/// After an outage the gateway retries with a back-off: allow more.
const RECOVERY: Duration = Duration::from_secs(15);
/// Short long polls (a stop is quick, idle reads come round often); no refresh-reuse grace.
const ISSUER_YAML: &str = "revocation_feed:\n  max_wait: 2s\nrefresh:\n  reuse_grace: 0s\n";
/// The issuer name in the gateway config, metrics labels and `/readyz`.
const NAME: &str = "portcullis";

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

/// One issuer and the echo upstream; gateways trusting the issuer are started in
/// subdirectories of the same temporary directory.
struct Stack {
    dir: tempfile::TempDir,
    iss: IssuerProc,
    upstream: Upstream,
}

impl Stack {
    fn start(db: DbKind, issuer_yaml: &str) -> Stack {
        let dir = tempdir();
        let iss = start_issuer(dir.path(), db, issuer_yaml);
        assert!(!iss.feed_token.is_empty(), "the issuer made a feed token");
        let upstream = start_upstream("app", dir.path(), &[]);
        Stack { dir, iss, upstream }
    }

    /// The `revocation:` lines naming the feed URL and the gateway's copy of the feed token by
    /// a path relative to the config file, plus `extra` lines.
    fn feed(&self, extra: &str) -> String {
        format!(
            "url: {}\ntoken_file: feed-token\n{extra}",
            self.iss.url("/v1/revocations")
        )
    }

    /// The issuer's feed-token file, byte for byte (what an operator copies to a gateway).
    fn feed_token_file(&self) -> Vec<u8> {
        std::fs::read(self.iss.dir.join("secrets/feed-token")).expect("read the feed token")
    }

    /// The directory of gateway `name`.
    fn gw_dir(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts gateway `name` (in its own directory, with a copy of the feed token) whose issuer
    /// entry has the `revocation:` lines `revocation`; `top` is added at the top level.
    fn gateway(&self, name: &str, revocation: &str, top: &str) -> Gateway {
        self.gateway_with_token(name, &self.feed_token_file(), revocation, top)
    }

    /// [`Stack::gateway`] with `token` as the content of its `feed-token` file.
    fn gateway_with_token(&self, name: &str, token: &[u8], revocation: &str, top: &str) -> Gateway {
        self.gateway_full(name, token, revocation, top, "")
    }

    /// [`Stack::gateway_with_token`] with more `issuers:` entries after the issuer's.
    fn gateway_full(
        &self,
        name: &str,
        token: &[u8],
        revocation: &str,
        top: &str,
        more_issuers: &str,
    ) -> Gateway {
        let dir = self.gw_dir(name);
        std::fs::create_dir_all(&dir).expect("mkdir gateway dir");
        std::fs::write(dir.join("feed-token"), token).expect("write feed token");
        let body = format!(
            "{top}issuers:\n  - name: {NAME}\n    issuer: {issuer}\n    jwks_url: {jwks}\n    audiences: [demo]\n    revocation:\n{rev}{more_issuers}upstreams:\n  app:\n    backends: [\"127.0.0.1:{up}\"]\nroutes:\n  - name: api\n    match: {{path: {{prefix: /api/}}}}\n    upstream: app\n  - name: optional\n    match: {{path: {{prefix: /opt/}}}}\n    auth: optional\n    upstream: app\n",
            issuer = self.iss.issuer,
            jwks = self.iss.url("/.well-known/jwks.json"),
            rev = indent(revocation, 6),
            up = self.upstream.port,
        );
        start_gateway(&dir, &body)
    }

    /// A password login's pair (the user must exist).
    fn login(&self, email: &str, password: &str) -> Pair {
        self.iss.password_login(email, password).pair()
    }

    /// Logs the session of `refresh` out.
    fn logout(&self, refresh: &str) {
        let r = post_json(
            &self.iss.url("/v1/auth/logout"),
            &json!({ "refresh_token": refresh }),
        );
        assert!(r.status == 204 || r.status == 200, "logout: {}", r.text);
    }
}

/// Every line of `text` indented by `n` spaces.
fn indent(text: &str, n: usize) -> String {
    text.lines().map(|l| format!("{:n$}{l}\n", "")).collect()
}

/// A top-level `access_log:` block writing JSON lines to `path`.
fn access_log(path: &Path) -> String {
    format!("access_log:\n  format: json\n  path: {}\n", path.display())
}

/// A claim of a token (unverified: the gateways verify).
fn claim(token: &str, name: &str) -> Value {
    jwt::decode_segment(token, 1)[name].clone()
}

fn iat(token: &str) -> i64 {
    claim(token, "iat").as_i64().expect("iat")
}

/// Waits until the wall clock is in a second after `secs`.
fn wait_past(secs: i64) {
    while jwt::now() <= secs {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Where a token is presented.
#[derive(Clone, Copy, Debug)]
enum Via {
    /// A proxy route (`GET /api/orders`).
    Proxy,
    /// The `auth_request` endpoint, as nginx calls it for `GET /api/orders`.
    Verify,
    /// A route with `auth: optional` (`GET /opt/orders`): a token sent is still verified.
    Optional,
}

fn ask(gw: &Gateway, via: Via, token: &str) -> RawResponse {
    let auth = format!("Bearer {token}");
    match via {
        Via::Proxy => raw_get(gw.port, "/api/orders", &[("Authorization", &auth)]),
        Via::Optional => raw_get(gw.port, "/opt/orders", &[("Authorization", &auth)]),
        Via::Verify => raw_get(
            gw.port,
            "/_portcullis/verify",
            &[
                ("Authorization", &auth),
                ("X-Original-URI", "/api/orders"),
                ("X-Original-Method", "GET"),
            ],
        ),
    }
}

/// Status, challenge and body of an answer, for messages.
fn show(r: &RawResponse) -> String {
    format!(
        "{} www-authenticate={:?} body={}",
        r.status,
        r.header("www-authenticate"),
        String::from_utf8_lossy(&r.body)
    )
}

/// Whether `r` is the gateway's 401 `invalid_token` refusal with `description`, in the
/// challenge and in the JSON body.
fn refused(r: &RawResponse, description: &str) -> bool {
    let challenge = r.header("www-authenticate").unwrap_or("");
    let body: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    r.status == 401
        && challenge.starts_with("Bearer ")
        && challenge.contains("error=\"invalid_token\"")
        && challenge.contains(&format!("error_description=\"{description}\""))
        && body["error"] == "invalid_token"
        && body["error_description"] == description
}

/// Records a failure unless `token` passes at `gw` via `via` (200; on a proxy route, the
/// upstream's echo).
fn expect_pass(f: &mut Failures, case: &str, gw: &Gateway, via: Via, token: &str) {
    let r = ask(gw, via, token);
    let ok = r.status == 200
        && match via {
            Via::Proxy | Via::Optional => String::from_utf8_lossy(&r.body).contains("\"server\""),
            Via::Verify => true,
        };
    f.check(
        ok,
        case,
        format!("{via:?} on :{} should pass: {}", gw.port, show(&r)),
    );
}

/// Records a failure unless the first answer is the refusal with `description`.
fn expect_refused(
    f: &mut Failures,
    case: &str,
    gw: &Gateway,
    via: Via,
    token: &str,
    description: &str,
) {
    let r = ask(gw, via, token);
    f.check(
        refused(&r, description),
        case,
        format!(
            "{via:?} on :{} should be refused with {description:?}: {}",
            gw.port,
            show(&r)
        ),
    );
}

/// One request that must become a refusal.
struct Probe<'a> {
    label: String,
    gw: &'a Gateway,
    via: Via,
    token: &'a str,
}

/// Polls every probe until it is refused with `description`, for at most `within`; returns
/// the ones that never were, with their last answer.
fn wait_refused(probes: &[Probe], description: &str, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut pending: Vec<(&Probe, String)> = probes.iter().map(|p| (p, String::new())).collect();
    loop {
        pending.retain_mut(|(p, last)| {
            let r = ask(p.gw, p.via, p.token);
            if refused(&r, description) {
                return false;
            }
            *last = show(&r);
            true
        });
        if pending.is_empty() || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    pending
        .into_iter()
        .map(|(p, last)| {
            format!(
                "{}: not refused with {description:?} within {within:?}; last answer {last}",
                p.label
            )
        })
        .collect()
}

/// Proxy-route probes of `token` at every gateway.
fn proxy_probes<'a>(label: &str, gws: &[&'a Gateway], token: &'a str) -> Vec<Probe<'a>> {
    gws.iter()
        .map(|gw| Probe {
            label: format!("{label} at :{}", gw.port),
            gw,
            via: Via::Proxy,
            token,
        })
        .collect()
}

fn metric(gw: &Gateway, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metric_value(&gw.metrics(), name, labels)
}

/// Polls a series until `ok` holds of its value, for at most `within`; returns the last value.
fn wait_metric(
    gw: &Gateway,
    name: &str,
    labels: &[(&str, &str)],
    within: Duration,
    ok: impl Fn(f64) -> bool,
) -> Option<f64> {
    let mut last = None;
    wait_for(within, || {
        last = metric(gw, name, labels);
        last.is_some_and(&ok)
    });
    last
}

/// The gateway publishes the feed's metrics on a once-a-second housekeeping tick, not when
/// scraped: an expected value is awaited this long.
const PUBLISHED: Duration = Duration::from_secs(3);

/// Records a failure unless the series `name{issuer="portcullis", labels}` reaches a value for
/// which `ok` holds (described by `want`) within [`PUBLISHED`]; returns the last value.
fn expect_metric(
    f: &mut Failures,
    case: &str,
    gw: &Gateway,
    name: &str,
    labels: &[(&str, &str)],
    want: &str,
    ok: impl Fn(f64) -> bool,
) -> Option<f64> {
    let mut all = vec![("issuer", NAME)];
    all.extend_from_slice(labels);
    let got = wait_metric(gw, name, &all, PUBLISHED, &ok);
    f.check(
        got.is_some_and(&ok),
        case,
        format!("{name}{all:?} on :{} = {got:?}, want {want}", gw.port),
    );
    got
}

/// The access log's JSON lines.
fn log_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Waits (bounded) for an access-log line with `status` and `auth_reason`.
fn wait_log_reason(path: &Path, status: u16, reason: &str) -> bool {
    wait_for(Duration::from_secs(5), || {
        log_lines(path)
            .iter()
            .any(|l| l["status"] == status && l["auth_reason"] == reason)
    })
}

// ---------------------------------------------------------------------------------------------
// 1-3. Every event kind, two gateways, cached and uncached, proxy and verify, restart
// ---------------------------------------------------------------------------------------------

/// Every issuer event that appends a record to the feed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Logout,
    OauthRevoke,
    AdminSessionRevoke,
    RefreshReuse,
    ApiKeyRevoked,
    UserDisabled,
    UserDeleted,
    PasswordReset,
    PasswordChange,
    RoleRemoval,
    RevokeAllSessions,
}

impl Event {
    const ALL: [Event; 11] = [
        Event::Logout,
        Event::OauthRevoke,
        Event::AdminSessionRevoke,
        Event::RefreshReuse,
        Event::ApiKeyRevoked,
        Event::UserDisabled,
        Event::UserDeleted,
        Event::PasswordReset,
        Event::PasswordChange,
        Event::RoleRemoval,
        Event::RevokeAllSessions,
    ];

    /// Whether the record is a `subject` one (every token of the user issued before), not a
    /// `session` one.
    fn ends_the_subject(self) -> bool {
        matches!(
            self,
            Event::UserDisabled
                | Event::UserDeleted
                | Event::PasswordReset
                | Event::PasswordChange
                | Event::RoleRemoval
                | Event::RevokeAllSessions
        )
    }

    /// The password of a login after a subject event; `None` when the account cannot log in
    /// any more.
    fn password_after(self) -> Option<&'static str> {
        match self {
            Event::PasswordReset | Event::PasswordChange => Some(NEW_PW),
            Event::RoleRemoval | Event::RevokeAllSessions => Some(PW),
            _ => None,
        }
    }
}

/// One event's user and tokens.
struct Case {
    event: Event,
    email: String,
    uid: String,
    /// A token the event ends, presented before it (three times: cached by the gateways).
    cached: String,
    /// Another token the event ends, never presented before it.
    uncached: String,
    /// A token of the same user from a session the event does not end (session events).
    sibling: Option<String>,
    /// The refresh token the event uses (logout, `/oauth/revoke`, reuse).
    refresh: String,
    /// The API key's id (API key revoked).
    key_id: String,
}

/// A fresh user (and for an API key event, a key of that user) and the tokens for `event`.
fn setup(s: &Stack, event: Event) -> Case {
    let email = format!("{}@example.com", format!("{event:?}").to_lowercase());
    let user = s.iss.create_user(&email, PW, &["editor", "viewer"]);
    let uid = user["id"].as_str().expect("user id").to_string();
    let mut case = Case {
        event,
        email: email.clone(),
        uid: uid.clone(),
        cached: String::new(),
        uncached: String::new(),
        sibling: None,
        refresh: String::new(),
        key_id: String::new(),
    };
    match event {
        Event::Logout | Event::OauthRevoke | Event::AdminSessionRevoke | Event::RefreshReuse => {
            // Two access tokens of one session: the login's and a refresh's.
            let first = s.login(&email, PW);
            let second = s.iss.refresh(&first.refresh).pair();
            assert_eq!(
                claim(&first.access, "sid"),
                claim(&second.access, "sid"),
                "a refresh keeps the session"
            );
            case.refresh = if event == Event::RefreshReuse {
                first.refresh // spent by the refresh: presenting it again is reuse
            } else {
                second.refresh
            };
            case.cached = first.access;
            case.uncached = second.access;
            case.sibling = Some(s.login(&email, PW).access);
        }
        Event::ApiKeyRevoked => {
            // Two sessions opened by the key; the user's password session is not the key's.
            let key = s
                .iss
                .create_api_key(&json!({"subject": uid, "name": "revocation-e2e"}));
            let secret = key["api_key"].as_str().expect("api_key");
            case.key_id = key["id"].as_str().expect("key id").to_string();
            case.cached = s.iss.api_key_login(secret).pair().access;
            case.uncached = s.iss.api_key_login(secret).pair().access;
            case.sibling = Some(s.login(&email, PW).access);
        }
        _ => {
            // Two sessions of the user: a subject record ends both.
            case.cached = s.login(&email, PW).access;
            case.uncached = s.login(&email, PW).access;
        }
    }
    case
}

/// Makes `case`'s event happen at the issuer.
fn fire(s: &Stack, case: &Case) {
    let iss = &s.iss;
    let what = format!("{:?}", case.event);
    match case.event {
        Event::Logout => s.logout(&case.refresh),
        Event::OauthRevoke => {
            let body = form_urlencoded::Serializer::new(String::new())
                .append_pair("token", &case.refresh)
                .finish();
            let r = send(
                client()
                    .post(iss.url("/oauth/revoke"))
                    .header("Content-Type", "application/x-www-form-urlencoded")
                    .header("Authorization", format!("Bearer {}", iss.admin_token))
                    .body(body),
            );
            assert_eq!(r.status, 200, "{what}: {}", r.text);
        }
        Event::AdminSessionRevoke => {
            let sid = claim(&case.cached, "sid");
            let r = iss.admin_delete(&format!("/admin/sessions/{}", sid.as_str().expect("sid")));
            assert_eq!(r.status, 204, "{what}: {}", r.text);
        }
        Event::RefreshReuse => {
            iss.refresh(&case.refresh)
                .assert_error(401, Some("invalid_grant"));
        }
        Event::ApiKeyRevoked => {
            let r = iss.admin_delete(&format!("/admin/api-keys/{}", case.key_id));
            assert_eq!(r.status, 204, "{what}: {}", r.text);
        }
        Event::UserDisabled => {
            let r = iss.admin_patch(
                &format!("/admin/users/{}", case.uid),
                &json!({"disabled": true}),
            );
            assert_eq!(r.status, 200, "{what}: {}", r.text);
        }
        Event::UserDeleted => {
            let r = iss.admin_delete(&format!("/admin/users/{}", case.uid));
            assert!(r.status == 204 || r.status == 200, "{what}: {}", r.text);
        }
        Event::PasswordReset => {
            let (code, out, err) = iss.cli(&["users", "set-password", &case.uid, NEW_PW]);
            assert_eq!(code, 0, "{what}: {out}{err}");
        }
        Event::PasswordChange => {
            let r = iss.patch_me(
                &case.cached,
                &json!({"password": NEW_PW, "old_password": PW}),
            );
            assert_eq!(r.status, 200, "{what}: {}", r.text);
        }
        Event::RoleRemoval => {
            let r = iss.admin_patch(
                &format!("/admin/users/{}", case.uid),
                &json!({"roles": ["viewer"]}),
            );
            assert_eq!(r.status, 200, "{what}: {}", r.text);
        }
        Event::RevokeAllSessions => {
            let r = iss.admin_delete(&format!("/admin/users/{}/sessions", case.uid));
            assert_eq!(r.status, 204, "{what}: {}", r.text);
        }
    }
}

/// One issuer, two gateways; each event in turn. (One process set for all events: starting
/// processes is what costs.)
fn every_event_kind(b: Backend) {
    let Some(db) = db_kind(b) else { return };
    let started = Instant::now();
    let s = Stack::start(db, ISSUER_YAML);
    let feed = s.feed("");
    let gw_a = s.gateway("gw-a", &feed, "");
    let gw_b = s.gateway("gw-b", &feed, "");
    gw_a.wait_ready(Duration::from_secs(15));
    gw_b.wait_ready(Duration::from_secs(15));

    // Someone no event concerns.
    s.iss.create_user("bystander@example.com", PW, &[]);
    let bystander = s.login("bystander@example.com", PW).access;
    let cases: Vec<Case> = Event::ALL.iter().map(|e| setup(&s, *e)).collect();

    // Before: everything passes at both gateways; the `cached` tokens three times (the later
    // answers come from the verified-token cache) and at the verify endpoint. The `uncached`
    // ones are not presented.
    let mut before = Failures::default();
    for gw in [&gw_a, &gw_b] {
        expect_pass(&mut before, "bystander", gw, Via::Proxy, &bystander);
        for c in &cases {
            let case = format!("{:?} before", c.event);
            for _ in 0..3 {
                expect_pass(&mut before, &case, gw, Via::Proxy, &c.cached);
            }
            expect_pass(&mut before, &case, gw, Via::Verify, &c.cached);
            if let Some(sibling) = &c.sibling {
                expect_pass(&mut before, &case, gw, Via::Proxy, sibling);
            }
        }
    }
    before.assert_none();

    // A subject record ends the tokens with `iat` < `not_before`, the event's second: a token
    // from the event's own second is not covered (`iat` has one-second resolution). So the
    // events happen in a second after every token was issued.
    let last_iat = cases
        .iter()
        .flat_map(|c| [iat(&c.cached), iat(&c.uncached)])
        .max()
        .expect("cases");
    wait_past(last_iat);

    let mut f = Failures::default();
    // The longest time from an event's answer to its refusal at both gateways.
    let mut slowest = (Duration::ZERO, Event::Logout);
    for (i, c) in cases.iter().enumerate() {
        let case = format!("{:?}", c.event);
        fire(&s, c);
        // The cached token, polled at both gateways until the record has arrived...
        let fired = Instant::now();
        let missed = wait_refused(
            &proxy_probes("cached token", &[&gw_a, &gw_b], &c.cached),
            REVOKED,
            PROPAGATION,
        );
        slowest = slowest.max((fired.elapsed(), c.event));
        let nothing_arrived = missed.len() == 2;
        for m in missed {
            f.check(false, &case, m);
        }
        if nothing_arrived {
            // The feed does not reach the gateways at all: waiting for each further event
            // would only add PROPAGATION each.
            std::mem::take(&mut f).assert_none();
        }
        // ... then, once each, the verify endpoint, and the token never presented before (its
        // first request is already refused: never verified and cached as valid first).
        for gw in [&gw_a, &gw_b] {
            expect_refused(&mut f, &case, gw, Via::Verify, &c.cached, REVOKED);
            expect_refused(&mut f, &case, gw, Via::Proxy, &c.uncached, REVOKED);
            expect_refused(&mut f, &case, gw, Via::Verify, &c.uncached, REVOKED);
        }
        // Nothing else ended: the bystander, every other session of the users so far, and the
        // tokens of the events still to come (the cached ones: the others stay unseen).
        let others = format!("{case}: others unaffected");
        for gw in [&gw_a, &gw_b] {
            expect_pass(&mut f, &others, gw, Via::Proxy, &bystander);
            expect_pass(&mut f, &others, gw, Via::Verify, &bystander);
            for (j, other) in cases.iter().enumerate() {
                if let Some(sibling) = &other.sibling {
                    if j <= i {
                        expect_pass(&mut f, &others, gw, Via::Proxy, sibling);
                    }
                }
                if j > i {
                    expect_pass(&mut f, &others, gw, Via::Proxy, &other.cached);
                }
            }
        }
    }

    // After a subject event the user's new tokens pass. A login in the event's own second
    // would get `iat` = `not_before`, before or after the event, which one-second resolution
    // cannot tell; the unambiguous case is a login in a later second, so wait for it.
    wait_past(jwt::now());
    let mut fresh = Vec::new();
    for c in cases.iter().filter(|c| c.event.ends_the_subject()) {
        let Some(pw) = c.event.password_after() else {
            continue;
        };
        let token = s.login(&c.email, pw).access;
        for gw in [&gw_a, &gw_b] {
            expect_pass(
                &mut f,
                &format!("{:?}: a new login", c.event),
                gw,
                Via::Proxy,
                &token,
            );
        }
        fresh.push((c.event, token));
    }

    // A gateway restarted after the events has the snapshot before it says ready: the first
    // request with each revoked token is already refused.
    drop(gw_b);
    let gw_b = s.gateway("gw-b", &feed, "");
    gw_b.wait_ready(Duration::from_secs(15));
    for c in &cases {
        let case = format!("{:?} after a gateway restart", c.event);
        expect_refused(&mut f, &case, &gw_b, Via::Proxy, &c.cached, REVOKED);
        expect_refused(&mut f, &case, &gw_b, Via::Verify, &c.uncached, REVOKED);
        if let Some(sibling) = &c.sibling {
            expect_pass(&mut f, &case, &gw_b, Via::Proxy, sibling);
        }
    }
    for (event, token) in &fresh {
        let case = format!("{event:?}: a new login after a gateway restart");
        expect_pass(&mut f, &case, &gw_b, Via::Proxy, token);
    }
    expect_pass(
        &mut f,
        "bystander after a restart",
        &gw_b,
        Via::Proxy,
        &bystander,
    );
    f.assert_none();
    println!(
        "every_event_kind({b:?}) took {:?}; slowest propagation to both gateways: {:?} ({:?})",
        started.elapsed(),
        slowest.0,
        slowest.1
    );
}

// ---------------------------------------------------------------------------------------------
// 4-5. Issuer restart and feed outage, under each policy
// ---------------------------------------------------------------------------------------------

#[test]
fn issuer_restart_and_feed_outage_under_each_policy() {
    let mut s = Stack::start(DbKind::Sqlite, "revocation_feed:\n  max_wait: 1s\n");
    // Stale after 3 s without a successful read; a read gives up after 2 s (the issuer
    // answers an idle one after 1 s).
    let short = "max_stale: 3s\ntimeout: 2s\n";
    let accept = s.gateway(
        "gw-accept",
        &s.feed(&format!("{short}on_stale: accept\n")),
        "",
    );
    let refuse_log = s.gw_dir("gw-refuse").join("access.log");
    let refuse = s.gateway(
        "gw-refuse",
        &s.feed(&format!("{short}on_stale: refuse\n")),
        &access_log(&refuse_log),
    );
    accept.wait_ready(Duration::from_secs(15));
    refuse.wait_ready(Duration::from_secs(15));
    let both = [&accept, &refuse];
    let mut f = Failures::default();

    for email in ["alice@example.com", "carol@example.com", "dave@example.com"] {
        s.iss.create_user(email, PW, &[]);
    }
    let carol = s.login("carol@example.com", PW).access;
    let dave = s.login("dave@example.com", PW).access;
    let dave_uid = claim(&dave, "sub").as_str().expect("sub").to_string();

    // An event before the restart.
    let a1 = s.login("alice@example.com", PW);
    for gw in both {
        expect_pass(&mut f, "before", gw, Via::Proxy, &a1.access);
        expect_pass(&mut f, "before", gw, Via::Proxy, &dave);
        expect_metric(
            &mut f,
            "feed fresh",
            gw,
            "portcullis_revocation_feed_stale",
            &[],
            "0",
            |v| v == 0.0,
        );
    }
    s.logout(&a1.refresh);
    for m in wait_refused(
        &proxy_probes("alice, before the restart", &both, &a1.access),
        REVOKED,
        PROPAGATION,
    ) {
        f.check(false, "event before the restart", m);
    }
    std::mem::take(&mut f).assert_none();

    // The issuer goes down. While it is down the CLI resets dave's password: a subject record
    // appended with no server running (in a second after dave's token was issued, see
    // every_event_kind), for the gateways to read once the issuer is back.
    wait_past(iat(&dave));
    s.iss.stop();
    let (code, out, err) = s.iss.cli(&["users", "set-password", &dave_uid, NEW_PW]);
    assert_eq!(code, 0, "set-password with the issuer down: {out}{err}");

    // on_stale: accept. Past max_stale the gauge says stale; tokens keep passing (their keys
    // are cached) and what the gateway already knew is still refused.
    let v = wait_metric(
        &accept,
        "portcullis_revocation_feed_stale",
        &[("issuer", NAME)],
        Duration::from_secs(10),
        |v| v == 1.0,
    );
    f.check(
        v == Some(1.0),
        "accept: stale",
        format!("stale gauge {v:?} 10 s into the outage"),
    );
    f.check(
        wait_for(Duration::from_secs(5), || {
            accept.proc.stderr_text().contains("on_stale: accept")
        }),
        "accept: warning logged",
        accept.proc.stderr_text(),
    );
    expect_pass(&mut f, "accept: outage", &accept, Via::Proxy, &carol);
    expect_pass(&mut f, "accept: outage", &accept, Via::Verify, &carol);
    expect_refused(
        &mut f,
        "accept: outage, known revocation",
        &accept,
        Via::Proxy,
        &a1.access,
        REVOKED,
    );

    // on_stale: refuse. The issuer's tokens are refused, said why, counted and logged.
    for m in wait_refused(
        &proxy_probes("carol at the refusing gateway", &[&refuse], &carol),
        UNAVAILABLE,
        Duration::from_secs(10),
    ) {
        f.check(false, "refuse: outage", m);
    }
    expect_refused(
        &mut f,
        "refuse: outage",
        &refuse,
        Via::Verify,
        &carol,
        UNAVAILABLE,
    );
    let r = ask(&refuse, Via::Proxy, &a1.access);
    f.check(
        r.status == 401,
        "refuse: outage, known revocation",
        show(&r),
    );
    expect_metric(
        &mut f,
        "refuse: stale",
        &refuse,
        "portcullis_revocation_feed_stale",
        &[],
        "1",
        |v| v == 1.0,
    );
    let denied = metric(
        &refuse,
        "portcullis_auth_total",
        &[("outcome", "denied"), ("reason", "revocation_stale")],
    );
    f.check(
        denied.is_some_and(|v| v >= 2.0),
        "refuse: counted",
        format!(
            "portcullis_auth_total{{outcome=\"denied\",reason=\"revocation_stale\"}} = {denied:?}"
        ),
    );
    f.check(
        wait_log_reason(&refuse_log, 401, "revocation_stale"),
        "refuse: logged",
        format!(
            "no 401 line with auth_reason revocation_stale in {:?}",
            log_lines(&refuse_log)
        ),
    );

    // The issuer is back: both recover, and the record written during the outage arrives
    // (the sequence went on from the gateways' cursor).
    s.iss.start_again();
    for gw in both {
        let v = wait_metric(
            gw,
            "portcullis_revocation_feed_stale",
            &[("issuer", NAME)],
            RECOVERY,
            |v| v == 0.0,
        );
        f.check(
            v == Some(0.0),
            "recovered",
            format!(
                "stale gauge {v:?} on :{} after the issuer returned",
                gw.port
            ),
        );
    }
    for m in wait_refused(
        &proxy_probes("dave, reset during the outage", &both, &dave),
        REVOKED,
        RECOVERY,
    ) {
        f.check(false, "event during the outage", m);
    }
    for gw in both {
        expect_pass(&mut f, "recovered", gw, Via::Proxy, &carol);
        expect_refused(
            &mut f,
            "recovered, earlier revocation",
            gw,
            Via::Proxy,
            &a1.access,
            REVOKED,
        );
    }

    // An event after the restart.
    let a2 = s.login("alice@example.com", PW);
    for gw in both {
        expect_pass(&mut f, "after the restart", gw, Via::Proxy, &a2.access);
    }
    s.logout(&a2.refresh);
    for m in wait_refused(
        &proxy_probes("alice, after the restart", &both, &a2.access),
        REVOKED,
        PROPAGATION,
    ) {
        f.check(false, "event after the restart", m);
    }
    // dave's new password gives tokens that pass (the reset was seconds ago).
    wait_past(jwt::now());
    let dave2 = s.login("dave@example.com", NEW_PW).access;
    for gw in both {
        expect_pass(&mut f, "dave's new login", gw, Via::Proxy, &dave2);
    }
    f.assert_none();
}

// ---------------------------------------------------------------------------------------------
// 6. Discovery
// ---------------------------------------------------------------------------------------------

#[test]
fn the_feed_is_found_through_discovery() {
    let s = Stack::start(DbKind::Sqlite, ISSUER_YAML);
    let mut f = Failures::default();
    let doc = get_with(&s.iss.url("/.well-known/openid-configuration"), None);
    f.check(
        doc.status == 200
            && doc.json()["revocation_feed_endpoint"] == s.iss.url("/v1/revocations").as_str(),
        "discovery document",
        format!(
            "revocation_feed_endpoint should be {}: {}",
            s.iss.url("/v1/revocations"),
            doc.text
        ),
    );
    // No `url`: the gateway reads the discovery document.
    let gw = s.gateway("gw", "token_file: feed-token\n", "");
    gw.wait_ready(Duration::from_secs(15));
    let (_, ready) = gw.readyz();
    f.check(
        ready["issuers"][NAME]["revocation"]["loaded"] == true,
        "readyz",
        format!("{ready}"),
    );
    s.iss.create_user("erin@example.com", PW, &[]);
    s.iss.create_user("frank@example.com", PW, &[]);
    let erin = s.login("erin@example.com", PW);
    let frank = s.login("frank@example.com", PW).access;
    expect_pass(&mut f, "before", &gw, Via::Proxy, &erin.access);
    s.logout(&erin.refresh);
    for m in wait_refused(
        &proxy_probes("erin", &[&gw], &erin.access),
        REVOKED,
        PROPAGATION,
    ) {
        f.check(false, "logout", m);
    }
    expect_pass(&mut f, "bystander", &gw, Via::Proxy, &frank);
    f.assert_none();
}

// ---------------------------------------------------------------------------------------------
// 7. A wrong feed credential
// ---------------------------------------------------------------------------------------------

#[test]
fn a_wrong_feed_credential_keeps_the_gateway_unready() {
    let s = Stack::start(DbKind::Sqlite, ISSUER_YAML);
    let gw = s.gateway_with_token(
        "gw",
        b"not-the-feed-token\n",
        &s.feed("on_stale: refuse\n"),
        "",
    );
    let errors = &[("issuer", NAME), ("result", "error")];
    let reads = "portcullis_revocation_feed_reads_total";
    let mut f = Failures::default();
    // Refused reads are counted, and retried.
    let first = wait_metric(&gw, reads, errors, Duration::from_secs(10), |v| v >= 1.0);
    f.check(
        first.is_some_and(|v| v >= 1.0),
        "reads fail",
        format!("{reads} error = {first:?}"),
    );
    let first = first.unwrap_or(0.0).max(1.0);
    let more = wait_metric(&gw, reads, errors, Duration::from_secs(15), |v| v > first);
    f.check(
        more.is_some_and(|v| v > first),
        "reads are retried",
        format!("{reads} error stayed {more:?}"),
    );
    let ok = metric(&gw, reads, &[("issuer", NAME), ("result", "ok")]).unwrap_or(0.0);
    f.check(ok == 0.0, "no read succeeds", format!("{reads} ok = {ok}"));
    let lag = metric(
        &gw,
        "portcullis_revocation_feed_lag_seconds",
        &[("issuer", NAME)],
    );
    f.check(
        lag == Some(-1.0),
        "lag: never read",
        format!("lag gauge {lag:?}"),
    );
    // Never ready: the keys are there, the snapshot is not.
    let (status, ready) = gw.readyz();
    f.check(status == 503, "readyz", format!("{status} {ready}"));
    f.check(
        ready["issuers"][NAME]["keys"] == true
            && ready["issuers"][NAME]["revocation"]["loaded"] == false,
        "readyz details",
        format!("{ready}"),
    );
    // With on_stale: refuse, the issuer's tokens are refused before the first snapshot too.
    s.iss.create_user("grace@example.com", PW, &[]);
    let token = s.login("grace@example.com", PW).access;
    expect_refused(
        &mut f,
        "refuse before a snapshot",
        &gw,
        Via::Proxy,
        &token,
        UNAVAILABLE,
    );
    f.assert_none();
}

// ---------------------------------------------------------------------------------------------
// 8. Config errors
// ---------------------------------------------------------------------------------------------

#[test]
fn config_errors_name_file_and_line() {
    let dir = tempdir();
    let d = dir.path();
    std::fs::write(
        d.join("feed-token"),
        "a-feed-token-of-forty-three-characters-abc\n",
    )
    .expect("token");
    std::fs::create_dir(d.join("a-directory")).expect("mkdir");
    let url = "      url: http://127.0.0.1:9/v1/revocations\n";
    let config = |revocation: &str| {
        format!(
            "{}listeners:\n  - address: 127.0.0.1:18080\nupstreams:\n  app:\n    backends: [\"127.0.0.1:19000\"]\nissuers:\n  - name: {NAME}\n    issuer: http://127.0.0.1:9\n    jwks_url: http://127.0.0.1:9/.well-known/jwks.json\n    revocation:\n{revocation}routes:\n  - name: api\n    match: {{path: {{prefix: /api/}}}}\n    upstream: app\n",
            server_block(d)
        )
    };
    let mut f = Failures::default();

    // Good: every key; the defaults with discovery; an absolute path. `-t` runs in another
    // working directory, so the relative `token_file` must be found next to the config.
    let good = [
        (
            "every key, relative token_file",
            format!("{url}      token_file: feed-token\n      max_stale: 60s\n      on_stale: refuse\n      timeout: 35s\n"),
        ),
        ("defaults, discovery", "      token_file: feed-token\n".to_string()),
        (
            "absolute token_file, accept",
            format!("{url}      token_file: {}\n      on_stale: accept\n      max_stale: 2s\n      timeout: 1s\n", d.join("feed-token").display()),
        ),
    ];
    for (i, (label, revocation)) in good.iter().enumerate() {
        let path = d.join(format!("good-{i}.yaml"));
        std::fs::write(&path, config(revocation)).expect("write");
        let (code, out) = check_config(&path);
        f.check(code == 0, label, format!("exit {code}:\n{out}"));
    }

    // Bad: (label, revocation lines, the lines the error may be reported at, the key named).
    let bad: Vec<(&str, String, Vec<&str>, &str)> = vec![
        (
            "no token_file",
            format!("{url}      max_stale: 60s\n"),
            vec!["revocation:", "url:", "max_stale:"],
            "token_file",
        ),
        (
            "token_file missing",
            format!("{url}      token_file: no-such-file\n"),
            vec!["token_file:"],
            "token_file",
        ),
        (
            "token_file unreadable (a directory)",
            format!("{url}      token_file: a-directory\n"),
            vec!["token_file:"],
            "token_file",
        ),
        (
            "bad on_stale",
            format!("{url}      token_file: feed-token\n      on_stale: maybe\n"),
            vec!["on_stale:"],
            "on_stale",
        ),
        (
            "timeout above max_stale",
            format!(
                "{url}      token_file: feed-token\n      max_stale: 10s\n      timeout: 20s\n"
            ),
            vec!["timeout:", "max_stale:"],
            "timeout",
        ),
        (
            "timeout under 1s",
            format!("{url}      token_file: feed-token\n      timeout: 500ms\n"),
            vec!["timeout:"],
            "timeout",
        ),
        (
            "max_stale not a duration",
            format!("{url}      token_file: feed-token\n      max_stale: soon\n"),
            vec!["max_stale:"],
            "max_stale",
        ),
        (
            "unknown key",
            format!("{url}      token_file: feed-token\n      on_stal: refuse\n"),
            vec!["on_stal:"],
            "on_stal",
        ),
    ];
    for (i, (label, revocation, at, key)) in bad.iter().enumerate() {
        let path = d.join(format!("bad-{i}.yaml"));
        let text = config(revocation);
        std::fs::write(&path, &text).expect("write");
        // The candidate line numbers, from the `revocation:` block on.
        let start = text
            .lines()
            .position(|l| l.trim() == "revocation:")
            .expect("block");
        let lines: Vec<usize> = text
            .lines()
            .enumerate()
            .skip(start)
            .filter(|(_, l)| at.iter().any(|a| l.trim_start().starts_with(a)))
            .map(|(n, _)| n + 1)
            .collect();
        let (code, out) = check_config(&path);
        let emerg = out.lines().find(|l| l.contains("[emerg]")).unwrap_or("");
        let located = lines
            .iter()
            .any(|n| emerg.contains(&format!("{}:{n}:", path.display())));
        f.check(
            code != 0 && located && emerg.contains(key),
            label,
            format!(
                "want a non-zero exit and an [emerg] line at {}:{lines:?} naming {key:?}; got exit {code}:\n{out}",
                path.display()
            ),
        );
    }
    f.assert_none();
}

// ---------------------------------------------------------------------------------------------
// 9. Metrics, readiness details, access log
// ---------------------------------------------------------------------------------------------

#[test]
fn metrics_readiness_and_access_log_follow_the_feed() {
    let s = Stack::start(DbKind::Sqlite, ISSUER_YAML);
    let log = s.gw_dir("gw").join("access.log");
    let gw = s.gateway("gw", &s.feed(""), &access_log(&log));
    gw.wait_ready(Duration::from_secs(15));
    let mut f = Failures::default();
    let lag_ok = |v: Option<f64>| v.is_some_and(|v| (0.0..=30.0).contains(&v));

    // Ready with the (empty) snapshot.
    let (_, ready) = gw.readyz();
    let rev = &ready["issuers"][NAME]["revocation"];
    f.check(
        rev["loaded"] == true && rev["records"] == 0 && lag_ok(rev["lag_seconds"].as_f64()),
        "readyz at start",
        format!("{ready}"),
    );
    let lag_in_range = |v: f64| (0.0..=30.0).contains(&v);
    for kind in ["session", "subject"] {
        let labels = [("kind", kind)];
        expect_metric(
            &mut f,
            "at start",
            &gw,
            "portcullis_revocation_records",
            &labels,
            "0",
            |v| v == 0.0,
        );
        expect_metric(
            &mut f,
            "at start",
            &gw,
            "portcullis_revocation_events_total",
            &labels,
            "0",
            |v| v == 0.0,
        );
    }
    expect_metric(
        &mut f,
        "at start",
        &gw,
        "portcullis_revocation_feed_stale",
        &[],
        "0",
        |v| v == 0.0,
    );
    expect_metric(
        &mut f,
        "at start",
        &gw,
        "portcullis_revocation_feed_lag_seconds",
        &[],
        "0..=30",
        lag_in_range,
    );
    let reads = "portcullis_revocation_feed_reads_total";
    let reads_at_start = expect_metric(
        &mut f,
        "at start",
        &gw,
        reads,
        &[("result", "ok")],
        ">= 1",
        |v| v >= 1.0,
    )
    .unwrap_or(0.0);
    expect_metric(
        &mut f,
        "at start",
        &gw,
        reads,
        &[("result", "error")],
        "0",
        |v| v == 0.0,
    );

    // Two logouts (two session records) and one "revoke every session" (one subject record).
    for email in ["alice@example.com", "bob@example.com", "carol@example.com"] {
        s.iss.create_user(email, PW, &[]);
    }
    let a1 = s.login("alice@example.com", PW);
    let a2 = s.login("alice@example.com", PW);
    let bob = s.login("bob@example.com", PW).access;
    let bob_uid = claim(&bob, "sub").as_str().expect("sub").to_string();
    let carol = s.login("carol@example.com", PW).access;
    for token in [&a1.access, &a2.access, &bob, &carol] {
        expect_pass(&mut f, "before", &gw, Via::Proxy, token);
    }
    wait_past(iat(&bob)); // see every_event_kind
    s.logout(&a1.refresh);
    s.logout(&a2.refresh);
    let r = s
        .iss
        .admin_delete(&format!("/admin/users/{bob_uid}/sessions"));
    assert_eq!(r.status, 204, "{}", r.text);
    let mut probes = proxy_probes("alice 1", &[&gw], &a1.access);
    probes.extend(proxy_probes("alice 2", &[&gw], &a2.access));
    for m in wait_refused(&probes, REVOKED, PROPAGATION) {
        f.check(false, "session records", m);
    }
    for m in wait_refused(&proxy_probes("bob", &[&gw], &bob), REVOKED, PROPAGATION) {
        f.check(false, "subject record", m);
    }
    expect_pass(&mut f, "bystander", &gw, Via::Proxy, &carol);

    for (name, kind, want) in [
        ("portcullis_revocation_records", "session", 2.0),
        ("portcullis_revocation_records", "subject", 1.0),
        ("portcullis_revocation_events_total", "session", 2.0),
        ("portcullis_revocation_events_total", "subject", 1.0),
    ] {
        let labels = [("kind", kind)];
        expect_metric(
            &mut f,
            "after the events",
            &gw,
            name,
            &labels,
            &want.to_string(),
            |v| v == want,
        );
    }
    expect_metric(
        &mut f,
        "after the events",
        &gw,
        reads,
        &[("result", "ok")],
        &format!("> {reads_at_start}"),
        |v| v > reads_at_start,
    );
    expect_metric(
        &mut f,
        "after the events",
        &gw,
        "portcullis_revocation_feed_lag_seconds",
        &[],
        "0..=30",
        lag_in_range,
    );
    expect_metric(
        &mut f,
        "after the events",
        &gw,
        "portcullis_revocation_feed_stale",
        &[],
        "0",
        |v| v == 0.0,
    );
    let (status, ready) = gw.readyz();
    let rev = &ready["issuers"][NAME]["revocation"];
    f.check(
        status == 200
            && rev["loaded"] == true
            && rev["records"] == 3
            && lag_ok(rev["lag_seconds"].as_f64()),
        "readyz after the events",
        format!("{status} {ready}"),
    );

    // A route with `auth: optional` refuses a revoked token too (it is not anonymous).
    expect_refused(
        &mut f,
        "optional route",
        &gw,
        Via::Optional,
        &a1.access,
        REVOKED,
    );
    expect_refused(&mut f, "optional route", &gw, Via::Optional, &bob, REVOKED);
    expect_pass(&mut f, "optional route", &gw, Via::Optional, &carol);

    // Refusals are counted by reason: exactly the ones made now.
    let denied = |reason: &str| {
        metric(
            &gw,
            "portcullis_auth_total",
            &[("outcome", "denied"), ("reason", reason)],
        )
        .unwrap_or(0.0)
    };
    for (reason, token) in [("session_revoked", &a1.access), ("subject_revoked", &bob)] {
        let before = denied(reason);
        for _ in 0..3 {
            expect_refused(&mut f, reason, &gw, Via::Proxy, token, REVOKED);
        }
        let after = wait_metric(
            &gw,
            "portcullis_auth_total",
            &[("outcome", "denied"), ("reason", reason)],
            Duration::from_secs(5),
            |v| v >= before + 3.0,
        );
        f.check(after == Some(before + 3.0), reason, format!("portcullis_auth_total{{outcome=\"denied\",reason=\"{reason}\"}} {before} -> {after:?}, want +3"));
        f.check(
            wait_log_reason(&log, 401, reason),
            reason,
            format!(
                "no 401 access-log line with auth_reason {reason}: {:?}",
                log_lines(&log)
            ),
        );
    }
    f.assert_none();
}

// ---------------------------------------------------------------------------------------------
// 10. Reloads
// ---------------------------------------------------------------------------------------------

/// Writes `text` to `path` through a rename, so the gateway never reads half a file.
fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, text).expect("write config");
    std::fs::rename(&tmp, path).expect("rename config");
}

/// Sends SIGHUP and waits until `n` reloads have succeeded.
fn reload(gw: &Gateway, n: f64) -> bool {
    gw.proc.signal(libc::SIGHUP);
    let ok = &[("result", "ok")];
    wait_metric(
        gw,
        "portcullis_config_reloads_total",
        ok,
        Duration::from_secs(10),
        |v| v >= n,
    )
    .is_some_and(|v| v >= n)
}

/// A reload keeps what is revoked: with the feed settings unchanged (the running state goes
/// on) and changed (a new state that starts from the old one's records while it reads its own
/// snapshot). A revoked token is refused at every request throughout, events after the reloads
/// arrive, and the feed's counters keep counting.
#[test]
fn revocations_survive_reloads() {
    let s = Stack::start(DbKind::Sqlite, "revocation_feed:\n  max_wait: 1s\n");
    let gw = s.gateway("gw", &s.feed("max_stale: 60s\n"), "");
    gw.wait_ready(Duration::from_secs(15));
    let mut f = Failures::default();
    for email in ["alice@example.com", "carol@example.com"] {
        s.iss.create_user(email, PW, &[]);
    }
    let carol = s.login("carol@example.com", PW).access;
    let a1 = s.login("alice@example.com", PW);
    expect_pass(&mut f, "before", &gw, Via::Proxy, &a1.access);
    s.logout(&a1.refresh);
    for m in wait_refused(
        &proxy_probes("alice", &[&gw], &a1.access),
        REVOKED,
        PROPAGATION,
    ) {
        f.check(false, "logout", m);
    }
    std::mem::take(&mut f).assert_none();

    // Some reads first (an idle one every second), so that a counter that started again from
    // zero after the reload would visibly stall.
    let reads = "portcullis_revocation_feed_reads_total";
    let ok = [("issuer", NAME), ("result", "ok")];
    let r = wait_metric(&gw, reads, &ok, Duration::from_secs(15), |v| v >= 6.0);
    assert!(r.is_some_and(|v| v >= 6.0), "{reads} ok = {r:?}");

    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let hammer = scope.spawn(|| {
            let (mut n, mut wrong) = (0, Vec::new());
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let r = ask(&gw, Via::Proxy, &a1.access);
                n += 1;
                if !refused(&r, REVOKED) {
                    wrong.push(show(&r));
                }
            }
            (n, wrong)
        });
        f.check(
            reload(&gw, 1.0),
            "reload, feed unchanged",
            gw.proc.stderr_text(),
        );
        let text = std::fs::read_to_string(&gw.config).expect("read config");
        assert!(text.contains("max_stale: 60s"), "{text}");
        write_atomic(
            &gw.config,
            &text.replace("max_stale: 60s", "max_stale: 90s"),
        );
        let before = metric(&gw, reads, &ok).unwrap_or(0.0);
        f.check(
            reload(&gw, 2.0),
            "reload, feed changed",
            gw.proc.stderr_text(),
        );
        // The new state reads (a snapshot, then a long poll a second): the counter goes on.
        let after = wait_metric(&gw, reads, &ok, Duration::from_secs(4), |v| v > before);
        f.check(
            after.is_some_and(|v| v > before),
            "reads counted after the feed changed",
            format!("{reads} ok stayed {after:?} (before the reload: {before}) for 4 s"),
        );
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let (n, wrong) = hammer.join().expect("hammer");
        f.check(
            n > 0 && wrong.is_empty(),
            "refused throughout the reloads",
            format!(
                "{} of {n} answers were not the refusal: {:?}",
                wrong.len(),
                wrong.first()
            ),
        );
    });

    // Events after the reloads arrive; others pass; /readyz counts both records.
    let a2 = s.login("alice@example.com", PW);
    expect_pass(&mut f, "after the reloads", &gw, Via::Proxy, &a2.access);
    s.logout(&a2.refresh);
    for m in wait_refused(
        &proxy_probes("alice again", &[&gw], &a2.access),
        REVOKED,
        PROPAGATION,
    ) {
        f.check(false, "logout after the reloads", m);
    }
    expect_refused(
        &mut f,
        "after the reloads",
        &gw,
        Via::Proxy,
        &a1.access,
        REVOKED,
    );
    expect_pass(&mut f, "bystander", &gw, Via::Proxy, &carol);
    let (status, ready) = gw.readyz();
    let rev = &ready["issuers"][NAME]["revocation"];
    f.check(
        status == 200 && rev["loaded"] == true && rev["records"] == 2,
        "readyz after the reloads",
        format!("{status} {ready}"),
    );
    f.assert_none();
}

// ---------------------------------------------------------------------------------------------
// 11. More than a page
// ---------------------------------------------------------------------------------------------

/// The issuer answers at most 1,000 records a read. One API key opens 1,100 sessions and is
/// revoked: one transaction appends 1,100 records. A running gateway reads them as increments
/// in two pages (`more`), a gateway started afterwards as a snapshot in two pages (the first
/// flagged `snapshot`, replacing the set only once complete); both hold and apply all of them.
#[test]
fn a_feed_larger_than_a_page() {
    const N: usize = 1100;
    let s = Stack::start(DbKind::Sqlite, ISSUER_YAML);
    let running = s.gateway("gw-running", &s.feed(""), "");
    running.wait_ready(Duration::from_secs(15));
    s.iss.create_user("heidi@example.com", PW, &[]);
    let bystander = s.login("heidi@example.com", PW).access;
    let key = s
        .iss
        .create_api_key(&json!({"subject": "batch-worker", "name": "batch"}));
    let secret = key["api_key"].as_str().expect("api_key");
    // One keep-alive client for the logins: N fresh clients would cost more than the test.
    let c = client();
    let url = s.iss.url("/v1/auth/api-key");
    let tokens: Vec<String> = (0..N)
        .map(|i| {
            let r = send(c.post(&url).json(&json!({ "api_key": secret })));
            assert_eq!(r.status, 200, "API-key login {i}: {}", r.text);
            r.json()["access_token"]
                .as_str()
                .expect("access_token")
                .to_string()
        })
        .collect();
    // Every 50th token and the last ones (records past the first page).
    let sample: Vec<&String> = tokens
        .iter()
        .step_by(50)
        .chain(tokens.iter().rev().take(5))
        .collect();
    let mut f = Failures::default();
    for t in &sample {
        expect_pass(&mut f, "before", &running, Via::Proxy, t);
    }
    let r = s.iss.admin_delete(&format!(
        "/admin/api-keys/{}",
        key["id"].as_str().expect("key id")
    ));
    assert_eq!(r.status, 204, "{}", r.text);
    // The premise: the feed does not fit one answer.
    let v = s.iss.revocations(None).json();
    assert!(
        v["more"] == true && v["records"].as_array().map(Vec::len) == Some(1000),
        "the issuer's first page: more={} records={:?}",
        v["more"],
        v["records"].as_array().map(Vec::len)
    );

    let fresh = s.gateway("gw-fresh", &s.feed(""), "");
    fresh.wait_ready(Duration::from_secs(15));
    for (which, gw) in [("running", &running), ("fresh", &fresh)] {
        let held = wait_for(PROPAGATION, || {
            gw.readyz().1["issuers"][NAME]["revocation"]["records"] == N
        });
        f.check(
            held,
            which,
            format!("/readyz should count {N} records: {}", gw.readyz().1),
        );
        expect_metric(
            &mut f,
            which,
            gw,
            "portcullis_revocation_records",
            &[("kind", "session")],
            &N.to_string(),
            |v| v == N as f64,
        );
        for t in &sample {
            expect_refused(&mut f, which, gw, Via::Proxy, t, REVOKED);
        }
        expect_pass(&mut f, which, gw, Via::Proxy, &bystander);
    }
    f.assert_none();
}

// ---------------------------------------------------------------------------------------------
// 12. Records belong to their issuer
// ---------------------------------------------------------------------------------------------

/// A second trusted issuer (no feed) signs a token with the `sub` and `sid` that the first
/// issuer's feed revoked, issued before the cut-off: it passes, because records are the
/// revoking issuer's only.
#[test]
fn records_apply_only_to_their_issuer() {
    let s = Stack::start(DbKind::Sqlite, ISSUER_YAML);
    let key = jwt::TestKey::ec_p256().with_kid("k1");
    let other = jwt::JwksServer::serving(&[&key]);
    let more = format!(
        "  - name: other\n    issuer: {}\n    jwks_url: {}\n    audiences: [demo]\n",
        other.issuer_url(),
        other.url()
    );
    let gw = s.gateway_full("gw", &s.feed_token_file(), &s.feed(""), "", &more);
    gw.wait_ready(Duration::from_secs(15));
    let mut f = Failures::default();

    s.iss.create_user("ivan@example.com", PW, &[]);
    let first = s.login("ivan@example.com", PW);
    let second = s.login("ivan@example.com", PW).access;
    let uid = claim(&second, "sub").as_str().expect("sub").to_string();
    let sid = claim(&first.access, "sid");
    // A session record, then (in a later second than the tokens, see every_event_kind) a
    // subject record.
    s.logout(&first.refresh);
    wait_past(iat(&second));
    let r = s.iss.admin_delete(&format!("/admin/users/{uid}/sessions"));
    assert_eq!(r.status, 204, "{}", r.text);
    let mut probes = proxy_probes("session record", &[&gw], &first.access);
    probes.extend(proxy_probes("subject record", &[&gw], &second));
    for m in wait_refused(&probes, REVOKED, PROPAGATION) {
        f.check(false, "own issuer", m);
    }

    let now = jwt::now();
    let mut claims = jwt::claims(&other.issuer_url(), &uid, "demo", 300);
    claims["sid"] = sid;
    for name in ["iat", "nbf", "auth_time"] {
        claims[name] = json!(now - 60);
    }
    let token = jwt::sign(&key, "ES256", jwt::header("k1", "ES256"), claims);
    expect_pass(&mut f, "other issuer", &gw, Via::Proxy, &token);
    expect_pass(&mut f, "other issuer", &gw, Via::Verify, &token);
    f.assert_none();
}
