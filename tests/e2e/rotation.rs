//! A JWKS rotation under concurrent traffic (review-jwks42 F4): while one
//! request's re-fetch for an unknown `kid` is in flight, the other requests
//! with a `kid` the loaded keys lack, on either worker, wait for it and are
//! decided with what it brought, rather than refused at once.

use crate::harness;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use harness::http::{self, Req};
use harness::services::{test_limits, RateLimitService, Redis};
use harness::tokens::{self, claims};
use harness::upstream::{Seen, Upstream};
use harness::EnvoyBuilder;
use jwt_simple::prelude::ES256KeyPair;
use serde_json::{json, Value};

/// How long the JWKS server takes to answer once the rotation is
/// published: the re-fetch is in flight for that long.
const SLOW: Duration = Duration::from_millis(1000);

/// A JWKS server whose document, and how long it takes to answer, the test
/// changes while Envoy runs.
struct SlowJwks {
    doc: Arc<Mutex<(String, Duration, u16)>>,
    /// Answers for the next GETs, one each, before `doc` again.
    next: Arc<Mutex<VecDeque<(String, Duration, u16)>>>,
    server: Upstream,
}

impl SlowJwks {
    fn start(jwks: &Value) -> SlowJwks {
        let doc = Arc::new(Mutex::new((jwks.to_string(), Duration::ZERO, 200)));
        let next = Arc::new(Mutex::new(VecDeque::new()));
        let (d, n) = (doc.clone(), next.clone());
        let server = Upstream::with_handler(Arc::new(move |_s: &Seen| {
            let queued = n.lock().unwrap().pop_front();
            let (body, delay, status) = queued.unwrap_or_else(|| d.lock().unwrap().clone());
            std::thread::sleep(delay);
            (
                status,
                vec![("content-type".into(), "application/json".into())],
                body.into_bytes(),
            )
        }));
        SlowJwks { doc, next, server }
    }

    /// The next GET gets `jwks` after `delay` (then the ones queued
    /// before it have had theirs).
    fn queue(&self, jwks: &Value, delay: Duration) {
        let answer = (jwks.to_string(), delay, 200);
        self.next.lock().unwrap().push_back(answer);
    }

    /// Publishes `jwks`, answered after `delay` from now on.
    fn publish(&self, jwks: &Value, delay: Duration) {
        *self.doc.lock().unwrap() = (jwks.to_string(), delay, 200);
    }

    /// Answers 500 after `delay` from now on.
    fn fail(&self, delay: Duration) {
        let mut doc = self.doc.lock().unwrap();
        doc.1 = delay;
        doc.2 = 500;
    }

    fn fetches(&self) -> usize {
        self.server.seen().len()
    }
}

/// One provider `remote` whose JWKS comes from the `jwks` cluster (3 s
/// timeout, one re-fetch per 30 s, refresh every 10 minutes), on route
/// `/r`; `rate_limited` adds the rate-limit service (client IP, 3 an hour
/// in tests/fixtures/ratelimit.yaml) to the route.
fn config(failures: u32, rate_limited: bool) -> Value {
    let mut route = json!({"name": "r", "match": {"prefix": "/r"}, "tokens": ["remote"]});
    let mut c = json!({
        "default_action": "deny",
        "client_ip": {"xff_trusted_hops": 1},
        "tokens": [{"name": "remote", "from": [{"header": "x-token"}],
            "remote_jwks": {"cluster": "jwks", "path": "/jwks.json", "timeout_ms": 3000,
                            "min_refetch_seconds": 30, "refresh_seconds": 600},
            "failure_budget": {"failures": failures, "window_seconds": 3600}}],
        "routes": []
    });
    if rate_limited {
        route["rate_limits"] = json!([{"entries": [{"type": "client_ip"}]}]);
        c["rate_limit_service"] = json!({"cluster": "ratelimit", "domain": "appguard",
            "timeout_ms": 2000, "failure_mode": "deny"});
    }
    c["routes"] = json!([route]);
    c
}

/// Sends every token at once, each on its own connection from the
/// client address `ip(i)`; returns each one's status, reason and time.
fn burst(
    port: u16,
    tokens: &[String],
    ip: impl Fn(usize) -> String,
) -> Vec<(u16, Option<String>, Duration)> {
    let start = Arc::new(std::sync::Barrier::new(tokens.len()));
    let threads: Vec<_> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let req = Req::get(&format!("/r/{i}"))
                .header("x-token", t)
                .header("x-forwarded-for", &ip(i));
            let start = start.clone();
            std::thread::spawn(move || {
                start.wait();
                let at = Instant::now();
                let r = http::send(port, &req).expect("request through Envoy");
                (r.status, r.reason().map(str::to_owned), at.elapsed())
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

/// Envoy with two workers and the JWKS server publishing `{k1}`; a k1
/// token has passed, so both workers have keys before the rotation to
/// `k2`; `rls`, the rate-limit service of a `rate_limited` [`config`].
struct Rotation {
    k1: ES256KeyPair,
    k2: ES256KeyPair,
    jwks: SlowJwks,
    _up: Upstream,
    envoy: harness::Envoy,
}

impl Rotation {
    fn start(config: Value, rls: Option<&RateLimitService>) -> Rotation {
        Rotation::start_on(config, rls, 2)
    }

    /// [`Rotation::start`] with `workers` worker threads.
    fn start_on(config: Value, rls: Option<&RateLimitService>, workers: u32) -> Rotation {
        let k1 = ES256KeyPair::generate().with_key_id("k1");
        let k2 = ES256KeyPair::generate().with_key_id("k2");
        let jwks = SlowJwks::start(&json!({"keys": [tokens::es256_jwk(&k1, "k1")]}));
        let up = Upstream::start();
        let mut builder = EnvoyBuilder::new(config, up.port)
            .http_cluster("jwks", jwks.server.port)
            .concurrency(workers);
        if let Some(rls) = rls {
            builder = builder.grpc_cluster("ratelimit", rls.grpc_port);
        }
        let rotation = Rotation {
            k1,
            k2,
            jwks,
            _up: up,
            envoy: builder.start(),
        };
        rotation.k1_passes("192.0.2.1");
        rotation
    }

    /// Publishes `{k1, k2}`, answered [`SLOW`]ly from now on; the JWKS
    /// GETs so far.
    fn publish_k2(&self) -> usize {
        self.publish_k2_after(SLOW)
    }

    /// [`Rotation::publish_k2`], answered after `delay`.
    fn publish_k2_after(&self, delay: Duration) -> usize {
        self.jwks.publish(&self.k1_k2(), delay);
        self.jwks.fetches()
    }

    /// The JWKS of the rotation: `{k1, k2}`.
    fn k1_k2(&self) -> Value {
        json!({"keys": [tokens::es256_jwk(&self.k1, "k1"), tokens::es256_jwk(&self.k2, "k2")]})
    }

    /// `n` tokens, each naming its own made-up `kid` (`nobody-{i}`), all
    /// signed with one key no JWKS has.
    fn made_up_tokens(n: usize) -> Vec<String> {
        let pem = ES256KeyPair::generate().to_pem().expect("PEM");
        (0..n)
            .map(|i| {
                let kp = ES256KeyPair::from_pem(&pem)
                    .expect("the PEM just written")
                    .with_key_id(&format!("nobody-{i}"));
                tokens::es256_with(&kp, &claims(60, json!({})))
            })
            .collect()
    }

    /// `n` tokens of `k2`, each with its own `sub` (`{prefix}{i}`).
    fn k2_tokens(&self, n: usize, prefix: &str) -> Vec<String> {
        (0..n)
            .map(|i| {
                tokens::es256_with(
                    &self.k2,
                    &claims(60, json!({"sub": format!("{prefix}{i}")})),
                )
            })
            .collect()
    }

    /// A k1 token passes on whichever worker takes it: the keys are loaded.
    fn k1_passes(&self, ip: &str) {
        let t1 = tokens::es256_with(&self.k1, &claims(60, json!({})));
        let r = self.envoy.request(
            Req::get("/r/k1")
                .header("x-token", &t1)
                .header("x-forwarded-for", ip),
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }
}

/// Whether an answer of [`burst`] is `401 token_signature`.
fn token_signature(answer: &(u16, Option<String>, Duration)) -> bool {
    (answer.0, answer.1.as_deref()) == (401, Some("token_signature"))
}

/// The VM is healthy, and no callback came while the root acted for a
/// request: Envoy deferred each resumption and local reply made from the
/// tick (a response callback for one would have found its filter borrowed,
/// and said so).
fn assert_acted_for_in_turn(envoy: &harness::Envoy) {
    envoy.assert_vm_healthy();
    assert!(
        !envoy.log().contains("the filter is busy"),
        "{}",
        envoy.log()
    );
}

#[test]
fn genuine_tokens_of_a_new_key_wait_for_the_refetch_in_flight_and_pass() {
    let rot = Rotation::start(config(20, false), None);
    let (jwks, envoy) = (&rot.jwks, &rot.envoy);
    let before = rot.publish_k2();
    let k2_tokens = rot.k2_tokens(20, "u");
    let answers = burst(envoy.port, &k2_tokens, |i| format!("198.51.100.{}", i + 1));
    let refused: Vec<_> = answers.iter().filter(|(s, _, _)| *s != 200).collect();
    assert!(
        refused.is_empty(),
        "every k2 token passes once the re-fetch answers: {answers:?}\n{}",
        envoy.log()
    );
    // They waited for the one re-fetch (the JWKS server's second), not
    // for a fetch each.
    assert!(
        (1..=2).contains(&(jwks.fetches() - before)),
        "{} GETs for one rotation",
        jwks.fetches() - before
    );
    let waited = answers.iter().filter(|(_, _, t)| *t >= SLOW / 2).count();
    assert!(waited >= 19, "they waited for the slow answer: {answers:?}");
    // Counted: all but the one whose request sent the GET (and on the
    // other worker perhaps one more, sent before the lease was seen).
    let waits = envoy.stat("appguard_jwks_waits").unwrap_or_default();
    assert!((18..=19).contains(&waits), "{waits} counted waits");
    assert_eq!(envoy.stat("appguard_jwks_wait_overflows"), Some(0));
    // Within a few fast ticks (10 ms) of the answer on either worker: a
    // waiter on the other worker is not left to the 1 s tick.
    assert!(
        answers.iter().all(|(_, _, t)| *t < SLOW + SLOW / 2),
        "each was decided soon after the keys came: {answers:?}"
    );
    assert_acted_for_in_turn(envoy);
}

#[test]
fn a_request_that_leaves_while_it_waits_is_skipped_and_the_others_pass() {
    use std::io::Write;
    let rot = Rotation::start(config(20, false), None);
    let (jwks, envoy) = (&rot.jwks, &rot.envoy);
    let before = rot.publish_k2();
    // Ten clients send a k2 token and hang up a fifth of a second later,
    // while the re-fetch is in flight; one of them may hold it.
    let leavers: Vec<_> = (0..10)
        .map(|i| {
            let t = tokens::es256_with(&rot.k2, &claims(60, json!({"sub": format!("gone{i}")})));
            let port = envoy.port;
            std::thread::spawn(move || {
                let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
                write!(
                    s,
                    "GET /r/gone HTTP/1.1\r\nhost: localhost\r\nx-token: {t}\r\n\
                     x-forwarded-for: 198.51.100.{}\r\n\r\n",
                    100 + i
                )
                .unwrap();
                std::thread::sleep(SLOW / 5);
            })
        })
        .collect();
    std::thread::sleep(SLOW / 10);
    let k2_tokens = rot.k2_tokens(10, "u");
    let answers = burst(envoy.port, &k2_tokens, |i| format!("198.51.100.{}", i + 1));
    for l in leavers {
        l.join().unwrap();
    }
    assert!(
        answers.iter().all(|(s, _, _)| *s == 200),
        "the requests that stayed pass: {answers:?}\n{}",
        envoy.log()
    );
    // A re-fetch whose request left loses its answer; the root makes it
    // again at once (the refresh lease of the fetch at start is still
    // held), and may refresh once more when its lease frees (a lost
    // re-fetch is dated by its second).
    let gets = jwks.fetches() - before;
    assert!((1..=3).contains(&gets), "{gets} GETs");
    // After the wait, later tokens pass at once: nothing is left held.
    let t = tokens::es256_with(&rot.k2, &claims(60, json!({"sub": "later"})));
    let at = Instant::now();
    let r = envoy.request(Req::get("/r/later").header("x-token", &t));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(at.elapsed() < SLOW / 2);
    assert_acted_for_in_turn(envoy);
}

#[test]
fn made_up_kids_wait_for_the_refetch_in_flight_and_are_refused_after_it() {
    // A budget of 5 failures an hour per client: the 20 below come from
    // one address.
    let rot = Rotation::start(config(5, false), None);
    let (jwks, envoy) = (&rot.jwks, &rot.envoy);
    let before = rot.publish_k2();
    let made_up: Vec<String> = (0..20)
        .map(|i| {
            let kp = ES256KeyPair::generate().with_key_id(&format!("nobody-{i}"));
            tokens::es256_with(&kp, &claims(60, json!({})))
        })
        .collect();
    let answers = burst(envoy.port, &made_up, |_| "203.0.113.9".to_owned());
    assert!(answers.iter().all(token_signature), "{answers:?}");
    let waited = answers.iter().filter(|(_, _, t)| *t >= SLOW / 2).count();
    assert!(
        waited >= 19,
        "refused after the re-fetch answered, not at once: {answers:?}"
    );
    assert!(
        (1..=2).contains(&(jwks.fetches() - before)),
        "{} GETs",
        jwks.fetches() - before
    );
    // The requests that waited for another's GET, which went out before
    // they came, are not charged (a `kid` published in between would not
    // be the client's fault); the one whose own GET it was is. So the
    // client's budget of 5 is not spent, and its genuine token passes.
    assert_eq!(envoy.stat("appguard_verification_budget_refusals"), Some(0));
    rot.k1_passes("203.0.113.9");
    assert_acted_for_in_turn(envoy);
}

#[test]
fn hundreds_waiting_at_once_are_decided_a_few_a_tick_without_crashing_the_vm() {
    // review-wait50 F1: 800 made-up `kid`s from 800 addresses arrive
    // while a re-fetch is in flight. Decided all in one tick, each local
    // reply ran inside the VM call of the one before, and V8's stack ran
    // out after about 306 a worker: the VM crashed, and every request
    // after it got a bare 503. Now at most 32 a tick.
    let rot = Rotation::start(config(5, false), None);
    let envoy = &rot.envoy;
    rot.publish_k2();
    let made_up = Rotation::made_up_tokens(800);
    let answers = burst(envoy.port, &made_up, |i| {
        format!("10.{}.{}.1", 20 + i / 250, i % 250)
    });
    let refused = answers.iter().filter(|a| token_signature(a)).count();
    let waited = answers.iter().filter(|(_, _, t)| *t >= SLOW / 2).count();
    assert_eq!(
        refused,
        800,
        "{waited} waited; {:?}",
        answers.iter().find(|(s, _, _)| *s != 401)
    );
    assert!(
        waited >= 400,
        "only {waited} of 800 waited: not the batch this test is for"
    );
    let waits = envoy.stat("appguard_jwks_waits").unwrap_or_default();
    assert!(
        waits as usize + 2 >= waited && waits < 800,
        "{waits} counted waits, {waited} slow answers"
    );
    envoy.assert_vm_healthy();
    // The worker still serves, and the rotation's key passes.
    let r = envoy.request(
        Req::get("/r/after")
            .header(
                "x-token",
                &tokens::es256_with(&rot.k2, &claims(60, json!({}))),
            )
            .header("x-forwarded-for", "192.0.2.77"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_acted_for_in_turn(envoy);
}

#[test]
fn a_refetch_that_fails_ends_the_wait_on_every_worker() {
    // review-wait50 F3: the re-fetch answers 500 after 300 ms. The
    // requests on the worker that sent it were refused then; those on the
    // other waited out the GET's 3 s timeout. Now the lease says the GET
    // failed, and every waiter is refused within a tick or two of it.
    let rot = Rotation::start(config(20, false), None);
    let envoy = &rot.envoy;
    rot.jwks.fail(Duration::from_millis(300));
    let k2_tokens = rot.k2_tokens(20, "u");
    let answers = burst(envoy.port, &k2_tokens, |i| format!("198.51.100.{}", 10 + i));
    assert!(answers.iter().all(token_signature), "{answers:?}");
    let slowest = answers.iter().map(|(_, _, t)| *t).max().unwrap_or_default();
    assert!(
        slowest < Duration::from_millis(1500),
        "the slowest waited {slowest:?} (the GET failed after 300 ms; its timeout is 3 s): {answers:?}"
    );
    assert_acted_for_in_turn(envoy);
}

#[test]
fn a_request_that_waited_for_keys_gets_its_rate_limit_answer() {
    // The waiting requests are decided from the root context's tick: the
    // rate-limit calls they make then are answered to the root, which
    // hands each answer to its request.
    let redis = Redis::start();
    let rls = RateLimitService::start(&test_limits(), Some(&redis.url()));
    let rot = Rotation::start(config(20, true), Some(&rls));
    let envoy = &rot.envoy;
    rot.publish_k2();
    let k2_tokens = rot.k2_tokens(12, "u");
    // Two clients, six requests each, 3 an hour per client.
    let answers = burst(envoy.port, &k2_tokens, |i| {
        format!("198.51.100.{}", 50 + i % 2)
    });
    let mut statuses: Vec<(u16, Option<String>)> =
        answers.iter().map(|(s, r, _)| (*s, r.clone())).collect();
    statuses.sort();
    let expected: Vec<(u16, Option<String>)> = [
        vec![(200, None); 6],
        vec![(429, Some("rate_limited".to_owned())); 6],
    ]
    .concat();
    assert_eq!(statuses, expected, "{answers:?}\n{}", envoy.log());
    assert!(
        answers.iter().all(|(_, _, t)| *t < SLOW * 3),
        "no answer was lost (a lost one waits for Envoy's timeouts): {answers:?}"
    );
    assert_acted_for_in_turn(envoy);
}

#[test]
fn past_a_full_waiting_room_requests_are_refused_at_once_and_counted() {
    // One worker, and 1,150 made-up `kid`s from as many addresses while a
    // slow re-fetch is in flight: 1,024 (the most a worker holds) wait
    // for it; the rest are refused at once, as before waiting existed,
    // and `appguard_jwks_wait_overflows` counts them.
    let rot = Rotation::start_on(config(5, false), None, 1);
    let envoy = &rot.envoy;
    let delay = Duration::from_millis(2500);
    rot.publish_k2_after(delay);
    let answers = burst(envoy.port, &Rotation::made_up_tokens(1150), |i| {
        format!("10.{}.{}.2", 40 + i / 250, i % 250)
    });
    assert!(
        answers.iter().all(token_signature),
        "{:?}",
        answers.iter().find(|a| !token_signature(a))
    );
    let waits = envoy.stat("appguard_jwks_waits").unwrap_or_default();
    let overflows = envoy
        .stat("appguard_jwks_wait_overflows")
        .unwrap_or_default();
    let quick = answers.iter().filter(|(_, _, t)| *t < delay / 2).count();
    assert_eq!(waits, 1024, "{overflows} overflows, {quick} quick answers");
    assert!(
        overflows >= 1 && quick as u64 >= overflows,
        "{overflows} overflows, {quick} answered before the re-fetch"
    );
    envoy.assert_vm_healthy();
    rot.k1_passes("192.0.2.78");
}

#[test]
fn keys_naming_the_new_kid_end_the_refetch_whatever_get_brought_them() {
    // review52 F3: the background refresh goes out (its answer, {k1, k2},
    // takes 2 s); then a k2 token re-fetches (its GET hangs past the 5 s
    // timeout), and a second k2 token waits for that re-fetch. The
    // refresh lands with k2: both go on with it, where they waited for
    // the re-fetch's timeout, though later k2 tokens passed at once (the
    // refresh's keys were sent before the re-fetch, so they did not count
    // as its answer).
    let mut c = config(20, false);
    c["tokens"][0]["remote_jwks"]["refresh_seconds"] = json!(10);
    c["tokens"][0]["remote_jwks"]["timeout_ms"] = json!(5000);
    let rot = Rotation::start_on(c, None, 1);
    let (jwks, envoy) = (&rot.jwks, &rot.envoy);
    let before = jwks.fetches();
    jwks.queue(&rot.k1_k2(), Duration::from_secs(2));
    jwks.queue(&rot.k1_k2(), Duration::from_secs(10));
    // The refresh is due 10 s after the keys were fetched at start.
    harness::wait_until(20, "the refresh", || jwks.fetches() > before);
    let refresh_out = Instant::now();
    let tokens = rot.k2_tokens(2, "f3-");
    let send = |t: &String, ip: &str| {
        let req = Req::get("/r/k2")
            .header("x-token", t)
            .header("x-forwarded-for", ip);
        let port = envoy.port;
        std::thread::spawn(move || {
            let r = http::send(port, &req).expect("request through Envoy");
            (r.status, r.reason().map(str::to_owned), Instant::now())
        })
    };
    let refetching = send(&tokens[0], "198.51.100.1");
    harness::wait_until(2, "the re-fetch", || jwks.fetches() > before + 1);
    let waiting = send(&tokens[1], "198.51.100.2");
    for (what, t) in [("re-fetching", refetching), ("waiting", waiting)] {
        let (status, reason, done) = t.join().unwrap();
        assert_eq!((status, reason), (200, None), "{what}: {}", envoy.log());
        let took = done.duration_since(refresh_out);
        assert!(
            took < Duration::from_millis(3500),
            "{what}: passed {took:?} after the refresh went out (it answered in 2 s; \
             the re-fetch times out at 5 s)"
        );
    }
    assert_eq!(jwks.fetches(), before + 2, "the refresh and one re-fetch");
    assert_eq!(envoy.stat("appguard_jwks_waits"), Some(1));
    assert_acted_for_in_turn(envoy);
}
