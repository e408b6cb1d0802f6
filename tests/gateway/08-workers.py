"""08-workers: --workers N, a master process and N gateways on one port
(SO_REUSEPORT).  Connections are spread over the workers, each worker is a
gateway of its own (id <gateway-id>-w<n>), a worker that dies is restarted
while the others keep serving, and SIGTERM to the master stops them all
(clients get 1001, exit status 0)."""
import asyncio
import json
import os
import signal
import socket
import time

from gwtest import Gateway, eq, expect_close, http, main, recv_json, token, true


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children(pid):
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            return [int(x) for x in f.read().split()]
    except FileNotFoundError:
        return []


def wait_for(cond, what, timeout=10):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError("timed out waiting for " + what)


def gateways_seen(gw, n=40):
    """The gateway ids answering n fresh connections (one request each)."""
    seen = {}
    for _ in range(n):
        status, _, body = http("GET", gw.url("/healthz"))
        eq(status, 200, "/healthz status")
        h = json.loads(body)
        seen[h["gateway"]] = seen.get(h["gateway"], 0) + 1
    return seen


def workers_up(gw, n):
    # Every worker listens once it has logged its line.
    return len(children(gw.pid)) == n and gw.log().count("gateway: listening on") >= n


async def test_connections_spread_over_workers(binary):
    port = free_port()
    with Gateway(binary, "--listen", "127.0.0.1:%d" % port, "--workers", "2",
                 "--gateway-id", "wk") as gw:
        wait_for(lambda: workers_up(gw, 2), "two workers listening")
        seen = gateways_seen(gw)
        eq(sorted(seen), ["wk-w0", "wk-w1"], "gateway ids of the workers (%r)" % seen)
        # WebSocket sessions work on whichever worker takes them.
        socks = [await gw.connect(token(100 + i)).__aenter__() for i in range(8)]
        for ws in socks:
            await ws.send('{"type":"ping","cid":"p"}')
            eq((await recv_json(ws))["type"], "pong", "pong")
        for ws in socks:
            await ws.close()


async def test_dead_worker_is_restarted(binary):
    port = free_port()
    with Gateway(binary, "--listen", "127.0.0.1:%d" % port, "--workers", "2",
                 "--gateway-id", "wk") as gw:
        wait_for(lambda: workers_up(gw, 2), "two workers listening")
        before = children(gw.pid)
        os.kill(before[0], signal.SIGKILL)
        wait_for(lambda: len(children(gw.pid)) == 2 and before[0] not in children(gw.pid),
                 "the killed worker replaced")
        true("restarting it" in gw.log(), "the master says it restarts the worker")
        wait_for(lambda: gw.log().count("gateway: listening on") >= 3, "the new worker listening")
        eq(sorted(gateways_seen(gw)), ["wk-w0", "wk-w1"], "both workers serve again")


async def test_sigterm_stops_every_worker(binary):
    port = free_port()
    with Gateway(binary, "--listen", "127.0.0.1:%d" % port, "--workers", "3") as gw:
        wait_for(lambda: workers_up(gw, 3), "three workers listening")
        kids = children(gw.pid)
        async with gw.connect(token(7)) as ws:
            await ws.send('{"type":"ping"}')
            eq((await recv_json(ws))["type"], "pong", "pong")
            stop = asyncio.ensure_future(gw.astop(signal.SIGTERM, timeout=10))
            eq(await expect_close(ws, 1001), "going away", "close reason")
            eq(await stop, 0, "master exit status")
        for pid in kids:
            true(not os.path.exists("/proc/%d" % pid) or
                 open("/proc/%d/stat" % pid).read().split()[2] == "Z", "worker %d gone" % pid)


def test_workers_need_a_fixed_port(binary):
    import subprocess
    env = {k: v for k, v in os.environ.items() if not k.startswith("IM_")}
    env["IM_LOGIC"] = ""
    r = subprocess.run([binary, "--listen", "127.0.0.1:0", "--workers", "2", "--dev"],
                       env=env, capture_output=True, timeout=10)
    eq(r.returncode, 2, "exit status")
    true(b"fixed port" in r.stderr, "says why: %r" % r.stderr)


main([test_connections_spread_over_workers, test_dead_worker_is_restarted,
      test_sigterm_stops_every_worker, test_workers_need_a_fixed_port])
