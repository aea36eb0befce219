//! Group commit on a SQLite file: writes sharing one transaction still get their own
//! outcomes, and a failing write does not take its group down with it.

use std::collections::HashSet;

use super::{new_session, new_user, NOW};
use crate::store::{RotateOutcome, Store, StoreError};

async fn file_store(dir: &tempfile::TempDir) -> Store {
    let url = format!("sqlite://{}/issuer.db", dir.path().display());
    let store = Store::connect(&url).await.expect("connect");
    assert!(store.group.is_some(), "a SQLite file groups its commits");
    store
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn store_group_commit_isolates_a_failing_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = file_store(&dir).await;
    let user = store
        .create_user(&new_user("g@example.com", "g", "+1555002"))
        .await
        .expect("user");
    store
        .create_session(&new_session("taken", &user.id, NOW), "taken-hash")
        .await
        .expect("first session");

    // 60 logins at once, one of them with a clashing session id: they queue together.
    let mut tasks = Vec::new();
    for i in 0..60 {
        let store = store.clone();
        let user_id = user.id.clone();
        tasks.push(tokio::spawn(async move {
            let id = if i == 30 {
                "taken".to_string()
            } else {
                format!("g-{i}")
            };
            store
                .create_session(&new_session(&id, &user_id, NOW), &format!("g-hash-{i}"))
                .await
        }));
    }
    let mut ok = 0;
    for (i, task) in tasks.into_iter().enumerate() {
        match task.await.expect("join") {
            Ok(()) => ok += 1,
            Err(StoreError::Conflict(field)) if i == 30 => assert_eq!(field, "session"),
            other => panic!("login {i}: {other:?}"),
        }
    }
    assert_eq!(ok, 59);
    let listed: HashSet<String> = store
        .list_sessions(&user.id)
        .await
        .expect("list")
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(listed.len(), 60, "59 new sessions and the first one");
    assert!(store
        .find_refresh_token("g-hash-30")
        .await
        .expect("read")
        .is_none());

    // Rotations grouped together: each token of a pair presented twice at once gets one
    // Rotated and one WithinGrace, never two Rotated.
    let mut tasks = Vec::new();
    for i in 0..40 {
        let store = store.clone();
        let presented = format!("g-hash-{}", i / 2);
        tasks.push(tokio::spawn(async move {
            (
                i / 2,
                store
                    .rotate_refresh(&presented, &format!("g-next-{i}"), NOW + 1, 10, 0)
                    .await,
            )
        }));
    }
    let mut rotated = HashSet::new();
    let mut grace = HashSet::new();
    for task in tasks {
        match task.await.expect("join") {
            (n, Ok(RotateOutcome::Rotated { .. })) => assert!(rotated.insert(n), "{n} twice"),
            (n, Ok(RotateOutcome::WithinGrace { .. })) => assert!(grace.insert(n), "{n}"),
            (n, other) => panic!("token {n}: {other:?}"),
        }
    }
    assert_eq!(rotated.len(), 20);
    assert_eq!(grace, rotated);
}

/// Callers dropped while their writes wait in the queue leave it working.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn store_group_commit_survives_dropped_callers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = file_store(&dir).await;
    let user = store
        .create_user(&new_user("d@example.com", "d", "+1555003"))
        .await
        .expect("user");
    for i in 0..200 {
        let session = new_session(&format!("d-{i}"), &user.id, NOW);
        let hash = format!("d-hash-{i}");
        let call = store.create_session(&session, &hash);
        // Dropped after its first poll: queued, never awaited.
        let _ = tokio::time::timeout(std::time::Duration::ZERO, call).await;
    }
    let session = new_session("d-last", &user.id, NOW);
    tokio::time::timeout(
        std::time::Duration::from_secs(1),
        store.create_session(&session, "d-hash-last"),
    )
    .await
    .expect("answered within a second")
    .expect("created");
    // The jobs that made it into the queue before being dropped were committed before it
    // (one queue, in order); how many made it depends on the scheduler.
    let n = store.list_sessions(&user.id).await.expect("list").len();
    assert!((1..=201).contains(&n), "{n}");
}
