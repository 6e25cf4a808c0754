#!/usr/bin/env python3
"""Where the core's time goes inside V8, by function: `make v8-profile`.

    make v8-profile                                  # every scenario
    make v8-profile V8_ARGS="unique HS256"           # scenarios whose name has these words
    scripts/v8_profile.py --wasm PATH --top 30 forged

callgrind (`make bench BENCH_ARGS=--profile`) counts the native build's
instructions, which is not what the module costs in Envoy: V8 compiles the
Wasm, and code that native LLVM inlines may stay calls there (the module is
built for size). This runs the same harness, bench/core's `bench-core`,
built for wasm32-wasip1 like the module (same flags and std build,
`opt-level = "s"` with LTO; without wasm-opt, which V8 compiles
anyway), in
Node's V8 under `--cpu-prof` with Envoy's V8 flag (`--no-liftoff`: every
function compiled by TurboFan up front), and prints per scenario the time per request
and the functions with the most samples (self, then inclusive), with Rust
names demangled (`llvm-cxxfilt`). The scenarios are `make bench
--profile`'s (bench.py `profile_scenarios`).

The time per request includes the harness's own work per iteration (one
clock read through WASI, the outcome count; with unique tokens, a fresh
verified-token cache) and Node's WASI, not Envoy's host calls: read it
against the other scenarios and against a change, not against `make bench`.
Needs node (18 or later) and what `make bench` builds for the token
streams (bench-tools); names are demangled with `llvm-cxxfilt` where it
is installed (LLVM's tools).
"""
import argparse
import collections
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench as B  # noqa: E402

WASM = B.ROOT / "target/wasm-v8/wasm32-wasip1/release/bench-core.wasm"

# V8 as Envoy configures it (proxy-wasm-cpp-host's src/v8/v8.cc): no
# Liftoff, every function compiled by TurboFan up front, so that the times
# do not depend on when V8 would have tiered a function up.
V8_FLAGS = ["--no-warnings", "--no-liftoff"]

# Runs a WASI command module with its arguments (the scenario file is read
# through the /tmp preopen) and exits with its status.
RUNNER = r"""
const fs = require('fs');
const { WASI } = require('wasi');
const [wasm, ...args] = process.argv.slice(2);
const wasi = new WASI({ version: 'preview1', args: ['bench-core', ...args], env: {},
                        returnOnExit: true, preopens: { '/tmp': '/tmp' } });
const inst = new WebAssembly.Instance(new WebAssembly.Module(fs.readFileSync(wasm)),
                                      { wasi_snapshot_preview1: wasi.wasiImport });
process.exitCode = wasi.start(inst);
"""

# Frames of the harness and of Node, not of the core.
HARNESS = re.compile(r"^(\(root\)|\(program\)|\(garbage collector\)|\(idle\)|\(anon\)|Module|Instance|"
                     r"executeUserEntryPoint|start|_start|__main_void|__original_main|GenericJSToWasmWrapper|"
                     r"compileForInternalLoader|.*lang_start.*|.*__rust_begin_short_backtrace.*|"
                     r"std::panicking::.*|.*catch_unwind.*|bench_core::.*|Module\..*|.*command_export)$")


def demangle(names):
    """Rust names without their crate hashes, in the order given (as they
    are, without llvm-cxxfilt)."""
    if not names or not shutil.which("llvm-cxxfilt"):
        return names
    out = subprocess.run(["llvm-cxxfilt"], input="\n".join(names), capture_output=True, text=True).stdout
    lines = out.split("\n")
    return [re.sub(r"\[[0-9a-f]{16}\]", "", line) for line in lines[:len(names)]]


def profile_once(node, runner, wasm, scenario_file, iterations, workdir):
    """(ns per iteration, self samples, inclusive samples, total samples)."""
    for f in workdir.glob("*.cpuprofile"):
        f.unlink()
    r = subprocess.run([node, *V8_FLAGS, "--cpu-prof", f"--cpu-prof-dir={workdir}",
                        "--cpu-prof-interval", "50", str(runner), str(wasm), str(scenario_file), str(iterations)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"bench-core failed: {r.stderr.strip() or r.stdout.strip()}")
    ns = json.loads(r.stdout.strip().splitlines()[0])["ns_per_iteration"]
    prof = json.loads(next(workdir.glob("*.cpuprofile")).read_text())
    nodes = {n["id"]: n for n in prof["nodes"]}
    parent = {c: n["id"] for n in prof["nodes"] for c in n.get("children", [])}
    own, incl = collections.Counter(), collections.Counter()
    for s in prof["samples"]:
        own[nodes[s]["callFrame"]["functionName"] or "(anon)"] += 1
        seen, i = set(), s
        while i is not None:
            name = nodes[i]["callFrame"]["functionName"] or "(anon)"
            if name not in seen:
                incl[name] += 1
                seen.add(name)
            i = parent.get(i)
    return ns, own, incl, len(prof["samples"])


def timed(node, runner, wasm, scenario_file, iterations, rounds=3):
    """The best ns per iteration of `rounds` runs without the profiler."""
    best = None
    for _ in range(rounds):
        r = subprocess.run([node, *V8_FLAGS, str(runner), str(wasm), str(scenario_file), str(iterations)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"bench-core failed: {r.stderr.strip() or r.stdout.strip()}")
        ns = json.loads(r.stdout.strip().splitlines()[0])["ns_per_iteration"]
        best = ns if best is None else min(best, ns)
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("words", nargs="*", help="profile only scenarios whose name has all these words")
    ap.add_argument("--wasm", help=f"bench-core built for wasm32-wasip1 (default: {WASM.relative_to(B.ROOT)})")
    ap.add_argument("--top", type=int, default=20, help="functions listed per table")
    ap.add_argument("--seconds", type=float, default=2.0, help="profiled time per scenario")
    args = ap.parse_args()
    node = shutil.which("node")
    if not node:
        sys.exit("needs node (18 or later; make wasm-test uses it too)")
    wasm = Path(args.wasm) if args.wasm else WASM
    if not wasm.exists():
        sys.exit("bench-core.wasm is missing: make v8-profile builds it")
    scenarios = {name: v for name, v in B.profile_scenarios().items()
                 if all(w.lower() in name.lower() for w in args.words)}
    if not scenarios:
        sys.exit(f"no scenario matches {args.words}: {', '.join(B.profile_scenarios())}")
    # /tmp: the runner's one preopen.
    with tempfile.TemporaryDirectory(prefix="appguard-v8-", dir="/tmp") as tmp:
        work = Path(tmp)
        runner = work / "run.js"
        runner.write_text(RUNNER)
        for name, (scenario, iterations) in scenarios.items():
            f = work / (re.sub(r"\W+", "-", name) + ".json")
            f.write_text(json.dumps(scenario))
            # Short runs are dominated by warming up (the first pass over
            # the token stream, memory growing): size the runs from one of
            # a second or so, then time and profile runs of that size.
            ns = timed(node, runner, wasm, f, max(iterations, 2000), rounds=1)
            ns = timed(node, runner, wasm, f, max(2000, int(1e9 / max(ns, 1))), rounds=1)
            n = max(2000, int(args.seconds * 1e9 / max(ns, 1)))
            ns = timed(node, runner, wasm, f, n)
            _, own, incl, total = profile_once(node, runner, wasm, f, n, work)
            print(f"\n## {name}: {ns / 1000:.2f} µs per request in V8 (best of 3 × {n:,} requests; "
                  f"{total:,} samples under --cpu-prof)")
            for title, counter in (("self", own), ("inclusive", incl)):
                rows = [(k, c) for k, c in counter.most_common() if not HARNESS.match(k)][:args.top]
                names = demangle([k for k, _ in rows])
                print(f"\n{title}:")
                for (k, c), shown in zip(rows, names):
                    if HARNESS.match(shown):
                        continue
                    print(f"  {100 * c / total:5.1f} %  {shown[:140]}")


if __name__ == "__main__":
    main()
