"""gwtest - helpers for the gateway tests: run the real gateway binary, mint
tokens, speak HTTP and WebSocket to it with independent clients.

Run with Debian's /usr/bin/python3 (it sees python3-websockets 10.x).

    with Gateway(binary, "--idle-timeout", "1s") as gw:
        async with gw.connect(token(42)) as ws: ...

A Gateway listens on 127.0.0.1 port 0 and learns its port from the
"gateway: listening on HOST:PORT" log line.  Leaving the `with` block kills
the process by its pid if it is still running, whatever happened inside, so
a failing test never leaves a gateway behind.
"""
import asyncio
import base64
import hashlib
import hmac
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request

import websockets

SECRET = "gw-test-secret-0123456789abcdef-0123456789"
SANITIZER_RE = re.compile(r"runtime error:|Sanitizer|LeakSanitizer|AddressSanitizer")
LISTEN_RE = re.compile(r"gateway: listening on 127\.0\.0\.1:(\d+)")


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def token(sub, exp=None, iat=None, name=None, secret=SECRET, alg="HS256", sign=True):
    """An HS256 JWT as common/im_jwt.c issues it: sub is a decimal string,
    iat and exp integer seconds, name optional."""
    now = int(time.time())
    header = {"alg": alg, "typ": "JWT"}
    payload = {"sub": str(sub), "iat": now if iat is None else iat,
               "exp": now + 3600 if exp is None else exp}
    if name is not None:
        payload["name"] = name
    head = b64url(json.dumps(header, separators=(",", ":")).encode())
    body = b64url(json.dumps(payload, separators=(",", ":")).encode())
    signing_input = (head + "." + body).encode()
    sig = b64url(hmac.new(secret.encode(), signing_input, hashlib.sha256).digest()) if sign else ""
    return head + "." + body + "." + sig


class Gateway:
    """The real gateway binary as a child process on 127.0.0.1:0."""

    def __init__(self, binary, *args, env=None, secret=SECRET, start_timeout=10):
        self.binary = binary
        self.args = list(args)
        self.env = dict(os.environ)
        # A stray IM_* variable from the caller's shell must not change the test.
        for k in list(self.env):
            if k.startswith("IM_"):
                del self.env[k]
        self.env["IM_JWT_SECRET"] = secret
        self.env["IM_LOGIC"] = ""  # the bare WebSocket core unless a test wires logic
        self.env.update(env or {})
        self.start_timeout = start_timeout
        self.proc = None
        self.port = None
        self.lines = []
        self._lock = threading.Lock()
        self._ready = threading.Event()

    def __enter__(self):
        self.proc = subprocess.Popen([self.binary, "--listen", "127.0.0.1:0", *self.args],
                                     env=self.env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self._reader = threading.Thread(target=self._read_log, daemon=True)
        self._reader.start()
        if not self._ready.wait(self.start_timeout) or self.port is None:
            self._kill()
            raise AssertionError("gateway did not start:\n" + self.log())
        return self

    def __exit__(self, exc_type, exc, tb):
        # Stop it the graceful way, so that every test also checks a clean
        # exit (and, in sanitizer builds, that LeakSanitizer finds nothing);
        # SIGKILL by pid if it does not go.
        rc = self.proc.poll()
        if rc is None:
            try:
                rc = self.stop(signal.SIGTERM, timeout=5)
            except subprocess.TimeoutExpired:
                rc = "hung after SIGTERM"
            finally:
                self._kill()
        self._reader.join(5)
        problems = [l for l in self.log().splitlines() if SANITIZER_RE.search(l)]
        if exc_type is not None or rc not in (0, -signal.SIGKILL) or problems:
            print("--- gateway log ---\n" + self.log() + "--- end of log ---", file=sys.stderr)
        if exc_type is None and (rc != 0 or problems):
            raise AssertionError("gateway exit status %r, sanitizer reports: %r" % (rc, problems))
        return False

    def _read_log(self):
        # Drain the pipe continuously: a full pipe would block the gateway.
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace")
            with self._lock:
                self.lines.append(line)
            m = LISTEN_RE.search(line)
            if m and self.port is None:
                self.port = int(m.group(1))
                self._ready.set()
        self._ready.set()

    def _kill(self):
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait()

    def log(self):
        with self._lock:
            return "".join(self.lines)

    @property
    def pid(self):
        return self.proc.pid

    def stop(self, sig=signal.SIGTERM, timeout=5):
        """Sends sig and returns the exit status (raises if it takes longer).
        Blocks: from a coroutine whose clients must answer the close, use
        await gw.astop()."""
        os.kill(self.proc.pid, sig)
        return self.wait(timeout)

    def wait(self, timeout=5):
        """Waits for the process to exit and for its last log line."""
        rc = self.proc.wait(timeout)
        self._reader.join(timeout)
        return rc

    async def astop(self, sig=signal.SIGTERM, timeout=5):
        os.kill(self.proc.pid, sig)
        return await asyncio.get_running_loop().run_in_executor(None, self.wait, timeout)

    def url(self, path):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def ws_url(self, tok=None, path="/ws"):
        url = "ws://127.0.0.1:%d%s" % (self.port, path)
        return url + ("?token=" + tok if tok else "")

    def connect(self, tok=None, path="/ws", **kw):
        kw.setdefault("open_timeout", 5)
        kw.setdefault("max_size", 1 << 20)
        return websockets.connect(self.ws_url(tok, path), **kw)

    def metrics(self):
        status, _, body = http("GET", self.url("/metrics"))
        eq(status, 200, "/metrics status")
        return parse_metrics(body.decode())


class RawWs:
    """A bare-bones WebSocket client on a plain socket, for behaviour the
    websockets library hides: it never answers pings on its own and can stop
    reading altogether."""

    def __init__(self, port, tok, timeout=5):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(("GET /ws?token=%s HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                           "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                           "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
                           % (tok, key)).encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(1)
            if not chunk:
                raise AssertionError("connection closed during the handshake: %r" % head)
            head += chunk
        eq(head.split(b"\r\n")[0], b"HTTP/1.1 101 Switching Protocols", "handshake status")

    def _recv_exact(self, n):
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise EOFError("connection closed")
            data += chunk
        return data

    def read_frame(self):
        """(opcode, payload) of the next frame from the server."""
        b0, b1 = self._recv_exact(2)
        n = b1 & 0x7f
        if n == 126:
            n = int.from_bytes(self._recv_exact(2), "big")
        elif n == 127:
            n = int.from_bytes(self._recv_exact(8), "big")
        return b0 & 0x0f, self._recv_exact(n)

    def send_frame(self, opcode, payload):
        mask = os.urandom(4)
        n = len(payload)
        head = bytes([0x80 | opcode])
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 65536:
            head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
        else:
            head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
        body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(head + mask + body)

    def close(self):
        self.sock.close()


def http(method, url, body=None, headers=None, timeout=5):
    """(status, headers, body bytes); HTTP errors are results, not exceptions."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


METRIC_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[a-zA-Z_][a-zA-Z0-9_]*="[^"\\]*"'
                       r'(,[a-zA-Z_][a-zA-Z0-9_]*="[^"\\]*")*\})? (-?[0-9.eE+]+|NaN|[+-]Inf)$')


def parse_metrics(text):
    """Prometheus text format: every non-comment line must be `name{labels} value`.
    Returns {"name{labels}": float}."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = METRIC_RE.match(line)
        if m is None:
            raise AssertionError("not a Prometheus sample line: %r" % line)
        out[m.group(1) + (m.group(2) or "")] = float(m.group(4))
    return out


def eq(got, want, what):
    if got != want:
        raise AssertionError("%s: got %r, want %r" % (what, got, want))


def true(cond, what):
    if not cond:
        raise AssertionError(what)


async def recv_json(ws, timeout=5):
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def expect_close(ws, code, timeout=5):
    """Waits until the server closes ws; checks the close code it sent."""
    try:
        while True:
            await asyncio.wait_for(ws.recv(), timeout)
    except websockets.ConnectionClosed:
        pass
    eq(ws.close_code, code, "close code")
    return ws.close_reason


async def expect_refused(gw, tok, status, path="/ws", headers=None):
    try:
        async with gw.connect(tok, path, extra_headers=headers or {}):
            pass
    except websockets.InvalidStatusCode as e:
        eq(e.status_code, status, "refused upgrade status")
        return
    raise AssertionError("the upgrade was accepted, want HTTP %d" % status)


def main(tests):
    """Runs each test (a function taking the gateway binary path; async or
    not) and exits non-zero if any failed."""
    binary = sys.argv[1]
    only = sys.argv[2:]
    failed = 0
    for t in tests:
        if only and t.__name__ not in only:
            continue
        start = time.monotonic()
        try:
            r = t(binary)
            if asyncio.iscoroutine(r):
                asyncio.run(r)
            print("ok   %s (%.2fs)" % (t.__name__, time.monotonic() - start), flush=True)
        except Exception:
            failed += 1
            print("FAIL %s" % t.__name__, flush=True)
            traceback.print_exc()
    print("%d failed" % failed)
    sys.exit(1 if failed else 0)
