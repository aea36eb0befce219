//! In-process JWT verification: strict parsing, key selection from the issuer's cached JWKS,
//! signature check, time and type rules, and a verified-token cache.
//!
//! The token's own header never decides how it is verified: the issuer is chosen by `iss`,
//! the algorithm must be on that issuer's allow-list and fit the key's type, and keys come
//! only from configuration (`jwk`, `jku`, `x5u`, `x5c` headers are never used).

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, OnceLock};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use http::HeaderValue;
use jsonwebtoken::Algorithm;
use serde_json::Value;

use crate::jwks::{IssuerKeys, KeyLookup};
use crate::revocation::{Revocations, TokenKeys};

mod cache;
mod error;
mod token;

use cache::CacheKey;
pub use cache::TokenCache;
pub use error::AuthError;
pub use token::{canonical_typ, claim_at, header_value, now_secs, VerifiedToken, IDENTITY_SLOTS};

use token::{
    b64, numeric_date, parse_alg, parse_object, string_list, typ_allowed, TextBuilder, LIST_AMR,
    LIST_AUDIENCES, LIST_ROLES, LIST_SCOPES, SLOT_CLAIMS,
};

/// A trusted issuer, compiled from config.
#[derive(Clone)]
pub struct Issuer {
    /// Config label.
    pub name: String,
    /// Exact `iss`.
    pub iss: String,
    /// Its keys (shared across reloads).
    pub keys: Arc<IssuerKeys>,
    /// Allowed algorithms.
    pub algorithms: Vec<Algorithm>,
    /// Default audiences (empty: no audience check unless the route asks).
    pub audiences: Vec<String>,
    /// Clock skew allowance in seconds.
    pub leeway: u64,
    /// Accepted `typ` values, lower case without `application/`; empty disables the check.
    pub typ: Vec<String>,
    /// Whether readiness waits for its keys (and its revocation snapshot).
    pub required: bool,
    /// Its revocation feed's state, when it has one: checked on every request.
    pub revocations: Option<Arc<Revocations>>,
}

/// Outcome counters the verifier reports (wired to Prometheus by the caller).
pub trait VerifyObserver: Send + Sync {
    /// A cache lookup hit or missed.
    fn cache(&self, hit: bool);
}

/// Verifies tokens for one config generation.
pub struct Verifier {
    issuers: HashMap<String, Arc<Issuer>>,
    max_token_size: usize,
    /// Salt for cache keys so a reload (new rules) never reuses older results.
    generation: u64,
    cache: Arc<TokenCache>,
}

impl Verifier {
    /// A verifier over `issuers`, caching in `cache` under `generation`.
    pub fn new(
        issuers: Vec<Arc<Issuer>>,
        max_token_size: usize,
        generation: u64,
        cache: Arc<TokenCache>,
    ) -> Self {
        Verifier {
            issuers: issuers.into_iter().map(|i| (i.iss.clone(), i)).collect(),
            max_token_size,
            generation,
            cache,
        }
    }

    /// The trusted issuers.
    pub fn issuers(&self) -> impl Iterator<Item = &Arc<Issuer>> {
        self.issuers.values()
    }

    /// Whether every required issuer has keys and, with a revocation feed, its snapshot.
    pub fn ready(&self) -> bool {
        self.issuers.values().all(|i| {
            !i.required
                || (i.keys.is_ready() && i.revocations.as_ref().is_none_or(|r| r.is_loaded()))
        })
    }

    /// Where `token` is cached. A keyed hash, not a cryptographic digest of every token on
    /// every request: a hit is compared with the token byte for byte
    /// ([`VerifiedToken::is_token`]), so a collision (by chance, or aimed by someone who
    /// cannot see the key anyway) costs a verification, never another token's identity.
    fn cache_key(&self, token: &str) -> CacheKey {
        static KEY: OnceLock<RandomState> = OnceLock::new();
        KEY.get_or_init(RandomState::new)
            .hash_one((self.generation, token))
    }

    /// Verifies a token, from the cache when possible.
    pub async fn verify(
        &self,
        token: &str,
        observer: &dyn VerifyObserver,
    ) -> Result<Arc<VerifiedToken>, AuthError> {
        // Size first: nothing about an oversized token is looked at, hashed or decoded.
        if token.len() > self.max_token_size {
            return Err(AuthError::TooLarge);
        }
        let key = self.cache_key(token);
        let now = now_secs();
        if let Some(hit) = self.cache.cache.get(&key).filter(|h| h.is_token(token)) {
            observer.cache(true);
            if hit.exp.saturating_add(hit.issuer.leeway) <= now {
                self.cache.cache.invalidate(&key);
                return Err(AuthError::Expired);
            }
            match hit.issuer.keys.current() {
                Some(set)
                    if set.generation == hit.key_generation
                        || set.contains_thumbprint(hit.key_thumbprint()) =>
                {
                    return not_revoked(hit, now)
                }
                Some(_) => {
                    self.cache.cache.invalidate(&key);
                    return Err(AuthError::KeyRevoked);
                }
                None => return Err(AuthError::KeysUnavailable),
            }
        }
        observer.cache(false);
        let verified = Arc::new(self.verify_uncached(token, now).await?);
        // Cached even when revoked: the verification holds, and the check runs on every hit.
        self.cache.cache.insert(key, verified.clone());
        not_revoked(verified, now)
    }

    async fn verify_uncached(&self, token: &str, now: u64) -> Result<VerifiedToken, AuthError> {
        let mut parts = token.split('.');
        let (Some(h64), Some(p64), Some(s64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Malformed);
        };
        if h64.is_empty() || p64.is_empty() || s64.is_empty() {
            return Err(AuthError::Malformed);
        }
        let header = parse_object(&b64(h64)?)?;
        let claims = parse_object(&b64(p64)?)?;
        // Decode the signature now so malformed encodings fail as such, not as bad signatures;
        // into a stack buffer (RSA-8192 at most is 1,024 bytes) so the miss path allocates
        // nothing for it.
        let mut sig = [0u8; 1024];
        if URL_SAFE_NO_PAD.decode_slice(s64, &mut sig).is_err() {
            b64(s64)?;
        }

        let alg_name = header
            .get("alg")
            .and_then(Value::as_str)
            .ok_or(AuthError::Malformed)?;
        let alg = parse_alg(alg_name).ok_or(AuthError::AlgorithmNotAllowed)?;
        if header.contains_key("crit") {
            // We implement no JWS extensions, so any critical one must be refused (RFC 7515 §4.1.11).
            return Err(AuthError::UnsupportedCrit);
        }
        let iss = match claims.get("iss") {
            Some(Value::String(s)) => s.as_str(),
            Some(_) => return Err(AuthError::InvalidClaim),
            None => return Err(AuthError::UntrustedIssuer),
        };
        let issuer = self
            .issuers
            .get(iss)
            .cloned()
            .ok_or(AuthError::UntrustedIssuer)?;
        if !issuer.algorithms.contains(&alg) {
            return Err(AuthError::AlgorithmNotAllowed);
        }
        if !issuer.typ.is_empty() {
            let typ = match header.get("typ") {
                Some(Value::String(t)) => t.as_str(),
                Some(_) => return Err(AuthError::Malformed),
                None => return Err(AuthError::WrongType),
            };
            if !typ_allowed(typ, &issuer.typ) {
                return Err(AuthError::WrongType);
            }
        }
        let kid = match header.get("kid") {
            None => None,
            Some(Value::String(k)) => Some(k.as_str()),
            Some(_) => return Err(AuthError::Malformed),
        };

        let mut set = issuer.keys.current().ok_or(AuthError::KeysUnavailable)?;
        let mut lookup = set.lookup(kid, alg);
        if let (KeyLookup::UnknownKid, Some(kid)) = (&lookup, kid) {
            // Key rotation: the issuer may have published a new key since our last fetch.
            set = issuer
                .keys
                .refetch_for_unknown_kid(kid)
                .await
                .ok_or(AuthError::KeysUnavailable)?;
            lookup = set.lookup(Some(kid), alg);
        }
        let key = match lookup {
            KeyLookup::Found(k) => k,
            KeyLookup::UnknownKid => return Err(AuthError::UnknownKid),
            KeyLookup::NoMatchingKey => return Err(AuthError::NoMatchingKey),
        };
        let signing_input_len = h64.len() + 1 + p64.len();
        let signing_input = &token.as_bytes()[..signing_input_len];
        match jsonwebtoken::crypto::verify(s64, signing_input, &key.key, alg) {
            Ok(true) => {}
            _ => return Err(AuthError::BadSignature),
        }

        // Registered claims, with strict types.
        let leeway = issuer.leeway;
        let exp = numeric_date(&claims, "exp")?.ok_or(AuthError::InvalidClaim)?;
        if exp.saturating_add(leeway) <= now {
            return Err(AuthError::Expired);
        }
        if let Some(nbf) = numeric_date(&claims, "nbf")? {
            if nbf > now.saturating_add(leeway) {
                return Err(AuthError::NotYetValid);
            }
        }
        let iat = numeric_date(&claims, "iat")?;
        if iat.is_some_and(|iat| iat > now.saturating_add(leeway)) {
            return Err(AuthError::IssuedInFuture);
        }
        let auth_time = numeric_date(&claims, "auth_time")?.or(iat);
        // The audience is checked per route (a route may replace the issuer's defaults), so
        // that a cached result never depends on which route asked.
        let audiences = string_list(claims.get("aud"), false)?;
        for name in ["sub", "sid", "jti"] {
            if claims.get(name).is_some_and(|v| !v.is_string()) {
                return Err(AuthError::InvalidClaim);
            }
        }
        let mut scopes = string_list(claims.get("scope"), true)?;
        scopes.extend(string_list(claims.get("scp"), true)?);
        let roles = string_list(claims.get("roles"), false)?;
        // The issuer's grammar: anything else could read as several roles at the upstream.
        if !roles
            .iter()
            .all(|r| portcullis_common::claims::valid_role(r))
        {
            return Err(AuthError::InvalidClaim);
        }
        let amr = string_list(claims.get("amr"), false)?;

        // Identity header values, in sending order, then the audiences: one buffer.
        let text = |name: &str| claims.get(name).and_then(Value::as_str);
        let revocation_keys = match &issuer.revocations {
            Some(_) => TokenKeys::of(text("sid"), text("sub")),
            None => TokenKeys::default(),
        };
        let mut t = TextBuilder::default();
        // Exactly the bytes appended below, so `into_boxed_slice` need not shrink (copy) it.
        let joined_len = |l: &[&str]| {
            l.iter()
                .map(|s| s.len() + 1)
                .sum::<usize>()
                .saturating_sub(1)
        };
        let opt_len = |name: &str| text(name).map_or(0, str::len);
        t.buf.reserve_exact(
            opt_len("sub")
                + iss.len()
                + joined_len(&scopes)
                + joined_len(&roles)
                + opt_len("sid")
                + opt_len("jti")
                + joined_len(&amr)
                + p64.len()
                + audiences.iter().map(|a| a.len()).sum::<usize>()
                + h64.len()
                + s64.len(),
        );
        // Exact: no growth on the way and no shrinking copy in `into_boxed_slice`.
        t.items
            .reserve_exact(scopes.len() + roles.len() + amr.len() + audiences.len());
        if let Some(sub) = text("sub") {
            t.value(0, sub)?;
        }
        t.value(1, iss)?;
        t.joined(2, LIST_SCOPES, &scopes, " ")?;
        t.joined(3, LIST_ROLES, &roles, ",")?;
        if let Some(sid) = text("sid") {
            t.value(4, sid)?;
        }
        if let Some(jti) = text("jti") {
            t.value(5, jti)?;
        }
        t.joined(6, LIST_AMR, &amr, ",")?;
        t.value(SLOT_CLAIMS, p64)?;
        t.list(LIST_AUDIENCES, &audiences)?;
        // The token's other two parts, so a cache hit can be compared with it in full (the
        // payload is the claims value above).
        let head = t.raw(h64)?;
        let signature = t.raw(s64)?;

        let TextBuilder {
            buf,
            values,
            items,
            list_ends,
        } = t;
        // Exact size: cached for the token's lifetime, spare capacity would be waste.
        let text = Bytes::from(buf.into_boxed_slice());
        let mut identity: [Option<HeaderValue>; 8] = Default::default();
        for (slot, span) in identity.iter_mut().zip(values) {
            if let Some((a, b)) = span {
                // Shares `text`; the bytes were checked by `TextBuilder::push`.
                *slot = Some(
                    HeaderValue::from_maybe_shared(text.slice(a as usize..b as usize))
                        .map_err(|_| AuthError::InvalidClaim)?,
                );
            }
        }

        Ok(VerifiedToken {
            issuer,
            exp,
            auth_time,
            iat,
            revocation_keys,
            key_generation: set.generation,
            key,
            identity,
            text,
            items: items.into_boxed_slice(),
            list_ends,
            head,
            signature,
        })
    }
}

/// The token unless its issuer's revocation feed revokes it.
#[inline]
fn not_revoked(t: Arc<VerifiedToken>, now: u64) -> Result<Arc<VerifiedToken>, AuthError> {
    if let Some(r) = &t.issuer.revocations {
        r.check(&t.revocation_keys, t.iat, now)?;
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::cache::ENTRY_OVERHEAD;
    use super::*;

    /// An HS256 issuer and a signer for its tokens (unit tests need no key files).
    fn hs_fixture() -> (Arc<Issuer>, impl Fn(&Value) -> String) {
        use crate::jwks::{hmac_key, KeySource, RefreshPolicy};
        use hmac::{Hmac, Mac};
        use sha2::Sha256;
        let secret = b"unit-test-secret-unit-test-secret".to_vec();
        let key = hmac_key(&secret, Some("k1")).expect("hmac key");
        let issuer = Arc::new(Issuer {
            name: "main".into(),
            iss: "https://iss.test".into(),
            keys: IssuerKeys::new(
                "main".into(),
                KeySource::Static(vec![key]),
                RefreshPolicy::default(),
            ),
            algorithms: vec![Algorithm::HS256],
            audiences: Vec::new(),
            leeway: 30,
            typ: Vec::new(),
            required: true,
            revocations: None,
        });
        let sign = move |claims: &Value| {
            let h64 = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","kid":"k1"}"#);
            let p64 = URL_SAFE_NO_PAD.encode(claims.to_string());
            let input = format!("{h64}.{p64}");
            let mut mac = Hmac::<Sha256>::new_from_slice(&secret).expect("hmac");
            mac.update(input.as_bytes());
            let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
            format!("{input}.{sig}")
        };
        (issuer, sign)
    }

    struct Quiet;
    impl VerifyObserver for Quiet {
        fn cache(&self, _hit: bool) {}
    }

    #[test]
    fn compact_token_keeps_every_fact() {
        let (issuer, sign) = hs_fixture();
        let verifier = Verifier::new(vec![issuer], 8192, 1, Arc::new(TokenCache::new(16)));
        let claims = serde_json::json!({
            "iss": "https://iss.test", "sub": "user-1", "aud": ["demo", "d\u{e9}mo"],
            "exp": now_secs() + 600, "iat": now_secs() - 5, "sid": "s-1", "jti": "j-1",
            "scope": "read  write", "scp": ["admin"], "roles": ["a", "b"], "amr": ["pwd", "otp"],
            "app_metadata": {"plan": "pro"}
        });
        let token = sign(&claims);
        let t = futures::executor::block_on(verifier.verify(&token, &Quiet)).expect("valid");
        assert_eq!(t.subject(), Some("user-1"));
        assert_eq!(t.audiences().collect::<Vec<_>>(), ["demo", "d\u{e9}mo"]);
        assert_eq!(t.scopes().collect::<Vec<_>>(), ["read", "write", "admin"]);
        assert_eq!(t.roles().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(t.amr().collect::<Vec<_>>(), ["pwd", "otp"]);
        assert_eq!(t.auth_time, claims["iat"].as_u64());
        let identity: Vec<(&str, &str)> = t
            .identity()
            .map(|(slot, v)| (IDENTITY_SLOTS[slot], v.to_str().unwrap()))
            .collect();
        let p64 = token.split('.').nth(1).unwrap();
        assert_eq!(
            identity,
            [
                ("subject", "user-1"),
                ("issuer", "https://iss.test"),
                ("scopes", "read write admin"),
                ("roles", "a,b"),
                ("session", "s-1"),
                ("token-id", "j-1"),
                ("method", "pwd,otp"),
                ("claims", p64),
            ]
        );
        let parsed = t.claims().expect("claims parse again");
        assert_eq!(Value::Object(parsed.clone()), claims);
        let path = ["app_metadata".to_string(), "plan".to_string()];
        assert_eq!(claim_at(&parsed, &path), Some(&Value::from("pro")));
        // A role outside the shared grammar (common::claims) is refused: joined with commas
        // in X-Auth-Roles, "b,admin" would read as two roles at the upstream.
        for role in ["b,admin", "a b", "", "caf\u{e9}"] {
            let mut bad = claims.clone();
            bad["roles"] = serde_json::json!(["a", role]);
            assert_eq!(
                futures::executor::block_on(verifier.verify(&sign(&bad), &Quiet)).err(),
                Some(AuthError::InvalidClaim),
                "{role:?}"
            );
        }
        // Non-ASCII text cannot become a header value: refused, as before.
        let mut bad = claims.clone();
        bad["sub"] = Value::from("us\u{e9}r");
        assert_eq!(
            futures::executor::block_on(verifier.verify(&sign(&bad), &Quiet)).err(),
            Some(AuthError::InvalidClaim)
        );
    }

    /// The cache key is a fast keyed hash; what makes a hit safe is the full comparison. Plant
    /// token A's result under token B's key (a collision): B must get its own identity.
    #[test]
    fn a_cache_key_collision_never_answers_for_another_token() {
        let (issuer, sign) = hs_fixture();
        let verifier = Verifier::new(vec![issuer], 8192, 1, Arc::new(TokenCache::new(16)));
        let claims = |sub: &str| serde_json::json!({"iss": "https://iss.test", "sub": sub, "exp": now_secs() + 600});
        let (a, b) = (sign(&claims("alice")), sign(&claims("bob")));
        let verified_a = futures::executor::block_on(verifier.verify(&a, &Quiet)).expect("a");
        assert!(verified_a.is_token(&a));
        // Every part of the token is compared, and its length.
        let parts: Vec<&str> = a.split('.').collect();
        for other in [
            b.clone(),
            format!("{}x.{}.{}", parts[0], parts[1], parts[2]),
            format!("{}.{}x.{}", parts[0], parts[1], parts[2]),
            format!("{}.{}.{}x", parts[0], parts[1], parts[2]),
            format!("{}.{}", parts[0], parts[1]),
            String::new(),
        ] {
            assert!(!verified_a.is_token(&other), "{other}");
        }
        verifier
            .cache
            .cache
            .insert(verifier.cache_key(&b), verified_a.clone());
        let verified_b = futures::executor::block_on(verifier.verify(&b, &Quiet)).expect("b");
        assert_eq!(verified_b.subject(), Some("bob"));
    }

    #[test]
    fn cache_is_bounded_by_entries_and_bytes() {
        let (issuer, sign) = hs_fixture();
        let fill = |cache: Arc<TokenCache>| {
            let verifier = Verifier::new(vec![issuer.clone()], 8192, 1, cache.clone());
            let mut weight = 0;
            for i in 0..200 {
                let claims = serde_json::json!({
                    "iss": "https://iss.test", "sub": format!("user-{i}"),
                    "exp": now_secs() + 600, "jti": format!("{i:0>40}")
                });
                let t = futures::executor::block_on(verifier.verify(&sign(&claims), &Quiet))
                    .expect("valid");
                weight = t.approx_bytes() + ENTRY_OVERHEAD;
                cache.run_pending_tasks();
            }
            weight as u64
        };
        let by_entries = Arc::new(TokenCache::with_limits(10, Some(1 << 30)));
        fill(by_entries.clone());
        assert!(by_entries.len() <= 10, "{} entries", by_entries.len());
        assert!(by_entries.len() >= 5, "{} entries", by_entries.len());

        // Room for about 8 of these tokens although 1,000 entries are allowed.
        let probe = Arc::new(TokenCache::with_limits(1000, Some(1 << 30)));
        let weight = fill(probe.clone());
        assert!(
            probe.len() >= 150,
            "no eviction without pressure: {}",
            probe.len()
        );
        let by_bytes = Arc::new(TokenCache::with_limits(1000, Some(8 * weight)));
        fill(by_bytes.clone());
        assert!(by_bytes.len() <= 8, "{} entries", by_bytes.len());
        assert!(by_bytes.weighted_size() <= 8 * weight);
        assert!(by_bytes.len() >= 2, "{} entries", by_bytes.len());
    }
}
