//! Operating appguard: monitor mode, stats at /stats/prometheus, denial
//! alerts to a webhook, and logs that never carry secrets.

use crate::harness;

use std::time::{Duration, Instant};

use harness::http::{self, Req};
use harness::tokens::{claims, hs256};
use harness::upstream::Upstream;
use harness::EnvoyBuilder;
use serde_json::json;

const API_KEY: &str = "key-0123-secret-value";

fn config(mode: &str) -> serde_json::Value {
    json!({
        "mode": mode,
        "default_action": "deny",
        "phone": {"default_calling_code": "44", "denied_prefixes": ["+882"], "hash_key_base64": "c2VjcmV0LWtleS1mb3ItcGhvbmUtaGFzaGluZy0wMTIz"},
        "api_keys": {"keys": [{"id": "ops-key", "sha256": appguard::identity::hash_api_key(API_KEY)}]},
        "tokens": [{"name": "t", "from": [{"header": "x-token"}], "keys": [{"alg": "HS256", "secret_base64": harness::tokens::secret_b64()}]}],
        "routes": [
            {"name": "keyed", "match": {"prefix": "/keyed"}, "api_key": "required"},
            {"name": "attested", "match": {"prefix": "/attested"}, "tokens": ["t"]},
            {"name": "sms", "match": {"path": "/sms"}, "rate_limits": [{"entries": [{"type": "body", "pointer": "/to", "phone": true}], "local": {"requests": 100, "per": "minute"}}]},
            {"name": "beta", "match": {"prefix": "/beta"}, "mode": "monitor", "api_key": "required"}
        ]
    })
}

#[test]
fn monitor_mode_passes_what_enforce_would_deny_and_marks_it() {
    let up = Upstream::start();
    let enforce = EnvoyBuilder::new(config("enforce"), up.port).start();
    let monitor = EnvoyBuilder::new(config("monitor"), up.port).start();
    let r = enforce.request(Req::get("/keyed/x"));
    assert_eq!((r.status, r.reason()), (403, Some("api_key_missing")));
    let r = monitor.request(Req::get("/keyed/x"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        up.last().header("x-appguard-would-deny"),
        Some("api_key_missing")
    );
    // a per-route monitor in an enforcing config
    let r = enforce.request(Req::get("/beta/x").header("x-api-key", "wrong"));
    assert_eq!(r.status, 200);
    assert_eq!(
        up.last().header("x-appguard-would-deny"),
        Some("api_key_invalid")
    );
    // allowed requests carry no mark
    let r = monitor.request(Req::get("/keyed/x").header("x-api-key", API_KEY));
    assert_eq!(r.status, 200);
    assert_eq!(up.last().header("x-appguard-would-deny"), None);
    assert!(monitor
        .log()
        .contains("monitor would_deny reason=api_key_missing"));
}

#[test]
fn the_module_logs_the_build_it_came_from() {
    // `make build` sets the commit and its time in UTC, so that an
    // operator can tell which CHANGELOG entries the running module has.
    let up = Upstream::start();
    let envoy = EnvoyBuilder::new(config("enforce"), up.port).start();
    envoy.wait_log("configured (root", 1, 10);
    let log = envoy.log();
    let build = log
        .split("configured (root ")
        .nth(1)
        .and_then(|rest| rest.split_once(", build ")?.1.split_once(')'))
        .map(|(build, _)| build.to_owned())
        .unwrap_or_default();
    let (commit, date) = build.split_once(' ').unwrap_or(("", ""));
    let commit = commit.strip_suffix("-dirty").unwrap_or(commit);
    assert!(
        commit.len() >= 7 && commit.bytes().all(|b| b.is_ascii_hexdigit()),
        "build {build:?}"
    );
    // 2026-12-06T05:02Z
    assert!(
        date.len() == 17
            && date.ends_with('Z')
            && date.bytes().filter(|b| *b == b'-').count() == 2
            && date.get(10..11) == Some("T"),
        "build {build:?}"
    );
}

fn prometheus(admin: u16) -> String {
    http::get(admin, "/stats/prometheus").unwrap().text()
}

fn counter(text: &str, route: &str, decision: &str, reason: &str) -> u64 {
    let want = format!(
        "appguard_decisions{{route=\"{route}\",decision=\"{decision}\",reason=\"{reason}\"}} "
    );
    text.lines()
        .find_map(|l| l.strip_prefix(&want))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn decision_counters_move_at_stats_prometheus() {
    let up = Upstream::start();
    let envoy = EnvoyBuilder::new(config("enforce"), up.port).start();
    for _ in 0..3 {
        envoy.request(Req::get("/keyed/x").header("x-api-key", API_KEY));
    }
    for _ in 0..2 {
        envoy.request(Req::get("/keyed/x"));
    }
    envoy.request(Req::get("/nowhere"));
    envoy.request(Req::get("/beta/x"));
    let text = prometheus(envoy.admin_port);
    assert_eq!(counter(&text, "keyed", "allow", "none"), 3, "{text}");
    assert_eq!(counter(&text, "keyed", "deny", "api_key_missing"), 2);
    assert_eq!(counter(&text, "_unmatched", "deny", "route_denied"), 1);
    assert_eq!(counter(&text, "beta", "monitor", "api_key_missing"), 1);
    assert!(text.contains("# TYPE appguard_decisions counter"), "{text}");
}

#[test]
fn a_request_no_route_matches_is_unmatched_in_the_log_as_in_the_metrics() {
    // One label for one request: an operator who sees `_unmatched` in
    // appguard_decisions or an alert finds the same word in the log lines.
    let up = Upstream::start();
    let envoy = EnvoyBuilder::new(config("enforce"), up.port).start();
    let r = envoy.request(Req::get("/nowhere"));
    assert_eq!((r.status, r.reason()), (403, Some("route_denied")));
    let text = prometheus(envoy.admin_port);
    assert_eq!(counter(&text, "_unmatched", "deny", "route_denied"), 1);
    let log = envoy.log();
    let line = log
        .lines()
        .find(|l| l.contains("deny reason=route_denied"))
        .unwrap_or_else(|| panic!("no denial logged:\n{log}"));
    assert!(
        line.contains("deny reason=route_denied status=403 route=_unmatched ip="),
        "{line}"
    );
}

#[test]
fn the_wasm_log_level_set_on_the_admin_port_is_followed_without_a_restart() {
    // Started at `warning`: no denial lines (appguard does not format
    // them). Raised to `info` on the admin port: they come, from the next
    // tick on, with no restart; lowered again, they stop.
    let up = Upstream::start();
    let envoy = EnvoyBuilder::new(config("enforce"), up.port)
        .wasm_log_level("warning")
        .start();
    let denials = || envoy.log().matches("deny reason=route_denied").count();
    let deny = |path: &str| {
        let r = envoy.request(Req::get(path));
        assert_eq!((r.status, r.reason()), (403, Some("route_denied")));
    };
    deny("/nowhere/1");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(denials(), 0, "a denial logged at warning");
    let set = |level: &str| {
        let r = http::send(
            envoy.admin_port,
            &Req::new("POST", &format!("/logging?wasm={level}")),
        )
        .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    };
    set("info");
    // The level is read once a second: a denial at most every 200 ms until
    // one is logged.
    harness::wait_until(10, "a denial logged after the level was raised", || {
        deny("/nowhere/2");
        std::thread::sleep(Duration::from_millis(150));
        denials() >= 1
    });
    set("warning");
    std::thread::sleep(Duration::from_millis(2500));
    let before = denials();
    deny("/nowhere/3");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(denials(), before, "a denial logged at warning");
}

/// `appguard_vm_memory_bytes`: the linear memory of appguard's Wasm VMs,
/// a gauge each VM brings up to date once a second. It is whole 64 KiB
/// pages, it follows the VMs as they grow (1,000 verified tokens of ~3 KB
/// each, kept in the verified-token cache, take more than a MiB), and
/// since it is their sum it never goes down while they live.
#[test]
fn vm_memory_gauge_follows_the_linear_memory() {
    let up = Upstream::start();
    let envoy = EnvoyBuilder::new(config("enforce"), up.port)
        .concurrency(2)
        .start();
    let name = "appguard_vm_memory_bytes";
    let text = prometheus(envoy.admin_port);
    assert!(
        text.contains("# TYPE appguard_vm_memory_bytes gauge"),
        "{text}"
    );
    let read = |at_least: u64| {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let v = envoy.stat(name).unwrap_or(0);
            if v >= at_least || Instant::now() > deadline {
                return v;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let first = read(1);
    assert!(
        (1 << 20..256 << 20).contains(&first) && first % 65_536 == 0,
        "{first} bytes"
    );
    let padding = "p".repeat(2000);
    for i in 0..1000 {
        let token = hs256(&claims(
            300,
            json!({"sub": format!("user-{i}"), "pad": padding}),
        ));
        let r = envoy.request(Req::get("/attested/x").header("x-token", &token));
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let grown = read(first + (1 << 20));
    assert!(
        grown >= first + (1 << 20) && grown % 65_536 == 0,
        "{first} -> {grown} bytes after 1,000 cached tokens of ~3 KB"
    );
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(700));
        let now = envoy.stat(name).unwrap_or(0);
        assert!(now >= grown, "{grown} -> {now} bytes: the sum went down");
    }
    envoy.assert_vm_healthy();
}

/// A configuration pushed through LDS, as Istio and other control planes
/// do, takes effect without a restart: here enforce → monitor, in new VMs
/// (another `vm_id`), after a bad one was rejected without harm. The VMs it replaced take their share out of
/// `appguard_vm_memory_bytes` once their listener has drained, so the
/// gauge does not count every VM an Envoy ever ran.
#[test]
fn an_lds_update_swaps_the_configuration_and_old_vms_leave_the_memory_gauge() {
    let up = Upstream::start();
    // Replaced listeners drain for six seconds: long enough to see the
    // old VMs and the new ones counted together.
    let drain = Duration::from_secs(6);
    let builder = EnvoyBuilder::new(config("enforce"), up.port)
        .listener_from_file()
        .drain_seconds(drain.as_secs() as u32);
    let envoy = builder.start();
    let r = envoy.request(Req::get("/keyed/x"));
    assert_eq!((r.status, r.reason()), (403, Some("api_key_missing")));
    let name = "appguard_vm_memory_bytes";
    // the VMs' level before the update, once every VM has reported
    let mut before = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        std::thread::sleep(Duration::from_millis(1200));
        let now = envoy.stat(name).unwrap_or(0);
        if (now > 0 && now == before) || Instant::now() > deadline {
            break;
        }
        before = now;
    }
    assert!(before >= 1 << 20, "{before} bytes before the update");

    // A configuration appguard refuses is rejected as a whole: the running
    // one stays.
    envoy.update_listener(&builder.clone().plugin_config(json!({"mode": "audit"})));
    let deadline = Instant::now() + Duration::from_secs(10);
    while envoy
        .stat("listener_manager.lds.update_rejected")
        .unwrap_or(0)
        == 0
    {
        assert!(Instant::now() < deadline, "the bad update was not rejected");
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = envoy.request(Req::get("/keyed/x"));
    assert_eq!((r.status, r.reason()), (403, Some("api_key_missing")));
    let log = envoy.log();
    assert!(
        log.contains("invalid configuration at `mode`")
            && log.contains("listener 'ingress' config rejected"),
        "{log}"
    );

    envoy.update_listener(
        &builder
            .clone()
            .plugin_config(config("monitor"))
            .vm_id("appguard-2"),
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = envoy.request(Req::get("/keyed/x"));
        if r.status == 200 {
            assert_eq!(
                up.last().header("x-appguard-would-deny"),
                Some("api_key_missing")
            );
            break;
        }
        assert_eq!(r.status, 403, "{}", r.text());
        assert!(Instant::now() < deadline, "the update never took effect");
        std::thread::sleep(Duration::from_millis(100));
    }
    let swapped = Instant::now();
    // While the old listener drains, its VMs still count; the new VMs,
    // configured before the first answer above, add their share from
    // their first tick (a second): the gauge holds both, about twice
    // `before`.
    let mut seen = Vec::new();
    let mut both = 0;
    while swapped.elapsed() < drain {
        let now = envoy.stat(name).unwrap_or(0);
        seen.push(now);
        if now >= before + before / 2 {
            both = now;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        both > 0,
        "{before} bytes before the update; while the old VMs drained: {seen:?} \
         (expected at least {}: the new VMs' share added to the old ones')",
        before + before / 2
    );
    // Once drained, the old VMs take their share out: the gauge falls
    // back to about one set of VMs' worth.
    let deadline = swapped + drain + Duration::from_secs(12);
    let mut after;
    loop {
        after = envoy.stat(name).unwrap_or(0);
        if (after > 0 && after <= both - before / 2) || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        after >= before / 2 && after <= both - before / 2 && after < before + (1 << 20),
        "{before} bytes before the update, {both} while the old VMs drained, \
         {after} after"
    );
    // No VM crashed; the one "Wasm VM failed" line is the refused update.
    envoy.assert_vm_healthy_after_refused_configs(1);
}

/// A leaked key disabled through an LDS update (README, API-key rotation)
/// is refused from the update on, also by workers that have just let it
/// through many times: what they remember of keys they found belongs to
/// the configuration, and goes with it. Same `vm_id`: the running VMs take
/// the new configuration.
#[test]
fn a_key_disabled_by_an_lds_update_is_refused_at_once() {
    // Two workers; "at once": from the moment Envoy has taken and warmed
    // the update, the very first request is refused, on either worker.
    let up = Upstream::start();
    let builder = EnvoyBuilder::new(config("enforce"), up.port)
        .listener_from_file()
        .concurrency(2);
    let envoy = builder.start();
    let keyed = || envoy.request(Req::get("/keyed/x").header("x-api-key", API_KEY));
    for _ in 0..20 {
        let r = keyed();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(up.last().header("x-appguard-key-id"), Some("ops-key"));
    }
    let stat = |name: &str| envoy.stat(name).unwrap_or(0);
    let updates = stat("listener_manager.lds.update_success");
    let mut disabled = config("enforce");
    disabled["api_keys"]["keys"][0]["disabled"] = json!(true);
    envoy.update_listener(&builder.clone().plugin_config(disabled));
    // Envoy has taken the update and warmed the new listener (its VMs
    // configured): from then on, no request may pass with the key.
    let deadline = Instant::now() + Duration::from_secs(15);
    while stat("listener_manager.lds.update_success") == updates
        || stat("listener_manager.total_listeners_warming") > 0
    {
        assert!(Instant::now() < deadline, "the update never took effect");
        std::thread::sleep(Duration::from_millis(50));
    }
    // At once, on every request, whichever worker takes it.
    let cx = |n: u8| {
        stat(&format!(
            "listener.127.0.0.1_{}.worker_{n}.downstream_cx_total",
            envoy.port
        ))
    };
    let before = (cx(0), cx(1));
    let mut sent = 0;
    while sent < 20 || (cx(0) == before.0 || cx(1) == before.1) && sent < 200 {
        let r = keyed();
        assert_eq!(
            (r.status, r.reason()),
            (403, Some("api_key_invalid")),
            "request {sent} after the update"
        );
        sent += 1;
    }
    assert!(
        cx(0) > before.0 && cx(1) > before.1,
        "both workers refused the key"
    );
    envoy.assert_vm_healthy();
}

/// An Envoy whose every denial (`threshold` 1, an hour's window) sends
/// an alert to `webhook`, and whose upstream is `up`.
fn alerting_envoy(webhook: &Upstream, up: &Upstream) -> harness::Envoy {
    let mut cfg = config("enforce");
    cfg["alerts"] =
        json!({"cluster": "alerts", "path": "/hook", "threshold": 1, "window_seconds": 3600});
    EnvoyBuilder::new(cfg, up.port)
        .http_cluster("alerts", webhook.port)
        .start()
}

#[test]
fn a_flood_of_denials_sends_a_handful_of_alerts() {
    // The alert budget's hour window is aligned on the epoch.
    harness::avoid_hour_edge(60);
    let hook = Upstream::start();
    let up = Upstream::start();
    let mut cfg = config("enforce");
    cfg["alerts"] = json!({"cluster": "alerts", "path": "/hook", "threshold": 5, "window_seconds": 3600, "max_alerts_per_window": 2});
    let envoy = EnvoyBuilder::new(cfg, up.port)
        .http_cluster("alerts", hook.port)
        .concurrency(2)
        .start();
    for i in 0..60 {
        let path = if i % 2 == 0 {
            "/keyed/x"
        } else {
            "/attested/x"
        };
        envoy.request(Req::get(path));
    }
    envoy.request(Req::get("/nowhere")); // a third route/reason pair: over the window budget
    for _ in 0..10 {
        envoy.request(Req::get("/nowhere"));
    }
    harness::wait_until(15, "two alert posts", || hook.seen().len() >= 2);
    // Absence takes a wait: a third post would be sent within two ticks.
    std::thread::sleep(Duration::from_millis(2500));
    let posts = hook.seen();
    assert_eq!(
        posts.len(),
        2,
        "{posts:?}\n{}",
        envoy
            .log()
            .lines()
            .filter(|l| l.contains("alert"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    for p in &posts {
        assert_eq!((p.method.as_str(), p.path.as_str()), ("POST", "/hook"));
        let body: serde_json::Value = serde_json::from_slice(&p.body).unwrap();
        assert_eq!(body["denials"], 5);
        assert!(
            ["api_key_missing", "token_missing"].contains(&body["reason"].as_str().unwrap()),
            "{body}"
        );
    }
    // The log says whether the webhook took them.
    envoy.wait_log("delivered (status 200)", 1, 10);
    // A webhook that refuses: said so, not "sent".
    let refusing = Upstream::with_handler(std::sync::Arc::new(|_s: &harness::upstream::Seen| {
        (503, vec![], b"busy".to_vec())
    }));
    let envoy = alerting_envoy(&refusing, &up);
    envoy.request(Req::get("/keyed/x"));
    envoy.wait_log(
        "not delivered: status 503 (the webhook's, or Envoy's",
        1,
        10,
    );
}

#[test]
fn an_alert_the_webhook_could_not_take_is_tried_again() {
    // A webhook briefly down (503 from its load balancer, a deploy) must
    // not lose the alert: the same post is tried again after 2 s, then
    // 4 s. One that refuses it as it is (404) is not.
    harness::avoid_hour_edge(60);
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = answered.clone();
    let flaky =
        Upstream::with_handler(std::sync::Arc::new(
            move |_s: &harness::upstream::Seen| match seen
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            {
                0 | 1 => (503, vec![], b"deploying".to_vec()),
                _ => (200, vec![], b"ok".to_vec()),
            },
        ));
    let up = Upstream::start();
    let envoy = alerting_envoy(&flaky, &up);
    envoy.request(Req::get("/keyed/x"));
    envoy.wait_log("delivered (status 200) (try 3 of 3)", 1, 20);
    let posts = flaky.seen();
    assert_eq!(posts.len(), 3, "{posts:?}");
    assert!(
        posts.iter().all(|p| p.body == posts[0].body),
        "the same alert each time"
    );
    let log = envoy.log();
    assert!(log.contains("not delivered: status 503"), "{log}");
    assert!(log.contains("trying again in 2 s"), "{log}");
    assert!(log.contains("trying again in 4 s (try 2 of 3)"), "{log}");

    // Refused as it is: one post, said so.
    let refusing = Upstream::with_handler(std::sync::Arc::new(|_s: &harness::upstream::Seen| {
        (404, vec![], b"no such hook".to_vec())
    }));
    let envoy = alerting_envoy(&refusing, &up);
    envoy.request(Req::get("/keyed/x"));
    envoy.wait_log("not delivered: status 404; not sent again", 1, 10);
    std::thread::sleep(Duration::from_millis(3000));
    assert_eq!(refusing.seen().len(), 1);
}

#[test]
fn a_throttling_webhook_gets_the_alert_again_when_its_retry_after_says() {
    // A chat webhook throttling its channel answers 429 with Retry-After:
    // the post comes back when it asks (6 s here, not the usual 2 s), and
    // one that asks for longer than is worth waiting is given up, said so.
    harness::avoid_hour_edge(60);
    let times = std::sync::Arc::new(std::sync::Mutex::new(Vec::<std::time::Instant>::new()));
    let seen = times.clone();
    let throttling =
        Upstream::with_handler(std::sync::Arc::new(move |_s: &harness::upstream::Seen| {
            let mut t = seen.lock().unwrap();
            t.push(std::time::Instant::now());
            if t.len() == 1 {
                let asks = vec![("retry-after".to_owned(), "6".to_owned())];
                (429, asks, b"slow down".to_vec())
            } else {
                (200, vec![], b"ok".to_vec())
            }
        }));
    let up = Upstream::start();
    let envoy = alerting_envoy(&throttling, &up);
    envoy.request(Req::get("/keyed/x"));
    envoy.wait_log("delivered (status 200) (try 2 of 3)", 1, 20);
    let times = times.lock().unwrap().clone();
    assert_eq!(times.len(), 2, "{times:?}");
    let waited = times[1] - times[0];
    assert!(
        waited >= Duration::from_millis(5500),
        "tried again after {waited:?}, before the 6 s it asked"
    );
    assert!(
        envoy
            .log()
            .contains("not delivered: status 429; trying again in 6 s (as its retry-after asks)"),
        "{}",
        envoy.log()
    );

    // Asked to wait over a quarter of an hour: the alert would be stale.
    let away = Upstream::with_handler(std::sync::Arc::new(|_s: &harness::upstream::Seen| {
        let asks = vec![("retry-after".to_owned(), "86400".to_owned())];
        (503, asks, b"maintenance".to_vec())
    }));
    let envoy = alerting_envoy(&away, &up);
    envoy.request(Req::get("/keyed/x"));
    envoy.wait_log(
        "given up: its retry-after asks for 86400 s, more than 900",
        1,
        10,
    );
    std::thread::sleep(Duration::from_millis(3000));
    assert_eq!(away.seen().len(), 1, "not tried again");
}

#[test]
fn an_alert_suppressed_by_the_budget_comes_in_the_summary_after_its_window() {
    // Cheap denials (no API key) spend the window's one alert; the phone
    // denials on the SMS route that follow must still reach the webhook.
    // A window long enough for the five denials on a loaded machine.
    const WINDOW: u64 = 10;
    let hook = Upstream::start();
    let up = Upstream::start();
    let mut cfg = config("enforce");
    cfg["alerts"] = json!({"cluster": "alerts", "path": "/hook", "threshold": 2, "window_seconds": WINDOW, "max_alerts_per_window": 1});
    let envoy = EnvoyBuilder::new(cfg, up.port)
        .http_cluster("alerts", hook.port)
        .concurrency(2)
        .start();
    // Start just after a window boundary, so that all the denials fall in
    // one window (the host clock is this machine's).
    let epoch_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    let ms = epoch_ms();
    std::thread::sleep(Duration::from_millis(
        WINDOW * 1000 - ms % (WINDOW * 1000) + 200,
    ));
    let window_start = epoch_ms() / 1000 / WINDOW * WINDOW;
    for _ in 0..2 {
        envoy.request(Req::get("/keyed/x"));
    }
    for _ in 0..3 {
        let r = envoy.request(Req::post_json("/sms", r#"{"to": "+882 1234 5678"}"#));
        assert_eq!(r.reason(), Some("phone_denied"));
    }
    assert!(
        epoch_ms() / 1000 / WINDOW * WINDOW == window_start,
        "the denials straddled a window boundary: the machine is too slow for this test"
    );
    // The alert goes at the next tick, the summary at the first tick after
    // the window's end; the log says when the webhook took each.
    envoy.wait_log("delivered (status 200)", 2, 2 * WINDOW + 10);
    // Any other post (another root's summary of the same window, an alert
    // the budget should have suppressed) would be sent by a tick about a
    // second after the window's end at the latest: wait three seconds past
    // it (absence can only be seen over time), then until every post
    // Envoy sent has arrived and been answered.
    let quiet = (window_start + WINDOW + 3) * 1000;
    while epoch_ms() < quiet {
        std::thread::sleep(Duration::from_millis(100));
    }
    harness::wait_until(
        10,
        "every alert post sent to arrive and be answered",
        || {
            let sent = envoy.stat("cluster.alerts.upstream_rq_total").unwrap_or(0);
            hook.seen().len() as u64 == sent
                && envoy.log().matches("delivered (status 200)").count() as u64 == sent
        },
    );
    let posts = hook.seen();
    let alert_log = || {
        envoy
            .log()
            .lines()
            .filter(|l| l.contains("alert"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(posts.len(), 2, "{posts:?}\n{}", alert_log());
    let bodies: Vec<serde_json::Value> = posts
        .iter()
        .map(|p| serde_json::from_slice(&p.body).unwrap())
        .collect();
    assert_eq!(bodies[0]["kind"], "threshold", "{bodies:?}");
    assert_eq!(
        (bodies[0]["route"].as_str(), bodies[0]["reason"].as_str()),
        (Some("keyed"), Some("api_key_missing"))
    );
    assert_eq!(bodies[1]["kind"], "suppressed", "{bodies:?}");
    assert_eq!(bodies[1]["window_start"], window_start);
    assert_eq!(
        bodies[1]["suppressed"],
        json!([{"route": "sms", "reason": "phone_denied", "status": 403}])
    );
    // names and numbers only: the phone number is nowhere in the posts
    for p in &posts {
        let text = String::from_utf8_lossy(&p.body);
        assert!(
            !text.contains("+882") && !text.contains("1234 5678") && !text.contains("12345678"),
            "{text}"
        );
    }
}

#[test]
fn no_log_line_carries_a_token_key_or_phone_number() {
    let up = Upstream::start();
    // debug level for the filter: even then nothing secret is logged
    let envoy = EnvoyBuilder::new(config("enforce"), up.port).start();
    let token = hs256(&claims(60, json!({"sub": "someone"})));
    let bad_token = format!("{token}x");
    // Each secret reached the filter and was decided on, so its absence
    // from the log below means something.
    for (req, want) in [
        (
            Req::get("/keyed/x").header("x-api-key", API_KEY),
            (200, None),
        ),
        (
            Req::get("/keyed/x").header("x-api-key", "wrong-key-material-123"),
            (403, Some("api_key_invalid")),
        ),
        (
            Req::get("/attested/x").header("x-token", &token),
            (200, None),
        ),
        (
            Req::get("/attested/x").header("x-token", &bad_token),
            (401, Some("token_signature")),
        ),
        (
            Req::post_json("/sms", r#"{"to": "+44 7700 900461"}"#),
            (200, None),
        ),
        (
            Req::post_json("/sms", r#"{"to": "+882 1234 5678"}"#),
            (403, Some("phone_denied")),
        ),
    ] {
        let path = req.path.clone();
        let r = envoy.request(req);
        assert_eq!((r.status, r.reason()), want, "{path}: {}", r.text());
    }
    // The denials are logged, each once.
    let log = envoy.log();
    for line in [
        "deny reason=api_key_invalid status=403",
        "deny reason=token_signature status=401",
        "deny reason=phone_denied status=403",
    ] {
        assert_eq!(log.matches(line).count(), 1, "{line:?}:\n{log}");
    }
    for secret in [
        API_KEY,
        "wrong-key-material-123",
        &token,
        &bad_token[..40],
        "7700900461",
        "7700 900461",
        "12345678",
        "1234 5678",
        &harness::tokens::secret_b64(),
    ] {
        assert!(!log.contains(secret), "the log contains {secret:?}");
    }
}

#[test]
fn a_flood_of_denials_is_not_a_flood_of_log_lines() {
    let up = Upstream::start();
    let mut cfg = config("enforce");
    cfg["decision_log_per_second"] = json!(3);
    let envoy = EnvoyBuilder::new(cfg, up.port).start();
    let started = Instant::now();
    for _ in 0..60 {
        let r = envoy.request(Req::get("/keyed/x"));
        assert_eq!((r.status, r.reason()), (403, Some("api_key_missing")));
    }
    let seconds = started.elapsed().as_secs() + 2; // windows touched, at most
    let lines = |log: &str| log.matches("deny reason=api_key_missing").count() as u64;
    let written = lines(&envoy.log());
    assert!(written >= 3, "the first lines are written");
    assert!(
        written <= 3 * seconds && written < 60,
        "{written} deny lines for 60 denials in under {seconds} s"
    );
    // every denial is still counted
    assert_eq!(
        envoy.stat("appguard_decisions.route.keyed.decision.deny.reason.api_key_missing"),
        Some(60)
    );
    let left_out = |log: &str| -> u64 {
        log.lines()
            .filter_map(|l| {
                l.split(" decision log lines left out")
                    .next()
                    .filter(|_| l.contains("decision log lines left out"))
                    .and_then(|head| head.rsplit(' ').next())
                    .and_then(|n| n.parse::<u64>().ok())
            })
            .sum()
    };
    // Once their second is over, the worker's tick says how many were left
    // out, with no request after them: every denial is then accounted for
    // (the tail of a flood was reported only by the next line written,
    // which may never come).
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut log = envoy.log();
    while left_out(&log) + lines(&log) < 60 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        log = envoy.log();
    }
    assert_eq!(left_out(&log) + lines(&log), 60, "{log}");
    // A later line says nothing more was left out.
    std::thread::sleep(Duration::from_millis(1100));
    envoy.request(Req::get("/keyed/x"));
    let log = envoy.log();
    assert_eq!(left_out(&log) + lines(&log), 61, "{log}");
}

#[test]
fn a_would_be_body_denial_in_monitor_mode_reaches_the_access_log() {
    // On a route that reads the body, the headers go upstream before the
    // body is decided, so `x-appguard-would-deny` cannot be added then;
    // the would-be reason still reaches Envoy's access log, through the
    // stream's filter state `wasm.appguard_would_deny`.
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let up = Upstream::start();
    let envoy = EnvoyBuilder::new(config("monitor"), up.port)
        .hcm(
            "access_log",
            json!([{
                "name": "envoy.access_loggers.file",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                    "path": log.display().to_string(),
                    "log_format": {"text_format_source": {"inline_string":
                        "%REQ(:PATH)% %RESPONSE_CODE% %FILTER_STATE(wasm.appguard_would_deny:PLAIN)%\n"}}
                }
            }]),
        )
        .start();
    for (path, body) in [
        ("/sms", r#"{"to":"+88212345678"}"#),
        ("/sms", r#"{"to":"+447700900123"}"#),
        ("/keyed/x", ""),
    ] {
        let req = if body.is_empty() {
            Req::get(path)
        } else {
            Req::post_json(path, body)
        };
        assert_eq!(envoy.request(req).status, 200, "{path} {body}");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.lines().count() >= 3 || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        [
            "/sms 200 phone_denied",
            "/sms 200 -",
            "/keyed/x 200 api_key_missing"
        ],
        "Envoy's access log"
    );
    // The body-phase decision is logged and counted as before.
    assert!(envoy
        .log()
        .contains("monitor would_deny reason=phone_denied"));
}

#[test]
fn local_counts_carry_over_an_update_with_the_same_vm_id_and_restart_with_a_new_one() {
    // README, "Changing the configuration": what appguard keeps in shared
    // data belongs to the vm_id.
    let up = Upstream::start();
    let with = |log_rate: u32| {
        let mut c = config("enforce");
        c["decision_log_per_second"] = json!(log_rate);
        c["routes"].as_array_mut().unwrap().insert(
            0,
            json!({"name": "limited", "match": {"prefix": "/limited"},
                   "rate_limits": [{"entries": [{"type": "route"}], "local": {"requests": 2, "per": "hour"}}]}),
        );
        c
    };
    let builder = EnvoyBuilder::new(with(100), up.port).listener_from_file();
    let envoy = builder.start();
    let limited = || envoy.request(Req::get("/limited/x")).status;
    assert_eq!([limited(), limited(), limited()], [200, 200, 429]);
    let stat = |name: &str| envoy.stat(name).unwrap_or(0);
    let apply = |b: &EnvoyBuilder| {
        let updates = stat("listener_manager.lds.update_success");
        envoy.update_listener(b);
        let deadline = Instant::now() + Duration::from_secs(15);
        while stat("listener_manager.lds.update_success") == updates
            || stat("listener_manager.total_listeners_warming") > 0
        {
            assert!(Instant::now() < deadline, "the update never took effect");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    // Another configuration, the same vm_id: the spent bucket stays spent.
    apply(&builder.clone().plugin_config(with(99)));
    assert_eq!(limited(), 429, "carried over");
    // A new vm_id: new shared data, a full bucket.
    apply(&builder.clone().plugin_config(with(98)).vm_id("appguard-b"));
    assert_eq!([limited(), limited(), limited()], [200, 200, 429]);
    envoy.assert_vm_healthy();
}

#[test]
fn a_denial_is_logged_with_its_route_client_app_and_key() {
    // SPEC: denials are logged with route, reason, client IP and app (and
    // the key's id): names and ids, never the key or the number.
    let up = Upstream::start();
    let cert = "AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89";
    let envoy = EnvoyBuilder::new(
        json!({
            "default_action": "deny",
            "phone": {"default_calling_code": "44", "denied_prefixes": ["+882"],
                      "hash_key_base64": "c2VjcmV0LWtleS1mb3ItcGhvbmUtaGFzaGluZy0wMTIz"},
            "apps": [{"id": "shop-android", "platform": "android", "package": "com.example.shop",
                      "cert_fingerprints": [cert]}],
            "api_keys": {"keys": [{"id": "ops-key", "sha256": appguard::identity::hash_api_key(API_KEY),
                                   "apps": ["shop-android"]}]},
            "routes": [{"name": "sms", "match": {"path": "/sms"}, "platforms": ["android"],
                        "api_key": "required",
                        "rate_limits": [{"entries": [{"type": "body", "pointer": "/to", "phone": true}],
                                         "local": {"requests": 100, "per": "minute"}}]}]
        }),
        up.port,
    )
    .start();
    let r = envoy.request(
        Req::post_json("/sms", r#"{"to": "+882 1234 5678"}"#)
            .header("x-api-key", API_KEY)
            .header("x-android-package", "com.example.shop")
            .header("x-android-cert", &cert.replace(':', "").to_lowercase()),
    );
    assert_eq!(
        (r.status, r.reason()),
        (403, Some("phone_denied")),
        "{}",
        r.text()
    );
    let log = envoy.log();
    let line = log
        .lines()
        .find(|l| l.contains("deny reason=phone_denied"))
        .unwrap_or_else(|| panic!("no denial logged:\n{log}"));
    assert!(
        line.contains("deny reason=phone_denied status=403 route=sms ip=127.0.0.1 app=shop-android key=ops-key"),
        "{line}"
    );
    // What appguard wrote, without Envoy's prefix: its timestamp and
    // thread id ("[12348]") may hold the digits by chance.
    let said = line
        .split_once("wasm log ")
        .map_or(line, |(_, message)| message);
    assert!(!said.contains(API_KEY) && !said.contains("1234"), "{line}");
}
