//! End-to-end tests with a real `redis-server`: shared counts across
//! instances, the counter key format, and behaviour while Redis is down.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::google::protobuf::UInt64Value;
use redis::Commands;

const HOUR: i64 = 3600;

fn redis_args(redis: &Redis) -> Vec<String> {
    args_for(redis.url(), 500)
}

/// The service with the appguard fixture, counting in the Redis at `url`
/// with `--redis-timeout-ms timeout_ms`.
fn args_for(url: String, timeout_ms: u64) -> Vec<String> {
    vec![
        "--config".to_owned(),
        fixture("appguard.yaml").display().to_string(),
        "--redis".to_owned(),
        url,
        "--redis-timeout-ms".to_owned(),
        timeout_ms.to_string(),
    ]
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[tokio::test]
async fn two_instances_share_counts_through_redis() {
    let redis = Redis::start();
    let args = redis_args(&redis);
    let a = Service::start_healthy(&strs(&args));
    let b = Service::start_healthy(&strs(&args));
    let mut ca = a.client().await;
    let mut cb = b.client().await;
    let req = request("appguard", vec![descriptor(&[("client_ip", "192.0.2.10")])]);
    // Right before the first call: the five calls and the key read below
    // must fall in one hour (starting Redis and two services may take a
    // while on a busy machine).
    avoid_window_edge(HOUR, 30);

    // Limit 3 per hour, calls alternating between the two instances.
    let r = ask(&mut ca, &req).await;
    assert_eq!(r.statuses[0].limit_remaining, 2);
    let r = ask(&mut cb, &req).await;
    assert_eq!(r.statuses[0].limit_remaining, 1);
    let r = ask(&mut ca, &req).await;
    assert_eq!(r.overall_code, Code::Ok as i32);
    assert_eq!(r.statuses[0].limit_remaining, 0);
    let r = ask(&mut cb, &req).await;
    assert_eq!(r.overall_code, Code::OverLimit as i32);
    assert_eq!(r.statuses[0].code, Code::OverLimit as i32);
    let r = ask(&mut ca, &req).await;
    assert_eq!(r.overall_code, Code::OverLimit as i32);

    // The counter key: length-prefixed domain, key and value, then the
    // unit and the window start; the window length is its time to live.
    let now = unix_now();
    let key = format!(
        "8:appguard_9:client_ip=10:192.0.2.10_hour_{}",
        now - now % HOUR
    );
    let mut conn = redis.conn();
    let count: i64 = conn.get(&key).unwrap();
    assert_eq!(count, 5);
    let ttl: i64 = conn.ttl(&key).unwrap();
    assert!(ttl > 0 && ttl <= HOUR, "ttl {ttl}");
    let keys: Vec<String> = conn.keys("*").unwrap();
    assert_eq!(keys, vec![key]);
}

/// A Redis that answers PING but refuses every write (full under
/// `noeviction`; an ACL without `EVALSHA` the same way) fails every call:
/// `/healthcheck` says so, naming the refusal, for either kind of call,
/// with the probe under the key prefix; once Redis takes writes again it
/// is 200 at once, without waiting for a client's call.
#[tokio::test]
async fn a_redis_that_refuses_writes_is_unhealthy_until_it_takes_them() {
    avoid_window_edge(HOUR, 15);
    let redis = Redis::start();
    let mut admin = redis.conn();
    for extra in [&[][..], &["--stop-increment-when-over-limit"][..]] {
        let mut args = redis_args(&redis);
        args.extend(["--cache-key-prefix".to_owned(), "p:".to_owned()]);
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let service = Service::start_healthy(&strs(&args));
        let mut client = service.client().await;
        let req = request("appguard", vec![descriptor(&[("client_ip", "192.0.2.90")])]);
        assert_eq!(service.http_get("/healthcheck").0, 200);

        fill_past_maxmemory(&mut admin);
        let err = client.should_rate_limit(req.clone()).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable, "{extra:?}: {err:?}");
        let (status, body) = service.http_get("/healthcheck");
        assert_eq!(status, 500, "{extra:?}: {body}");
        assert!(body.contains("counting calls fail"), "{extra:?}: {body}");
        // Both name the refusal; a transaction also says it was aborted
        // (Redis's EXECABORT after the queued commands' OOMs).
        assert!(body.contains("OOM"), "{extra:?}: {body}");
        if extra.is_empty() {
            assert!(body.contains("EXECABORT"), "{extra:?}: {body}");
        }
        // PING alone still answers: the health check's own look did it.
        let pong: String = redis::cmd("PING").query(&mut admin).unwrap();
        assert_eq!(pong, "PONG");

        // Room again: healthy at the next look, no client call needed.
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory")
            .arg("0")
            .query(&mut admin)
            .unwrap();
        let _: () = redis::cmd("DEL").arg("filler").query(&mut admin).unwrap();
        assert_eq!(
            service.http_get("/healthcheck"),
            (200, "OK".to_owned()),
            "{extra:?}"
        );
        // The probe counted under the prefix, with an expiry.
        let ttl: i64 = redis::cmd("TTL")
            .arg("p:appguard-ratelimit:healthcheck")
            .query(&mut admin)
            .unwrap();
        assert!((1..=60).contains(&ttl), "{extra:?}: ttl {ttl}");
        let _: () = redis::cmd("DEL")
            .arg("p:appguard-ratelimit:healthcheck")
            .query(&mut admin)
            .unwrap();
        assert_eq!(ask(&mut client, &req).await.overall_code, Code::Ok as i32);
        let _: () = redis::cmd("FLUSHALL").query(&mut admin).unwrap();
    }
}

/// A Redis over its `maxmemory` under `noeviction` refuses each command of
/// a transaction as it is queued (`OOM …`), and then aborts it: the gRPC
/// answer, the log line and `/healthcheck` name the OOM, not only the
/// bare `EXECABORT` the `redis` crate reports, so an operator sees the
/// cause in transaction mode as in script mode. A check (0 hits, a `GET`
/// queued in the transaction) is refused the same way.
#[tokio::test]
async fn a_transaction_refused_for_oom_names_the_oom() {
    let redis = Redis::start_with(free_port(), &["--maxmemory-policy", "noeviction"]);
    let mut admin = redis.conn();
    let service = Service::start_healthy(&strs(&redis_args(&redis)));
    let mut client = service.client().await;

    fill_past_maxmemory(&mut admin);

    let counting = request("appguard", vec![descriptor(&[("client_ip", "192.0.2.91")])]);
    let mut check = counting.clone();
    check.hits_addend = 0;
    check.descriptors[0].hits_addend = Some(UInt64Value { value: 0 });
    for req in [&counting, &check] {
        let err = client.should_rate_limit(req.clone()).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
        let message = err.message();
        assert!(message.contains("EXECABORT"), "{message}");
        assert!(message.contains("OOM"), "{message}");
        assert!(message.contains("maxmemory"), "{message}");
        assert!(!message.contains("192.0.2.91"), "{message}");
        assert!(message.len() < 300, "{message}");
    }
    let (status, body) = service.http_get("/healthcheck");
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("counting calls fail"), "{body}");
    assert!(body.contains("OOM"), "{body}");
    let logs = service.stderr();
    let line = logs
        .lines()
        .find(|l| l.contains("counter store failed"))
        .unwrap_or_else(|| panic!("no counter store line: {logs}"));
    assert!(line.contains("OOM"), "{line}");
    assert!(!logs.contains("192.0.2.91"), "{logs}");
}

#[tokio::test]
async fn redis_down_is_unavailable_and_unhealthy_then_recovers() {
    avoid_window_edge(HOUR, 15);
    let mut redis = Redis::start();
    let port = redis.port;
    let service = Service::start_healthy(&strs(&redis_args(&redis)));
    let mut client = service.client().await;
    let req = request("appguard", vec![descriptor(&[("jti", "token-1")])]);
    assert_eq!(ask(&mut client, &req).await.overall_code, Code::Ok as i32);
    assert_eq!(service.http_get("/healthcheck"), (200, "OK".to_owned()));

    redis.stop();
    let mut took = Vec::new();
    for call in 0..5 {
        let started = Instant::now();
        let err = client.should_rate_limit(req.clone()).await.unwrap_err();
        took.push(started.elapsed());
        assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
        // The first finds the connection closed under it, and a counting
        // call is not sent again (Redis may have run it); then connecting
        // is refused.
        let closed = call == 0 && err.message().contains("broken pipe");
        assert!(closed || err.message().contains("refused"), "{err:?}");
    }
    // Nothing listens: the connect is refused at once, and so is the call,
    // with no retry and backoff inside it (each took ~150 ms then: under
    // `failure_mode: allow` every request would wait for them). The
    // median, so that one slow moment of a busy machine does not decide.
    took.sort();
    assert!(
        took[2] < Duration::from_millis(100),
        "too slow to fail: {took:?}"
    );
    // Unmatched descriptors need no counter: still answered.
    let unmatched = request("appguard", vec![descriptor(&[("nothing", "x")])]);
    assert_eq!(
        ask(&mut client, &unmatched).await.overall_code,
        Code::Ok as i32
    );
    let (status, body) = service.http_get("/healthcheck");
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("redis"), "{body}");
    // The gRPC health check says the same (a Kubernetes `grpc:` probe).
    assert_eq!(
        service.health("", false).await.ok(),
        Some(appguard_ratelimit::health::NOT_SERVING)
    );
    let stats: serde_json::Value = serde_json::from_str(&service.http_get("/stats").1).unwrap();
    assert_eq!(stats["backend_errors"], 5);

    // Redis back on the same port (empty: no persistence): the service
    // reconnects by itself.
    let _redis = Redis::start_on(port);
    let deadline = Instant::now() + Duration::from_secs(15);
    while service.http_get("/healthcheck").0 != 200 {
        assert!(
            Instant::now() < deadline,
            "service did not reconnect to redis"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let fresh = request("appguard", vec![descriptor(&[("jti", "token-2")])]);
    let r = ask(&mut client, &fresh).await;
    assert_eq!(r.overall_code, Code::Ok as i32);
    assert_eq!(
        ask(&mut client, &fresh).await.overall_code,
        Code::OverLimit as i32
    );
}

/// Redis restarting while the service's connection is idle (a deploy, a
/// crash and restart, Redis's own `timeout` closing idle clients) closes
/// that connection. A counting call is never sent twice (see the next
/// tests), so the first call after the restart would fail on it: on a
/// connection quiet for 100 ms it is preceded by a PING, which finds the
/// connection closed and is answered on a new one. The first caller after
/// the restart is answered, not refused with UNAVAILABLE.
#[tokio::test]
async fn the_first_call_after_redis_restarts_is_answered() {
    avoid_window_edge(HOUR, 15);
    // From the last answer before the restart: at least the 100 ms, then
    // longer.
    for pause_ms in [150, 300] {
        let mut redis = Redis::start();
        let port = redis.port;
        let service = Service::start_healthy(&strs(&redis_args(&redis)));
        let mut client = service.client().await;
        let req = request("appguard", vec![descriptor(&[("jti", "token-1")])]);
        assert_eq!(ask(&mut client, &req).await.overall_code, Code::Ok as i32);

        let answered = Instant::now();
        redis.stop();
        let _redis = Redis::start_on(port);
        std::thread::sleep(Duration::from_millis(pause_ms).saturating_sub(answered.elapsed()));
        // The restarted Redis is empty: the same counter starts again.
        let answer = client
            .should_rate_limit(req.clone())
            .await
            .map(|r| r.into_inner().overall_code)
            .map_err(|e| format!("{e:?}"));
        assert_eq!(
            answer,
            Ok(Code::Ok as i32),
            "pause {pause_ms} ms: {}",
            service.stderr()
        );
        assert_eq!(
            ask(&mut client, &req).await.overall_code,
            Code::OverLimit as i32
        );
        let stats: serde_json::Value = serde_json::from_str(&service.http_get("/stats").1).unwrap();
        assert_eq!(stats["backend_errors"], 0, "pause {pause_ms} ms");
    }
}

/// A counting call whose connection closes after Redis ran it is not sent
/// again: Redis reads the call's `EXEC` and a `CLIENT KILL` (what Sentinel
/// sends to clients of a demoted primary) in the same turn, runs the one
/// and closes the connection before the reply is written. The `redis`
/// crate answers such a call as it answers one its closed connection never
/// wrote, and sending it again counted it twice: the first use of a
/// token was refused as a replay. It is answered UNAVAILABLE (the
/// caller's failure mode decides), counted once, and the next call sees
/// that count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_redis_ran_before_its_connection_was_killed_counts_once() {
    avoid_window_edge(HOUR, 15);
    let redis = Redis::start_with(free_port(), &["--enable-debug-command", "yes"]);
    let service = Service::start_healthy(&strs(&args_for(redis.url(), 3000)));
    let mut client = service.client().await;
    let warm = request("appguard", vec![descriptor(&[("jti", "warm")])]);
    assert_eq!(ask(&mut client, &warm).await.overall_code, Code::Ok as i32);
    // Redis busy for 500 ms, while the call's transaction and then the
    // kill wait in their sockets. The call comes right after the warm one,
    // so that no PING goes before it.
    let mut sleeper = redis.conn();
    let mut killer = redis.conn();
    let sleeping = std::thread::spawn(move || {
        let _: redis::RedisResult<String> = redis::cmd("DEBUG")
            .arg("SLEEP")
            .arg("0.5")
            .query(&mut sleeper);
    });
    std::thread::sleep(Duration::from_millis(30));
    let req = request("appguard", vec![descriptor(&[("jti", "first-use")])]);
    let mut c2 = client.clone();
    let call = tokio::spawn({
        let req = req.clone();
        async move { c2.should_rate_limit(req).await.map(|r| r.into_inner()) }
    });
    std::thread::sleep(Duration::from_millis(50));
    let _: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .arg("SKIPME")
        .arg("yes")
        .query(&mut killer)
        .unwrap();
    let answer = call.await.unwrap();
    sleeping.join().unwrap();
    let now = unix_now();
    let key = format!("8:appguard_3:jti=9:first-use_hour_{}", now - now % HOUR);
    let count: Option<i64> = redis.conn().get(&key).unwrap();
    match &answer {
        // Redis ran it, or the kill came first and it never ran.
        Err(status) => {
            assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
            assert!(
                count.is_none() || count == Some(1),
                "counted {count:?} times"
            );
        }
        Ok(r) => {
            assert_eq!(r.overall_code, Code::Ok as i32, "{r:?}");
            assert_eq!(count, Some(1), "counted {count:?} times");
        }
    }
    // The next call is answered, and counts on what the first counted.
    let expected = if count == Some(1) {
        Code::OverLimit
    } else {
        Code::Ok
    };
    assert_eq!(ask(&mut client, &req).await.overall_code, expected as i32);
}

/// A proxy in front of Redis (or a load balancer, or Redis killed at that
/// moment) that passes a call's `EXEC` or `EVAL` on and then closes the
/// connection without passing the reply back: Redis ran the call, its
/// caller is answered UNAVAILABLE, and the call counts once, with and
/// without `--stop-increment-when-over-limit`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_whose_reply_is_lost_counts_once() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    avoid_window_edge(HOUR, 15);
    for stop in [false, true] {
        let redis = Redis::start();
        let redis_port = redis.port;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy_port = listener.local_addr().unwrap().port();
        // Set once the first counting call has been passed on and cut.
        let cut_once = Arc::new(AtomicBool::new(false));
        let proxy = tokio::spawn({
            let cut_once = Arc::clone(&cut_once);
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let upstream = tokio::net::TcpStream::connect(("127.0.0.1", redis_port))
                        .await
                        .unwrap();
                    let (mut cr, mut cw) = client.into_split();
                    let (mut ur, mut uw) = upstream.into_split();
                    let cut = Arc::new(AtomicBool::new(false));
                    let down = tokio::spawn({
                        let cut = Arc::clone(&cut);
                        async move {
                            let mut buf = vec![0u8; 65536];
                            while let Ok(len) = ur.read(&mut buf).await {
                                if len == 0 || cut.load(Ordering::SeqCst) {
                                    return;
                                }
                                if cw.write_all(&buf[..len]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    });
                    let cut_once = Arc::clone(&cut_once);
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 65536];
                        while let Ok(len) = cr.read(&mut buf).await {
                            if len == 0 {
                                return;
                            }
                            let text = String::from_utf8_lossy(&buf[..len]).to_ascii_uppercase();
                            // The transaction, or the script sent with its
                            // body (the first `EVALSHA` of a fresh Redis runs
                            // nothing).
                            let counting = text.contains("EXEC") || text.contains("\r\nEVAL\r\n");
                            if counting && !cut_once.swap(true, Ordering::SeqCst) {
                                cut.store(true, Ordering::SeqCst);
                                uw.write_all(&buf[..len]).await.unwrap();
                                // Redis runs it; its reply is never passed on.
                                tokio::time::sleep(Duration::from_millis(200)).await;
                                down.abort();
                                return;
                            }
                            if uw.write_all(&buf[..len]).await.is_err() {
                                return;
                            }
                        }
                    });
                }
            }
        });
        let mut args = args_for(format!("redis://127.0.0.1:{proxy_port}"), 2000);
        if stop {
            args.push("--stop-increment-when-over-limit".to_owned());
        }
        let service = Service::start(&strs(&args));
        let mut client = service.client().await;
        let req = request("appguard", vec![descriptor(&[("jti", "first-use")])]);
        let answer = client.should_rate_limit(req.clone()).await;
        assert!(
            cut_once.load(Ordering::SeqCst),
            "stop={stop}: the proxy cut no call"
        );
        let now = unix_now();
        let key = format!("8:appguard_3:jti=9:first-use_hour_{}", now - now % HOUR);
        let count: Option<i64> = redis.conn().get(&key).unwrap();
        assert_eq!(count, Some(1), "stop={stop}: counted {count:?} times");
        let status = answer.expect_err("its reply never came");
        assert_eq!(
            status.code(),
            tonic::Code::Unavailable,
            "stop={stop}: {status:?}"
        );
        // The next call is answered, and counts on what the first counted.
        assert_eq!(
            ask(&mut client, &req).await.overall_code,
            Code::OverLimit as i32,
            "stop={stop}"
        );
        proxy.abort();
    }
}

/// After an outage, the first call once Redis is back is answered: the
/// connection attempt that Redis refused last (during the outage) is not
/// the answer to a call made after it came back. It was, and with it the
/// next 100 ms of calls failed at once (`CONNECT_REFUSED_WAIT`), however
/// long Redis had been back.
#[tokio::test]
async fn the_first_call_after_an_outage_ends_is_answered() {
    avoid_window_edge(HOUR, 15);
    let mut redis = Redis::start();
    let port = redis.port;
    let service = Service::start_healthy(&strs(&redis_args(&redis)));
    let mut client = service.client().await;
    let req = request("appguard", vec![descriptor(&[("jti", "token-1")])]);
    assert_eq!(ask(&mut client, &req).await.overall_code, Code::Ok as i32);
    redis.stop();
    for _ in 0..3 {
        let err = client.should_rate_limit(req.clone()).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
        std::thread::sleep(Duration::from_millis(150));
    }
    let _redis = Redis::start_on(port);
    std::thread::sleep(Duration::from_millis(500));
    let answer = client
        .should_rate_limit(req.clone())
        .await
        .map(|r| r.into_inner().overall_code)
        .map_err(|e| format!("{e:?}"));
    assert_eq!(answer, Ok(Code::Ok as i32), "{}", service.stderr());
}

#[tokio::test]
async fn starts_while_redis_is_down_and_reports_unhealthy() {
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let config = fixture("appguard.yaml").display().to_string();
    let service = Service::start(&[
        "--config",
        &config,
        "--redis",
        &url,
        "--redis-timeout-ms",
        "300",
    ]);
    assert_eq!(service.http_get("/healthcheck").0, 500);
    let mut client = service.client().await;
    let err = client
        .should_rate_limit(request("appguard", vec![descriptor(&[("jti", "t")])]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);

    let _redis = Redis::start_on(port);
    let deadline = Instant::now() + Duration::from_secs(15);
    while service.http_get("/healthcheck").0 != 200 {
        assert!(
            Instant::now() < deadline,
            "service did not connect to redis"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_malformed_redis_url_exits_2() {
    let config = fixture("appguard.yaml").display().to_string();
    let (code, stderr) = run_to_exit(&[
        "--config",
        &config,
        "--redis",
        "http://127.0.0.1:1",
        "--grpc-addr",
        &format!("127.0.0.1:{}", free_port()),
        "--http-addr",
        &format!("127.0.0.1:{}", free_port()),
    ]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--redis"), "{stderr}");
}

#[tokio::test]
async fn a_rolling_counter_expires_an_hour_after_its_first_hit_only() {
    let redis = Redis::start();
    let args = vec![
        "--config".to_owned(),
        fixture("rolling.yaml").display().to_string(),
        "--redis".to_owned(),
        redis.url(),
        "--redis-timeout-ms".to_owned(),
        "500".to_owned(),
    ];
    let service = Service::start_healthy(&strs(&args));
    let mut client = service.client().await;
    let req = request("appguard", vec![descriptor(&[("jti", "token-id-hash")])]);
    assert_eq!(ask(&mut client, &req).await.overall_code, Code::Ok as i32);

    // One key for every window: no window start in it.
    let key = "8:appguard_3:jti=13:token-id-hash_hour_rolling";
    let mut conn = redis.conn();
    let keys: Vec<String> = conn.keys("*").unwrap();
    assert_eq!(keys, vec![key.to_owned()]);
    let ttl: i64 = conn.ttl(key).unwrap();
    assert!(ttl > HOUR - 10 && ttl <= HOUR, "ttl {ttl}");

    // As if the first use was 59 minutes ago: a replay now is over the
    // limit, and does not push the end of the window back out.
    let _: () = conn.expire(key, 60).unwrap();
    let r = ask(&mut client, &req).await;
    assert_eq!(r.overall_code, Code::OverLimit as i32);
    // The answer says when the window really ends (appguard keeps leased
    // hits until then), not a whole hour.
    let reset = r.statuses[0].duration_until_reset.unwrap().seconds;
    assert!(reset > 0 && reset <= 60, "duration_until_reset {reset}");
    let count: i64 = conn.get(key).unwrap();
    assert_eq!(count, 2);
    let ttl: i64 = conn.ttl(key).unwrap();
    assert!(
        ttl > 0 && ttl <= 60,
        "a hit after the first moved the end: ttl {ttl}"
    );
}

/// A TCP proxy to Redis whose `silence()` makes every connection open at
/// that moment go quiet (bytes are swallowed, nothing is closed: a
/// half-open flow after a failover or a NAT timeout), while connections
/// opened after it work; `retarget()` sends connections opened after it to
/// another Redis (a stable endpoint after a failover), leaving open ones
/// where they are.
struct SilencingProxy {
    port: u16,
    epoch: std::sync::Arc<std::sync::atomic::AtomicU64>,
    accepted: std::sync::Arc<std::sync::atomic::AtomicU64>,
    target: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl SilencingProxy {
    fn start(target: u16) -> SilencingProxy {
        use std::io::{Read, Write};
        use std::net::{TcpListener, TcpStream};
        use std::sync::atomic::{AtomicU64, Ordering};
        use std::sync::Arc;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let epoch = Arc::new(AtomicU64::new(0));
        let accepted = Arc::new(AtomicU64::new(0));
        let to_port = Arc::new(AtomicU64::new(u64::from(target)));
        let (e, a, t) = (epoch.clone(), accepted.clone(), to_port.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                a.fetch_add(1, Ordering::SeqCst);
                let port = u16::try_from(t.load(Ordering::SeqCst)).unwrap();
                let Ok(server) = TcpStream::connect(("127.0.0.1", port)) else {
                    continue;
                };
                let born = e.load(Ordering::SeqCst);
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let e = e.clone();
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16 * 1024];
                        loop {
                            let n = match from.read(&mut buf) {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            if e.load(Ordering::SeqCst) != born {
                                continue; // silenced: swallowed
                            }
                            if to.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    });
                }
            }
        });
        SilencingProxy {
            port,
            epoch,
            accepted,
            target: to_port,
        }
    }

    fn accepted(&self) -> u64 {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn silence(&self) {
        self.epoch.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    fn retarget(&self, port: u16) {
        self.target
            .store(u64::from(port), std::sync::atomic::Ordering::SeqCst);
    }
}

#[tokio::test]
async fn a_connection_that_goes_silent_is_replaced_after_a_few_timeouts() {
    avoid_window_edge(HOUR, 30);
    let redis = Redis::start();
    let proxy = SilencingProxy::start(redis.port);
    let args = args_for(format!("redis://127.0.0.1:{}", proxy.port), 300);
    let service = Service::start_healthy(&strs(&args));
    let mut client = service.client().await;
    let req = request("appguard", vec![descriptor(&[("client_ip", "192.0.2.77")])]);
    assert_eq!(ask(&mut client, &req).await.overall_code, Code::Ok as i32);

    proxy.silence();
    let connections = proxy.accepted();
    // Many calls in flight on the silent connection: they all time out
    // (UNAVAILABLE, never a guessed OK), and replace it once, not once per
    // three of them.
    let mut burst = Vec::new();
    for _ in 0..30 {
        let mut c = client.clone();
        let r = req.clone();
        burst.push(tokio::spawn(async move {
            c.should_rate_limit(r).await.map(|_| ())
        }));
    }
    for call in burst {
        let answer = call.await.unwrap();
        assert_eq!(answer.map_err(|s| s.code()), Err(tonic::Code::Unavailable));
    }
    assert!(
        proxy.accepted() - connections <= 2,
        "{} new connections for one silent one",
        proxy.accepted() - connections
    );
    let replaced = service.stderr().matches("opening a new connection").count();
    assert_eq!(replaced, 1, "{}", service.stderr());
    // Until a new one is opened; then the count goes on where it was.
    let started = Instant::now();
    let mut unavailable = 0;
    let answer = loop {
        match client.should_rate_limit(req.clone()).await {
            Ok(r) => break r.into_inner(),
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                unavailable += 1;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "still unavailable after {unavailable} calls: the silent connection was kept"
        );
    };
    assert_eq!(answer.overall_code, Code::Ok as i32);
    assert_eq!(
        answer.statuses[0].limit_remaining, 1,
        "3 per hour, the 2nd hit"
    );
}

#[tokio::test]
async fn one_stalled_call_on_an_idle_connection_does_not_replace_it() {
    // A low-traffic service: the connection idles for longer than the Redis
    // timeout, then one call hits a stall (here: the connection goes
    // silent) and times out. The idle time is no sign of a dead
    // connection: one timeout alone keeps it; a second one, with nothing
    // answered in between, replaces it.
    avoid_window_edge(HOUR, 30);
    let redis = Redis::start();
    let proxy = SilencingProxy::start(redis.port);
    let args = args_for(format!("redis://127.0.0.1:{}", proxy.port), 300);
    let service = Service::start_healthy(&strs(&args));
    let mut client = service.client().await;
    let req = request("appguard", vec![descriptor(&[("client_ip", "192.0.2.79")])]);
    assert_eq!(ask(&mut client, &req).await.overall_code, Code::Ok as i32);

    tokio::time::sleep(Duration::from_millis(800)).await;
    proxy.silence();
    let status = client.should_rate_limit(req.clone()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let replaced = || service.stderr().matches("opening a new connection").count();
    assert_eq!(replaced(), 0, "{}", service.stderr());

    let status = client.should_rate_limit(req.clone()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(replaced(), 1, "{}", service.stderr());
    assert!(
        service
            .stderr()
            .contains("no call on it completed within the timeout"),
        "{}",
        service.stderr()
    );
    let answer = ask(&mut client, &req).await;
    assert_eq!(answer.overall_code, Code::Ok as i32);
    assert_eq!(
        answer.statuses[0].limit_remaining, 1,
        "3 per hour, the 2nd hit"
    );
}

#[tokio::test]
async fn a_silent_connection_is_replaced_when_callers_give_up_before_the_redis_timeout() {
    // Callers with a deadline (grpc-timeout) of 100 ms, shorter than the
    // service's own 2 s Redis timeout: tonic drops each call at the
    // deadline, before the backend's timeout fires. Those calls must still
    // count against the silent connection, or it is never replaced (no
    // health check polls it here).
    avoid_window_edge(HOUR, 40);
    let redis = Redis::start();
    let proxy = SilencingProxy::start(redis.port);
    let args = args_for(format!("redis://127.0.0.1:{}", proxy.port), 2000);
    let service = Service::start_healthy(&strs(&args));
    let mut client = service.client().await;
    let req = request("appguard", vec![descriptor(&[("client_ip", "192.0.2.78")])]);
    let with_deadline = || {
        let mut r = tonic::Request::new(req.clone());
        r.set_timeout(Duration::from_millis(100));
        r
    };
    let first = client.should_rate_limit(with_deadline()).await.unwrap();
    assert_eq!(first.into_inner().overall_code, Code::Ok as i32);

    proxy.silence();
    let started = Instant::now();
    let mut given_up = 0;
    let answer = loop {
        let asked = Instant::now();
        match client.should_rate_limit(with_deadline()).await {
            Ok(r) => break r.into_inner(),
            Err(status) => {
                // The caller gave up at its deadline (tonic: Cancelled,
                // "Timeout expired"), long before the Redis timeout could
                // have answered: what this test is about.
                let took = asked.elapsed();
                assert!(
                    matches!(
                        status.code(),
                        tonic::Code::Cancelled | tonic::Code::DeadlineExceeded
                    ),
                    "not the caller's deadline: {status:?} after {took:?}"
                );
                assert!(
                    took < Duration::from_secs(1),
                    "a call with a 100 ms deadline took {took:?} (Redis timeout 2 s): {status:?}"
                );
                given_up += 1;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "still failing after {given_up} calls: the silent connection was kept\n{}",
            service.stderr()
        );
    };
    assert!(
        given_up >= 3,
        "only {given_up} calls failed before the new connection"
    );
    assert_eq!(answer.overall_code, Code::Ok as i32);
    assert_eq!(
        answer.statuses[0].limit_remaining, 1,
        "3 per hour, the 2nd hit"
    );
    assert_eq!(
        service.stderr().matches("opening a new connection").count(),
        1,
        "{}",
        service.stderr()
    );
    // The calls given up on are counted and said, though none ended in
    // a backend error.
    let (_, body) = service.http_get("/stats");
    let stats: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        stats["calls_abandoned"].as_u64().unwrap() >= given_up,
        "{given_up} given up: {stats}"
    );
    assert!(
        service
            .stderr()
            .contains("a call ended before it was answered (its caller gave up"),
        "{}",
        service.stderr()
    );
}

#[tokio::test]
async fn a_connection_to_a_demoted_primary_is_replaced() {
    // A failover behind a stable endpoint: the old primary becomes a
    // replica (it answers writes with READONLY, which the `redis` crate
    // does not reconnect on) and new connections reach the new primary.
    avoid_window_edge(HOUR, 30);
    let old_primary = Redis::start();
    let new_primary = Redis::start();
    let proxy = SilencingProxy::start(old_primary.port);
    let args = args_for(format!("redis://127.0.0.1:{}", proxy.port), 500);
    let service = Service::start_healthy(&strs(&args));
    let mut client = service.client().await;
    let req = request("appguard", vec![descriptor(&[("client_ip", "192.0.2.79")])]);
    assert_eq!(ask(&mut client, &req).await.overall_code, Code::Ok as i32);

    let mut old = redis::Client::open(old_primary.url()).unwrap();
    let _: () = redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(new_primary.port)
        .query(&mut old)
        .unwrap();
    proxy.retarget(new_primary.port);
    // The connection was opened more than REPLACE_NOT_PRIMARY_EVERY ago.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let started = Instant::now();
    let mut unavailable = 0;
    let answer = loop {
        match client.should_rate_limit(req.clone()).await {
            Ok(r) => break r.into_inner(),
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                unavailable += 1;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "still unavailable after {unavailable} calls: the demoted primary was kept\n{}",
            service.stderr()
        );
    };
    assert_eq!(answer.overall_code, Code::Ok as i32);
    assert!(
        unavailable >= 1,
        "the demoted primary never refused a write"
    );
    assert!(
        service
            .stderr()
            .contains("no longer the primary; opening a new connection"),
        "{}",
        service.stderr()
    );
}

#[tokio::test]
async fn the_redis_url_can_come_from_the_environment_or_a_file() {
    avoid_window_edge(HOUR, 10);
    let redis = Redis::start();
    let config = fixture("appguard.yaml").display().to_string();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("redis-url");
    std::fs::write(&file, format!("{}\n", redis.url())).unwrap();
    let file = file.display().to_string();
    let common = ["--config", config.as_str(), "--redis-timeout-ms", "500"];
    let url = redis.url();
    let from_env = Service::start_healthy_with_env(&common, &[(REDIS_URL_ENV, &url)]);
    let mut args = common.to_vec();
    args.extend(["--redis-url-file", &file]);
    let from_file = Service::start_healthy(&args);
    assert!(
        from_env.stderr().contains("counting in redis"),
        "{}",
        from_env.stderr()
    );
    assert!(
        from_file.stderr().contains("counting in redis"),
        "{}",
        from_file.stderr()
    );

    // Both count in that Redis: 1 use per token id.
    let req = request("appguard", vec![descriptor(&[("jti", "from-env-or-file")])]);
    let mut a = from_env.client().await;
    let mut b = from_file.client().await;
    assert_eq!(ask(&mut a, &req).await.overall_code, Code::Ok as i32);
    assert_eq!(ask(&mut b, &req).await.overall_code, Code::OverLimit as i32);
    let keys: Vec<String> = redis.conn().keys("*").unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
}

#[tokio::test]
async fn a_check_of_zero_hits_creates_no_key_and_sets_no_expiry() {
    avoid_window_edge(HOUR, 10);
    let redis = Redis::start();
    let rolling = fixture("rolling.yaml").display().to_string();
    let epoch = fixture("appguard.yaml").display().to_string();
    let url = redis.url();
    let service = |config: &str| {
        Service::start_healthy(&[
            "--config",
            config,
            "--redis",
            &url,
            "--redis-timeout-ms",
            "500",
        ])
    };
    let check = |entries: &[(&str, &str)]| {
        let mut d = descriptor(entries);
        d.hits_addend = Some(UInt64Value { value: 0 });
        request("appguard", vec![d])
    };
    let mut conn = redis.conn();

    // Epoch window: a check reads 0 and writes nothing.
    let epoch_service = service(&epoch);
    let mut client = epoch_service.client().await;
    let r = ask(&mut client, &check(&[("client_ip", "192.0.2.55")])).await;
    assert_eq!(r.overall_code, Code::Ok as i32);
    assert_eq!(r.statuses[0].limit_remaining, 3);
    let keys: Vec<String> = conn.keys("*").unwrap();
    assert!(keys.is_empty(), "a check created {keys:?}");

    // Rolling window: a check before the first use starts no window.
    let rolling_service = service(&rolling);
    let mut client = rolling_service.client().await;
    let r = ask(&mut client, &check(&[("jti", "checked-first")])).await;
    assert_eq!(r.overall_code, Code::Ok as i32);
    assert_eq!(r.statuses[0].limit_remaining, 1);
    assert_eq!(r.statuses[0].duration_until_reset.unwrap().seconds, HOUR);
    let keys: Vec<String> = conn.keys("*").unwrap();
    assert!(keys.is_empty(), "a check created {keys:?}");

    // The first use opens it; a check after it reads the count and leaves
    // the end of the window where it was.
    let used = request("appguard", vec![descriptor(&[("jti", "checked-first")])]);
    assert_eq!(ask(&mut client, &used).await.overall_code, Code::Ok as i32);
    let key = "8:appguard_3:jti=13:checked-first_hour_rolling";
    let _: () = conn.expire(key, 60).unwrap();
    let r = ask(&mut client, &check(&[("jti", "checked-first")])).await;
    assert_eq!(r.statuses[0].limit_remaining, 0);
    let reset = r.statuses[0].duration_until_reset.unwrap().seconds;
    assert!(reset > 0 && reset <= 60, "duration_until_reset {reset}");
    let count: i64 = conn.get(key).unwrap();
    assert_eq!(count, 1);
    let ttl: i64 = conn.ttl(key).unwrap();
    assert!(ttl > 0 && ttl <= 60, "a check moved the end: ttl {ttl}");
}

/// `--stop-increment-when-over-limit` with a real Redis: calls from a
/// blocked IP (limit 0) asking for SMS to one number are refused and count
/// nothing, neither the IP's counter nor the number's, so a caller from
/// another IP still gets its two a day. A call that is not refused counts
/// as without the option (keys, expiries, a rolling window's end).
#[tokio::test]
async fn with_stop_increment_refused_calls_leave_redis_untouched() {
    let redis = Redis::start();
    let mut args = redis_args(&redis);
    args.push("--stop-increment-when-over-limit".to_owned());
    let service = Service::start_healthy(&strs(&args));
    let mut client = service.client().await;
    let sms = |ip: &str| {
        request(
            "appguard",
            vec![
                descriptor(&[("client_ip", ip)]),
                descriptor(&[("app", "shop"), ("route", "sms_send"), ("phone_hash", "h1")]),
            ],
        )
    };
    avoid_window_edge(HOUR, 30);
    let mut conn = redis.conn();
    for _ in 0..3 {
        let r = ask(&mut client, &sms("198.51.100.66")).await;
        assert_eq!(r.overall_code, Code::OverLimit as i32);
        assert_eq!(r.statuses[0].code, Code::OverLimit as i32);
        assert_eq!(r.statuses[1].code, Code::Ok as i32);
    }
    let keys: Vec<String> = conn.keys("*").unwrap();
    assert!(keys.is_empty(), "refused calls wrote {keys:?}");

    for remaining in [1, 0] {
        let r = ask(&mut client, &sms("192.0.2.7")).await;
        assert_eq!(r.overall_code, Code::Ok as i32);
        assert_eq!(r.statuses[1].limit_remaining, remaining);
    }
    // The third SMS is over the number's limit: refused, nothing counted,
    // not even the IP's counter (2 of 3 used, so one more call fits).
    let r = ask(&mut client, &sms("192.0.2.7")).await;
    assert_eq!(r.overall_code, Code::OverLimit as i32);
    assert_eq!(r.statuses[1].code, Code::OverLimit as i32);
    let now = unix_now();
    let ip_key = format!(
        "8:appguard_9:client_ip=9:192.0.2.7_hour_{}",
        now - now % HOUR
    );
    let count: i64 = conn.get(&ip_key).unwrap();
    assert_eq!(count, 2);
    let ttl: i64 = conn.ttl(&ip_key).unwrap();
    assert!(ttl > 0 && ttl <= HOUR, "ttl {ttl}");
    let keys: Vec<String> = conn.keys("*").unwrap();
    assert_eq!(keys.len(), 2, "{keys:?}");
    let stats: serde_json::Value = serde_json::from_str(&service.http_get("/stats").1).unwrap();
    assert_eq!(stats["over_limit_not_counted"], 4, "{stats}");

    // A rolling window through the same script: the first use opens it,
    // a replay is refused, counts nothing and reports when it ends.
    let mut args = vec![
        "--config".to_owned(),
        fixture("rolling.yaml").display().to_string(),
    ];
    args.extend(redis_args(&redis).into_iter().skip(2));
    args.push("--stop-increment-when-over-limit".to_owned());
    let rolling = Service::start_healthy(&strs(&args));
    let mut client = rolling.client().await;
    let req = request("appguard", vec![descriptor(&[("jti", "once")])]);
    assert_eq!(ask(&mut client, &req).await.overall_code, Code::Ok as i32);
    let key = "8:appguard_3:jti=4:once_hour_rolling";
    let _: () = conn.expire(key, 60).unwrap();
    let r = ask(&mut client, &req).await;
    assert_eq!(r.overall_code, Code::OverLimit as i32);
    let reset = r.statuses[0].duration_until_reset.unwrap().seconds;
    assert!(reset > 0 && reset <= 60, "duration_until_reset {reset}");
    let count: i64 = conn.get(key).unwrap();
    assert_eq!(count, 1);
}

/// With `--stop-increment-when-over-limit`, a rolling counter is created
/// with its expiry: a Redis user that may not run `EXPIRE` (as Redis before
/// 7 refuses `EXPIRE … NX`) cannot leave a count without one, which the
/// refused calls that follow, counting nothing, would never repair (the
/// `jti` or phone number refused for ever). One found without an expiry
/// gets one.
#[tokio::test]
async fn with_stop_increment_a_rolling_count_never_outlives_its_window() {
    let redis = Redis::start();
    let mut conn = redis.conn();
    let _: () = redis::cmd("ACL")
        .arg(&["SETUSER", "rl", "on", ">pw", "~*", "+@all", "-expire"])
        .query(&mut conn)
        .unwrap();
    let url = format!(
        "redis://rl:pw@127.0.0.1:{}",
        redis.url().rsplit(':').next().unwrap()
    );
    let args = vec![
        "--config".to_owned(),
        fixture("rolling.yaml").display().to_string(),
        "--redis".to_owned(),
        url,
        "--stop-increment-when-over-limit".to_owned(),
    ];
    let service = Service::start_healthy(&strs(&args));
    let mut client = service.client().await;
    let req = |jti: &str| request("appguard", vec![descriptor(&[("jti", jti)])]);
    let key = |jti: &str| format!("8:appguard_3:jti={}:{jti}_hour_rolling", jti.len());

    assert_eq!(
        ask(&mut client, &req("t1")).await.overall_code,
        Code::Ok as i32
    );
    let r = ask(&mut client, &req("t1")).await;
    assert_eq!(r.overall_code, Code::OverLimit as i32);
    let reset = r.statuses[0].duration_until_reset.unwrap().seconds;
    assert!(
        reset > 3500 && reset <= 3600,
        "duration_until_reset {reset}"
    );
    let ttl: i64 = conn.ttl(key("t1")).unwrap();
    assert!(ttl > 3500 && ttl <= 3600, "ttl {ttl}");

    // A count left without an expiry (by an earlier version, whose EXPIRE
    // failed after its INCRBY) is given its window again, by a user that
    // may run EXPIRE.
    let _: () = conn.set(key("t2"), 1).unwrap();
    let mut args = redis_args(&redis);
    args[1] = fixture("rolling.yaml").display().to_string();
    args.push("--stop-increment-when-over-limit".to_owned());
    let service = Service::start_healthy(&strs(&args));
    let mut client = service.client().await;
    let r = ask(&mut client, &req("t2")).await;
    assert_eq!(r.overall_code, Code::OverLimit as i32);
    let ttl: i64 = conn.ttl(key("t2")).unwrap();
    assert!(ttl > 3500 && ttl <= 3600, "ttl {ttl}");
}

/// A service started before Redis takes its credentials (an ACL user not
/// made yet, a password rotated in the wrong order) connects again once
/// it does, instead of answering UNAVAILABLE until restarted.
#[tokio::test]
async fn credentials_redis_refused_at_first_are_tried_again() {
    let redis = Redis::start();
    let mut conn = redis.conn();
    let _: () = redis::cmd("ACL")
        .arg(&["SETUSER", "late", "off", ">pw", "~*", "+@all"])
        .query(&mut conn)
        .unwrap();
    let port = redis.url().rsplit(':').next().unwrap().to_owned();
    let args = vec![
        "--config".to_owned(),
        fixture("appguard.yaml").display().to_string(),
        "--redis".to_owned(),
        format!("redis://late:pw@127.0.0.1:{port}"),
        "--redis-timeout-ms".to_owned(),
        "500".to_owned(),
    ];
    let service = Service::start(&strs(&args));
    let mut client = service.client().await;
    let req = request("appguard", vec![descriptor(&[("client_ip", "192.0.2.30")])]);
    let mut c = client.clone();
    assert!(
        c.should_rate_limit(req.clone()).await.is_err(),
        "the user is off"
    );
    let _: () = redis::cmd("ACL")
        .arg(&["SETUSER", "late", "on"])
        .query(&mut conn)
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match client.should_rate_limit(req.clone()).await {
            Ok(r) => {
                assert_eq!(r.into_inner().overall_code, Code::Ok as i32);
                break;
            }
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("still refused 10 s after Redis took the credentials: {e}"),
        }
    }
    assert_eq!(service.http_get("/healthcheck").0, 200);
}

/// Redis echoes a command it does not know with its arguments, the
/// counter keys that hold descriptor values (a client IP here): neither
/// the log nor the gRPC answer repeats them, and the answer stays short.
#[tokio::test]
async fn redis_errors_are_shown_without_the_keys_redis_echoes() {
    let redis = Redis::start_with(free_port(), &["--rename-command", "EVALSHA", ""]);
    let mut args = redis_args(&redis);
    args.push("--stop-increment-when-over-limit".to_owned());
    let service = Service::start_healthy(&strs(&args));
    let mut client = service.client().await;
    let req = request("appguard", vec![descriptor(&[("client_ip", "192.0.2.77")])]);
    let err = client.should_rate_limit(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
    assert!(
        err.message().contains("unknown command"),
        "{}",
        err.message()
    );
    assert!(!err.message().contains("192.0.2.77"), "{}", err.message());
    assert!(err.message().len() < 300, "{}", err.message());
    let logs = service.stderr();
    assert!(logs.contains("unknown command"), "{logs}");
    assert!(!logs.contains("192.0.2.77"), "{logs}");
}

/// How many times Redis was sent `command`, and how many of those failed
/// (`NOSCRIPT` for `EVALSHA`), since its stats were last reset (`INFO
/// commandstats`).
fn command_calls(conn: &mut redis::Connection, command: &str) -> (u64, u64) {
    let info: String = redis::cmd("INFO").arg("commandstats").query(conn).unwrap();
    let prefix = format!("cmdstat_{command}:");
    let Some(line) = info.lines().find_map(|line| line.strip_prefix(&prefix)) else {
        return (0, 0);
    };
    let field = |name: &str| -> u64 {
        line.split(',')
            .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
            .unwrap()
            .parse()
            .unwrap()
    };
    (field("calls"), field("failed_calls"))
}

/// With `--stop-increment-when-over-limit` the script's body goes to
/// Redis once (`EVAL`) and each call after runs it by its SHA-1
/// (`EVALSHA`); when Redis loses it (`SCRIPT FLUSH`, as a restart or a
/// failover would), the next call sends it again and counts once.
#[tokio::test]
async fn with_stop_increment_the_script_body_is_sent_only_when_redis_lacks_it() {
    let redis = Redis::start();
    let mut args = redis_args(&redis);
    args.push("--stop-increment-when-over-limit".to_owned());
    let service = Service::start_healthy(&strs(&args));
    let mut client = service.client().await;
    let req = request("appguard", vec![descriptor(&[("client_ip", "192.0.2.20")])]);
    let mut conn = redis.conn();
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query(&mut conn)
        .unwrap();
    avoid_window_edge(HOUR, 30);

    // Limit 3 per hour.
    for remaining in [2, 1] {
        let r = ask(&mut client, &req).await;
        assert_eq!(r.overall_code, Code::Ok as i32);
        assert_eq!(r.statuses[0].limit_remaining, remaining);
    }
    // The first call's `EVALSHA` found no script; the second's did.
    assert_eq!(command_calls(&mut conn, "eval"), (1, 0));
    assert_eq!(command_calls(&mut conn, "evalsha"), (2, 1));

    let _: () = redis::cmd("SCRIPT").arg("FLUSH").query(&mut conn).unwrap();
    let r = ask(&mut client, &req).await;
    assert_eq!(r.overall_code, Code::Ok as i32);
    assert_eq!(r.statuses[0].limit_remaining, 0);
    assert_eq!(command_calls(&mut conn, "eval"), (2, 0));
    assert_eq!(command_calls(&mut conn, "evalsha"), (3, 2));
    let r = ask(&mut client, &req).await;
    assert_eq!(r.overall_code, Code::OverLimit as i32);
    assert_eq!(command_calls(&mut conn, "eval"), (2, 0));
    assert_eq!(command_calls(&mut conn, "evalsha"), (4, 2));

    // Three counted; the refused fourth call counted nothing.
    let now = unix_now();
    let key = format!(
        "8:appguard_9:client_ip=10:192.0.2.20_hour_{}",
        now - now % HOUR
    );
    let count: i64 = conn.get(&key).unwrap();
    assert_eq!(count, 3);
}

// ---- --stop-increment-when-over-limit: the script and the answer agree ----

/// The service with `yaml` as its only config, counting in `redis`, with
/// `--stop-increment-when-over-limit`.
fn stopping_with(redis: &Redis, yaml: &str) -> (Service, tempfile::NamedTempFile) {
    use std::io::Write;
    let mut file = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    file.write_all(yaml.as_bytes()).unwrap();
    let args = vec![
        "--config".to_owned(),
        file.path().display().to_string(),
        "--redis".to_owned(),
        redis.url(),
        "--redis-timeout-ms".to_owned(),
        "500".to_owned(),
        "--stop-increment-when-over-limit".to_owned(),
    ];
    (Service::start_healthy(&strs(&args)), file)
}

/// Through the Lua script: a quota-mode limit in shadow mode keeps the
/// call from being refused for quota (step 5), so the call is answered OK
/// and must count.
#[tokio::test]
async fn with_stop_increment_a_shadow_quota_limit_answered_ok_counts_in_redis() {
    let redis = Redis::start();
    let (service, _file) = stopping_with(
        &redis,
        "domain: d\ndescriptors:\n  - key: q1\n    quota_mode: true\n    rate_limit: {unit: hour, requests_per_unit: 1}\n  - key: qs\n    quota_mode: true\n    shadow_mode: true\n    rate_limit: {unit: hour, requests_per_unit: 5}\n",
    );
    let mut client = service.client().await;
    avoid_window_edge(HOUR, 30);
    let call = request(
        "d",
        vec![descriptor(&[("q1", "a")]), descriptor(&[("qs", "a")])],
    );
    for _ in 0..2 {
        assert_eq!(ask(&mut client, &call).await.overall_code, Code::Ok as i32);
    }
    let now = unix_now();
    let key = format!("1:d_2:q1=1:a_hour_{}", now - now % HOUR);
    let mut conn = redis.conn();
    let count: Option<i64> = conn.get(&key).unwrap();
    assert_eq!(count, Some(2), "a call answered OK counted nothing");
}

/// A counter near `i64::MAX` (Lua 5.1 numbers are doubles; a double of
/// 2^63 comes back from `EVAL` as `i64::MIN`): the script refuses the
/// call, and the count it reports for the refused call reads as 0, so the
/// answer is OK while nothing was counted.
#[tokio::test]
async fn with_stop_increment_a_huge_count_is_not_answered_ok() {
    let redis = Redis::start();
    let mut args = redis_args(&redis);
    args.push("--stop-increment-when-over-limit".to_owned());
    let service = Service::start_healthy(&strs(&args));
    let mut client = service.client().await;
    avoid_window_edge(HOUR, 30);
    let now = unix_now();
    let key = format!(
        "8:appguard_9:client_ip=9:192.0.2.9_hour_{}",
        now - now % HOUR
    );
    let mut conn = redis.conn();
    let _: () = conn.set(&key, i64::MAX - 100).unwrap();
    let req = request("appguard", vec![descriptor(&[("client_ip", "192.0.2.9")])]);
    let r = client.should_rate_limit(req).await;
    if let Ok(r) = r {
        let r = r.into_inner();
        assert_eq!(
            r.overall_code,
            Code::OverLimit as i32,
            "a counter at i64::MAX - 100 answered {r:?}"
        );
    }
}

const PROBE: &str = include_str!("fixtures/stop_increment_mix.yaml");

/// The Lua script against the rule the option promises, over many mixed
/// calls (quota mode, shadow mode, checks, per-descriptor hits, a key twice,
/// unlimited, unmatched and replaced descriptors): each answer is the one
/// the calls counted so far give without the option (the in-memory store
/// as reference), and a call counts exactly when it is answered OK.
#[tokio::test]
async fn with_stop_increment_the_script_agrees_with_the_answer_for_every_mix() {
    use appguard_ratelimit::backend::{Backend, MemoryBackend, RedisBackend};
    use appguard_ratelimit::config::RateLimitConfig;
    use appguard_ratelimit::service::{RateLimiter, ServiceOptions, Stats};
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
    use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
    use std::sync::Arc;

    let redis = Redis::start();
    let mut conn = redis.conn();
    let config = Arc::new(
        RateLimitConfig::from_sources(&[("p.yaml".to_owned(), PROBE.to_owned())])
            .unwrap()
            .0,
    );
    let memory = |options| {
        RateLimiter::new(
            Arc::clone(&config),
            Arc::new(Backend::Memory(MemoryBackend::new(1000))),
            options,
            Arc::new(Stats::default()),
        )
    };
    let variants: Vec<RateLimitDescriptor> = {
        let mut v: Vec<RateLimitDescriptor> = [
            ("ip", "a"),
            ("zero", "z"),
            ("trial", "t"),
            ("q1", "a"),
            ("q2", "a"),
            ("qs", "a"),
            ("free", "x"),
            ("nomatch", "x"),
            ("roll", "r"),
            ("old", "o"),
            ("vip", "v"),
        ]
        .iter()
        .map(|e| descriptor(&[*e]))
        .collect();
        for (key, value, hits) in [
            ("ip", "a", 0),
            ("ip", "a", 2),
            ("q1", "a", 0),
            ("q2", "a", 3),
            ("roll", "r", 0),
        ] {
            let mut d = descriptor(&[(key, value)]);
            d.hits_addend = Some(UInt64Value { value: hits });
            v.push(d);
        }
        v
    };
    let shape = |r: &RateLimitResponse| {
        (
            r.overall_code,
            r.statuses
                .iter()
                .map(|s| (s.code, s.limit_remaining))
                .collect::<Vec<_>>(),
        )
    };
    let mut seed: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    avoid_window_edge(60, 20);
    let now = unix_now();
    for round in 0..25 {
        let _: () = redis::cmd("FLUSHALL").query(&mut conn).unwrap();
        let a = RateLimiter::new(
            Arc::clone(&config),
            Arc::new(Backend::Redis(Box::new(
                RedisBackend::new(&redis.url(), Duration::from_millis(500)).unwrap(),
            ))),
            ServiceOptions {
                stop_increment_when_over_limit: true,
                ..Default::default()
            },
            Arc::new(Stats::default()),
        );
        let mut counted: Vec<RateLimitRequest> = Vec::new();
        for step in 0..10 {
            let len = 1 + next(3);
            let call = request(
                "appguard",
                (0..len)
                    .map(|_| variants[next(variants.len())].clone())
                    .collect(),
            );
            let b = memory(ServiceOptions::default());
            for c in &counted {
                b.should_rate_limit(c, now).await.unwrap();
            }
            let expected = b.should_rate_limit(&call, now).await.unwrap();
            let before = a.stats().snapshot().over_limit_not_counted;
            let got = a.should_rate_limit(&call, now).await.unwrap();
            let refused = a.stats().snapshot().over_limit_not_counted > before;
            let what = format!("round {round} step {step}: {:?}", call.descriptors);
            assert_eq!(shape(&got), shape(&expected), "{what}");
            assert_eq!(
                refused,
                got.overall_code == Code::OverLimit as i32,
                "counted iff answered OK: {what}"
            );
            if !refused {
                counted.push(call);
            }
        }
    }
}
