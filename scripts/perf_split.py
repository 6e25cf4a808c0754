#!/usr/bin/env python3
"""Where Envoy's CPU goes per request, by code region, under `perf record`.

    scripts/perf_split.py                          # baseline noop hs256 meta delegated flood
    scripts/perf_split.py hs256 flood              # some of them
    scripts/perf_split.py chain full               # jwt_authn + ratelimit against appguard's full pipeline
    WASM=/tmp/a.wasm DUR=8 scripts/perf_split.py delegated

Each setup is one Envoy from `make bench` (same configs, pinned the same
way), loaded by wrk for DUR seconds while `perf record -p PID` samples it.
The samples are split by where the CPU was:

- `wasm`: code V8 generated at run time ([JIT]): appguard's (or the no-op
  module's) compiled Wasm and V8's call wrappers around it;
- `envoy`: Envoy's own binary: HTTP, the native filters, the Wasm host
  (header maps, properties, shared data, stats) and V8's runtime;
- `kernel` and `libc`.

Each share is turned into µs of CPU per request with the Envoy process's
CPU time over the requests it served, as `make bench` counts it. Envoy's
binary is stripped, so perf cannot name functions inside it; the split
still says whether a cost is in the module's code or in what the module
asks of the host. Needs `perf` (linux-perf) and a kernel that lets a user
profile its own processes (perf_event_paranoid <= 2).
"""
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench as B  # noqa: E402

KINDS = ["baseline", "noop", "hs256", "meta", "delegated", "flood"]


def split(data):
    """Share of samples per region, from `perf report --sort dso`."""
    out = subprocess.run(["perf", "report", "-i", str(data), "--no-children", "--sort", "dso", "-g", "none",
                          "--stdio"], capture_output=True, text=True).stdout
    shares = {"wasm": 0.0, "envoy": 0.0, "kernel": 0.0, "libc": 0.0, "other": 0.0}
    for line in out.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(.+?)\s*$", line)
        if not m:
            continue
        pct, dso = float(m.group(1)), m.group(2)
        region = ("wasm" if dso.startswith("[JIT]") else "envoy" if dso == "envoy" else
                  "kernel" if "kernel" in dso else "libc" if dso.startswith("libc") else "other")
        shares[region] += pct / 100
    return shares


def main():
    if not shutil.which("perf"):
        sys.exit("perf is missing (Debian: apt-get install linux-perf)")
    kinds = sys.argv[1:] or KINDS
    wasm = Path(os.environ.get("WASM", B.ROOT / "target/appguard.wasm"))
    noop = Path(os.environ.get("NOOP_WASM", B.ROOT / "target/appguard_bench_noop.wasm"))
    dur = int(os.environ.get("DUR", "8"))
    for p in (wasm, noop):
        if not p.exists():
            sys.exit(f"{p} is missing: make build (and make bench once, for the no-op module)")
    procs = B.Procs()
    work = Path(tempfile.mkdtemp(prefix="appguard-perf-"))
    lua = work / "stream.lua"
    lua.write_text(B.LUA_STREAM)
    rows = []
    try:
        # The full pipeline and the native chain call the rate-limit service
        # (on the client core, as in `make bench`).
        rl_cluster = B.start_rls(procs, work)[1] if {"full", "full-lease", "chain"} & set(kinds) else None
        for kind in kinds:
            if kind in ("full", "full-lease"):
                lease = B.FULL_LEASE if kind == "full-lease" else None
                filters, clusters, terminal, load = B.full_setup(wasm, rl_cluster, lease)
            elif kind == "chain":
                filters, clusters, terminal, load = B.chain_setup(rl_cluster, B.hs256_token(B.claims("full")))
            else:
                (filters, load), clusters, terminal = B.kind_setup(kind, wasm, lua, noop), (), "direct"
            e = B.Envoy(f"perf-{kind}", filters, clusters, terminal)
            e.start(procs, work)
            e.wait_ready()
            B.run_load(e, [load], 3)  # warm-up: V8 tiers the hot functions up
            data = work / f"{kind}.perf"
            rec = subprocess.Popen(["perf", "record", "-F", "2000", "-o", str(data), "-p", str(e.proc.pid)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            res, cpu, _ = B.run_load(e, [load], dur)
            rec.send_signal(2)
            rec.wait()
            os.killpg(e.proc.pid, signal.SIGTERM)  # one Envoy at a time on the pinned core
            e.proc.wait(timeout=10)
            shares = split(data)
            rows.append((kind, cpu, res[0]["rps"], res[0]["bad"], shares))
            B.log(f"  {kind}: {cpu:.1f} µs/request")
    finally:
        procs.kill_all()
    print(f"CPU µs per request by region (perf record, {dur} s per setup; module {wasm.name})")
    print(f"{'setup':10s} {'total':>7s} {'wasm':>7s} {'envoy':>7s} {'kernel':>7s} {'libc':>7s} {'req/s':>8s}")
    for kind, cpu, rps, bad, s in rows:
        print(f"{kind:10s} {cpu:7.1f} {cpu * s['wasm']:7.1f} {cpu * s['envoy']:7.1f} {cpu * s['kernel']:7.1f} "
              f"{cpu * (s['libc'] + s['other']):7.1f} {rps:8,.0f}" + (f"  BAD {bad}" if bad else ""))


if __name__ == "__main__":
    main()
