//! Remote JWKS: fetched through an Envoy cluster, shared by the workers of an
//! instance through shared data, parsed once per worker per version.
//!
//! The cache's protocol lives here, in the core, as Envoy's `jwt_authn`
//! keeps its `jwks_cache` apart from its filter: which copy a worker
//! loads, which answer may replace the shared copy, who refreshes, and
//! when a request may fetch. It reads the instance's shared data through
//! [`SharedStore`] and the time as arguments, so that it is tested with a
//! [`store::MemStore`] shared by several simulated workers; the adapter
//! only dispatches the GETs and hands their answers here.
//!
//! Shared-data layout: `appguard/jwks2/<provider>/<source>` holds 8 bytes of
//! fetch time (little-endian milliseconds since the epoch at which the GET
//! was dispatched: a copy is only replaced by a fetch dispatched no earlier;
//! `jwks` held seconds of arrival, hence the new name) followed by the JWKS
//! JSON; its CAS
//! value is the version a worker compares against.
//! `appguard/jwks-lease/<provider>/<source>` holds the time until which one
//! worker owns the next fetch, so that a refresh is done by one worker, not
//! all of them (`jwks-refetch` likewise for unknown-`kid` re-fetches).
//!
//! `<source>` is a digest of the provider name and where its JWKS comes from
//! (cluster, authority, path): shared data belongs to the VM and outlives a
//! configuration, and several plugins may share a VM, so a key scoped by the
//! name only would serve one source's keys to a provider configured with
//! another (after a configuration update, or between two plugins).

use std::rc::Rc;

use log::{info, warn};
use sha2::{Digest, Sha256};

use crate::policy::{KeyFetch, RemoteKeys};
use crate::store::{self, SharedStore};
use crate::token::keys::{keys_from_jwks, JwksOrigin};
use crate::token::RemoteJwks;

/// Largest JWKS accepted.
pub const MAX_JWKS_BYTES: usize = 64 * 1024;

/// What one worker knows about one provider's remote keys.
#[derive(Default)]
pub struct JwksSlot {
    /// Shared-data CAS of the loaded version.
    pub loaded_cas: Option<u32>,
    /// When the GET that fetched the loaded keys was dispatched (by any
    /// worker), in milliseconds since the epoch: whether keys were fetched
    /// after a request arrived must not be judged by the second (see
    /// [`request_fetch`]; [`JwksSlot::fetched_at`] in seconds).
    pub fetched_at_ms: u64,
    /// The keys, as the policy sees them.
    pub keys: RemoteKeys,
    /// Last unknown-`kid` re-fetch from this worker.
    pub last_refetch: u64,
    /// Last second this worker asked for the instance's re-fetch lease
    /// and found it taken: it asks again the next second at the earliest,
    /// so a flood of unknown `kid`s costs one shared-data look a second,
    /// not one per request.
    pub refetch_lease_taken_at: Option<u64>,
    /// When (milliseconds since the epoch) the instance's latest
    /// unknown-`kid` re-fetch this worker knows of was dispatched: taken
    /// by a request of this worker, or read from the lease another worker
    /// holds (see [`take_refetch_lease`]). While its answer is due and no
    /// keys dispatched since are loaded ([`JwksSlot::refetch_in_flight`]),
    /// other requests with an unknown `kid` wait for it
    /// ([`RequestFetch::Wait`]) rather than being refused: they most likely
    /// carry the key of the same rotation.
    pub refetch_sent_ms: Option<u64>,
    /// Last second this worker looked at the shared copy.
    pub last_maintained: u64,
    /// Last second a request of this worker looked at the shared copy
    /// before asking for keys (at most once a second: each look copies
    /// the stored JWKS, up to 64 KiB, out of shared data).
    pub last_request_sync: Option<u64>,
    /// Fetches started by requests of this worker that have not answered
    /// yet (at most [`MAX_REQUEST_FETCHES`]): each call's token and the
    /// second after which it no longer counts (its timeout has passed).
    /// A request that goes away does not end its fetch: Envoy makes the
    /// call for the plugin, not the stream, so the GET runs on until it
    /// answers or times out, and keeps its place until then.
    pub request_fetches: Vec<(u32, u64)>,
    /// The second a request fetch of this worker last failed (an error
    /// status, no answer, or keys that would not load). No request starts
    /// another fetch within that second: an endpoint that fails fast would
    /// otherwise free the slots at once and get one GET per request.
    pub request_fetch_failed_at: Option<u64>,
    /// A request fetch dispatched at this second lost its answer: its
    /// request went away first, and the SDK drops the answer with the
    /// request's context. The keys are due (the root fetches them on its
    /// next tick) until keys fetched after that second are loaded: the
    /// request most likely named a `kid` of a rotation, and its fetch held
    /// the instance's re-fetch lease.
    pub refetch_lost_at: Option<u64>,
    /// The lost re-fetch ([`JwksSlot::refetch_lost_at`]) the root already
    /// made again at once, without waiting for the refresh lease (see
    /// [`redo_lost_refetch`]): once; later tries take the lease.
    pub refetch_redone_at: Option<u64>,
    /// The last failed background refresh logged: its second, how many
    /// failed the same way since without a line, and what it said. While
    /// the endpoint stays down (or its cluster is misnamed) the root
    /// retries every `timeout_ms` + 1 s for as long as Envoy runs, and
    /// says so once a minute, and at once when the failure changes.
    pub refresh_failure_logged: Option<(u64, u32, String)>,
}

/// How often a run of failed background refreshes is logged.
const REFRESH_FAILURE_LOG_SECONDS: u64 = 60;

impl JwksSlot {
    /// [`JwksSlot::fetched_at_ms`] in seconds.
    pub fn fetched_at(&self) -> u64 {
        self.fetched_at_ms / 1000
    }

    /// A background refresh failed at `now`, as `what` says: `Some(n)`
    /// when it is to be logged (the first failure of a run, one that
    /// failed otherwise than the last line said, then once a minute), `n`
    /// being how many failed since the last line; `None` to stay quiet.
    pub fn refresh_failed(&mut self, now: u64, what: &str) -> Option<u32> {
        // Keys fetched since the last line (by another worker, or by a
        // request of this one): the run that line belonged to is over.
        if self
            .refresh_failure_logged
            .as_ref()
            .is_some_and(|(at, _, _)| self.fetched_at() > *at)
        {
            self.refresh_failure_logged = None;
        }
        match &mut self.refresh_failure_logged {
            Some((at, held, said))
                if said == what && now < at.saturating_add(REFRESH_FAILURE_LOG_SECONDS) =>
            {
                *held = held.saturating_add(1);
                None
            }
            logged => {
                let held = logged.as_ref().map_or(0, |(_, held, _)| *held);
                *logged = Some((now, 0, what.to_owned()));
                Some(held)
            }
        }
    }

    /// A background refresh brought keys: the next failure is logged.
    pub fn refresh_succeeded(&mut self) {
        self.refresh_failure_logged = None;
    }

    /// How many request fetches are in flight at `now` (seconds), after
    /// dropping those past their timeout (see `fetch_live`).
    pub fn fetches_in_flight(&mut self, now: u64) -> usize {
        self.request_fetches
            .retain(|&(_, until)| fetch_live(until, now));
        self.request_fetches.len()
    }

    /// Records a request fetch dispatched at `now` with `timeout_ms`.
    pub fn fetch_started(&mut self, token: u32, now: u64, timeout_ms: u64) {
        let until = now.saturating_add(timeout_ms.div_ceil(1000).saturating_add(1));
        self.request_fetches.push((token, until));
    }

    /// The fetch with `token` answered (or failed).
    pub fn fetch_ended(&mut self, token: u32) {
        self.request_fetches.retain(|&(t, _)| t != token);
    }

    /// The dispatch time of the instance's re-fetch ([`JwksSlot::refetch_sent_ms`])
    /// when it is still in flight at `now_ms`: its `timeout_ms` has not
    /// passed and no keys dispatched at or after it are loaded here (its
    /// own answer, a later one, or another worker's copy of either). A
    /// dispatch time more than a second ahead of `now_ms` is from before
    /// the clock was set back, and is not waited for.
    pub fn refetch_in_flight(&self, remote: &RemoteJwks, now_ms: u64) -> Option<u64> {
        let sent = self.refetch_sent_ms?;
        (self.fetched_at_ms < sent
            && sent <= now_ms.saturating_add(1000)
            && now_ms < sent.saturating_add(remote.timeout_ms))
        .then_some(sent)
    }

    /// This worker's re-fetch dispatched at `sent_ms` failed (it could not
    /// be dispatched, brought no answer, or keys that would not load):
    /// the requests waiting for it stop waiting ([`waited`]).
    pub fn forget_refetch(&mut self, sent_ms: u64) {
        if self.refetch_sent_ms == Some(sent_ms) {
            self.refetch_sent_ms = None;
        }
    }
    /// Whether a request fetch failed at `now` (seconds) or within the
    /// `timeout_ms` and second before it: the endpoint is failing, or does
    /// not answer at all, and requests that find no keys answer by their
    /// route's `failure_mode` at once rather than wait for the fetches in
    /// flight ([`RequestFetch::WaitFirstKeys`]), which would most likely
    /// fail too: an endpoint that hangs would otherwise hold every request
    /// for `timeout_ms`. A failure dated ahead of `now` (a clock set back)
    /// counts as lately.
    pub fn request_fetch_failed_lately(&self, now: u64, remote: &RemoteJwks) -> bool {
        let span = remote.timeout_ms.div_ceil(1000).saturating_add(1);
        self.request_fetch_failed_at
            .is_some_and(|f| now <= f.saturating_add(span))
    }

    /// Whether a request may start a fetch at `now` (seconds): fewer than
    /// [`MAX_REQUEST_FETCHES`] in flight, and none failed this second.
    pub fn may_start_request_fetch(&mut self, now: u64) -> bool {
        self.request_fetch_failed_at != Some(now)
            && self.fetches_in_flight(now) < MAX_REQUEST_FETCHES
    }
}

/// The longest a request fetch counts as in flight, in seconds: the
/// largest `timeout_ms` (60 s), rounded up, and one more
/// ([`JwksSlot::fetch_started`]).
const MAX_FETCH_SECONDS: u64 = 61;

/// Whether a request fetch that counts until second `until` is still in
/// flight at `now`: its timeout has not passed, and it was not started
/// "later" than `now` (a clock set back: counted on, a fetch whose answer
/// was lost would hold the worker's fetches and its waiters for as long
/// as the step).
fn fetch_live(until: u64, now: u64) -> bool {
    until > now && until <= now.saturating_add(MAX_FETCH_SECONDS)
}

/// Whether the clock at `now_ms` is more than a second behind a request
/// that arrived at `arrived_ms`: set back while it waited, so that its
/// deadline, from the clock before, no longer bounds its wait.
fn clock_set_back(arrived_ms: u64, now_ms: u64) -> bool {
    now_ms.saturating_add(1000) < arrived_ms
}

/// The instance's re-fetch lease records a failed re-fetch in a fourth
/// field: its dispatch time again (bytes 24..32).
const LEASE_FAILED_AT: usize = 24;

/// This worker's re-fetch dispatched at `sent_ms` failed: its own waiting
/// requests stop waiting ([`JwksSlot::forget_refetch`]), and the lease in
/// shared data says so, so that the other workers' stop too
/// ([`notice_failed_refetch`]) rather than waiting out its deadline
/// (review-wait50 F3). Nothing for a fetch that was not the lease's (the
/// first keys).
pub fn refetch_failed<S: SharedStore + ?Sized>(
    shared: &S,
    slot: &mut JwksSlot,
    provider: &str,
    remote: &RemoteJwks,
    sent_ms: u64,
) {
    if slot.refetch_sent_ms != Some(sent_ms) {
        return;
    }
    slot.forget_refetch(sent_ms);
    let key = shared_key("jwks-refetch", provider, remote);
    let _ = store::update(shared, &key, |cur| match cur {
        Some(lease) if store::u64_at(lease, 16) == Some(sent_ms) => {
            let mut marked = lease.get(..LEASE_FAILED_AT).unwrap_or(lease).to_vec();
            marked.extend_from_slice(&sent_ms.to_le_bytes());
            (Some(marked), ())
        }
        _ => (None, ()),
    });
}

/// Whether the lease at `lease` (its bytes) records its own re-fetch as
/// failed ([`refetch_failed`]).
fn lease_failed(lease: &[u8]) -> bool {
    let sent = store::u64_at(lease, 16);
    sent.is_some() && store::u64_at(lease, LEASE_FAILED_AT) == sent
}

/// From the root's tick while requests wait: if the re-fetch they wait for
/// failed on another worker (its lease says so), forgets it, so that they
/// are refused now ([`waited`]) rather than at their deadline.
pub fn notice_failed_refetch<S: SharedStore + ?Sized>(
    shared: &S,
    slot: &mut JwksSlot,
    provider: &str,
    remote: &RemoteJwks,
) {
    let Some(sent) = slot.refetch_sent_ms else {
        return;
    };
    let key = shared_key("jwks-refetch", provider, remote);
    if shared
        .get(&key)
        .is_some_and(|(lease, _)| lease_failed(&lease) && store::u64_at(&lease, 16) == Some(sent))
    {
        slot.forget_refetch(sent);
    }
}

/// ` (n more since the last line)` for a run of failures logged once a
/// minute, or nothing.
pub fn held_note(held: u32) -> String {
    if held == 0 {
        String::new()
    } else {
        format!(" ({held} more failed since the last line)")
    }
}

/// How many fetches the requests of one worker may have in flight for one
/// provider. While no keys are loaded (a cold start, a JWKS down past its
/// grace) each request with a token would otherwise send its own GET and
/// wait for it: a flood would become a flood on the JWKS endpoint, just
/// when it is struggling. Requests beyond this wait for those fetches
/// ([`RequestFetch::WaitFirstKeys`]), or answer by the route's
/// `failure_mode` at once while one failed lately
/// ([`JwksSlot::request_fetch_failed_lately`]); the root's background
/// refresh keeps trying.
pub const MAX_REQUEST_FETCHES: usize = 4;

/// The shared-data key of one kind of a provider's JWKS state: `jwks` (the
/// fetched JWKS), `jwks-lease`, `jwks-refetch`. It depends on the provider
/// name and on the JWKS source (cluster, authority, path), so that a worker
/// only ever loads keys fetched from the source its configuration names,
/// whatever other configurations of the VM, or earlier ones, stored. Every
/// part of the digest is length-prefixed, so no choice of names makes two
/// different sources hash alike.
pub fn shared_key(kind: &str, provider: &str, remote: &RemoteJwks) -> String {
    let hex = store::parts_digest_hex(
        &[
            provider.as_bytes(),
            remote.cluster.as_bytes(),
            remote.authority.as_bytes(),
            remote.path.as_bytes(),
        ],
        16,
    );
    format!("appguard/{kind}/{provider}/{hex}")
}

fn data_key(provider: &str, remote: &RemoteJwks) -> String {
    shared_key("jwks2", provider, remote)
}

/// Why a JWKS answer brought no document to load, for the log: its status,
/// and for a 200, that the document was over [`MAX_JWKS_BYTES`] (the one
/// way a 200 comes without a body to read).
pub fn unread_answer(status: u16, body_size: usize) -> String {
    if status == 200 && body_size > MAX_JWKS_BYTES {
        format!("status {status}, {body_size} bytes: over the {MAX_JWKS_BYTES}-byte limit")
    } else {
        format!("status {status}")
    }
}

/// Reloads the worker's keys from `shared` when another worker stored a
/// newer version. Drops keys older than [`RemoteJwks::keys_expire_after`]
/// at `now` (seconds).
pub fn sync<S: SharedStore + ?Sized>(
    shared: &S,
    slot: &mut JwksSlot,
    provider: &str,
    remote: &RemoteJwks,
    now: u64,
) {
    if let Some((bytes, cas)) = shared.get(&data_key(provider, remote)) {
        if slot.loaded_cas != Some(cas) && bytes.len() > 8 {
            let (ts, json) = bytes.split_at(8);
            let fetched_at_ms = u64::from_le_bytes(ts.try_into().unwrap_or([0; 8]));
            match keys_of(slot, json) {
                Ok((keys, version)) => {
                    slot.keys.keys = Some(keys);
                    slot.keys.version = version;
                    slot.fetched_at_ms = fetched_at_ms;
                }
                Err(e) => warn!("jwks {provider}: shared copy unusable: {e}"),
            }
            slot.loaded_cas = Some(cas);
        }
    }
    if slot.keys.keys.is_some()
        && now.saturating_sub(slot.fetched_at()) > remote.keys_expire_after()
    {
        warn!("jwks {provider}: keys older than refresh + grace, dropped");
        slot.keys.keys = None;
        slot.keys.version = 0;
    }
}

/// The keys of the fetched JWKS `body`, with its [`version`]: the slot's
/// own when it holds that document already (a refresh that brings the same
/// JWKS, as most do, written again to the shared copy for every worker),
/// else parsed. Parsing a JWKS of many keys costs tens of ms; the digest of
/// its bytes a fraction of that.
fn keys_of(slot: &JwksSlot, body: &[u8]) -> Result<(Rc<Vec<crate::token::Key>>, u64), String> {
    let v = version(body);
    match &slot.keys.keys {
        Some(keys) if slot.keys.version == v => Ok((keys.clone(), v)),
        _ => Ok((Rc::new(parse(body)?), v)),
    }
}

/// The [`RemoteKeys::version`] of a fetched JWKS: its first 8 digest bytes,
/// never 0 (which means no keys). A refresh that brings the same document
/// keeps the version, and with it the worker's verified tokens.
fn version(body: &[u8]) -> u64 {
    let d = Sha256::digest(body);
    let mut first = [0u8; 8];
    first.copy_from_slice(&d[..8]);
    u64::from_le_bytes(first).max(1)
}

/// Parses a fetched JWKS: unusable and symmetric (`oct`) keys skipped, at
/// least one key left. Parsed strictly, as token parts are: a member named
/// twice (which RFC 7517 §4 lets a parser refuse, and which two parsers
/// may read differently) or nesting deeper than 16 refuses the document.
pub fn parse(body: &[u8]) -> Result<Vec<crate::token::Key>, String> {
    if body.len() > MAX_JWKS_BYTES {
        return Err("JWKS too large".into());
    }
    let v = crate::token::strict_json::parse_object(body)
        .map(serde_json::Value::Object)
        .ok_or(
            "not a JSON object (invalid JSON, trailing data, a member named twice, or nesting \
             deeper than 16)",
        )?;
    let keys = keys_from_jwks(&v, JwksOrigin::Fetched)?;
    if keys.is_empty() {
        return Err("no usable signing keys".into());
    }
    Ok(keys)
}

/// Writes a fetched JWKS to the shared copy at `key` unless the copy there
/// came from a fetch dispatched later than this one (`started_ms`,
/// milliseconds since the epoch): answers can arrive out of order (a slow
/// GET sent before a key rotation answering after a quick one sent after
/// it), and the older keys must not replace the newer ones for every
/// worker. Within the same millisecond the later answer wins. A stored
/// time after `now_ms` can only come from a clock that was set back since:
/// that copy loses, or rotations would stall until the clock caught up.
/// Returns whether it was written.
pub fn publish<S: SharedStore + ?Sized>(
    shared: &S,
    key: &str,
    started_ms: u64,
    now_ms: u64,
    body: &[u8],
) -> Result<bool, store::StoreError> {
    store::update(shared, key, |current| {
        if current
            .and_then(|b| store::u64_at(b, 0))
            .is_some_and(|stored| stored > started_ms && stored <= now_ms)
        {
            return (None, false);
        }
        let mut value = Vec::with_capacity(8 + body.len());
        value.extend_from_slice(&started_ms.to_le_bytes());
        value.extend_from_slice(body);
        (Some(value), true)
    })
}

/// Stores a JWKS fetched by a GET dispatched at `started_ms` for every worker
/// of the same provider and source (see [`shared_key`]) in `shared`, and
/// loads it here; when a later fetch's keys are already stored
/// ([`publish`]), loads those instead. `now` is the time of the answer
/// (seconds); `clock_ms` is read for [`publish`] once the document has
/// parsed, right before the write: another worker may store a later
/// fetch's keys while this one parses, and a `now_ms` read before that
/// would take their time for one from before a clock step-back.
#[allow(clippy::too_many_arguments)]
pub fn store<S: SharedStore + ?Sized>(
    shared: &S,
    slot: &mut JwksSlot,
    provider: &str,
    remote: &RemoteJwks,
    body: &[u8],
    started_ms: u64,
    now: u64,
    clock_ms: impl FnOnce() -> u64,
) -> Result<(), String> {
    let (keys, version) = keys_of(slot, body)?;
    let key = data_key(provider, remote);
    match publish(shared, &key, started_ms, clock_ms(), body) {
        Ok(false) => {
            info!(
                "jwks {provider}: an answer to an earlier fetch ({} bytes) not stored: a later fetch's keys are",
                body.len()
            );
            slot.loaded_cas = None;
            sync(shared, slot, provider, remote, now);
            return Ok(());
        }
        // The version now stored is ours unless another worker wrote a
        // later fetch's keys since: then those are loaded, not labelled
        // with its version.
        Ok(true) => match shared.get(&key) {
            Some((stored, cas))
                if stored.get(8..) == Some(body)
                    && store::u64_at(&stored, 0) == Some(started_ms) =>
            {
                slot.loaded_cas = Some(cas);
            }
            _ => {
                slot.loaded_cas = None;
                sync(shared, slot, provider, remote, now);
                return Ok(());
            }
        },
        // The keys are valid: this worker uses them, and loads the shared
        // copy again once one is written.
        Err(e) => {
            warn!("jwks {provider}: cannot store the fetched keys for the other workers ({e:?})");
            slot.loaded_cas = None;
        }
    }
    slot.keys.keys = Some(keys);
    slot.keys.version = version;
    slot.fetched_at_ms = started_ms;
    info!("jwks {provider}: {} bytes loaded", body.len());
    Ok(())
}

/// Whether this worker should refresh now: the shared copy is due, and this
/// worker won the lease (so one fetch per instance, not one per worker).
/// `now_ms` is milliseconds since the epoch: the lease holds for the whole
/// of the fetch's timeout from the moment it was taken, not to the end of
/// a second (two workers starting a millisecond either side of a second
/// would both fetch).
pub fn take_refresh_lease<S: SharedStore + ?Sized>(
    shared: &S,
    slot: &JwksSlot,
    provider: &str,
    remote: &RemoteJwks,
    now_ms: u64,
) -> bool {
    due(slot, remote, now_ms / 1000)
        && take_lease_at_ms(
            shared,
            &shared_key("jwks-lease", provider, remote),
            remote.timeout_ms / 1000 + 1,
            now_ms,
        )
        .is_ok()
}

/// Whether this request may re-fetch for an unknown `kid` (keys loaded):
/// at most once per `min_refetch_seconds` per instance (a lease), and per
/// worker; a worker that found the lease taken asks again the next second
/// at the earliest. Records the re-fetch when it may, and otherwise when
/// the re-fetch that holds the lease was dispatched, if the lease says
/// ([`JwksSlot::refetch_sent_ms`]). `now_ms` is milliseconds since the
/// epoch.
pub fn take_refetch_lease<S: SharedStore + ?Sized>(
    shared: &S,
    slot: &mut JwksSlot,
    provider: &str,
    remote: &RemoteJwks,
    now_ms: u64,
) -> bool {
    let now = now_ms / 1000;
    let waited = slot.last_refetch > now
        || now.saturating_sub(slot.last_refetch) >= remote.min_refetch_seconds;
    if !waited || slot.refetch_lease_taken_at == Some(now) {
        return false;
    }
    let key = shared_key("jwks-refetch", provider, remote);
    match take_lease_at_ms(shared, &key, remote.min_refetch_seconds.max(1), now_ms) {
        Ok(()) => {
            slot.last_refetch = now;
            slot.refetch_sent_ms = Some(now_ms);
            true
        }
        Err(holder) => {
            slot.refetch_lease_taken_at = Some(now);
            if let Some(sent) = holder {
                slot.refetch_sent_ms = Some(sent);
            }
            false
        }
    }
}

/// What a request that needs a provider's keys (none loaded, or its `kid`
/// unknown) does next: see [`request_fetch`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestFetch {
    /// Fetch the JWKS now and wait for it: the caller dispatches the GET
    /// and records it with [`JwksSlot::fetch_started`].
    Dispatch,
    /// Do not fetch: evaluate the request again with what the slot holds,
    /// as the [`KeyFetch`] says.
    Evaluate(KeyFetch),
    /// Another request's re-fetch for an unknown `kid` (of this worker or
    /// another) is in flight: hold the request until keys dispatched at or
    /// after `sent_ms` are loaded, or until [`wait_deadline_ms`], then
    /// decide it as [`waited`] says. Refused at once instead, the genuine
    /// tokens of a rotation that arrive together would all but one get a
    /// 401 they cannot tell from a forgery.
    Wait {
        /// When the awaited re-fetch was dispatched (milliseconds since
        /// the epoch).
        sent_ms: u64,
    },
    /// No keys are loaded yet and [`MAX_REQUEST_FETCHES`] requests of this
    /// worker are fetching them: hold the request until keys are loaded
    /// (theirs, another worker's or the background refresh's) or those
    /// fetches are over, then decide it as [`waited_first_keys`] says.
    /// Answered at once instead, a burst that comes before the first keys
    /// (a new Envoy or Istio proxy taking traffic while its first fetch
    /// is on its way) would get `503 jwks_unavailable`, or under
    /// `failure_mode: allow` go on with its token unverified, for all but
    /// the four requests that fetch.
    WaitFirstKeys,
}

/// Slack after an awaited re-fetch's `timeout_ms` before a waiting request
/// gives up on it: the answer reaches the other workers through shared
/// data, which they look at on their next tick.
pub const WAIT_SLACK_MS: u64 = 250;

/// Until when (milliseconds since the epoch) a request that arrived at
/// `now_ms` waits for the re-fetch dispatched at `sent_ms`
/// ([`RequestFetch::Wait`]): its `timeout_ms` and [`WAIT_SLACK_MS`].
pub fn wait_deadline_ms(remote: &RemoteJwks, sent_ms: u64, now_ms: u64) -> u64 {
    sent_ms
        .min(now_ms)
        .saturating_add(remote.timeout_ms)
        .saturating_add(WAIT_SLACK_MS)
}

/// How a request held for the re-fetch dispatched at `sent_ms`
/// ([`RequestFetch::Wait`]) stands at `now_ms`, with the slot as this
/// worker has it: `None` to wait on; else evaluate it again as the
/// [`KeyFetch`] says. Keys dispatched at or after `sent_ms` end the wait.
/// They are `Fetched` (a `kid` they lack is made up, and charged to the
/// client's budget) only when they were also dispatched after the request
/// `arrived_ms`, as for keys copied from another worker
/// ([`request_fetch`]): the awaited GET went out before the request found
/// its lease taken (in the same millisecond, often, in a burst), and a key
/// published in between is not the client's fault. Past `until_ms`, or when the re-fetch is known to have failed
/// (this worker's own, see [`JwksSlot::refetch_sent_ms`]), `NotNow`;
/// so too once the clock is set back behind its arrival.
pub fn waited(
    slot: &JwksSlot,
    sent_ms: u64,
    arrived_ms: u64,
    until_ms: u64,
    now_ms: u64,
) -> Option<KeyFetch> {
    if slot.keys.keys.is_some() && slot.fetched_at_ms >= sent_ms {
        return Some(if slot.fetched_at_ms > arrived_ms {
            KeyFetch::Fetched
        } else {
            KeyFetch::NotNow
        });
    }
    if now_ms >= until_ms
        || clock_set_back(arrived_ms, now_ms)
        || slot.refetch_sent_ms.is_none_or(|s| s < sent_ms)
    {
        return Some(KeyFetch::NotNow);
    }
    None
}

/// How a request held for the first keys ([`RequestFetch::WaitFirstKeys`])
/// stands at `now_ms`: `None` to wait on; `NotNow` once keys are loaded
/// (dispatched before the request came, as far as it can tell: a `kid`
/// they lack is refused without charge to the client's budget), and also
/// past `until_ms` ([`wait_deadline_ms`] from its arrival `arrived_ms`),
/// once the clock is set back behind that arrival, or once none of this
/// worker's request fetches is left in flight (they failed: the route's
/// `failure_mode` answers, as it did at once before waiting).
pub fn waited_first_keys(
    slot: &JwksSlot,
    arrived_ms: u64,
    until_ms: u64,
    now_ms: u64,
) -> Option<KeyFetch> {
    let now = now_ms / 1000;
    let fetching = slot
        .request_fetches
        .iter()
        .any(|&(_, until)| fetch_live(until, now));
    (slot.keys.keys.is_some()
        || now_ms >= until_ms
        || clock_set_back(arrived_ms, now_ms)
        || !fetching)
        .then_some(KeyFetch::NotNow)
}

/// How a request whose own fetch of the keys, dispatched at `started_ms`,
/// is still on its way stands at `now_ms` with the slot as this worker has
/// it (keys another worker or the background refresh loaded meanwhile):
/// `None` to wait on for its own answer. Keys dispatched at or after its
/// GET are all that GET could bring: the request is decided as if its own
/// answer had loaded them (`Fetched`: a `kid` they lack is made up). Keys
/// dated more than a second ahead of `now_ms` were fetched before the
/// clock was set back, most likely the very keys that lacked its `kid`,
/// and overtake nothing (review52 F1: they decided a re-fetch for a
/// rotated `kid` as `Fetched`, refused and charged). When
/// it fetched the `first` keys (none were loaded then), any keys end the
/// wait as they end the wait of the requests held for the first keys
/// ([`waited_first_keys`], `NotNow`): fetched a moment before its GET,
/// they are the keys it would bring, and the requests that came after it
/// already passed with them. Otherwise it waits, as it did for every
/// fetch, for its own GET (at most `timeout_ms`), unless the keys loaded
/// name its token's `kid` ([`names_kid`], checked by the caller):
/// review51 F5 saw four fetching requests held 3 s by GETs that hung
/// while 36 later ones passed in milliseconds with another worker's keys.
pub fn overtaken(slot: &JwksSlot, started_ms: u64, first: bool, now_ms: u64) -> Option<KeyFetch> {
    slot.keys.keys.as_ref()?;
    let at = slot.fetched_at_ms;
    if at >= started_ms && at <= now_ms.saturating_add(1000) {
        Some(KeyFetch::Fetched)
    } else if first {
        Some(KeyFetch::NotNow)
    } else {
        None
    }
}

/// Whether the keys this worker has loaded name `kid`. A request held for
/// keys because no loaded key named its token's `kid` (waiting for a
/// re-fetch, or making one) goes on once such keys load, whichever GET
/// brought them, evaluated as `NotNow`: its key is there, and the
/// signature decides. Keys from a refresh sent just before the re-fetch
/// would otherwise leave it waiting for that re-fetch, up to `timeout_ms`
/// when its GET hangs, while later requests with the same `kid` pass
/// (review52 F3).
pub fn names_kid(slot: &JwksSlot, kid: &str) -> bool {
    slot.keys
        .keys
        .as_ref()
        .is_some_and(|keys| keys.iter().any(|k| k.kid.as_deref() == Some(kid)))
}

/// Decides whether a request of this worker fetches `provider`'s keys at
/// `now_ms` (milliseconds since the epoch). First, at most once a second,
/// it loads the copy another worker stored: if that brought other keys,
/// the request is evaluated again with them (as `Fetched` when their GET
/// went out at `now_ms` or later, since a `kid` they lack is then made
/// up; as `May` when earlier, even within the same second, since they may
/// predate its key). Without keys, it fetches unless
/// [`JwksSlot::may_start_request_fetch`] says no, and then waits for the
/// fetches in flight ([`RequestFetch::WaitFirstKeys`]) unless one failed
/// lately ([`JwksSlot::request_fetch_failed_lately`]: the endpoint is
/// down or hangs, answered at once); with keys (an unknown
/// `kid`), only when it wins the re-fetch lease
/// ([`take_refetch_lease`]); when another request's re-fetch is in
/// flight ([`JwksSlot::refetch_in_flight`]), it waits for that one.
/// Otherwise the request is evaluated as `NotNow`: missing keys answer by
/// the route's failure mode, an unknown `kid` is refused without charging
/// the client's budget.
pub fn request_fetch<S: SharedStore + ?Sized>(
    shared: &S,
    slot: &mut JwksSlot,
    provider: &str,
    remote: &RemoteJwks,
    now_ms: u64,
) -> RequestFetch {
    let now = now_ms / 1000;
    let before = slot.keys.version;
    if slot.last_request_sync != Some(now) {
        slot.last_request_sync = Some(now);
        sync(shared, slot, provider, remote, now);
    }
    let has_keys = slot.keys.keys.is_some();
    if has_keys && slot.keys.version != before {
        RequestFetch::Evaluate(if slot.fetched_at_ms >= now_ms {
            KeyFetch::Fetched
        } else {
            KeyFetch::May
        })
    } else if !has_keys {
        if slot.may_start_request_fetch(now) {
            RequestFetch::Dispatch
        } else if !slot.request_fetch_failed_lately(now, remote) {
            RequestFetch::WaitFirstKeys
        } else {
            RequestFetch::Evaluate(KeyFetch::NotNow)
        }
    } else if take_refetch_lease(shared, slot, provider, remote, now_ms) {
        RequestFetch::Dispatch
    } else if let Some(sent_ms) = slot.refetch_in_flight(remote, now_ms) {
        RequestFetch::Wait { sent_ms }
    } else {
        RequestFetch::Evaluate(KeyFetch::NotNow)
    }
}

/// Whether a re-fetch of this worker lost its answer
/// ([`JwksSlot::refetch_lost_at`]) and no keys fetched since have made up
/// for it: the root looks at every tick then, not once a second.
pub fn lost_refetch_pending(slot: &JwksSlot) -> bool {
    slot.refetch_lost_at.is_some_and(|t| slot.fetched_at() <= t)
}

/// Whether the root makes a lost re-fetch again now, without the refresh
/// lease: once per lost re-fetch. The lost GET held the instance's
/// re-fetch lease, so this worker owes the instance its keys, and other
/// requests may be waiting for them ([`RequestFetch::Wait`]); the refresh
/// lease may still be held by the last refresh (for `timeout_ms` + 1 s),
/// which would leave them to time out. Should this try fail too, the
/// keys stay due ([`take_refresh_lease`]), under the lease.
pub fn redo_lost_refetch(slot: &mut JwksSlot) -> bool {
    match slot.refetch_lost_at {
        Some(t) if lost_refetch_pending(slot) && slot.refetch_redone_at != Some(t) => {
            slot.refetch_redone_at = Some(t);
            true
        }
        _ => false,
    }
}

/// Whether the keys are due for a refresh: none yet, `refresh_seconds`
/// old, older than a request fetch whose answer was lost (see
/// [`JwksSlot::refetch_lost_at`]), or fetched "in the future" (the clock
/// was set back since: their age is unknown, so they are fetched again
/// rather than trusted until the clock catches up).
fn due(slot: &JwksSlot, remote: &RemoteJwks, now: u64) -> bool {
    slot.keys.keys.is_none()
        || slot.fetched_at() > now
        || now.saturating_sub(slot.fetched_at()) >= remote.refresh_seconds
        || slot.refetch_lost_at.is_some_and(|t| slot.fetched_at() <= t)
}

/// [`take_lease_at_ms`] at second `now`: whether the lease was taken.
#[cfg(test)]
fn take_lease_at<S: SharedStore + ?Sized>(shared: &S, key: &str, seconds: u64, now: u64) -> bool {
    take_lease_at_ms(shared, key, seconds, now.saturating_mul(1000)).is_ok()
}

/// A shared lease on `shared` at `key`, at `now_ms` (milliseconds since
/// the epoch): true for exactly one caller per `seconds`, among the
/// workers of the same provider and source (see [`shared_key`]). The lease records when it ends and when it was taken (in
/// seconds, then in milliseconds). One taken later than now (and a second
/// of slack) was taken before the clock was set back: it is stale, or no
/// worker would fetch until the clock caught up. Judged by when it was
/// taken, not by how far off its end is, so that a configuration with a
/// shorter `seconds` (another `min_refetch_seconds` for the same source)
/// does not take over a lease another one holds. A lease that holds is
/// `Err` with when it was taken in milliseconds, if it says: a lease
/// written by an earlier module has seconds only (then those), or its end
/// only (then `None`); earlier modules read the first two fields, and
/// ignore the third.
fn take_lease_at_ms<S: SharedStore + ?Sized>(
    shared: &S,
    key: &str,
    seconds: u64,
    now_ms: u64,
) -> Result<(), Option<u64>> {
    let now = now_ms / 1000;
    let mut holder = None;
    let taken = store::update(shared, key, |cur| {
        let until = cur.and_then(|b| store::u64_at(b, 0)).unwrap_or(0);
        // A second of slack: workers read the clock a moment apart. A lease
        // written before the taken time was recorded: by its end alone.
        let soon = now.saturating_add(1);
        let taken_s = cur.and_then(|b| store::u64_at(b, 8));
        let taken_before_now = match taken_s {
            Some(taken) => taken <= soon,
            None => until <= soon.saturating_add(seconds),
        };
        if until > now && taken_before_now {
            // A re-fetch that failed is waited for no more.
            holder = cur.filter(|b| !lease_failed(b)).and_then(|b| {
                store::u64_at(b, 16).or_else(|| taken_s.map(|t| t.saturating_mul(1000)))
            });
            (None, false)
        } else {
            // Its end rounded up to the second: held for at least
            // `seconds` from now, not only to the end of the second `now
            // + seconds` begins (which may be a millisecond away when
            // `seconds` is 1).
            let until = now_ms
                .saturating_add(seconds.saturating_mul(1000))
                .div_ceil(1000);
            let mut lease = until.to_le_bytes().to_vec();
            lease.extend_from_slice(&now.to_le_bytes());
            lease.extend_from_slice(&now_ms.to_le_bytes());
            (Some(lease), true)
        }
    })
    .unwrap_or(false);
    if taken {
        Ok(())
    } else {
        Err(holder)
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn remote(cluster: &str, authority: &str, path: &str) -> RemoteJwks {
        RemoteJwks {
            cluster: cluster.into(),
            authority: authority.into(),
            path: path.into(),
            refresh_seconds: 600,
            grace_seconds: 3600,
            timeout_ms: 2000,
            min_refetch_seconds: 30,
        }
    }

    /// A JWKS with one P-256 key made from `seed`, under `kid`.
    fn jwks_doc(seed: u8, kid: &str) -> Vec<u8> {
        use base64::Engine;
        use p256::elliptic_curve::sec1::ToEncodedPoint;
        let point = p256::SecretKey::from_slice(&[seed; 32])
            .unwrap()
            .public_key()
            .to_encoded_point(false);
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        format!(
            r#"{{"keys":[{{"kty":"EC","crv":"P-256","kid":"{kid}","alg":"ES256","x":"{}","y":"{}"}}]}}"#,
            b64(point.x().unwrap()),
            b64(point.y().unwrap())
        )
        .into_bytes()
    }

    /// Stores `doc` as fetched for provider `idp` by a GET dispatched at
    /// second `started` and answered at second `answered`.
    fn fetched(
        shared: &store::MemStore,
        slot: &mut JwksSlot,
        r: &RemoteJwks,
        doc: &[u8],
        started: u64,
        answered: u64,
    ) {
        store(
            shared,
            slot,
            "idp",
            r,
            doc,
            started * 1000,
            answered,
            || answered * 1000,
        )
        .unwrap();
    }

    fn kids(slot: &JwksSlot) -> Vec<String> {
        slot.keys
            .keys
            .as_ref()
            .map(|k| k.iter().filter_map(|k| k.kid.clone()).collect())
            .unwrap_or_default()
    }

    #[test]
    fn keys_one_worker_stores_are_loaded_by_the_others() {
        let shared = store::MemStore::default();
        let r = remote("jwks", "idp.example", "/k");
        let (mut a, mut b) = (JwksSlot::default(), JwksSlot::default());
        let t = 1_000_000u64;
        store(
            &shared,
            &mut a,
            "idp",
            &r,
            &jwks_doc(7, "k1"),
            t * 1000,
            t,
            || t * 1000 + 40,
        )
        .unwrap();
        assert_eq!(kids(&a), ["k1"]);
        assert_eq!(a.fetched_at(), t, "dated by the GET's dispatch");
        // The other worker copies it, with the same version: a token one
        // worker verified is not verified again by the other for that.
        sync(&shared, &mut b, "idp", &r, t + 1);
        assert_eq!(kids(&b), ["k1"]);
        assert_eq!(
            (b.keys.version, b.loaded_cas),
            (a.keys.version, a.loaded_cas)
        );
        assert_ne!(b.keys.version, 0);
        // Another source's copy is not theirs (another provider, another
        // path): nothing to load.
        let mut c = JwksSlot::default();
        sync(
            &shared,
            &mut c,
            "idp",
            &remote("jwks", "idp.example", "/other"),
            t + 1,
        );
        sync(&shared, &mut c, "idp2", &r, t + 1);
        assert!(c.keys.keys.is_none());
        // Refused documents are neither stored nor loaded.
        assert!(store(&shared, &mut c, "idp", &r, b"{}", t * 1000, t, || t * 1000).is_err());
        assert!(c.keys.keys.is_none());
        // Past refresh and grace without a newer copy, the keys are
        // dropped where they were loaded.
        sync(&shared, &mut b, "idp", &r, t + r.keys_expire_after());
        assert_eq!(kids(&b), ["k1"], "not yet");
        sync(&shared, &mut b, "idp", &r, t + r.keys_expire_after() + 1);
        assert!(b.keys.keys.is_none());
        assert_eq!(b.keys.version, 0);
    }

    #[test]
    fn a_refresh_that_brings_the_same_document_is_not_parsed_again() {
        let shared = store::MemStore::default();
        let r = remote("jwks", "idp.example", "/k");
        let (mut a, mut b) = (JwksSlot::default(), JwksSlot::default());
        // Worker a fetches `doc` at `t`; worker b reads the shared copy.
        let fetch = |a: &mut JwksSlot, b: &mut JwksSlot, doc: &[u8], t: u64| {
            store(&shared, a, "idp", &r, doc, t * 1000, t, || t * 1000).unwrap();
            sync(&shared, b, "idp", &r, t + 1);
        };
        let t = 1_000_000u64;
        fetch(&mut a, &mut b, &jwks_doc(7, "k1"), t);
        let (held_a, held_b) = (a.keys.keys.clone().unwrap(), b.keys.keys.clone().unwrap());
        let (version, cas) = (b.keys.version, b.loaded_cas);
        // The refresh writes the same document again, a new CAS for every
        // worker: both read it, take its date, and keep the keys they hold.
        let t2 = t + 60;
        fetch(&mut a, &mut b, &jwks_doc(7, "k1"), t2);
        assert_ne!(b.loaded_cas, cas, "the new copy was read");
        assert!(
            Rc::ptr_eq(a.keys.keys.as_ref().unwrap(), &held_a),
            "a parsed it again"
        );
        assert!(
            Rc::ptr_eq(b.keys.keys.as_ref().unwrap(), &held_b),
            "b parsed it again"
        );
        assert_eq!((a.keys.version, b.keys.version), (version, version));
        assert_eq!(
            (a.fetched_at(), b.fetched_at()),
            (t2, t2),
            "dated by the new fetch"
        );
        // Another document is parsed.
        fetch(&mut a, &mut b, &jwks_doc(8, "k2"), t2 + 60);
        assert_eq!(kids(&a), ["k2"]);
        assert_eq!(kids(&b), ["k2"]);
        assert_ne!(b.keys.version, version);
    }

    #[test]
    fn a_late_answer_to_an_earlier_fetch_loads_the_later_keys_instead() {
        let shared = store::MemStore::default();
        let r = remote("jwks", "", "/k");
        let (mut a, mut b) = (JwksSlot::default(), JwksSlot::default());
        let t = 2_000_000u64;
        // Worker b sent its GET at t+2 and got the rotated keys first;
        // worker a's GET, sent at t+1, answers after it with the old ones.
        fetched(&shared, &mut b, &r, &jwks_doc(8, "new"), t + 2, t + 3);
        fetched(&shared, &mut a, &r, &jwks_doc(7, "old"), t + 1, t + 4);
        assert_eq!(
            kids(&a),
            ["new"],
            "a loads what b stored, not its own answer"
        );
        assert_eq!(a.fetched_at(), t + 2);
        let mut c = JwksSlot::default();
        sync(&shared, &mut c, "idp", &r, t + 5);
        assert_eq!(kids(&c), ["new"], "the shared copy kept the later fetch");
    }

    #[test]
    fn one_worker_of_the_instance_refreshes_due_keys() {
        let shared = store::MemStore::default();
        let r = remote("jwks", "", "/k");
        let (a, b) = (JwksSlot::default(), JwksSlot::default());
        let t = 3_000_000u64;
        let ms = |s: u64| s * 1000;
        assert!(
            take_refresh_lease(&shared, &a, "idp", &r, ms(t)),
            "no keys: due"
        );
        assert!(
            !take_refresh_lease(&shared, &b, "idp", &r, ms(t)),
            "a holds the lease"
        );
        let held = r.timeout_ms / 1000 + 1;
        assert!(!take_refresh_lease(
            &shared,
            &b,
            "idp",
            &r,
            ms(t + held) - 1
        ));
        assert!(
            take_refresh_lease(&shared, &b, "idp", &r, ms(t + held)),
            "a's fetch timed out"
        );
        // Fresh keys are not due, lease or not.
        let mut c = JwksSlot::default();
        fetched(&shared, &mut c, &r, &jwks_doc(7, "k1"), t, t);
        assert!(!take_refresh_lease(
            &shared,
            &c,
            "idp",
            &r,
            ms(t + 10 * held)
        ));
        assert!(take_refresh_lease(
            &shared,
            &c,
            "idp",
            &r,
            ms(t + r.refresh_seconds)
        ));
    }

    #[test]
    fn the_refresh_lease_holds_for_its_time_across_a_second_boundary() {
        // Envoy's main thread and a worker start a few milliseconds apart,
        // either side of a second: the worker must not fetch too while the
        // main thread's fetch is on its way (the lease was held to the end
        // of a second, here 5 ms).
        let shared = store::MemStore::default();
        let mut r = remote("jwks", "", "/k");
        r.timeout_ms = 500;
        let (a, b) = (JwksSlot::default(), JwksSlot::default());
        let t = 3_000_000_000u64;
        assert!(take_refresh_lease(&shared, &a, "idp", &r, t + 995));
        assert!(!take_refresh_lease(&shared, &b, "idp", &r, t + 1_000));
        assert!(!take_refresh_lease(&shared, &b, "idp", &r, t + 1_994));
        assert!(
            take_refresh_lease(&shared, &b, "idp", &r, t + 2_000),
            "held a second at least, and to the end of the second it ends in"
        );
    }

    // review58-leases L4 (README, `remote_jwks.timeout_ms`): "the background
    // refresh keeps trying every `timeout_ms` + 1 s". The lease is
    // `timeout_ms` + 1 s long and its end is now rounded up to the second
    // as well: taken at any time but a whole second, the next try waits
    // up to `timeout_ms` + 2 s (a cold start with the IdP down stays
    // without keys a second longer each time).
    #[test]
    fn the_refresh_is_tried_again_timeout_and_a_second_after_the_lease_was_taken() {
        let shared = store::MemStore::default();
        let r = remote("jwks", "", "/k");
        let (a, b) = (JwksSlot::default(), JwksSlot::default());
        let t = 3_000_000_000u64;
        assert!(take_refresh_lease(&shared, &a, "idp", &r, t + 5));
        // Held `timeout_ms` + 1 s, rounded up to the second: up to
        // `timeout_ms` + 2 s (README).
        assert!(!take_refresh_lease(
            &shared,
            &b,
            "idp",
            &r,
            t + 5 + r.timeout_ms + 1_000
        ));
        assert!(
            take_refresh_lease(&shared, &b, "idp", &r, t + r.timeout_ms + 2_000),
            "a's fetch failed (no keys): tried again by timeout_ms + 2 s"
        );
    }

    #[test]
    fn a_request_fetches_when_no_keys_are_loaded_four_at_a_time() {
        let shared = store::MemStore::default();
        let r = remote("jwks", "", "/k");
        let mut a = JwksSlot::default();
        let t = 4_000_000u64;
        for token in 0..4 {
            assert_eq!(
                request_fetch(&shared, &mut a, "idp", &r, t * 1000),
                RequestFetch::Dispatch
            );
            a.fetch_started(token, t, r.timeout_ms);
        }
        assert_eq!(
            request_fetch(&shared, &mut a, "idp", &r, t * 1000),
            RequestFetch::WaitFirstKeys,
            "four in flight: the others wait for them"
        );
        a.fetch_ended(0);
        a.request_fetch_failed_at = Some(t);
        assert_eq!(
            request_fetch(&shared, &mut a, "idp", &r, t * 1000),
            RequestFetch::Evaluate(KeyFetch::NotNow),
            "a fetch failed this second"
        );
        assert_eq!(
            request_fetch(&shared, &mut a, "idp", &r, (t + 1) * 1000),
            RequestFetch::Dispatch
        );
        // Four in flight, and one failed lately (within the 2 s timeout
        // and a second, or "later", the clock set back): the endpoint
        // fails or hangs, so the others answer at once rather than wait
        // for fetches that will most likely fail too.
        for (at, next) in [
            (t + 3, RequestFetch::Evaluate(KeyFetch::NotNow)),
            (t + 4, RequestFetch::WaitFirstKeys),
            (t - 100, RequestFetch::Evaluate(KeyFetch::NotNow)),
        ] {
            let mut b = JwksSlot {
                request_fetches: vec![(1, at + 3), (2, at + 3), (3, at + 3), (4, at + 3)],
                request_fetch_failed_at: Some(t),
                ..JwksSlot::default()
            };
            assert_eq!(
                request_fetch(&shared, &mut b, "idp", &r, at * 1000),
                next,
                "at {at}"
            );
        }
    }

    #[test]
    fn a_wait_for_the_first_keys_ends_with_any_keys_at_its_deadline_or_when_the_fetches_are_over() {
        let shared = store::MemStore::default();
        let r = remote("jwks", "", "/k");
        let (mut a, mut b) = (JwksSlot::default(), JwksSlot::default());
        let t = 4_000_000u64;
        for token in 0..4 {
            a.fetch_started(token, t, r.timeout_ms);
        }
        let arrived = t * 1000 + 20;
        assert_eq!(
            request_fetch(&shared, &mut a, "idp", &r, arrived),
            RequestFetch::WaitFirstKeys
        );
        let until = wait_deadline_ms(&r, arrived, arrived);
        assert_eq!(waited_first_keys(&a, arrived, until, arrived + 300), None);
        assert_eq!(
            waited_first_keys(&a, arrived, until, until),
            Some(KeyFetch::NotNow),
            "timed out"
        );
        // The clock set back an hour (review51 F1): the wait ends, and the
        // fetches started "later" (their answers lost, say) no longer hold
        // the worker's fetches.
        let back = arrived - 3_600_000;
        assert_eq!(
            waited_first_keys(&a, arrived, until, back + 300),
            Some(KeyFetch::NotNow)
        );
        let mut stepped = JwksSlot {
            request_fetches: a.request_fetches.clone(),
            ..JwksSlot::default()
        };
        assert_eq!(
            request_fetch(&shared, &mut stepped, "idp", &r, back + 300),
            RequestFetch::Dispatch
        );
        assert_eq!(stepped.request_fetches.len(), 0);
        // Three fetches failed; one is still on its way.
        for token in 0..3 {
            a.fetch_ended(token);
        }
        assert_eq!(waited_first_keys(&a, arrived, until, arrived + 300), None);
        a.fetch_ended(3);
        assert_eq!(
            waited_first_keys(&a, arrived, until, arrived + 300),
            Some(KeyFetch::NotNow),
            "no fetch left: the failure mode answers"
        );
        // Keys another worker fetched (sent before the request came) end
        // the wait, while this worker's fetches are still out: evaluated
        // as `NotNow`, a `kid` they lack is not charged.
        for token in 0..4 {
            b.fetch_started(token, t, r.timeout_ms);
        }
        fetched(&shared, &mut a, &r, &jwks_doc(7, "k1"), t, t);
        assert_eq!(waited_first_keys(&b, arrived, until, arrived + 300), None);
        sync(&shared, &mut b, "idp", &r, t);
        assert_eq!(
            waited_first_keys(&b, arrived, until, arrived + 300),
            Some(KeyFetch::NotNow)
        );
    }

    #[test]
    fn a_fetching_request_is_overtaken_by_keys_as_new_as_its_own_get() {
        let shared = store::MemStore::default();
        let r = remote("jwks", "", "/k");
        let t = 6_000_000u64;
        let started = t * 1000 + 20;
        let (mut a, mut b) = (JwksSlot::default(), JwksSlot::default());
        // The first keys: nothing loaded yet, nothing to end the wait.
        let now = started + 300;
        assert_eq!(overtaken(&b, started, true, now), None);
        assert_eq!(overtaken(&b, started, false, now), None);
        // Keys dispatched a moment before its GET (the background refresh,
        // another worker): the first keys' fetch ends as the waiters'
        // does; a re-fetch for an unknown `kid` waits for its own answer.
        fetched(&shared, &mut a, &r, &jwks_doc(7, "k1"), t, t);
        sync(&shared, &mut b, "idp", &r, t);
        assert_eq!(overtaken(&b, started, true, now), Some(KeyFetch::NotNow));
        assert_eq!(overtaken(&b, started, false, now), None);
        // Keys dispatched with or after its GET: what it would bring.
        store(
            &shared,
            &mut a,
            "idp",
            &r,
            &jwks_doc(8, "k2"),
            started,
            t,
            || started + 1,
        )
        .unwrap();
        sync(&shared, &mut b, "idp", &r, t);
        assert_eq!(overtaken(&b, started, false, now), Some(KeyFetch::Fetched));
        assert_eq!(overtaken(&b, started, true, now), Some(KeyFetch::Fetched));
        assert_eq!(overtaken(&b, started + 1, false, now), None);
    }

    #[test]
    fn keys_naming_a_kid_are_told_from_keys_that_do_not() {
        let shared = store::MemStore::default();
        let r = remote("jwks", "", "/k");
        let mut slot = JwksSlot::default();
        assert!(!names_kid(&slot, "k1"), "no keys");
        fetched(&shared, &mut slot, &r, &jwks_doc(7, "k1"), 100, 100);
        assert!(names_kid(&slot, "k1"));
        assert!(!names_kid(&slot, "k2"));
        assert!(!names_kid(&slot, ""));
    }

    #[test]
    fn keys_from_before_the_clock_was_set_back_overtake_no_fetch() {
        // review52 F1: keys {k1} fetched while the clock was 5 min ahead
        // (stamped t + 300 s); the clock is set back to t. A request with
        // an unknown `kid` takes the re-fetch lease and dispatches at t:
        // the keys that lacked its `kid` must not decide it as its GET's
        // answer would (`Fetched`, charged), nor the first keys' rule
        // apply, since keys were loaded when it went out.
        let shared = store::MemStore::default();
        let r = remote("jwks", "", "/k");
        let t = 6_000_000u64;
        let mut slot = JwksSlot::default();
        fetched(&shared, &mut slot, &r, &jwks_doc(7, "k1"), t + 300, t + 300);
        let started = t * 1000 + 20;
        assert_eq!(
            request_fetch(&shared, &mut slot, "idp", &r, started),
            RequestFetch::Dispatch
        );
        assert_eq!(overtaken(&slot, started, false, started + 10), None);
        assert_eq!(overtaken(&slot, started, false, started + 2000), None);
        // Keys the root fetches once it sees them dated ahead: they do.
        let refresh = started + 1000;
        store(
            &shared,
            &mut slot,
            "idp",
            &r,
            &jwks_doc(8, "k2"),
            refresh,
            t + 1,
            || refresh + 5,
        )
        .unwrap();
        assert_eq!(
            overtaken(&slot, started, false, refresh + 10),
            Some(KeyFetch::Fetched)
        );
    }

    /// Two workers' slots, `a` and `b`, with keys `k1` that `a` stored at
    /// second `t - 100`; then a request of `a` with an unknown `kid` takes
    /// the re-fetch lease and dispatches its GET at `sent_ms`.
    fn a_refetching(t: u64, sent_ms: u64) -> (store::MemStore, RemoteJwks, JwksSlot, JwksSlot) {
        let shared = store::MemStore::default();
        let r = remote("jwks", "", "/k");
        let (mut a, mut b) = (JwksSlot::default(), JwksSlot::default());
        fetched(&shared, &mut a, &r, &jwks_doc(7, "k1"), t - 100, t - 100);
        sync(&shared, &mut b, "idp", &r, t - 100);
        assert_eq!(
            request_fetch(&shared, &mut a, "idp", &r, sent_ms),
            RequestFetch::Dispatch
        );
        (shared, r, a, b)
    }

    #[test]
    fn an_unknown_kid_refetches_once_per_instance_and_interval() {
        let t = 5_000_000u64;
        let (shared, r, mut a, mut b) = a_refetching(t, t * 1000);
        // The lease is the instance's: the other worker does not fetch,
        // nor does a again within `min_refetch_seconds`. While the GET is
        // in flight (its 2 s timeout) they wait for it; after, they are
        // refused.
        let waits = RequestFetch::Wait { sent_ms: t * 1000 };
        let refused = RequestFetch::Evaluate(KeyFetch::NotNow);
        for (on_a, at, next) in [
            (false, t, waits),
            (false, t + 1, waits),
            (true, t + 1, waits),
            (true, t + 29, refused),
            (false, t + 29, refused),
        ] {
            let slot = if on_a { &mut a } else { &mut b };
            assert_eq!(
                request_fetch(&shared, slot, "idp", &r, at * 1000),
                next,
                "{at}"
            );
        }
        assert_eq!(
            request_fetch(&shared, &mut b, "idp", &r, (t + 30) * 1000),
            RequestFetch::Dispatch
        );
    }

    #[test]
    fn other_requests_wait_for_a_refetch_while_it_is_in_flight() {
        let t = 5_000_000u64;
        // a's request takes the lease at t s + 300 ms and dispatches.
        let sent = t * 1000 + 300;
        let (shared, r, mut a, mut b) = a_refetching(t, sent);
        // The other worker reads the dispatch time from the lease; a knows
        // its own. Both wait, on either side of a second's edge.
        for (on_a, at) in [(false, sent + 10), (true, sent + 20), (false, sent + 900)] {
            let slot = if on_a { &mut a } else { &mut b };
            assert_eq!(
                request_fetch(&shared, slot, "idp", &r, at),
                RequestFetch::Wait { sent_ms: sent },
                "{at}"
            );
        }
        assert_eq!(a.refetch_in_flight(&r, sent + 1999), Some(sent));
        // Past its timeout the GET is no longer waited for.
        assert_eq!(a.refetch_in_flight(&r, sent + 2000), None);
        assert_eq!(
            request_fetch(&shared, &mut b, "idp", &r, sent + 2500),
            RequestFetch::Evaluate(KeyFetch::NotNow)
        );
        // Keys dispatched at or after it, loaded: it answered.
        let mut c = JwksSlot::default();
        sync(&shared, &mut c, "idp", &r, t);
        c.refetch_sent_ms = Some(sent);
        assert_eq!(c.refetch_in_flight(&r, sent + 100), Some(sent));
        c.fetched_at_ms = sent;
        assert_eq!(c.refetch_in_flight(&r, sent + 100), None);
        // A dispatch time far ahead (the clock was set back) is not waited
        // for; one a moment ahead (another worker's clock) is.
        let mut d = JwksSlot {
            refetch_sent_ms: Some(sent + 5_000),
            ..JwksSlot::default()
        };
        assert_eq!(d.refetch_in_flight(&r, sent), None);
        d.refetch_sent_ms = Some(sent + 500);
        assert_eq!(d.refetch_in_flight(&r, sent), Some(sent + 500));
    }

    #[test]
    fn a_wait_ends_with_keys_sent_since_at_its_deadline_or_when_the_refetch_failed() {
        let r = remote("jwks", "", "/k");
        let sent = 9_000_000_000u64;
        let arrived = sent + 40;
        let until = wait_deadline_ms(&r, sent, arrived);
        assert_eq!(until, sent + 2000 + WAIT_SLACK_MS);
        // A dispatch time ahead of the request is bounded from its arrival.
        assert_eq!(
            wait_deadline_ms(&r, sent + 900, sent),
            sent + 2000 + WAIT_SLACK_MS
        );
        let mut slot = JwksSlot {
            refetch_sent_ms: Some(sent),
            fetched_at_ms: sent - 60_000,
            ..JwksSlot::default()
        };
        slot.keys.keys = Some(Rc::new(Vec::new()));
        assert_eq!(waited(&slot, sent, arrived, until, sent + 500), None);
        assert_eq!(
            waited(&slot, sent, arrived, until, until),
            Some(KeyFetch::NotNow),
            "timed out"
        );
        assert_eq!(
            waited(&slot, sent, arrived, until, arrived - 3_600_000),
            Some(KeyFetch::NotNow),
            "the clock set back behind its arrival"
        );
        // The awaited GET's keys: dispatched before this request came, a
        // `kid` they lack may have been published since.
        slot.fetched_at_ms = sent;
        assert_eq!(
            waited(&slot, sent, arrived, until, sent + 500),
            Some(KeyFetch::NotNow)
        );
        // In the millisecond the request came: the awaited GET, which
        // went out before the request found the lease taken.
        slot.fetched_at_ms = arrived;
        assert_eq!(
            waited(&slot, arrived, arrived, until, sent + 500),
            Some(KeyFetch::NotNow)
        );
        // Keys of a GET sent after the request came: a `kid` they lack is
        // made up.
        slot.fetched_at_ms = arrived + 1;
        assert_eq!(
            waited(&slot, sent, arrived, until, sent + 500),
            Some(KeyFetch::Fetched)
        );
        assert_eq!(
            waited(&slot, sent, sent - 5, until, sent + 500),
            Some(KeyFetch::Fetched),
            "a request that came before the GET went out"
        );
        // This worker's own re-fetch failed (the adapter forgets it).
        slot.fetched_at_ms = sent - 60_000;
        slot.refetch_sent_ms = None;
        assert_eq!(
            waited(&slot, sent, arrived, until, sent + 500),
            Some(KeyFetch::NotNow)
        );
    }

    #[test]
    fn a_refetch_that_failed_on_one_worker_is_waited_for_no_more_on_any() {
        let t = 6_000_000u64;
        let sent = t * 1000 + 300;
        let (shared, r, mut a, mut b) = a_refetching(t, sent);
        assert_eq!(
            request_fetch(&shared, &mut b, "idp", &r, sent + 10),
            RequestFetch::Wait { sent_ms: sent }
        );
        let until = wait_deadline_ms(&r, sent, sent + 10);
        assert_eq!(waited(&b, sent, sent + 10, until, sent + 200), None);
        // a's GET fails: a forgets it, and the lease says so.
        refetch_failed(&shared, &mut a, "idp", &r, sent);
        assert_eq!(a.refetch_sent_ms, None);
        // b's tick notices: its waiter is refused now, not at `until`.
        notice_failed_refetch(&shared, &mut b, "idp", &r);
        assert_eq!(
            waited(&b, sent, sent + 10, until, sent + 210),
            Some(KeyFetch::NotNow)
        );
        // A request that comes next second on either worker does not wait
        // for the failed GET (the lease still holds: no new re-fetch).
        let mut c = JwksSlot::default();
        sync(&shared, &mut c, "idp", &r, t);
        for slot in [&mut b, &mut c] {
            assert_eq!(
                request_fetch(&shared, slot, "idp", &r, sent + 1_000),
                RequestFetch::Evaluate(KeyFetch::NotNow)
            );
        }
        // What earlier modules read of the lease is unchanged.
        let key = shared_key("jwks-refetch", "idp", &r);
        let (v, _) = shared.get(&key).unwrap();
        assert_eq!(store::u64_at(&v, 8), Some(t));
        // A first-keys fetch is not the lease's: nothing is marked.
        let mut d = JwksSlot::default();
        refetch_failed(&shared, &mut d, "idp", &r, sent + 5);
        let (w, _) = shared.get(&key).unwrap();
        assert_eq!(v, w);
    }

    #[test]
    fn a_refetch_lease_of_an_earlier_module_is_waited_for_by_its_second() {
        let shared = store::MemStore::default();
        let r = remote("jwks", "", "/k");
        let mut b = JwksSlot::default();
        let t = 5_000_000u64;
        fetched(&shared, &mut b, &r, &jwks_doc(7, "k1"), t - 100, t - 100);
        let key = shared_key("jwks-refetch", "idp", &r);
        // [until][taken s]: the dispatch time is known to the second.
        let mut lease = (t + 30).to_le_bytes().to_vec();
        lease.extend_from_slice(&t.to_le_bytes());
        shared.set(&key, &lease, store::CAS_CREATE).unwrap();
        assert_eq!(
            request_fetch(&shared, &mut b, "idp", &r, t * 1000 + 700),
            RequestFetch::Wait { sent_ms: t * 1000 }
        );
        // [until] alone: not known, so not waited for.
        let mut c = JwksSlot::default();
        fetched(&shared, &mut c, &r, &jwks_doc(7, "k1"), t - 100, t - 100);
        let (_, cas) = shared.get(&key).unwrap();
        shared.set(&key, &(t + 30).to_le_bytes(), cas).unwrap();
        assert_eq!(
            request_fetch(&shared, &mut c, "idp", &r, t * 1000 + 700),
            RequestFetch::Evaluate(KeyFetch::NotNow)
        );
        // This module's lease: its millisecond.
        let s = store::MemStore::default();
        assert_eq!(take_lease_at_ms(&s, "l", 30, 7_000_123), Ok(()));
        assert_eq!(
            take_lease_at_ms(&s, "l", 30, 7_000_999),
            Err(Some(7_000_123))
        );
        let (v, _) = s.get("l").unwrap();
        assert_eq!(
            (store::u64_at(&v, 0), store::u64_at(&v, 8)),
            (Some(7_031), Some(7_000)),
            "what earlier modules read: its end rounded up to the second"
        );
    }

    #[test]
    fn keys_another_worker_copied_in_are_tried_before_fetching() {
        let shared = store::MemStore::default();
        let r = remote("jwks", "", "/k");
        let (mut a, mut b) = (JwksSlot::default(), JwksSlot::default());
        let t = 6_000_000u64;
        fetched(&shared, &mut a, &r, &jwks_doc(7, "k1"), t - 50, t - 50);
        sync(&shared, &mut b, "idp", &r, t - 50);
        // a fetched the rotated set this second; b's request with the new
        // `kid` finds it before asking for a fetch of its own. Fetched this
        // second, a `kid` it lacks would be made up.
        fetched(&shared, &mut a, &r, &jwks_doc(8, "k2"), t, t);
        assert_eq!(
            request_fetch(&shared, &mut b, "idp", &r, t * 1000),
            RequestFetch::Evaluate(KeyFetch::Fetched)
        );
        assert_eq!(kids(&b), ["k2"]);
        // Copied keys fetched before this second may predate the token's
        // key: the request may still ask for a re-fetch.
        let mut c = JwksSlot::default();
        fetched(&shared, &mut a, &r, &jwks_doc(9, "k3"), t + 1, t + 1);
        assert_eq!(
            request_fetch(&shared, &mut c, "idp", &r, (t + 5) * 1000),
            RequestFetch::Evaluate(KeyFetch::May)
        );
        // Looked at once a second: the same second, c goes on to the lease.
        assert_eq!(
            request_fetch(&shared, &mut c, "idp", &r, (t + 5) * 1000),
            RequestFetch::Dispatch
        );
        // The next second it looks again, and finds a's new keys.
        fetched(&shared, &mut a, &r, &jwks_doc(10, "k4"), t + 6, t + 6);
        assert_eq!(
            request_fetch(&shared, &mut c, "idp", &r, (t + 6) * 1000),
            RequestFetch::Evaluate(KeyFetch::Fetched)
        );
        assert_eq!(kids(&c), ["k4"]);
    }

    #[test]
    fn keys_fetched_before_a_request_are_not_taken_for_keys_fetched_after_it() {
        // Another worker's GET went out 400 ms before this request came,
        // in the same second: a `kid` those keys lack may have been
        // published since, so the request may still ask for a re-fetch,
        // and is not charged as a made-up `kid` (review-upgrade49 F2).
        let shared = store::MemStore::default();
        let r = remote("jwks", "", "/k");
        let t_ms = 7_000_000_100u64;
        let at = |slot: &mut JwksSlot, started_ms: u64| {
            store(
                &shared,
                slot,
                "idp",
                &r,
                &jwks_doc(7, "k1"),
                started_ms,
                t_ms / 1000,
                || started_ms + 50,
            )
            .unwrap();
        };
        let (mut a, mut b) = (JwksSlot::default(), JwksSlot::default());
        at(&mut a, t_ms);
        assert_eq!(
            request_fetch(&shared, &mut b, "idp", &r, t_ms + 400),
            RequestFetch::Evaluate(KeyFetch::May)
        );
        // The same GET, had it gone out when the request came or later.
        let mut c = JwksSlot::default();
        assert_eq!(
            request_fetch(&shared, &mut c, "idp", &r, t_ms),
            RequestFetch::Evaluate(KeyFetch::Fetched)
        );
    }

    #[test]
    fn a_run_of_failed_refreshes_is_logged_once_a_minute_with_a_count() {
        let mut slot = JwksSlot::default();
        // A refresh every 3 s against an endpoint that is down.
        let logged: Vec<(u64, u32)> = (0..50)
            .map(|i| 1000 + 3 * i)
            .filter_map(|t| slot.refresh_failed(t, "down").map(|held| (t, held)))
            .collect();
        assert_eq!(logged, vec![(1000, 0), (1060, 19), (1120, 19)]);
        assert_eq!(held_note(0), "");
        assert_eq!(held_note(19), " (19 more failed since the last line)");
        // Keys again: the next failure is news, logged at once.
        slot.refresh_succeeded();
        assert_eq!(slot.refresh_failed(1151, "down"), Some(0));
        assert_eq!(slot.refresh_failed(1154, "down"), None);
        // Failing otherwise is news too (a reason to log, with the count
        // of the failures before it that went unlogged).
        assert_eq!(slot.refresh_failed(1157, "too large"), Some(1));
        assert_eq!(slot.refresh_failed(1158, "too large"), None);
        // Keys another worker fetched (loaded from shared data) end the
        // run too: the next failure is logged at once, counted afresh.
        slot.fetched_at_ms = 1160 * 1000;
        assert_eq!(slot.refresh_failed(1170, "down"), Some(0));
        assert_eq!(slot.refresh_failed(1173, "down"), None);
    }

    #[test]
    fn an_answer_to_an_earlier_fetch_does_not_replace_a_later_ones_keys() {
        let s = store::MemStore::default();
        let now = 200;
        assert_eq!(publish(&s, "k", 100, now, b"old"), Ok(true), "first copy");
        assert_eq!(
            publish(&s, "k", 105, now, b"rotated"),
            Ok(true),
            "a later fetch"
        );
        // the GET sent at 102 answers last: it must not win
        assert_eq!(publish(&s, "k", 102, now, b"stale"), Ok(false));
        let (v, _) = s.get("k").unwrap();
        assert_eq!(store::u64_at(&v, 0), Some(105));
        assert_eq!(&v[8..], b"rotated");
        // the same millisecond: the answer that comes last is stored
        assert_eq!(publish(&s, "k", 105, now, b"again"), Ok(true));
        assert_eq!(&s.get("k").unwrap().0[8..], b"again");
        // the clock was set back to 50: a copy stamped in the future does
        // not hold every later fetch off until the clock catches up
        assert_eq!(publish(&s, "k", 40, 50, b"after the step"), Ok(true));
        assert_eq!(&s.get("k").unwrap().0[8..], b"after the step");
    }

    #[test]
    fn keys_older_than_a_lost_refetch_are_due() {
        let r = remote("jwks", "", "/k");
        let mut slot = JwksSlot::default();
        slot.keys.keys = Some(Rc::new(Vec::new()));
        slot.fetched_at_ms = 10_000 * 1000;
        assert!(!due(&slot, &r, 10_020));
        // A request's re-fetch sent at 10,010 lost its answer.
        slot.refetch_lost_at = Some(10_010);
        assert!(due(&slot, &r, 10_020));
        // Keys fetched after it was sent are what it would have brought.
        slot.fetched_at_ms = 10_011 * 1000;
        assert!(!due(&slot, &r, 10_020));
    }

    #[test]
    fn a_lost_refetch_is_made_again_once_without_the_refresh_lease() {
        let mut slot = JwksSlot::default();
        slot.keys.keys = Some(Rc::new(Vec::new()));
        slot.fetched_at_ms = 10_000 * 1000;
        assert!(!lost_refetch_pending(&slot));
        assert!(!redo_lost_refetch(&mut slot));
        slot.refetch_lost_at = Some(10_010);
        assert!(lost_refetch_pending(&slot));
        assert!(redo_lost_refetch(&mut slot));
        assert!(!redo_lost_refetch(&mut slot), "once");
        assert!(lost_refetch_pending(&slot), "still due, under the lease");
        // Another one lost later: once again.
        slot.refetch_lost_at = Some(10_040);
        assert!(redo_lost_refetch(&mut slot));
        // Keys fetched after it make up for it.
        slot.refetch_lost_at = Some(10_050);
        slot.fetched_at_ms = 10_051 * 1000;
        assert!(!lost_refetch_pending(&slot));
        assert!(!redo_lost_refetch(&mut slot));
    }

    #[test]
    fn after_the_clock_is_set_back_keys_are_due_and_leases_are_free() {
        let r = remote("jwks", "", "/k");
        let mut slot = JwksSlot::default();
        slot.keys.keys = Some(Rc::new(Vec::new()));
        slot.fetched_at_ms = 10_000 * 1000;
        assert!(!due(&slot, &r, 10_010), "fresh keys");
        assert!(due(&slot, &r, 10_000 + r.refresh_seconds), "old keys");
        // the clock went back an hour: their age is unknown, fetch again
        assert!(due(&slot, &r, 6_400));
        let s = store::MemStore::default();
        assert!(take_lease_at(&s, "l", 2, 10_000));
        assert!(!take_lease_at(&s, "l", 2, 10_001), "held");
        assert!(take_lease_at(&s, "l", 2, 10_002), "expired");
        // held until 10_004, and now it is 6_400: taken before the step
        assert!(take_lease_at(&s, "l", 2, 6_400));
        assert!(!take_lease_at(&s, "l", 2, 6_401), "the new lease holds");
        // Two configurations of one source with different intervals: the
        // shorter one does not take the longer one's lease early.
        assert!(take_lease_at(&s, "m", 300, 1_000));
        assert!(!take_lease_at(&s, "m", 30, 1_001), "held for 300 s");
        assert!(!take_lease_at(&s, "m", 30, 1_299));
        assert!(take_lease_at(&s, "m", 30, 1_300), "ended");
        // A lease of the earlier layout (its end only) is still read.
        s.set("o", &10_002u64.to_le_bytes(), store::CAS_CREATE)
            .unwrap();
        assert!(!take_lease_at(&s, "o", 2, 10_001), "held");
        assert!(take_lease_at(&s, "o", 2, 6_400), "stale after a step back");
    }

    #[test]
    fn keys_outlive_a_refresh_that_is_on_its_way() {
        // grace 0: a refresh sent when due at 600 s, answering just within
        // its 2 s timeout, copied by another worker at its next tick.
        let mut r = remote("jwks", "", "/k");
        r.grace_seconds = 0;
        assert_eq!(r.keys_expire_after(), 600 + 2 + 2);
        r.timeout_ms = 2001;
        assert_eq!(r.keys_expire_after(), 600 + 3 + 2);
        r.grace_seconds = u64::MAX;
        assert_eq!(r.keys_expire_after(), u64::MAX);
    }

    #[test]
    fn a_fetch_keeps_its_slot_until_it_answers_or_times_out() {
        let mut slot = JwksSlot::default();
        slot.fetch_started(7, 100, 500);
        slot.fetch_started(8, 100, 2_500);
        assert_eq!(slot.fetches_in_flight(101), 2);
        assert_eq!(slot.fetches_in_flight(102), 1, "the first timed out");
        slot.fetch_ended(8);
        assert_eq!(slot.fetches_in_flight(102), 0, "the second answered");
        slot.fetch_ended(8);
        assert_eq!(slot.fetches_in_flight(102), 0);
    }

    #[test]
    fn a_failed_fetch_holds_request_fetches_for_the_rest_of_its_second() {
        let mut slot = JwksSlot::default();
        assert!(slot.may_start_request_fetch(100));
        slot.request_fetch_failed_at = Some(100);
        assert!(!slot.may_start_request_fetch(100));
        assert!(slot.may_start_request_fetch(101));
        for t in 0..4 {
            slot.fetch_started(t, 101, 2_000);
        }
        assert!(!slot.may_start_request_fetch(101), "four in flight");
    }

    #[test]
    fn shared_keys_depend_on_provider_and_source() {
        let base = remote("idp_jwks", "idp.example", "/jwks.json");
        let key = |p: &str, r: &RemoteJwks| shared_key("jwks", p, r);
        let k = key("idp", &base);
        assert!(k.starts_with("appguard/jwks/idp/"), "{k}");
        // Pinned: the keys JWKS copies are stored under must not move when
        // the module is updated (each part length-prefixed, u64 LE).
        assert_eq!(k, "appguard/jwks/idp/702468b142913298acf6c29441e7e5d6");

        // Same provider and source: same key, whatever the timings.
        let mut timings = base.clone();
        timings.refresh_seconds = 60;
        timings.grace_seconds = 0;
        timings.timeout_ms = 100;
        timings.min_refetch_seconds = 1;
        assert_eq!(k, key("idp", &timings));
        assert_eq!(k, key("idp", &base.clone()));

        // Another cluster, authority, path or provider: another key.
        let others = [
            key("idp", &remote("other_jwks", "idp.example", "/jwks.json")),
            key("idp", &remote("idp_jwks", "other.example", "/jwks.json")),
            key("idp", &remote("idp_jwks", "idp.example", "/other.json")),
            key("idp2", &base),
        ];
        for o in &others {
            assert_ne!(&k, o);
        }
        // Length-prefixed: moving bytes from one field to the next changes
        // the key.
        assert_ne!(
            key("idp", &remote("ab", "c", "/p")),
            key("idp", &remote("a", "bc", "/p"))
        );
        assert_ne!(
            key("idp", &remote("c", "ab", "")),
            key("idp", &remote("c", "a", "b"))
        );

        // The lease and refetch keys are scoped the same way, and apart.
        let lease = shared_key("jwks-lease", "idp", &base);
        let refetch = shared_key("jwks-refetch", "idp", &base);
        assert!(lease.starts_with("appguard/jwks-lease/idp/"), "{lease}");
        assert_ne!(lease, refetch);
        assert_ne!(
            lease,
            shared_key(
                "jwks-lease",
                "idp",
                &remote("idp_jwks", "idp.example", "/other.json")
            )
        );
    }

    #[test]
    fn fetched_jwks_with_only_oct_keys_is_refused() {
        let oct = br#"{"keys": [{"kty": "oct", "kid": "h1", "alg": "HS256",
            "k": "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc"}]}"#;
        assert_eq!(parse(oct).unwrap_err(), "no usable signing keys");
        // The same set in the configuration is accepted: the refusal is
        // the fetched-JWKS rule, not a malformed key.
        let v: serde_json::Value = serde_json::from_slice(oct).unwrap();
        assert_eq!(keys_from_jwks(&v, JwksOrigin::Configured).unwrap().len(), 1);
    }

    #[test]
    fn a_fetched_jwks_naming_a_member_twice_is_refused() {
        // RFC 7517 §4 lets a parser refuse it, and two parsers may take
        // different copies (serde_json's `Value` kept the last).
        use base64::Engine;
        use p256::elliptic_curve::sec1::ToEncodedPoint;
        let point = p256::SecretKey::from_slice(&[7u8; 32])
            .unwrap()
            .public_key()
            .to_encoded_point(false);
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let jwk = format!(
            r#"{{"kty":"EC","crv":"P-256","kid":"e1","alg":"ES256","x":"{}","y":"{}"}}"#,
            b64(point.x().unwrap()),
            b64(point.y().unwrap())
        );
        assert_eq!(
            parse(format!(r#"{{"keys":[{jwk}]}}"#).as_bytes())
                .unwrap()
                .len(),
            1
        );
        for doc in [
            format!(r#"{{"keys":[],"keys":[{jwk}]}}"#),
            format!(
                r#"{{"keys":[{}]}}"#,
                jwk.replacen(r#""kid":"e1""#, r#""kid":"e1","kid":"e2""#, 1)
            ),
            format!(
                r#"{{"keys":[{}]}}"#,
                jwk.replacen(r#""alg":"ES256""#, r#""alg":"ES256","alg":"none""#, 1)
            ),
        ] {
            assert!(parse(doc.as_bytes()).is_err(), "{doc}");
        }
        assert!(parse(b"[]").is_err(), "not an object");
    }
}
