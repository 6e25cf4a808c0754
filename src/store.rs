//! State shared by the workers of one Envoy instance — replayed `jti`s,
//! local token buckets, the verification budget — kept in proxy-wasm shared
//! data, which is a key/value map with compare-and-swap.
//!
//! The core reaches it through [`SharedStore`] so that it stays pure and
//! testable; the adapter implements the trait with host calls. Memory is
//! bounded by construction: every table is a fixed number of buckets, each a
//! shared-data key holding a small fixed-capacity array of entries. Which
//! bucket a value lands in is keyed with a secret of the instance
//! ([`BucketSalt`]), so that clients cannot aim at one.
//!
//! Creating a key ignores CAS in the host, so a write that must not clobber a
//! concurrent creation passes a CAS value that is never issued
//! ([`CAS_CREATE`]): the host then creates the key if it is absent and
//! reports a mismatch if someone else created it first.

use std::cell::RefCell;
use std::collections::HashMap;

/// CAS sentinel for "create only". The host's CAS counter starts at 1,
/// is shared by every key of the process and wraps (skipping 0): at some
/// 100,000 writes a second it reaches this value about every 12 hours. A
/// key written at that very moment reads as absent-and-creatable for a
/// write racing it, the only moment two creators can both succeed: a
/// limit of the host ABI, with odds of one write in four billion.
pub const CAS_CREATE: u32 = u32::MAX;

/// Why a shared-data write failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreError {
    /// Someone else wrote the key since it was read: read again and retry.
    CasMismatch,
    /// The host refused the call.
    Host,
}

/// A compare-and-swap key/value store shared by the workers.
pub trait SharedStore {
    /// The value and its CAS token, or `None` when the key was never set.
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)>;
    /// Writes the value if the key's CAS is still `cas` (or creates it when
    /// absent; see [`CAS_CREATE`]).
    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError>;
}

/// An in-memory store with the host's semantics, for tests and fuzzing.
#[derive(Default)]
pub struct MemStore {
    /// Key → (value, CAS). As in the host, a write with CAS 0, or to an absent
    /// key, goes through whatever the CAS; any other CAS must match.
    map: RefCell<HashMap<String, (Vec<u8>, u32)>>,
    /// The last CAS handed out: every write takes a new one, from one
    /// counter for all keys as in the host; a CAS read from a key fails
    /// once that key was written again.
    next: RefCell<u32>,
}

#[cfg(test)]
impl MemStore {
    /// Forgets every key (a test's stand-in for an Envoy restart).
    pub fn clear(&self) {
        self.map.borrow_mut().clear();
    }

    /// The keys set so far that start with `prefix`.
    pub fn keys_with_prefix(&self, prefix: &str) -> Vec<String> {
        let map = self.map.borrow();
        map.keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect()
    }
}

impl SharedStore for MemStore {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.map.borrow().get(key).cloned()
    }
    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        let mut map = self.map.borrow_mut();
        let mut next = self.next.borrow_mut();
        *next += 1;
        match map.get_mut(key) {
            Some(entry) => {
                if cas != 0 && cas != entry.1 {
                    return Err(StoreError::CasMismatch);
                }
                *entry = (value.to_vec(), *next);
            }
            None => {
                map.insert(key.to_owned(), (value.to_vec(), *next));
            }
        }
        Ok(())
    }
}

/// How often [`update`] tries before giving up with `CasMismatch`. Each lost
/// race means another worker's write went in, so a few workers seldom need
/// more than a few tries; the bound keeps a request from spinning.
const MAX_ATTEMPTS: usize = 16;

/// Reads a key, lets `update` compute the new value from the current one,
/// and writes it with CAS, retrying on concurrent writes. `update` returns
/// `None` to leave the value unchanged (its result is then returned as is).
pub fn update<S: SharedStore + ?Sized, T>(
    store: &S,
    key: &str,
    mut update: impl FnMut(Option<&[u8]>) -> (Option<Vec<u8>>, T),
) -> Result<T, StoreError> {
    for _ in 0..MAX_ATTEMPTS {
        let current = store.get(key);
        let (value, cas) = match &current {
            Some((v, cas)) => (Some(v.as_slice()), *cas),
            None => (None, CAS_CREATE),
        };
        let (new, result) = update(value);
        let Some(new) = new else { return Ok(result) };
        match store.set(key, &new, cas) {
            Ok(()) => return Ok(result),
            Err(StoreError::CasMismatch) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::CasMismatch)
}

/// The secret that keys every shared table's choice of bucket: one per
/// Envoy instance (see [`instance_salt`]), the same for all its workers,
/// since they share the tables.
///
/// Buckets hold a fixed number of entries, and a descriptor's digest is
/// computed from values a client chooses (its address, headers, body). If
/// anyone could compute which bucket a digest lands in, a client with many
/// addresses could search offline for values that share a victim's bucket,
/// fill it, and push the victim into the bucket's shared overflow entry,
/// which it then keeps drained. Keyed with a secret, the bucket of a value
/// cannot be known without asking the instance.
///
/// Never logged: `Debug` shows no bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct BucketSalt {
    /// The first half of the SipHash key.
    k0: u64,
    /// The second half of the SipHash key.
    k1: u64,
}

impl BucketSalt {
    /// Bytes of a salt (a SipHash key).
    pub const LEN: usize = 16;

    /// The salt of these bytes.
    pub const fn new(bytes: [u8; BucketSalt::LEN]) -> BucketSalt {
        let [a0, a1, a2, a3, a4, a5, a6, a7, b0, b1, b2, b3, b4, b5, b6, b7] = bytes;
        BucketSalt {
            k0: u64::from_le_bytes([a0, a1, a2, a3, a4, a5, a6, a7]),
            k1: u64::from_le_bytes([b0, b1, b2, b3, b4, b5, b6, b7]),
        }
    }

    /// The salt stored as `bytes`, if they have the right length.
    pub fn from_slice(bytes: &[u8]) -> Option<BucketSalt> {
        <[u8; BucketSalt::LEN]>::try_from(bytes)
            .ok()
            .map(BucketSalt::new)
    }
}

impl std::fmt::Debug for BucketSalt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BucketSalt(..)")
    }
}

/// The shared-data key of the instance's [`BucketSalt`]. Versioned: a later
/// format takes a new key rather than reading this one differently.
pub const SALT_KEY: &str = "appguard/bucket-salt/v1";

/// Why the instance's salt could not be had.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaltError {
    /// No random bytes to create it with.
    Random,
    /// Shared data refused to store it.
    Store(StoreError),
    /// The key holds something that is not a salt.
    Malformed,
}

/// The instance's salt: read from shared data, or, by the first worker to
/// get here, drawn with `random` and stored if the key is still absent (a
/// "create only" write, see [`CAS_CREATE`]). A worker that loses that race
/// reads the winner's salt, so every worker of the instance ends up with the
/// same one; it lives as long as the instance's shared data, like the
/// tables it keys.
pub fn instance_salt<S: SharedStore + ?Sized>(
    store: &S,
    mut random: impl FnMut() -> Option<[u8; BucketSalt::LEN]>,
) -> Result<BucketSalt, SaltError> {
    for _ in 0..MAX_ATTEMPTS {
        if let Some((bytes, _)) = store.get(SALT_KEY) {
            return BucketSalt::from_slice(&bytes).ok_or(SaltError::Malformed);
        }
        let bytes = random().ok_or(SaltError::Random)?;
        match store.set(SALT_KEY, &bytes, CAS_CREATE) {
            Ok(()) => return Ok(BucketSalt::new(bytes)),
            // Another worker created it first: read theirs.
            Err(StoreError::CasMismatch) => continue,
            Err(e) => return Err(SaltError::Store(e)),
        }
    }
    Err(SaltError::Store(StoreError::CasMismatch))
}

/// The first `bytes` bytes, as lower-case hex, of the SHA-256 of `parts`,
/// each prefixed with its length (u64, little-endian), so that no choice of
/// parts (moving bytes from one to the next) gives another's digest. Names
/// a configuration's state in shared data (a JWKS source, an alert
/// configuration) apart from another's.
pub fn parts_digest_hex(parts: &[&[u8]], bytes: usize) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in parts {
        h.update(u64::try_from(p.len()).unwrap_or(u64::MAX).to_le_bytes());
        h.update(p);
    }
    let d = h.finalize();
    crate::hex_lower(d.get(..bytes).unwrap_or(&d))
}

/// The little-endian u64 at byte `at` of a stored value, `None` when the
/// value is too short: every table here stores its numbers that way.
pub fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    let b: [u8; 8] = bytes.get(at..at.checked_add(8)?)?.try_into().ok()?;
    Some(u64::from_le_bytes(b))
}

/// The little-endian u32 at byte `at`, as [`u64_at`].
pub fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    let b: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_le_bytes(b))
}

/// The bucket of `digest` among `buckets`: SipHash-2-4 keyed with the
/// instance's salt, so that nobody outside the instance can tell which
/// values share a bucket (see [`BucketSalt`]). Entries keep the full
/// 128-bit digest; only where they are kept depends on the salt.
///
/// `std::hash::SipHasher` is std's SipHash-2-4, deprecated only in favour
/// of `DefaultHasher`, whose algorithm may change and which takes no key.
/// Every worker runs the same module, so all of them agree on the bucket.
#[allow(deprecated)]
pub fn bucket_of(salt: &BucketSalt, digest: &[u8], buckets: u32) -> u32 {
    use std::hash::Hasher;
    let mut h = std::hash::SipHasher::new_with_keys(salt.k0, salt.k1);
    h.write(digest);
    u32::try_from(h.finish() % u64::from(buckets.max(1))).unwrap_or(0)
}

/// A keyed 128-bit digest for a worker's own in-memory maps (the
/// over-limit cache, the memo of API keys already found): two SipHash-2-4
/// instances whose keys are derived from the instance's [`BucketSalt`] and a
/// label, so that each map has keys of its own and nobody outside the
/// instance can make two inputs collide. About a tenth of a SHA-256 for the
/// short inputs these maps take; shared-data tables keep SHA-256 digests
/// (see `limits::descriptor_digest`), which outlive any one worker.
///
/// Never logged: `Debug` shows no keys.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Keyed128 {
    /// SipHash key of the digest's low 64 bits: SipHash gives 64 bits, so two
    /// instances under independent keys make the 128.
    a: BucketSalt,
    /// SipHash key of the digest's high 64 bits.
    b: BucketSalt,
}

impl Keyed128 {
    /// The keys for `label`: SipHash-2-4 under the salt of `label` and a
    /// counter, four times (a PRF used as a key derivation).
    pub fn new(salt: &BucketSalt, label: &str) -> Keyed128 {
        let derive = |i: u8| {
            let mut h = sip(salt);
            std::hash::Hasher::write(&mut h, label.as_bytes());
            std::hash::Hasher::write(&mut h, &[0xff, i]);
            std::hash::Hasher::finish(&h)
        };
        Keyed128 {
            a: BucketSalt {
                k0: derive(0),
                k1: derive(1),
            },
            b: BucketSalt {
                k0: derive(2),
                k1: derive(3),
            },
        }
    }

    /// Starts a digest.
    pub fn hasher(&self) -> Keyed128Hasher {
        Keyed128Hasher(sip(&self.a), sip(&self.b))
    }

    /// The digest of `parts`, each length-prefixed (so that no choice of
    /// bytes in one part can make two different lists hash alike).
    pub fn digest(&self, parts: &[&[u8]]) -> [u8; 16] {
        let mut h = self.hasher();
        for p in parts {
            h.part(p);
        }
        h.finish()
    }
}

impl std::fmt::Debug for Keyed128 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keyed128(..)")
    }
}

/// A [`Keyed128`] digest being computed.
#[allow(deprecated)]
pub struct Keyed128Hasher(std::hash::SipHasher, std::hash::SipHasher);

impl Keyed128Hasher {
    /// Absorbs bytes as they are: for a prefix that is already an
    /// unambiguous encoding (length-prefixed parts).
    pub fn raw(&mut self, bytes: &[u8]) {
        std::hash::Hasher::write(&mut self.0, bytes);
        std::hash::Hasher::write(&mut self.1, bytes);
    }

    /// Absorbs one part, its length (8 bytes, little-endian) in front.
    pub fn part(&mut self, bytes: &[u8]) {
        let len = u64::try_from(bytes.len()).unwrap_or(u64::MAX).to_le_bytes();
        self.raw(&len);
        self.raw(bytes);
    }

    /// The 128-bit digest.
    pub fn finish(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        let (lo, hi) = out.split_at_mut(8);
        lo.copy_from_slice(&std::hash::Hasher::finish(&self.0).to_le_bytes());
        hi.copy_from_slice(&std::hash::Hasher::finish(&self.1).to_le_bytes());
        out
    }
}

/// std's SipHash-2-4 under `salt` (see [`bucket_of`] for why this one).
#[allow(deprecated)]
fn sip(salt: &BucketSalt) -> std::hash::SipHasher {
    std::hash::SipHasher::new_with_keys(salt.k0, salt.k1)
}

/// Entries per replay bucket.
pub const REPLAY_BUCKET_ENTRIES: usize = 16;
/// Bytes of one replay entry in a bucket's value: the value's 16-byte
/// digest and its expiry (u64 seconds). Fixed, so a bucket is read in
/// whole chunks.
const REPLAY_ENTRY: usize = 24; // 16-byte digest + 8-byte expiry

/// Seconds a replay entry is kept past its expiry, as this worker's clock
/// reads it, when the bucket is written: workers read the clock a moment
/// apart (and a request reads it before its token is verified), so another
/// worker may still be at the entry's last second, where the token is
/// accepted and the entry must be found. Such entries refuse nothing here
/// (they count for no `Full`, and the value is fresh again for a worker
/// whose clock is past them), they are only not dropped yet.
const REPLAY_EXPIRED_KEPT_SECONDS: u64 = 2;

/// Result of recording a one-time value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplayOutcome {
    /// First use: recorded until its expiry.
    Fresh,
    /// Seen before, still within its lifetime.
    Replayed,
    /// The bucket is full of live entries: refused (fail closed) rather than
    /// forgetting a value that might be replayed.
    Full,
}

/// The tables whose buckets are named by their index alone, as modules
/// before 2026-12-05 named every bucket, so that an update still sees what
/// an earlier module recorded in them: a token's replay table at the
/// default `replay.max_entries`, and a signed-request table
/// (`<provider>#signed`), whose capacity is fixed
/// ([`crate::policy::SIGNED_REQUEST_ENTRIES`]). Only one capacity of each
/// kind: two index-named capacities of one table would share buckets.
pub const INDEX_NAMED_CAPACITIES: [u32; 2] = [65_536, 1 << 20];

/// Whether `table` at `capacity` names its buckets by index alone (see
/// [`INDEX_NAMED_CAPACITIES`]).
fn index_named(table: &str, capacity: u32) -> bool {
    let [token, signed] = INDEX_NAMED_CAPACITIES;
    capacity
        == if table.ends_with("#signed") {
            signed
        } else {
            token
        }
}

/// The shared-data key of the bucket `digest` belongs to in the replay
/// table `table` of `capacity` entries.
///
/// A capacity other than the table's index-named one
/// ([`INDEX_NAMED_CAPACITIES`]) names its bucket count too, so that two
/// capacities of one table (before and after a change of `max_entries`)
/// never share a bucket: a past layout's live entries would otherwise fill
/// the new layout's first buckets, refusing fresh values there as `Full`
/// until they expired.
fn replay_bucket_key(salt: &BucketSalt, table: &str, capacity: u32, digest: &[u8; 16]) -> String {
    let buckets = (capacity / REPLAY_BUCKET_ENTRIES as u32).max(1);
    let index = bucket_of(salt, digest, buckets);
    if index_named(table, capacity) {
        format!("appguard/replay/{table}/{index}")
    } else {
        format!("appguard/replay/{table}/{buckets}/{index}")
    }
}

/// A capacity a replay table had before a configuration changed it, and
/// until when (epoch seconds) a value recorded under it may still be live.
///
/// A table's capacity decides which bucket a value's digest lands in, so a
/// value recorded before `max_entries` changed is in a bucket that the new
/// capacity no longer looks in. Until every such value has expired, a
/// replay check also looks in the bucket the past capacity names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PastLayout {
    /// The capacity the table had.
    pub capacity: u32,
    /// The last second a value recorded under it can be live.
    pub until: u64,
}

/// What a replay check of one configuration uses besides its own capacity.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Layouts {
    /// The capacity to record under when it is not the configuration's own
    /// `max_entries`: the table's current one, for a configuration that a
    /// newer one replaced while it still serves (a listener drain). Both
    /// then record in the same buckets, so one CAS decides between them.
    pub record_under: Option<u32>,
    /// Capacities whose values may still be live: looked up, never written.
    pub past: Vec<PastLayout>,
}

/// A table's [`Layouts`]: replaced once a second from the tick
/// ([`follow_replay_layouts`]), read by every replay check. A lock rather
/// than a `RefCell` so that a compiled configuration stays `Sync` (tools
/// and fuzzers share one across threads); in the Wasm VM, one thread, it is
/// never contended.
#[derive(Debug, Default)]
pub struct PastLayouts(std::sync::Mutex<Layouts>);

impl Clone for PastLayouts {
    fn clone(&self) -> Self {
        PastLayouts(std::sync::Mutex::new(self.with(Layouts::clone)))
    }
}

impl PastLayouts {
    /// Runs `f` on the layouts.
    pub fn with<R>(&self, f: impl FnOnce(&Layouts) -> R) -> R {
        f(&self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// Replaces the layouts, returning the previous ones.
    pub fn replace(&self, layouts: Layouts) -> Layouts {
        std::mem::replace(
            &mut *self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            layouts,
        )
    }
}

/// Past layouts remembered per table: more capacity changes than this
/// within a token lifetime forget the oldest (the one closest to its end).
pub const PAST_LAYOUTS_MAX: usize = 8;

/// Seconds a past layout outlives its horizon: the old configuration's
/// first tick after the change (see [`follow_replay_layouts`]) is at most
/// one away.
const LAYOUT_SLACK: u64 = 5;

/// Bytes of a layout record's head: the current capacity (u32) and its
/// horizon (u64 seconds).
const LAYOUT_HEAD: usize = 12; // capacity u32 + horizon u64
/// Bytes of each past layout after the head: its capacity (u32) and until
/// when its values may be live (u64 seconds).
const LAYOUT_PAST: usize = 12; // capacity u32 + until u64

/// The shared-data key of a replay table's layout record. One per table,
/// never salted: nothing in it comes from a client. Its last part is not a
/// number, so it is no bucket's key.
fn layout_key(table: &str) -> String {
    format!("appguard/replay/{table}/layout")
}

/// Registers `capacity` as the current layout of replay table `table`,
/// whose values live at most `horizon` seconds after they are recorded
/// (the token's longest lifetime plus its clock skew, twice), and returns
/// the past layouts whose values may still be live at `now`.
///
/// Called by every worker when a configuration loads: the first one that
/// sees a new capacity turns the previous one into a [`PastLayout`] that
/// lasts `horizon` of the previous configuration from now; the others then
/// find the record current. While the capacity stays, the horizon kept is
/// the longest any configuration had, since values recorded under a longer
/// one are still there.
pub fn replay_layouts<S: SharedStore + ?Sized>(
    store: &S,
    table: &str,
    capacity: u32,
    horizon: u64,
    now: u64,
) -> Result<Vec<PastLayout>, StoreError> {
    update(store, &layout_key(table), |current| {
        let parsed = current.and_then(parse_layout);
        // No record (the first configuration of this instance, or one
        // written by a module that is not appguard): nothing was recorded
        // under another capacity that this module could know of.
        let Some((old_capacity, old_horizon, old_past)) = parsed else {
            return (Some(layout_bytes(capacity, horizon, &[])), Vec::new());
        };
        // A capacity that returns while values recorded under it may still
        // be live: as the head again, it must be remembered at least that
        // long when it next becomes past.
        let returning = old_past
            .iter()
            .find(|p| p.capacity == capacity && p.until >= now)
            .map_or(0, |p| p.until.saturating_sub(now));
        let mut past: Vec<PastLayout> = old_past
            .iter()
            .copied()
            .filter(|p| p.until >= now && p.capacity != capacity)
            .collect();
        let head_horizon = if old_capacity == capacity {
            old_horizon.max(horizon)
        } else {
            // The old configuration records under its capacity until its
            // first tick sees the change (a second): a little slack.
            let until = now.saturating_add(old_horizon).saturating_add(LAYOUT_SLACK);
            match past.iter_mut().find(|p| p.capacity == old_capacity) {
                Some(p) => p.until = p.until.max(until),
                None => past.push(PastLayout {
                    capacity: old_capacity,
                    until,
                }),
            }
            horizon.max(returning)
        };
        trim_layouts(&mut past);
        let new = layout_bytes(capacity, head_horizon, &past);
        let changed = current != Some(new.as_slice());
        (changed.then_some(new), past)
    })
}

/// Refreshes, once a second, the [`Layouts`] of a running configuration
/// whose table has capacity `capacity`, from the table's record (see
/// [`replay_layouts`]):
/// - for the current configuration, the live past layouts;
/// - for an older configuration still running (its listener drains, and
///   keep-alive connections stay on it): record under the current
///   capacity, so that the same `jti` sent to both at once is decided by
///   one CAS, and look up the live past ones (its own among them, for what
///   it recorded before). Its horizon is folded into the current one's, so
///   that what it records there is remembered as long when the capacity
///   changes again.
///
/// Writes only to raise that horizon; without a record, nothing.
pub fn follow_replay_layouts<S: SharedStore + ?Sized>(
    store: &S,
    table: &str,
    capacity: u32,
    horizon: u64,
    now: u64,
) -> Result<Layouts, StoreError> {
    update(store, &layout_key(table), |current| {
        let Some((head, head_horizon, mut past)) = current.and_then(parse_layout) else {
            return (None, Layouts::default());
        };
        past.retain(|p| p.until >= now && p.capacity != head);
        if head == capacity {
            return (
                None,
                Layouts {
                    record_under: None,
                    past,
                },
            );
        }
        let new = (horizon > head_horizon).then(|| layout_bytes(head, horizon, &past));
        (
            new,
            Layouts {
                record_under: Some(head),
                past,
            },
        )
    })
}

/// A layout record: the current capacity, its horizon, the past layouts.
fn parse_layout(b: &[u8]) -> Option<(u32, u64, Vec<PastLayout>)> {
    let head_capacity = u32_at(b, 0)?;
    let head_horizon = u64_at(b, 4)?;
    let rest = b.get(LAYOUT_HEAD..)?;
    if rest.len() % LAYOUT_PAST != 0 {
        return None;
    }
    let past = rest
        .chunks_exact(LAYOUT_PAST)
        .filter_map(|e| {
            Some(PastLayout {
                capacity: u32_at(e, 0)?,
                until: u64_at(e, 4)?,
            })
        })
        .collect::<Vec<_>>();
    Some((head_capacity, head_horizon, past))
}

/// Over [`PAST_LAYOUTS_MAX`], the layouts closest to their end go first (no
/// sort: a few entries, and a sort's code is kilobytes of module).
fn trim_layouts(past: &mut Vec<PastLayout>) {
    while past.len() > PAST_LAYOUTS_MAX {
        let oldest = (0..past.len()).min_by_key(|&i| past.get(i).map_or(0, |p| p.until));
        match oldest {
            Some(i) => {
                past.swap_remove(i);
            }
            None => break,
        }
    }
}

/// A layout record as [`parse_layout`] reads it: the head, then each past
/// layout, little-endian.
fn layout_bytes(capacity: u32, horizon: u64, past: &[PastLayout]) -> Vec<u8> {
    let mut out = Vec::with_capacity(LAYOUT_HEAD + past.len() * LAYOUT_PAST);
    out.extend_from_slice(&capacity.to_le_bytes());
    out.extend_from_slice(&horizon.to_le_bytes());
    for p in past {
        out.extend_from_slice(&p.capacity.to_le_bytes());
        out.extend_from_slice(&p.until.to_le_bytes());
    }
    out
}

/// Whether the bucket of `digest` under a past capacity holds it, live.
fn seen_under<S: SharedStore + ?Sized>(
    store: &S,
    salt: &BucketSalt,
    table: &str,
    past: &PastLayout,
    digest: &[u8; 16],
    now: u64,
) -> bool {
    let Some((bytes, _)) = store.get(&replay_bucket_key(salt, table, past.capacity, digest)) else {
        return false;
    };
    bytes.chunks_exact(REPLAY_ENTRY).any(|e| {
        let (d, exp) = e.split_at(16);
        d == digest && u64::from_le_bytes(exp.try_into().unwrap_or([0; 8])) >= now
    })
}

/// Whether `digest` is live under one of the table's `past` capacities
/// still in force at `now` (other than the current `capacity`).
fn seen_in_past<S: SharedStore + ?Sized>(
    store: &S,
    salt: &BucketSalt,
    table: &str,
    capacity: u32,
    past: &[PastLayout],
    digest: &[u8; 16],
    now: u64,
) -> bool {
    past.iter().any(|p| {
        p.until >= now && p.capacity != capacity && seen_under(store, salt, table, p, digest, now)
    })
}

/// Records `digest` (until `expires`) in the replay table `table` of
/// `capacity` entries, in the bucket `salt` picks; tells whether it was
/// already there, there or under one of the table's `past` capacities
/// (see [`PastLayout`]; values are recorded under the current one only).
#[allow(clippy::too_many_arguments)]
pub fn replay_check<S: SharedStore + ?Sized>(
    store: &S,
    salt: &BucketSalt,
    table: &str,
    capacity: u32,
    past: &[PastLayout],
    digest: &[u8; 16],
    expires: u64,
    now: u64,
) -> Result<ReplayOutcome, StoreError> {
    if seen_in_past(store, salt, table, capacity, past, digest, now) {
        return Ok(ReplayOutcome::Replayed);
    }
    let key = replay_bucket_key(salt, table, capacity, digest);
    update(store, &key, |current| {
        let mut kept: Vec<u8> = Vec::with_capacity((REPLAY_BUCKET_ENTRIES + 1) * REPLAY_ENTRY);
        let mut live = 0;
        for e in current.unwrap_or(&[]).chunks_exact(REPLAY_ENTRY) {
            let (d, exp) = e.split_at(16);
            let exp = u64::from_le_bytes(exp.try_into().unwrap_or([0; 8]));
            if exp >= now {
                if d == digest {
                    return (None, ReplayOutcome::Replayed);
                }
                live += 1;
            } else if d == digest || exp.saturating_add(REPLAY_EXPIRED_KEPT_SECONDS) < now {
                // Recorded again (its earlier entry is replaced), or expired
                // for every worker's clock by now: dropped.
                continue;
            }
            kept.extend_from_slice(e);
        }
        if live >= REPLAY_BUCKET_ENTRIES {
            return (None, ReplayOutcome::Full);
        }
        kept.extend_from_slice(digest);
        kept.extend_from_slice(&expires.to_le_bytes());
        (Some(kept), ReplayOutcome::Fresh)
    })
}

/// Whether `digest` is live in the replay table `table` (under `capacity`
/// or one of its `past` capacities), without recording it: what
/// [`replay_check`] would answer `Replayed` for, read only.
pub fn replay_seen<S: SharedStore + ?Sized>(
    store: &S,
    salt: &BucketSalt,
    table: &str,
    capacity: u32,
    past: &[PastLayout],
    digest: &[u8; 16],
    now: u64,
) -> bool {
    let current = PastLayout {
        capacity,
        until: now,
    };
    seen_under(store, salt, table, &current, digest, now)
        || seen_in_past(store, salt, table, capacity, past, digest, now)
}

/// Takes `digest` back out of the replay table: its request was refused
/// after it was recorded (by the rate-limit service), so the `jti` was
/// never accepted and the genuine client may use it again.
pub fn replay_forget<S: SharedStore + ?Sized>(
    store: &S,
    salt: &BucketSalt,
    table: &str,
    capacity: u32,
    digest: &[u8; 16],
) -> Result<(), StoreError> {
    let key = replay_bucket_key(salt, table, capacity, digest);
    update(store, &key, |current| {
        let current = current.unwrap_or(&[]);
        let kept: Vec<u8> = current
            .chunks_exact(REPLAY_ENTRY)
            .filter(|e| e.get(..16) != Some(&digest[..]))
            .flatten()
            .copied()
            .collect();
        if kept.len() == current.len() {
            (None, ())
        } else {
            (Some(kept), ())
        }
    })
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    const SALT: BucketSalt = BucketSalt::new([1; 16]);

    #[test]
    fn parts_digests_are_the_length_prefixed_sha256() {
        assert_eq!(parts_digest_hex(&[b"ab", b"c"], 8), "43ee655579de01ca");
        assert_ne!(
            parts_digest_hex(&[b"ab", b"c"], 8),
            parts_digest_hex(&[b"a", b"bc"], 8)
        );
        assert_eq!(parts_digest_hex(&[b"ab", b"c"], 4), "43ee6555");
    }

    #[test]
    fn keyed_digests_depend_on_salt_label_and_part_boundaries() {
        let k = Keyed128::new(&SALT, "over-limit");
        let d = k.digest(&[b"ab", b"c"]);
        assert_eq!(d, k.digest(&[b"ab", b"c"]), "deterministic");
        assert_ne!(d, k.digest(&[b"a", b"bc"]), "parts are length-prefixed");
        assert_ne!(d, k.digest(&[b"abc"]));
        assert_ne!(d, Keyed128::new(&SALT, "api-keys").digest(&[b"ab", b"c"]));
        let other = BucketSalt::new([2; 16]);
        assert_ne!(
            d,
            Keyed128::new(&other, "over-limit").digest(&[b"ab", b"c"])
        );
        let (lo, hi) = d.split_at(8);
        assert_ne!(lo, hi, "two independent halves");
        // The hasher and `digest` agree; `raw` absorbs bytes as they are.
        let mut h = k.hasher();
        h.part(b"ab");
        h.part(b"c");
        assert_eq!(h.finish(), d);
        let mut r = k.hasher();
        r.raw(&2u64.to_le_bytes());
        r.raw(b"ab");
        r.raw(&1u64.to_le_bytes());
        r.raw(b"c");
        assert_eq!(r.finish(), d);
        assert_eq!(format!("{k:?}"), "Keyed128(..)", "keys never shown");
    }

    #[test]
    fn replay_table_remembers_until_expiry() {
        let s = MemStore::default();
        let d = [7u8; 16];
        assert_eq!(
            replay_check(&s, &SALT, "p", 64, &[], &d, 100, 50),
            Ok(ReplayOutcome::Fresh)
        );
        assert_eq!(
            replay_check(&s, &SALT, "p", 64, &[], &d, 100, 60),
            Ok(ReplayOutcome::Replayed)
        );
        assert_eq!(
            replay_check(&s, &SALT, "p", 64, &[], &d, 200, 101),
            Ok(ReplayOutcome::Fresh),
            "expired entry forgotten"
        );
        assert_eq!(
            replay_check(&s, &SALT, "other", 64, &[], &d, 200, 101),
            Ok(ReplayOutcome::Fresh),
            "tables are separate"
        );
    }

    /// A digest other than `not` whose bucket differs between `a` and `b`
    /// entries.
    fn moved_by_resize(a: u32, b: u32, not: [u8; 16]) -> [u8; 16] {
        let per = REPLAY_BUCKET_ENTRIES as u32;
        (0u8..=255)
            .map(|i| [i; 16])
            .filter(|d| *d != not)
            .find(|d| bucket_of(&SALT, d, a / per) != bucket_of(&SALT, d, b / per))
            .unwrap()
    }

    /// `n` digests (from `skip` on) in bucket `want` of `buckets`.
    fn in_bucket(buckets: u32, want: u32, n: usize, skip: u32) -> Vec<[u8; 16]> {
        (skip..)
            .map(|i| {
                let mut d = [0u8; 16];
                d[..4].copy_from_slice(&i.to_le_bytes());
                d
            })
            .filter(|d| bucket_of(&SALT, d, buckets) == want)
            .take(n)
            .collect()
    }

    #[test]
    fn a_past_layouts_full_buckets_do_not_fill_the_new_layouts() {
        // The operator grows a full table: the old capacity's bucket 0 is
        // full of live values; a fresh value in the new capacity's bucket 0
        // is recorded (it was refused `Full` while both capacities named
        // their buckets by index alone), and the old values are still
        // replays.
        for (old, new) in [
            (1024, 4096),
            (1024, 65_536),
            (65_536, 1024),
            (4096, 1024),
            (65_536, 1 << 20),
            (1 << 20, 65_536),
        ] {
            let s = MemStore::default();
            assert_eq!(replay_layouts(&s, "p", old, 310, 0), Ok(vec![]));
            let old_values = in_bucket(old / 16, 0, 16, 1);
            for d in &old_values {
                assert_eq!(
                    replay_check(&s, &SALT, "p", old, &[], d, 300, 0),
                    Ok(ReplayOutcome::Fresh)
                );
            }
            let past = replay_layouts(&s, "p", new, 310, 10).unwrap();
            let fresh = in_bucket(new / 16, 0, 1, 1_000_000)[0];
            assert_eq!(
                replay_check(&s, &SALT, "p", new, &past, &fresh, 300, 10),
                Ok(ReplayOutcome::Fresh),
                "{old} -> {new}"
            );
            for d in &old_values {
                assert_eq!(
                    replay_check(&s, &SALT, "p", new, &past, d, 300, 11),
                    Ok(ReplayOutcome::Replayed),
                    "{old} -> {new}"
                );
            }
        }
    }

    #[test]
    fn the_default_and_signed_capacities_keep_the_earlier_bucket_names() {
        // What a module before the bucket count was named recorded there.
        assert_eq!(
            INDEX_NAMED_CAPACITIES,
            [
                crate::token::default_replay_entries(),
                crate::policy::SIGNED_REQUEST_ENTRIES
            ]
        );
        let d = [7; 16];
        let at = |buckets: u32| bucket_of(&SALT, &d, buckets);
        for (table, capacity, key) in [
            ("p", 65_536, format!("appguard/replay/p/{}", at(4096))),
            (
                "p#signed",
                1 << 20,
                format!("appguard/replay/p#signed/{}", at(65_536)),
            ),
            ("p", 1024, format!("appguard/replay/p/64/{}", at(64))),
            (
                "p",
                1 << 20,
                format!("appguard/replay/p/65536/{}", at(65_536)),
            ),
            (
                "p#signed",
                65_536,
                format!("appguard/replay/p#signed/4096/{}", at(4096)),
            ),
        ] {
            assert_eq!(replay_bucket_key(&SALT, table, capacity, &d), key);
        }
    }

    #[test]
    fn a_value_recorded_before_max_entries_changed_is_still_a_replay() {
        let s = MemStore::default();
        let d = moved_by_resize(1024, 65536, [0xff; 16]);
        // first configuration: 1024 entries, tokens of up to 300 s
        assert_eq!(replay_layouts(&s, "p", 1024, 300, 1_000), Ok(vec![]));
        assert_eq!(
            replay_check(&s, &SALT, "p", 1024, &[], &d, 1_300, 1_000),
            Ok(ReplayOutcome::Fresh)
        );
        // without the past layout the new capacity looks in another bucket
        assert_eq!(
            replay_check(
                &MemStore::default(),
                &SALT,
                "p",
                65536,
                &[],
                &d,
                1_300,
                1_010
            ),
            Ok(ReplayOutcome::Fresh)
        );
        // the new configuration: the first worker turns 1024 into a past
        // layout that lasts the old horizon; the others read the same
        let past = vec![PastLayout {
            capacity: 1024,
            until: 1_315,
        }];
        assert_eq!(replay_layouts(&s, "p", 65536, 60, 1_010), Ok(past.clone()));
        assert_eq!(replay_layouts(&s, "p", 65536, 60, 1_011), Ok(past.clone()));
        assert_eq!(
            replay_check(&s, &SALT, "p", 65536, &past, &d, 1_300, 1_020),
            Ok(ReplayOutcome::Replayed)
        );
        // a value first seen after the change is recorded under the new one
        let e = moved_by_resize(65536, 1024, d);
        assert_eq!(
            replay_check(&s, &SALT, "p", 65536, &past, &e, 1_300, 1_020),
            Ok(ReplayOutcome::Fresh)
        );
        assert_eq!(
            replay_check(&s, &SALT, "p", 65536, &past, &e, 1_300, 1_021),
            Ok(ReplayOutcome::Replayed)
        );
        // once the old horizon has passed the past layout is dropped
        assert_eq!(replay_layouts(&s, "p", 65536, 60, 1_316), Ok(vec![]));
    }

    #[test]
    fn a_draining_configuration_and_its_successor_find_each_others_values() {
        let s = MemStore::default();
        let old_d = moved_by_resize(1024, 65536, [0xff; 16]);
        let new_d = moved_by_resize(65536, 1024, old_d);
        // 1024 entries, tokens of up to 300 s; then 65,536 at 1_000
        assert_eq!(replay_layouts(&s, "p", 1024, 310, 0), Ok(vec![]));
        let past = replay_layouts(&s, "p", 65536, 310, 1_000).unwrap();
        assert_eq!(
            past,
            vec![PastLayout {
                capacity: 1024,
                until: 1_315
            }]
        );
        // Recorded by the old configuration just before its first tick.
        assert_eq!(
            replay_check(&s, &SALT, "p", 1024, &[], &old_d, 1_300, 1_000),
            Ok(ReplayOutcome::Fresh)
        );
        // The old configuration keeps serving its keep-alive connections
        // (listener drain); ticking, it learns it was replaced: it records
        // under the new capacity, and still looks under its own.
        let old = follow_replay_layouts(&s, "p", 1024, 310, 1_001).unwrap();
        assert_eq!(
            old,
            Layouts {
                record_under: Some(65536),
                past: vec![PastLayout {
                    capacity: 1024,
                    until: 1_315
                }]
            }
        );
        let new = follow_replay_layouts(&s, "p", 65536, 310, 1_001).unwrap();
        assert_eq!(
            new,
            Layouts {
                record_under: None,
                past: past.clone()
            }
        );
        let check = |l: &Layouts, d: &[u8; 16], now: u64| {
            replay_check(
                &s,
                &SALT,
                "p",
                l.record_under.unwrap_or(65536),
                &l.past,
                d,
                1_700,
                now,
            )
        };
        // What it had recorded is a replay on either.
        assert_eq!(check(&new, &old_d, 1_002), Ok(ReplayOutcome::Replayed));
        assert_eq!(check(&old, &old_d, 1_002), Ok(ReplayOutcome::Replayed));
        // A value first used on either is a replay on the other, in the same
        // bucket (one CAS decides when both see it at once), long after the
        // old layout ended.
        assert_eq!(check(&new, &new_d, 1_003), Ok(ReplayOutcome::Fresh));
        assert_eq!(check(&old, &new_d, 1_004), Ok(ReplayOutcome::Replayed));
        let e = moved_by_resize(65536, 1024, [0xee; 16]);
        assert_eq!(check(&old, &e, 1_400), Ok(ReplayOutcome::Fresh));
        let new = follow_replay_layouts(&s, "p", 65536, 310, 1_400).unwrap();
        assert_eq!(new, Layouts::default(), "1024 ended at 1_315");
        assert_eq!(check(&new, &e, 1_401), Ok(ReplayOutcome::Replayed));
        // An old configuration with longer tokens raises the current
        // capacity's horizon, so what it records there outlives a later
        // change as long as its tokens do.
        follow_replay_layouts(&s, "p", 1024, 3_610, 1_402).unwrap();
        let later = replay_layouts(&s, "p", 4096, 310, 1_500).unwrap();
        assert_eq!(
            later,
            vec![PastLayout {
                capacity: 65536,
                until: 1_500 + 3_610 + 5
            }]
        );
        // Without a record, nothing to follow and nothing written.
        assert_eq!(
            follow_replay_layouts(&s, "q", 1024, 310, 0),
            Ok(Layouts::default())
        );
        assert!(s.get("appguard/replay/q/layout").is_none());
    }

    #[test]
    fn layouts_keep_the_longest_horizon_and_forget_a_capacity_that_returns() {
        let s = MemStore::default();
        assert_eq!(replay_layouts(&s, "p", 1024, 86_400, 0), Ok(vec![]));
        // same capacity, shorter tokens: values recorded under the day-long
        // horizon are still there, so it is kept
        assert_eq!(replay_layouts(&s, "p", 1024, 60, 10), Ok(vec![]));
        let past = replay_layouts(&s, "p", 2048, 60, 20).unwrap();
        assert_eq!(
            past,
            vec![PastLayout {
                capacity: 1024,
                until: 86_425
            }]
        );
        // back to 1024: that layout is current again, 2048 becomes past
        assert_eq!(
            replay_layouts(&s, "p", 1024, 60, 30),
            Ok(vec![PastLayout {
                capacity: 2048,
                until: 95
            }])
        );
        // a new capacity: 1024's values recorded under the day-long horizon
        // (at 10, live until 86,425) stay looked up, though 1024 came back
        // with a configuration of 60 s tokens in between
        let past = replay_layouts(&s, "p", 4096, 60, 40).unwrap();
        assert!(
            past.iter().any(|p| p.capacity == 1024 && p.until >= 86_425),
            "{past:?}"
        );
        // tables are separate
        assert_eq!(replay_layouts(&s, "q", 4096, 60, 30), Ok(vec![]));
        // a record that is not a layout is replaced, not trusted
        s.set("appguard/replay/r/layout", b"junk", 0).unwrap();
        assert_eq!(replay_layouts(&s, "r", 16, 60, 30), Ok(vec![]));
        // at most PAST_LAYOUTS_MAX, the latest kept
        for (i, cap) in (1..=10u32).map(|n| n * 16).enumerate() {
            let _ = replay_layouts(&s, "t", cap, 1_000, i as u64);
        }
        let past = replay_layouts(&s, "t", 4096, 1_000, 20).unwrap();
        assert_eq!(past.len(), PAST_LAYOUTS_MAX);
        assert!(past.iter().any(|p| p.capacity == 160));
        assert!(past.iter().all(|p| p.capacity > 32));
    }

    // review57-state F3: workers read the clock a moment apart, and a
    // token whose `exp` plus skew is second 100 is accepted until 100 ends.
    // A worker whose clock already reads 101 records another value in the
    // same bucket and drops the entry (expired, by its clock); a copy of
    // the first token, checked by a worker still at 100 (its clock read
    // before the signature was verified), then finds nothing: fresh, and
    // accepted a second time.
    #[test]
    fn a_writer_a_second_ahead_keeps_a_value_a_reader_still_accepts() {
        let s = MemStore::default();
        let d = [3u8; 16];
        // capacity 16: one bucket, so the other value shares it
        assert_eq!(
            replay_check(&s, &SALT, "p", 16, &[], &d, 100, 90),
            Ok(ReplayOutcome::Fresh)
        );
        assert_eq!(
            replay_check(&s, &SALT, "p", 16, &[], &[4u8; 16], 200, 101),
            Ok(ReplayOutcome::Fresh)
        );
        assert!(replay_seen(&s, &SALT, "p", 16, &[], &d, 100), "seen");
        assert_eq!(
            replay_check(&s, &SALT, "p", 16, &[], &d, 100, 100),
            Ok(ReplayOutcome::Replayed),
            "the copy checked at 100 is a replay"
        );
    }

    #[test]
    fn full_bucket_fails_closed() {
        let s = MemStore::default();
        // capacity 16 = one bucket of 16
        for i in 0..16u8 {
            assert_eq!(
                replay_check(&s, &SALT, "p", 16, &[], &[i; 16], 100, 0),
                Ok(ReplayOutcome::Fresh)
            );
        }
        assert_eq!(
            replay_check(&s, &SALT, "p", 16, &[], &[99; 16], 100, 0),
            Ok(ReplayOutcome::Full)
        );
        assert_eq!(
            replay_check(&s, &SALT, "p", 16, &[], &[99; 16], 200, 101),
            Ok(ReplayOutcome::Fresh)
        );
    }

    #[test]
    fn cas_create_does_not_clobber() {
        let s = MemStore::default();
        assert_eq!(s.set("k", b"a", CAS_CREATE), Ok(()));
        assert_eq!(s.set("k", b"b", CAS_CREATE), Err(StoreError::CasMismatch));
        let (_, cas) = s.get("k").unwrap();
        assert_eq!(s.set("k", b"c", cas), Ok(()));
        assert_eq!(s.get("k").unwrap().0, b"c");
    }

    /// `n` digests whose bucket among `buckets` is that of `[0; 16]`, under
    /// `salt`: what a client could search for offline if it knew the salt.
    fn colliding(salt: &BucketSalt, buckets: u32, n: usize) -> Vec<[u8; 16]> {
        let target = bucket_of(salt, &[0u8; 16], buckets);
        (1u32..)
            .map(|i| {
                let mut d = [0u8; 16];
                d[..4].copy_from_slice(&i.to_le_bytes());
                d
            })
            .filter(|d| bucket_of(salt, d, buckets) == target)
            .take(n)
            .collect()
    }

    #[test]
    fn the_bucket_depends_on_the_salt() {
        let a = BucketSalt::new([0x11; 16]);
        let b = BucketSalt::new([0x22; 16]);
        // The same digests spread differently under two salts.
        let moved = (0u8..64)
            .filter(|i| bucket_of(&a, &[*i; 16], 4096) != bucket_of(&b, &[*i; 16], 4096))
            .count();
        assert!(moved > 60, "{moved} of 64 digests changed bucket");
        // Values found to share a bucket under one salt are scattered
        // under another, as if drawn at random.
        let found = colliding(&a, 4096, 16);
        let target = bucket_of(&b, &[0u8; 16], 4096);
        let still = found
            .iter()
            .filter(|d| bucket_of(&b, d.as_slice(), 4096) == target)
            .count();
        assert!(still <= 1, "{still} of 16 still collide");
    }

    #[test]
    fn a_replay_bucket_filled_for_one_salt_is_not_full_under_another() {
        let known = BucketSalt::new([0x33; 16]);
        let secret = BucketSalt::new([0x44; 16]);
        // 1024 entries = 64 buckets of 16: sixteen values aimed at the
        // bucket of `[0; 16]` fill it when the salt is the one aimed at...
        for salt in [known, secret] {
            let s = MemStore::default();
            for d in colliding(&known, 64, 16) {
                assert_eq!(
                    replay_check(&s, &salt, "p", 1024, &[], &d, 100, 0),
                    Ok(ReplayOutcome::Fresh)
                );
            }
            let victim = replay_check(&s, &salt, "p", 1024, &[], &[0u8; 16], 100, 0);
            if salt == known {
                assert_eq!(victim, Ok(ReplayOutcome::Full));
            } else {
                // ... and not under the instance's own.
                assert_eq!(victim, Ok(ReplayOutcome::Fresh));
            }
        }
    }

    #[test]
    fn every_worker_gets_the_salt_the_first_one_stored() {
        let s = MemStore::default();
        let first = instance_salt(&s, || Some([5; 16])).unwrap();
        assert_eq!(first, BucketSalt::new([5; 16]));
        // Later workers read it and draw nothing.
        let second = instance_salt(&s, || panic!("drew a second salt")).unwrap();
        assert_eq!(second, first);
        // Without a salt and without randomness, no salt (and no default).
        let empty = MemStore::default();
        assert_eq!(instance_salt(&empty, || None), Err(SaltError::Random));
        assert!(empty.get(SALT_KEY).is_none());
        // Something else under the key is refused, not used or replaced.
        empty.set(SALT_KEY, b"short", 0).unwrap();
        assert_eq!(
            instance_salt(&empty, || Some([6; 16])),
            Err(SaltError::Malformed)
        );
        assert_eq!(empty.get(SALT_KEY).unwrap().0, b"short");
        // The salt never shows in logs.
        assert_eq!(format!("{first:?}"), "BucketSalt(..)");
    }

    /// A store where another worker creates the salt between this worker's
    /// read and its write.
    struct Racing {
        inner: MemStore,
        raced: RefCell<bool>,
    }

    impl SharedStore for Racing {
        fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
            self.inner.get(key)
        }
        fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
            if !self.raced.replace(true) {
                self.inner.set(key, &[9; 16], CAS_CREATE)?;
            }
            self.inner.set(key, value, cas)
        }
    }

    #[test]
    fn a_worker_that_loses_the_race_takes_the_winners_salt() {
        let s = Racing {
            inner: MemStore::default(),
            raced: RefCell::new(false),
        };
        assert_eq!(
            instance_salt(&s, || Some([1; 16])),
            Ok(BucketSalt::new([9; 16]))
        );
        assert_eq!(s.inner.get(SALT_KEY).unwrap().0, [9; 16]);
    }

    // review57-state answers (passing): two workers racing on one `jti`,
    // and shared data that fails.

    /// A store where another worker runs `hook` between this worker's read
    /// and its first write.
    struct Interleaved<'a> {
        inner: &'a MemStore,
        hook: RefCell<Option<Box<dyn FnOnce() + 'a>>>,
    }

    impl SharedStore for Interleaved<'_> {
        fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
            self.inner.get(key)
        }
        fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
            if let Some(hook) = self.hook.borrow_mut().take() {
                hook();
            }
            self.inner.set(key, value, cas)
        }
    }

    #[test]
    fn two_workers_racing_one_value_accept_it_once() {
        let d = [42u8; 16];
        // The bucket absent for both (creation race), then present.
        for existing in [false, true] {
            let s = MemStore::default();
            if existing {
                assert_eq!(
                    replay_check(&s, &SALT, "p", 16, &[], &[1; 16], 100, 0),
                    Ok(ReplayOutcome::Fresh)
                );
            }
            let other = RefCell::new(None);
            let a = Interleaved {
                inner: &s,
                hook: RefCell::new(Some(Box::new(|| {
                    *other.borrow_mut() = Some(replay_check(&s, &SALT, "p", 16, &[], &d, 100, 0));
                }))),
            };
            let mine = replay_check(&a, &SALT, "p", 16, &[], &d, 100, 0);
            assert_eq!(*other.borrow(), Some(Ok(ReplayOutcome::Fresh)));
            assert_eq!(mine, Ok(ReplayOutcome::Replayed), "existing={existing}");
        }
    }

    /// Shared data whose reads fail (read as absent, as `HostStore` does),
    /// or whose writes fail.
    struct Failing<'a> {
        inner: &'a MemStore,
        reads: bool,
    }

    impl SharedStore for Failing<'_> {
        fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
            if self.reads {
                None
            } else {
                self.inner.get(key)
            }
        }
        fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
            if self.reads {
                self.inner.set(key, value, cas)
            } else {
                Err(StoreError::Host)
            }
        }
    }

    #[test]
    fn a_replay_check_on_failing_shared_data_never_says_fresh_for_a_recorded_value() {
        let s = MemStore::default();
        let d = [42u8; 16];
        assert_eq!(
            replay_check(&s, &SALT, "p", 16, &[], &d, 100, 0),
            Ok(ReplayOutcome::Fresh)
        );
        for reads in [true, false] {
            let f = Failing { inner: &s, reads };
            let r = replay_check(&f, &SALT, "p", 16, &[], &d, 100, 1);
            assert_ne!(r, Ok(ReplayOutcome::Fresh), "reads fail: {reads}");
            // a fresh value cannot be recorded: an error (fail closed)
            let r = replay_check(&f, &SALT, "p", 16, &[], &[9; 16], 100, 1);
            assert!(r.is_err(), "reads fail: {reads}: {r:?}");
        }
        // a recorded value under a past layout, whose read fails, is not
        // seen there (the current bucket, absent, is created): the one
        // case where a failing read would say Fresh
        let past = [PastLayout {
            capacity: 32,
            until: 100,
        }];
        let s = MemStore::default();
        let e = [7u8; 16];
        replay_check(&s, &SALT, "p", 32, &[], &e, 100, 0).unwrap();
        let f = Failing {
            inner: &s,
            reads: true,
        };
        assert_eq!(
            replay_check(&f, &SALT, "p", 16, &past, &e, 100, 1),
            Ok(ReplayOutcome::Fresh)
        );
    }
}
