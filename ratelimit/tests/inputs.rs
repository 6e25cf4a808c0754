//! Inputs at the edges, against the real binary and a real redis-server:
//! Redis URLs, descriptor values that look like Redis protocol, values in
//! the log, command-line bounds.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[tokio::test]
async fn a_resp3_url_counts_in_both_modes() {
    let redis = Redis::start();
    for extra in [&[][..], &["--stop-increment-when-over-limit"][..]] {
        let mut args = vec![
            "--config".to_owned(),
            fixture("rolling.yaml").display().to_string(),
            "--redis".to_owned(),
            format!("{}/?protocol=resp3", redis.url()),
        ];
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let service = Service::start(&strs(&args));
        let mut client = service.client().await;
        let jti = format!("abc{}", extra.len());
        let req = request("appguard", vec![descriptor(&[("jti", &jti)])]);
        let r = client.should_rate_limit(req.clone()).await;
        let r = r
            .unwrap_or_else(|e| panic!("{extra:?}: {e:?}\n{}", service.stderr()))
            .into_inner();
        assert_eq!(r.overall_code, Code::Ok as i32);
    }
}

/// At `debug` (and `trace`) no descriptor value reaches the log, in
/// either store (README: "no value is ever logged").
#[tokio::test]
async fn trace_logs_no_descriptor_value() {
    let redis = Redis::start();
    for level in ["debug", "trace"] {
        for store in [vec![], vec!["--redis".to_owned(), redis.url()]] {
            let mut args = vec![
                "--config".to_owned(),
                fixture("appguard.yaml").display().to_string(),
                "--log-level".to_owned(),
                level.to_owned(),
            ];
            args.extend(store.clone());
            let service = Service::start_healthy(&strs(&args));
            let mut client = service.client().await;
            let secret = format!("SECRETVALUE{}{}", level, store.len());
            let req = request(
                "appguard",
                vec![
                    descriptor(&[("api_key", &secret)]),
                    descriptor(&[("client_ip", &secret)]),
                ],
            );
            for _ in 0..5 {
                let _ = client.should_rate_limit(req.clone()).await;
            }
            std::thread::sleep(std::time::Duration::from_millis(300));
            let log = service.stderr();
            assert!(
                !log.contains(&secret),
                "{level} {store:?}: {}",
                log.lines()
                    .filter(|l| l.contains(&secret))
                    .take(3)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
}

/// `--max-grpc-connections` above tokio's semaphore bound (2^61 - 1) once
/// made the service panic at start (exit 101); it is refused as a bad
/// command line (exit 2, as `0` is), as is anything above 2^20.
#[test]
fn a_huge_max_grpc_connections_is_refused_not_a_panic() {
    let config = fixture("appguard.yaml").display().to_string();
    let grpc = format!("127.0.0.1:{}", free_port());
    let http = format!("127.0.0.1:{}", free_port());
    let huge = (usize::MAX >> 3).saturating_add(1).to_string();
    let (code, stderr) = run_to_exit(&[
        "--config",
        &config,
        "--grpc-addr",
        &grpc,
        "--http-addr",
        &http,
        "--max-grpc-connections",
        &huge,
    ]);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(code, Some(2), "{stderr}");
    let (code, stderr) = run_to_exit(&[
        "--config",
        &config,
        "--max-grpc-connections",
        "1048577",
        "--validate",
    ]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("must be at most 1048576"), "{stderr}");
}

/// Descriptor values holding RESP framing, newlines and
/// the key delimiters reach Redis as one argument each: every value has a
/// counter of its own and nothing else appears in the keyspace.
#[tokio::test]
async fn values_with_resp_framing_stay_one_key_each() {
    let redis = Redis::start();
    let args = vec![
        "--config".to_owned(),
        fixture("appguard.yaml").display().to_string(),
        "--redis".to_owned(),
        redis.url(),
    ];
    let service = Service::start_healthy(&strs(&args));
    let mut client = service.client().await;
    let values = [
        "1.2.3.4\r\n*1\r\n$8\r\nFLUSHALL\r\n",
        "1.2.3.4",
        "1.2.3.4_hour_0",
        "",
        "=_:#",
    ];
    for v in values {
        let r = ask(
            &mut client,
            &request("appguard", vec![descriptor(&[("client_ip", v)])]),
        )
        .await;
        assert_eq!(r.statuses[0].limit_remaining, 2, "{v:?}");
    }
    let mut conn = redis.conn();
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut conn).unwrap();
    assert_eq!(keys.len(), values.len(), "{keys:?}");
}
