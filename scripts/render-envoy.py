#!/usr/bin/env python3
"""Renders one of the repository's Envoy YAML files for a local run.

The files under envoy/ are the single source of truth, used as they are by
docker-compose (module at /etc/appguard/appguard.wasm). For a loopback run or
`envoy --mode validate` this swaps in the local module path and, optionally,
another appguard configuration (an example file), and, with --port, the
ports (listener 10000, admin 9901, upstream 18080, rate-limit service
18081 in envoy/envoy.yaml) for a machine where those are taken. Nothing
else changes; the output is the YAML re-written, without its comments.

Usage: render-envoy.py --wasm PATH [--config FILE.json] [--port OLD=NEW ...] ENVOY.yaml > out.yaml
       render-envoy.py --wasm PATH --check-config FILE.json ENVOY.yaml
"""
import argparse
import json
import sys

import yaml


def no_repeats(pairs):
    """A JSON object's members, refusing a name written twice: the filter
    refuses such a configuration, and `dict` would keep the last silently."""
    seen = {}
    for k, v in pairs:
        if k in seen:
            raise ValueError(f"{k!r} is written twice")
        seen[k] = v
    return seen


def walk(node, fn):
    if isinstance(node, dict):
        fn(node)
        for v in node.values():
            walk(v, fn)
    elif isinstance(node, list):
        for v in node:
            walk(v, fn)


def render(doc, wasm, config_text, ports=None):
    ports = ports or {}

    def fix(node):
        if node.get("port_value") in ports:
            seen.add(node["port_value"])
            node["port_value"] = ports[node["port_value"]]
        local = node.get("local")
        if isinstance(local, dict) and str(local.get("filename", "")).endswith("appguard.wasm"):
            local["filename"] = wasm
        if config_text is not None and node.get("root_id") == "appguard" and "configuration" in node:
            node["configuration"]["value"] = config_text

    seen = set()
    walk(doc, fix)
    missing = sorted(set(ports) - seen)
    if missing:
        sys.exit(f"--port: no port_value {', '.join(map(str, missing))} in the file")
    return doc


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--wasm", required=True)
    ap.add_argument("--config")
    ap.add_argument("--check-config", metavar="FILE.json",
                    help="exit 1 unless the inline appguard configuration equals FILE.json")
    ap.add_argument("--port", action="append", default=[], metavar="OLD=NEW",
                    help="replace every port_value OLD by NEW (repeatable)")
    ap.add_argument("envoy_yaml")
    a = ap.parse_args()
    ports = {}
    for p in a.port:
        old, sep, new = p.partition("=")
        if not sep or not old.isdigit() or not new.isdigit() or not 0 < int(new) < 65536:
            sys.exit(f"--port {p}: expected OLD=NEW, two port numbers (e.g. 10000=24000)")
        ports[int(old)] = int(new)
    with open(a.envoy_yaml) as f:
        doc = yaml.safe_load(f)
    if a.check_config:
        with open(a.check_config) as f:
            want = json.load(f)
        found = []
        walk(doc, lambda n: found.append(json.loads(n["configuration"]["value"]))
             if n.get("root_id") == "appguard" and "configuration" in n else None)
        if not found or any(c != want for c in found):
            sys.exit(f"{a.envoy_yaml}: inline appguard configuration differs from {a.check_config}")
        print(f"{a.envoy_yaml}: inline configuration equals {a.check_config}")
        return
    text = None
    if a.config:
        with open(a.config) as f:
            text = f.read()
        # Inlined as written, so that Envoy hands the filter what
        # `appguard-cli check-config` checked; only refused here when it is
        # no JSON or names a member twice (the filter would refuse it too).
        try:
            json.loads(text, object_pairs_hook=no_repeats)
        except ValueError as e:
            sys.exit(f"{a.config}: not a configuration the filter takes: {e}")
    yaml.safe_dump(render(doc, a.wasm, text, ports), sys.stdout, sort_keys=False)


if __name__ == "__main__":
    main()
