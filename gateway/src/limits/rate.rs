//! Request rates: a fixed-size, lock-free GCRA table with nginx `limit_req ... burst=N nodelay`
//! semantics.
//!
//! GCRA (the generic cell rate algorithm) keeps one number per key, its theoretical arrival
//! time (TAT): the moment the key's bucket would be full again. A request at `now` is allowed
//! when `max(TAT, now) - now <= tau` (tau = burst × interval) and then pushes the TAT one
//! interval further. A key whose TAT is in the past is indistinguishable from a key never
//! seen, so forgetting it loses nothing: this is what lets a fixed table serve any number of
//! clients.
//!
//! The table is a flat array of `AtomicU64` grouped in sets of [`WAYS`] slots (one 64-byte
//! cache line). A slot packs a 24-bit fingerprint of the key (never 0, so 0 is an empty slot)
//! and a 40-bit TAT counted in 100 µs ticks since the table was created. Every update is a
//! compare-exchange of that one word, so two requests of one key cannot both take its last
//! token, and the request path never locks, allocates or grows anything.

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const MAX_COUNT: u32 = 1_000_000;
/// Slots per set: 8 × 8 bytes is one cache line, so a lookup touches one line.
const WAYS: usize = 8;
const MIN_CAPACITY: usize = 64;
/// 64 Mi keys (512 MiB): far beyond any sane setting, and keeps `next_power_of_two` in range.
const MAX_CAPACITY: usize = 1 << 26;
const TICK_NANOS: u64 = 100_000;
const TICKS_PER_SEC: u64 = 1_000_000_000 / TICK_NANOS;
const TAT_BITS: u32 = 40;
/// 2^40 ticks of 100 µs is about 3.48 years. Past that much uptime every stored TAT is in the
/// past, so every request is allowed (the limit fails open instead of wrapping around and
/// refusing keys at random); restarting or upgrading the process starts a new table.
const TAT_MAX: u64 = (1 << TAT_BITS) - 1;
const FINGERPRINT_BITS: u32 = 24;
/// Intervals are kept in ticks with 16 fractional bits (1.5 ns), so rates that are not a whole
/// number of ticks apart (3000r/s is 3.33 ticks) are still honoured on average.
const FRAC_BITS: u32 = 16;
const FRAC_MASK: u64 = (1 << FRAC_BITS) - 1;
const ONE_TICK: u64 = 1 << FRAC_BITS;

/// A rate: `count` requests per `period`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// Requests allowed per period (1 to 1 000 000 when parsed).
    pub count: u32,
    /// The period: one second, minute or hour when parsed.
    pub period: Duration,
}

impl Rate {
    /// Parses nginx's syntax, `10r/s`, `600r/m`, or `100r/h`, with a count of 1 to 1 000 000.
    pub(crate) fn parse(s: &str) -> Result<Rate, String> {
        let invalid = || format!("invalid rate {s:?}: expected e.g. 10r/s, 600r/m or 100r/h");
        let (count, unit) = s.trim().split_once("r/").ok_or_else(invalid)?;
        let seconds = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            _ => return Err(invalid()),
        };
        // `u32::from_str` would also take `+10`.
        if count.is_empty() || !count.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid());
        }
        let count = count
            .parse::<u32>()
            .ok()
            .filter(|c| (1..=MAX_COUNT).contains(c))
            .ok_or_else(|| {
                format!("invalid rate {s:?}: the count must be between 1 and {MAX_COUNT}")
            })?;
        Ok(Rate {
            count,
            period: Duration::from_secs(seconds),
        })
    }

    /// Time between two requests at the steady rate (a count of 0 counts as 1).
    pub(crate) fn interval(&self) -> Duration {
        self.period / self.count.max(1)
    }

    /// The interval in ticks with [`FRAC_BITS`] fractional bits, at least 1.
    fn interval_fixed(&self) -> u64 {
        let nanos = u64::try_from(self.interval().as_nanos()).unwrap_or(u64::MAX);
        (nanos.saturating_mul(ONE_TICK) / TICK_NANOS).max(1)
    }
}

/// The answer for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Verdict {
    /// Whether the request may go on.
    pub allowed: bool,
    /// Requests that could still be made right now without being refused.
    pub remaining: u32,
    /// When refused: how long until one request would be allowed (zero when allowed).
    pub retry_after: Duration,
    /// How long until the bucket is full again.
    pub reset: Duration,
}

/// A bounded table of per-key GCRA states, shared by every limit of a generation.
pub(crate) struct RateTable {
    slots: Box<[AtomicU64]>,
    set_mask: usize,
    epoch: Instant,
}

impl fmt::Debug for RateTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateTable")
            .field("capacity", &self.slots.len())
            .finish_non_exhaustive()
    }
}

impl RateTable {
    /// A table that remembers at most `capacity` keys (rounded up to a power of two, min 64).
    pub(crate) fn new(capacity: usize) -> RateTable {
        let capacity = capacity
            .clamp(MIN_CAPACITY, MAX_CAPACITY)
            .next_power_of_two();
        RateTable {
            slots: (0..capacity).map(|_| AtomicU64::new(0)).collect(),
            set_mask: capacity / WAYS - 1,
            epoch: Instant::now(),
        }
    }

    #[cfg(test)]
    /// Bytes of state the table holds (fixed at creation): 8 per key it can remember.
    pub(crate) fn memory_bytes(&self) -> usize {
        std::mem::size_of_val::<[AtomicU64]>(&self.slots)
    }

    /// Accounts one request of `key` against `rate` with `burst` extra requests allowed at once
    /// (nginx `limit_req ... burst=N nodelay`: burst 0 is exactly one request per interval;
    /// burst B is B+1 requests at once, then one per interval).
    ///
    /// `key` comes from [`key_hash`]: its low bits choose the set and its high bits are the
    /// fingerprint. Two keys of one set with the same fingerprint (about 1 in 2 million per
    /// key) share a bucket, which can only make their limit stricter.
    pub(crate) fn check(&self, key: u64, rate: Rate, burst: u32, now: Instant) -> Verdict {
        let now = self.ticks(now);
        let interval = rate.interval_fixed();
        let mut tolerance = interval.saturating_mul(u64::from(burst));
        if interval < ONE_TICK {
            // The clock reads whole ticks, so requests within one tick look simultaneous: a
            // rate of more than one request per tick needs that tick of tolerance to be reached.
            tolerance = tolerance.max(ONE_TICK);
        }
        let fingerprint = fingerprint(key);
        // Masked by the set count, so the set is always inside the table.
        let first = (key as usize & self.set_mask) * WAYS;
        let set = &self.slots[first..first + WAYS];
        loop {
            let (way, word) = lookup(set, fingerprint);
            // An absent key has a full bucket: the same as a TAT in the past.
            let tat = if word >> TAT_BITS == fingerprint {
                word & TAT_MAX
            } else {
                0
            };
            let start = tat.max(now);
            let wait = (start - now) << FRAC_BITS;
            if wait > tolerance {
                return Verdict {
                    allowed: false,
                    remaining: 0,
                    // Whole ticks, so a client retrying after exactly this long is allowed.
                    retry_after: ticks_to_duration((wait - tolerance).div_ceil(ONE_TICK)),
                    reset: ticks_to_duration(start - now),
                };
            }
            let tat = start.saturating_add(step(interval, key)).min(TAT_MAX);
            let after = tat.saturating_sub(now);
            // Each further request would take one interval of the slack left in the window.
            let remaining = tolerance
                .checked_sub(after << FRAC_BITS)
                .map_or(0, |slack| (slack / interval).saturating_add(1));
            let packed = (fingerprint << TAT_BITS) | tat;
            if set[way]
                .compare_exchange(word, packed, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return Verdict {
                    allowed: true,
                    remaining: u32::try_from(remaining).unwrap_or(u32::MAX),
                    retry_after: Duration::ZERO,
                    reset: ticks_to_duration(after),
                };
            }
            // Another request changed the slot first: decide again on what it wrote.
        }
    }

    /// Gives back one request of `key` that [`RateTable::check`] allowed, when a later limit
    /// refused the same request (nginx counts a request only when every `limit_req` passes).
    pub(crate) fn refund(&self, key: u64, rate: Rate) {
        let fingerprint = fingerprint(key);
        let first = (key as usize & self.set_mask) * WAYS;
        let set = &self.slots[first..first + WAYS];
        // The step taken was this or one tick more (dithered); the smaller never over-refunds.
        let back = rate.interval_fixed() >> FRAC_BITS;
        loop {
            let (way, word) = lookup(set, fingerprint);
            if word >> TAT_BITS != fingerprint || back == 0 {
                return;
            }
            let tat = (word & TAT_MAX).saturating_sub(back);
            let packed = (fingerprint << TAT_BITS) | tat;
            if set[way]
                .compare_exchange(word, packed, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return;
            }
        }
    }

    /// Ticks since the table was created (0 for an earlier instant).
    fn ticks(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.epoch);
        since
            .as_secs()
            .saturating_mul(TICKS_PER_SEC)
            .saturating_add(u64::from(since.subsec_nanos()) / TICK_NANOS)
    }
}

/// The way holding `fingerprint` or, when there is none, the way to take over: the smallest
/// TAT, which is a free way (TAT in the past) whenever the set has one. Otherwise it is the
/// key closest to a full bucket: when more keys are active than the table holds, the least
/// limited ones lose their state first (they regain their burst early) while memory stays at
/// 8 bytes per slot. Choosing by TAT alone, not by the caller's clock, makes two first
/// requests of one key race for the same way, so the compare-exchange lets only one in.
fn lookup(set: &[AtomicU64], fingerprint: u64) -> (usize, u64) {
    let mut victim: Option<(usize, u64)> = None;
    for (way, slot) in set.iter().enumerate() {
        let word = slot.load(Ordering::Acquire);
        if word >> TAT_BITS == fingerprint {
            return (way, word);
        }
        if victim.is_none_or(|(_, oldest)| word & TAT_MAX < oldest & TAT_MAX) {
            victim = Some((way, word));
        }
    }
    // Sets are never empty.
    victim.unwrap_or((0, 0))
}

/// The key's fingerprint: 24 high bits of its hash (the set index uses the low bits), never 0.
fn fingerprint(key: u64) -> u64 {
    (key >> (64 - FINGERPRINT_BITS)).max(1)
}

/// One interval in whole ticks, its fraction rounded up with that probability: unbiased, where
/// always rounding one way would turn 3000r/s into 2500r/s or 3333r/s, and 1 000 000r/s into
/// 10 000r/s or no limit at all.
fn step(interval: u64, key: u64) -> u64 {
    let fraction = interval & FRAC_MASK;
    let round_up = fraction != 0 && dither(key) & FRAC_MASK < fraction;
    (interval >> FRAC_BITS) + u64::from(round_up)
}

/// Pseudo-random bits that differ on every call, even for one key at one instant: SplitMix64
/// on a per-thread Weyl sequence (no lock, no shared cache line).
fn dither(key: u64) -> u64 {
    thread_local! {
        static STATE: Cell<u64> = const { Cell::new(0) };
    }
    let state = STATE.with(|state| {
        let next = state.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        state.set(next);
        next
    });
    mix(state ^ key)
}

/// SplitMix64's finaliser: spreads every input bit over the output.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn ticks_to_duration(ticks: u64) -> Duration {
    Duration::from_nanos(ticks.saturating_mul(TICK_NANOS))
}

/// Hashes a limit's id and the key's bytes with a per-process random key (so clients cannot aim
/// collisions at one set or fingerprint).
pub(crate) fn key_hash(limit_id: u32, key: &[u8]) -> u64 {
    // One `RandomState` for the process: each `RandomState::new()` has different keys.
    static SEED: OnceLock<RandomState> = OnceLock::new();
    let mut hasher = SEED.get_or_init(RandomState::new).build_hasher();
    // The id has a fixed width, so (id, key) pairs cannot run into each other.
    hasher.write_u32(limit_id);
    hasher.write(key);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;
    use std::sync::Barrier;

    const TICK: Duration = Duration::from_micros(100);

    fn per_second(count: u32) -> Rate {
        Rate {
            count,
            period: Duration::from_secs(1),
        }
    }

    /// A key in set `set` with fingerprint `fingerprint`.
    fn crafted(set: u64, fingerprint: u64) -> u64 {
        (fingerprint << (64 - FINGERPRINT_BITS)) | set
    }

    #[test]
    fn parses_nginx_rates() {
        let rate = |count, secs| Rate {
            count,
            period: Duration::from_secs(secs),
        };
        assert_eq!(Rate::parse("10r/s"), Ok(rate(10, 1)));
        assert_eq!(Rate::parse("600r/m"), Ok(rate(600, 60)));
        assert_eq!(Rate::parse(" 100r/h "), Ok(rate(100, 3600)));
        assert_eq!(Rate::parse("1r/s"), Ok(rate(1, 1)));
        assert_eq!(Rate::parse("1000000r/s"), Ok(rate(1_000_000, 1)));
        assert_eq!(
            Rate::parse("10r/s").map(|r| r.interval()),
            Ok(Duration::from_millis(100))
        );
        assert_eq!(
            Rate::parse("600r/m").map(|r| r.interval()),
            Ok(Duration::from_millis(100))
        );
        assert_eq!(
            Rate::parse("3r/s").map(|r| r.interval()),
            Ok(Duration::from_nanos(333_333_333))
        );
    }

    #[test]
    fn refuses_malformed_rates_with_clear_messages() {
        for bad in [
            "", "x", "10", "10r", "10r/", "10r/d", "10r/S", "10 r/s", "r/s", "+10r/s", "-1r/s",
            "1.5r/s", "10/s", "10r/s/m", "10r/sec",
        ] {
            assert_eq!(
                Rate::parse(bad),
                Err(format!(
                    "invalid rate {bad:?}: expected e.g. 10r/s, 600r/m or 100r/h"
                )),
                "{bad:?}"
            );
        }
        for bad in ["0r/s", "1000001r/m", "99999999999999r/h"] {
            assert_eq!(
                Rate::parse(bad),
                Err(format!(
                    "invalid rate {bad:?}: the count must be between 1 and 1000000"
                )),
                "{bad:?}"
            );
        }
        assert_eq!(
            Rate::parse("x"),
            Err(r#"invalid rate "x": expected e.g. 10r/s, 600r/m or 100r/h"#.to_string())
        );
    }

    #[test]
    fn a_refund_gives_back_exactly_one_request() {
        let table = RateTable::new(64);
        let rate = per_second(10);
        let t0 = Instant::now();
        let key = key_hash(2, b"client");
        assert!(table.check(key, rate, 1, t0).allowed);
        assert!(table.check(key, rate, 1, t0).allowed);
        assert!(!table.check(key, rate, 1, t0).allowed);
        table.refund(key, rate);
        assert!(table.check(key, rate, 1, t0).allowed);
        assert!(!table.check(key, rate, 1, t0).allowed);
        // An unknown key has nothing to give back.
        table.refund(key_hash(2, b"other"), rate);
        assert!(table.check(key_hash(2, b"other"), rate, 0, t0).allowed);
    }

    #[test]
    fn burst_zero_allows_one_per_interval() {
        let table = RateTable::new(64);
        let rate = per_second(10);
        let t0 = Instant::now();
        let key = key_hash(1, b"client");
        assert_eq!(
            table.check(key, rate, 0, t0),
            Verdict {
                allowed: true,
                remaining: 0,
                retry_after: Duration::ZERO,
                reset: Duration::from_millis(100),
            }
        );
        assert_eq!(
            table.check(key, rate, 0, t0),
            Verdict {
                allowed: false,
                remaining: 0,
                retry_after: Duration::from_millis(100),
                reset: Duration::from_millis(100),
            }
        );
        let later = t0 + Duration::from_millis(40);
        let refused = table.check(key, rate, 0, later);
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after, Duration::from_millis(60));
        assert_eq!(refused.reset, Duration::from_millis(60));
        // After one interval: exactly one more.
        let next = t0 + rate.interval();
        assert!(table.check(key, rate, 0, next).allowed);
        assert!(!table.check(key, rate, 0, next).allowed);
    }

    #[test]
    fn burst_allows_burst_plus_one_at_once_then_one_per_interval() {
        let table = RateTable::new(64);
        let rate = per_second(10);
        let t0 = Instant::now();
        let key = key_hash(1, b"client");
        for i in 0..6u32 {
            assert_eq!(
                table.check(key, rate, 5, t0),
                Verdict {
                    allowed: true,
                    remaining: 5 - i,
                    retry_after: Duration::ZERO,
                    reset: Duration::from_millis(100 * u64::from(i + 1)),
                },
                "request {i}"
            );
        }
        assert_eq!(
            table.check(key, rate, 5, t0),
            Verdict {
                allowed: false,
                remaining: 0,
                retry_after: Duration::from_millis(100),
                reset: Duration::from_millis(600),
            }
        );
        // One interval refills one request, not more.
        let t1 = t0 + Duration::from_millis(100);
        let one = table.check(key, rate, 5, t1);
        assert_eq!((one.allowed, one.remaining), (true, 0));
        assert_eq!(one.reset, Duration::from_millis(600));
        assert!(!table.check(key, rate, 5, t1).allowed);
        // Half the bucket back after three intervals, all of it after six.
        let t4 = t1 + Duration::from_millis(300);
        assert_eq!(table.check(key, rate, 5, t4).remaining, 2);
        let full = t4 + Duration::from_millis(600);
        assert_eq!(table.check(key, rate, 5, full).remaining, 5);
    }

    #[test]
    fn retry_after_is_exact_to_the_tick_and_honoured() {
        let hourly = Rate {
            count: 100,
            period: Duration::from_secs(3600),
        };
        let minutely = Rate {
            count: 600,
            period: Duration::from_secs(60),
        };
        for (rate, burst) in [
            (per_second(10), 0),
            (minutely, 3),
            (hourly, 2),
            (per_second(400), 4),
        ] {
            let table = RateTable::new(64);
            let key = key_hash(2, b"client");
            let t0 = Instant::now();
            for _ in 0..=burst {
                assert!(table.check(key, rate, burst, t0).allowed);
            }
            // The oldest of the burst+1 requests leaves the window one interval after t0.
            let refused = table.check(key, rate, burst, t0);
            assert!(!refused.allowed);
            assert_eq!(refused.retry_after, rate.interval(), "{rate:?}");
            // At an odd offset the answer is within a tick, and waiting exactly that long works.
            let offset = rate.interval() / 3 + Duration::from_micros(37);
            let at = t0 + offset;
            let refused = table.check(key, rate, burst, at);
            assert!(!refused.allowed);
            let ideal = rate.interval() - offset;
            assert!(
                refused.retry_after.abs_diff(ideal) <= TICK,
                "{rate:?}: {:?} vs {ideal:?}",
                refused.retry_after
            );
            let allowed_at = |t| table.check(key, rate, burst, t).allowed;
            assert!(!allowed_at(at + refused.retry_after - TICK));
            assert!(allowed_at(at + refused.retry_after));
        }
    }

    #[test]
    fn keys_are_independent() {
        let table = RateTable::new(64);
        let rate = per_second(1);
        let t0 = Instant::now();
        let (a, b) = (key_hash(1, b"a"), key_hash(1, b"b"));
        assert!(table.check(a, rate, 1, t0).allowed);
        assert!(table.check(a, rate, 1, t0).allowed);
        assert!(!table.check(a, rate, 1, t0).allowed);
        assert_eq!(table.check(b, rate, 1, t0).remaining, 1);
        // Same bytes under another limit id is another key.
        assert_ne!(key_hash(1, b"a"), key_hash(2, b"a"));
        assert_eq!(key_hash(1, b"a"), a);
        assert!(table.check(key_hash(2, b"a"), rate, 1, t0).allowed);
        // Same set and fingerprint scheme, different fingerprints: still apart.
        let (c, d) = (crafted(3, 10), crafted(3, 11));
        assert!(table.check(c, rate, 0, t0).allowed);
        assert!(table.check(d, rate, 0, t0).allowed);
        assert!(!table.check(c, rate, 0, t0).allowed);
    }

    #[test]
    fn capacity_is_rounded_and_memory_is_fixed() {
        assert_eq!(RateTable::new(0).memory_bytes(), 64 * 8);
        assert_eq!(RateTable::new(100).memory_bytes(), 128 * 8);
        assert_eq!(RateTable::new(1 << 20).memory_bytes(), 8 << 20);
        assert_eq!(RateTable::new(usize::MAX).memory_bytes(), 8 * MAX_CAPACITY);
    }

    #[test]
    fn a_flood_of_keys_keeps_memory_and_the_table_usable() {
        let table = RateTable::new(64);
        let bytes = table.memory_bytes();
        let rate = Rate {
            count: 1,
            period: Duration::from_secs(3600),
        };
        let t0 = Instant::now();
        for i in 0..640u32 {
            let key = key_hash(1, &i.to_be_bytes());
            assert!(table.check(key, rate, 3, t0).allowed);
        }
        assert_eq!(table.memory_bytes(), bytes);
        let fresh = key_hash(1, b"fresh");
        for i in 0..4 {
            let verdict = table.check(fresh, rate, 3, t0);
            assert_eq!((verdict.allowed, verdict.remaining), (true, 3 - i));
        }
        assert!(!table.check(fresh, rate, 3, t0).allowed);
    }

    #[test]
    fn eviction_takes_free_ways_first_then_the_fullest_bucket() {
        let table = RateTable::new(64);
        let rate = per_second(10);
        let t0 = Instant::now();
        // Eight keys fill set 5; key f made f requests, so its TAT is f intervals ahead.
        for f in 1..=8u64 {
            for _ in 0..f {
                assert!(table.check(crafted(5, f), rate, 20, t0).allowed);
            }
        }
        // At t0 + 4 intervals, keys 1 to 4 are back to full buckets: their ways are free.
        let t4 = t0 + 4 * rate.interval();
        for f in 9..=12 {
            assert!(table.check(crafted(5, f), rate, 20, t4).allowed);
        }
        for f in 5..=8u64 {
            // f requests at t0 and one at t4: f - 3 intervals ahead of t4.
            let remaining = table.check(crafted(5, f), rate, 20, t4).remaining;
            assert_eq!(
                u64::from(remaining),
                20 - (f - 3) + 1,
                "key {f} kept its state"
            );
        }
        // The set is full of live keys: a new one evicts the smallest TAT, key 9's (1 request
        // at t4, so one interval ahead), not key 8's.
        assert!(table.check(crafted(5, 13), rate, 20, t4).allowed);
        assert_eq!(table.check(crafted(5, 9), rate, 20, t4).remaining, 20);
        assert_eq!(table.check(crafted(5, 8), rate, 20, t4).remaining, 15);
    }

    #[test]
    fn concurrent_requests_of_one_key_take_exactly_the_burst() {
        let table = RateTable::new(64);
        let rate = Rate {
            count: 1,
            period: Duration::from_secs(3600),
        };
        let t0 = Instant::now();
        let key = key_hash(9, b"hot");
        let allowed = AtomicU32::new(0);
        let start = Barrier::new(8);
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    start.wait();
                    for _ in 0..50 {
                        if table.check(key, rate, 99, t0).allowed {
                            allowed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(allowed.load(Ordering::Relaxed), 100);
    }

    #[test]
    fn fractional_intervals_are_honoured_on_average() {
        // 3000r/s is 3.33 ticks apart: within 1 % over a second. 1 000 000r/s is a hundredth
        // of a tick, so a key's TAT moves one tick every ~100 requests, at random: over 100
        // ticks the count varies by about 10 %, over 1000 by about 3 %.
        for (count, every, over, margin) in [
            (
                3000,
                Duration::from_micros(10),
                Duration::from_secs(1),
                0.01,
            ),
            (
                1_000_000,
                Duration::from_nanos(500),
                Duration::from_millis(100),
                0.1,
            ),
        ] {
            let table = RateTable::new(64);
            let rate = per_second(count);
            let key = crafted(1, 0xabcdef);
            let t0 = Instant::now();
            let mut allowed = 0u64;
            let mut at = Duration::ZERO;
            while at < over {
                allowed += u64::from(table.check(key, rate, 0, t0 + at).allowed);
                at += every;
            }
            let expected = u64::from(count) * over.as_micros() as u64 / 1_000_000;
            let error = allowed.abs_diff(expected) as f64 / expected as f64;
            assert!(
                error < margin,
                "{count}r/s: {allowed} allowed, {expected} expected"
            );
        }
    }

    #[test]
    fn times_before_creation_and_zero_rates_do_not_panic() {
        let table = RateTable::new(64);
        let key = key_hash(1, b"k");
        let earlier = Instant::now()
            .checked_sub(Duration::from_secs(1))
            .unwrap_or_else(Instant::now);
        assert!(table.check(key, per_second(1), 0, earlier).allowed);
        let zero = Rate {
            count: 0,
            period: Duration::ZERO,
        };
        assert_eq!(zero.interval(), Duration::ZERO);
        assert!(
            table
                .check(key_hash(1, b"z"), zero, 0, Instant::now())
                .allowed
        );
        let huge = Rate {
            count: 1,
            period: Duration::MAX,
        };
        let now = Instant::now();
        assert!(table.check(key_hash(1, b"h"), huge, u32::MAX, now).allowed);
        assert!(table.check(key_hash(1, b"h"), huge, u32::MAX, now).allowed);
    }
}
