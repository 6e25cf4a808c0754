#!/usr/bin/env python3
"""The workspace's `rust-version` (Cargo.toml; ratelimit/Dockerfile calls it
"the oldest it builds with") must be at least the `rust-version` of every
locked dependency: cargo refuses to build a package whose rust-version is
above the running rustc ("cannot be built because it requires rustc 1.88").
Exit 1, naming the packages, when a dependency needs a newer Rust."""
import json, re, subprocess, sys
ROOT = subprocess.check_output(["git", "rev-parse", "--show-toplevel"], text=True).strip()
ws = re.search(r'^rust-version\s*=\s*"([^"]+)"', open(f"{ROOT}/Cargo.toml").read(), re.M).group(1)
meta = json.loads(subprocess.check_output(
    ["cargo", "metadata", "--format-version", "1", "--locked"], cwd=ROOT))
v = lambda s: (tuple(int(x) for x in s.split(".")) + (0, 0))[:3]
# dependencies of the workspace members' normal/build edges (what `cargo build` compiles)
nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
pk = {p["id"]: p for p in meta["packages"]}
seen, todo = set(), list(meta["workspace_members"])
while todo:
    i = todo.pop()
    if i in seen: continue
    seen.add(i)
    for d in nodes[i]["deps"]:
        if any(k["kind"] in (None, "build") for k in d["dep_kinds"]):
            todo.append(d["pkg"])
bad = sorted({(p["name"], p["version"], p["rust_version"]) for i in seen for p in [pk[i]]
              if p.get("rust_version") and v(p["rust_version"]) > v(ws)})
for n, ver, rv in bad:
    print(f"{n} {ver} needs rustc {rv}, above the workspace's rust-version {ws}")
sys.exit(1 if bad else 0)
