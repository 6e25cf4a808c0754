#!/usr/bin/env python3
"""Fails unless a wasm module imports only what Envoy provides.

Envoy's V8 runtime provides the proxy-wasm ABI (`env.proxy_*`) and a subset
of WASI (`wasi_snapshot_preview1.*`). Anything else, such as the
`__wbindgen_*` imports a wasm32-unknown-unknown build pulls in, makes Envoy
refuse the module with "Unable to create Wasm plugin", so CI checks every
built module. Usage: check-imports.py MODULE.wasm...
"""
import sys


def leb(data, i):
    result = shift = 0
    while True:
        b = data[i]
        i += 1
        result |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return result, i


def name(data, i):
    n, i = leb(data, i)
    return data[i:i + n].decode("utf-8"), i + n


def imports(data):
    if data[:4] != b"\0asm":
        raise ValueError("not a wasm module")
    i = 8
    while i < len(data):
        sid = data[i]
        size, i = leb(data, i + 1)
        end = i + size
        if sid == 2:
            count, j = leb(data, i)
            for _ in range(count):
                mod, j = name(data, j)
                field, j = name(data, j)
                kind = data[j]
                j += 1
                if kind == 0:  # function: type index
                    _, j = leb(data, j)
                elif kind == 1:  # table: reftype + limits
                    j += 1
                    flags, j = leb(data, j)
                    _, j = leb(data, j)
                    if flags & 1:
                        _, j = leb(data, j)
                elif kind == 2:  # memory: limits
                    flags, j = leb(data, j)
                    _, j = leb(data, j)
                    if flags & 1:
                        _, j = leb(data, j)
                elif kind == 3:  # global: valtype + mutability
                    j += 2
                yield mod, field
        i = end


def main(paths):
    bad = False
    for path in paths:
        with open(path, "rb") as f:
            found = list(imports(f.read()))
        wrong = [f"{m}.{n}" for m, n in found
                 if not ((m == "env" and n.startswith("proxy_")) or m == "wasi_snapshot_preview1")]
        if wrong:
            bad = True
            print(f"{path}: imports Envoy does not provide: {', '.join(wrong)}")
        else:
            print(f"{path}: {len(found)} imports, all env.proxy_* or wasi_snapshot_preview1.* - ok")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
