//! The in-memory counter store, for a single instance.
//!
//! Memory stays bounded: every key is indexed by the end of its window, and
//! keys whose window is over are swept (a bounded number by every batch,
//! [`SWEEP_PER_CALL`], the rest by a periodic task in `main`, in chunks);
//! one whose window is over reads as absent until then. A hard cap on live keys protects against a flood of distinct
//! values inside one long window; when it is reached the store answers with
//! an error, which the service reports as UNAVAILABLE so the caller's
//! failure mode decides. The cap is for the whole process: once it is
//! reached every call that needs a new counter fails, whichever limit it
//! is for, so a full store is reported by [`MemoryBackend::check`] (and so
//! by `/healthcheck`) rather than left to be found in `backend_errors`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Mutex, MutexGuard};

use sha2::{Digest, Sha256};

use super::{BackendError, Increment, Refuses};

/// A counter key as the store holds it: its SHA-256. Keys run to kilobytes
/// (16 entries of up to 128 bytes each, and the store keeps each twice),
/// so a million live counters of client-chosen values would otherwise
/// hold gigabytes; 32 bytes each keep the cap a bound on memory too.
type KeyDigest = [u8; 32];

fn digest(key: &str) -> KeyDigest {
    Sha256::digest(key.as_bytes()).into()
}

/// Seconds after a call was refused for lack of room during which
/// [`MemoryBackend::check`] still reports the store full: a store kept
/// topped up by a flood (one new counter per freed slot) is seldom at the
/// cap at the very moment of a health check, yet refuses nearly every new
/// counter.
pub const FULL_REPORTED_FOR_SECONDS: i64 = 10;

/// A refused call makes [`MemoryBackend::check`] report the store full
/// only when at most `1 / NEARLY_FULL_FREE_FRACTION` of the cap (rounded
/// up) was free: a store kept topped up by a flood. A call refused on a
/// store with more room needed more new counters than one call normally
/// does (many descriptors, or anyone reaching the gRPC port); it fails,
/// but calls needing fewer still succeed, so the instance stays ready.
pub const NEARLY_FULL_FREE_FRACTION: usize = 10;

/// Most expired counters one call removes while it holds the store's lock.
/// Every counter of a unit ends at the same second (a million minute
/// counters at once), and removing them all in the first call after it
/// held every other call for about 150 ms; a counter whose window is over
/// reads as absent anyway, so the rest are left to later calls and to the
/// periodic sweep.
pub const SWEEP_PER_CALL: usize = 1024;

/// Expired counters the periodic sweep ([`MemoryBackend::sweep`]) removes
/// per hold of the lock, which it lets go of between holds so that calls
/// go on.
pub const SWEEP_CHUNK: usize = 16_384;

/// Counters in a hash map, with an expiry index.
#[derive(Debug)]
pub struct MemoryBackend {
    /// The counters and their expiry index.
    state: Mutex<State>,
    /// Most keys alive at once.
    max_keys: usize,
    /// The Unix second a call was last refused for lack of room while the
    /// store was nearly full (see [`NEARLY_FULL_FREE_FRACTION`];
    /// `i64::MIN`: never).
    refused_at: AtomicI64,
}

#[derive(Debug, Default)]
struct State {
    /// Key to its count and the Unix second its window ends.
    counts: HashMap<KeyDigest, (u64, i64)>,
    /// Window end (Unix second) to the keys that expire then.
    expiries: BTreeMap<i64, Vec<KeyDigest>>,
}

impl MemoryBackend {
    /// An empty store holding at most `max_keys` live counters.
    pub fn new(max_keys: usize) -> Self {
        MemoryBackend {
            state: Mutex::new(State::default()),
            max_keys,
            refused_at: AtomicI64::new(i64::MIN),
        }
    }

    /// Whether the store can take new counters at Unix second `now`: an
    /// error when it is at its cap, or refused a call for lack of room
    /// while nearly full (see [`NEARLY_FULL_FREE_FRACTION`]) in the last
    /// [`FULL_REPORTED_FOR_SECONDS`]. (Counters already in it still count;
    /// calls that need a new one fail.)
    pub fn check(&self, now: i64) -> Result<(), BackendError> {
        self.sweep(now);
        let live = self.lock().counts.len();
        let since_refused = now.saturating_sub(self.refused_at.load(Ordering::Relaxed));
        if live >= self.max_keys || (0..FULL_REPORTED_FOR_SECONDS).contains(&since_refused) {
            return Err(BackendError::MemoryFull {
                max_keys: self.max_keys,
            });
        }
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means another thread panicked mid-update of
        // plain counters; the map is still usable.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Drops every counter whose window ended at or before `now`, at most
    /// [`SWEEP_CHUNK`] per hold of the lock; returns how many were dropped.
    pub fn sweep(&self, now: i64) -> usize {
        let mut dropped = 0;
        loop {
            let (gone, done) = sweep_locked(&mut self.lock(), now, SWEEP_CHUNK);
            dropped += gone;
            if done {
                return dropped;
            }
        }
    }

    /// Number of live counters (for tests and stats).
    pub fn len(&self) -> usize {
        self.lock().counts.len()
    }

    /// Whether no counter is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The counts of [`MemoryBackend::increment_with_ends`] alone (tests).
    #[cfg(test)]
    pub fn increment(&self, items: &[Increment], now: i64) -> Result<Vec<u64>, BackendError> {
        Ok(self
            .increment_with_ends(items, now)?
            .into_iter()
            .map(|(count, _)| count)
            .collect())
    }

    /// Adds hits to the counters, all or nothing, and returns each new count
    /// with the Unix second at which the counter's window ends (set by its
    /// first hit).
    ///
    /// An item of 0 hits (a check) only reads: a counter it finds is
    /// returned as it is, and one it does not find is not created (count 0,
    /// ending at the item's `window_end`), so a check neither takes room in
    /// the store nor starts a rolling window.
    pub fn increment_with_ends(
        &self,
        items: &[Increment],
        now: i64,
    ) -> Result<Vec<(u64, i64)>, BackendError> {
        // Hashed before the lock: keys run to kilobytes.
        let keys: Vec<KeyDigest> = items.iter().map(|i| digest(&i.key)).collect();
        let mut state = self.lock();
        sweep_locked(&mut state, now, SWEEP_PER_CALL);
        self.count_locked(&mut state, items, keys, now)
    }

    /// As [`MemoryBackend::increment_with_ends`], unless the counts the
    /// call would reach refuse it by `rules` (see
    /// [`super::is_refused`]): then nothing is added (no counter is
    /// created either) and each item gets the count it would have reached,
    /// with `true`. Decided and counted under one lock.
    pub fn increment_unless_refused(
        &self,
        items: &[Increment],
        rules: &[Refuses],
        now: i64,
    ) -> Result<(Vec<(u64, i64)>, bool), BackendError> {
        let keys: Vec<KeyDigest> = items.iter().map(|i| digest(&i.key)).collect();
        let mut state = self.lock();
        sweep_locked(&mut state, now, SWEEP_PER_CALL);
        // What each item would read after the batch's earlier items, as if
        // counted in order (a key may come twice in one call).
        let mut added: HashMap<&KeyDigest, u64> = HashMap::new();
        let mut would = Vec::with_capacity(items.len());
        for (item, key) in items.iter().zip(&keys) {
            let (count, end) = live(&state, key, now).unwrap_or((0, item.window_end));
            let sum = added.entry(key).or_insert(0);
            *sum = sum.saturating_add(item.hits);
            would.push((count.saturating_add(*sum), end));
        }
        let after: Vec<u64> = would.iter().map(|&(count, _)| count).collect();
        if super::is_refused(rules, &after) {
            return Ok((would, true));
        }
        drop(added);
        Ok((self.count_locked(&mut state, items, keys, now)?, false))
    }

    /// The counting of [`MemoryBackend::increment_with_ends`], on the
    /// locked and swept state, with each item's key digest.
    fn count_locked(
        &self,
        state: &mut State,
        items: &[Increment],
        keys: Vec<KeyDigest>,
        now: i64,
    ) -> Result<Vec<(u64, i64)>, BackendError> {
        let new_keys = |state: &State| {
            let mut new: Vec<&KeyDigest> = keys
                .iter()
                .zip(items)
                .filter(|(k, item)| item.hits > 0 && !state.counts.contains_key(*k))
                .map(|(k, _)| k)
                .collect();
            new.sort_unstable();
            new.dedup();
            new.len()
        };
        let mut needed = new_keys(state);
        if state.counts.len() + needed > self.max_keys {
            // Counters left expired by the bounded sweep may hold the room.
            sweep_locked(state, now, usize::MAX);
            needed = new_keys(state);
        }
        if state.counts.len() + needed > self.max_keys {
            let free = self.max_keys.saturating_sub(state.counts.len());
            if free <= self.max_keys.div_ceil(NEARLY_FULL_FREE_FRACTION) {
                self.refused_at.store(now, Ordering::Relaxed);
            }
            return Err(BackendError::MemoryFull {
                max_keys: self.max_keys,
            });
        }

        let mut results = Vec::with_capacity(items.len());
        for (item, key) in items.iter().zip(keys) {
            if item.hits == 0 {
                results.push(live(state, &key, now).unwrap_or((0, item.window_end)));
                continue;
            }
            let State { counts, expiries } = &mut *state;
            let entry = match counts.get_mut(&key) {
                Some(entry) if entry.1 > now => entry,
                // Its window is over and the sweep has not come to it yet:
                // a new window, as for a new counter.
                Some(entry) => {
                    expiries.entry(item.window_end).or_default().push(key);
                    *entry = (0, item.window_end);
                    entry
                }
                None => {
                    expiries.entry(item.window_end).or_default().push(key);
                    counts.entry(key).or_insert((0, item.window_end))
                }
            };
            entry.0 = entry.0.saturating_add(item.hits);
            results.push(*entry);
        }
        Ok(results)
    }
}

/// A counter's count and window end, if its window is not over at `now`.
fn live(state: &State, key: &KeyDigest, now: i64) -> Option<(u64, i64)> {
    state.counts.get(key).copied().filter(|&(_, end)| end > now)
}

/// Drops counters whose window ended at or before `now`, looking at most
/// at `budget` entries of the expiry index; returns how many were dropped
/// and whether none is left to look at. A counter counted again in a new
/// window after its old one ended (see `count_locked`) stays: the old
/// window's entry no longer names its end.
fn sweep_locked(state: &mut State, now: i64, budget: usize) -> (usize, bool) {
    let State { counts, expiries } = state;
    let (mut dropped, mut seen) = (0, 0);
    while let Some(mut entry) = expiries.first_entry() {
        let end = *entry.key();
        if end > now {
            return (dropped, true);
        }
        let keys = entry.get_mut();
        while let Some(key) = keys.pop() {
            if counts.get(&key).is_some_and(|&(_, e)| e <= end) {
                counts.remove(&key);
                dropped += 1;
            }
            seen += 1;
            if seen >= budget {
                break;
            }
        }
        if keys.is_empty() {
            entry.remove();
        }
        if seen >= budget {
            return (
                dropped,
                expiries.first_key_value().is_none_or(|(&e, _)| e > now),
            );
        }
    }
    (dropped, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::window::{window_end, Unit};

    fn inc(key: &str, hits: u64, now: i64, unit: Unit) -> Increment {
        Increment {
            key: key.to_owned(),
            hits,
            window_seconds: unit.seconds(),
            window_end: window_end(now, unit),
            rolling: false,
        }
    }

    #[test]
    fn long_keys_are_held_by_digest_and_stay_distinct() {
        let m = MemoryBackend::new(100);
        let now = 1_000_000;
        let a = format!("{}a", "x".repeat(4096));
        let b = format!("{}b", "x".repeat(4096));
        assert_eq!(
            m.increment(
                &[
                    inc(&a, 1, now, Unit::Minute),
                    inc(&b, 1, now, Unit::Minute),
                    inc(&a, 1, now, Unit::Minute)
                ],
                now
            )
            .unwrap(),
            vec![1, 1, 2]
        );
        let state = m.lock();
        assert_eq!(state.counts.len(), 2);
        assert!(state.counts.keys().all(|k| k.len() == 32));
    }

    #[test]
    fn a_full_store_fails_its_check_until_room_is_made() {
        let m = MemoryBackend::new(2);
        let now = 1_000_000;
        assert!(m.check(now).is_ok());
        m.increment(&[inc("a", 1, now, Unit::Minute)], now).unwrap();
        assert!(m.check(now).is_ok(), "one slot left");
        m.increment(&[inc("b", 1, now, Unit::Day)], now).unwrap();
        assert!(matches!(
            m.check(now),
            Err(BackendError::MemoryFull { max_keys: 2 })
        ));
        // The minute counter ends: one slot free, but a call needing two
        // new counters was just refused; reported full for a while.
        let later = window_end(now, Unit::Minute);
        let two = [inc("c", 1, later, Unit::Day), inc("d", 1, later, Unit::Day)];
        assert!(m.increment(&two, later).is_err());
        assert_eq!(m.len(), 1);
        assert!(m.check(later).is_err());
        assert!(m.check(later + FULL_REPORTED_FOR_SECONDS - 1).is_err());
        assert!(m.check(later + FULL_REPORTED_FOR_SECONDS).is_ok());
        // A clock stepping back does not keep it reported full.
        assert!(m.check(later - 100).is_ok());
    }

    #[test]
    fn one_oversized_call_does_not_report_a_roomy_store_full() {
        let m = MemoryBackend::new(20);
        let now = 1_000_000;
        let many = |prefix: &str, n: usize| -> Vec<Increment> {
            (0..n)
                .map(|i| inc(&format!("{prefix}{i}"), 1, now, Unit::Day))
                .collect()
        };
        // More new counters than the whole cap, on an empty store: refused,
        // but the store is not full: the check passes and a smaller call
        // still gets its counters.
        assert!(matches!(
            m.increment(&many("a", 21), now),
            Err(BackendError::MemoryFull { max_keys: 20 })
        ));
        assert!(m.is_empty());
        assert!(m.check(now).is_ok(), "an empty store reported full");
        m.increment(&many("b", 10), now).unwrap();
        // More than the room left, on a half-full store: the same.
        assert!(m.increment(&many("c", 11), now).is_err());
        assert!(m.check(now).is_ok(), "a half-full store reported full");
        m.increment(&many("d", 8), now).unwrap();
        // Two places left (a tenth of the cap): nearly full, and a refused
        // call reports it, as for a store kept topped up by a flood.
        assert!(m.increment(&many("e", 3), now).is_err());
        assert_eq!(m.len(), 18);
        assert!(m.check(now).is_err());
        assert!(m.check(now + FULL_REPORTED_FOR_SECONDS).is_ok());
    }

    #[test]
    fn counts_add_up_per_key() {
        let m = MemoryBackend::new(100);
        let now = 1_000_000;
        assert_eq!(
            m.increment(&[inc("a", 1, now, Unit::Minute)], now).unwrap(),
            vec![1]
        );
        assert_eq!(
            m.increment(&[inc("a", 1, now, Unit::Minute)], now).unwrap(),
            vec![2]
        );
        assert_eq!(
            m.increment(
                &[
                    inc("a", 3, now, Unit::Minute),
                    inc("b", 0, now, Unit::Minute)
                ],
                now
            )
            .unwrap(),
            vec![5, 0]
        );
        // The same key twice in one batch counts twice, in order.
        assert_eq!(
            m.increment(
                &[
                    inc("c", 1, now, Unit::Minute),
                    inc("c", 1, now, Unit::Minute)
                ],
                now
            )
            .unwrap(),
            vec![1, 2]
        );
        // "b" was only checked (0 hits): not created.
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn a_check_of_zero_hits_creates_no_counter_and_starts_no_window() {
        let m = MemoryBackend::new(1);
        let now = 1_000_000;
        let rolling = |hits: u64, now: i64| Increment {
            key: "jti".to_owned(),
            hits,
            window_seconds: 3600,
            window_end: now + 3600,
            rolling: true,
        };
        assert_eq!(
            m.increment_with_ends(&[rolling(0, now)], now).unwrap(),
            vec![(0, now + 3600)]
        );
        assert!(m.is_empty(), "a check created the counter");
        // Nor on a full store: a check needs no room.
        m.increment(&[inc("other", 1, now, Unit::Hour)], now)
            .unwrap();
        assert_eq!(
            m.increment(&[inc("absent", 0, now, Unit::Hour)], now)
                .unwrap(),
            vec![0]
        );
        let m = MemoryBackend::new(10);
        m.increment_with_ends(&[rolling(0, now)], now).unwrap();
        // The window starts at the first hit, half an hour after the check.
        let later = now + 1800;
        assert_eq!(
            m.increment_with_ends(&[rolling(1, later)], later).unwrap(),
            vec![(1, later + 3600)]
        );
        // A check then reads the counter without changing it.
        assert_eq!(
            m.increment_with_ends(&[rolling(0, later + 10)], later + 10)
                .unwrap(),
            vec![(1, later + 3600)]
        );
        // In one batch, a check before the first hit reads 0, one after it 1.
        assert_eq!(
            m.increment(
                &[
                    inc("x", 0, now, Unit::Minute),
                    inc("x", 1, now, Unit::Minute),
                    inc("x", 0, now, Unit::Minute)
                ],
                now
            )
            .unwrap(),
            vec![0, 1, 1]
        );
    }

    #[test]
    fn expired_windows_are_swept() {
        let m = MemoryBackend::new(100);
        let now = 1_000_020; // window [1_000_020 - 1_000_020 % 60, …) ends at 1_000_080
        m.increment(&[inc("minute", 1, now, Unit::Minute)], now)
            .unwrap();
        m.increment(&[inc("second", 1, now, Unit::Second)], now)
            .unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m.sweep(now), 0);
        assert_eq!(m.sweep(now + 1), 1, "the one-second window is over");
        assert_eq!(m.len(), 1);
        assert_eq!(m.sweep(window_end(now, Unit::Minute) - 1), 0);
        assert_eq!(m.sweep(window_end(now, Unit::Minute)), 1);
        assert!(m.is_empty());
    }

    /// The first call after a window ends removes a bounded number of
    /// the counters that ended with it, not all of them under the lock;
    /// the others read as absent until the periodic sweep, which takes
    /// them in chunks. A counter counted again in its new window stays.
    #[test]
    fn a_call_after_a_window_ends_sweeps_a_bounded_number() {
        let m = MemoryBackend::new(100_000);
        let now = 1_000_020;
        let end = window_end(now, Unit::Minute);
        let n = 3 * SWEEP_PER_CALL;
        let items: Vec<Increment> = (0..n)
            .map(|i| inc(&format!("k{i}"), 5, now, Unit::Minute))
            .collect();
        for chunk in items.chunks(64) {
            m.increment(chunk, now).unwrap();
        }
        assert_eq!(m.len(), n);
        // The window is over: `k0` starts a new one at 1, and the call
        // dropped at most SWEEP_PER_CALL counters.
        let later = end + 1;
        assert_eq!(
            m.increment(&[inc("k0", 1, later, Unit::Minute)], later)
                .unwrap(),
            vec![1]
        );
        assert!(m.len() >= n - SWEEP_PER_CALL, "{} left", m.len());
        // Every other old counter reads as absent: a check sees 0.
        assert_eq!(
            m.increment(&[inc("k1", 0, later, Unit::Minute)], later)
                .unwrap(),
            vec![0]
        );
        let (with_ends, refused) = m
            .increment_unless_refused(
                &[inc("k2", 1, later, Unit::Minute)],
                &[Refuses::Alone(1)],
                later,
            )
            .unwrap();
        assert!(!refused);
        assert_eq!(with_ends[0].0, 1, "k2's old count does not count");
        // The periodic sweep takes the rest, but `k0` and `k2`, in their
        // new window.
        m.sweep(later);
        assert_eq!(m.len(), 2);
        assert_eq!(
            m.increment(&[inc("k0", 1, later, Unit::Minute)], later)
                .unwrap(),
            vec![2]
        );
    }

    #[test]
    fn the_key_cap_holds_and_frees_up_after_the_window() {
        let m = MemoryBackend::new(2);
        let now = 1_000_000;
        m.increment(
            &[
                inc("a", 1, now, Unit::Second),
                inc("b", 1, now, Unit::Second),
            ],
            now,
        )
        .unwrap();
        let err = m
            .increment(&[inc("c", 1, now, Unit::Second)], now)
            .unwrap_err();
        assert!(matches!(err, BackendError::MemoryFull { max_keys: 2 }));
        // All or nothing: the existing key was not counted by the failed batch.
        assert_eq!(
            m.increment(&[inc("a", 0, now, Unit::Second)], now).unwrap(),
            vec![1]
        );
        // Next second, the old keys are gone and there is room again.
        assert_eq!(
            m.increment(&[inc("c", 1, now + 1, Unit::Second)], now + 1)
                .unwrap(),
            vec![1]
        );
        assert_eq!(m.len(), 1);
    }
}
