//! The "plugin" use: a Pingora proxy of your own that verifies tokens with the Portcullis
//! verifier in its `request_filter` and forwards the identity headers.
//!
//! ```sh
//! cargo run -p portcullis-gateway --example plugin -- \
//!     --listen 127.0.0.1:6190 --upstream 127.0.0.1:9000 \
//!     --issuer http://127.0.0.1:8081 --jwks http://127.0.0.1:8081/.well-known/jwks.json \
//!     --revocations http://127.0.0.1:8081/v1/revocations --feed-token-file data/secrets/feed-token
//! ```
//!
//! `--revocations` (optional) follows the issuer's revocation feed: tokens of a logged-out
//! session or a revoked subject are refused on every request, cached or not.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use jsonwebtoken::Algorithm;
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session};
use pingora::server::configuration::ServerConf;
use pingora::services::background::background_service;
use portcullis_gateway::{
    authenticate, AuthMode, FeedSpec, FeedUrl, Identity, IdentityHeaderNames, IdentityPrefix,
    Issuer, IssuerKeys, KeyRefresher, KeySource, Outcome, RefreshPolicy, RevocationFollower,
    Revocations, RoutePolicy, StalePolicy, TokenCache, Verifier, VerifyObserver,
};

/// Your proxy: anything you like, plus a verifier.
struct MyProxy {
    verifier: Verifier,
    policy: RoutePolicy,
    prefix: IdentityPrefix,
    names: IdentityHeaderNames,
    upstream: String,
}

/// Where verification outcomes go (your metrics); this example ignores them.
struct NoMetrics;
impl VerifyObserver for NoMetrics {
    fn cache(&self, _hit: bool) {}
}

#[async_trait]
impl ProxyHttp for MyProxy {
    type CTX = Option<Identity>;

    fn new_ctx(&self) -> Self::CTX {
        None
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        // 1. Identity headers are ours alone: drop whatever the client sent.
        self.prefix.strip(session.req_header_mut());
        // 2. Verify the token and apply the route policy.
        match authenticate(
            session.req_header(),
            AuthMode::Required,
            &self.policy,
            &self.verifier,
            &NoMetrics,
        )
        .await
        {
            Outcome::Allowed(identity) => {
                *ctx = Some(identity);
                Ok(false)
            }
            Outcome::Rejected(r) => {
                let mut resp = pingora::http::ResponseHeader::build(r.status, None)?;
                resp.insert_header("WWW-Authenticate", r.www_authenticate("example"))?;
                resp.insert_header("Content-Type", "application/json")?;
                let body = Bytes::from(format!(
                    "{{\"error\":\"{}\"}}",
                    r.error.unwrap_or("unauthorized")
                ));
                resp.insert_header("Content-Length", body.len().to_string())?;
                session.write_response_header(Box::new(resp), false).await?;
                session.write_response_body(Some(body), true).await?;
                Ok(true)
            }
            Outcome::Public | Outcome::Anonymous => Ok(false),
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(
            self.upstream.as_str(),
            false,
            String::new(),
        )))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream: &mut pingora::http::RequestHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        // 3. Hand the verified identity to the app.
        if let Some(identity) = ctx {
            for (name, value) in identity.headers(&self.names) {
                upstream.insert_header(name.clone(), value.clone())?;
            }
        }
        upstream.remove_header("Authorization");
        Ok(())
    }
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let (Some(listen), Some(upstream), Some(iss), Some(jwks)) = (
        arg("--listen"),
        arg("--upstream"),
        arg("--issuer"),
        arg("--jwks"),
    ) else {
        eprintln!(
            "usage: plugin --listen ADDR --upstream ADDR --issuer ISS --jwks URL [--audience AUD] [--revocations URL --feed-token-file FILE]"
        );
        std::process::exit(2);
    };
    let keys = IssuerKeys::new(
        "example".into(),
        KeySource::Remote(jwks),
        RefreshPolicy::default(),
    );
    // The revocation feed: the issuer's URL and the credential it shares with its gateways.
    let revocations = arg("--revocations").map(|url| {
        let token = arg("--feed-token-file")
            .and_then(|f| std::fs::read_to_string(f).ok())
            .map(|t| t.trim().to_string())
            .unwrap_or_else(|| {
                eprintln!("--revocations needs a readable --feed-token-file");
                std::process::exit(2);
            });
        Revocations::new(
            "example".into(),
            FeedSpec {
                url: FeedUrl::Fixed(url),
                token,
                max_stale: Duration::from_secs(60),
                on_stale: StalePolicy::Accept,
                timeout: Duration::from_secs(35),
            },
        )
    });
    let issuer = Arc::new(Issuer {
        name: "example".into(),
        iss,
        keys: keys.clone(),
        algorithms: vec![Algorithm::ES256, Algorithm::RS256, Algorithm::EdDSA],
        audiences: arg("--audience").into_iter().collect(),
        leeway: 30,
        typ: vec!["at+jwt".into()],
        required: true,
        revocations: revocations.clone(),
    });
    let prefix = IdentityPrefix::new("X-Auth-");
    let proxy = MyProxy {
        verifier: Verifier::new(vec![issuer], 8 * 1024, 1, Arc::new(TokenCache::new(10_000))),
        policy: RoutePolicy::default(),
        names: IdentityHeaderNames::new(&prefix),
        prefix,
        upstream,
    };

    let mut server = Server::new_with_opt_and_conf(
        None,
        ServerConf {
            threads: 1,
            ..ServerConf::default()
        },
    );
    server.bootstrap();
    let mut svc = pingora::proxy::http_proxy_service(&server.configuration, proxy);
    svc.add_tcp(&listen);
    server.add_service(svc);
    // Keeps the issuer's keys fresh (one refresher serves any number of issuers).
    server.add_service(background_service("jwks", KeyRefresher::new(vec![keys])));
    // Keeps the revoked sessions current (one follower serves any number of issuers).
    if let Some(r) = revocations {
        server.add_service(background_service(
            "revocations",
            RevocationFollower::new(vec![r]),
        ));
    }
    server.run_forever();
}
