//! Denial alerts: when denials of one route and reason exceed a threshold
//! within a window, one JSON POST goes to a webhook through an Envoy cluster.
//!
//! Counting is shared by the workers (shared data, CAS), so an instance
//! sends one alert per route, reason and window — the worker whose increment
//! crosses the threshold is the one that sends it — and at most
//! `max_alerts_per_window` alerts in all per window, so a flood of denials
//! produces a handful of posts, not thousands.

use serde::Deserialize;

use crate::config::ConfigError;
use crate::decision::Reason;
use crate::store::{self, SharedStore};

/// `alerts` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAlerts {
    cluster: String,
    #[serde(default)]
    authority: Option<String>,
    #[serde(default = "default_path")]
    path: String,
    #[serde(default = "default_threshold")]
    threshold: u32,
    #[serde(default = "default_window")]
    window_seconds: u64,
    #[serde(default = "default_max")]
    max_alerts_per_window: u32,
    #[serde(default = "default_timeout")]
    timeout_ms: u64,
}

fn default_path() -> String {
    "/".into()
}
fn default_threshold() -> u32 {
    100
}
fn default_window() -> u64 {
    60
}
fn default_max() -> u32 {
    5
}
fn default_timeout() -> u64 {
    2000
}

/// The alert webhook.
#[derive(Clone, Debug)]
pub struct Alerts {
    /// Envoy cluster of the webhook.
    pub cluster: String,
    /// `:authority` of the POST (default: the cluster name).
    pub authority: String,
    /// Path of the POST.
    pub path: String,
    /// Denials of one route and reason within a window that trigger an alert.
    pub threshold: u32,
    /// The counting window, in seconds.
    pub window_seconds: u64,
    /// Alerts sent at most per window, over all routes and reasons.
    pub max_alerts_per_window: u32,
    /// Timeout of the POST.
    pub timeout_ms: u64,
}

pub(crate) fn compile(raw: RawAlerts) -> Result<Alerts, ConfigError> {
    if raw.cluster.is_empty() {
        return Err(ConfigError::new("alerts.cluster", "required"));
    }
    if !raw.path.starts_with('/') {
        return Err(ConfigError::new("alerts.path", "must start with `/`"));
    }
    if raw.threshold == 0 {
        return Err(ConfigError::new("alerts.threshold", "must be at least 1"));
    }
    if raw.window_seconds == 0 || raw.window_seconds > 86_400 {
        return Err(ConfigError::new(
            "alerts.window_seconds",
            "must be 1..=86400",
        ));
    }
    if raw.max_alerts_per_window == 0 {
        return Err(ConfigError::new(
            "alerts.max_alerts_per_window",
            "must be at least 1",
        ));
    }
    if raw.timeout_ms == 0 || raw.timeout_ms > 60_000 {
        return Err(ConfigError::new("alerts.timeout_ms", "must be 1..=60000"));
    }
    Ok(Alerts {
        authority: raw.authority.unwrap_or_else(|| raw.cluster.clone()),
        cluster: raw.cluster,
        path: raw.path,
        threshold: raw.threshold,
        window_seconds: raw.window_seconds,
        max_alerts_per_window: raw.max_alerts_per_window,
        timeout_ms: raw.timeout_ms,
    })
}

/// An alert to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Alert {
    /// Route name (`_unmatched` for requests no route matched).
    pub route: String,
    /// The denial reason.
    pub reason: Reason,
    /// Denials counted in the window when it fired (= the threshold).
    pub count: u32,
    /// Start of the window, seconds since the epoch.
    pub window_start: u64,
}

impl Alert {
    /// The JSON body of the POST. Names and numbers only: no request data.
    pub fn body(&self, a: &Alerts) -> String {
        serde_json::json!({
            "source": "appguard",
            "route": self.route,
            "reason": self.reason.code(),
            "status": self.reason.status(),
            "denials": self.count,
            "threshold": a.threshold,
            "window_seconds": a.window_seconds,
            "window_start": self.window_start,
        })
        .to_string()
    }
}

fn read_pair(b: Option<&[u8]>) -> (u64, u32) {
    let b = b.unwrap_or(&[]);
    let w = b
        .get(..8)
        .and_then(|x| x.try_into().ok())
        .map_or(0, u64::from_le_bytes);
    let c = b
        .get(8..12)
        .and_then(|x| x.try_into().ok())
        .map_or(0, u32::from_le_bytes);
    (w, c)
}

fn pair(w: u64, c: u32) -> Vec<u8> {
    let mut v = w.to_le_bytes().to_vec();
    v.extend_from_slice(&c.to_le_bytes());
    v
}

/// Counts one denial; returns the alert to send when this denial is the one
/// that reaches the threshold and the window's alert budget allows it.
pub fn record<S: SharedStore + ?Sized>(
    s: &S,
    a: &Alerts,
    route: &str,
    reason: Reason,
    now: u64,
) -> Option<Alert> {
    let window = now - now % a.window_seconds;
    let key = format!("appguard/alert/{route}/{}", reason.code());
    let count = store::update(s, &key, |cur| {
        let (w, c) = read_pair(cur);
        let c = if w == window { c.saturating_add(1) } else { 1 };
        (Some(pair(window, c)), c)
    })
    .ok()?;
    if count != a.threshold {
        return None;
    }
    let allowed = store::update(s, "appguard/alert-budget", |cur| {
        let (w, c) = read_pair(cur);
        let c = if w == window { c } else { 0 };
        if c >= a.max_alerts_per_window {
            (None, false)
        } else {
            (Some(pair(window, c + 1)), true)
        }
    })
    .ok()?;
    allowed.then(|| Alert {
        route: route.to_owned(),
        reason,
        count,
        window_start: window,
    })
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::store::MemStore;

    fn alerts(threshold: u32, max: u32) -> Alerts {
        Alerts {
            cluster: "hook".into(),
            authority: "hook".into(),
            path: "/".into(),
            threshold,
            window_seconds: 60,
            max_alerts_per_window: max,
            timeout_ms: 100,
        }
    }

    #[test]
    fn one_alert_per_route_reason_and_window_within_the_budget() {
        let s = MemStore::default();
        let a = alerts(3, 2);
        let fired: Vec<_> = (0..10)
            .filter_map(|_| record(&s, &a, "sms", Reason::IpDenied, 120))
            .collect();
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].count, 3);
        assert_eq!(fired[0].window_start, 120);
        // another reason fires too; a third pair is over the window budget
        assert_eq!(
            (0..5)
                .filter_map(|_| record(&s, &a, "sms", Reason::TokenSignature, 130))
                .count(),
            1
        );
        assert_eq!(
            (0..5)
                .filter_map(|_| record(&s, &a, "api", Reason::TokenSignature, 130))
                .count(),
            0
        );
        // next window: counting and budget restart
        assert_eq!(
            (0..5)
                .filter_map(|_| record(&s, &a, "sms", Reason::IpDenied, 180))
                .count(),
            1
        );
        let body = fired[0].body(&a);
        assert!(body.contains("\"reason\":\"ip_denied\"") && body.contains("\"route\":\"sms\""));
    }
}
