//! The revocation feed's records: one per event, in the event's transaction, contiguous
//! sequence numbers, cursors and snapshots, pruning, wake-up.

use super::*;
use crate::store::{RevocationKind, TokenCutoff, DEFAULT_REVOCATION_WINDOW};

backend_tests!(
    feed_records_every_event,
    feed_cursor_snapshot_and_paging,
    feed_pruning_keeps_what_matters,
    feed_sequence_under_concurrency,
);

/// Every record after `after` (read at `now`), as (seq, kind) pairs.
async fn kinds(store: &Store, after: i64, now: i64) -> Vec<(i64, RevocationKind)> {
    let page = store
        .revocations_after(Some(after), now, 1000)
        .await
        .expect("read");
    assert!(!page.snapshot, "cursor {after} is retained");
    page.records.into_iter().map(|r| (r.seq, r.kind)).collect()
}

fn session(sid: &str) -> RevocationKind {
    RevocationKind::Session { sid: sid.into() }
}

fn subject(sub: &str, not_before: i64) -> RevocationKind {
    RevocationKind::Subject {
        sub: sub.into(),
        not_before,
    }
}

async fn feed_records_every_event(store: Store) {
    let alice = store
        .create_user(&new_user("a@example.com", "alice", "+100"))
        .await
        .expect("alice");
    let a = alice.id.as_str();
    let mut signal = store.revocation_signal();
    assert_eq!(kinds(&store, 0, NOW).await, []);

    // Logout / admin revoke: one record, and none when revoking again.
    store
        .create_session(&new_session("s1", a, NOW), "h1")
        .await
        .expect("s1");
    store
        .revoke_session("s1", NOW, "logout")
        .await
        .expect("revoke");
    store
        .revoke_session("s1", NOW + 5, "admin")
        .await
        .expect("again");
    assert!(
        signal.has_changed().expect("signal"),
        "a commit wakes readers"
    );
    signal.borrow_and_update();
    let page = store
        .revocations_after(Some(0), NOW, 10)
        .await
        .expect("read");
    assert_eq!(page.records.len(), 1);
    assert_eq!(
        page.records[0].relevant_until,
        NOW + DEFAULT_REVOCATION_WINDOW
    );
    assert_eq!(page.next, 1);

    // Refresh-token reuse.
    store
        .create_session(&new_session("s2", a, NOW), "h2")
        .await
        .expect("s2");
    store
        .rotate_refresh("h2", "h2b", NOW, 10, 0)
        .await
        .expect("rotate");
    let reused = store.rotate_refresh("h2", "h2c", NOW + 60, 10, 0).await;
    assert!(
        matches!(reused, Ok(RotateOutcome::Reused { .. })),
        "{reused:?}"
    );

    // API key revoked: the live sessions it opened, not the others.
    store
        .create_api_key(&api_key("k1", "p1", a, NOW))
        .await
        .expect("key");
    for sid in ["s3", "s4"] {
        let mut s = new_session(sid, a, NOW);
        s.client_id = Some("k1".into());
        store
            .create_session(&s, &format!("h-{sid}"))
            .await
            .expect("session");
    }
    store
        .create_session(&new_session("s5", a, NOW), "h5")
        .await
        .expect("s5");
    store
        .revoke_api_key("k1", NOW + 1)
        .await
        .expect("revoke key");
    assert_eq!(
        store
            .get_session("s3")
            .await
            .expect("s3")
            .revoked_reason
            .as_deref(),
        Some(REASON_API_KEY_REVOKED)
    );
    assert_eq!(store.get_session("s5").await.expect("s5").revoked_at, None);
    // Revoking the key again appends nothing.
    store.revoke_api_key("k1", NOW + 2).await.expect("again");
    assert!(matches!(
        store.revoke_api_key("nope", NOW).await,
        Err(StoreError::NotFound)
    ));

    // Role removal (sessions live on), disabling (sessions end), admin "revoke all".
    store
        .update_user_with(&alice, TokenCutoff::Tokens, NOW + 3)
        .await
        .expect("roles");
    assert_eq!(store.get_session("s5").await.expect("s5").revoked_at, None);
    store
        .update_user_with(&alice, TokenCutoff::Sessions("disabled"), NOW + 4)
        .await
        .expect("disable");
    assert_eq!(
        store
            .get_session("s5")
            .await
            .expect("s5")
            .revoked_reason
            .as_deref(),
        Some("disabled")
    );
    store
        .revoke_user_sessions(a, NOW + 5, "admin")
        .await
        .expect("all");
    // Plain updates append nothing; a missing user changes nothing.
    store.update_user(&alice).await.expect("update");
    let mut ghost = alice.clone();
    ghost.id = "ghost".into();
    assert!(matches!(
        store
            .update_user_with(&ghost, TokenCutoff::Sessions("disabled"), NOW)
            .await,
        Err(StoreError::NotFound)
    ));

    assert_eq!(
        kinds(&store, 0, NOW).await,
        [
            (1, session("s1")),
            (2, session("s2")),
            (3, session("s3")),
            (4, session("s4")),
            (5, subject(a, NOW + 3)),
            (6, subject(a, NOW + 4)),
            (7, subject(a, NOW + 5)),
        ]
    );

    // Deletion: a subject record at the deletion time.
    store.delete_user(a).await.expect("delete");
    let after = kinds(&store, 7, NOW).await;
    assert_eq!(after.len(), 1);
    assert!(matches!(&after[0], (8, RevocationKind::Subject { sub, .. }) if sub == a));
}

async fn feed_cursor_and_snapshot_and_paging_setup(store: &Store) {
    for i in 0..5 {
        let sid = format!("c{i}");
        store
            .create_session(&new_session(&sid, "u", NOW), &format!("h-{sid}"))
            .await
            .expect("session");
        store
            .revoke_session(&sid, NOW, "logout")
            .await
            .expect("revoke");
    }
}

async fn feed_cursor_snapshot_and_paging(store: Store) {
    // An empty feed: a snapshot of nothing, cursor 0.
    let page = store.revocations_after(None, NOW, 10).await.expect("read");
    assert!(page.snapshot && page.records.is_empty() && page.next == 0 && !page.more);
    feed_cursor_and_snapshot_and_paging_setup(&store).await;

    // No cursor: a snapshot, paged.
    let page = store.revocations_after(None, NOW, 2).await.expect("read");
    assert!(page.snapshot && page.more);
    assert_eq!(
        page.records.iter().map(|r| r.seq).collect::<Vec<_>>(),
        [1, 2]
    );
    assert_eq!(page.next, 2);
    let page = store
        .revocations_after(Some(2), NOW, 2)
        .await
        .expect("read");
    assert!(!page.snapshot && page.more && page.next == 4);
    let page = store
        .revocations_after(Some(4), NOW, 2)
        .await
        .expect("read");
    assert!(!page.snapshot && !page.more && page.next == 5 && page.records.len() == 1);
    // A page that takes exactly what is left says there is no more.
    let page = store
        .revocations_after(Some(3), NOW, 2)
        .await
        .expect("read");
    assert!(!page.more && page.next == 5 && page.records.len() == 2);
    // Up to date: nothing, same cursor.
    let page = store
        .revocations_after(Some(5), NOW, 2)
        .await
        .expect("read");
    assert!(!page.snapshot && page.records.is_empty() && page.next == 5);
    // A cursor from the future (a database that was reset): a snapshot.
    let page = store
        .revocations_after(Some(99), NOW, 10)
        .await
        .expect("read");
    assert!(page.snapshot && page.records.len() == 5 && page.next == 5);
    // Expired records are not handed out, the cursor still moves past them.
    let late = NOW + DEFAULT_REVOCATION_WINDOW + 1;
    let page = store
        .revocations_after(Some(0), late, 10)
        .await
        .expect("read");
    assert!(!page.snapshot && page.records.is_empty() && page.next == 5);
}

async fn feed_pruning_keeps_what_matters(store: Store) {
    let w = DEFAULT_REVOCATION_WINDOW;
    // Records at NOW (1, 2), then at NOW + 2w (3), then NOW again (4).
    for (sid, at) in [("p1", NOW), ("p2", NOW), ("p3", NOW + 2 * w), ("p4", NOW)] {
        store
            .create_session(&new_session(sid, "u", NOW), &format!("h-{sid}"))
            .await
            .expect("session");
        store
            .revoke_session(sid, at, "logout")
            .await
            .expect("revoke");
    }
    // Nothing has expired yet: nothing pruned, cursor 0 still incremental.
    assert_eq!(store.purge_revocations(NOW).await.expect("purge"), 0);
    assert_eq!(kinds(&store, 0, NOW).await.len(), 4);
    // 1 and 2 expired: pruned. 4 expired too but follows the still relevant 3: the retained
    // part stays a suffix of the sequence (4 is no longer handed out, being expired).
    let later = NOW + w + 1;
    assert_eq!(store.purge_revocations(later).await.expect("purge"), 2);
    let page = store
        .revocations_after(Some(0), later, 10)
        .await
        .expect("read");
    assert!(page.snapshot, "cursor 0 is older than what is retained");
    assert_eq!(page.records.iter().map(|r| r.seq).collect::<Vec<_>>(), [3]);
    assert_eq!(kinds(&store, 2, later).await, [(3, session("p3"))]);
    // Everything expired: all pruned, the sequence goes on where it was.
    let end = NOW + 3 * w + 1;
    assert_eq!(store.purge_revocations(end).await.expect("purge"), 2);
    let page = store
        .revocations_after(Some(1), end, 10)
        .await
        .expect("read");
    assert!(page.snapshot && page.records.is_empty() && page.next == 4);
    store
        .create_session(&new_session("p5", "u", NOW), "h-p5")
        .await
        .expect("session");
    store
        .revoke_session("p5", end, "logout")
        .await
        .expect("revoke");
    assert_eq!(kinds(&store, 4, end).await, [(5, session("p5"))]);
}

async fn feed_sequence_under_concurrency(store: Store) {
    let n = 24;
    for i in 0..n {
        let sid = format!("x{i}");
        store
            .create_session(&new_session(&sid, "u", NOW), &format!("h-{sid}"))
            .await
            .expect("session");
    }
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .revoke_session(&format!("x{i}"), NOW, "logout")
                    .await
                    .expect("revoke")
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    let got = kinds(&store, 0, NOW).await;
    let seqs: Vec<i64> = got.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (1..=n).collect::<Vec<i64>>(), "contiguous, no gap");
    let sids: HashSet<String> = got
        .into_iter()
        .map(|(_, k)| match k {
            RevocationKind::Session { sid } => sid,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(sids.len(), n as usize);
}

/// Two replicas on one PostgreSQL: an append on one wakes a reader waiting on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_notify_wakes_other_replicas() {
    let Some(url) = Postgres::database_url_async().await else {
        println!("SKIPPED: no PostgreSQL");
        return;
    };
    let a = Store::connect(&url).await.expect("replica a");
    let b = Store::connect(&url).await.expect("replica b");
    // Subscribed first, so that the listener's first signal (it is listening) is seen.
    let mut signal = b.revocation_signal();
    let listener = b.clone();
    let listen_url = url.clone();
    tokio::spawn(async move { listener.listen_revocations(&listen_url).await });
    tokio::time::timeout(std::time::Duration::from_secs(10), signal.changed())
        .await
        .expect("listening")
        .expect("signal");
    a.create_session(&new_session("n1", "u", NOW), "h-n1")
        .await
        .expect("session");
    a.revoke_session("n1", NOW, "logout").await.expect("revoke");
    tokio::time::timeout(std::time::Duration::from_secs(1), signal.changed())
        .await
        .expect("woken within a second")
        .expect("signal");
    let page = b.revocations_after(Some(0), NOW, 10).await.expect("read");
    assert_eq!(page.records.len(), 1);
}
