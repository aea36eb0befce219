//! Concurrent-request caps per key (nginx `limit_conn` style), in a fixed amount of memory.
//!
//! The counters form a count-min sketch: two rows of `AtomicU32`, each key counted in one
//! counter of each row, chosen by different bits of its hash. Other keys that land on the same
//! counter inflate it, never deflate it, so the smaller of the key's two counters is an
//! estimate that is never below its true in-flight count. A key can therefore be refused
//! early, but only when it collides with busy keys in both rows; it is never let through over
//! its max. The hash is keyed per process ([`super::rate::key_hash`]), so clients cannot aim
//! those collisions.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

const MIN_CAPACITY: usize = 64;
/// 64 Mi counters per row (512 MiB): beyond any sane setting; keeps `next_power_of_two` in range.
const MAX_CAPACITY: usize = 1 << 26;

/// Bounded per-key counters of requests in flight, shared by every in-flight limit.
pub(crate) struct InflightTable {
    /// Row 0, then row 1, `mask + 1` counters each.
    counters: Box<[AtomicU32]>,
    mask: usize,
}

impl fmt::Debug for InflightTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InflightTable")
            .field("capacity", &(self.mask + 1))
            .finish_non_exhaustive()
    }
}

impl InflightTable {
    /// A table with `capacity` counters per row (rounded up to a power of two, min 64).
    pub(crate) fn new(capacity: usize) -> InflightTable {
        let per_row = capacity
            .clamp(MIN_CAPACITY, MAX_CAPACITY)
            .next_power_of_two();
        InflightTable {
            counters: (0..2 * per_row).map(|_| AtomicU32::new(0)).collect(),
            mask: per_row - 1,
        }
    }

    #[cfg(test)]
    /// Bytes of state the table holds (fixed at creation): 8 per counter pair.
    pub(crate) fn memory_bytes(&self) -> usize {
        std::mem::size_of_val::<[AtomicU32]>(&self.counters)
    }

    /// Takes one slot for `key` when fewer than `max` requests of it are in flight; refused,
    /// it answers the (estimated) in-flight count, at least `max`.
    pub(crate) fn acquire(self: &Arc<Self>, key: u64, max: u32) -> Result<InflightGuard, u32> {
        let (first, second) = self.counters_of(key);
        // Count ourselves in, then look: checking first and counting after would let two
        // requests both see max - 1. All SeqCst: among requests admitted together, the one
        // whose second increment came last sees every other one in both rows, so at most
        // `max` are admitted. One whose second increment is among the first `max` always is.
        self.counters[first].fetch_add(1, Ordering::SeqCst);
        let in_second = self.counters[second]
            .fetch_add(1, Ordering::SeqCst)
            .saturating_add(1);
        let in_first = self.counters[first].load(Ordering::SeqCst);
        let estimate = in_first.min(in_second);
        if estimate > max {
            self.release(first, second);
            return Err(estimate - 1);
        }
        Ok(InflightGuard {
            table: Arc::clone(self),
            key,
        })
    }

    /// The key's counter in each row: low bits for row 0, bits 32 and up for row 1, so keys
    /// sharing one counter rarely share the other.
    fn counters_of(&self, key: u64) -> (usize, usize) {
        let row = self.mask + 1;
        (
            key as usize & self.mask,
            row + ((key >> 32) as usize & self.mask),
        )
    }

    fn release(&self, first: usize, second: usize) {
        self.counters[second].fetch_sub(1, Ordering::SeqCst);
        self.counters[first].fetch_sub(1, Ordering::SeqCst);
    }
}

/// One request in flight; releases its slot when dropped (request finished, even on error paths).
#[must_use = "the slot is released as soon as the guard is dropped"]
pub(crate) struct InflightGuard {
    table: Arc<InflightTable>,
    key: u64,
}

impl fmt::Debug for InflightGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InflightGuard")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        let (first, second) = self.table.counters_of(self.key);
        self.table.release(first, second);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Barrier;

    fn all_zero(table: &InflightTable) -> bool {
        table.counters.iter().all(|c| c.load(Ordering::SeqCst) == 0)
    }

    /// A key whose row-0 counter is `first` and row-1 counter is `second`.
    fn crafted(first: u64, second: u64) -> u64 {
        (second << 32) | first
    }

    #[test]
    fn guards_and_memory() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<InflightGuard>();
        send_sync::<InflightTable>();
        assert_eq!(InflightTable::new(0).memory_bytes(), 2 * 64 * 4);
        assert_eq!(InflightTable::new(1000).memory_bytes(), 2 * 1024 * 4);
        assert_eq!(
            InflightTable::new(usize::MAX).memory_bytes(),
            2 * MAX_CAPACITY * 4
        );
    }

    #[test]
    fn caps_a_key_and_drop_releases() {
        let table = Arc::new(InflightTable::new(64));
        let key = super::super::rate::key_hash(1, b"client");
        let first = table.acquire(key, 2);
        let second = table.acquire(key, 2);
        assert!(first.is_ok() && second.is_ok());
        assert_eq!(table.acquire(key, 2).err(), Some(2));
        assert_eq!(table.acquire(key, 1).err(), Some(2));
        assert_eq!(table.acquire(key, 0).err(), Some(2));
        drop(first);
        let third = table.acquire(key, 2);
        assert!(third.is_ok());
        assert_eq!(table.acquire(key, 2).err(), Some(2));
        drop((second, third));
        assert!(all_zero(&table));
        assert_eq!(table.acquire(key, 0).err(), Some(0));
        assert!(all_zero(&table));
    }

    #[test]
    fn collisions_in_one_row_do_not_refuse_and_in_both_refuse_early() {
        let table = Arc::new(InflightTable::new(64));
        let busy = crafted(3, 7);
        let held: Vec<_> = (0..4).map(|_| table.acquire(busy, 4)).collect();
        assert!(held.iter().all(Result::is_ok));
        // Shares row 0 only: its own count still decides.
        let neighbour = crafted(3, 8);
        let one = table.acquire(neighbour, 1);
        assert!(one.is_ok());
        assert_eq!(table.acquire(neighbour, 1).err(), Some(1));
        // Shares both counters with the busy key: refused early (an over-estimate, by design).
        assert_eq!(table.acquire(crafted(3 + 64, 7 + 64), 4).err(), Some(4));
        drop((held, one));
        assert!(all_zero(&table));
    }

    #[test]
    fn concurrent_acquires_admit_exactly_max() {
        let table = Arc::new(InflightTable::new(64));
        let key = super::super::rate::key_hash(7, b"hot");
        for _ in 0..20 {
            let start = Barrier::new(100);
            let results: Vec<Result<InflightGuard, u32>> = std::thread::scope(|scope| {
                let handles: Vec<_> = (0..100)
                    .map(|_| {
                        scope.spawn(|| {
                            start.wait();
                            table.acquire(key, 5)
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("acquire thread"))
                    .collect()
            });
            assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 5);
            assert!(results
                .iter()
                .all(|r| r.as_ref().err().is_none_or(|n| *n >= 5)));
            drop(results);
            assert!(all_zero(&table));
        }
    }
}
