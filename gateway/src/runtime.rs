//! A runtime generation: the compiled config plus the live state built from it and carried
//! across reloads (issuer key caches, the verifier and its token cache, rate-limit tables,
//! backend health). [`crate::reload`] swaps whole generations.

use std::collections::HashMap;
use std::ops::Deref;
use std::path::Path;
use std::sync::Arc;

use crate::config::{self, ConfigError, GatewayConfig, IssuerSpec};
use crate::jwks::IssuerKeys;
use crate::limits::LimitState;
use crate::revocation::Revocations;
use crate::upstream::StateCarry;
use crate::verify::{Issuer, TokenCache, Verifier};

/// The config in force and the live state that goes with it. Derefs to the config, so
/// `generation.router` reads the compiled routes.
pub struct Generation {
    /// The compiled config.
    pub config: GatewayConfig,
    /// Trusted issuers and the verified-token cache.
    pub verifier: Verifier,
    /// Remote key caches by source identity (handed to the next generation on reload).
    pub issuer_keys: HashMap<String, Arc<IssuerKeys>>,
    /// Revocation states by issuer name (handed to the next generation on reload).
    pub revocations: HashMap<String, Arc<Revocations>>,
    /// The token cache (shared by every generation).
    pub token_cache: Arc<TokenCache>,
    /// Increments on every reload; salts the token cache.
    pub generation: u64,
    /// Rate-limit and concurrency tables (shared by every generation).
    pub limit_state: Arc<LimitState>,
}

impl Deref for Generation {
    type Target = GatewayConfig;

    #[inline]
    fn deref(&self) -> &GatewayConfig {
        &self.config
    }
}

/// What a reload hands over from the running generation: backend health, issuer key caches,
/// the verified-token cache and the rate-limit tables.
#[derive(Default)]
pub struct Carry {
    /// Backend health.
    pub backends: StateCarry,
    /// Remote issuer key caches.
    pub issuer_keys: HashMap<String, Arc<IssuerKeys>>,
    /// Revocation states by issuer name.
    pub revocations: HashMap<String, Arc<Revocations>>,
    /// The running token cache.
    pub token_cache: Option<Arc<TokenCache>>,
    /// The running generation.
    pub generation: u64,
    /// The running rate-limit tables.
    pub limit_state: Option<Arc<LimitState>>,
}

impl Carry {
    /// Everything worth keeping from `running`.
    pub fn from_generation(running: &Generation) -> Carry {
        Carry {
            backends: StateCarry::from_groups(running.upstreams.values()),
            issuer_keys: running.issuer_keys.clone(),
            revocations: running.revocations.clone(),
            token_cache: Some(running.token_cache.clone()),
            generation: running.generation,
            limit_state: Some(running.limit_state.clone()),
        }
    }
}

/// Reads and compiles the config at `path`, then builds a generation on what `carry` hands
/// over.
pub fn load(path: &Path, carry: &Carry) -> Result<Generation, ConfigError> {
    let config = config::load(path, &carry.backends)?;
    Ok(Generation::build(config, carry))
}

impl Generation {
    /// Builds the live state for `config`, reusing what `carry` hands over.
    pub fn build(config: GatewayConfig, carry: &Carry) -> Generation {
        let (issuers, issuer_keys, revocations) =
            issuers(&config.issuers, &carry.issuer_keys, &carry.revocations);
        let generation = carry.generation + 1;
        let token_cache = carry.token_cache.clone().unwrap_or_else(|| {
            Arc::new(TokenCache::with_limits(
                config.auth.cache_entries,
                Some(config.auth.cache_max_bytes),
            ))
        });
        let verifier = Verifier::new(
            issuers,
            config.auth.max_token_size,
            generation,
            token_cache.clone(),
        );
        // The tables keep their size for the life of the process; a reload keeps their state.
        let limit_state = carry
            .limit_state
            .clone()
            .unwrap_or_else(|| Arc::new(LimitState::new(config.limits.rate_limit_keys)));
        Generation {
            config,
            verifier,
            issuer_keys,
            revocations,
            token_cache,
            generation,
            limit_state,
        }
    }
}

/// The issuers' live state built and carried across reloads.
type LiveIssuers = (
    Vec<Arc<Issuer>>,
    HashMap<String, Arc<IssuerKeys>>,
    HashMap<String, Arc<Revocations>>,
);

/// The issuers with their live keys and revocations: a remote key source whose identity is
/// unchanged keeps its running key cache, an unchanged feed keeps its running state (a changed
/// one starts from what the old one held); returns both by identity for the next reload.
fn issuers(
    specs: &[IssuerSpec],
    running: &HashMap<String, Arc<IssuerKeys>>,
    running_feeds: &HashMap<String, Arc<Revocations>>,
) -> LiveIssuers {
    let mut out = Vec::with_capacity(specs.len());
    let mut remote = HashMap::new();
    let mut feeds = HashMap::new();
    for spec in specs {
        let keys = match &spec.source_id {
            Some(id) => {
                let keys = running.get(id).cloned().unwrap_or_else(|| {
                    IssuerKeys::new(spec.name.clone(), spec.source.clone(), spec.refresh.clone())
                });
                remote.insert(id.clone(), keys.clone());
                keys
            }
            None => IssuerKeys::new(spec.name.clone(), spec.source.clone(), spec.refresh.clone()),
        };
        let revocations = spec.revocation.as_ref().map(|feed| {
            // Keyed by name and `iss`: another issuer's revocations must never carry over.
            let id = format!("{}\u{0}{}", spec.name, spec.iss);
            let state = match running_feeds.get(&id) {
                Some(r) if r.spec() == feed => r.clone(),
                Some(r) => Revocations::succeeding(spec.name.clone(), feed.clone(), r),
                None => Revocations::new(spec.name.clone(), feed.clone()),
            };
            feeds.insert(id, state.clone());
            state
        });
        out.push(Arc::new(Issuer {
            name: spec.name.clone(),
            iss: spec.iss.clone(),
            keys,
            algorithms: spec.algorithms.clone(),
            audiences: spec.audiences.clone(),
            leeway: spec.leeway,
            typ: spec.typ.clone(),
            required: spec.required,
            revocations,
        }));
    }
    (out, remote, feeds)
}
