//! The revoked sessions and subject cut-offs of one issuer, read without locks.
//!
//! Identifiers are stored as 128-bit keyed hashes (SipHash-1-3 under two secret per-process
//! keys), not as text: 20 bytes per record instead of a heap string, and no caller can aim a
//! collision at a key it cannot see (a chance collision needs ~2^64 records). The set is split
//! into [`SHARDS`] immutable hash maps, each behind an `ArcSwap`: a reader loads one shard
//! (no lock, no allocation) and looks up; a writer copies only the shards a batch touches,
//! so an update costs a few hundred kilobytes at a million records, not the whole set.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;

/// Shards of the set; a power of two.
const SHARDS: usize = 256;

/// A keyed 128-bit digest of a `sid` or `sub`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct RecordKey([u32; 4]);

impl RecordKey {
    /// The digest of `id` under this process's secret keys.
    pub fn of(id: &str) -> RecordKey {
        static KEYS: OnceLock<(RandomState, RandomState)> = OnceLock::new();
        let (a, b) = KEYS.get_or_init(|| (RandomState::new(), RandomState::new()));
        let (x, y) = (a.hash_one(id), b.hash_one(id));
        RecordKey([x as u32, (x >> 32) as u32, y as u32, (y >> 32) as u32])
    }

    fn shard(&self) -> usize {
        self.0[0] as usize & (SHARDS - 1)
    }
}

impl std::hash::Hash for RecordKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Already uniformly random; the shard used the low bits of the first word.
        state.write_u64(u64::from(self.0[2]) | u64::from(self.0[3]) << 32);
    }
}

/// Hands the key's own bits to the map (they are a keyed hash already).
#[derive(Clone, Copy, Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Not reached: `RecordKey` writes one u64.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

impl BuildHasher for PassThrough {
    type Hasher = PassThrough;
    fn build_hasher(&self) -> PassThrough {
        PassThrough(0)
    }
}

/// What the set holds for a subject: tokens issued before `not_before` are revoked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cutoff {
    /// Unix seconds.
    pub not_before: u32,
    /// Unix seconds after which the record no longer matters.
    pub until: u32,
}

/// One shard: immutable once published.
#[derive(Clone)]
struct Shard {
    /// Revoked sessions → `until`.
    sessions: HashMap<RecordKey, u32, PassThrough>,
    /// Subjects → their latest cut-off.
    subjects: HashMap<RecordKey, Cutoff, PassThrough>,
    /// The earliest `until` held (u32::MAX when empty), so pruning skips shards without an
    /// expired record without scanning them.
    min_until: u32,
}

impl Default for Shard {
    fn default() -> Self {
        Shard {
            sessions: HashMap::default(),
            subjects: HashMap::default(),
            min_until: u32::MAX,
        }
    }
}

impl Shard {
    fn add(&mut self, change: &Change) {
        match *change {
            Change::Session { key, until } => {
                let slot = self.sessions.entry(key).or_insert(until);
                *slot = (*slot).max(until);
                self.min_until = self.min_until.min(*slot);
            }
            Change::Subject { key, cutoff } => {
                let slot = self.subjects.entry(key).or_insert(cutoff);
                slot.not_before = slot.not_before.max(cutoff.not_before);
                slot.until = slot.until.max(cutoff.until);
                self.min_until = self.min_until.min(slot.until);
            }
        }
    }

    fn prune(&mut self, now: u32) {
        if !self.expired(now) {
            return;
        }
        self.sessions.retain(|_, until| *until >= now);
        self.subjects.retain(|_, c| c.until >= now);
        // Tables never shrink by themselves: after a wave of logouts has expired, give the
        // memory back.
        if self.sessions.len() * 4 < self.sessions.capacity() {
            self.sessions.shrink_to_fit();
        }
        if self.subjects.len() * 4 < self.subjects.capacity() {
            self.subjects.shrink_to_fit();
        }
        self.min_until = self
            .sessions
            .values()
            .copied()
            .chain(self.subjects.values().map(|c| c.until))
            .min()
            .unwrap_or(u32::MAX);
    }

    fn expired(&self, now: u32) -> bool {
        self.min_until < now
    }
}

/// One record to add.
#[derive(Clone, Copy, Debug)]
pub enum Change {
    /// A revoked session.
    Session {
        /// Digest of the `sid`.
        key: RecordKey,
        /// Unix seconds after which it no longer matters.
        until: u32,
    },
    /// A subject cut-off.
    Subject {
        /// Digest of the `sub`.
        key: RecordKey,
        /// The cut-off.
        cutoff: Cutoff,
    },
}

impl Change {
    fn shard(&self) -> usize {
        match self {
            Change::Session { key, .. } | Change::Subject { key, .. } => key.shard(),
        }
    }
}

/// The sharded set. Reads never block; writes come from one feed reader at a time (the
/// caller serialises them).
pub struct RevokedSet {
    shards: Box<[ArcSwap<Shard>]>,
}

impl Default for RevokedSet {
    fn default() -> Self {
        RevokedSet {
            shards: (0..SHARDS).map(|_| ArcSwap::default()).collect(),
        }
    }
}

/// Records held, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Held {
    /// Revoked sessions.
    pub sessions: u64,
    /// Subjects with a cut-off.
    pub subjects: u64,
}

impl RevokedSet {
    /// `until` of a revoked session.
    #[inline]
    pub fn session(&self, key: &RecordKey) -> Option<u32> {
        self.shards[key.shard()].load().sessions.get(key).copied()
    }

    /// The cut-off of a subject.
    #[inline]
    pub fn subject(&self, key: &RecordKey) -> Option<Cutoff> {
        self.shards[key.shard()].load().subjects.get(key).copied()
    }

    /// Adds `changes`, dropping records expired at `now` from every shard it copies.
    pub fn apply(&self, changes: &[Change], now: u32) {
        let mut by_shard: Vec<Vec<&Change>> = vec![Vec::new(); SHARDS];
        for c in changes {
            by_shard[c.shard()].push(c);
        }
        for (slot, batch) in self.shards.iter().zip(by_shard) {
            if batch.is_empty() {
                continue;
            }
            let mut shard = Shard::clone(&slot.load());
            shard.prune(now);
            for c in batch {
                shard.add(c);
            }
            slot.store(Arc::new(shard));
        }
    }

    /// Replaces everything with `changes` (a snapshot).
    pub fn replace(&self, changes: &[Change]) {
        let mut shards: Vec<Shard> = vec![Shard::default(); SHARDS];
        for c in changes {
            shards[c.shard()].add(c);
        }
        for (slot, shard) in self.shards.iter().zip(shards) {
            slot.store(Arc::new(shard));
        }
    }

    /// Drops records that stopped mattering before `now`; copies only shards holding one.
    pub fn prune(&self, now: u32) {
        for slot in self.shards.iter() {
            let current = slot.load();
            if current.expired(now) {
                let mut shard = Shard::clone(&current);
                shard.prune(now);
                slot.store(Arc::new(shard));
            }
        }
    }

    /// Shares `other`'s records (a reload that replaced the feed settings keeps what is known).
    pub fn copy_from(&self, other: &RevokedSet) {
        for (slot, from) in self.shards.iter().zip(other.shards.iter()) {
            slot.store(from.load_full());
        }
    }

    /// Bytes the shards' tables occupy (slots of key and value plus a control byte each, at
    /// their current capacity).
    #[cfg(test)]
    pub fn table_bytes(&self) -> usize {
        let slot = |k: usize, v: usize| k + v + 1;
        self.shards
            .iter()
            .map(|s| {
                let s = s.load();
                s.sessions.capacity() * slot(size_of::<RecordKey>(), size_of::<u32>())
                    + s.subjects.capacity() * slot(size_of::<RecordKey>(), size_of::<Cutoff>())
            })
            .sum()
    }

    /// Records held now.
    pub fn held(&self) -> Held {
        self.shards.iter().fold(Held::default(), |h, s| {
            let s = s.load();
            Held {
                sessions: h.sessions + s.sessions.len() as u64,
                subjects: h.subjects + s.subjects.len() as u64,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(id: &str, until: u32) -> Change {
        Change::Session {
            key: RecordKey::of(id),
            until,
        }
    }

    #[test]
    fn keys_are_stable_and_distinct() {
        assert_eq!(RecordKey::of("s-1"), RecordKey::of("s-1"));
        assert_ne!(RecordKey::of("s-1"), RecordKey::of("s-2"));
        assert_ne!(RecordKey::of(""), RecordKey::of("\0"));
    }

    #[test]
    fn apply_replace_prune() {
        let set = RevokedSet::default();
        set.apply(&[session("a", 100), session("b", 200)], 50);
        assert_eq!(set.session(&RecordKey::of("a")), Some(100));
        assert_eq!(set.session(&RecordKey::of("c")), None);
        // A later record for the same session keeps the later `until`.
        set.apply(&[session("a", 90)], 50);
        assert_eq!(set.session(&RecordKey::of("a")), Some(100));
        let sub = RecordKey::of("user-1");
        for (nb, until) in [(10, 300), (5, 250), (20, 400)] {
            set.apply(
                &[Change::Subject {
                    key: sub,
                    cutoff: Cutoff {
                        not_before: nb,
                        until,
                    },
                }],
                50,
            );
        }
        assert_eq!(
            set.subject(&sub),
            Some(Cutoff {
                not_before: 20,
                until: 400
            })
        );
        // A subject record never answers for a session of the same text, and vice versa.
        assert_eq!(set.session(&sub), None);
        assert_eq!(set.subject(&RecordKey::of("a")), None);
        assert_eq!(
            set.held(),
            Held {
                sessions: 2,
                subjects: 1
            }
        );
        set.prune(150);
        assert_eq!(set.session(&RecordKey::of("a")), None);
        assert_eq!(set.session(&RecordKey::of("b")), Some(200));
        set.replace(&[session("z", 500)]);
        assert_eq!(
            set.held(),
            Held {
                sessions: 1,
                subjects: 0
            }
        );
        let copy = RevokedSet::default();
        copy.copy_from(&set);
        assert_eq!(copy.session(&RecordKey::of("z")), Some(500));
    }

    #[test]
    fn many_records_spread_over_shards() {
        let set = RevokedSet::default();
        let changes: Vec<Change> = (0..20_000)
            .map(|i| session(&format!("sid-{i}"), 1000))
            .collect();
        set.replace(&changes);
        assert_eq!(set.held().sessions, 20_000);
        let busiest = set
            .shards
            .iter()
            .map(|s| s.load().sessions.len())
            .max()
            .unwrap_or(0);
        assert!(busiest < 200, "uneven shards: {busiest}");
        assert!((0..20_000).all(|i| set.session(&RecordKey::of(&format!("sid-{i}"))).is_some()));
        assert!((0..1000).all(|i| set.session(&RecordKey::of(&format!("other-{i}"))).is_none()));
    }

    /// The documented bound: 64 MiB for 1,000,000 revoked sessions, so at most 67 bytes per
    /// record; the tables take about 44 (20-byte slots, 7/8 load, power-of-two growth).
    #[test]
    fn memory_per_record_is_bounded() {
        let n = 250_000;
        let set = RevokedSet::default();
        let changes: Vec<Change> = (0..n).map(|i| session(&format!("s{i}"), 1)).collect();
        set.replace(&changes);
        let per_record = set.table_bytes() / n;
        assert!(per_record <= 60, "{per_record} bytes per record");
        assert!(size_of::<(RecordKey, u32)>() == 20);
    }
}
