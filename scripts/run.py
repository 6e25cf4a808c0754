#!/usr/bin/env python3
"""`make run`: the whole stack on loopback, in the foreground.

Starts an upstream echo server, the rate-limit service (counting in memory),
and Envoy with envoy/envoy.yaml loading the built module with an example
configuration; then prints the URLs and curl
lines for the example's demo requests, runs them to show the real results,
and waits. Ctrl-C stops everything.
"""
import argparse
import base64
import hashlib
import hmac
import http.server
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import importlib.util  # noqa: E402

spec = importlib.util.spec_from_file_location("render", os.path.join(HERE, "render-envoy.py"))
render = importlib.util.module_from_spec(spec)
spec.loader.exec_module(render)

import yaml  # noqa: E402

ENVOY_PORT, ADMIN_PORT, UPSTREAM_PORT = 10000, 9901, 18080
RLS_GRPC_PORT, RLS_HTTP_PORT = 18081, 18082


class Echo(http.server.BaseHTTPRequestHandler):
    """Answers 200 with what arrived, so the stripped and added headers show."""

    def _echo(self):
        n = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(n) if n else b""
        out = json.dumps({
            "upstream": "echo",
            "method": self.command,
            "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body": body.decode("utf-8", "replace"),
        }, indent=1).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = do_PUT = do_DELETE = do_OPTIONS = _echo

    def log_message(self, *args):
        pass


def wait_ready(timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{ADMIN_PORT}/ready", timeout=1) as r:
                if r.status == 200:
                    return True
        except Exception:
            time.sleep(0.2)
    return False


def mint(spec):
    """An HS256 token from a demo spec: valid for 5 minutes from now."""
    now = int(time.time())
    b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
    header = {"alg": "HS256", "typ": "JWT"}
    if spec.get("kid"):
        header["kid"] = spec["kid"]
    claims = dict(spec.get("claims", {}), iat=now, exp=now + 300)
    signing_input = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
    mac = hmac.new(base64.b64decode(spec["secret_base64"]), signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64(mac)


def demo(example):
    path = example[: -len(".json")] + ".demo.json"
    if not os.path.exists(path):
        return
    print("\nTry it (each line was just run; the result is shown after it):\n")
    for d in json.load(open(path)):
        headers = dict(d.get("headers", {}))
        if "token" in d:
            headers[d["token"]["header"]] = mint(d["token"])
        body = d.get("body")
        curl = ["curl", "-si", "-X", d["method"], f"http://127.0.0.1:{ENVOY_PORT}{d['path']}"]
        for k, v in headers.items():
            curl += ["-H", f"'{k}: {v}'"]
        if body is not None:
            curl += ["-H", "'content-type: application/json'", "-d", f"'{json.dumps(body)}'"]
        req = urllib.request.Request(
            f"http://127.0.0.1:{ENVOY_PORT}{d['path']}", method=d["method"],
            headers=dict(headers, **({"content-type": "application/json"} if body is not None else {})),
            data=json.dumps(body).encode() if body is not None else None)
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                status, reason, extra = r.status, r.headers.get("x-appguard-reason"), ""
        except urllib.error.HTTPError as e:
            status, reason = e.code, e.headers.get("x-appguard-reason")
            extra = f" retry-after={e.headers['retry-after']}" if e.headers.get("retry-after") else ""
        ok = "ok" if status == d["expect"] else f"UNEXPECTED (wanted {d['expect']})"
        print(f"  # {d['what']}")
        print(f"  {' '.join(curl)}")
        print(f"  -> {status}{' ' + reason if reason else ''}{extra}  {ok}\n")
    stats()


def stats():
    """What Envoy counted for those requests, as Prometheus scrapes it."""
    time.sleep(1.2)  # the VM memory gauge is brought up to date once a second
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{ADMIN_PORT}/stats/prometheus", timeout=5) as r:
            text = r.read().decode()
    except Exception as e:
        print(f"  (cannot read Envoy's stats: {e})\n")
        return
    lines = [l for l in text.splitlines() if l.startswith("appguard_") and not l.endswith(" 0")]
    print(f"What Envoy counted (curl -s http://127.0.0.1:{ADMIN_PORT}/stats/prometheus | grep ^appguard_):\n")
    for l in lines:
        print(f"  {l}")
    print()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--wasm", required=True)
    ap.add_argument("--envoy", required=True)
    ap.add_argument("--example", required=True)
    ap.add_argument("--ratelimit", required=True, help="the appguard-ratelimit binary")
    a = ap.parse_args()

    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", UPSTREAM_PORT), Echo)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()

    with open(os.path.join(ROOT, "envoy/envoy.yaml")) as f:
        doc = yaml.safe_load(f)
    with open(a.example) as f:
        cfg = json.dumps(json.load(f))
    work = tempfile.mkdtemp(prefix="appguard-run-")
    conf = os.path.join(work, "envoy.yaml")
    with open(conf, "w") as f:
        yaml.safe_dump(render.render(doc, a.wasm, cfg), f, sort_keys=False)
    rls_log = open(os.path.join(work, "ratelimit.log"), "w")
    rls = subprocess.Popen(
        [a.ratelimit, "--config", os.path.join(ROOT, "envoy/ratelimit.yaml"),
         "--grpc-addr", f"127.0.0.1:{RLS_GRPC_PORT}", "--http-addr", f"127.0.0.1:{RLS_HTTP_PORT}",
         # refused calls spend no other limit (ratelimit/README.md, Counting)
         "--stop-increment-when-over-limit",
         # a local demo: no load balancer to drain, Ctrl-C stops at once
         "--drain-seconds", "0"],
        stdin=subprocess.DEVNULL, stdout=rls_log, stderr=rls_log)
    log = os.path.join(work, "envoy.log")
    envoy = subprocess.Popen(
        [a.envoy, "-c", conf, "--concurrency", "2", "--base-id-path", os.path.join(work, "base-id"),
         "--use-dynamic-base-id", "--log-path", log, "--component-log-level", "wasm:info"],
        stdin=subprocess.DEVNULL)

    def stop(*_):
        for p in (envoy, rls):
            p.terminate()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
        upstream.shutdown()
        print("\nstopped.")
        sys.exit(0)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    if not wait_ready() or envoy.poll() is not None:
        print(open(log).read() if os.path.exists(log) else "no Envoy log")
        print("Envoy did not start.")
        envoy.kill()
        rls.kill()
        sys.exit(1)
    print(f"appguard is running ({a.example}):")
    print(f"  Envoy + appguard  http://127.0.0.1:{ENVOY_PORT}")
    print(f"  Envoy admin       http://127.0.0.1:{ADMIN_PORT}  (stats: /stats/prometheus)")
    print(f"  upstream echo     http://127.0.0.1:{UPSTREAM_PORT}")
    print(f"  rate-limit svc    grpc 127.0.0.1:{RLS_GRPC_PORT}, http://127.0.0.1:{RLS_HTTP_PORT}/healthcheck (envoy/ratelimit.yaml)")
    print(f"  Envoy log         {log}")
    demo(a.example)
    print("Ctrl-C stops everything.")
    while envoy.poll() is None:
        time.sleep(0.5)
    print("Envoy exited; see", log)
    rls.kill()
    upstream.shutdown()
    sys.exit(1)


if __name__ == "__main__":
    main()
