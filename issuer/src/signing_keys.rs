//! Signing-key lifecycle: `next → active → retired → removed`, persisted in the database so
//! every replica signs with the same key and keys survive restarts.
//!
//! A new key is published (state `next`) for `publish_lead` before it signs, so gateways have
//! fetched it by then; a retired key stays published until every token it signed has expired.

use portcullis_common::time::unix_now as now;
use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::DecodingKey;
use sha2::{Digest, Sha256};

use crate::crypto::jwt::Signer;
use crate::crypto::keypair::{self as material, KeyAlg};
use crate::store::{SigningKey, Store};

/// Why key handling failed.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Database error.
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    /// Crypto error.
    #[error("crypto: {0}")]
    Crypto(#[from] crate::crypto::CryptoError),
    /// Nothing can sign.
    #[error("no active signing key")]
    NoActiveKey,
}

/// What the service signs with and publishes, rebuilt whenever keys change.
pub struct KeyView {
    /// Signs new tokens.
    pub signer: Signer,
    /// The JWKS document served to gateways.
    pub jwks: String,
    /// Strong ETag of `jwks`.
    pub etag: String,
    /// Every key, for admin listings.
    pub keys: Vec<SigningKey>,
    /// Each key's public half, decoded once per key set, by kid: verifying this issuer's own
    /// tokens (introspection, `/v1/users/me`) then costs no JWK parsing.
    pub verifiers: HashMap<String, DecodingKey>,
}

/// Live keys shared by handlers.
pub struct KeyRing {
    view: ArcSwap<KeyView>,
    kek: Option<Vec<u8>>,
    alg: KeyAlg,
    publish_lead: i64,
    retire_after: i64,
}

impl KeyRing {
    /// Loads keys, creating the first one on first start; `retire_after` is how long a
    /// retired key stays published (the access-token lifetime plus margin).
    pub async fn load(
        store: &Store,
        alg: KeyAlg,
        kek: Option<Vec<u8>>,
        publish_lead: i64,
        retire_after: i64,
    ) -> Result<Arc<KeyRing>, KeyError> {
        if store.list_signing_keys().await?.is_empty() {
            // First start: no token exists yet, so the first key may sign at once.
            let k = material::generate(alg)?;
            let t = now();
            store
                .insert_signing_key(&SigningKey {
                    kid: k.kid.clone(),
                    alg: alg.to_string(),
                    private_key: material::seal(&k.private_pkcs8_der, kek.as_deref())?,
                    public_jwk: k.public_jwk.to_string(),
                    state: "active".into(),
                    created_at: t,
                    activates_at: t,
                    retired_at: None,
                    remove_after: None,
                })
                .await?;
        }
        let view = build_view(store, kek.as_deref()).await?;
        Ok(Arc::new(KeyRing {
            view: ArcSwap::from_pointee(view),
            kek,
            alg,
            publish_lead,
            retire_after,
        }))
    }

    /// The current view.
    pub fn view(&self) -> Arc<KeyView> {
        self.view.load_full()
    }

    /// Publishes a new key that starts signing after the lead time.
    pub async fn rotate(&self, store: &Store) -> Result<String, KeyError> {
        let k = material::generate(self.alg)?;
        let t = now();
        store
            .insert_signing_key(&SigningKey {
                kid: k.kid.clone(),
                alg: self.alg.to_string(),
                private_key: material::seal(&k.private_pkcs8_der, self.kek.as_deref())?,
                public_jwk: k.public_jwk.to_string(),
                state: "next".into(),
                created_at: t,
                activates_at: t + self.publish_lead,
                retired_at: None,
                remove_after: None,
            })
            .await?;
        self.reload(store).await?;
        Ok(k.kid)
    }

    /// Advances the lifecycle (idempotent; every replica may run it) and reloads the view.
    pub async fn tick(&self, store: &Store) -> Result<(), KeyError> {
        let t = now();
        let keys = store.list_signing_keys().await?;
        let due: Vec<&SigningKey> = keys
            .iter()
            .filter(|k| k.state == "next" && k.activates_at <= t)
            .collect();
        if let Some(newest) = due.iter().max_by_key(|k| k.activates_at) {
            for k in keys.iter().filter(|k| k.state == "active") {
                store
                    .update_signing_key_state(
                        &k.kid,
                        "retired",
                        Some(t),
                        Some(t + self.retire_after),
                    )
                    .await?;
            }
            for k in &due {
                let state = if k.kid == newest.kid {
                    "active"
                } else {
                    "retired"
                };
                let (ra, rm) = if state == "retired" {
                    (Some(t), Some(t + self.retire_after))
                } else {
                    (None, None)
                };
                store
                    .update_signing_key_state(&k.kid, state, ra, rm)
                    .await?;
            }
        }
        for k in keys
            .iter()
            .filter(|k| k.state == "retired" && k.remove_after.is_some_and(|r| r <= t))
        {
            store.delete_signing_key(&k.kid).await?;
        }
        self.reload(store).await
    }

    async fn reload(&self, store: &Store) -> Result<(), KeyError> {
        let view = build_view(store, self.kek.as_deref()).await?;
        self.view.store(Arc::new(view));
        Ok(())
    }
}

/// Every stored signing key, as the database has it now (the admin API and the CLI list these:
/// another replica may have changed them since this one's view was built).
pub async fn list(store: &Store) -> Result<Vec<SigningKey>, crate::store::StoreError> {
    store.list_signing_keys().await
}

async fn build_view(store: &Store, kek: Option<&[u8]>) -> Result<KeyView, KeyError> {
    let keys = store.list_signing_keys().await?;
    let active = keys
        .iter()
        .filter(|k| k.state == "active")
        .max_by_key(|k| k.activates_at)
        .ok_or(KeyError::NoActiveKey)?;
    let alg: KeyAlg = active.alg.parse().map_err(|_| KeyError::NoActiveKey)?;
    let der = material::open(&active.private_key, kek)?;
    let signer = Signer::new(&material::from_pkcs8(alg, &der)?)?;
    let published: Vec<serde_json::Value> = keys
        .iter()
        .filter_map(|k| serde_json::from_str(&k.public_jwk).ok())
        .collect();
    let jwks = material::jwks(&published).to_string();
    let etag = format!("\"{}\"", hex(&Sha256::digest(jwks.as_bytes())[..16]));
    let verifiers = keys
        .iter()
        .filter_map(|k| {
            let jwk: Jwk = serde_json::from_str(&k.public_jwk).ok()?;
            Some((k.kid.clone(), DecodingKey::from_jwk(&jwk).ok()?))
        })
        .collect();
    Ok(KeyView {
        signer,
        jwks,
        etag,
        keys,
        verifiers,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
