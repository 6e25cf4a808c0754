#!/usr/bin/env python3
"""`make bench`: appguard against Envoy's native filters, side by side.

Every setup is its own Envoy (generated JSON bootstrap, free 127.0.0.1
ports, `direct_response` 200 as the "upstream", so only the filters cost),
pinned with `taskset -c 0 … --concurrency 1`; `wrk -t1 -c16 --latency` runs
pinned to core 1 (the rate-limit service runs there too). The setups are
run interleaved (A B C … A B C …) over several rounds and the medians are
reported, with ratios computed per round against the peer measured in the
same round.

    scripts/bench.py                 # 3 rounds x 10 s (about 13 minutes)
    scripts/bench.py --quick         # 2 rounds x 3 s
    scripts/bench.py --memory        # also: VM memory before/after 1M requests
    scripts/bench.py --profile       # also: callgrind of the pure core (bench/core)
    scripts/bench.py --only ag-hs256,jwt-hs256   # a subset (baseline and no-op always run)
    scripts/bench.py --markdown FILE # also write the table as Markdown

CPU µs/request is the Envoy process's CPU time (utime+stime from
/proc/PID/stat, all threads) over the requests it served
(`http.ingress.downstream_rq_total`), both read just before and after wrk.

Needs (what `make bench` builds first): the module (`make build`), the
no-op module (bench/noop), `target/release/appguard-ratelimit`, and
`target/bench-core/release/bench-tools` (bench/core; mints the ES256/RS256
token streams and the RFC 9421 signed requests with the filter's own code).
HS256 tokens and forged RS256 tokens are made here with hmac/os.urandom.
"""
import argparse
import base64
import hashlib
import hmac
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from proclib import b64u, free_port, rss_kib

ROOT = Path(__file__).resolve().parent.parent
ENVOY = Path(os.environ.get("ENVOY_BIN", ROOT / ".venv/bin/envoy"))
WRK = shutil.which("wrk") or "/usr/bin/wrk"
RLS = ROOT / "target/release/appguard-ratelimit"
BENCH_TOOLS = ROOT / "target/bench-core/release/bench-tools"
BENCH_CORE = ROOT / "target/bench-core/release/bench-core"
FIXTURES = ROOT / "tests/fixtures"
CACHE_DIR = ROOT / "target/bench"

ENVOY_CPU, CLIENT_CPU = "0", "1"
ISS = "https://issuer.bench.example"
AUD = "bench-api"
SUB = "1:123456789:android:0a1b2c3d4e5f"
KID = "bench"
# The tests' HS256 secret (tests/fixtures/README.md).
SECRET = b"appguard-test-secret-0123456789-appguard-test-secret-0123456789!"
TOKEN_LIFETIME = 6 * 3600
# appguard's gauge of its Wasm VM's linear memory (Envoy has none of its own).
VM_MEMORY_STAT = "wasmcustom.appguard_vm_memory_bytes"
UNIQUE_TOKENS = 6000  # > the filter's 4096-entry verified-token cache: every token misses
API_KEY = "bench-android-key"
ANDROID_PACKAGE = "com.example.shop"
ANDROID_CERT = "14:6D:E9:83:C5:73:06:50:D8:EE:B9:95:2F:34:FC:64:16:A0:83:42:E6:1D:BE:A8:8A:04:96:B2:3F:CF:44:E5"
INSTALL_SEED_HEX = hashlib.sha256(b"appguard-bench-install-key").hexdigest()
SIGNED_BODY = '{"to": "+447700900123", "template": "otp"}'
FLOOD_IP, VALID_IP = "10.0.0.1", "10.0.0.2"
MEMORY_REQUESTS = 1_000_000

# --------------------------------------------------------------------------
# processes: every one in its own process group, all killed at the end


class Procs:
    def __init__(self):
        self.procs = []

    def start(self, args, log_path, cpu=None):
        if cpu is not None:
            args = ["taskset", "-c", cpu] + list(args)
        log = open(log_path, "ab")
        p = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True)
        log.close()
        self.procs.append(p)
        return p

    def kill_all(self):
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.time() + 5
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()
        self.procs = []


def wait_port(port, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def http_get(port, path, timeout=5):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
        return r.status, r.read().decode("utf-8", "replace")


def request(port, method="GET", path="/", headers=None, body=None):
    """One request; returns (status, headers dict, body)."""
    import http.client
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read().decode("utf-8", "replace")
    finally:
        c.close()


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)


CLK_TCK = os.sysconf("SC_CLK_TCK")

# --------------------------------------------------------------------------
# keys and tokens


def pem_der(path):
    text = Path(path).read_text()
    body = "".join(l for l in text.splitlines() if l and not l.startswith("-----"))
    return base64.b64decode(body)


def der_read(b, i):
    """(tag, content start, content end) of the DER element at i."""
    tag = b[i]
    n = b[i + 1]
    i += 2
    if n & 0x80:
        k = n & 0x7F
        n = int.from_bytes(b[i:i + k], "big")
        i += k
    return tag, i, i + n


def rsa_public_numbers(pub_pem):
    der = pem_der(pub_pem)
    _, s, _ = der_read(der, 0)             # SubjectPublicKeyInfo
    _, a, ae = der_read(der, s)            # AlgorithmIdentifier
    _, bs, be = der_read(der, ae)          # BIT STRING
    _, rs, _ = der_read(der, bs + 1)       # RSAPublicKey (after the unused-bits byte)
    _, ns, ne = der_read(der, rs)
    _, es, ee = der_read(der, ne)
    return der[ns:ne].lstrip(b"\0"), der[es:ee]


def ec_public_xy(pub_pem):
    der = pem_der(pub_pem)
    point = der[-65:]
    assert point[0] == 4, "expected an uncompressed P-256 point"
    return point[1:33], point[33:65]


def jwks_for(alg):
    if alg == "HS256":
        return {"keys": [{"kty": "oct", "kid": KID, "alg": "HS256", "k": b64u(SECRET)}]}
    if alg == "ES256":
        x, y = ec_public_xy(FIXTURES / "ec-p256-test-key.pub.pem")
        return {"keys": [{"kty": "EC", "crv": "P-256", "kid": KID, "alg": "ES256", "use": "sig",
                          "x": b64u(x), "y": b64u(y)}]}
    if alg in ("RS256", "PS256"):
        n, e = rsa_public_numbers(FIXTURES / "rsa-test-key.pub.pem")
        return {"keys": [{"kty": "RSA", "kid": KID, "alg": alg, "use": "sig", "n": b64u(n), "e": b64u(e)}]}
    raise ValueError(alg)


def claims(i, extra=None):
    now = int(time.time())
    c = {"iss": ISS, "aud": AUD, "sub": SUB, "iat": now, "exp": now + TOKEN_LIFETIME, "jti": f"bench-{i}"}
    c.update(extra or {})
    return c


def hs256_token(c):
    signing_input = b64u(json.dumps({"alg": "HS256", "typ": "JWT", "kid": KID}, separators=(",", ":"))) + "." + \
        b64u(json.dumps(c, separators=(",", ":")))
    return signing_input + "." + b64u(hmac.new(SECRET, signing_input.encode(), hashlib.sha256).digest())


def forged_rs256_token(i):
    """Well-formed, known kid, valid claims, a random 256-byte signature:
    passes every cheap check and fails only the signature."""
    signing_input = b64u(json.dumps({"alg": "RS256", "typ": "JWT", "kid": KID}, separators=(",", ":"))) + "." + \
        b64u(json.dumps(claims(f"forged-{i}"), separators=(",", ":")))
    return signing_input + "." + b64u(os.urandom(256))


def token_stream(alg, n):
    """n valid tokens of alg, one per line in a file (cached in target/bench
    while they stay valid for another hour)."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    path = CACHE_DIR / f"tokens-{alg}-{n}.txt"
    if path.exists():
        lines = path.read_text().split()
        if len(lines) == n:
            try:
                exp = json.loads(base64.urlsafe_b64decode(lines[0].split(".")[1] + "==="))["exp"]
                if exp - time.time() > 3600:
                    return path, lines
            except Exception:
                pass
    if alg == "HS256":
        lines = [hs256_token(claims(i)) for i in range(n)]
    elif alg == "RS256-forged":
        lines = [forged_rs256_token(i) for i in range(n)]
    else:
        key = FIXTURES / ("ec-p256-test-key.pem" if alg == "ES256" else "rsa-test-key.pem")
        out = subprocess.run([str(BENCH_TOOLS), "mint", "--alg", alg, "--key-pem", str(key), "--kid", KID,
                              "--count", str(n), "--lifetime", str(TOKEN_LIFETIME), "--iss", ISS,
                              "--aud", AUD, "--sub", SUB], check=True, capture_output=True, text=True)
        lines = out.stdout.split()
    assert len(lines) == n, f"{alg}: {len(lines)} tokens"
    path.write_text("\n".join(lines) + "\n")
    return path, lines


# --------------------------------------------------------------------------
# Envoy bootstraps

ROUTER = {"name": "envoy.filters.http.router",
          "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
BUFFER = {"name": "envoy.filters.http.buffer",
          "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer",
                           "max_request_bytes": 1048576}}


def wasm_filter(wasm, config=None, name="appguard"):
    cfg = {"name": name, "root_id": name, "failure_policy": "FAIL_RELOAD",
           "vm_config": {"vm_id": name, "runtime": "envoy.wasm.runtime.v8",
                         "code": {"local": {"filename": str(wasm)}}}}
    if config is not None:
        cfg["configuration"] = {"@type": "type.googleapis.com/google.protobuf.StringValue",
                                "value": json.dumps(config)}
    return {"name": "envoy.filters.http.wasm",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                             "config": cfg}}


def jwt_authn(alg, cache=False, metadata=None):
    provider = {"issuer": ISS, "audiences": [AUD], "from_headers": [{"name": "x-token"}],
                "local_jwks": {"inline_string": json.dumps(jwks_for(alg))}}
    if cache:
        provider["jwt_cache_config"] = {"jwt_cache_size": 4096}
    if metadata:
        provider["payload_in_metadata"] = metadata
    return {"name": "envoy.filters.http.jwt_authn",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
                             "providers": {"bench": provider},
                             "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "bench"}}]}}


def ratelimit_filter():
    return {"name": "envoy.filters.http.ratelimit",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit",
                             "domain": "appguard", "failure_mode_deny": True, "timeout": "0.25s",
                             "rate_limit_service": {"grpc_service": {"envoy_grpc": {"cluster_name": "ratelimit"}},
                                                    "transport_api_version": "V3"},
                             # Filter-level descriptors: the route is a direct_response (no RouteAction).
                             "rate_limits": [{"actions": [{"generic_key": {"descriptor_key": "api_key",
                                                                           "descriptor_value": "android-2026"}}]}]}}


def grpc_cluster(name, port):
    return {"name": name, "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]},
            "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}}}}


# Envoy's ratelimit filter only calls the service for a route with a
# RouteAction: a `direct_response` route has none, and the filter then skips
# the call (checked: `cluster.ratelimit.upstream_rq_total` stays 0). The
# rate-limited setups therefore route to a cluster that is never reached and
# answer with the fault filter's abort (status 200), a local reply like
# `direct_response`; appguard's full pipeline uses the same terminal.
FAULT_200 = {"name": "envoy.filters.http.fault",
             "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
                              "abort": {"http_status": 200,
                                        "percentage": {"numerator": 100, "denominator": "HUNDRED"}}}}


def static_cluster(name, port):
    return {"name": name, "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}}


def bootstrap(port, admin_port, filters, clusters, terminal="direct"):
    if terminal == "direct":
        route = {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok\n"}}}
        filters = list(filters)
    else:  # "fault": a RouteAction (for the ratelimit filter), answered by FAULT_200
        route = {"match": {"prefix": "/"}, "route": {"cluster": "never"}}
        filters = list(filters) + [FAULT_200]
        clusters = list(clusters) + [static_cluster("never", 9)]
    hcm = {"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
           "stat_prefix": "ingress", "normalize_path": True, "merge_slashes": True,
           "path_with_escaped_slashes_action": "REJECT_REQUEST",
           "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [route]}]},
           "http_filters": filters + [ROUTER]}
    return {"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
            "static_resources": {
                "listeners": [{"name": "ingress",
                               "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                               "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                               "typed_config": hcm}]}]}],
                "clusters": clusters}}


# appguard configurations


def ag_token_provider(alg, **extra):
    p = {"name": "bench", "from": [{"header": "x-token"}], "issuer": ISS, "audiences": [AUD],
         "max_lifetime_seconds": 86400}
    if alg == "HS256":
        p["keys"] = [{"kid": KID, "alg": "HS256", "secret_base64": base64.b64encode(SECRET).decode()}]
    else:
        p["jwks"] = jwks_for(alg)
    p.update(extra)
    return p


def ag_token_only(alg, **provider_extra):
    return {"default_action": "deny", "tokens": [ag_token_provider(alg, **provider_extra)],
            "routes": [{"name": "api", "match": {"prefix": "/"}, "tokens": ["bench"]}]}


def ag_full(lease=None):
    """examples/three-platform.json's mobile route, HS256 with the bench key,
    the API key and platform headers checked, one descriptor to the service
    (with `lease`, leased that many hits at a time: README, Leases)."""
    rule = {"name": "mobile-per-key", "entries": [{"type": "api_key"}]}
    if lease:
        rule["lease"] = lease
    return {
        "mode": "enforce", "default_action": "deny",
        "client_ip": {"xff_trusted_hops": 0},
        "network": {"country_header": "x-country-code", "country_deny": ["KP"]},
        "apps": [
            {"id": "shop-android", "platform": "android", "package": ANDROID_PACKAGE,
             "cert_fingerprints": [ANDROID_CERT], "token_app_ids": [SUB]},
            {"id": "shop-ios", "platform": "ios", "bundle_id": "com.example.shop", "team_id": "ABCDE12345",
             "token_app_ids": ["1:123456789:ios:6f5e4d3c2b1a"]},
            {"id": "shop-web", "platform": "web", "origins": ["https://shop.example.com"],
             "token_app_ids": ["1:123456789:web:a1b2c3d4e5f6"]}],
        "api_keys": {"header": "x-api-key", "keys": [
            {"id": "android-2026", "sha256": hashlib.sha256(API_KEY.encode()).hexdigest(), "apps": ["shop-android"]},
            {"id": "ios-2026", "sha256": hashlib.sha256(b"bench-ios-key").hexdigest(), "apps": ["shop-ios"]}]},
        "tokens": [{"name": "appcheck", "from": [{"header": "x-firebase-appcheck"}],
                    "keys": [{"kid": KID, "alg": "HS256", "secret_base64": base64.b64encode(SECRET).decode()}],
                    "issuer": ISS, "audiences": [AUD], "max_lifetime_seconds": 86400,
                    "app_claim": {"claim": "sub", "format": "firebase"},
                    "platforms": ["android", "ios", "web"]}],
        "rate_limit_service": {"cluster": "ratelimit", "domain": "appguard", "timeout_ms": 250,
                               "failure_mode": "deny"},
        "routes": [
            {"name": "health", "match": {"path": "/healthz", "methods": ["GET"]}},
            {"name": "mobile", "match": {"prefix": "/v1/mobile/"}, "platforms": ["android", "ios"],
             "api_key": "required", "tokens": ["appcheck"],
             "rate_limits": [rule]}]}


# The lease of the `ag-full-lease` row: the bench's per-key limit is a
# billion a minute, so every lease is granted and kept until the minute
# ends (a per-second limit keeps none: README, Leases).
FULL_LEASE = 100


def ag_flood():
    c = ag_token_only("RS256", failure_budget={"failures": 20, "window_seconds": 60})
    c["client_ip"] = {"xff_trusted_hops": 1}
    return c


def ag_delegated():
    return {"default_action": "deny",
            "tokens": [{"name": "bench", "from": [{"header": "x-token"}],
                        "verified_by": {"filter": "envoy.filters.http.jwt_authn", "key": "bench_payload"},
                        "issuer": ISS, "max_lifetime_seconds": 86400,
                        "app_claim": {"claim": "sub", "format": "firebase"}}],
            "apps": [{"id": "shop-android", "platform": "android", "package": ANDROID_PACKAGE,
                      "token_app_ids": [SUB]}],
            "routes": [{"name": "api", "match": {"prefix": "/"}, "tokens": ["bench"]}]}


def kind_setup(kind, wasm, lua, noop=None):
    """(filters, load) of one named setup, for the tools that measure a few
    setups of `make bench` on their own (bench_ab.py, perf_split.py):

    - `baseline`: no filter; `noop`: the no-op Wasm filter (module `noop`);
    - `hs256`, `es256`, `rs256`, `ps256`: appguard's token check with one
      repeated token (the cache path); with a `u` suffix (`hs256u`, …) a
      unique token per request (every one verified);
    - `meta`: `jwt_authn` RS256 with the payload in metadata, alone;
    - `delegated`: that `jwt_authn` in front of appguard (`verified_by`);
    - `meta-noop`: that `jwt_authn` in front of the no-op Wasm filter (the
      module `noop`, else the module given, which then must be a no-op
      variant): what any Wasm filter costs there;
    - `flood` (or `forged`): forged RS256 tokens from one client whose
      failure budget is spent after the warm-up (the refusal path).
    """
    if kind == "baseline":
        return [], Load()
    if kind == "noop":
        return [wasm_filter(noop)], Load(headers={"x-token": "abc"})
    if kind in ("meta", "delegated", "meta-noop"):
        path, _ = token_stream("RS256", UNIQUE_TOKENS)
        filters = [jwt_authn("RS256", metadata="bench_payload")]
        if kind == "delegated":
            filters.append(wasm_filter(wasm, ag_delegated()))
        if kind == "meta-noop":
            filters.append(wasm_filter(noop or wasm))
        return filters, Load(script=lua, script_args=["x-token", str(path)])
    if kind in ("flood", "forged"):
        path, _ = token_stream("RS256-forged", UNIQUE_TOKENS)
        return [wasm_filter(wasm, ag_flood())], Load(
            script=lua, script_args=["x-token", str(path)], headers={"x-forwarded-for": FLOOD_IP}, expect=401)
    unique = kind.endswith("u")
    alg = (kind[:-1] if unique else kind).upper()
    if alg not in ("HS256", "ES256", "RS256", "PS256"):
        raise ValueError(f"unknown setup kind {kind!r}")
    path, tokens = token_stream(alg, UNIQUE_TOKENS)
    load = (Load(script=lua, script_args=["x-token", str(path)]) if unique
            else Load(headers={"x-token": tokens[0]}))
    return [wasm_filter(wasm, ag_token_only(alg))], load


def ag_signing():
    return {"default_action": "deny",
            "tokens": [ag_token_provider("HS256", message_signing={"max_age_seconds": 86400})],
            "routes": [{"name": "sign", "match": {"path": "/v1/sign", "methods": ["POST"]}, "tokens": ["bench"]}]}


RATELIMIT_YAML = """# make bench: counts every request, never limits.
domain: appguard
descriptors:
  - key: api_key
    rate_limit:
      unit: minute
      requests_per_unit: 1000000000
"""

# --------------------------------------------------------------------------
# wrk

LUA_STREAM = r"""
-- args: header, file (one value per line): each request sends the next value.
local values, n, i, header = {}, 0, 0, "x-token"
function init(args)
  header = args[1]
  for line in io.lines(args[2]) do
    if #line > 0 then n = n + 1; values[n] = line end
  end
end
function request()
  i = i % n + 1
  wrk.headers[header] = values[i]
  return wrk.format()
end
"""

LUA_SIGNED = r"""
-- args: file of "signature-input<TAB>signature<TAB>content-digest" lines, body
local reqs, n, i = {}, 0, 0
function init(args)
  for line in io.lines(args[1]) do
    local a, b, c = string.match(line, "([^\t]*)\t([^\t]*)\t([^\t]*)")
    if a then n = n + 1; reqs[n] = {a, b, c} end
  end
  wrk.method = "POST"
  wrk.body = args[2]
end
function request()
  i = i % n + 1
  local r = reqs[i]
  wrk.headers["signature-input"] = r[1]
  wrk.headers["signature"] = r[2]
  wrk.headers["content-digest"] = r[3]
  return wrk.format()
end
"""


def parse_duration(s):
    m = re.match(r"([\d.]+)(us|ms|s|m)$", s)
    if not m:
        return None
    v = float(m.group(1))
    return v * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[m.group(2)]


def parse_wrk(out):
    r = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    r["rps"] = float(m.group(1)) if m else 0.0
    m = re.search(r"(\d+) requests in", out)
    r["requests"] = int(m.group(1)) if m else 0
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", out, re.M)
        r["p" + pct] = parse_duration(m.group(1)) if m else None
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    r["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: (.*)", out)
    r["socket_errors"] = m.group(1).strip() if m else ""
    return r


class Load:
    """What wrk sends: path, static headers, optional Lua script and args."""

    def __init__(self, path="/", headers=None, script=None, script_args=(), connections=16, expect=200):
        self.path, self.headers, self.script = path, headers or {}, script
        self.script_args, self.connections, self.expect = list(script_args), connections, expect

    def wrk_args(self, port, duration):
        a = ["taskset", "-c", CLIENT_CPU, WRK, "-t1", f"-c{self.connections}", f"-d{duration}s", "--latency",
             "--timeout", "10s"]
        for k, v in self.headers.items():
            a += ["-H", f"{k}: {v}"]
        if self.script:
            a += ["-s", str(self.script)]
        a.append(f"http://127.0.0.1:{port}{self.path}")
        if self.script:
            a += ["--"] + self.script_args
        return a


# --------------------------------------------------------------------------
# the bench


class Envoy:
    def __init__(self, name, filters, clusters=(), terminal="direct"):
        self.name, self.filters, self.clusters, self.terminal = name, filters, list(clusters), terminal
        self.proc = None

    def start(self, procs, workdir):
        self.port, self.admin = free_port(), free_port()
        d = workdir / self.name
        d.mkdir(parents=True, exist_ok=True)
        cfg = d / "envoy.json"
        cfg.write_text(json.dumps(bootstrap(self.port, self.admin, self.filters, self.clusters, self.terminal),
                                  indent=1))
        self.log = d / "envoy.log"
        self.proc = procs.start([str(ENVOY), "-c", str(cfg), "--concurrency", "1",
                                 "--base-id-path", str(d / "base-id"), "--use-dynamic-base-id",
                                 "--log-level", "info", "--log-path", str(self.log)],
                                d / "stdout.log", cpu=ENVOY_CPU)

    def wait_ready(self, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"envoy {self.name} exited ({self.proc.returncode}):\n{self.log_tail()}")
            try:
                if http_get(self.admin, "/ready", timeout=1)[0] == 200 and wait_port(self.port, 1):
                    return
            except Exception:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"envoy {self.name} not ready:\n{self.log_tail()}")

    def log_tail(self, n=40):
        try:
            return "\n".join(Path(self.log).read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stats(self):
        _, text = http_get(self.admin, "/stats")
        out = {}
        for line in text.splitlines():
            k, _, v = line.partition(": ")
            try:
                out[k] = int(v)
            except ValueError:
                pass
        return out

    def served(self):
        return self.stats().get("http.ingress.downstream_rq_total", 0)


def run_load(envoy, loads, duration):
    """Runs the loads (wrk processes, concurrently) against envoy; returns
    per-load wrk results and the Envoy CPU µs per request served."""
    st = envoy.stats()
    before_rq, before_rls = st.get("http.ingress.downstream_rq_total", 0), st.get(RLS_CALLS, 0)
    before_cls = {c: st.get(f"http.ingress.downstream_rq_{c}", 0) for c in STATUS_CLASSES}
    before_cpu = cpu_ticks(envoy.proc.pid)
    ps = [subprocess.Popen(l.wrk_args(envoy.port, duration), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, start_new_session=True) for l in loads]
    outs = []
    try:
        for p in ps:
            outs.append(p.communicate(timeout=duration + 60)[0])
    finally:
        for p in ps:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    after_cpu = cpu_ticks(envoy.proc.pid)
    st = envoy.stats()
    served = st.get("http.ingress.downstream_rq_total", 0) - before_rq
    rls_calls = st.get(RLS_CALLS, 0) - before_rls
    classes = {c: st.get(f"http.ingress.downstream_rq_{c}", 0) - before_cls[c] for c in STATUS_CLASSES}
    results = [parse_wrk(o) for o in outs]
    for r, o, l in zip(results, outs, loads):
        r["raw"] = o
        r["bad"] = (r["non2xx"] if l.expect == 200 else r["requests"] - r["non2xx"])
    cpu_us = (after_cpu - before_cpu) / CLK_TCK * 1e6
    results[0]["rls_per_request"] = rls_calls / served if served else 0.0
    results[0]["status_classes"] = {c: n for c, n in classes.items() if n}
    return results, (cpu_us / served if served else float("nan")), served


RLS_CALLS = "cluster.ratelimit.upstream_rq_total"
STATUS_CLASSES = ("2xx", "3xx", "4xx", "5xx")


class Setup:
    def __init__(self, key, label, envoy, load, peer=None, cached_peer=None, group="", extra_loads=None,
                 check=None):
        self.key, self.label, self.envoy, self.load = key, label, envoy, load
        self.peer, self.cached_peer, self.group = peer, cached_peer, group
        self.extra_loads = extra_loads or []  # loads run at the same time (the flood's valid traffic)
        self.check = check
        self.rounds = []


def median(xs):
    xs = [x for x in xs if x is not None and x == x]
    return statistics.median(xs) if xs else None


def fmt(v, nd=0):
    if v is None:
        return "—"
    return f"{v:,.{nd}f}"


def fmt_ms(v):
    if v is None:
        return "—"
    return f"{v * 1000:.0f} µs" if v < 1 else f"{v:.2f} ms"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10, help="seconds per run")
    ap.add_argument("--quick", action="store_true", help="2 rounds x 3 s")
    ap.add_argument("--memory", action="store_true", help="VM memory before/after 1M requests of --memory-setup")
    ap.add_argument("--memory-requests", type=int, default=MEMORY_REQUESTS)
    ap.add_argument("--memory-setup", default="ag-full",
                    help="the setup --memory drives (ag-hs256-uniq: every request a new token, the cache churning)")
    ap.add_argument("--profile", action="store_true", help="callgrind of the pure core (bench/core)")
    ap.add_argument("--only", default="", help="comma-separated setup keys (baseline and noop always run)")
    ap.add_argument("--wasm", default=os.environ.get("APPGUARD_WASM"))
    ap.add_argument("--noop-wasm", default=None)
    ap.add_argument("--markdown", default=None, help="also write the results as Markdown to this file")
    ap.add_argument("--json", default=None, help="also write the raw results as JSON to this file")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (Envoy configs and logs)")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.duration = 2, 3

    wasm = Path(args.wasm) if args.wasm else first_existing(
        "target/appguard.wasm", "target/wasm/wasm32-wasip1/release/appguard.wasm", "target/wasm32-wasip1/release/appguard.wasm")
    noop = Path(args.noop_wasm) if args.noop_wasm else first_existing(
        "target/appguard_bench_noop.wasm", "target/wasm/wasm32-wasip1/release/appguard_bench_noop.wasm",
        "target/wasm32-wasip1/release/appguard_bench_noop.wasm",
        "bench/noop/target/wasm32-wasip1/release/appguard_bench_noop.wasm")
    for what, p in [("appguard module (make build)", wasm), ("no-op module (bench/noop)", noop),
                    ("Envoy (make deps)", ENVOY), ("rate-limit service (cargo build --release -p appguard-ratelimit)", RLS),
                    ("bench-tools (bench/core)", BENCH_TOOLS)]:
        if not p or not Path(p).exists():
            sys.exit(f"bench: missing {what}: {p}")

    started = time.time()
    procs = Procs()
    workdir = Path(tempfile.mkdtemp(prefix="appguard-bench-"))

    def on_signal(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_signal)
    try:
        return bench(args, wasm, noop, procs, workdir, started)
    finally:
        procs.kill_all()
        if args.keep:
            print(f"work directory kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def first_existing(*cands):
    for c in cands:
        if (ROOT / c).exists():
            return ROOT / c
    return None


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def start_rls(procs, workdir):
    """The project's rate-limit service (release, memory backend) on the
    client core: (its process, the Envoy cluster that reaches it)."""
    rls_grpc, rls_http = free_port(), free_port()
    rl_yaml = workdir / "ratelimit.yaml"
    rl_yaml.write_text(RATELIMIT_YAML)
    rls = procs.start([str(RLS), "--config", str(rl_yaml), "--drain-seconds", "0", "--grpc-addr", f"127.0.0.1:{rls_grpc}",
                       "--http-addr", f"127.0.0.1:{rls_http}", "--log-level", "warn"],
                      workdir / "ratelimit.log", cpu=CLIENT_CPU)
    if not wait_port(rls_grpc, 20):
        raise RuntimeError("rate-limit service did not start: " + (workdir / "ratelimit.log").read_text())
    return rls, grpc_cluster("ratelimit", rls_grpc)


def full_setup(wasm, rl_cluster, lease=None):
    """appguard's full pipeline as `make bench` runs it: (filters, clusters,
    terminal, load); `lease`: the per-key limit leased that many at a time."""
    headers = {"x-firebase-appcheck": hs256_token(claims("full")), "x-api-key": API_KEY,
               "x-android-package": ANDROID_PACKAGE, "x-android-cert": ANDROID_CERT, "x-country-code": "GB"}
    return ([wasm_filter(wasm, ag_full(lease)), BUFFER], [rl_cluster], "fault",
            Load(path="/v1/mobile/profile", headers=headers))


def chain_setup(rl_cluster, token, cache=False):
    """The native peer of the full pipeline: `jwt_authn` HS256 and the
    `ratelimit` filter calling the same service (filters, clusters,
    terminal, load)."""
    return ([jwt_authn("HS256", cache=cache), ratelimit_filter()], [rl_cluster], "fault",
            Load(path="/v1/mobile/profile", headers={"x-token": token}))


def bench(args, wasm, noop, procs, workdir, started):
    load_before = os.getloadavg()
    _, rl_cluster = start_rls(procs, workdir)

    # Token streams.
    log("bench: preparing tokens")
    hs_path, hs_tokens = token_stream("HS256", UNIQUE_TOKENS)
    es_path, es_tokens = token_stream("ES256", UNIQUE_TOKENS)
    rs_path, rs_tokens = token_stream("RS256", UNIQUE_TOKENS)
    ps_path, _ = token_stream("PS256", UNIQUE_TOKENS)
    forged_path, _ = token_stream("RS256-forged", UNIQUE_TOKENS)
    hs_one, es_one, rs_one = hs_tokens[0], es_tokens[0], rs_tokens[0]
    stream_lua = workdir / "stream.lua"
    stream_lua.write_text(LUA_STREAM)
    signed_lua = workdir / "signed.lua"
    signed_lua.write_text(LUA_SIGNED)

    def stream(path, header="x-token", **kw):
        return Load(script=stream_lua, script_args=[header, str(path)], **kw)

    # Envoys.
    E = {}

    def envoy(name, filters, clusters=(), terminal="direct"):
        E[name] = Envoy(name, filters, clusters, terminal)
        return E[name]

    baseline = envoy("baseline", [])
    noop_e = envoy("noop", [wasm_filter(noop, name="noop")])
    jwt_hs = envoy("jwt-hs256", [jwt_authn("HS256")])
    jwt_hs_c = envoy("jwt-hs256-cache", [jwt_authn("HS256", cache=True)])
    ag_hs = envoy("ag-hs256", [wasm_filter(wasm, ag_token_only("HS256"))])
    jwt_es = envoy("jwt-es256", [jwt_authn("ES256")])
    jwt_es_c = envoy("jwt-es256-cache", [jwt_authn("ES256", cache=True)])
    ag_es = envoy("ag-es256", [wasm_filter(wasm, ag_token_only("ES256"))])
    jwt_rs = envoy("jwt-rs256", [jwt_authn("RS256")])
    ag_rs = envoy("ag-rs256", [wasm_filter(wasm, ag_token_only("RS256"))])
    jwt_ps = envoy("jwt-ps256", [jwt_authn("PS256")])
    ag_ps = envoy("ag-ps256", [wasm_filter(wasm, ag_token_only("PS256"))])
    *c_setup, chain_load = chain_setup(rl_cluster, hs_one)
    chain = envoy("native-chain", *c_setup)
    *c_setup, chain_c_load = chain_setup(rl_cluster, hs_one, cache=True)
    chain_c = envoy("native-chain-cache", *c_setup)
    f_filters, f_clusters, f_terminal, full_load = full_setup(wasm, rl_cluster)
    ag_f = envoy("ag-full", f_filters, f_clusters, f_terminal)
    fl_filters, fl_clusters, fl_terminal, _ = full_setup(wasm, rl_cluster, lease=FULL_LEASE)
    ag_fl_lease = envoy("ag-full-lease", fl_filters, fl_clusters, fl_terminal)
    jwt_meta = envoy("jwt-rs256-meta", [jwt_authn("RS256", metadata="bench_payload")])
    ag_del = envoy("ag-delegated", [jwt_authn("RS256", metadata="bench_payload"), wasm_filter(wasm, ag_delegated())])
    meta_noop = envoy("jwt-rs256-meta-noop", [jwt_authn("RS256", metadata="bench_payload"),
                                              wasm_filter(noop, name="noop")])
    ag_fl = envoy("ag-flood", [wasm_filter(wasm, ag_flood())])
    ag_sig = envoy("ag-signing", [wasm_filter(wasm, ag_signing()), BUFFER])

    # Loads.
    tok = lambda t: Load(headers={"x-token": t})
    forged_load = stream(forged_path, headers={"x-forwarded-for": FLOOD_IP}, expect=401)
    S = [
        Setup("baseline", "baseline: no filter", baseline, Load(), group="floor"),
        Setup("noop", "no-op Wasm filter (reads one header)", noop_e, Load(headers={"x-token": hs_one}), group="floor"),
        Setup("jwt-hs256", "jwt_authn HS256, default (no cache)", jwt_hs, tok(hs_one), group="repeated token"),
        Setup("jwt-hs256-cache", "jwt_authn HS256, jwt_cache_config", jwt_hs_c, tok(hs_one), group="repeated token"),
        Setup("ag-hs256", "appguard HS256, repeated token", ag_hs, tok(hs_one), "jwt-hs256", "jwt-hs256-cache",
              group="repeated token"),
        Setup("jwt-es256", "jwt_authn ES256, default (no cache)", jwt_es, tok(es_one), group="repeated token"),
        Setup("jwt-es256-cache", "jwt_authn ES256, jwt_cache_config", jwt_es_c, tok(es_one), group="repeated token"),
        Setup("ag-es256", "appguard ES256, repeated token", ag_es, tok(es_one), "jwt-es256", "jwt-es256-cache",
              group="repeated token"),
        Setup("native-chain", "jwt_authn HS256 + ratelimit filter (RLS)", chain, chain_load, group="full pipeline"),
        Setup("native-chain-cache", "jwt_authn HS256 cached + ratelimit filter (RLS)", chain_c, chain_c_load,
              group="full pipeline"),
        Setup("ag-full", "appguard full: token+platform+API key+RLS", ag_f,
              full_load, "native-chain", "native-chain-cache",
              group="full pipeline"),
        Setup("ag-full-lease", f"appguard full, the per-key limit leased {FULL_LEASE} at a time", ag_fl_lease,
              full_load, "native-chain", "native-chain-cache",
              group="full pipeline"),
        Setup("jwt-hs256-uniq", "jwt_authn HS256, unique tokens", jwt_hs, stream(hs_path), group="unique tokens"),
        Setup("ag-hs256-uniq", "appguard HS256, unique tokens", ag_hs, stream(hs_path), "jwt-hs256-uniq",
              group="unique tokens"),
        Setup("jwt-es256-uniq", "jwt_authn ES256, unique tokens", jwt_es, stream(es_path), group="unique tokens"),
        Setup("ag-es256-uniq", "appguard ES256, unique tokens", ag_es, stream(es_path), "jwt-es256-uniq",
              group="unique tokens"),
        Setup("jwt-rs256-uniq", "jwt_authn RS256, unique tokens", jwt_rs, stream(rs_path), group="unique tokens"),
        Setup("ag-rs256-uniq", "appguard RS256, unique tokens", ag_rs, stream(rs_path), "jwt-rs256-uniq",
              group="unique tokens"),
        Setup("jwt-ps256-uniq", "jwt_authn PS256, unique tokens", jwt_ps, stream(ps_path), group="unique tokens"),
        Setup("ag-ps256-uniq", "appguard PS256, unique tokens", ag_ps, stream(ps_path), "jwt-ps256-uniq",
              group="unique tokens"),
        Setup("jwt-rs256-meta", "jwt_authn RS256 (payload_in_metadata), unique", jwt_meta, stream(rs_path),
              group="delegated"),
        Setup("ag-delegated", "jwt_authn RS256 → appguard verified_by, unique", ag_del, stream(rs_path),
              "jwt-rs256-meta", group="delegated"),
        # The floor there: what any Wasm filter behind that jwt_authn costs.
        Setup("jwt-rs256-meta-noop", "jwt_authn RS256 (payload_in_metadata) → no-op Wasm filter, unique",
              meta_noop, stream(rs_path), "jwt-rs256-meta", group="delegated"),
        Setup("flood", "forged RS256 flood (c16) + valid RS256 (c2)", ag_fl, forged_load, "baseline", group="flood",
              extra_loads=[Load(headers={"x-token": rs_one, "x-forwarded-for": VALID_IP}, connections=2)]),
        # The refusal rate in the same shape as the baseline (one wrk, c16),
        # without the valid traffic sharing the worker and the client core.
        Setup("flood-forged-only", "forged RS256 flood (c16) alone, same Envoy", ag_fl, forged_load, "baseline",
              group="flood"),
        Setup("flood-valid-only", "valid RS256 (c2) alone, same Envoy", ag_fl,
              Load(headers={"x-token": rs_one, "x-forwarded-for": VALID_IP}, connections=2), group="flood"),
        # The control: how much the p99 of 2 connections rises when 16 others
        # saturate the same single worker, with no filter at all.
        Setup("control-flood", "no filter: c16 load + c2 (control)", baseline, Load(), group="flood",
              extra_loads=[Load(connections=2)]),
        Setup("control-c2-only", "no filter: c2 alone (control)", baseline, Load(connections=2), group="flood"),
        Setup("ag-signing", "appguard RFC 9421 signed POST (P-256), HS256 token", ag_sig, None, group="signing"),
    ]
    if args.only:
        keep = set(args.only.split(",")) | {"baseline", "noop"}
        S = [s for s in S if s.key in keep]
    used = {id(s.envoy) for s in S}
    envoys = [e for e in E.values() if id(e) in used]

    log(f"bench: starting {len(envoys)} Envoys (module {wasm}, {wasm.stat().st_size:,} bytes)")
    for e in envoys:
        e.start(procs, workdir)
    for e in envoys:
        e.wait_ready()

    # Signed requests need the listener's authority (@authority is covered).
    sig = next((s for s in S if s.key == "ag-signing"), None)
    if sig:
        ipk = subprocess.run([str(BENCH_TOOLS), "ipk", "--seed-hex", INSTALL_SEED_HEX], check=True,
                             capture_output=True, text=True).stdout.strip()
        sig_token = hs256_token(claims("signing", {"ipk": ipk}))
        authority = f"127.0.0.1:{sig.envoy.port}"
        out = subprocess.run([str(BENCH_TOOLS), "sign", "--seed-hex", INSTALL_SEED_HEX, "--count", "2000",
                              "--method", "POST", "--scheme", "http", "--authority", authority,
                              "--path", "/v1/sign", "--body", SIGNED_BODY, "--token-header", "x-token",
                              "--token", sig_token, "--created", str(int(time.time()))],
                             check=True, capture_output=True, text=True).stdout
        signed_file = workdir / "signed.txt"
        signed_file.write_text(out)
        sig.load = Load(path="/v1/sign", headers={"x-token": sig_token, "content-type": "application/json"},
                        script=signed_lua, script_args=[str(signed_file), SIGNED_BODY])

    # Sanity: one request per setup, with the expected status.
    log("bench: checking every setup answers as expected")
    for s in S:
        check_setup(s)

    # Warm-up (JIT tiers, caches, the flood's failure budget), not measured.
    for s in S:
        run_load(s.envoy, [s.load] + s.extra_loads, 1)

    stats_before = {e.name: e.stats() for e in envoys}
    for r in range(args.rounds):
        for s in S:
            res, cpu, served = run_load(s.envoy, [s.load] + s.extra_loads, args.duration)
            main_r = res[0]
            entry = {"rps": main_r["rps"], "p50": main_r["p50"], "p99": main_r["p99"], "cpu": cpu,
                     "served": served, "bad": main_r["bad"], "socket_errors": main_r["socket_errors"],
                     "rls_per_request": main_r["rls_per_request"],
                     "status_classes": main_r["status_classes"]}
            if s.extra_loads:
                v = res[1]
                entry.update({"valid_rps": v["rps"], "valid_p50": v["p50"], "valid_p99": v["p99"],
                              "valid_bad": v["bad"]})
            s.rounds.append(entry)
            log(f"  round {r + 1}/{args.rounds} {s.key:20s} {main_r['rps']:>10,.0f} req/s  "
                f"p50 {fmt_ms(main_r['p50']):>9s} p99 {fmt_ms(main_r['p99']):>9s}  cpu {cpu:7.1f} µs/req"
                + (f"  BAD {main_r['bad']} (Envoy: {main_r['status_classes']})" if main_r["bad"] else "")
                + (f"  rls/req {main_r['rls_per_request']:.2f}" if any(c["name"] == "ratelimit" for c in s.envoy.clusters)
                   else "")
                + (f"  valid p99 {fmt_ms(entry['valid_p99'])}" if s.extra_loads else ""))
            time.sleep(0.3)

    flood_stats = None
    fl = next((s for s in S if s.key == "flood"), None)
    if fl:
        st = fl.envoy.stats()
        flood_stats = {k: st.get(k, 0) - stats_before[fl.envoy.name].get(k, 0)
                       for k in st if "budget" in k or ("token_signature" in k and "deny" in k)}

    memory = None
    if args.memory:
        ms = next((s for s in S if s.key == args.memory_setup), None)
        memory = measure_memory(ms.envoy if ms and ms.envoy.proc else None, ms, args.memory_requests)

    profile = run_profile(workdir) if args.profile else None

    load_after = os.getloadavg()
    report = build_report(args, S, wasm, noop, memory, flood_stats, profile, started, load_before, load_after)
    print(report["text"])
    if args.markdown:
        Path(args.markdown).write_text(report["markdown"])
    if args.json:
        Path(args.json).write_text(json.dumps(report["json"], indent=1, default=str))
    return 0


def check_setup(s):
    env = s.envoy
    l = s.load
    headers = dict(l.headers)
    method, body = "GET", None
    if l.script and l.script.name == "stream.lua":
        headers[l.script_args[0]] = Path(l.script_args[1]).read_text().split("\n", 1)[0]
    if l.script and l.script.name == "signed.lua":
        si, sg, cd = Path(l.script_args[0]).read_text().split("\n", 1)[0].split("\t")
        headers.update({"signature-input": si, "signature": sg, "content-digest": cd})
        method, body = "POST", l.script_args[1]
    status, h, text = request(env.port, method, l.path, headers, body)
    if status != l.expect:
        raise RuntimeError(f"setup {s.key}: expected {l.expect}, got {status} "
                           f"{h.get('x-appguard-reason', '')} {text[:200]}\n{env.log_tail()}")


def measure_memory(envoy, setup, n):
    """Wasm VM memory (Envoy stats, when it has them) and process RSS before
    and after n requests through the full pipeline."""
    if not envoy or not setup:
        return {"error": "the --memory-setup is not running (see --only)"}
    log(f"bench: memory: {n:,} requests through {setup.key}")

    def snapshot():
        time.sleep(1.5)  # appguard sets its VM memory gauge from its 1 s tick
        st = envoy.stats()
        wasm = {k: v for k, v in st.items() if k.startswith("wasm") and "memory" in k.lower()}
        return {"rss_kib": rss_kib(envoy.proc.pid), "wasm_stats": wasm, "served": st.get("http.ingress.downstream_rq_total", 0)}

    before = snapshot()
    t0 = time.time()
    while envoy.served() - before["served"] < n:
        run_load(envoy, [setup.load], 20)
    after = snapshot()
    return {"requests": after["served"] - before["served"], "seconds": time.time() - t0,
            "before": before, "after": after, "setup": setup.key, "label": setup.label}


def profile_scenarios():
    """The requests the core is profiled on (`--profile`, and
    scripts/v8_profile.py): name -> (bench-core scenario, iterations)."""
    scenarios = {
        "full pipeline, cached HS256 token": ({
            "config": ag_full(), "client_ip": "127.0.0.1",
            "headers": envoy_like_headers("/v1/mobile/profile", {
                "x-firebase-appcheck": hs256_token(claims("full")), "x-api-key": API_KEY,
                "x-android-package": ANDROID_PACKAGE, "x-android-cert": ANDROID_CERT, "x-country-code": "GB"})},
            2000),
        "token only, cached HS256 token": ({
            "config": ag_token_only("HS256"), "client_ip": "127.0.0.1",
            "headers": envoy_like_headers("/", {"x-token": hs256_token(claims(0))})}, 2000),
        "token only, unique HS256 tokens": ({
            "config": ag_token_only("HS256"), "client_ip": "127.0.0.1", "unique": True,
            "token_header": "x-token", "tokens": token_stream("HS256", UNIQUE_TOKENS)[1][:200],
            "headers": envoy_like_headers("/", {})}, 200),
        "token only, unique ES256 tokens": ({
            "config": ag_token_only("ES256"), "client_ip": "127.0.0.1", "unique": True,
            "token_header": "x-token", "tokens": token_stream("ES256", UNIQUE_TOKENS)[1][:20],
            "headers": envoy_like_headers("/", {})}, 20),
        "token only, unique RS256 tokens": ({
            "config": ag_token_only("RS256"), "client_ip": "127.0.0.1", "unique": True,
            "token_header": "x-token", "tokens": token_stream("RS256", UNIQUE_TOKENS)[1][:20],
            "headers": envoy_like_headers("/", {})}, 20),
        "delegated (jwt_authn's payload from metadata)": ({
            "config": ag_delegated(), "client_ip": "127.0.0.1", "delegated": claims("delegated"),
            "headers": envoy_like_headers("/", {})}, 2000),
        "forged RS256, budget spent": ({
            "config": ag_flood(), "client_ip": "127.0.0.1", "unique": True,
            "token_header": "x-token", "tokens": token_stream("RS256-forged", UNIQUE_TOKENS)[1][:2000],
            "headers": envoy_like_headers("/", {"x-forwarded-for": FLOOD_IP})}, 2000),
    }
    ipk = subprocess.run([str(BENCH_TOOLS), "ipk", "--seed-hex", INSTALL_SEED_HEX], check=True,
                         capture_output=True, text=True).stdout.strip()
    sig_token = hs256_token(claims("signing", {"ipk": ipk}))
    line = subprocess.run([str(BENCH_TOOLS), "sign", "--seed-hex", INSTALL_SEED_HEX, "--count", "1",
                           "--method", "POST", "--scheme", "http", "--authority", "127.0.0.1:10000",
                           "--path", "/v1/sign", "--body", SIGNED_BODY, "--token-header", "x-token",
                           "--token", sig_token, "--created", str(int(time.time()))],
                          check=True, capture_output=True, text=True).stdout.split("\n")[0].split("\t")
    signed_headers = envoy_like_headers("/v1/sign", {
        "x-token": sig_token, "content-type": "application/json", "content-length": str(len(SIGNED_BODY)),
        "signature-input": line[0], "signature": line[1], "content-digest": line[2]}, method="POST")
    scenarios["signed POST (P-256 install key), cached HS256 token"] = ({
        "config": ag_signing(), "client_ip": "127.0.0.1", "headers": signed_headers, "body": SIGNED_BODY}, 20)
    return scenarios


def run_profile(workdir):
    """Instruction counts of the pure core (bench/core) under callgrind."""
    if not shutil.which("valgrind") or not BENCH_CORE.exists():
        return {"error": "valgrind or bench-core missing"}
    scenarios = profile_scenarios()
    out = {}
    for name, (sc, iters) in scenarios.items():
        f = workdir / (re.sub(r"\W+", "-", name) + ".json")
        f.write_text(json.dumps(sc))
        base = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={f}.base.cg",
                               str(BENCH_CORE), str(f), "1"], capture_output=True, text=True)
        run = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={f}.cg",
                              str(BENCH_CORE), str(f), str(iters + 1)], capture_output=True, text=True)
        total = callgrind_total(f"{f}.cg")
        base_total = callgrind_total(f"{f}.base.cg")
        per = (total - base_total) / iters if total and base_total else None
        top = callgrind_top(f"{f}.cg", iters)
        out[name] = {"instructions_per_request": per, "iterations": iters, "stdout": run.stdout.strip(),
                     "top": top}
    return out


def callgrind_total(path):
    try:
        for line in open(path):
            if line.startswith("summary:") or line.startswith("totals:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def callgrind_top(path, iters, n=14):
    """The heaviest functions under `policy::evaluate*` (inclusive), per request."""
    if not shutil.which("callgrind_annotate"):
        return []
    r = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", path],
                       capture_output=True, text=True)
    rows, seen = [], set()
    for line in r.stdout.splitlines():
        m = re.match(r"\s*([\d,]+)\s+\(\s*([\d.]+)%\)\s+([^:\s]+):(.*?)(\s\[.*\])?$", line)
        if not m or "=>" in line:
            continue
        fn = m.group(4).strip()
        if fn in seen or "bench_core" in fn or "lang_start" in fn or "backtrace" in fn or fn.startswith("???") or fn.startswith("0x") \
                or "libc_start" in fn or "(below main)" in fn or fn == "main":
            continue
        seen.add(fn)
        rows.append((int(m.group(1).replace(",", "")) // max(iters, 1), float(m.group(2)), fn[:150]))
    return rows[:n]


def envoy_like_headers(path, extra, method="GET"):
    """The request headers as Envoy hands them to the filter for a wrk request."""
    h = [[":authority", "127.0.0.1:10000"], [":path", path], [":method", method], [":scheme", "http"]]
    h += [[k.lower(), v] for k, v in extra.items()]
    h += [["x-forwarded-proto", "http"], ["x-request-id", "0b0e4c1c-3c1a-4d0e-9a55-6f3c2b7e8d9a"]]
    return h


# --------------------------------------------------------------------------
# report


def build_report(args, S, wasm, noop, memory, flood_stats, profile, started, load_before, load_after):
    by = {s.key: s for s in S}

    def med(s, k):
        return median([r.get(k) for r in s.rounds])

    def ratio(a, b, k="rps"):
        """Median over rounds of a/b, both measured in the same round."""
        if a not in by or b not in by:
            return None
        rs = [x[k] / y[k] for x, y in zip(by[a].rounds, by[b].rounds) if x.get(k) and y.get(k)]
        return median(rs)

    def cpu_ratio(a, b):
        """Median over rounds of cpu(a)/cpu(b): > 1 means b is cheaper than a."""
        if a not in by or b not in by:
            return None
        return ratio_cpu(by, a, b)

    def cpu_delta(a, b):
        if a not in by or b not in by:
            return None
        return median([x["cpu"] - y["cpu"] for x, y in zip(by[a].rounds, by[b].rounds)])

    rows = []
    for s in S:
        rows.append({
            "key": s.key, "label": s.label, "group": s.group,
            "rps": med(s, "rps"), "p50": med(s, "p50"), "p99": med(s, "p99"), "cpu": med(s, "cpu"),
            "vs_baseline": ratio(s.key, "baseline"), "vs_noop": ratio(s.key, "noop"),
            "cpu_over_noop": cpu_delta(s.key, "noop"),
            "peer": s.peer, "vs_peer": ratio(s.key, s.peer) if s.peer else None,
            "cached_peer": s.cached_peer, "vs_cached_peer": ratio(s.key, s.cached_peer) if s.cached_peer else None,
            "bad": sum(r["bad"] for r in s.rounds),
            "bad_classes": sum_classes([r.get("status_classes", {}) for r in s.rounds]),
            "cpu_vs_peer": cpu_ratio(s.peer, s.key) if s.peer else None,
            "cpu_vs_cached_peer": cpu_ratio(s.cached_peer, s.key) if s.cached_peer else None,
            "valid_p99": med(s, "valid_p99") if s.extra_loads else None,
            "valid_rps": med(s, "valid_rps") if s.extra_loads else None,
            "rls_per_request": med(s, "rls_per_request")
            if any(c["name"] == "ratelimit" for c in s.envoy.clusters) else None,
        })
    R = {r["key"]: r for r in rows}

    targets = []

    def target(name, value, goal, ok, unit=""):
        if value is None:
            targets.append((name, "not measured", goal, None))
        else:
            targets.append((name, f"{value:.2f}{unit}", goal, ok(value)))

    target("HS256 repeated token vs jwt_authn default (req/s)", R.get("ag-hs256", {}).get("vs_peer"), "≥ 1.30×",
           lambda v: v >= 1.3, "×")
    target("ES256 repeated token vs jwt_authn default (req/s)", R.get("ag-es256", {}).get("vs_peer"), "≥ 1.30×",
           lambda v: v >= 1.3, "×")
    target("HS256 repeated token vs jwt_authn cached (req/s)", R.get("ag-hs256", {}).get("vs_cached_peer"),
           "≥ 0.85× (aim)", lambda v: v >= 0.85, "×")
    target("ES256 repeated token vs jwt_authn cached (req/s)", R.get("ag-es256", {}).get("vs_cached_peer"),
           "≥ 0.85× (aim)", lambda v: v >= 0.85, "×")
    target("HS256 repeated token CPU above the no-op floor", R.get("ag-hs256", {}).get("cpu_over_noop"),
           "≤ 3 µs", lambda v: v <= 3, " µs")
    target("ES256 repeated token CPU above the no-op floor", R.get("ag-es256", {}).get("cpu_over_noop"),
           "≤ 3 µs", lambda v: v <= 3, " µs")
    target("unique HS256 vs jwt_authn (req/s)", R.get("ag-hs256-uniq", {}).get("vs_peer"), "≥ 1.00×",
           lambda v: v >= 1.0, "×")
    target("unique ES256 vs jwt_authn (req/s)", R.get("ag-es256-uniq", {}).get("vs_peer"), "≥ 0.90×",
           lambda v: v >= 0.9, "×")
    target("full pipeline vs jwt_authn + ratelimit (req/s)", R.get("ag-full", {}).get("vs_peer"), "≥ 1.00×",
           lambda v: v >= 1.0, "×")
    if "ag-full" in R and "baseline" in R:
        target("full pipeline CPU vs baseline CPU", ratio_cpu(by, "ag-full", "baseline"), "≤ 2.00×",
               lambda v: v <= 2.0, "×")
    target(f"full pipeline, per-key limit leased {FULL_LEASE} at a time, vs jwt_authn + ratelimit (req/s)",
           R.get("ag-full-lease", {}).get("vs_peer"), "(an option: one call per lease, README)",
           lambda v: None, "×")
    if "ag-full-lease" in R and "baseline" in R:
        target(f"full pipeline, leased {FULL_LEASE} at a time, CPU vs baseline CPU",
               ratio_cpu(by, "ag-full-lease", "baseline"), "(for reading the row above)", lambda v: None, "×")
    target("delegated RS256 (unique) vs jwt_authn alone (req/s)", R.get("ag-delegated", {}).get("vs_peer"),
           "≥ 0.90×", lambda v: v >= 0.9, "×")
    target("the no-op Wasm filter behind that jwt_authn vs jwt_authn alone (req/s)",
           R.get("jwt-rs256-meta-noop", {}).get("vs_peer"), "(the floor of the row above)", lambda v: None, "×")
    if "ag-delegated" in R and "jwt-rs256-meta-noop" in R:
        target("delegated: appguard's CPU above that floor", cpu_delta("ag-delegated", "jwt-rs256-meta-noop"),
               "(for reading the row above)", lambda v: None, " µs")
    if "ag-rs256-uniq" in R:
        cpu = R["ag-rs256-uniq"]["cpu"]
        target("wasm RS256 speed-up vs PERF.md's pure-rust ~1400 µs/request", 1400 / cpu if cpu else None,
               "≥ 3×", lambda v: v >= 3, "×")
    target("forged-token refusals vs baseline req/s, with the valid c2 traffic on the same worker",
           R.get("flood", {}).get("vs_peer"), "≥ 0.50×", lambda v: v >= 0.5, "×")
    target("forged-token refusals vs baseline req/s, flood alone (c16, as the baseline)",
           R.get("flood-forged-only", {}).get("vs_peer"), "≥ 0.50×", lambda v: v >= 0.5, "×")
    if "flood" in R and "control-flood" in R:
        a, b = R["flood"]["rps"], R["control-flood"]["rps"]
        target("the flood's refusals/s vs the no-filter control's c16 req/s under the same two loads",
               a / b if a and b else None, "(for reading the first refusal row)", lambda v: None, "×")
    if "flood" in R and "flood-valid-only" in R:
        a, b = R["flood"]["valid_p99"], R["flood-valid-only"]["p99"]
        target("valid p99 during the flood vs without it", a / b if a and b else None, "≤ 2.00×",
               lambda v: v <= 2.0, "×")
    if "control-flood" in R and "control-c2-only" in R:
        a, b = R["control-flood"]["valid_p99"], R["control-c2-only"]["p99"]
        target("control, no filter: c2 p99 under a c16 load vs alone", a / b if a and b else None,
               "(for reading the row above)", lambda v: None, "×")
    size = wasm.stat().st_size
    target("module size", size / 1048576, "≤ 1.00 MiB", lambda v: v <= 1.0, " MiB")
    target("HS256 repeated token vs jwt_authn default (CPU/request ratio)", R.get("ag-hs256", {}).get("cpu_vs_peer"),
           "≥ 1.30× (same target, in CPU)", lambda v: v >= 1.3, "×")
    target("full pipeline vs native chain (CPU/request ratio)", R.get("ag-full", {}).get("cpu_vs_peer"),
           "≥ 1.00× (same target, in CPU)", lambda v: v >= 1.0, "×")
    if memory and "after" in memory:
        vm = [m.get("wasm_stats", {}).get(VM_MEMORY_STAT) for m in (memory["before"], memory["after"])]
        if None not in vm:
            target(f"appguard VM memory growth over {memory['requests']:,} {memory.get('setup', 'ag-full')} requests",
                   (vm[1] - vm[0]) / 1048576, "≤ 1 MiB", lambda v: v <= 1.0, " MiB")
        growth = (memory["after"]["rss_kib"] - memory["before"]["rss_kib"]) / 1024
        target(f"Envoy RSS growth over {memory['requests']:,} {memory.get('setup', 'ag-full')} requests", growth, "≤ 1 MiB (VM)",
               lambda v: v <= 1.0, " MiB")

    machine = machine_info()
    shown, skip = [], False
    for a in sys.argv[1:]:  # the options that change what is measured
        if skip:
            skip = False
        elif a in ("--wasm", "--noop-wasm", "--markdown", "--json"):
            skip = True
        elif not a.startswith(("--wasm=", "--noop-wasm=", "--markdown=", "--json=")):
            shown.append(a)
    cmd = "make bench" + (" BENCH_ARGS='" + " ".join(shown) + "'" if shown else "")
    head = (f"appguard bench — {time.strftime('%Y-%m-%d %H:%M %Z')}, {machine}\n"
            f"command: {cmd}  ({args.rounds} rounds × {args.duration} s, interleaved; medians; "
            f"ratios are medians of same-round ratios)\n"
            f"load average before/after: {load_before[0]:.2f} / {load_after[0]:.2f}; "
            f"total {time.time() - started:.0f} s\n"
            f"module: {wasm.name} {size:,} bytes ({size / 1048576:.2f} MiB); no-op module {noop.stat().st_size:,} bytes")

    md = []
    md.append("| setup | req/s | p50 | p99 | CPU µs/req | vs baseline | vs no-op | CPU over no-op "
              "| vs peer, req/s (which) | vs peer, CPU |")
    md.append("|---|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for r in rows:
        peer, cpu_peer = "", ""
        if r["peer"]:
            cpu_peer = f"{fmt(r['cpu_vs_peer'], 2)}×"
        if r["cached_peer"]:
            cpu_peer += f"; {fmt(r['cpu_vs_cached_peer'], 2)}× (cached)"
        if r["peer"]:
            peer = f"{fmt(r['vs_peer'], 2)}× ({r['peer']})"
        if r["cached_peer"]:
            peer += f"; {fmt(r['vs_cached_peer'], 2)}× ({r['cached_peer']})"
        label = f"`{r['key']}` {r['label']}"
        if r["bad"]:
            label += f" **({r['bad']} unexpected statuses; Envoy saw {r['bad_classes']})**"
        if r["rls_per_request"] is not None and r["rls_per_request"] < 0.98:
            label += f" **(only {r['rls_per_request']:.2f} rate-limit calls per request)**"
        md.append(f"| {label} | {fmt(r['rps'])} | {fmt_ms(r['p50'])} | {fmt_ms(r['p99'])} | {fmt(r['cpu'], 1)} | "
                  f"{fmt(r['vs_baseline'], 2)}× | {fmt(r['vs_noop'], 2)}× | {fmt(r['cpu_over_noop'], 1)} | {peer} "
                  f"| {cpu_peer} |")
    if "flood" in R:
        f = R["flood"]
        md.append("")
        md.append(f"Flood: {fmt(f['rps'])} refusals/s (401 `token_signature`) from one client with the budget spent, "
                  f"{fmt(f['vs_baseline'], 2)}× baseline req/s; valid RS256 traffic at the same time "
                  f"(second wrk, -c2, cached token, another client IP): {fmt(f['valid_rps'])} req/s, "
                  f"p99 {fmt_ms(f['valid_p99'])} vs {fmt_ms(R.get('flood-valid-only', {}).get('p99'))} without the flood.")
        if flood_stats:
            md.append("Envoy stats over the run: " + ", ".join(f"`{k}` +{v:,}" for k, v in sorted(flood_stats.items())))
    md.append("")
    md.append("| target | measured | goal | |")
    md.append("|---|---:|---|---|")
    for name, val, goal, ok in targets:
        md.append(f"| {name} | {val} | {goal} | {'met' if ok else ('—' if ok is None else '**missed**')} |")
    if memory:
        md.append("")
        if "after" in memory:
            b, a = memory["before"], memory["after"]
            md.append(f"Memory over {memory['requests']:,} requests of `{memory.get('setup')}` "
                      f"({memory.get('label')}, {memory['seconds']:.0f} s): "
                      f"Envoy RSS {b['rss_kib'] / 1024:.1f} → {a['rss_kib'] / 1024:.1f} MiB"
                      + (f"; appguard's VM memory (`{VM_MEMORY_STAT}`, the Wasm linear memory) "
                         f"{b['wasm_stats'][VM_MEMORY_STAT] / 1048576:.2f} → {a['wasm_stats'][VM_MEMORY_STAT] / 1048576:.2f} MiB"
                         if VM_MEMORY_STAT in b["wasm_stats"] and VM_MEMORY_STAT in a["wasm_stats"]
                         else "; no VM memory gauge in /stats (a module without `appguard_vm_memory_bytes`)"))
        else:
            md.append(f"Memory: {memory.get('error')}")
    if profile:
        md.append("")
        md.append("Pure core under callgrind (native, bench/core; instructions per request):")
        md.append("")
        for name, p in profile.items():
            if "instructions_per_request" in p:
                md.append(f"- {name}: {fmt(p['instructions_per_request'])} instructions/request")
    markdown = head.replace("\n", "  \n") + "\n\n" + "\n".join(md) + "\n"
    text = head + "\n\n" + "\n".join(md) + "\n"
    if profile:
        text += "\ncallgrind top (inclusive) per scenario:\n"
        for name, p in profile.items():
            text += f"\n== {name}\n"
            for ir, pct, fn in p.get("top", []):
                text += f"  {ir:>10,} instr/request (incl.) {pct:5.1f}%  {fn}\n"
    return {"text": text, "markdown": markdown,
            "json": {"rows": rows, "targets": targets, "memory": memory, "flood_stats": flood_stats,
                     "profile": profile, "machine": machine,
                     "rounds": {s.key: s.rounds for s in S}}}


def sum_classes(dicts):
    out = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = out.get(k, 0) + v
    return out


def ratio_cpu(by, a, b):
    rs = [x["cpu"] / y["cpu"] for x, y in zip(by[a].rounds, by[b].rounds) if x.get("cpu") and y.get("cpu")]
    return median(rs)


def machine_info():
    model = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"nproc {os.cpu_count()}, CPU {model}"


if __name__ == "__main__":
    sys.exit(main())
