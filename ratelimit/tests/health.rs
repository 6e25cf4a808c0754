//! What `/healthcheck` and the per-call log lines say while Redis refuses
//! some calls and answers others: a Redis full under `noeviction` (reads
//! answered, writes refused), a Redis before 7 (rolling counters refused),
//! and calls their callers give up on. A real Redis on a free 127.0.0.1
//! port for each test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::google::protobuf::UInt64Value;

const HOUR: i64 = 3600;

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Room again, and nothing stored.
fn continue_after_reset(admin: &mut redis::Connection) {
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("0")
        .query(admin)
        .unwrap();
    let _: () = redis::cmd("FLUSHALL").query(admin).unwrap();
}

/// A Redis full under `noeviction` refuses every call that would count,
/// but still answers a call that only reads: with
/// `--stop-increment-when-over-limit`, a call refused for being over its
/// limit (the script reads and writes nothing), and in either mode a call
/// of checks only (`hits_addend` 0). Such an answer clears the "counting
/// calls fail" state, so `/healthcheck` answers 200 while every call that
/// should be let through is UNAVAILABLE: the README's promise
/// ("500 ... when the counting calls failed in the last 10 s with none
/// succeeding since ... a Redis full under `noeviction` ... refuses every
/// call") fails exactly under an over-limit flood, when it matters.
#[tokio::test]
async fn a_full_redis_stays_unhealthy_while_only_refusals_or_checks_are_answered() {
    avoid_window_edge(HOUR, 20);
    let redis = Redis::start();
    let mut admin = redis.conn();
    let blocked = request(
        "appguard",
        vec![descriptor(&[("client_ip", "198.51.100.66")])],
    );
    let mut check = descriptor(&[("client_ip", "192.0.2.77")]);
    check.hits_addend = Some(UInt64Value { value: 0 });
    let check_only = request("appguard", vec![check]);
    let mut failures = Vec::new();
    for (extra, read_only) in [
        (&["--stop-increment-when-over-limit"][..], &blocked),
        (&[][..], &check_only),
        (&["--stop-increment-when-over-limit"][..], &check_only),
    ] {
        let mut args = vec![
            "--config".to_owned(),
            fixture("appguard.yaml").display().to_string(),
            "--redis".to_owned(),
            redis.url(),
            "--redis-timeout-ms".to_owned(),
            "500".to_owned(),
        ];
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let service = Service::start_healthy(&strs(&args));
        let mut client = service.client().await;
        let normal = request("appguard", vec![descriptor(&[("client_ip", "192.0.2.91")])]);

        fill_past_maxmemory(&mut admin);
        let err = client.should_rate_limit(normal.clone()).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable, "{extra:?}");
        assert_eq!(service.http_get("/healthcheck").0, 500, "{extra:?}");

        // A call that only reads is answered...
        let Ok(answer) = client.should_rate_limit(read_only.clone()).await else {
            // Not answered either (Redis refused it too): nothing to show.
            continue_after_reset(&mut admin);
            continue;
        };
        let answer = answer.into_inner();
        assert!(
            answer.overall_code == Code::OverLimit as i32 || answer.overall_code == Code::Ok as i32
        );
        // ...while a call to be let through still fails...
        let err = client.should_rate_limit(normal.clone()).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable, "{extra:?}");
        // ...and a read-only answer after it must not make the store look
        // healthy.
        let _ = ask(&mut client, read_only).await;
        let (status, body) = service.http_get("/healthcheck");
        if status != 500 {
            failures.push(format!(
                "{extra:?} read-only call {:?}: /healthcheck {status} {body:?} while every \
                 counting call fails with OOM",
                read_only.descriptors[0].entries[0].value
            ));
        }

        continue_after_reset(&mut admin);
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Calls their caller gives up on while Redis is asked (a
/// `grpc-timeout` shorter than Redis's answer; here 1 ns) each write
/// `a call ended before it was answered` on the **warn** budget, the one
/// the README keeps apart for store failures ("so a flood of over-limit
/// calls cannot hide store failures"). Anyone reaching the port can spend
/// it, and the summary then names the lines it left out as store
/// failures (`suppressed N per-request log lines (warn: counter store
/// failed)`) although no store call failed: an operator is told Redis
/// failed when it did not, and real store failures in the same seconds
/// are left out.
#[tokio::test]
async fn abandoned_calls_do_not_pass_for_store_failures_in_the_log() {
    let redis = Redis::start();
    let args = vec![
        "--config".to_owned(),
        fixture("appguard.yaml").display().to_string(),
        "--redis".to_owned(),
        redis.url(),
        "--redis-timeout-ms".to_owned(),
        "5000".to_owned(),
        "--log-format".to_owned(),
        "json".to_owned(),
    ];
    let service = Service::start_healthy(&strs(&args));
    let client = service.client().await;
    // Redis holds write commands for 2 s (slow, not failing: every call
    // is answered well within --redis-timeout-ms); callers give up after
    // 200 ms, their messages long decoded.
    let mut admin = redis.conn();
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(2000)
        .arg("WRITE")
        .query(&mut admin)
        .unwrap();
    let calls: Vec<_> = (0..100)
        .map(|i| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let mut req = tonic::Request::new(request(
                    "appguard",
                    vec![descriptor(&[("client_ip", &format!("192.0.2.{i}"))])],
                ));
                req.set_timeout(std::time::Duration::from_millis(200));
                client.should_rate_limit(req).await.is_err()
            })
        })
        .collect();
    let mut abandoned = 0;
    for call in calls {
        if call.await.unwrap() {
            abandoned += 1;
        }
    }
    assert_eq!(abandoned, 100);
    // Redis answers again; one more line on the warn budget, a second
    // later, carries the summary of what was left out.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(1500)
        .arg("WRITE")
        .query(&mut admin)
        .unwrap();
    let mut req = tonic::Request::new(request(
        "appguard",
        vec![descriptor(&[("client_ip", "192.0.2.251")])],
    ));
    req.set_timeout(std::time::Duration::from_millis(200));
    let _ = client.clone().should_rate_limit(req).await;
    tokio::time::sleep(std::time::Duration::from_millis(1800)).await;
    // Not one store call failed.
    let (_, stats) = service.http_get("/stats");
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(stats["backend_errors"], 0, "{stats}");
    assert!(stats["calls_abandoned"].as_u64().unwrap() >= 100, "{stats}");
    let log = service.stderr();
    let misnamed: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("suppressed") && l.contains("counter store failed"))
        .collect();
    assert!(
        misnamed.is_empty(),
        "no counter store call failed (backend_errors 0, {abandoned} calls abandoned), yet: {misnamed:#?}"
    );
}

/// Stands in for a Redis older than 7 between the service and a Redis 7:
/// every `EXPIRE key seconds NX` is sent as an unknown command, refused
/// as it is queued, as Redis 6 refuses `EXPIRE` with a third argument
/// (`wrong number of arguments`): a transaction holding one is aborted
/// (`EXECABORT`), the others run as sent. Returns the port to give the
/// service.
fn redis6_expire_nx_proxy(redis_port: u16) -> u16 {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else { return };
            let Ok(mut server) = TcpStream::connect(("127.0.0.1", redis_port)) else {
                return;
            };
            let (mut client_r, mut server_r) =
                (client.try_clone().unwrap(), server.try_clone().unwrap());
            // Server to client, as is.
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut server_r, &mut client);
            });
            // Client to server, one RESP array of bulk strings at a time.
            std::thread::spawn(move || {
                let mut buf: Vec<u8> = Vec::new();
                let mut chunk = [0u8; 65536];
                loop {
                    while let Some((args, used)) = parse_resp_array(&buf) {
                        buf.drain(..used);
                        let mut args = args;
                        if args.len() == 4
                            && args[0].eq_ignore_ascii_case(b"EXPIRE")
                            && args[3].eq_ignore_ascii_case(b"NX")
                        {
                            args = vec![b"EXPIRE_NX_IS_REDIS_7".to_vec()];
                        }
                        let mut out = format!("*{}\r\n", args.len()).into_bytes();
                        for a in &args {
                            out.extend(format!("${}\r\n", a.len()).bytes());
                            out.extend(a);
                            out.extend(b"\r\n");
                        }
                        if server.write_all(&out).is_err() {
                            return;
                        }
                    }
                    match client_r.read(&mut chunk) {
                        Ok(0) | Err(_) => {
                            let _ = server.shutdown(std::net::Shutdown::Both);
                            return;
                        }
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    port
}

/// One RESP array of bulk strings at the start of `buf`, and its length;
/// `None` until it is complete.
fn parse_resp_array(buf: &[u8]) -> Option<(Vec<Vec<u8>>, usize)> {
    fn line(buf: &[u8], at: usize) -> Option<(&[u8], usize)> {
        let end = buf.get(at..)?.windows(2).position(|w| w == b"\r\n")? + at;
        Some((&buf[at..end], end + 2))
    }
    let (head, mut at) = line(buf, 0)?;
    assert_eq!(head.first(), Some(&b'*'), "only arrays are expected");
    let n: usize = std::str::from_utf8(&head[1..]).ok()?.parse().ok()?;
    let mut args = Vec::with_capacity(n);
    for _ in 0..n {
        let (len_line, next) = line(buf, at)?;
        let len: usize = std::str::from_utf8(&len_line[1..]).ok()?.parse().ok()?;
        let data = buf.get(next..next + len)?.to_vec();
        if buf.get(next + len..next + len + 2)? != b"\r\n" {
            return None;
        }
        at = next + len + 2;
        args.push(data);
    }
    Some((args, at))
}

/// With a Redis older than 7, every call that counts a `rolling`
/// limit fails (README: `EXPIRE … NX` is Redis 7's), which for the
/// shipped `envoy/ratelimit.yaml` is every request carrying a token (`jti`)
/// and every SMS (`phone`). `/healthcheck` should say so (README: 500 when
/// "the counting calls failed in the last 10 s with none succeeding since
/// and a probe of the same kind ... fails too"); its probe counts a key
/// of a fixed window, which such a Redis takes, so it answers 200.
#[tokio::test]
async fn a_redis_that_cannot_count_rolling_limits_is_not_healthy() {
    let redis = Redis::start();
    let proxy = redis6_expire_nx_proxy(redis.port);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("limits.yaml");
    std::fs::write(
        &config,
        "domain: appguard\ndescriptors:\n  - key: jti\n    rate_limit:\n      unit: hour\n      \
         requests_per_unit: 1\n      rolling: true\n",
    )
    .unwrap();
    let args = vec![
        "--config".to_owned(),
        config.display().to_string(),
        "--redis".to_owned(),
        format!("redis://127.0.0.1:{proxy}"),
    ];
    let service = Service::start_healthy(&strs(&args));
    let mut client = service.client().await;
    for i in 0..3 {
        let req = request("appguard", vec![descriptor(&[("jti", &format!("t{i}"))])]);
        let err = client.should_rate_limit(req).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    }
    let (status, body) = service.http_get("/healthcheck");
    assert_eq!(
        status, 500,
        "every call counting the rolling `jti` limit fails, yet /healthcheck answers {status} {body:?}"
    );
}
