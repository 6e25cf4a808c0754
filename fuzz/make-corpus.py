#!/usr/bin/env python3
"""Writes the seed corpus under fuzz/corpus/<target>/ (committed; run again
only to change the seeds). Where each seed comes from:

- token: tokens signed with the test keys of tests/fixtures (HS256 secret,
  RSA and P-256 key pairs) for the fuzz target's fixed clock, and
  header/payload JSON pairs for its sign-it-here mode;
- config: the repository's examples/*.json (copied) and two small documents;
- signing: RFC 9421 Appendix B.2.6 (Ed25519) and B.4 (transformations)
  requests with their published signatures;
- rls_response: RateLimitResponse messages encoded by hand after
  envoy/service/ratelimit/v3/rls.proto (field numbers in src/ratelimit/rls.rs);
- the others: small values written for the target's input format.

Needs the `cryptography` package (for the RS256/ES256 seeds).
"""
import base64
import hashlib
import hmac
import json
import os
import shutil
import struct
import sys

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
NOW = 1_900_000_000
SECRET = b"appguard-test-secret-0123456789-appguard-test-secret-0123456789!"


def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def jws(header, claims, sign):
    h = b64u(json.dumps(header, separators=(",", ":")).encode())
    p = b64u(json.dumps(claims, separators=(",", ":")).encode())
    inp = f"{h}.{p}".encode()
    return f"{h}.{p}.{b64u(sign(inp))}"


def key(name):
    with open(os.path.join(ROOT, "tests/fixtures", name), "rb") as f:
        return serialization.load_pem_private_key(f.read(), password=None)


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def token_seeds():
    good = {"iss": "https://issuer.example", "aud": "api", "iat": NOW, "exp": NOW + 60, "sub": "u1"}
    hs = lambda i: hmac.new(SECRET, i, hashlib.sha256).digest()
    rsa = key("rsa-test-key.pem")
    ecdsa = key("ec-p256-test-key.pem")

    def es(i):
        r, s = decode_dss_signature(ecdsa.sign(i, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    def rs(i):
        return rsa.sign(i, padding.PKCS1v15(), hashes.SHA256())

    write("token", "hs256", b"\x00" + jws({"alg": "HS256", "typ": "JWT", "kid": "hs"}, good, hs).encode())
    write("token", "es256", b"\x00" + jws({"alg": "ES256", "kid": "es"}, good, es).encode())
    write("token", "rs256", b"\x00" + jws({"alg": "RS256", "kid": "rs"}, good, rs).encode())
    write("token", "hs256-aud-list-nbf", b"\x00" + jws(
        {"alg": "HS256", "kid": "hs"}, dict(good, aud=["x", "api"], nbf=NOW - 1), hs).encode())
    write("token", "structured-good",
          b'\x01{"alg":"HS256","kid":"hs"}\x00' + json.dumps(good).encode())
    write("token", "structured-crit",
          b'\x01{"alg":"HS256","kid":"hs","crit":["exp"]}\x00' + json.dumps(good).encode())
    write("token", "structured-dup",
          b'\x01{"alg":"HS256"}\x00{"iss":"https://issuer.example","aud":"api","exp":1900000060,"exp":1}')


def config_seeds():
    for name in ["quickstart.json", "three-platform.json", "approov.json", "own-signer.json"]:
        shutil.copy(os.path.join(ROOT, "examples", name), os.path.join(HERE, "corpus", "config", name))
    write("config", "empty-object", "{}")
    write("config", "route-with-limits", json.dumps({
        "default_action": "deny",
        "client_ip": {"xff_trusted_hops": 2},
        "network": {"ip_deny": ["10.0.0.0/8", "2001:db8::/32"], "country_header": "x-cc", "country_allow": ["GB"]},
        "routes": [{"name": "r", "match": {"prefix": "/r", "methods": ["GET"], "hosts": ["*.example.com"]},
                    "rate_limits": [{"entries": [{"type": "client_ip", "v6_prefix": 64}],
                                     "local": {"requests": 5, "per": "minute"}}]}]}))


def small_seeds():
    write("origin_cidr", "wildcard", b"\x01https://*.example.com\nhttps://a.example.com\n10.0.0.0/8\n192.0.2.1, 10.1.2.3")
    write("origin_cidr", "exact-port", b"\x02https://shop.example.com:8443\nHTTPS://SHOP.EXAMPLE.COM:8443\n2001:db8::/32\n[2001:db8::1]:443\n::ffff:10.0.0.1")
    write("origin_cidr", "ipv6-host", b"\x00http://[::1]:8080\nhttp://[::1]:8080/x\n::/0\nfe80::1%eth0")
    write("origin_cidr", "odd", b"\x03https://*.a.b\nhttps://x.a.b.\n0.0.0.0/0\n1.2.3.4,,5.6.7.8")
    for i, n in enumerate(["+44 7700 900123", "07700-900-123", "0044 (0)20 7946 0000",
                           "(+44) 7700.900.123", "+1 (415) 555-0100", "+882 1234 5678", "7700900123"]):
        write("phone", f"n{i}", n)

    def varint(n):
        out = b""
        while True:
            b = n & 0x7F
            n >>= 7
            if n:
                out += bytes([b | 0x80])
            else:
                return out + bytes([b])

    def field(tag, wire, payload):
        key = varint(tag << 3 | wire)
        if wire == 0:
            return key + varint(payload)
        return key + varint(len(payload)) + payload

    limit = field(1, 0, 3) + field(2, 0, 3) + field(3, 2, b"per-ip")  # 3 per hour
    reset = field(1, 0, 1800) + field(2, 0, 500_000_000)
    over = field(1, 0, 2) + field(2, 2, limit) + field(3, 0, 0) + field(4, 2, reset)
    ok = field(1, 0, 1) + field(2, 2, limit) + field(3, 0, 2) + field(4, 2, reset)
    hdr = field(1, 2, b"x-extra") + field(2, 2, b"1")
    bad_hdr = field(1, 2, b"content-length") + field(2, 2, b"0")
    write("rls_response", "ok", b"\x01" + field(1, 0, 1) + field(2, 2, ok) + field(3, 2, hdr))
    write("rls_response", "over-limit", b"\x02" + field(1, 0, 2) + field(2, 2, ok) + field(2, 2, over)
          + field(4, 2, hdr) + field(3, 2, bad_hdr))
    write("rls_response", "empty", b"\x00")

    def pairs(items):
        out = struct.pack("<I", len(items))
        for k, v in items:
            out += struct.pack("<II", len(k), len(v))
        for k, v in items:
            out += k + b"\x00" + v + b"\x00"
        return out

    write("wire_pairs", "headers", pairs([(b":path", b"/x"), (b"x-bin", b"\xff\xfe"), (b"", b"")]))
    write("wire_pairs", "empty", b"")
    # envoy.config.core.v3.Metadata{filter_metadata: {"envoy.lb": {},
    #   "envoy.filters.http.jwt_authn": {"p": {"sub": "u1", "exp": 1900000060,
    #   "ok": true, "aud": ["a", "b"], "n": null}}}}: what Envoy hands over
    # for the `metadata` property (fields of struct.proto and base.proto).
    def entry(k, v):
        return field(1, 2, field(1, 2, k) + field(2, 2, v))
    st = (entry(b"sub", field(3, 2, b"u1")) + entry(b"exp", b"\x11" + struct.pack("<d", NOW + 60))
          + entry(b"ok", b"\x20\x01") + entry(b"n", b"\x08\x00")
          + entry(b"aud", field(6, 2, field(1, 2, field(3, 2, b"a")) + field(1, 2, field(3, 2, b"b")))))
    namespace = entry(b"p", field(5, 2, st))
    write("delegated", "metadata", entry(b"envoy.lb", b"") + entry(b"envoy.filters.http.jwt_authn", namespace))

    write("policy", "admin", "GET /admin/users\nx-forwarded-for: 192.0.2.1\n\n")
    write("policy", "token", "GET /tok/x\nx-token: a.b.c\nauthorization: Bearer u\nx-forwarded-for: 192.0.2.1\n\n")
    write("policy", "key", "GET /key/x\nx-api-key: key-1\nx-android-package: com.example.app\nx-forwarded-for: 10.0.0.1\n\n")
    write("policy", "web", "GET /web/x\norigin: https://a.example.com\nx-forwarded-for: 2001:db8::1\nx-country-code: KP\n\n")
    write("policy", "sms", 'POST /sms\ncontent-type: application/json\ncontent-length: 30\nx-user: u\nx-forwarded-for: 192.0.2.9\n\n{"to": "+44 7700 900123"}')

    # RFC 9421 B.2.6 and B.4 (src/signing/tests.rs holds the same vectors).
    write("signing", "rfc9421-b26", "POST example.com /foo?param=Value&Pet=dog sig-b26\n"
          "host: example.com\ndate: Tue, 20 Apr 2021 02:07:55 GMT\ncontent-type: application/json\n"
          "content-digest: sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:\n"
          "content-length: 18\n"
          'signature-input: sig-b26=("date" "@method" "@path" "@authority" "content-type" "content-length");created=1618884473;keyid="test-key-ed25519"\n'
          "signature: sig-b26=:wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPpBKRCw==:\n"
          '\n{"hello": "world"}')
    write("signing", "rfc9421-b4", "GET example.org /demo?name1=Value1&Name2=value2 transform\n"
          "date: Fri, 15 Jul 2022 14:24:55 GMT\naccept: application/json\naccept: */*\n"
          'signature-input: transform=("@method" "@path" "@authority" "accept");created=1618884473;keyid="test-key-ed25519"\n'
          "signature: transform=:ZT1kooQsEHpZ0I1IjCqtQppOmIqlJPeo7DHR3SoMn0s5JZ1eRGS0A+vyYP9t/LXlh5QMFFQ6cpLt2m0pmj3NDA==:\n")
    write("signing", "install-default", "POST api.example.com /v1/sms install\n"
          "approov-token: a.b.c\ncontent-digest: sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:\n"
          'signature-input: install=("@method" "@target-uri" "approov-token" "content-digest");created=1618884480\n'
          "signature: install=:AAAA:\n\n{}")


def main():
    if os.path.isdir(os.path.join(HERE, "corpus")):
        shutil.rmtree(os.path.join(HERE, "corpus"))
    os.makedirs(os.path.join(HERE, "corpus", "config"))
    token_seeds()
    config_seeds()
    small_seeds()
    print("corpus written under", os.path.join(HERE, "corpus"), file=sys.stderr)


if __name__ == "__main__":
    main()
