//! End-to-end tests of the binary with the in-memory store: gRPC answers,
//! health, stats, logs, shutdown and configuration errors.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use appguard_ratelimit::health::{NOT_SERVING, SERVING};

use std::time::{Duration, Instant};

use common::*;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::rate_limit::Unit;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    Code, DescriptorStatus, RateLimit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitResponse;
use envoy_types::pb::google::protobuf::UInt64Value;
use tonic::codegen::{http, Bytes};

const HOUR: i64 = 3600;
const DAY: i64 = 86_400;

fn appguard_args() -> Vec<String> {
    vec![
        "--config".to_owned(),
        fixture("appguard.yaml").display().to_string(),
    ]
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// The service's `/stats`, which must answer 200.
fn stats(service: &Service) -> serde_json::Value {
    let (status, body) = service.http_get("/stats");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Waits up to 5 s for `/stats` to show `want` in `key` (calls end on the
/// service's side a moment after the client sees them end).
async fn wait_stat(service: &Service, key: &str, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while stats(service)[key] != want {
        assert!(
            Instant::now() < deadline,
            "waited for {key} = {want}: {}\n{}",
            stats(service),
            service.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The allowance of the first status's limit.
fn first_limit(r: &RateLimitResponse) -> u32 {
    r.statuses[0]
        .current_limit
        .as_ref()
        .unwrap()
        .requests_per_unit
}

/// `duration_until_reset` is the time to the end of the window, measured
/// against this process's clock (one second of slack each way).
fn assert_reset(status: &DescriptorStatus, unit_seconds: i64) {
    let expected = unit_seconds - unix_now() % unit_seconds;
    let got = status
        .duration_until_reset
        .expect("duration_until_reset")
        .seconds;
    assert!(
        (got - expected).abs() <= 1 && got >= 1 && got <= unit_seconds,
        "duration_until_reset {got}, expected about {expected}"
    );
}

#[tokio::test]
async fn allows_n_then_answers_over_limit() {
    avoid_window_edge(HOUR, 10);
    let service = Service::start_healthy(&strs(&appguard_args()));
    let mut client = service.client().await;
    let req = request(
        "appguard",
        vec![descriptor(&[("client_ip", "203.0.113.7")])],
    );
    let limit = Some(RateLimit {
        name: "per_ip".to_owned(),
        requests_per_unit: 3,
        unit: Unit::Hour as i32,
    });

    for remaining in [2, 1, 0] {
        let r = ask(&mut client, &req).await;
        assert_eq!(r.overall_code, Code::Ok as i32);
        assert_eq!(r.statuses.len(), 1);
        let s = &r.statuses[0];
        assert_eq!(s.code, Code::Ok as i32);
        assert_eq!(s.current_limit, limit);
        assert_eq!(s.limit_remaining, remaining);
        assert_reset(s, HOUR);
    }
    for _ in 0..2 {
        let r = ask(&mut client, &req).await;
        assert_eq!(r.overall_code, Code::OverLimit as i32);
        let s = &r.statuses[0];
        assert_eq!(s.code, Code::OverLimit as i32);
        assert_eq!(s.current_limit, limit);
        assert_eq!(s.limit_remaining, 0);
        assert_reset(s, HOUR);
    }

    // Another IP has its own counter; the blocked IP (key + value entry,
    // preferred over key-only) is over limit at once.
    let other = request(
        "appguard",
        vec![descriptor(&[("client_ip", "203.0.113.8")])],
    );
    assert_eq!(
        ask(&mut client, &other).await.statuses[0].limit_remaining,
        2
    );
    let blocked = request(
        "appguard",
        vec![descriptor(&[("client_ip", "198.51.100.66")])],
    );
    let r = ask(&mut client, &blocked).await;
    assert_eq!(r.overall_code, Code::OverLimit as i32);
    assert_eq!(first_limit(&r), 0);

    let stats = stats(&service);
    assert_eq!(stats["requests"], 7);
    assert_eq!(stats["over_limit"], 3);
}

#[tokio::test]
async fn one_status_per_descriptor_in_request_order() {
    avoid_window_edge(DAY, 10);
    let service = Service::start_healthy(&strs(&appguard_args()));
    let mut client = service.client().await;
    let req = request(
        "appguard",
        vec![
            descriptor(&[("no_such_key", "x")]),
            descriptor(&[("internal", "batch")]),
            descriptor(&[
                ("app", "com.example"),
                ("route", "sms_send"),
                ("phone_hash", "ab12"),
            ]),
            descriptor(&[
                ("app", "com.example"),
                ("route", "other"),
                ("phone_hash", "ab12"),
            ]),
        ],
    );
    let r = ask(&mut client, &req).await;
    assert_eq!(r.overall_code, Code::Ok as i32);
    assert_eq!(r.statuses.len(), 4);
    assert_eq!(
        r.statuses[0],
        DescriptorStatus {
            code: Code::Ok as i32,
            ..Default::default()
        },
        "unmatched: OK, no limit"
    );
    assert_eq!(
        r.statuses[1],
        DescriptorStatus {
            code: Code::Ok as i32,
            limit_remaining: u32::MAX,
            ..Default::default()
        },
        "unlimited: OK, u32::MAX remaining"
    );
    assert_eq!(r.statuses[2].limit_remaining, 1);
    assert_eq!(
        r.statuses[2].current_limit.as_ref().unwrap().unit,
        Unit::Day as i32
    );
    assert_reset(&r.statuses[2], DAY);
    assert_eq!(
        r.statuses[3].current_limit, None,
        "route 'other' has no entry"
    );

    // hits_addend on the request counts for every descriptor.
    let mut heavy = request(
        "appguard",
        vec![descriptor(&[
            ("app", "com.example"),
            ("route", "sms_send"),
            ("phone_hash", "cd34"),
        ])],
    );
    heavy.hits_addend = 2;
    let r = ask(&mut client, &heavy).await;
    assert_eq!(r.overall_code, Code::Ok as i32);
    assert_eq!(r.statuses[0].limit_remaining, 0);
    // A descriptor's own hits_addend of 0 checks without consuming.
    let mut check = descriptor(&[
        ("app", "com.example"),
        ("route", "sms_send"),
        ("phone_hash", "cd34"),
    ]);
    check.hits_addend = Some(UInt64Value { value: 0 });
    let r = ask(&mut client, &request("appguard", vec![check])).await;
    assert_eq!(r.overall_code, Code::Ok as i32);
    assert_eq!(r.statuses[0].limit_remaining, 0);
    let r = ask(&mut client, &heavy).await;
    assert_eq!(r.overall_code, Code::OverLimit as i32);
}

#[tokio::test]
async fn replayed_jti_is_over_limit() {
    avoid_window_edge(HOUR, 10);
    let service = Service::start_healthy(&strs(&appguard_args()));
    let mut client = service.client().await;
    let token = request("appguard", vec![descriptor(&[("jti", "9f86d081884c7d65")])]);
    let r = ask(&mut client, &token).await;
    assert_eq!(r.overall_code, Code::Ok as i32);
    assert_eq!(r.statuses[0].limit_remaining, 0);
    let r = ask(&mut client, &token).await;
    assert_eq!(
        r.overall_code,
        Code::OverLimit as i32,
        "a replay is refused"
    );
    let other = request("appguard", vec![descriptor(&[("jti", "2c26b46b68ffc68f")])]);
    assert_eq!(ask(&mut client, &other).await.overall_code, Code::Ok as i32);
}

#[tokio::test]
async fn shadow_mode_answers_ok_and_counts() {
    avoid_window_edge(HOUR, 10);
    let service = Service::start_healthy(&strs(&appguard_args()));
    let mut client = service.client().await;
    let req = request("appguard", vec![descriptor(&[("api_key", "key-id-1")])]);
    for _ in 0..3 {
        let r = ask(&mut client, &req).await;
        assert_eq!(r.overall_code, Code::Ok as i32);
        assert_eq!(r.statuses[0].code, Code::Ok as i32);
    }
    let stats = stats(&service);
    assert_eq!(stats["shadow_mode"], 2);
    assert_eq!(stats["over_limit"], 0);
    let logs = service.stderr();
    assert!(
        logs.contains("over limit in shadow mode"),
        "shadow-mode hit not logged: {logs}"
    );
    assert!(
        !logs.contains("key-id-1"),
        "descriptor value logged at info"
    );
}

/// Global shadow mode answers OK to everything overall, replays of a
/// token's `jti` included, but their descriptor's own status still says
/// OVER_LIMIT, which appguard refuses: the service says so when it starts.
#[tokio::test]
async fn global_shadow_mode_answers_replays_ok_overall_and_says_so() {
    avoid_window_edge(HOUR, 10);
    let mut args = appguard_args();
    args.push("--shadow-mode".to_owned());
    let service = Service::start_healthy(&strs(&args));
    let mut client = service.client().await;
    let req = request("appguard", vec![descriptor(&[("jti", "7d1a54127b222502")])]);
    for use_ in 0..2 {
        let r = ask(&mut client, &req).await;
        assert_eq!(r.overall_code, Code::Ok as i32);
        // The replay's own status says so: appguard refuses it.
        let own = if use_ == 0 { Code::Ok } else { Code::OverLimit };
        assert_eq!(r.statuses[0].code, own as i32, "use {use_}");
    }
    let logs = service.stderr();
    let line = logs
        .lines()
        .find(|l| l.contains("--shadow-mode: every call is answered OK"))
        .unwrap_or_else(|| panic!("no warning: {logs}"));
    assert!(line.contains("WARN") || line.contains("warn"), "{line}");
    assert!(line.contains("replay"), "{line}");
}

/// The gRPC port bounds the streams one connection may open (the
/// HTTP/2 setting): streams waiting beyond the calls answered at once
/// would otherwise have no bound, each keeping its headers.
#[tokio::test]
async fn a_grpc_connection_may_open_a_bounded_number_of_streams() {
    let service = Service::start_healthy(&strs(&appguard_args()));
    let tcp = tokio::net::TcpStream::connect(service.grpc).await.unwrap();
    let (_client, mut conn) = h2::client::handshake(tcp).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while conn.max_concurrent_send_streams() != 512 {
        assert!(
            Instant::now() < deadline,
            "the server advertises {} streams",
            conn.max_concurrent_send_streams()
        );
        // Drive the connection until the server's SETTINGS are read.
        let _ = tokio::time::timeout(Duration::from_millis(50), &mut conn).await;
    }
}

/// The gRPC port holds at most `--max-grpc-connections` connections: past
/// it a caller waits to be accepted (said once in the log) rather than
/// taking a file descriptor, and is served as soon as one closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_connections_past_the_bound_wait_for_a_place() {
    let mut args = appguard_args();
    args.extend(["--max-grpc-connections".to_owned(), "2".to_owned()]);
    let service = Service::start_healthy(&strs(&args));
    let mut held = Vec::new();
    for _ in 0..2 {
        let tcp = tokio::net::TcpStream::connect(service.grpc).await.unwrap();
        let (client, conn) = h2::client::handshake(tcp).await.unwrap();
        held.push((client, tokio::spawn(conn)));
    }
    let grpc = service.grpc;
    let third = tokio::spawn(async move {
        let mut client = RateLimitServiceClient::connect(format!("http://{grpc}"))
            .await
            .unwrap();
        let req = request(
            "appguard",
            vec![descriptor(&[("client_ip", "203.0.113.8")])],
        );
        ask(&mut client, &req).await
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !third.is_finished(),
        "a third connection was served at once"
    );
    let log = service.stderr();
    assert_eq!(
        log.matches("new ones wait until one closes").count(),
        1,
        "{log}"
    );
    let (client, conn) = held.remove(0);
    drop(client);
    conn.abort();
    let answer = tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .expect("the waiting call was not served once a connection closed")
        .unwrap();
    assert_eq!(answer.overall_code, Code::Ok as i32);
}

/// The soft open-file limit is raised to the hard one at start; where even
/// the hard one is below what the connection bounds may take, the log
/// says so (the service still starts).
#[test]
fn a_low_open_file_limit_is_raised_or_reported() {
    // Soft 200, hard 400: raised to 400, below 4,096 + 256 + 128.
    let script = "ulimit -Sn 200 && ulimit -Hn 400 && exec \"$0\" \"$@\"";
    let service = Service::start_healthy_under(script, &strs(&appguard_args()));
    let log = service.stderr();
    assert!(
        log.contains("the open-file limit is 400, below the 4480 descriptors"),
        "{log}"
    );
    // Raised: the process's own limit, as the kernel reports it.
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", service.guard.pid())).unwrap();
    let open_files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    assert_eq!(
        open_files.split_whitespace().collect::<Vec<_>>()[3..5],
        ["400", "400"],
        "{open_files}"
    );
    // With room for the bound, nothing is said.
    let mut args = appguard_args();
    args.extend(["--max-grpc-connections".to_owned(), "16".to_owned()]);
    let service = Service::start_healthy_under(script, &strs(&args));
    let log = service.stderr();
    assert!(!log.contains("open-file limit"), "{log}");
}

#[tokio::test]
async fn limit_override_logs_keys_not_values() {
    avoid_window_edge(60, 5);
    let service = Service::start_healthy(&strs(&appguard_args()));
    let mut client = service.client().await;
    let mut d = descriptor(&[("api_key", "SECRET-KEY-123")]);
    d.limit = Some(
        envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::RateLimitOverride {
            requests_per_unit: 1,
            unit: Unit::Minute as i32,
        },
    );
    let req = request("appguard", vec![d]);
    assert_eq!(ask(&mut client, &req).await.overall_code, Code::Ok as i32);
    let r = ask(&mut client, &req).await;
    assert_eq!(r.overall_code, Code::OverLimit as i32);
    let logs = service.stderr();
    let line = logs
        .lines()
        .find(|l| l.contains("\"msg\":\"over limit\""))
        .unwrap_or_else(|| panic!("over-limit answer not logged: {logs}"));
    assert!(
        line.contains("\"limit\":\"appguard.api_key(override)\""),
        "{line}"
    );
    assert!(
        !logs.contains("SECRET-KEY-123"),
        "override descriptor value logged at info: {logs}"
    );
}

#[tokio::test]
async fn debug_lines_tag_descriptor_values_never_show_them() {
    avoid_window_edge(60, 5);
    let mut args = appguard_args();
    args.extend(["--log-level".to_owned(), "debug".to_owned()]);
    let service = Service::start_healthy(&strs(&args));
    let mut client = service.client().await;
    let req = request(
        "appguard",
        vec![descriptor(&[("api_key", "SECRET-KEY-123")])],
    );
    ask(&mut client, &req).await;
    ask(&mut client, &req).await;
    let logs = service.stderr();
    let tags: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("\"msg\":\"descriptor\""))
        .collect();
    assert_eq!(tags.len(), 2, "{logs}");
    assert!(tags[0].contains("(api_key=#"), "{}", tags[0]);
    assert!(tags[0].contains("/14B)"), "{}", tags[0]);
    // The same value, the same tag: a client can be followed in the log.
    let entries = |l: &str| -> String {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        v["fields"]["entries"].as_str().unwrap().to_owned()
    };
    assert_eq!(entries(tags[0]), entries(tags[1]));
    assert!(
        !logs.contains("SECRET-KEY-123"),
        "descriptor value logged: {logs}"
    );
}

#[tokio::test]
async fn malformed_requests_get_invalid_argument() {
    let service = Service::start_healthy(&strs(&appguard_args()));
    let mut client = service.client().await;
    let err = client
        .should_rate_limit(request("", vec![descriptor(&[("jti", "x")])]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err = client
        .should_rate_limit(request("appguard", vec![]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    // More than 256 KiB: refused before it is decoded, and the service
    // goes on answering.
    let huge = "v".repeat(300 * 1024);
    let err = client
        .should_rate_limit(request("appguard", vec![descriptor(&[("jti", &huge)])]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::OutOfRange, "{err:?}");
    // An unknown domain is not an error: nothing is limited.
    let r = ask(
        &mut client,
        &request("elsewhere", vec![descriptor(&[("jti", "x")])]),
    )
    .await;
    assert_eq!(r.overall_code, Code::Ok as i32);
}

#[tokio::test]
async fn loads_a_directory_of_files() {
    let dir = fixture("conf.d").display().to_string();
    let service = Service::start_healthy(&["--config", &dir]);
    let mut client = service.client().await;
    let one = request("one", vec![descriptor(&[("k", "v")])]);
    let two = request("two", vec![descriptor(&[("k", "v")])]);
    assert_eq!(ask(&mut client, &one).await.statuses[0].limit_remaining, 0);
    assert_eq!(ask(&mut client, &two).await.statuses[0].limit_remaining, 1);
}

#[test]
fn logs_are_json_lines_and_sigterm_exits_zero() {
    let mut args = appguard_args();
    args.extend(["--drain-seconds".to_owned(), "0".to_owned()]);
    let mut service = Service::start_healthy(&strs(&args));
    let status = std::process::Command::new("kill")
        .args(["-TERM", &service.guard.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = service
        .guard
        .wait_timeout(Duration::from_secs(10))
        .expect("no exit after SIGTERM");
    assert_eq!(exit.code(), Some(0), "{}", service.stderr());
    let logs = service.stderr();
    let lines: Vec<&str> = logs.lines().collect();
    assert!(lines.len() >= 3, "{logs}");
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(v["ts"].is_string(), "{line}");
        assert!(v["level"].is_string(), "{line}");
        assert!(v["msg"].is_string(), "{line}");
        assert!(v["fields"].is_object(), "{line}");
    }
    assert!(logs.contains("\"msg\":\"listening\""), "{logs}");
    assert!(logs.contains("SIGTERM"), "{logs}");
}

/// Waits until `what` shows in the service's log `times` times.
fn wait_for_log(service: &Service, what: &str, times: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = service.stderr();
        if log.matches(what).count() >= times {
            return log;
        }
        assert!(Instant::now() < deadline, "no {what:?} x{times}: {log}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGHUP loads the configuration again and puts it in force from the
/// next call on, counts kept; a file that no longer loads is logged,
/// counted, and leaves the limits in force as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_configuration_and_keeps_it_when_invalid() {
    avoid_window_edge(HOUR, 10);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("limits.yaml");
    let limits = |n: u32| {
        format!(
            "domain: reload\ndescriptors:\n  - key: client_ip\n    rate_limit:\n      \
             unit: hour\n      requests_per_unit: {n}\n"
        )
    };
    std::fs::write(&file, limits(1)).unwrap();
    let path = file.display().to_string();
    let service = Service::start_healthy(&["--config", &path]);
    let mut client = service.client().await;
    let req = request("reload", vec![descriptor(&[("client_ip", "203.0.113.9")])]);
    let hup = || {
        let status = std::process::Command::new("kill")
            .args(["-HUP", &service.guard.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    assert_eq!(ask(&mut client, &req).await.overall_code, Code::Ok as i32);
    assert_eq!(
        ask(&mut client, &req).await.overall_code,
        Code::OverLimit as i32
    );

    // Three an hour now: the two hits so far still count.
    std::fs::write(&file, limits(3)).unwrap();
    hup();
    wait_for_log(&service, "configuration reloaded", 1);
    let r = ask(&mut client, &req).await;
    assert_eq!(r.overall_code, Code::Ok as i32, "{r:?}");
    assert_eq!(r.statuses[0].limit_remaining, 0, "{r:?}");
    assert_eq!(first_limit(&r), 3);

    // A broken edit: logged, and the limits of three an hour stay.
    std::fs::write(&file, "domain: reload\ndescriptors: [").unwrap();
    hup();
    let log = wait_for_log(&service, "configuration not reloaded", 1);
    assert!(log.contains("limits.yaml"), "{log}");
    let r = ask(&mut client, &req).await;
    assert_eq!(r.overall_code, Code::OverLimit as i32, "{r:?}");
    assert_eq!(first_limit(&r), 3);

    let stats = stats(&service);
    assert_eq!(stats["config_reloads"], 1, "{stats}");
    assert_eq!(stats["config_reload_errors"], 1, "{stats}");
    // Still running, still healthy.
    assert_eq!(service.http_get("/healthcheck").0, 200);
}

/// With `--watch-config-seconds`, a changed file (a ConfigMap's update) is
/// put in force without a signal; the same broken files are reported
/// once, not at every look; unchanged files are not reloaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_configuration_reloads_when_its_files_change() {
    avoid_window_edge(HOUR, 15);
    let dir = tempfile::tempdir().unwrap();
    let limits = |domain: &str, n: u32| {
        format!(
            "domain: {domain}\ndescriptors:\n  - key: client_ip\n    rate_limit:\n      \
             unit: hour\n      requests_per_unit: {n}\n"
        )
    };
    // Written whole, as a ConfigMap's update is (a rename), so that no look
    // reads a file half written.
    let put = |name: &str, text: String| {
        let hidden = dir.path().join(format!(".{name}.new"));
        std::fs::write(&hidden, text).unwrap();
        std::fs::rename(&hidden, dir.path().join(name)).unwrap();
    };
    put("a.yaml", limits("a", 1));
    let path = dir.path().display().to_string();
    let service = Service::start_healthy(&["--config", &path, "--watch-config-seconds", "1"]);
    let mut client = service.client().await;
    let ask_in = |domain: &str| request(domain, vec![descriptor(&[("client_ip", "203.0.113.10")])]);
    assert_eq!(
        ask(&mut client, &ask_in("a")).await.overall_code,
        Code::Ok as i32
    );
    assert_eq!(
        ask(&mut client, &ask_in("a")).await.overall_code,
        Code::OverLimit as i32
    );
    // Nothing changed: nothing reloaded.
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        !service.stderr().contains("reloaded"),
        "{}",
        service.stderr()
    );

    // A new file in the directory, then a higher limit in the old one
    // (one change at a time, so that no look falls between the two).
    put("b.yaml", limits("b", 1));
    wait_for_log(&service, "configuration changed on disk: reloaded", 1);
    put("a.yaml", limits("a", 3));
    wait_for_log(&service, "configuration changed on disk: reloaded", 2);
    assert_eq!(
        ask(&mut client, &ask_in("a")).await.overall_code,
        Code::Ok as i32
    );
    assert_eq!(
        ask(&mut client, &ask_in("b")).await.overall_code,
        Code::Ok as i32
    );

    // Broken: said once however many times it is looked at; the limits in
    // force stay.
    put("b.yaml", "domain: b\ndescriptors: [".to_owned());
    wait_for_log(&service, "configuration not reloaded", 1);
    std::thread::sleep(Duration::from_millis(2500));
    let log = service.stderr();
    assert_eq!(
        log.matches("configuration not reloaded").count(),
        1,
        "{log}"
    );
    assert_eq!(
        ask(&mut client, &ask_in("b")).await.overall_code,
        Code::OverLimit as i32
    );

    // Mended: in force again.
    put("b.yaml", limits("b", 5));
    wait_for_log(&service, "configuration changed on disk: reloaded", 3);
    assert_eq!(
        ask(&mut client, &ask_in("b")).await.overall_code,
        Code::Ok as i32
    );
    let stats = stats(&service);
    assert_eq!(stats["config_reloads"], 3, "{stats}");
    assert_eq!(stats["config_reload_errors"], 1, "{stats}");
}

#[test]
fn sigint_exits_zero() {
    let mut args = appguard_args();
    args.extend(["--drain-seconds".to_owned(), "0".to_owned()]);
    let mut service = Service::start_healthy(&strs(&args));
    std::process::Command::new("kill")
        .args(["-INT", &service.guard.pid().to_string()])
        .status()
        .unwrap();
    let exit = service
        .guard
        .wait_timeout(Duration::from_secs(10))
        .expect("no exit after SIGINT");
    assert_eq!(exit.code(), Some(0));
}

// Multi-threaded: the client's connection must keep running (answer the
// server's GOAWAY ping) while this thread waits for the process to exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn sigterm_drains_with_healthcheck_500_then_closes_both_ports() {
    avoid_window_edge(HOUR, 10);
    let mut args = appguard_args();
    args.extend(["--drain-seconds".to_owned(), "2".to_owned()]);
    let mut service = Service::start_healthy(&strs(&args));
    let req = request("appguard", vec![descriptor(&[("client_ip", "192.0.2.9")])]);
    let status = std::process::Command::new("kill")
        .args(["-TERM", &service.guard.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let signalled = std::time::Instant::now();

    // The health check turns to 500 at once, on a new connection.
    let health = loop {
        let answer = service.try_http_get("/healthcheck");
        if answer.as_ref().is_some_and(|(code, _)| *code != 200) {
            break answer;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(1),
            "healthcheck still {answer:?} after SIGTERM: {}",
            service.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        health.map(|(code, _)| code),
        Some(500),
        "{}",
        service.stderr()
    );
    // So does the gRPC health check.
    assert_eq!(service.health("", false).await.ok(), Some(NOT_SERVING));
    // gRPC still accepts a new connection and answers while draining.
    let mut client = service.client().await;
    let r = ask(&mut client, &req).await;
    assert_eq!(r.overall_code, Code::Ok as i32);
    assert_eq!(r.statuses[0].limit_remaining, 2);
    assert!(
        signalled.elapsed() < Duration::from_secs(2),
        "the checks took the whole drain"
    );

    // Then both ports close and the process exits 0.
    drop(client);
    let exit = service
        .guard
        .wait_timeout(Duration::from_secs(10))
        .expect("no exit after SIGTERM and the drain");
    assert_eq!(exit.code(), Some(0), "{}", service.stderr());
    let took = signalled.elapsed();
    assert!(
        took >= Duration::from_secs(2),
        "exited before the drain ended"
    );
    assert!(
        took < Duration::from_secs(5),
        "exit took {took:?}: {}",
        service.stderr()
    );
    assert!(service.try_http_get("/healthcheck").is_none());
    assert!(std::net::TcpStream::connect(service.grpc).is_err());
    let logs = service.stderr();
    assert!(logs.contains("draining"), "{logs}");
    assert!(!logs.contains("grace period"), "{logs}");
}

#[test]
fn bad_configuration_exits_2_with_a_clear_message() {
    let cases: &[(&str, &[&str])] = &[
        (
            "bad/unknown_key.yaml",
            &["descriptors[0].rate_limit.burst", "unknown key 'burst'"],
        ),
        (
            "bad/invalid_unit.yaml",
            &[
                "descriptors[0].descriptors[0].rate_limit.unit",
                "invalid rate limit unit 'fortnight'",
            ],
        ),
        ("bad/malformed.yaml", &["line 5"]),
    ];
    for (file, expected) in cases {
        let path = fixture(file).display().to_string();
        let (code, stderr) = run_to_exit(&["--config", &path]);
        assert_eq!(code, Some(2), "{file}: {stderr}");
        assert!(stderr.contains(&path), "{file}: file not named: {stderr}");
        for needle in *expected {
            assert!(
                stderr.contains(needle),
                "{file}: '{needle}' missing: {stderr}"
            );
        }
    }

    // Domains must be unique across files.
    let a = fixture("appguard.yaml").display().to_string();
    let b = fixture("bad/duplicate_domain.yaml").display().to_string();
    let (code, stderr) = run_to_exit(&["--config", &a, "--config", &b, "--log-format", "text"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("duplicate domain 'appguard'"), "{stderr}");

    // A missing file, and a missing --config.
    let (code, stderr) = run_to_exit(&["--config", "/nonexistent/limits.yaml"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("/nonexistent/limits.yaml"), "{stderr}");
    let (code, stderr) = run_to_exit(&[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--config"), "{stderr}");
    // An endless file (or a log given by mistake): refused at a bound, not
    // read until memory runs out.
    if std::path::Path::new("/dev/zero").exists() {
        let (code, stderr) = run_to_exit(&["--config", "/dev/zero", "--validate"]);
        assert_eq!(code, Some(2), "{stderr}");
        assert!(stderr.contains("it is larger than 16 MiB"), "{stderr}");
        let (code, stderr) = run_to_exit(&[
            "--config",
            &a,
            "--redis-url-file",
            "/dev/zero",
            "--validate",
        ]);
        assert_eq!(code, Some(2), "{stderr}");
        assert!(stderr.contains("it is larger than 64 KiB"), "{stderr}");
    }
}

#[test]
fn validate_checks_and_exits() {
    // A good configuration: exit 0, and a report of what was checked
    // (the fixture's one file and domain), not only a silent exit.
    let (code, stdout, stderr) = run_to_exit_with_env(
        &[
            "--config",
            &fixture("appguard.yaml").display().to_string(),
            "--validate",
        ],
        &[],
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains("configuration OK: 1 file(s), domains: appguard,"),
        "{stdout}"
    );
    // A bad one: --validate refuses it as the service would, exit 2 with
    // the reason, and never says OK.
    let bad = fixture("bad/invalid_unit.yaml").display().to_string();
    let (code, stdout, stderr) = run_to_exit_with_env(&["--config", &bad, "--validate"], &[]);
    assert_eq!(code, Some(2), "{stdout}{stderr}");
    assert!(
        stderr.contains("invalid rate limit unit 'fortnight'"),
        "{stderr}"
    );
    assert!(!stdout.contains("OK"), "{stdout}");
}

#[test]
fn a_zero_timeout_or_key_cap_exits_2() {
    let config = fixture("appguard.yaml").display().to_string();
    for flag in [
        "--redis-timeout-ms",
        "--memory-max-keys",
        "--max-grpc-connections",
    ] {
        for validate in [false, true] {
            let mut args = vec!["--config", &config, flag, "0"];
            if validate {
                args.push("--validate");
            }
            let (code, stderr) = run_to_exit(&args);
            assert_eq!(code, Some(2), "{flag}: {stderr}");
            assert!(stderr.contains(flag), "{flag}: {stderr}");
            assert!(stderr.contains("at least 1"), "{flag}: {stderr}");
        }
    }
}

/// Extra arguments of a case.
type Args<'a> = &'a [&'a str];
/// Extra environment variables of a case.
type Env<'a> = &'a [(&'a str, &'a str)];

#[test]
fn validate_checks_the_redis_url_wherever_it_comes_from() {
    let config = fixture("appguard.yaml").display().to_string();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("redis-url");
    // Nothing listens on port 1: --validate does not connect.
    std::fs::write(&file, "redis://:hunter2@127.0.0.1:1/0\n").unwrap();
    let file = file.display().to_string();
    let missing = dir.path().join("missing").display().to_string();
    let run = |extra: &[&str], env: &[(&str, &str)]| {
        let mut args = vec!["--config", config.as_str(), "--validate"];
        args.extend_from_slice(extra);
        let (code, stdout, stderr) = run_to_exit_with_env(&args, env);
        assert!(
            !stdout.contains("hunter2") && !stderr.contains("hunter2"),
            "a password was printed: {stdout}{stderr}"
        );
        (code, stdout, stderr)
    };

    let good: &[(Args, Env, &str)] = &[
        (&["--redis", "redis://127.0.0.1:1"], &[], "--redis"),
        (&["--redis-url-file", &file], &[], "--redis-url-file"),
        (
            &[],
            &[(REDIS_URL_ENV, "redis://:hunter2@127.0.0.1:1")],
            REDIS_URL_ENV,
        ),
    ];
    for (extra, env, source) in good {
        let (code, stdout, stderr) = run(extra, env);
        assert_eq!(code, Some(0), "{extra:?} {env:?}: {stderr}");
        assert!(stdout.contains("redis URL OK"), "{stdout}");
        assert!(stdout.contains(source), "{stdout}");
    }

    let bad: &[(Args, Env, &[&str])] = &[
        (&["--redis", "http://127.0.0.1:1"], &[], &["--redis"]),
        (
            &["--redis", "rediss://:hunter2@127.0.0.1:6380"],
            &[],
            &["--redis", "TLS is not built in", "stunnel"],
        ),
        (
            &[],
            &[(REDIS_URL_ENV, "rediss://:hunter2@127.0.0.1:6380")],
            &[REDIS_URL_ENV, "TLS is not built in"],
        ),
        (&[], &[(REDIS_URL_ENV, "")], &[REDIS_URL_ENV, "empty"]),
        (
            &["--redis-url-file", &missing],
            &[],
            &["cannot read --redis-url-file"],
        ),
    ];
    for (extra, env, needles) in bad {
        let (code, _, stderr) = run(extra, env);
        assert_eq!(code, Some(2), "{extra:?} {env:?}: {stderr}");
        for needle in *needles {
            assert!(
                stderr.contains(needle),
                "{extra:?}: '{needle}' missing: {stderr}"
            );
        }
    }

    // Serving, a rediss:// URL is refused at startup too.
    let (code, stderr) = run_to_exit(&[
        "--config",
        &config,
        "--redis",
        "rediss://127.0.0.1:6380",
        "--grpc-addr",
        &format!("127.0.0.1:{}", free_port()),
        "--http-addr",
        &format!("127.0.0.1:{}", free_port()),
    ]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("TLS is not built in"), "{stderr}");
}

/// One HTTP/2 frame: its 9-byte header, then `payload`.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap();
    let mut frame = len.to_be_bytes()[1..].to_vec();
    frame.extend([kind, flags]);
    frame.extend(stream.to_be_bytes());
    frame.extend(payload);
    frame
}

/// The request headers of a `ShouldRateLimit` call, HPACK-encoded without
/// the dynamic table (static-table names, literal values).
fn should_rate_limit_headers() -> Vec<u8> {
    let literal = |index: u8, value: &str| {
        let mut out = if index < 15 {
            vec![index]
        } else {
            vec![0x0f, index - 15]
        };
        out.push(u8::try_from(value.len()).unwrap());
        out.extend(value.as_bytes());
        out
    };
    let mut block = vec![0x83, 0x86]; // :method POST, :scheme http
    block.extend(literal(
        4,
        "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit",
    ));
    block.extend(literal(1, "localhost"));
    block.extend(literal(31, "application/grpc"));
    block
}

/// The frames read from `tcp` until the peer closes it or `within` ends,
/// as (type, stream) pairs.
async fn read_frames(tcp: &mut tokio::net::TcpStream, within: Duration) -> Vec<(u8, u32)> {
    use tokio::io::AsyncReadExt;
    let mut bytes = Vec::new();
    let _ = tokio::time::timeout(within, tcp.read_to_end(&mut bytes)).await;
    let mut frames = Vec::new();
    let mut rest = &bytes[..];
    while rest.len() >= 9 {
        let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
        let stream = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]) & 0x7fff_ffff;
        frames.push((rest[3], stream));
        rest = &rest[(9 + len).min(rest.len())..];
    }
    frames
}

/// A client that opens streams and resets them at once (HTTP/2 rapid
/// reset) is sent GOAWAY by h2, which logs a warning for each such
/// connection, outside the service's per-request throttle: the service
/// logs h2's (and hyper's) lines at `error` only unless `--log-level`
/// names them, so a client cannot flood the log that way, and its own
/// lines still come.
#[tokio::test]
async fn rapid_resets_do_not_flood_the_log() {
    use tokio::io::AsyncWriteExt;
    let service = Service::start_healthy(&strs(&appguard_args()));
    let mut burst = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    burst.extend(h2_frame(0x4, 0, 0, &[])); // SETTINGS
    for i in 0..25u32 {
        let stream = 2 * i + 1;
        // HEADERS (END_HEADERS, not END_STREAM), then RST_STREAM CANCEL.
        burst.extend(h2_frame(0x1, 0x4, stream, &should_rate_limit_headers()));
        burst.extend(h2_frame(0x3, 0, stream, &8u32.to_be_bytes()));
    }
    let connections = 30;
    for _ in 0..connections {
        let mut tcp = tokio::net::TcpStream::connect(service.grpc).await.unwrap();
        tcp.write_all(&burst).await.unwrap();
        let frames = read_frames(&mut tcp, Duration::from_secs(5)).await;
        // h2's rapid-reset guard answered: GOAWAY on the connection.
        assert!(
            frames.iter().any(|&(kind, _)| kind == 0x7),
            "no GOAWAY: {frames:?}"
        );
    }
    // The service is still answering, and its own lines still come.
    let mut client = service.client().await;
    let req = request("appguard", vec![descriptor(&[("jti", "after-resets")])]);
    assert_eq!(ask(&mut client, &req).await.overall_code, Code::Ok as i32);
    assert_eq!(
        ask(&mut client, &req).await.overall_code,
        Code::OverLimit as i32
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let logs = service.stderr();
    assert!(logs.contains("over limit"), "{logs}");
    let h2_lines = logs
        .lines()
        .filter(|l| l.contains("\"target\":\"h2") || l.contains("reached limit"))
        .count();
    assert_eq!(h2_lines, 0, "{logs}");
}

/// Opens a `ShouldRateLimit` stream on `client` with `extra` headers,
/// sends `body` (ending the stream when `end`), and returns the answer's
/// future and the stream.
async fn open_call(
    client: &mut h2::client::SendRequest<Bytes>,
    extra: &[(&str, &str)],
    path: &str,
    body: &[u8],
    end: bool,
) -> (h2::client::ResponseFuture, h2::SendStream<Bytes>) {
    let mut req = http::Request::builder()
        .method("POST")
        .uri(format!("http://localhost{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (name, value) in extra {
        req = req.header(*name, *value);
    }
    let mut client = client.clone().ready().await.unwrap();
    let (response, mut stream) = client
        .send_request(req.body(()).unwrap(), body.is_empty() && end)
        .unwrap();
    if !body.is_empty() {
        stream.send_data(Bytes::copy_from_slice(body), end).unwrap();
    }
    (response, stream)
}

/// The `grpc-status` of an answer: its headers (trailers-only) or its
/// trailers.
async fn grpc_status(response: h2::client::ResponseFuture) -> String {
    let response = response.await.unwrap();
    if let Some(code) = response.headers().get("grpc-status") {
        return code.to_str().unwrap().to_owned();
    }
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        let _ = chunk.unwrap();
    }
    let trailers = body.trailers().await.unwrap().unwrap();
    trailers["grpc-status"].to_str().unwrap().to_owned()
}

/// Calls tonic ends before their message reaches the rate limiter are
/// counted in `/stats`: refused before decoding (too large, not
/// protobuf, compressed, an unknown method, a stream reset mid-message)
/// in `calls_refused_undecoded`; ended before the message arrived (its
/// `grpc-timeout`, the service's own 30 s bound) in `calls_abandoned`,
/// like calls whose message was decoded. None counts in `requests` or
/// `invalid_requests`.
#[tokio::test]
async fn calls_ended_before_their_message_was_decoded_are_counted() {
    const PATH: &str = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";
    let service = Service::start_healthy(&strs(&appguard_args()));
    let tcp = tokio::net::TcpStream::connect(service.grpc).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut client = client;
    let started = Instant::now();

    // Held until the service's own 30 s bound: headers only, and headers
    // with part of a message.
    let (headers_only, _held_a) = open_call(&mut client, &[], PATH, &[], false).await;
    let (partial, _held_b) =
        open_call(&mut client, &[], PATH, &[0, 0, 0, 0, 10, 0x0a, 0x08], false).await;

    // Refused before decoding.
    let refused = [
        // A message declared larger than 256 KiB.
        (vec![], PATH, vec![0, 0, 0x05, 0, 0, 0x0a], "11"),
        // Not protobuf: a field longer than the message.
        (vec![], PATH, vec![0, 0, 0, 0, 2, 0x0a, 0x05], "13"),
        // Compressed.
        (
            vec![("grpc-encoding", "gzip")],
            PATH,
            vec![1, 0, 0, 0, 1, 0],
            "12",
        ),
        // An unknown method.
        (
            vec![],
            "/envoy.service.ratelimit.v3.RateLimitService/Nope",
            vec![0, 0, 0, 0, 0],
            "12",
        ),
    ];
    for (extra, path, body, want) in &refused {
        let (response, _stream) = open_call(&mut client, extra, path, body, true).await;
        assert_eq!(grpc_status(response).await, *want, "{path} {body:?}");
    }
    let s = stats(&service);
    assert_eq!(s["calls_refused_undecoded"], 4, "{s}");
    assert_eq!(s["calls_abandoned"], 0, "{s}");

    // The caller's deadline passes before its message arrived.
    let (deadline, _held_c) =
        open_call(&mut client, &[("grpc-timeout", "300m")], PATH, &[], false).await;
    // CANCELLED
    assert_eq!(grpc_status(deadline).await, "1");
    wait_stat(&service, "calls_abandoned", 1).await;
    // The caller resets a stream whose message never came in full: hyper
    // ends the body there, and tonic refuses the call as a message that
    // is missing.
    let (reset, mut stream) = open_call(&mut client, &[], PATH, &[0, 0, 0, 0, 4], false).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stream.send_reset(h2::Reason::CANCEL);
    drop(reset);
    wait_stat(&service, "calls_refused_undecoded", 5).await;

    // The service's own bound ends the two held calls, CANCELLED.
    assert_eq!(grpc_status(headers_only).await, "1");
    assert_eq!(grpc_status(partial).await, "1");
    assert!(
        started.elapsed() >= Duration::from_secs(29),
        "{:?}",
        started.elapsed()
    );
    wait_stat(&service, "calls_abandoned", 3).await;
    let s = stats(&service);
    assert_eq!(s["calls_refused_undecoded"], 5, "{s}");
    assert_eq!(s["requests"], 0, "{s}");
    assert_eq!(s["invalid_requests"], 0, "{s}");

    // A call whose message was decoded is counted once, by the limiter.
    let mut rls = service.client().await;
    let req = request("appguard", vec![descriptor(&[("jti", "decoded-once")])]);
    assert_eq!(ask(&mut rls, &req).await.overall_code, Code::Ok as i32);
    let s = stats(&service);
    assert_eq!(s["requests"], 1, "{s}");
    assert_eq!(s["calls_refused_undecoded"], 5, "{s}");
    assert_eq!(s["calls_abandoned"], 3, "{s}");
    let logs = service.stderr();
    assert!(
        logs.contains("call refused before its message was decoded"),
        "{logs}"
    );
    assert!(
        logs.contains("a call ended before its message arrived"),
        "{logs}"
    );
}

/// A caller whose connection closes while its message is on its way
/// (headers only, or part of the message) abandoned the call: counted in
/// `calls_abandoned`, not as a call the service refused (tonic answers
/// such a call `Unknown`, to no one).
#[tokio::test]
async fn a_call_whose_connection_closes_mid_message_is_abandoned() {
    const PATH: &str = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";
    let service = Service::start_healthy(&strs(&appguard_args()));
    for (n, body) in [(1, vec![]), (2, vec![0, 0, 0, 0, 10, 0x0a, 0x08])] {
        let tcp = tokio::net::TcpStream::connect(service.grpc).await.unwrap();
        let (mut client, conn) = h2::client::handshake(tcp).await.unwrap();
        let conn = tokio::spawn(conn);
        let (response, stream) = open_call(&mut client, &[], PATH, &body, false).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        // The connection goes away: its task and every handle dropped.
        conn.abort();
        drop((response, stream, client));
        wait_stat(&service, "calls_abandoned", n).await;
    }
    let s = stats(&service);
    assert_eq!(s["calls_refused_undecoded"], 0, "{s}");
    assert_eq!(s["requests"], 0, "{s}");
}

/// The standard gRPC health service answers on the gRPC port as
/// `/healthcheck` does on the HTTP port (a Kubernetes `grpc:` probe): for
/// the server and the rate-limit service, `NOT_FOUND` for other services,
/// `UNIMPLEMENTED` for `Watch`; and it is no rate-limit call in `/stats`.
#[tokio::test]
async fn the_grpc_health_service_answers_as_healthcheck_does() {
    let service = Service::start_healthy(&strs(&appguard_args()));
    assert_eq!(service.health("", false).await.ok(), Some(SERVING));
    assert_eq!(
        service
            .health("envoy.service.ratelimit.v3.RateLimitService", false)
            .await
            .ok(),
        Some(SERVING)
    );
    let e = service.health("other.Service", false).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    let e = service.health("", true).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unimplemented, "{e:?}");
    let (code, stats) = service.http_get("/stats");
    assert_eq!(code, 200);
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    for counter in ["requests", "invalid_requests", "calls_refused_undecoded"] {
        assert_eq!(stats[counter], 0, "{counter}: {stats}");
    }
}

/// envoyproxy/ratelimit registers its health status under
/// the service name `ratelimit` (`NewHealthChecker(health.NewServer(),
/// "ratelimit", ...)`, src/server/server_impl.go), and that is the name whose
/// status follows Redis and SIGTERM there (`""` stays SERVING until the
/// server stops). A Kubernetes `grpc: {service: ratelimit}` probe, or an
/// Envoy `grpc_health_check: {service_name: ratelimit}`, moved over from
/// envoyproxy/ratelimit must see SERVING here too, as the README promises
/// ("as envoyproxy/ratelimit answers both"), not NOT_FOUND.
#[tokio::test]
async fn the_grpc_health_service_answers_envoyproxy_ratelimits_service_name() {
    let service = Service::start_healthy(&strs(&appguard_args()));
    assert_eq!(
        service
            .health("ratelimit", false)
            .await
            .map_err(|e| e.code()),
        Ok(SERVING),
        "envoyproxy/ratelimit's health service name is refused"
    );
}
