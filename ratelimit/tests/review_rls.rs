//! Tests for the findings of the review of the rate-limit service
//! (review-rls): each one failed before its fix.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use appguard_ratelimit::backend::{Increment, RedisBackend};
use common::Redis;

/// M3: a Redis that is alive but slower than the callers' deadline
/// (Envoy's ratelimit filter 20 ms, appguard's `timeout_ms`) has every
/// call given up by its caller. That must not be taken for a dead
/// connection: it answers, late. (It was: a new connection every 3
/// cancelled calls, a connect storm against a Redis already struggling.)
/// The calls last longer than the Redis timeout here, so counting
/// cancelled calls against a timer would not do either: the late replies
/// must count as signs of life. The given-up transactions are still
/// executed by Redis (counted), as the README says.
#[tokio::test]
async fn a_slow_but_answering_redis_keeps_its_connection() {
    let redis = Redis::start();
    let proxy = DelayingProxy::start(redis.port, Duration::from_millis(30));
    let backend = RedisBackend::new(
        &format!("redis://127.0.0.1:{}", proxy.port),
        Duration::from_millis(250),
    )
    .unwrap();
    // Warm up (connect through the proxy), not cancelled.
    let item = Increment {
        key: "review:slow".to_owned(),
        hits: 1,
        window_seconds: 600,
        window_end: 0,
        rolling: false,
    };
    backend
        .increment(std::slice::from_ref(&item))
        .await
        .unwrap();
    let before = proxy.accepted();
    for _ in 0..30 {
        // A caller whose deadline (20 ms) is shorter than Redis's latency
        // (30 ms) drops the call, as tonic does at a grpc-timeout.
        let r = tokio::time::timeout(
            Duration::from_millis(20),
            backend.increment(std::slice::from_ref(&item)),
        )
        .await;
        assert!(r.is_err(), "the caller gave up");
    }
    let opened = proxy.accepted() - before;
    println!("{opened} new connections for 30 cancelled calls");
    assert!(
        opened <= 1,
        "{opened} new connections for 30 cancelled calls to a Redis that answers"
    );
    // Redis was never down: a plain client answers, and it did count.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let count: i64 = redis::cmd("GET")
        .arg("review:slow")
        .query(&mut redis.conn())
        .unwrap();
    assert!(count > 1, "count {count}");
}

/// A TCP proxy that forwards requests at once and delays every chunk of
/// the replies by `delay`: a Redis that is alive but slow.
struct DelayingProxy {
    port: u16,
    accepted: Arc<std::sync::atomic::AtomicU64>,
}

impl DelayingProxy {
    fn start(target: u16, delay: Duration) -> DelayingProxy {
        use std::io::{Read, Write};
        use std::net::{TcpListener, TcpStream};
        use std::sync::atomic::{AtomicU64, Ordering};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicU64::new(0));
        let a = Arc::clone(&accepted);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                a.fetch_add(1, Ordering::SeqCst);
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                for (mut from, mut to, wait) in [
                    (
                        client.try_clone().unwrap(),
                        server.try_clone().unwrap(),
                        Duration::ZERO,
                    ),
                    (server, client, delay),
                ] {
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16 * 1024];
                        loop {
                            let n = match from.read(&mut buf) {
                                Ok(0) | Err(_) => {
                                    let _ = to.shutdown(std::net::Shutdown::Both);
                                    return;
                                }
                                Ok(n) => n,
                            };
                            std::thread::sleep(wait);
                            if to.write_all(&buf[..n]).is_err() {
                                let _ = from.shutdown(std::net::Shutdown::Both);
                                return;
                            }
                        }
                    });
                }
            }
        });
        DelayingProxy { port, accepted }
    }

    fn accepted(&self) -> u64 {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
}
