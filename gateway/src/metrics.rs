//! Prometheus metrics, served on the admin listener's `/metrics`.

use prometheus::{
    exponential_buckets, Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric the gateway exports, registered in its own registry.
pub struct Metrics {
    registry: Registry,
    /// Requests by route and status (`route="-"` when no route matched).
    pub requests: IntCounterVec,
    /// Time from picking a backend to its response header, by upstream.
    pub upstream_latency: HistogramVec,
    /// Total request duration by route.
    pub request_duration: HistogramVec,
    /// Requests being processed right now.
    pub active_requests: IntGauge,
    /// Config reloads by result (`ok`, `error`).
    pub reloads: IntCounterVec,
    /// 1 when a backend is considered up by its health check.
    pub backend_up: IntGaugeVec,
    /// Access log lines dropped because the writer could not keep up.
    pub access_log_dropped: IntCounter,
    /// Authentication outcomes (`public`, `anonymous`, `ok`, `denied`) by reason.
    pub auth: IntCounterVec,
    /// Verified-token cache lookups by result (`hit`, `miss`).
    pub token_cache: IntCounterVec,
    /// JWKS fetches by issuer and result.
    pub jwks_fetches: IntCounterVec,
    /// Seconds since each issuer's last successful JWKS fetch (-1: never).
    pub jwks_age: IntGaugeVec,
    /// Keys held per issuer.
    pub jwks_keys: IntGaugeVec,
    /// Client connections open now.
    pub connections_open: IntGauge,
    /// Connections closed at once because `max_connections` were open.
    pub connections_refused: IntCounter,
    /// Requests refused by a connection-level limit, by reason (head too large, timeout…).
    pub requests_refused: IntCounterVec,
    /// Requests refused by a rate or concurrency limit, by route and limit name.
    pub rate_limited: IntCounterVec,
    /// Seconds since each issuer's revocation feed was last read (-1: never).
    pub revocation_lag: IntGaugeVec,
    /// Revocation records held, by issuer and kind.
    pub revocation_records: IntGaugeVec,
    /// Revocation records received, by issuer and kind.
    pub revocation_events: IntCounterVec,
    /// Revocation feed reads, by issuer and result.
    pub revocation_reads: IntCounterVec,
    /// 1 while an issuer's feed is stale (unread for longer than `max_stale`).
    pub revocation_stale: IntGaugeVec,
    /// Serialises `publish_revocations` (the follower's tick and a scrape may both call it;
    /// `advance` reads then adds). Never taken on the request path.
    publishing: std::sync::Mutex<()>,
}

impl Metrics {
    /// Creates and registers the metrics.
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "portcullis_requests_total",
                "Requests by route and response status",
            ),
            &["route", "status"],
        )?;
        let buckets = exponential_buckets(0.0005, 2.0, 16)?;
        let upstream_latency = HistogramVec::new(
            HistogramOpts::new(
                "portcullis_upstream_latency_seconds",
                "Time to the upstream response header",
            )
            .buckets(buckets.clone()),
            &["upstream"],
        )?;
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "portcullis_request_duration_seconds",
                "Whole request duration",
            )
            .buckets(buckets),
            &["route"],
        )?;
        let active_requests = IntGauge::new("portcullis_active_requests", "Requests in flight")?;
        let reloads = IntCounterVec::new(
            Opts::new(
                "portcullis_config_reloads_total",
                "Config reloads by result",
            ),
            &["result"],
        )?;
        let backend_up = IntGaugeVec::new(
            Opts::new(
                "portcullis_upstream_backend_up",
                "1 when the backend passes its health check",
            ),
            &["upstream", "backend"],
        )?;
        let access_log_dropped = IntCounter::new(
            "portcullis_access_log_dropped_total",
            "Access log lines dropped",
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(upstream_latency.clone()))?;
        registry.register(Box::new(request_duration.clone()))?;
        registry.register(Box::new(active_requests.clone()))?;
        registry.register(Box::new(reloads.clone()))?;
        // Both series exist from the start, so a rate over them works before any reload.
        for result in ["ok", "error"] {
            reloads.with_label_values(&[result]);
        }
        registry.register(Box::new(backend_up.clone()))?;
        registry.register(Box::new(access_log_dropped.clone()))?;
        let auth = IntCounterVec::new(
            Opts::new("portcullis_auth_total", "Authentication outcomes by reason"),
            &["outcome", "reason"],
        )?;
        let token_cache = IntCounterVec::new(
            Opts::new(
                "portcullis_token_cache_total",
                "Verified-token cache lookups",
            ),
            &["result"],
        )?;
        let jwks_fetches = IntCounterVec::new(
            Opts::new(
                "portcullis_jwks_fetches_total",
                "JWKS fetches by issuer and result",
            ),
            &["issuer", "result"],
        )?;
        let jwks_age = IntGaugeVec::new(
            Opts::new(
                "portcullis_jwks_age_seconds",
                "Seconds since the last successful JWKS fetch (-1: never)",
            ),
            &["issuer"],
        )?;
        let jwks_keys = IntGaugeVec::new(
            Opts::new("portcullis_jwks_keys", "Keys held per issuer"),
            &["issuer"],
        )?;
        registry.register(Box::new(auth.clone()))?;
        registry.register(Box::new(token_cache.clone()))?;
        registry.register(Box::new(jwks_fetches.clone()))?;
        registry.register(Box::new(jwks_age.clone()))?;
        registry.register(Box::new(jwks_keys.clone()))?;
        let connections_open =
            IntGauge::new("portcullis_connections_open", "Client connections open")?;
        let connections_refused = IntCounter::new(
            "portcullis_connections_refused_total",
            "Connections closed at once because max_connections were open",
        )?;
        let requests_refused = IntCounterVec::new(
            Opts::new(
                "portcullis_requests_refused_total",
                "Requests refused by a request or connection limit, by reason",
            ),
            &["reason"],
        )?;
        let rate_limited = IntCounterVec::new(
            Opts::new(
                "portcullis_rate_limited_total",
                "Requests refused by a rate or concurrency limit",
            ),
            &["route", "limit"],
        )?;
        registry.register(Box::new(connections_open.clone()))?;
        registry.register(Box::new(connections_refused.clone()))?;
        registry.register(Box::new(requests_refused.clone()))?;
        registry.register(Box::new(rate_limited.clone()))?;
        let revocation_lag = IntGaugeVec::new(
            Opts::new(
                "portcullis_revocation_feed_lag_seconds",
                "Seconds since the issuer's revocation feed was last read (-1: never)",
            ),
            &["issuer"],
        )?;
        let revocation_records = IntGaugeVec::new(
            Opts::new(
                "portcullis_revocation_records",
                "Revocation records held, by kind",
            ),
            &["issuer", "kind"],
        )?;
        let revocation_events = IntCounterVec::new(
            Opts::new(
                "portcullis_revocation_events_total",
                "Revocation records received from the feed, by kind",
            ),
            &["issuer", "kind"],
        )?;
        let revocation_reads = IntCounterVec::new(
            Opts::new(
                "portcullis_revocation_feed_reads_total",
                "Revocation feed reads by result",
            ),
            &["issuer", "result"],
        )?;
        let revocation_stale = IntGaugeVec::new(
            Opts::new(
                "portcullis_revocation_feed_stale",
                "1 while the revocation feed is unread for longer than max_stale",
            ),
            &["issuer"],
        )?;
        registry.register(Box::new(revocation_lag.clone()))?;
        registry.register(Box::new(revocation_records.clone()))?;
        registry.register(Box::new(revocation_events.clone()))?;
        registry.register(Box::new(revocation_reads.clone()))?;
        registry.register(Box::new(revocation_stale.clone()))?;
        Ok(Metrics {
            publishing: std::sync::Mutex::new(()),
            revocation_lag,
            revocation_records,
            revocation_events,
            revocation_reads,
            revocation_stale,
            connections_open,
            connections_refused,
            requests_refused,
            rate_limited,
            registry,
            requests,
            upstream_latency,
            request_duration,
            active_requests,
            reloads,
            backend_up,
            access_log_dropped,
            auth,
            token_cache,
            jwks_fetches,
            jwks_age,
            jwks_keys,
        })
    }

    /// Publishes one issuer's revocation feed state (once a second by the follower, and at
    /// every scrape).
    pub fn publish_revocations(&self, r: &crate::revocation::Revocations) {
        let _one_at_a_time = self.publishing.lock().unwrap_or_else(|p| p.into_inner());
        let s = r.stats();
        let name = r.name();
        self.revocation_lag
            .with_label_values(&[name])
            .set(s.seconds_since_read.map_or(-1, |a| a as i64));
        self.revocation_stale
            .with_label_values(&[name])
            .set(i64::from(s.stale));
        for (kind, held, received) in [
            ("session", s.sessions, s.session_events),
            ("subject", s.subjects, s.subject_events),
        ] {
            self.revocation_records
                .with_label_values(&[name, kind])
                .set(held as i64);
            advance(
                &self.revocation_events.with_label_values(&[name, kind]),
                received,
            );
        }
        for (result, total) in [("ok", s.reads_ok), ("error", s.reads_failed)] {
            advance(
                &self.revocation_reads.with_label_values(&[name, result]),
                total,
            );
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metrics; an empty page is the fallback.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        buf
    }
}

/// Moves a counter up to a running total kept elsewhere (never backwards: a state that a
/// reload replaced starts again from zero).
pub(crate) fn advance(counter: &prometheus::IntCounter, total: u64) {
    if total > counter.get() {
        counter.inc_by(total - counter.get());
    }
}

impl crate::verify::VerifyObserver for Metrics {
    fn cache(&self, hit: bool) {
        self.token_cache
            .with_label_values(&[if hit { "hit" } else { "miss" }])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_typed_as_counters_and_reloads_exist_from_the_start() {
        let m = Metrics::new().unwrap();
        m.jwks_fetches.with_label_values(&["main", "ok"]).inc();
        let page = String::from_utf8(m.render()).unwrap();
        for name in [
            "portcullis_jwks_fetches_total",
            "portcullis_config_reloads_total",
            "portcullis_requests_total",
        ] {
            assert!(
                page.contains(&format!("# TYPE {name} counter")) || !page.contains(name),
                "{name} is not typed counter:\n{page}"
            );
        }
        assert!(page.contains("portcullis_jwks_fetches_total{issuer=\"main\",result=\"ok\"} 1"));
        assert!(page.contains("portcullis_config_reloads_total{result=\"ok\"} 0"));
        assert!(page.contains("portcullis_config_reloads_total{result=\"error\"} 0"));
    }
}
