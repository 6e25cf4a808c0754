//! Remote JWKS: fetched through an Envoy cluster, shared by the workers of an
//! instance through shared data, parsed once per worker per version.
//!
//! Shared-data layout: `appguard/jwks/<provider>` holds 8 bytes of fetch time
//! (little-endian seconds) followed by the JWKS JSON; its CAS value is the
//! version a worker compares against. `appguard/jwks-lease/<provider>` holds
//! the time until which one worker owns the next fetch, so that a refresh
//! is done by one worker, not all of them.

use std::rc::Rc;

use log::{info, warn};

use super::host::HostStore;
use crate::policy::RemoteKeys;
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
    /// When the loaded keys were fetched (by any worker).
    pub fetched_at: u64,
    /// The keys, as the policy sees them.
    pub keys: RemoteKeys,
    /// Last unknown-`kid` re-fetch from this worker.
    pub last_refetch: u64,
    /// Last second this worker looked at the shared copy.
    pub last_maintained: u64,
}

fn data_key(provider: &str) -> String {
    format!("appguard/jwks/{provider}")
}

/// Reloads the worker's keys from shared data when another worker stored a
/// newer version. Drops keys older than refresh + grace.
pub fn sync(slot: &mut JwksSlot, provider: &str, remote: &RemoteJwks, now: u64) {
    if let Some((bytes, cas)) = HostStore.get(&data_key(provider)) {
        if slot.loaded_cas != Some(cas) && bytes.len() > 8 {
            let (ts, json) = bytes.split_at(8);
            let fetched_at = u64::from_le_bytes(ts.try_into().unwrap_or([0; 8]));
            match parse(json) {
                Ok(keys) => {
                    slot.keys.keys = Some(Rc::new(keys));
                    slot.fetched_at = fetched_at;
                }
                Err(e) => warn!("jwks {provider}: shared copy unusable: {e}"),
            }
            slot.loaded_cas = Some(cas);
        }
    }
    if slot.keys.keys.is_some()
        && now.saturating_sub(slot.fetched_at)
            > remote.refresh_seconds.saturating_add(remote.grace_seconds)
    {
        warn!("jwks {provider}: keys older than refresh + grace, dropped");
        slot.keys.keys = None;
    }
}

/// Parses a fetched JWKS: unusable and symmetric (`oct`) keys skipped, at
/// least one key left.
pub fn parse(body: &[u8]) -> Result<Vec<crate::token::Key>, String> {
    if body.len() > MAX_JWKS_BYTES {
        return Err("JWKS too large".into());
    }
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let keys = keys_from_jwks(&v, JwksOrigin::Fetched)?;
    if keys.is_empty() {
        return Err("no usable signing keys".into());
    }
    Ok(keys)
}

/// Stores a freshly fetched JWKS for every worker, and loads it here.
pub fn store(slot: &mut JwksSlot, provider: &str, body: &[u8], now: u64) -> Result<(), String> {
    let keys = parse(body)?;
    let mut value = Vec::with_capacity(8 + body.len());
    value.extend_from_slice(&now.to_le_bytes());
    value.extend_from_slice(body);
    // Last writer wins: every stored version is a complete, valid JWKS.
    let _ = HostStore.set(&data_key(provider), &value, 0);
    slot.loaded_cas = HostStore.get(&data_key(provider)).map(|(_, cas)| cas);
    slot.keys.keys = Some(Rc::new(keys));
    slot.fetched_at = now;
    info!("jwks {provider}: {} bytes loaded", body.len());
    Ok(())
}

/// Whether this worker should refresh now: the shared copy is due, and this
/// worker won the lease (so one fetch per instance, not one per worker).
pub fn take_refresh_lease(slot: &JwksSlot, provider: &str, remote: &RemoteJwks, now: u64) -> bool {
    let due =
        slot.keys.keys.is_none() || now.saturating_sub(slot.fetched_at) >= remote.refresh_seconds;
    due && take_lease(provider, "lease", remote.timeout_ms / 1000 + 1, now)
}

/// A shared lease: true for exactly one caller per `seconds`.
pub fn take_lease(provider: &str, kind: &str, seconds: u64, now: u64) -> bool {
    let key = format!("appguard/jwks-{kind}/{provider}");
    store::update(&HostStore, &key, |cur| {
        let until = cur
            .and_then(|b| b.get(..8))
            .and_then(|b| b.try_into().ok())
            .map_or(0, u64::from_le_bytes);
        if until > now {
            (None, false)
        } else {
            (
                Some(now.saturating_add(seconds).to_le_bytes().to_vec()),
                true,
            )
        }
    })
    .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
