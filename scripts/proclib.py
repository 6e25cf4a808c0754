"""Helpers shared by the load drivers (`bench.py`, `soak.py`): base64url,
free loopback ports, and a process's resident memory."""
import base64
import socket


def b64u(b):
    """base64url without padding, of bytes or text."""
    if isinstance(b, str):
        b = b.encode()
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


_GIVEN = set()


def free_port():
    """A port free on 127.0.0.1 right now, and not handed out before by this
    process: the kernel may offer a port again once its probe socket is
    closed, and two servers started from the same list would then race for
    it ("Address already in use")."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _GIVEN:
            _GIVEN.add(port)
            return port
    raise RuntimeError("no free port on 127.0.0.1")


def rss_kib(pid):
    """VmRSS of a process, in KiB (0 when it is gone)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0
