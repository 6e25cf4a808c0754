#!/usr/bin/env python3
"""The exports appguard's module keeps, and a check that it keeps exactly those.

Envoy's Wasm host (proxy-wasm-cpp-host) calls a module's callback only if
the module exports it: for a missing `proxy_on_response_body` it simply
continues the stream. The Rust SDK exports every callback of the ABI,
though, so without this step every request crossed into V8 for the
response body (once per chunk), response trailers, `on_log` and `on_done`,
and every rate-limit call twice more for gRPC metadata, only to run the
SDK's empty defaults. `make build` removes those exports with binaryen's
`wasm-metadce` after `wasm-opt`; `make imports` checks the result.

The bench's no-op filter (bench/noop) gets the same treatment with its own
list, NOOP_KEEP, so that it stays the floor under any Wasm filter.

Usage:
  exports.py graph [noop[:F,...]]    print the wasm-metadce graph (KEEP or
                                     NOOP_KEEP as roots; F: the no-op's
                                     features, some of which export more)
  exports.py check [noop[:F,...]] MODULE...
                                     fail unless each module exports exactly
                                     KEEP (or NOOP_KEEP and its features')
"""
import json
import sys

from importlib import util
from pathlib import Path

# What appguard implements or the host needs. Everything else the SDK
# exports runs only the SDK's defaults:
#   proxy_on_response_body, proxy_on_response_trailers, proxy_on_log: no
#     behaviour in appguard (it never reads or changes response bodies);
#   proxy_on_done: the SDK's default answers "done", which is also what the
#     host assumes without the export (proxy_on_delete still frees the
#     context);
#   proxy_on_grpc_receive_initial_metadata / _trailing_metadata: only for
#     gRPC streams; appguard makes unary calls (the answer comes through
#     proxy_on_grpc_receive and proxy_on_grpc_close);
#   proxy_on_new_connection, proxy_on_downstream_data,
#     proxy_on_upstream_data, proxy_on_downstream_connection_close,
#     proxy_on_upstream_connection_close: network filters only;
#   proxy_on_queue_ready, proxy_on_foreign_function: not used.
# What every proxy-wasm HTTP filter built with the SDK needs: the memory,
# start-up, the ABI version, the host's allocations, the VM and plugin
# start, a context per request with its request headers, and its deletion
# (which frees the SDK's context).
BASE = [
    "memory",
    "_initialize",
    "proxy_abi_version_0_2_1",
    "proxy_on_memory_allocate",
    "proxy_on_vm_start",
    "proxy_on_configure",
    "proxy_on_context_create",
    "proxy_on_request_headers",
    "proxy_on_delete",
]

KEEP = BASE + [
    "proxy_on_tick",
    "proxy_on_request_body",
    "proxy_on_request_trailers",
    "proxy_on_response_headers",
    "proxy_on_http_call_response",
    "proxy_on_grpc_receive",
    "proxy_on_grpc_close",
]

# The no-op filter only reads one request header.
NOOP_KEEP = BASE

# Exports a no-op variant adds (`make noop NOOP_FEATURES=...`, bench/noop).
NOOP_FEATURE_EXPORTS = {"resp": ["proxy_on_response_headers"]}

# The wasm section readers of check-imports.py (a file name with a dash,
# so loaded by path).
_spec = util.spec_from_file_location("check_imports", Path(__file__).with_name("check-imports.py"))
ci = util.module_from_spec(_spec)
_spec.loader.exec_module(ci)


def exports(data):
    """The export names of a wasm module."""
    if data[:4] != b"\0asm":
        raise ValueError("not a wasm module")
    i = 8
    out = []
    while i < len(data):
        sid = data[i]
        size, i = ci.leb(data, i + 1)
        if sid == 7:
            count, j = ci.leb(data, i)
            for _ in range(count):
                field, j = ci.name(data, j)
                j += 1  # kind
                _, j = ci.leb(data, j)  # index
                out.append(field)
        i += size
    return out


def main(argv):
    keep, args = KEEP, argv[1:]
    if args[:1] and (args[0] == "noop" or args[0].startswith("noop:")):
        features = [f for f in args[0].partition(":")[2].split(",") if f]
        keep = NOOP_KEEP + [e for f in features for e in NOOP_FEATURE_EXPORTS.get(f, [])]
        args = args[1:]
    if argv[:1] == ["graph"] and not args:
        print(json.dumps([{"name": f"export:{e}", "export": e, "root": True} for e in keep]))
        return 0
    if argv[:1] == ["check"] and args:
        bad = False
        for path in args:
            found = exports(Path(path).read_bytes())
            missing = [e for e in keep if e not in found]
            extra = [e for e in found if e not in keep]
            if missing or extra:
                bad = True
                print(f"{path}: exports differ from the list in scripts/exports.py: "
                      f"missing {missing or '-'}, not expected {extra or '-'}")
            else:
                print(f"{path}: {len(found)} exports, exactly the callbacks it uses - ok")
        return 1 if bad else 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
