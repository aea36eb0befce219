//! Store tests. Every scenario runs on three backends: in-memory SQLite, a SQLite file (a
//! real multi-connection pool with WAL), and a throwaway PostgreSQL (the test kit's harness:
//! one cluster per test process, a fresh database per test; skipped, with a note, when
//! PostgreSQL is not installed).

mod cancel;
mod group;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use portcullis_testkit::postgres::Postgres;
use serde_json::json;

use super::*;

const NOW: i64 = 1_700_000_000;

async fn memory_store() -> Store {
    Store::connect("sqlite::memory:").await.expect("connect")
}

/// A store on a fresh PostgreSQL database, or `None` without PostgreSQL.
async fn postgres_store() -> Option<Store> {
    let url = Postgres::database_url_async().await?;
    Some(Store::connect(&url).await.expect("connect store"))
}

macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite_memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(super::memory_store().await).await;
                }
            )*
        }
        mod sqlite_file {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let dir = tempfile::tempdir().expect("tempdir");
                    let url = format!("sqlite://{}/db/issuer.db", dir.path().display());
                    let store = crate::store::Store::connect(&url).await.expect("connect");
                    super::$name(store).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    match super::postgres_store().await {
                        Some(store) => super::$name(store).await,
                        None => println!("SKIPPED: no PostgreSQL"),
                    }
                }
            )*
        }
    };
}

backend_tests!(
    users_crud,
    user_conflicts,
    delete_user_cascades,
    api_keys,
    sessions,
    rotate_sequence,
    rotate_expiry,
    rotate_concurrent,
    signing_keys,
    key_lock_serialises_rotation,
    limits,
    limits_straddling_a_boundary,
    limits_sql_matches_peek,
    limits_concurrent,
    purge,
    purge_expired,
    migrations_idempotent,
);

// After the macro, which it uses.
mod revocations;

fn new_user(email: &str, username: &str, phone: &str) -> NewUser {
    NewUser {
        email: Some(email.into()),
        username: Some(username.into()),
        phone: Some(phone.into()),
        password_hash: Some("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into()),
        roles: vec!["user".into()],
        app_metadata: json!({"plan": "free"}),
        user_metadata: json!({"name": "Alice"}),
        anonymous: false,
    }
}

fn new_session(id: &str, user_id: &str, now: i64) -> Session {
    Session {
        id: id.into(),
        user_id: user_id.into(),
        amr: vec!["pwd".into()],
        scopes: vec!["read".into()],
        roles: vec!["user".into()],
        created_at: now,
        last_used_at: now,
        expires_at: now + 30 * 86_400,
        revoked_at: None,
        revoked_reason: None,
        // Round-trips through the column migration 0005 added.
        client_id: Some("client-of-the-test".into()),
    }
}

fn api_key(id: &str, prefix: &str, subject: &str, created_at: i64) -> ApiKey {
    ApiKey {
        id: id.into(),
        prefix: prefix.into(),
        hash: format!("hmac-of-{id}"),
        subject: subject.into(),
        name: format!("key {id}"),
        scopes: vec!["read".into(), "write".into()],
        roles: vec!["service".into()],
        permissions: vec!["introspect".into()],
        expires_at: Some(created_at + 3600),
        revoked_at: None,
        last_used_at: None,
        created_at,
    }
}

fn signing_key(kid: &str, state: &str, created_at: i64) -> SigningKey {
    SigningKey {
        kid: kid.into(),
        alg: "ES256".into(),
        private_key: format!("secret-{kid}"),
        public_jwk: format!(r#"{{"kty":"EC","kid":"{kid}"}}"#),
        state: state.into(),
        created_at,
        activates_at: created_at + 600,
        retired_at: None,
        remove_after: None,
    }
}

fn conflict_on(result: Result<impl std::fmt::Debug, StoreError>) -> String {
    match result {
        Err(StoreError::Conflict(field)) => field,
        other => panic!("expected a conflict, got {other:?}"),
    }
}

async fn users_crud(store: Store) {
    let created = store
        .create_user(&new_user("Alice@Example.COM", "alice", "+14155550100"))
        .await
        .expect("create");
    assert_eq!(created.id.len(), 32);
    assert!(created.id.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(created.email.as_deref(), Some("alice@example.com"));
    assert!(!created.disabled && !created.anonymous);
    assert_eq!(created.email_confirmed_at, None);

    let got = store.get_user(&created.id).await.expect("get");
    assert_eq!(got, created);
    for email in [
        "alice@example.com",
        "ALICE@EXAMPLE.COM",
        "Alice@example.Com",
    ] {
        let found = store.find_user_by_email(email).await.expect("find");
        assert_eq!(
            found.as_ref().map(|u| u.id.as_str()),
            Some(created.id.as_str())
        );
    }
    assert_eq!(
        store.find_user_by_username("alice").await.expect("find"),
        Some(created.clone())
    );
    assert_eq!(
        store.find_user_by_username("Alice").await.expect("find"),
        None
    );
    assert_eq!(
        store
            .find_user_by_phone("+14155550100")
            .await
            .expect("find"),
        Some(created.clone())
    );
    assert_eq!(
        store
            .find_user_by_email("bob@example.com")
            .await
            .expect("find"),
        None
    );
    assert!(matches!(
        store.get_user("nope").await,
        Err(StoreError::NotFound)
    ));
    assert!(
        !format!("{created:?}").contains("argon2"),
        "Debug shows the hash"
    );

    // Anonymous users have no unique values; NULLs never clash.
    let anon = NewUser {
        anonymous: true,
        app_metadata: serde_json::Value::Null,
        ..NewUser::default()
    };
    let a1 = store.create_user(&anon).await.expect("anon 1");
    let a2 = store.create_user(&anon).await.expect("anon 2");
    assert_ne!(a1.id, a2.id);
    assert!(a1.anonymous);
    assert_eq!(a1.app_metadata, json!({}));
    assert_eq!(
        store.get_user(&a1.id).await.expect("get").app_metadata,
        json!({})
    );

    let mut changed = created.clone();
    changed.email = Some("New@Example.com".into());
    changed.username = Some("alice2".into());
    changed.phone = None;
    changed.password_hash = None;
    changed.roles = vec!["admin".into(), "user".into()];
    changed.app_metadata = json!({"plan": "pro", "n": [1, 2]});
    changed.user_metadata = json!({"name": "Alice B."});
    changed.anonymous = true;
    changed.disabled = true;
    changed.email_confirmed_at = Some(NOW);
    changed.created_at = 1; // never written
    let saved = store.update_user(&changed).await.expect("update");
    assert_eq!(saved.email.as_deref(), Some("new@example.com"));
    assert!(saved.updated_at >= created.updated_at);
    let got = store.get_user(&created.id).await.expect("get");
    assert_eq!(got.email.as_deref(), Some("new@example.com"));
    assert_eq!(got.username.as_deref(), Some("alice2"));
    assert_eq!(got.phone, None);
    assert_eq!(got.password_hash, None);
    assert_eq!(got.roles, vec!["admin".to_string(), "user".to_string()]);
    assert_eq!(got.app_metadata, json!({"plan": "pro", "n": [1, 2]}));
    assert_eq!(got.user_metadata, json!({"name": "Alice B."}));
    assert!(got.anonymous && got.disabled);
    assert_eq!(got.email_confirmed_at, Some(NOW));
    assert_eq!(got.created_at, created.created_at);
    assert_eq!(got.updated_at, saved.updated_at);
    assert!(store
        .find_user_by_email("alice@example.com")
        .await
        .expect("find")
        .is_none());
    assert!(store
        .find_user_by_email("NEW@example.com")
        .await
        .expect("find")
        .is_some());

    let mut ghost = created.clone();
    ghost.id = "missing".into();
    assert!(matches!(
        store.update_user(&ghost).await,
        Err(StoreError::NotFound)
    ));

    let all = store.list_users(100, 0).await.expect("list");
    assert_eq!(all.len(), 3);
    let page1 = store.list_users(2, 0).await.expect("page 1");
    let page2 = store.list_users(2, 2).await.expect("page 2");
    assert_eq!(page1.len(), 2);
    assert_eq!(page2.len(), 1);
    let ids: HashSet<_> = page1.iter().chain(&page2).map(|u| u.id.clone()).collect();
    assert_eq!(ids.len(), 3);
    assert_eq!(
        page1
            .iter()
            .chain(&page2)
            .map(|u| &u.id)
            .collect::<Vec<_>>(),
        all.iter().map(|u| &u.id).collect::<Vec<_>>()
    );
    assert!(store
        .list_users(10, 10)
        .await
        .expect("empty page")
        .is_empty());
}

async fn user_conflicts(store: Store) {
    let alice = store
        .create_user(&new_user("alice@example.com", "alice", "+100"))
        .await
        .expect("create");
    let field = conflict_on(
        store
            .create_user(&new_user("ALICE@example.com", "other", "+200"))
            .await,
    );
    assert_eq!(field, "email");
    let field = conflict_on(
        store
            .create_user(&new_user("b@example.com", "alice", "+200"))
            .await,
    );
    assert_eq!(field, "username");
    let field = conflict_on(
        store
            .create_user(&new_user("b@example.com", "bob", "+100"))
            .await,
    );
    assert_eq!(field, "phone");

    let bob = store
        .create_user(&new_user("b@example.com", "bob", "+200"))
        .await
        .expect("bob");
    let mut clash = bob.clone();
    clash.email = Some("Alice@Example.com".into());
    assert_eq!(conflict_on(store.update_user(&clash).await), "email");
    // The failed update changed nothing.
    assert_eq!(store.get_user(&bob.id).await.expect("get"), bob);
    assert_eq!(store.get_user(&alice.id).await.expect("get"), alice);
}

async fn delete_user_cascades(store: Store) {
    let alice = store
        .create_user(&new_user("a@example.com", "alice", "+100"))
        .await
        .expect("alice");
    let bob = store
        .create_user(&new_user("b@example.com", "bob", "+200"))
        .await
        .expect("bob");
    store
        .create_session(&new_session("s-a1", &alice.id, NOW), "h-a1")
        .await
        .expect("session");
    store
        .create_session(&new_session("s-a2", &alice.id, NOW), "h-a2")
        .await
        .expect("session");
    store
        .create_session(&new_session("s-b", &bob.id, NOW), "h-b")
        .await
        .expect("session");
    store
        .create_api_key(&api_key("k-a", "pa", &alice.id, NOW))
        .await
        .expect("key");
    store
        .create_api_key(&api_key("k-b", "pb", &bob.id, NOW))
        .await
        .expect("key");

    store.delete_user(&alice.id).await.expect("delete");
    assert!(matches!(
        store.get_user(&alice.id).await,
        Err(StoreError::NotFound)
    ));
    assert!(store
        .list_sessions(&alice.id)
        .await
        .expect("list")
        .is_empty());
    assert!(matches!(
        store.get_session("s-a1").await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(
        store.find_session_by_refresh("h-a1").await.expect("find"),
        None
    );
    assert_eq!(
        store
            .rotate_refresh("h-a2", "h-a2'", NOW, 10, 0)
            .await
            .expect("rotate"),
        RotateOutcome::Unknown
    );
    assert!(store
        .list_api_keys(Some(&alice.id))
        .await
        .expect("keys")
        .is_empty());
    assert_eq!(
        store.find_api_key_by_prefix("pa").await.expect("find"),
        None
    );
    // The other user is untouched.
    assert_eq!(store.get_user(&bob.id).await.expect("bob"), bob);
    assert_eq!(store.list_sessions(&bob.id).await.expect("list").len(), 1);
    assert!(store
        .find_session_by_refresh("h-b")
        .await
        .expect("find")
        .is_some());
    assert_eq!(
        store
            .list_api_keys(Some(&bob.id))
            .await
            .expect("keys")
            .len(),
        1
    );

    assert!(matches!(
        store.delete_user(&alice.id).await,
        Err(StoreError::NotFound)
    ));
}

async fn api_keys(store: Store) {
    let k1 = api_key("k1", "pk_one", "svc-billing", NOW);
    let k2 = api_key("k2", "pk_two", "svc-billing", NOW + 1);
    let k3 = api_key("k3", "pk_three", "svc-mail", NOW + 2);
    for k in [&k1, &k2, &k3] {
        store.create_api_key(k).await.expect("create");
    }
    assert_eq!(
        conflict_on(
            store
                .create_api_key(&api_key("k4", "pk_one", "x", NOW))
                .await
        ),
        "prefix"
    );
    assert_eq!(
        conflict_on(
            store
                .create_api_key(&api_key("k1", "pk_new", "x", NOW))
                .await
        ),
        "id"
    );

    assert_eq!(
        store.find_api_key_by_prefix("pk_one").await.expect("find"),
        Some(k1.clone())
    );
    assert_eq!(
        store.find_api_key_by_prefix("pk_none").await.expect("find"),
        None
    );
    assert_eq!(
        store.list_api_keys(None).await.expect("list"),
        vec![k1.clone(), k2.clone(), k3.clone()]
    );
    assert_eq!(
        store
            .list_api_keys(Some("svc-billing"))
            .await
            .expect("list"),
        vec![k1.clone(), k2.clone()]
    );
    assert!(store
        .list_api_keys(Some("nobody"))
        .await
        .expect("list")
        .is_empty());

    store.touch_api_key("k1", NOW + 10).await.expect("touch");
    store.revoke_api_key("k1", NOW + 20).await.expect("revoke");
    store
        .revoke_api_key("k1", NOW + 30)
        .await
        .expect("revoke again");
    let got = store
        .find_api_key_by_prefix("pk_one")
        .await
        .expect("find")
        .expect("present");
    assert_eq!(got.last_used_at, Some(NOW + 10));
    assert_eq!(got.revoked_at, Some(NOW + 20), "first revocation kept");
    assert!(matches!(
        store.revoke_api_key("missing", NOW).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.touch_api_key("missing", NOW).await,
        Err(StoreError::NotFound)
    ));
    assert!(
        !format!("{got:?}").contains("hmac-of"),
        "Debug shows the hash"
    );
}

async fn sessions(store: Store) {
    let s1 = new_session("s1", "u1", NOW);
    let s2 = new_session("s2", "u1", NOW + 1);
    let s3 = new_session("s3", "u2", NOW + 2);
    store.create_session(&s1, "h1").await.expect("create");
    store.create_session(&s2, "h2").await.expect("create");
    store.create_session(&s3, "h3").await.expect("create");

    assert_eq!(
        conflict_on(
            store
                .create_session(&new_session("s1", "u1", NOW), "h-new")
                .await
        ),
        "session"
    );
    // The session insert is rolled back with the clashing token insert.
    assert_eq!(
        conflict_on(
            store
                .create_session(&new_session("s4", "u1", NOW), "h1")
                .await
        ),
        "refresh_token"
    );
    assert!(matches!(
        store.get_session("s4").await,
        Err(StoreError::NotFound)
    ));

    assert_eq!(store.get_session("s1").await.expect("get"), s1);
    assert_eq!(
        store.list_sessions("u1").await.expect("list"),
        vec![s1.clone(), s2.clone()]
    );
    assert_eq!(
        store.find_session_by_refresh("h3").await.expect("find"),
        Some(s3.clone())
    );
    assert_eq!(
        store.find_session_by_refresh("nope").await.expect("find"),
        None
    );

    store
        .revoke_session("s1", NOW + 5, "logout")
        .await
        .expect("revoke");
    store
        .revoke_session("s1", NOW + 9, "admin")
        .await
        .expect("revoke again");
    let got = store.get_session("s1").await.expect("get");
    assert_eq!(got.revoked_at, Some(NOW + 5));
    assert_eq!(got.revoked_reason.as_deref(), Some("logout"));
    assert!(matches!(
        store.revoke_session("missing", NOW, "logout").await,
        Err(StoreError::NotFound)
    ));

    // Only s2 is still live for u1.
    assert_eq!(
        store
            .revoke_user_sessions("u1", NOW + 7, "password_changed")
            .await
            .expect("revoke"),
        1
    );
    let got = store.get_session("s2").await.expect("get");
    assert_eq!(got.revoked_reason.as_deref(), Some("password_changed"));
    assert_eq!(store.get_session("s3").await.expect("get").revoked_at, None);
    assert_eq!(
        store
            .rotate_refresh("h2", "h2'", NOW + 8, 10, 0)
            .await
            .expect("rotate"),
        RotateOutcome::SessionInactive
    );
}

async fn rotate_sequence(store: Store) {
    store
        .create_session(&new_session("s", "u", NOW), "t1")
        .await
        .expect("create");

    let out = store
        .rotate_refresh("t1", "t2", NOW + 10, 30, 0)
        .await
        .expect("rotate");
    let RotateOutcome::Rotated { session } = out else {
        panic!("expected Rotated, got {out:?}");
    };
    assert_eq!(session.id, "s");
    assert_eq!(session.last_used_at, NOW + 10);
    assert_eq!(
        store.get_session("s").await.expect("get").last_used_at,
        NOW + 10
    );

    let out = store
        .rotate_refresh("t2", "t3", NOW + 20, 30, 0)
        .await
        .expect("rotate");
    assert!(matches!(out, RotateOutcome::Rotated { .. }), "{out:?}");

    // t1 was rotated at NOW+10: 25 s later is within a 30 s grace, and the extra token works.
    let out = store
        .rotate_refresh("t1", "t1b", NOW + 35, 30, 0)
        .await
        .expect("rotate");
    assert!(matches!(out, RotateOutcome::WithinGrace { .. }), "{out:?}");
    let out = store
        .rotate_refresh("t1b", "t1c", NOW + 36, 30, 0)
        .await
        .expect("rotate");
    assert!(matches!(out, RotateOutcome::Rotated { .. }), "{out:?}");

    assert_eq!(
        store.find_refresh_token("t1").await.expect("find"),
        Some(RefreshToken {
            session_id: "s".into(),
            created_at: NOW,
            rotated_at: Some(NOW + 10),
        })
    );
    let t3 = store
        .find_refresh_token("t3")
        .await
        .expect("find")
        .expect("t3");
    assert_eq!((t3.created_at, t3.rotated_at), (NOW + 20, None));
    assert_eq!(store.find_refresh_token("never").await.expect("find"), None);

    // Unknown tokens change nothing.
    assert_eq!(
        store
            .rotate_refresh("never", "x", NOW + 37, 30, 0)
            .await
            .expect("rotate"),
        RotateOutcome::Unknown
    );

    // t2 was rotated at NOW+20: presenting it 31 s later is reuse and kills the session.
    let out = store
        .rotate_refresh("t2", "t2b", NOW + 51, 30, 0)
        .await
        .expect("rotate");
    assert_eq!(
        out,
        RotateOutcome::Reused {
            session_id: "s".into()
        }
    );
    let revoked = store.get_session("s").await.expect("get");
    assert_eq!(revoked.revoked_at, Some(NOW + 51));
    assert_eq!(revoked.revoked_reason.as_deref(), Some("refresh_reuse"));
    assert_eq!(
        store.find_session_by_refresh("t2b").await.expect("find"),
        None
    );
    // Every token of the session is dead now, current ones included.
    for token in ["t3", "t1c", "t2"] {
        assert_eq!(
            store
                .rotate_refresh(token, "y", NOW + 52, 30, 0)
                .await
                .expect("rotate"),
            RotateOutcome::SessionInactive,
            "{token}"
        );
    }
    // Introspection still finds the (revoked) session from any of its tokens.
    assert_eq!(
        store.find_session_by_refresh("t1").await.expect("find"),
        Some(revoked)
    );

    // Without grace, any second use is reuse.
    store
        .create_session(&new_session("g", "u", NOW), "g1")
        .await
        .expect("create");
    let out = store
        .rotate_refresh("g1", "g2", NOW, 0, 0)
        .await
        .expect("rotate");
    assert!(matches!(out, RotateOutcome::Rotated { .. }), "{out:?}");
    let out = store
        .rotate_refresh("g1", "g3", NOW, 0, 0)
        .await
        .expect("rotate");
    assert_eq!(
        out,
        RotateOutcome::Reused {
            session_id: "g".into()
        }
    );

    // A successor hash that already exists is a conflict and rotates nothing.
    store
        .create_session(&new_session("c", "u", NOW), "c1")
        .await
        .expect("create");
    assert_eq!(
        conflict_on(store.rotate_refresh("c1", "t3", NOW + 1, 30, 0).await),
        "refresh_token"
    );
    let out = store
        .rotate_refresh("c1", "c2", NOW + 2, 30, 0)
        .await
        .expect("rotate");
    assert!(matches!(out, RotateOutcome::Rotated { .. }), "{out:?}");
}

async fn rotate_expiry(store: Store) {
    // Absolute expiry: refused at expires_at, and the token is not consumed by the refusal.
    let mut short = new_session("abs", "u", NOW);
    short.expires_at = NOW + 100;
    store.create_session(&short, "a1").await.expect("create");
    assert_eq!(
        store
            .rotate_refresh("a1", "a2", NOW + 100, 30, 0)
            .await
            .expect("rotate"),
        RotateOutcome::SessionInactive
    );
    let out = store
        .rotate_refresh("a1", "a2", NOW + 99, 30, 0)
        .await
        .expect("rotate");
    assert!(matches!(out, RotateOutcome::Rotated { .. }), "{out:?}");
    assert_eq!(
        store
            .rotate_refresh("a2", "a3", NOW + 150, 30, 0)
            .await
            .expect("rotate"),
        RotateOutcome::SessionInactive
    );

    // Idle timeout counts from the last use.
    store
        .create_session(&new_session("idle", "u", NOW), "i1")
        .await
        .expect("create");
    assert_eq!(
        store
            .rotate_refresh("i1", "i2", NOW + 61, 30, 60)
            .await
            .expect("rotate"),
        RotateOutcome::SessionInactive
    );
    let out = store
        .rotate_refresh("i1", "i2", NOW + 60, 30, 60)
        .await
        .expect("rotate");
    assert!(matches!(out, RotateOutcome::Rotated { .. }), "{out:?}");
    // Used at NOW+60, so NOW+110 is fine, NOW+200 (from NOW+110) is not.
    let out = store
        .rotate_refresh("i2", "i3", NOW + 110, 30, 60)
        .await
        .expect("rotate");
    assert!(matches!(out, RotateOutcome::Rotated { .. }), "{out:?}");
    assert_eq!(
        store
            .rotate_refresh("i3", "i4", NOW + 200, 30, 60)
            .await
            .expect("rotate"),
        RotateOutcome::SessionInactive
    );
    // idle = 0 disables the idle timeout.
    let out = store
        .rotate_refresh("i3", "i4", NOW + 10_000, 30, 0)
        .await
        .expect("rotate");
    assert!(matches!(out, RotateOutcome::Rotated { .. }), "{out:?}");

    // A revoked session refuses its current token.
    store
        .create_session(&new_session("rev", "u", NOW), "r1")
        .await
        .expect("create");
    store
        .revoke_session("rev", NOW + 1, "logout")
        .await
        .expect("revoke");
    assert_eq!(
        store
            .rotate_refresh("r1", "r2", NOW + 2, 30, 0)
            .await
            .expect("rotate"),
        RotateOutcome::SessionInactive
    );
}

async fn rotate_concurrent(store: Store) {
    store
        .create_session(&new_session("race", "u", NOW), "old")
        .await
        .expect("create");
    let mut tasks = Vec::new();
    for i in 0..20 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .rotate_refresh("old", &format!("new-{i}"), NOW + 1, 10, 0)
                .await
        }));
    }
    let mut rotated = 0;
    let mut grace = 0;
    for task in tasks {
        match task.await.expect("join").expect("rotate") {
            RotateOutcome::Rotated { .. } => rotated += 1,
            RotateOutcome::WithinGrace { .. } => grace += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((rotated, grace), (1, 19));
    // Every caller got a working successor.
    for i in 0..20 {
        let out = store
            .rotate_refresh(&format!("new-{i}"), &format!("next-{i}"), NOW + 2, 10, 0)
            .await
            .expect("rotate");
        assert!(
            matches!(out, RotateOutcome::Rotated { .. }),
            "new-{i}: {out:?}"
        );
    }
    assert_eq!(
        store.get_session("race").await.expect("get").revoked_at,
        None
    );

    // Concurrent reuse after the grace period: all see Reused or (once revoked) inactive,
    // and the session ends up revoked exactly once.
    let mut tasks = Vec::new();
    for i in 0..10 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .rotate_refresh("old", &format!("late-{i}"), NOW + 100, 10, 0)
                .await
        }));
    }
    let mut reused = 0;
    for task in tasks {
        match task.await.expect("join").expect("rotate") {
            RotateOutcome::Reused { session_id } => {
                assert_eq!(session_id, "race");
                reused += 1;
            }
            RotateOutcome::SessionInactive => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(reused >= 1);
    let s = store.get_session("race").await.expect("get");
    assert_eq!(s.revoked_at, Some(NOW + 100));
    assert_eq!(s.revoked_reason.as_deref(), Some("refresh_reuse"));
}

async fn signing_keys(store: Store) {
    let k1 = signing_key("kid-1", "active", NOW);
    let k2 = signing_key("kid-2", "next", NOW + 1);
    store.insert_signing_key(&k1).await.expect("insert");
    store.insert_signing_key(&k2).await.expect("insert");
    assert_eq!(conflict_on(store.insert_signing_key(&k1).await), "kid");
    assert!(matches!(
        store
            .insert_signing_key(&signing_key("kid-3", "bogus", NOW))
            .await,
        Err(StoreError::Invalid(_))
    ));
    assert_eq!(
        store.list_signing_keys().await.expect("list"),
        vec![k1.clone(), k2.clone()]
    );

    store
        .update_signing_key_state("kid-1", "retired", Some(NOW + 50), Some(NOW + 500))
        .await
        .expect("update");
    store
        .update_signing_key_state("kid-2", "active", None, None)
        .await
        .expect("update");
    assert!(matches!(
        store
            .update_signing_key_state("kid-2", "gone", None, None)
            .await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        store
            .update_signing_key_state("kid-9", "active", None, None)
            .await,
        Err(StoreError::NotFound)
    ));
    let keys = store.list_signing_keys().await.expect("list");
    assert_eq!(keys[0].state, "retired");
    assert_eq!(keys[0].retired_at, Some(NOW + 50));
    assert_eq!(keys[0].remove_after, Some(NOW + 500));
    assert_eq!(keys[1].state, "active");
    assert_eq!(keys[1].private_key, "secret-kid-2");

    store.delete_signing_key("kid-1").await.expect("delete");
    assert!(matches!(
        store.delete_signing_key("kid-1").await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(store.list_signing_keys().await.expect("list").len(), 1);
    assert!(
        !format!("{k1:?}").contains("secret-"),
        "Debug shows the private key"
    );

    // Inside the lock: the same operations, committed together or not at all.
    let mut tx = store.lock_signing_keys().await.expect("lock");
    tx.insert_signing_key(&signing_key("kid-3", "next", NOW + 2))
        .await
        .expect("insert");
    tx.update_signing_key_state("kid-2", "retired", Some(NOW + 3), Some(NOW + 4))
        .await
        .expect("update");
    assert_eq!(tx.list_signing_keys().await.expect("list").len(), 2);
    tx.rollback().await.expect("rollback");
    let keys = store.list_signing_keys().await.expect("list");
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].state, "active");

    let mut tx = store.lock_signing_keys().await.expect("lock");
    tx.insert_signing_key(&signing_key("kid-3", "next", NOW + 2))
        .await
        .expect("insert");
    tx.delete_signing_key("kid-2").await.expect("delete");
    assert!(matches!(
        tx.delete_signing_key("kid-2").await,
        Err(StoreError::NotFound)
    ));
    tx.commit().await.expect("commit");
    let keys = store.list_signing_keys().await.expect("list");
    assert_eq!(
        keys.iter().map(|k| k.kid.as_str()).collect::<Vec<_>>(),
        ["kid-3"]
    );

    // with_key_lock commits on Ok and rolls back on Err.
    let n = store
        .with_key_lock(|tx| {
            Box::pin(async move {
                tx.insert_signing_key(&signing_key("kid-4", "next", NOW + 4))
                    .await?;
                Ok(tx.list_signing_keys().await?.len())
            })
        })
        .await
        .expect("with lock");
    assert_eq!(n, 2);
    let err = store
        .with_key_lock(|tx| {
            Box::pin(async move {
                tx.delete_signing_key("kid-4").await?;
                Err::<(), _>(StoreError::Invalid("changed my mind".into()))
            })
        })
        .await;
    assert!(matches!(err, Err(StoreError::Invalid(_))));
    assert_eq!(store.list_signing_keys().await.expect("list").len(), 2);
}

/// One replica's "make sure an active key exists", slow between reading and writing.
fn ensure_active_key(tx: &mut KeyTx, i: usize, created: Arc<AtomicUsize>) -> KeyFuture<'_, ()> {
    Box::pin(async move {
        let keys = tx.list_signing_keys().await?;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        if !keys.iter().any(|k| k.state == "active") {
            tx.insert_signing_key(&signing_key(&format!("kid-{i}"), "active", NOW))
                .await?;
            created.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    })
}

/// Replicas racing to create the first active key: with the lock exactly one creates it.
async fn key_lock_serialises_rotation(store: Store) {
    let created = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = store.clone();
        let created = created.clone();
        tasks.push(tokio::spawn(async move {
            if i % 2 == 0 {
                store
                    .with_key_lock(move |tx| ensure_active_key(tx, i, created))
                    .await
            } else {
                let mut tx = store.lock_signing_keys().await?;
                ensure_active_key(&mut tx, i, created).await?;
                tx.commit().await
            }
        }));
    }
    for task in tasks {
        task.await.expect("join").expect("rotation");
    }
    assert_eq!(created.load(Ordering::SeqCst), 1);
    let keys = store.list_signing_keys().await.expect("list");
    assert_eq!(keys.iter().filter(|k| k.state == "active").count(), 1);
}

/// Admitted?
async fn admitted(store: &Store, key: &str, window: i64, max: i64, now: i64) -> bool {
    store
        .hit_limit(key, window, max, now)
        .await
        .expect("hit")
        .admitted
}

async fn limits(store: Store) {
    let w = 60;
    let start = NOW - NOW.rem_euclid(w);
    // Three of three in a window, then refused with the exact wait; other keys are separate.
    for i in 1..=3 {
        assert!(admitted(&store, "sms:+100", w, 3, start + i).await);
    }
    let refused = store
        .hit_limit("sms:+100", w, 3, start + 5)
        .await
        .expect("hit");
    assert!(!refused.admitted);
    // The 3 hits become the previous window's: one more fits once 3 × left/60 ≤ 2, i.e.
    // left ≤ 40, 20 s into the next window: 55 + 20 = 75 s from now.
    assert_eq!(refused.retry_after, 75);
    assert!(admitted(&store, "sms:+200", w, 3, start + 5).await);
    // Peeking agrees and counts nothing; refused hits were not counted either.
    let peek = store
        .peek_limit("sms:+100", w, 3, start + 6)
        .await
        .expect("peek");
    assert_eq!((peek.admitted, peek.retry_after), (false, 74));
    assert!(!admitted(&store, "sms:+100", w, 3, start + w + 19).await);
    assert!(admitted(&store, "sms:+100", w, 3, start + w + 20).await);
    assert!(!admitted(&store, "sms:+100", w, 3, start + w + 21).await);
    // A lagging replica's hit stamped in the previous window counts in the current one.
    assert!(!admitted(&store, "sms:+100", w, 3, start + 10).await);
    // Two windows later everything has aged out.
    assert!(
        store
            .peek_limit("sms:+100", w, 3, start + 3 * w)
            .await
            .expect("peek")
            .admitted
    );
    store.reset_limit("sms:+100").await.expect("reset");
    for _ in 0..3 {
        assert!(admitted(&store, "sms:+100", w, 3, start + w + 22).await);
    }
    store.reset_limit("never-hit").await.expect("reset unknown");
    assert!(matches!(
        store.hit_limit("k", 0, 1, NOW).await,
        Err(StoreError::Invalid(_))
    ));
    // A budget of zero admits nothing; negative times still align to window boundaries.
    let none = store.hit_limit("zero", 10, 0, NOW).await.expect("hit");
    assert!(!none.admitted && none.retry_after >= 1);
    assert!(admitted(&store, "neg", 10, 1, -5).await);
    assert!(!admitted(&store, "neg", 10, 1, -4).await);
}

/// The reported symptom: 22 failures against a budget of 20, spread across a boundary
/// (11 in the last seconds of one window, 11 in the first of the next). Fixed windows admitted
/// all 22; here the 21st is refused, and the budget refills at its own pace afterwards.
async fn limits_straddling_a_boundary(store: Store) {
    let w = 900;
    let boundary = NOW - NOW.rem_euclid(w) + w;
    let mut admitted_hits = 0;
    for i in 0..22 {
        let t = boundary - 11 + i;
        if admitted(&store, "pwfail:ip:10.0.0.1", w, 20, t).await {
            admitted_hits += 1;
        }
    }
    assert_eq!(admitted_hits, 20);
    // Right after the burst, waiting what Retry-After says is enough, and necessary.
    let refused = store
        .hit_limit("pwfail:ip:10.0.0.1", w, 20, boundary + 11)
        .await
        .expect("hit");
    assert!(!refused.admitted && refused.retry_after > 1, "{refused:?}");
    let at = boundary + 11 + refused.retry_after;
    assert!(!admitted(&store, "pwfail:ip:10.0.0.1", w, 20, at - 1).await);
    assert!(admitted(&store, "pwfail:ip:10.0.0.1", w, 20, at).await);
}

/// The SQL verdicts match the Rust model of `peek_limit` hit after hit (a random walk of
/// times over several windows and budgets).
async fn limits_sql_matches_peek(store: Store) {
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n) as i64
    };
    for (key, w, max) in [("m1", 10, 1), ("m2", 10, 4), ("m3", 7, 9), ("m4", 60, 25)] {
        let mut t = NOW;
        for _ in 0..120 {
            t += next(w as u64 / 2 + 1);
            let peeked = store.peek_limit(key, w, max, t).await.expect("peek");
            let hit = store.hit_limit(key, w, max, t).await.expect("hit");
            assert_eq!(peeked, hit, "{key} at {t}");
        }
    }
}

async fn limits_concurrent(store: Store) {
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store.hit_limit("login:1.2.3.4", 3600, 30, NOW).await
        }));
    }
    let mut admitted_hits = 0;
    for task in tasks {
        if task.await.expect("join").expect("hit").admitted {
            admitted_hits += 1;
        }
    }
    // Neither lost nor over-admitted, whatever the interleaving.
    assert_eq!(admitted_hits, 30);
    assert!(!admitted(&store, "login:1.2.3.4", 3600, 30, NOW).await);
    assert!(admitted(&store, "login:1.2.3.4", 3600, 31, NOW).await);
}

async fn purge(store: Store) {
    let mut old = new_session("old", "u", NOW - 100);
    old.expires_at = NOW - 10;
    store.create_session(&old, "o1").await.expect("create");
    store
        .create_session(&new_session("revoked", "u", NOW - 100), "r1")
        .await
        .expect("create");
    store
        .revoke_session("revoked", NOW - 50, "logout")
        .await
        .expect("revoke");
    store
        .create_session(&new_session("live", "u", NOW - 100), "l1")
        .await
        .expect("create");
    assert_eq!(store.purge_sessions(NOW).await.expect("purge"), 2);
    assert_eq!(
        store
            .list_sessions("u")
            .await
            .expect("list")
            .iter()
            .map(|s| s.id.as_str())
            .collect::<Vec<_>>(),
        ["live"]
    );
    assert_eq!(
        store.find_session_by_refresh("o1").await.expect("find"),
        None
    );
    assert_eq!(
        store
            .rotate_refresh("r1", "r2", NOW, 10, 0)
            .await
            .expect("rotate"),
        RotateOutcome::Unknown
    );

    // A row lives two windows (its current one, then as the previous one).
    assert!(admitted(&store, "a", 10, 1, NOW - 100).await);
    assert!(admitted(&store, "b", 10, 1, NOW - 10).await);
    assert_eq!(store.purge_limits(NOW).await.expect("purge"), 1);
    assert!(!admitted(&store, "b", 10, 1, NOW).await, "still counted");
    assert!(admitted(&store, "a", 10, 1, NOW).await);
}

/// Housekeeping deletes what ended longer ago than its retention, and nothing else.
async fn purge_expired(store: Store) {
    use super::housekeeping::{KEEP_ENDED_SESSIONS, KEEP_SMS_MESSAGES, KEEP_SPENT_SECRETS};
    let long_ago = NOW - KEEP_ENDED_SESSIONS - 100;
    let mut ended = new_session("ended", "u", long_ago - 100);
    ended.expires_at = long_ago;
    store.create_session(&ended, "e1").await.expect("create");
    let mut recent = new_session("recent", "u", NOW - 100);
    recent.expires_at = NOW - 10; // ended, but within the retention
    store.create_session(&recent, "r1").await.expect("create");
    store
        .create_session(&new_session("live", "u", NOW - 100), "l1")
        .await
        .expect("create");
    store.hit_limit("w", 10, 5, NOW - 100).await.expect("hit");
    let spent = NOW - KEEP_SPENT_SECRETS - 10;
    for (hash, expires) in [("old-link", spent), ("new-link", NOW + 60)] {
        store
            .create_email_link(hash, "reset_password", hash, None, spent - 60, expires)
            .await
            .expect("link");
    }
    store
        .sms_insert_code("+12015550123", "h1", spent - 300, spent)
        .await
        .expect("code");
    store
        .sms_insert_code("+12015550124", "h2", NOW, NOW + 300)
        .await
        .expect("code");
    for (id, created) in [("m-old", NOW - KEEP_SMS_MESSAGES - 1), ("m-new", NOW - 60)] {
        let m = SmsMessage {
            id: id.into(),
            provider: "log".into(),
            provider_id: None,
            phone: "+12015550199".into(),
            status: "sent".into(),
            error_code: None,
            created_at: created,
            updated_at: created,
        };
        let code = store
            .sms_insert_code(&m.phone, id, created, NOW + 300)
            .await
            .expect("code");
        store
            .sms_activate_code(&code, &m, created)
            .await
            .expect("activate");
    }

    let purged = store.purge_expired(NOW).await.expect("purge");
    assert_eq!(
        purged,
        housekeeping::Purged {
            sessions: 1,
            limits: 1,
            email_links: 1,
            sms_codes: 1,
            sms_messages: 1,
            revocations: 0,
        }
    );
    let left: Vec<String> = store
        .list_sessions("u")
        .await
        .expect("list")
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(!left.contains(&"ended".to_string()), "{left:?}");
    let messages = store.sms_list_messages(None, 10).await.expect("list");
    assert_eq!(
        messages.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
        ["m-new"]
    );
    assert_eq!(store.purge_expired(NOW).await.expect("again").total(), 0);
}

async fn migrations_idempotent(store: Store) {
    store.migrate().await.expect("migrate again");
    store.migrate().await.expect("and again");
    assert!(store.ping().await);
    let expected = if store.backend() == Backend::Postgres {
        Backend::Postgres
    } else {
        Backend::Sqlite
    };
    assert_eq!(store.backend(), expected);
    let applied: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations")
        .fetch_one(&store.pool)
        .await
        .expect("count");
    assert_eq!(
        applied,
        i64::try_from(MIGRATOR.iter().count()).expect("fits")
    );
}

#[tokio::test]
async fn store_sqlite_file_created_with_wal_and_survives_reconnect() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("nested/data/issuer.db");
    let url = format!("sqlite://{}", path.display());
    let store = Store::connect(&url).await.expect("connect");
    assert!(path.is_file(), "database file created");
    assert_eq!(store.backend(), Backend::Sqlite);
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&store.pool)
        .await
        .expect("journal mode");
    assert_eq!(mode, "wal");
    let timeout: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
        .fetch_one(&store.pool)
        .await
        .expect("busy timeout");
    assert_eq!(timeout, i64::from(SQLITE_BUSY_TIMEOUT_MS));

    let user = store
        .create_user(&new_user("a@example.com", "alice", "+100"))
        .await
        .expect("user");
    store
        .insert_signing_key(&signing_key("kid", "active", NOW))
        .await
        .expect("key");
    store
        .create_session(&new_session("s", &user.id, NOW), "h")
        .await
        .expect("session");
    store.pool.close().await;

    let again = Store::connect(&url).await.expect("reconnect");
    assert_eq!(again.get_user(&user.id).await.expect("user"), user);
    assert_eq!(again.list_signing_keys().await.expect("keys").len(), 1);
    let out = again
        .rotate_refresh("h", "h2", NOW + 1, 10, 0)
        .await
        .expect("rotate");
    assert!(matches!(out, RotateOutcome::Rotated { .. }), "{out:?}");
}

#[tokio::test]
async fn store_sqlite_synchronous_follows_the_option() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}/issuer.db", dir.path().display());
    // PRAGMA synchronous reads 2 for FULL, 1 for NORMAL, on every connection of both pools.
    for (opts, expected) in [
        (StoreOptions::default(), 2),
        (
            StoreOptions {
                sqlite_sync: SqliteSync::Normal,
                ..StoreOptions::default()
            },
            1,
        ),
    ] {
        let store = Store::connect_with(&url, opts).await.expect("connect");
        for pool in [&store.pool, &store.writer] {
            let level: i64 = sqlx::query_scalar("PRAGMA synchronous")
                .fetch_one(pool)
                .await
                .expect("synchronous");
            assert_eq!(level, expected, "{opts:?}");
        }
    }
}

#[tokio::test]
async fn store_postgres_survives_reconnect_and_concurrent_migrations() {
    let Some(url) = Postgres::database_url_async().await else {
        println!("SKIPPED: no PostgreSQL");
        return;
    };
    // Replicas starting together: the migrator's advisory lock serialises them.
    let (a, b) = tokio::join!(Store::connect(&url), Store::connect(&url));
    let (a, b) = (a.expect("connect a"), b.expect("connect b"));
    assert_eq!(a.backend(), Backend::Postgres);
    let user = a
        .create_user(&new_user("a@example.com", "alice", "+100"))
        .await
        .expect("user");
    assert_eq!(b.get_user(&user.id).await.expect("seen by b"), user);
    a.pool.close().await;
    b.pool.close().await;
    let again = Store::connect(&url).await.expect("reconnect");
    assert_eq!(again.get_user(&user.id).await.expect("user"), user);
}

#[tokio::test]
async fn store_connect_rejects_unknown_urls() {
    for url in ["mysql://localhost/x", "issuer.db", "sqlite://"] {
        assert!(
            matches!(Store::connect(url).await, Err(StoreError::Invalid(_))),
            "{url}"
        );
    }
}

#[test]
fn store_sqlite_urls_keep_the_path_verbatim() {
    let t = Target::parse("sqlite://data/issuer.db").expect("parse");
    assert_eq!(t.backend, Backend::Sqlite);
    assert_eq!(t.url, "sqlite:data/issuer.db?mode=rwc");
    assert_eq!(t.sqlite_file.as_deref(), Some(Path::new("data/issuer.db")));

    let t = Target::parse("sqlite:///var/lib/Portcullis/x%20y.db?mode=rw").expect("parse");
    assert_eq!(t.url, "sqlite:/var/lib/Portcullis/x y.db?mode=rw");
    assert_eq!(
        t.sqlite_file.as_deref(),
        Some(Path::new("/var/lib/Portcullis/x y.db"))
    );

    let t = Target::parse("sqlite://Data/100%25.db").expect("parse");
    assert_eq!(t.url, "sqlite:Data/100%25.db?mode=rwc");

    let t = Target::parse("sqlite::memory:").expect("parse");
    assert_eq!((t.backend, t.sqlite_file), (Backend::Sqlite, None));
    let t = Target::parse("postgresql://u@h/db").expect("parse");
    assert_eq!(t.backend, Backend::Postgres);
}
