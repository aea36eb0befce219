use super::set::{Change, Cutoff};
use super::*;

fn spec(on_stale: StalePolicy) -> FeedSpec {
    FeedSpec {
        url: FeedUrl::Fixed("http://127.0.0.1:1/v1/revocations".into()),
        token: "secret".into(),
        max_stale: Duration::from_secs(60),
        on_stale,
        timeout: Duration::from_secs(35),
    }
}

fn page(changes: Vec<Change>, snapshot: bool, more: bool) -> feed::Page {
    feed::Page {
        sessions: changes.len() as u64,
        subjects: 0,
        changes,
        next: 0,
        snapshot,
        more,
    }
}

fn revoked_session(sid: &str) -> Change {
    Change::Session {
        key: RecordKey::of(sid),
        until: u32::MAX,
    }
}

#[test]
fn sessions_and_subjects_are_refused_others_pass() {
    let r = Revocations::new("main".into(), spec(StalePolicy::Accept));
    let now = now_secs();
    let mut pending = None;
    r.apply(
        page(
            vec![
                revoked_session("s-1"),
                Change::Subject {
                    key: RecordKey::of("user-2"),
                    cutoff: Cutoff {
                        not_before: 1000,
                        until: u32::MAX,
                    },
                },
            ],
            true,
            false,
        ),
        &mut pending,
    );
    r.read_ok();
    let check = |sid: &str, sub: &str, iat: Option<u64>| {
        r.check(&TokenKeys::of(Some(sid), Some(sub)), iat, now)
    };
    assert_eq!(
        check("s-1", "user-1", Some(5)),
        Err(AuthError::SessionRevoked)
    );
    assert_eq!(check("s-2", "user-1", Some(5)), Ok(()));
    assert_eq!(
        check("s-2", "user-2", Some(999)),
        Err(AuthError::SubjectRevoked)
    );
    assert_eq!(check("s-2", "user-2", None), Err(AuthError::SubjectRevoked));
    // Issued at or after the cut-off: a new login of the same subject passes.
    assert_eq!(check("s-2", "user-2", Some(1000)), Ok(()));
    assert_eq!(r.check(&TokenKeys::default(), None, now), Ok(()));
    let stats = r.stats();
    assert!(stats.loaded);
    assert_eq!((stats.sessions, stats.subjects), (1, 1));
}

#[test]
fn snapshot_pages_replace_only_when_complete() {
    let r = Revocations::new("main".into(), spec(StalePolicy::Accept));
    let mut pending = None;
    r.apply(
        page(vec![revoked_session("old")], true, false),
        &mut pending,
    );
    assert!(r.is_loaded());
    let keys = |sid: &str| TokenKeys::of(Some(sid), None);
    // A new snapshot in two pages: the old record stays until the last page arrives.
    r.apply(page(vec![revoked_session("a")], true, true), &mut pending);
    assert_eq!(
        r.check(&keys("old"), None, 0),
        Err(AuthError::SessionRevoked)
    );
    assert_eq!(r.check(&keys("a"), None, 0), Ok(()));
    r.apply(page(vec![revoked_session("b")], false, false), &mut pending);
    assert_eq!(r.check(&keys("old"), None, 0), Ok(()));
    assert_eq!(r.check(&keys("a"), None, 0), Err(AuthError::SessionRevoked));
    assert_eq!(r.check(&keys("b"), None, 0), Err(AuthError::SessionRevoked));
    // Then increments add.
    r.apply(page(vec![revoked_session("c")], false, false), &mut pending);
    assert_eq!(r.check(&keys("c"), None, 0), Err(AuthError::SessionRevoked));
    assert_eq!(r.stats().session_events, 4);
}

#[test]
fn stale_policies() {
    let keys = TokenKeys::of(Some("s"), Some("u"));
    let now = now_secs();
    let accept = Revocations::new("a".into(), spec(StalePolicy::Accept));
    let refuse = Revocations::new("r".into(), spec(StalePolicy::Refuse));
    // Before the first snapshot: refuse refuses, accept accepts.
    assert_eq!(accept.check(&keys, Some(now), now), Ok(()));
    assert_eq!(
        refuse.check(&keys, Some(now), now),
        Err(AuthError::RevocationStale)
    );
    for r in [&accept, &refuse] {
        r.apply(page(Vec::new(), true, false), &mut None);
        r.read_ok();
        r.housekeeping(now);
        assert!(!r.stats().stale);
        assert!(!r.stale.load(Ordering::Relaxed));
    }
    assert_eq!(refuse.check(&keys, Some(now), now), Ok(()));
    // 61 s later with no read: stale.
    let later = now + 61;
    for r in [&accept, &refuse] {
        r.housekeeping(later);
        assert!(r.stale_at(later));
        assert!(r.stale.load(Ordering::Relaxed));
        assert!(r.warned.load(Ordering::Relaxed), "the change is logged");
    }
    assert_eq!(accept.check(&keys, Some(now), later), Ok(()));
    assert_eq!(
        refuse.check(&keys, Some(now), later),
        Err(AuthError::RevocationStale)
    );
}

#[test]
fn a_reload_keeps_what_is_known() {
    let old = Revocations::new("main".into(), spec(StalePolicy::Accept));
    old.apply(page(vec![revoked_session("s-1")], true, false), &mut None);
    old.read_ok();
    let next = Revocations::succeeding("main".into(), spec(StalePolicy::Refuse), &old);
    assert!(next.is_loaded());
    let (before, after) = (old.stats(), next.stats());
    assert_eq!(
        (after.session_events, after.reads_ok),
        (before.session_events, before.reads_ok),
        "counters continue across a reload"
    );
    assert_eq!(
        next.check(&TokenKeys::of(Some("s-1"), None), None, now_secs()),
        Err(AuthError::SessionRevoked)
    );
    // The credential never reaches a log line.
    assert!(!format!("{:?}", next).contains("secret"));
}
