#!/usr/bin/env python3
"""Soak: a million requests of valid and hostile traffic through Envoy and
appguard, then checks that nothing crashed, that memory stayed flat and that
every answer was one the traffic should get.

    scripts/soak.py --wasm target/.../appguard.wasm --envoy .venv/bin/envoy \
        [--requests 1000000] [--connections 64] [--concurrency 2]

Envoy runs with `--concurrency 2` and a configuration with token, API-key,
web, phone-limited and flood-limited routes behind `direct_response` (no
upstream process: the filter chain runs in full, the router answers 200).
wrk (with a Lua script this program writes) sends the traffic: a fixed
cycle of request templates, some built fresh per request (forged tokens
with random signatures, random phone numbers) so that the filter's caches
and shared-data tables fill and evict as they would under attack. Every
response is classified by status and `x-appguard-reason`.

The run is split in phases (a warm-up, then the rest in equal parts); after
each, Envoy's resident memory (VmRSS), its heap (`/memory`) and the Wasm
stats are read. It passes when:

- Envoy is alive and its Wasm stats show no VM failure or reload, and its
  log no failed Wasm callback;
- memory after the last phase is within max(24 MiB, 10 %) of memory after
  the warm-up;
- every (status, reason) seen is one the templates can produce, in
  proportions within tolerance of the templates' shares, with no socket
  errors beyond the connections Envoy closes on purpose (431/400);
- afterwards, each template sent once more gets exactly its answer.

Exit status 0 when all hold; a summary (also JSON with --json) either way.
"""
import argparse
import base64
import hashlib
import hmac
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

from proclib import b64u, free_port, rss_kib

SECRET = b"appguard-soak-secret-0123456789-appguard-soak-secret-0123456789"
ISS = "https://issuer.example"
API_KEY = "soak-key-android-1"


def hs256(claims, secret=SECRET, header=None):
    h = b64u(json.dumps(header or {"alg": "HS256", "typ": "JWT"}).encode())
    p = b64u(json.dumps(claims).encode())
    mac = hmac.new(secret, f"{h}.{p}".encode(), hashlib.sha256).digest()
    return f"{h}.{p}.{b64u(mac)}"


def appguard_config():
    return {
        "default_action": "deny",
        "client_ip": {"xff_trusted_hops": 1},
        "network": {"country_header": "x-country-code", "country_deny": ["KP"]},
        "apps": [
            {"id": "shop-android", "platform": "android", "package": "com.example.shop"},
            {"id": "shop-web", "platform": "web", "origins": ["https://shop.example.com"]},
        ],
        "api_keys": {"keys": [{"id": "k1", "sha256": hashlib.sha256(API_KEY.encode()).hexdigest(),
                               "apps": ["shop-android"]}]},
        "phone": {"default_calling_code": "44", "denied_prefixes": ["+882"],
                  "hash_key_base64": base64.b64encode(b"soak-phone-hash-key-0123456789ab").decode()},
        "tokens": [{"name": "hs", "from": [{"header": "approov-token"}],
                    "keys": [{"alg": "HS256", "secret_base64": base64.b64encode(SECRET).decode()}],
                    "issuer": ISS, "max_lifetime_seconds": 7200,
                    # Forged tokens come from one address here; a spent budget
                    # would answer for them all (it is tested in e2e instead).
                    "failure_budget": {"failures": 0}}],
        "routes": [
            {"name": "admin", "match": {"prefix": "/admin"}, "action": "deny"},
            {"name": "api", "match": {"prefix": "/api/"}, "tokens": ["hs"]},
            {"name": "mobile", "match": {"prefix": "/mobile/"}, "api_key": "required",
             "platforms": ["android"]},
            {"name": "web", "match": {"prefix": "/web/"}, "platforms": ["web"]},
            {"name": "sms", "match": {"path": "/sms", "methods": ["POST"]},
             "rate_limits": [{"entries": [{"type": "body", "pointer": "/to", "phone": True}],
                              "local": {"requests": 3, "per": "hour"}}]},
            {"name": "flood", "match": {"prefix": "/flood"},
             "rate_limits": [{"entries": [{"type": "client_ip"}], "local": {"requests": 1, "per": "hour"}}]},
        ],
    }


def envoy_config(wasm, listen, admin):
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "ingress",
        "normalize_path": True,
        "merge_slashes": True,
        "path_with_escaped_slashes_action": "REJECT_REQUEST",
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}]}]},
        "http_filters": [
            {"name": "envoy.filters.http.wasm", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                "config": {
                    "name": "appguard", "root_id": "appguard", "failure_policy": "FAIL_RELOAD",
                    "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                                      "value": json.dumps(appguard_config())},
                    "vm_config": {"vm_id": "appguard", "runtime": "envoy.wasm.runtime.v8",
                                  "code": {"local": {"filename": wasm}}}}}},
            {"name": "envoy.filters.http.buffer", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer",
                "max_request_bytes": 1048576}},
            {"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}},
        ],
    }
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {"listeners": [{
            "name": "ingress",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                            "typed_config": hcm}]}]}]},
    }


def raw(method, path, headers=(), body=b""):
    out = f"{method} {path} HTTP/1.1\r\nhost: api.example.com\r\n".encode()
    for k, v in headers:
        out += k.encode() + b": " + (v if isinstance(v, bytes) else v.encode()) + b"\r\n"
    if body or method == "POST":
        out += f"content-length: {len(body)}\r\n".encode()
    return out + b"\r\n" + body


def templates(now):
    """(name, expected keys, request): the request is raw bytes, or a
    ("forged"|"phone", prefix) pair that the Lua script completes per
    request. Expected keys are "status reason" ("-" when Envoy or the
    router answered without a reason)."""
    good = hs256({"iss": ISS, "iat": now, "exp": now + 7000, "sub": "soak"})
    expired = hs256({"iss": ISS, "iat": now - 7000, "exp": now - 3600})
    # Every token but the expired one lives longer than any soak.
    other_iss = hs256({"iss": "https://evil", "iat": now, "exp": now + 7000})
    wrong_key = hs256({"iss": ISS, "iat": now, "exp": now + 7000}, secret=b"x" * 64)
    none_alg = b64u(b'{"alg":"none"}') + "." + b64u(json.dumps({"iss": ISS, "exp": now + 7000}).encode()) + "."
    dup = (b64u(b'{"alg":"HS256"}') + "." +
           b64u(f'{{"iss":"{ISS}","exp":{now + 7000},"exp":1}}'.encode()))
    dup += "." + b64u(hmac.new(SECRET, dup.encode(), hashlib.sha256).digest())
    forged_prefix = ".".join(hs256({"iss": ISS, "iat": now, "exp": now + 7000, "n": "forged"}).split(".")[:2]) + "."
    xff = ("x-forwarded-for", "192.0.2.10")
    t = [
        ("valid token", ["200 -"], raw("GET", "/api/orders", [("approov-token", good), xff])),
        ("valid token, spoofed identity", ["200 -"],
         raw("GET", "/api/orders", [("approov-token", good), ("x-appguard-app", "spoofed"), xff])),
        ("valid android key", ["200 -"],
         raw("GET", "/mobile/profile", [("x-api-key", API_KEY), ("x-android-package", "com.example.shop"), xff])),
        ("valid web origin", ["200 -"], raw("GET", "/web/cart", [("origin", "https://shop.example.com"), xff])),
        ("valid sms, random number", ["200 -", "429 rate_limited"], ("phone", "/sms")),
        ("forged token, random signature", ["401 token_signature"], ("forged", forged_prefix)),
        ("expired token", ["401 token_expired"], raw("GET", "/api/x", [("approov-token", expired), xff])),
        ("other issuer", ["401 token_claims"], raw("GET", "/api/x", [("approov-token", other_iss), xff])),
        ("wrong key", ["401 token_signature"], raw("GET", "/api/x", [("approov-token", wrong_key), xff])),
        ("alg none", ["401 token_malformed"], raw("GET", "/api/x", [("approov-token", none_alg), xff])),
        ("duplicate exp", ["401 token_malformed"], raw("GET", "/api/x", [("approov-token", dup), xff])),
        ("token not UTF-8", ["401 token_malformed"],
         raw("GET", "/api/x", [("approov-token", good.encode() + b"\xff\xfe"), xff])),
        ("token repeated", ["401 token_malformed"],
         raw("GET", "/api/x", [("approov-token", good), ("approov-token", "x.y.z"), xff])),
        ("no token", ["401 token_missing"], raw("GET", "/api/x", [xff])),
        ("4 KB+ token", ["401 token_malformed"], raw("GET", "/api/x", [("approov-token", "a" * 5000), xff])),
        ("key with another package", ["403 app_unknown"],
         raw("GET", "/mobile/p", [("x-api-key", API_KEY), ("x-android-package", "com.evil"), xff])),
        ("no key", ["403 api_key_missing"], raw("GET", "/mobile/p", [("x-android-package", "com.example.shop"), xff])),
        ("bad key", ["403 api_key_invalid"],
         raw("GET", "/mobile/p", [("x-api-key", "nope"), ("x-android-package", "com.example.shop"), xff])),
        ("origin lookalike", ["403 origin_denied"],
         raw("GET", "/web/cart", [("origin", "https://shop.example.com.evil.com"), xff])),
        ("origin IDN lookalike", ["403 origin_denied"],
         raw("GET", "/web/cart", [("origin", b"https://sh\xd0\xbep.example.com"), xff])),
        ("origin not UTF-8", ["403 origin_denied"],
         raw("GET", "/web/cart", [("origin", b"https://shop.example.com\xff"), xff])),
        ("denied country", ["403 country_denied"],
         raw("GET", "/web/cart", [("origin", "https://shop.example.com"), ("x-country-code", "KP"), xff])),
        ("deny route, encoded", ["403 route_denied"], raw("GET", "/ad%6din/users", [xff])),
        ("deny route, dot segments", ["403 route_denied"], raw("GET", "/x/../admin//users", [xff])),
        ("unmatched path", ["403 route_denied"], raw("GET", "/nowhere", [xff])),
        ("encoded slash", ["400 -"], raw("GET", "/admin%2Fusers", [xff])),
        ("premium number", ["403 phone_denied"],
         raw("POST", "/sms", [("content-type", "application/json"), xff], b'{"to": "+882 1234 5678"}')),
        ("number in letters", ["400 body_invalid"],
         raw("POST", "/sms", [("content-type", "application/json"), xff], b'{"to": "+44 77OO 9OO123"}')),
        ("body duplicate key", ["400 body_invalid"],
         raw("POST", "/sms", [("content-type", "application/json"), xff],
             b'{"to": "+447700900001", "to": "+447700900002"}')),
        ("body nested", ["400 body_invalid"],
         raw("POST", "/sms", [("content-type", "application/json"), xff], b"[" * 3000 + b"]" * 3000)),
        ("body not UTF-8", ["400 body_invalid"],
         raw("POST", "/sms", [("content-type", "application/json"), xff], b'{"to": "+44\xff"}')),
        ("body too large", ["413 body_too_large"],
         raw("POST", "/sms", [("content-type", "application/json"), xff],
             b'{"to": "+447700900003", "pad": "' + b"x" * 20000 + b'"}')),
        ("flood", ["429 rate_limited", "200 -"], raw("GET", "/flood/x", [("x-forwarded-for", "198.51.100.1")])),
        ("xff zone id", ["403 route_denied"], raw("GET", "/nowhere", [("x-forwarded-for", "fe80::1%eth0")])),
        ("header too large", ["431 -"], raw("GET", "/api/x", [("x-pad", "p" * 70000), xff])),
    ]
    return t


def lua_string(b):
    out = []
    for c in b:
        if 32 <= c < 127 and c not in (34, 92):
            out.append(chr(c))
        else:
            out.append("\\%03d" % c)
    return '"' + "".join(out) + '"'


def lua_script(tpls, per_thread, done_dir):
    entries = []
    for _, _, req in tpls:
        if isinstance(req, tuple):
            entries.append("{kind=%s, arg=%s}" % (lua_string(req[0].encode()), lua_string(req[1].encode())))
        else:
            entries.append("{kind=\"raw\", arg=%s}" % lua_string(req))
    return """
local templates = {%s}
local limit = %d
local done_dir = %s
local threads = {}
local next_id = 0
local b64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

function setup(thread)
  next_id = next_id + 1
  thread:set("id", next_id)
  table.insert(threads, thread)
end

function init(args)
  math.randomseed(id * 7919 + os.time())
  sent = 0
  received = 0
  counts = {}
end

local function random_b64(n)
  local t = {}
  for i = 1, n do
    local k = math.random(1, 64)
    t[i] = b64:sub(k, k)
  end
  return table.concat(t)
end

function request()
  local t = templates[(sent + id * 7) %% #templates + 1]
  sent = sent + 1
  if t.kind == "raw" then
    return t.arg
  elseif t.kind == "forged" then
    -- 43 characters hold the 32-byte MAC; the last one only 4 bits, so it
    -- is drawn from the canonical ones (the others are malformed base64).
    local k = math.random(0, 15) * 4 + 1
    local sig = random_b64(42) .. b64:sub(k, k)
    return wrk.format("GET", "/api/forged", {["approov-token"] = t.arg .. sig,
                                             ["x-forwarded-for"] = "192.0.2.10"})
  else
    local body = string.format('{"to": "+447700%%06d"}', math.random(0, 999999))
    return wrk.format("POST", t.arg, {["content-type"] = "application/json",
                                       ["x-forwarded-for"] = "192.0.2.10"}, body)
  end
end

function response(status, headers, body)
  local reason = headers["x-appguard-reason"] or "-"
  local key = status .. " " .. reason
  counts[key] = (counts[key] or 0) + 1
  received = received + 1
  if received == limit then
    -- wrk's main thread sleeps for the whole -d; the marker tells the
    -- driver this thread is done, and it interrupts wrk (SIGINT).
    local f = io.open(done_dir .. "/done-" .. id, "w")
    if f then f:write("1") f:close() end
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  local total = {}
  for _, thread in ipairs(threads) do
    local c = thread:get("counts")
    for k, v in pairs(c) do
      total[k] = (total[k] or 0) + v
    end
  end
  for k, v in pairs(total) do
    io.write(string.format("STATUS %%s %%d\\n", k, v))
  end
  io.write(string.format("ERRORS connect=%%d read=%%d write=%%d timeout=%%d status=%%d\\n",
    summary.errors.connect, summary.errors.read, summary.errors.write,
    summary.errors.timeout, summary.errors.status))
  io.write(string.format("REQUESTS %%d\\n", summary.requests))
end
""" % (",\n".join(entries), per_thread, lua_string(done_dir.encode()))


def http_get(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        return r.read().decode()


def stats(admin):
    out = {}
    for line in http_get(admin, "/stats").splitlines():
        k, _, v = line.partition(": ")
        if k.startswith("wasm.") or k.startswith("wasmcustom."):
            try:
                out[k] = int(v)
            except ValueError:
                pass
    return out


def heap_bytes(admin):
    return int(json.loads(http_get(admin, "/memory"))["allocated"])


def send_once(port, req):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        try:
            s.sendall(req)
        except OSError:
            pass
        buf = b""
        while b"\r\n\r\n" not in buf:
            try:
                d = s.recv(65536)
            except OSError:
                break
            if not d:
                break
            buf += d
    finally:
        s.close()
    head = buf.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    lines = head.split("\r\n")
    status = lines[0].split(" ")[1] if lines and " " in lines[0] else "?"
    reason = "-"
    for l in lines[1:]:
        k, _, v = l.partition(":")
        if k.strip().lower() == "x-appguard-reason":
            reason = v.strip()
    return f"{status} {reason}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wasm", required=True)
    ap.add_argument("--envoy", required=True)
    ap.add_argument("--requests", type=int, default=1_000_000)
    ap.add_argument("--warmup", type=int, default=100_000)
    ap.add_argument("--phases", type=int, default=3, help="measurement phases after the warm-up")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--wrk-threads", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=2, help="Envoy worker threads")
    ap.add_argument("--json", action="store_true", help="also print the summary as JSON")
    a = ap.parse_args()

    now = int(time.time())
    tpls = templates(now)
    work = tempfile.mkdtemp(prefix="appguard-soak-")
    listen, admin = free_port(), free_port()
    cfg = os.path.join(work, "envoy.json")
    with open(cfg, "w") as f:
        json.dump(envoy_config(os.path.abspath(a.wasm), listen, admin), f)
    log = open(os.path.join(work, "envoy.log"), "w")
    envoy = subprocess.Popen(
        [a.envoy, "-c", cfg, "--concurrency", str(a.concurrency), "--log-level", "warning",
         "--base-id-path", os.path.join(work, "base-id"), "--use-dynamic-base-id"],
        stdout=log, stderr=subprocess.STDOUT)
    problems = []
    summary = {"requests": 0, "phases": [], "statuses": {}, "errors": {}}
    try:
        deadline = time.time() + 30
        while True:
            if envoy.poll() is not None:
                sys.exit(f"Envoy exited:\n{open(log.name).read()[-3000:]}")
            try:
                if http_get(admin, "/ready").strip() == "LIVE":
                    break
            except OSError:
                pass
            if time.time() > deadline:
                sys.exit("Envoy not ready after 30 s")
            time.sleep(0.2)

        parts = [a.warmup] + [(a.requests - a.warmup) // a.phases] * a.phases
        parts[-1] += a.requests - sum(parts)
        started = time.time()
        for i, n in enumerate(parts):
            script = os.path.join(work, f"phase{i}.lua")
            done_dir = os.path.join(work, f"phase{i}-done")
            os.makedirs(done_dir)
            with open(script, "w") as f:
                f.write(lua_script(tpls, -(-n // a.wrk_threads), done_dir))
            t0 = time.time()
            wrk = subprocess.Popen(
                ["wrk", "-t", str(a.wrk_threads), "-c", str(a.connections), "-d", "3600s",
                 "--timeout", "10s", "-s", script, f"http://127.0.0.1:{listen}"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            while wrk.poll() is None and len(os.listdir(done_dir)) < a.wrk_threads:
                if envoy.poll() is not None:
                    break
                time.sleep(0.2)
            if wrk.poll() is None:
                wrk.send_signal(signal.SIGINT)
            stdout, stderr = wrk.communicate()
            out = subprocess.CompletedProcess(wrk.args, wrk.returncode, stdout, stderr)
            if out.returncode != 0:
                problems.append(f"wrk failed: {out.stderr[-2000:]}")
                break
            for line in out.stdout.splitlines():
                m = re.match(r"STATUS (\d+ \S+) (\d+)$", line)
                if m:
                    summary["statuses"][m.group(1)] = summary["statuses"].get(m.group(1), 0) + int(m.group(2))
                m = re.match(r"ERRORS (.*)$", line)
                if m:
                    for kv in m.group(1).split():
                        k, v = kv.split("=")
                        summary["errors"][k] = summary["errors"].get(k, 0) + int(v)
                m = re.match(r"REQUESTS (\d+)$", line)
                if m:
                    summary["requests"] += int(m.group(1))
            if envoy.poll() is not None:
                problems.append(f"Envoy exited during phase {i}")
                break
            phase = {"phase": i, "requests": n, "seconds": round(time.time() - t0, 1),
                     "rss_kib": rss_kib(envoy.pid), "heap_bytes": heap_bytes(admin)}
            summary["phases"].append(phase)
            print(f"phase {i}: {n} requests in {phase['seconds']} s, "
                  f"RSS {phase['rss_kib'] // 1024} MiB, heap {phase['heap_bytes'] // 2**20} MiB", flush=True)
        summary["seconds"] = round(time.time() - started, 1)

        # No crash, no reload.
        if envoy.poll() is not None:
            problems.append("Envoy is not running")
        else:
            st = stats(admin)
            summary["wasm_stats"] = {k: v for k, v in st.items() if k.startswith("wasm.")}
            for k in ["wasm.appguard.vm_reload", "wasm.appguard.vm_reload_success",
                      "wasm.appguard.vm_reload_failure", "wasm.appguard.vm_reload_backoff"]:
                if st.get(k, 0) != 0:
                    problems.append(f"{k} = {st.get(k)}")
        text = open(log.name, errors="replace").read()
        for bad in ["Function: proxy_on_", "panicked", "Wasm VM failed", "RuntimeError"]:
            if bad in text:
                problems.append(f"Envoy log has {bad!r}")

        # Memory flat after the warm-up.
        if len(summary["phases"]) == len(parts):
            warm = summary["phases"][0]
            last = summary["phases"][-1]
            growth = (last["rss_kib"] - warm["rss_kib"]) * 1024
            allowed = max(24 * 2**20, warm["rss_kib"] * 1024 // 10)
            summary["rss_growth_bytes"] = growth
            if growth > allowed:
                problems.append(f"RSS grew {growth // 2**20} MiB after the warm-up (allowed {allowed // 2**20})")
            heap_growth = last["heap_bytes"] - warm["heap_bytes"]
            summary["heap_growth_bytes"] = heap_growth
            if heap_growth > allowed:
                problems.append(f"heap grew {heap_growth // 2**20} MiB after the warm-up")
        else:
            problems.append("not every phase ran")

        # Every answer one the templates can produce, in their proportions.
        total = sum(summary["statuses"].values())
        if total < a.requests:
            problems.append(f"{total} responses for {a.requests} requests")
        share = {}
        for _, keys, _ in tpls:
            for k in keys:
                lo, hi = share.get(k, (0.0, 0.0))
                share[k] = (lo + (1.0 if len(keys) == 1 else 0.0), hi + 1.0)
        for k, n in sorted(summary["statuses"].items()):
            if k not in share:
                problems.append(f"unexpected answer {k!r} x{n}")
                continue
        for k, (lo, hi) in share.items():
            got = summary["statuses"].get(k, 0)
            want_lo = total * lo / len(tpls) * 0.9 - 50
            want_hi = total * hi / len(tpls) * 1.1 + 50
            if not want_lo <= got <= want_hi:
                problems.append(f"{k!r}: {got} answers, expected {int(want_lo)}..{int(want_hi)}")
        # Connections Envoy closes on purpose (431, 400 from the codec) show
        # as read errors in wrk; anything else is a problem.
        closing = sum(summary["statuses"].get(k, 0) for k in ["431 -", "400 -", "413 body_too_large"])
        errs = summary["errors"]
        if errs.get("connect", 0) or errs.get("timeout", 0) or errs.get("read", 0) > closing + 1000:
            problems.append(f"socket errors {errs}")

        # And the VM still decides each template exactly.
        for name, keys, req in tpls:
            if isinstance(req, tuple):
                continue
            got = send_once(listen, req)
            if got not in keys:
                problems.append(f"after the soak, {name!r} got {got!r}, expected {keys}")
    finally:
        envoy.terminate()
        try:
            envoy.wait(10)
        except subprocess.TimeoutExpired:
            envoy.kill()
        log.close()

    print(f"soak: {summary['requests']} requests in {summary.get('seconds')} s "
          f"with {len(tpls)} templates, Envoy --concurrency {a.concurrency}")
    for k, n in sorted(summary["statuses"].items(), key=lambda kv: -kv[1]):
        print(f"  {k:28} {n}")
    print(f"  socket errors: {summary['errors']}")
    if summary.get("wasm_stats"):
        print("  wasm stats: " + ", ".join(f"{k.split('.')[-1]}={v}" for k, v in sorted(summary["wasm_stats"].items())
                                         if "appguard" in k or "runtime" in k))
    if "rss_growth_bytes" in summary:
        print(f"  RSS after warm-up {summary['phases'][0]['rss_kib'] // 1024} MiB, at the end "
              f"{summary['phases'][-1]['rss_kib'] // 1024} MiB (growth {summary['rss_growth_bytes'] // 1024} KiB); "
              f"heap growth {summary['heap_growth_bytes'] // 1024} KiB")
    if a.json:
        print(json.dumps(summary, indent=1))
    if problems:
        print("soak FAILED:\n  " + "\n  ".join(problems))
        print(f"(Envoy log: {log.name})")
        sys.exit(1)
    print("soak passed")


if __name__ == "__main__":
    main()
