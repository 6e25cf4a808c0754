#!/usr/bin/env python3
"""A/B of appguard module builds, interleaved in one run: what a change did.

    scripts/bench_ab.py before=/tmp/before.wasm after=target/appguard.wasm
    KINDS=es256u,rs256u,hs256u,hs256 ROUNDS=4 DUR=5 scripts/bench_ab.py A=a.wasm B=b.wasm

Absolute numbers on these shared VMs drift by ±20 % (more when a
neighbour is busy), so a change is judged only against the other build
measured in the same rounds. Every variant gets its own Envoy with the
same config as `make bench` (bench.py's `kind_setup`), pinned like there;
the setups run interleaved (A B A B …) and the medians are printed with
each variant's CPU per request relative to the first.

Kinds: `hs256`, `es256`, `rs256` (one repeated token: the cache path),
`hs256u`, `es256u`, `rs256u`, `ps256u` (unique tokens: every one
verified), `forged` (the flood row's forged RS256 tokens from one client,
whose failure budget is spent after the warm-up: the refusal path) and
`delegated` (`jwt_authn` RS256 in front, appguard reading its payload)
and `full` (the full pipeline of `make bench`: token, platform, API key
and a call to the project's rate-limit service, started for the run;
`full-lease` with the per-key limit leased, as the `ag-full-lease` row;
both print the rate-limit calls per request of each round).
Needs what `make bench` builds (bench-tools for the token streams).
"""
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench as B  # noqa: E402


def main():
    variants = [a.split("=", 1) for a in sys.argv[1:]]
    if len(variants) < 2 or any(len(v) != 2 or not Path(v[1]).exists() for v in variants):
        sys.exit(__doc__)
    kinds = os.environ.get("KINDS", "es256u,hs256u").split(",")
    rounds, dur = int(os.environ.get("ROUNDS", "4")), int(os.environ.get("DUR", "5"))
    procs = B.Procs()
    workdir = Path(tempfile.mkdtemp(prefix="appguard-ab-"))
    lua = workdir / "stream.lua"
    lua.write_text(B.LUA_STREAM)
    try:
        setups = []
        rl_cluster = B.start_rls(procs, workdir)[1] if {"full", "full-lease"} & set(kinds) else None
        for kind in kinds:
            for name, path in variants:
                if kind in ("full", "full-lease"):
                    lease = B.FULL_LEASE if kind == "full-lease" else None
                    filters, clusters, terminal, ld = B.full_setup(Path(path), rl_cluster, lease)
                    e = B.Envoy(f"{kind}-{name}", filters, clusters, terminal)
                else:
                    filters, ld = B.kind_setup(kind, Path(path), lua)
                    e = B.Envoy(f"{kind}-{name}", filters)
                setups.append((kind, name, e, ld))
        for s in setups:
            s[2].start(procs, workdir)
        for s in setups:
            s[2].wait_ready()
        for s in setups:  # warm-up: JIT tiers, caches, tables
            B.run_load(s[2], [s[3]], 1)
        res = {}
        for r in range(rounds):
            for kind, name, e, ld in setups:
                out, cpu, _ = B.run_load(e, [ld], dur)
                rls = out[0]["rls_per_request"]
                res.setdefault((kind, name), []).append(
                    (cpu, out[0]["rps"], out[0]["bad"], out[0]["p99"], rls))
                B.log(f"  round {r + 1}/{rounds} {kind:8s} {name:12s} cpu {cpu:7.1f} µs/req"
                      + (f"  {rls:.3f} rate-limit calls/req" if kind.startswith("full") else ""))
                time.sleep(0.2)
        print(f"A/B, {rounds} rounds x {dur} s, interleaved; medians")
        for kind in kinds:
            first = None
            for name, _ in variants:
                v = res[(kind, name)]
                cpu = statistics.median(x[0] for x in v)
                rps = statistics.median(x[1] for x in v)
                bad = sum(x[2] for x in v)
                p99 = statistics.median(x[3] for x in v)
                rls = statistics.median(x[4] for x in v)
                first = first or cpu
                print(f"{kind:8s} {name:14s} CPU {cpu:8.1f} µs/req  {rps:9,.0f} req/s  "
                      f"p99 {B.fmt_ms(p99):>9s}  "
                      f"CPU vs {variants[0][0]} {cpu / first:5.2f}x"
                      + (f"  {rls:.3f} rate-limit calls/req" if kind.startswith("full") else "")
                      + (f"  BAD {bad}" if bad else ""))
    finally:
        procs.kill_all()


if __name__ == "__main__":
    main()
