"""imsys - run the whole system for an end-to-end test: logic instances and
gateways as child processes against the servers of scripts/infra.sh (its
env file in $IM_STATE_DIR/env), plus small client helpers.

    with System(logic_bin, gateway_bin, n_logic=2, n_gateways=2) as sys:
        alice = sys.signup("alice")                # REST through a gateway
        async with sys.ws(0, alice) as ws: ...     # WebSocket to gateway 0

Every process is killed by its pid when the `with` block ends, whatever
happened inside (SIGTERM first, so a clean exit is also checked).
"""
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "gateway"))
import gwtest  # noqa: E402  (Gateway, http, token helpers)

SECRET = "e2e-secret-0123456789abcdef-0123456789abcdef"
LOGIC_RE = re.compile(r"logic: grpc listening on 127\.0\.0\.1:(\d+)")
HTTP_RE = re.compile(r"logic: http listening on 127\.0\.0\.1:(\d+)")


def infra_env():
    path = os.path.join(os.environ["IM_STATE_DIR"], "env")
    env = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                k, v = line.split("=", 1)
                env[k] = v
    return env


class Logic:
    """The logic binary on 127.0.0.1:0; its port read from its log."""

    def __init__(self, binary, env, node_id, queue, extra=(), port=0):
        self.lines = []
        self.port = self.http_port = None
        self._ready = threading.Event()
        full = dict(os.environ)
        full.update(env)
        full["IM_QUEUE"] = queue
        full.pop("IM_JWT_SECRET", None)
        self.args = (binary, env, node_id, queue, tuple(extra))
        self.proc = subprocess.Popen(
            [binary, "--grpc-listen", "127.0.0.1:%d" % port, "--http-listen", "127.0.0.1:0",
             "--jwt-secret", SECRET,
             "--password-cost", "min", "--node-id", str(node_id), "--writer-delay", "5ms",
             *extra],
            env=full, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT)
        threading.Thread(target=self._read, daemon=True).start()
        if not self._ready.wait(20) or self.port is None:
            self.kill()
            raise AssertionError("logic did not start:\n" + "".join(self.lines))

    def _read(self):
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace")
            self.lines.append(line)
            h = HTTP_RE.search(line)
            if h:
                self.http_port = int(h.group(1))
            m = LOGIC_RE.search(line)
            if m and self.port is None:
                self.port = int(m.group(1))
            if self.port is not None and self.http_port is not None:
                self._ready.set()
        self._ready.set()

    def metrics(self):
        status, _, body = gwtest.http("GET", "http://127.0.0.1:%d/metrics" % self.http_port)
        gwtest.eq(status, 200, "logic /metrics status")
        return gwtest.parse_metrics(body.decode())

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        self.kill()
        return self.proc.returncode

    def kill(self):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def restart(self):
        """A new process on the same port (after kill), so gateways find it."""
        binary, env, node_id, queue, extra = self.args
        new = Logic(binary, env, node_id, queue, extra, port=self.port)
        self.__dict__.update(new.__dict__)


class System:
    def __init__(self, logic_bin, gateway_bin, n_logic=1, n_gateways=1, gateway_args=()):
        self.logic_bin, self.gateway_bin = logic_bin, gateway_bin
        self.n_logic, self.n_gateways = n_logic, n_gateways
        self.gateway_args = list(gateway_args)
        self.env = infra_env()
        self.logics, self.gateways = [], []
        self.queue = "e2e.%d" % os.getpid()
        self.serial = 0

    def __enter__(self):
        try:
            for i in range(self.n_logic):
                self.logics.append(Logic(self.logic_bin, self.env, i + 1, self.queue))
            for _ in range(self.n_gateways):
                self.start_gateway()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def gateway_env(self):
        env = {k: v for k, v in self.env.items() if k.startswith("IM_AMQP_")}
        env["IM_LOGIC"] = ",".join("127.0.0.1:%d" % l.port for l in self.logics)
        env["IM_HEARTBEAT_INTERVAL"] = "1s"
        env["IM_RATE_LIMIT"] = "0"
        return env

    def start_gateway(self):
        self.gateways.append(self._gateway())
        return self.gateways[-1]

    def start_gateway_at(self, i):
        """A new gateway process in slot i (after the old one died)."""
        return self._gateway()

    def _gateway(self):
        gw = gwtest.Gateway(self.gateway_bin, *self.gateway_args, env=self.gateway_env(),
                            secret=SECRET)
        gw.__enter__()
        return gw

    def __exit__(self, exc_type, exc, tb):
        failed = exc_type is not None
        for gw in self.gateways:
            try:
                gw.__exit__(exc_type, exc, tb)
            except AssertionError as e:
                print("gateway:", e, file=sys.stderr)
                failed = True
        for lg in self.logics:
            rc = lg.stop()
            if rc == -signal.SIGKILL and getattr(lg, "killed", False):
                rc = 0
            if rc != 0 or failed:
                print("--- logic log (exit %r) ---\n%s" % (rc, "".join(lg.lines)),
                      file=sys.stderr)
            if rc != 0 and exc_type is None:
                raise AssertionError("logic exit status %r" % rc)
        return False

    # ---------------------------------------------------------------- REST

    def api(self, method, path, body=None, token=None, gw=0):
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = "Bearer " + token
        data = json.dumps(body).encode() if body is not None else None
        status, _, raw = gwtest.http(method, self.gateways[gw].url(path), data, headers,
                                     timeout=15)
        return status, (json.loads(raw) if raw else None)

    def signup(self, tag, gw=0):
        """Registers and logs in a fresh user: {"id", "name", "token"}."""
        self.serial += 1
        name = "%s_%d_%d" % (tag, os.getpid() % 100000, self.serial)
        status, body = self.api("POST", "/api/v1/register",
                                {"username": name, "password": "password1"}, gw=gw)
        gwtest.eq(status, 201, "register status (%r)" % body)
        status, body = self.api("POST", "/api/v1/login",
                                {"username": name, "password": "password1"}, gw=gw)
        gwtest.eq(status, 200, "login status (%r)" % body)
        return {"id": body["user_id"], "name": name, "token": body["token"]}

    def ws(self, gw, user):
        return self.gateways[gw].connect(user["token"])


async def recv(ws, timeout=10):
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def recv_type(ws, want, timeout=10):
    """The next frame of type want, skipping presence/typing/group notices."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError("no %r frame within %s s" % (want, timeout))
        f = await recv(ws, left)
        if f["type"] == want:
            return f
        if f["type"] not in ("presence", "typing", "group", "receipt", "msg"):
            raise AssertionError("waiting for %r, got %r" % (want, f))


async def nothing(ws, types=("msg",), wait=1.0):
    """Checks that no frame of these types arrives within wait seconds."""
    deadline = time.monotonic() + wait
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        try:
            f = await recv(ws, left)
        except asyncio.TimeoutError:
            return
        if f["type"] in types:
            raise AssertionError("unexpected frame %r" % f)


async def send(ws, cid, body, user=None, group=None):
    to = {"user": user} if user else {"group": group}
    await ws.send(json.dumps({"type": "send", "cid": cid, "to": to, "body": body}))


async def ready(ws):
    """Waits for the gateway's "ready": from then on the session is routed
    to and bound to its groups, so nothing sent to it is missed live."""
    return await recv_type(ws, "ready")
