"""06-hooks: the hooks the service wiring plugs into, through gw_testd (the
gateway library with test hooks): frames answered from another thread via
gw_post, one buffer fanned out to every device of a user, slow consumers,
kicks, async /api answers, /healthz and /metrics extensions."""
import asyncio
import json

import websockets

from gwtest import Gateway, eq, expect_close, http, main, recv_json, token, true


async def test_frames_answered_from_another_thread(binary):
    with Gateway(binary) as gw:
        async with gw.connect(token(1)) as ws:
            for i in range(50):
                await ws.send(json.dumps({"type": "echo", "data": "m%d" % i}))
            got = [(await recv_json(ws))["data"] for _ in range(50)]
            eq(got, ["m%d" % i for i in range(50)], "echoes in order")
            await ws.send('{"type":"fail","cid":"f"}')
            r = await recv_json(ws)
            eq((r["code"], r["cid"]), ("internal", "f"), "failing hook")
            await ws.send('{"type":"nothing"}')
            eq((await recv_json(ws))["code"], "unknown_type", "hook says unknown")
        # A reply for a session that closed meanwhile is dropped quietly.
        async with gw.connect(token(2)) as ws:
            await ws.send('{"type":"echo","data":"late"}')
        async with gw.connect(token(2)) as ws:
            await ws.send('{"type":"ping"}')
            eq((await recv_json(ws))["type"], "pong", "the gateway is fine")


async def test_session_data_follows_each_session(binary):
    # The hooks' per-session data (gw_hooks_t.session_data_size): zeroed at
    # open, found by id in every frame hook, its own per session, gone after
    # on_close (gw_testd counts any mismatch).
    with Gateway(binary) as gw:
        for round_ in range(3):  # slots and their data are reused
            async with gw.connect(token(3)) as a, gw.connect(token(4)) as b:
                for _ in range(5):
                    await a.send('{"type":"ping"}')
                    eq((await recv_json(a))["type"], "pong", "pong")
                await a.send('{"type":"frames"}')
                eq((await recv_json(a))["count"], 1, "ping is the gateway's own: one hook frame")
                await a.send('{"type":"frames"}')
                await b.send('{"type":"frames"}')
                eq((await recv_json(a))["count"], 2, "a's count")
                eq((await recv_json(b))["count"], 1, "b's own count")
        await asyncio.sleep(0.2)
        m = gw.metrics()
        eq(m["gw_testd_closes_total"], 6, "every session closed")
        eq(m["gw_testd_bad_session_data_total"], 0, "no mismatched session data")


async def test_fanout_to_every_device(binary):
    with Gateway(binary) as gw:
        async with gw.connect(token(7)) as a, gw.connect(token(7)) as b, \
                gw.connect(token(7)) as c, gw.connect(token(8)) as other:
            await a.send('{"type":"fanout","data":"hello"}')
            for ws in (a, b, c):
                eq(await recv_json(ws), {"type": "fanout", "data": "hello", "count": 3},
                   "fan-out copy")
            await other.send('{"type":"ping"}')
            eq((await recv_json(other))["type"], "pong", "other user got nothing else")


async def test_slow_consumer_is_closed(binary):
    with Gateway(binary, "--send-queue-max", "16") as gw:
        async with gw.connect(token(1)) as ws:
            await ws.send('{"type":"flood","n":10}')
            for _ in range(10):
                eq((await recv_json(ws))["type"], "flood", "within the limit")
            # More than the queue holds in one go: closed, not buffered.
            await ws.send('{"type":"flood","n":100}')
            eq(await expect_close(ws, 1008), "slow consumer", "close reason")
        m = gw.metrics()
        eq(m['im_gateway_closes_total{reason="slow_consumer"}'], 1, "counted")
        eq(m["im_gateway_bufpool_in_use"], 0, "every queued reference released")


async def test_kick(binary):
    with Gateway(binary) as gw:
        async with gw.connect(token(1)) as ws:
            await ws.send('{"type":"kick"}')
            eq(await expect_close(ws, 4000), "kicked", "close reason")
        for _ in range(40):
            m = gw.metrics()
            if m["gw_testd_closes_total"] == 1:
                break
            await asyncio.sleep(0.05)
        eq(m["gw_testd_opens_total"], 1, "on_open ran")
        eq(m["gw_testd_closes_total"], 1, "on_close ran")
        eq(m["gw_testd_last_close_code"], 4000, "on_close got the code")


def test_api_answered_asynchronously(binary):
    with Gateway(binary) as gw:
        status, _, body = http("POST", gw.url("/api/echo?a=1&b=two"), body=b'{"x":"\xc3\xa9"}',
                               headers={"Authorization": "Bearer abc.def.ghi",
                                        "Content-Type": "application/json"})
        eq(status, 200, "status")
        eq(json.loads(body), {"method": "POST", "path": "/api/echo", "query": "a=1&b=two",
                              "body": '{"x":"\u00e9"}', "bearer": "abc.def.ghi"}, "echo")
        status, _, body = http("GET", gw.url("/api/echo"))
        eq((status, json.loads(body)["bearer"]), (200, None), "GET without body or token")
        status, _, body = http("GET", gw.url("/api/other"))
        eq((status, json.loads(body)["error"]["code"]), (404, "not_found"), "hook's 404")


def test_health_hook(binary):
    with Gateway(binary) as gw:
        status, _, body = http("GET", gw.url("/healthz"))
        eq((status, json.loads(body)["checks"]), (200, {"upstream": "ok"}), "healthy")
        eq(http("POST", gw.url("/api/health/down"), body=b"")[0], 204, "flip down")
        status, _, body = http("GET", gw.url("/healthz"))
        h = json.loads(body)
        eq((status, h["status"], h["checks"]), (503, "unavailable", {"upstream": "down"}),
           "unhealthy")
        eq(http("POST", gw.url("/api/health/up"), body=b"")[0], 204, "flip up")
        eq(http("GET", gw.url("/healthz"))[0], 200, "healthy again")


async def test_shutdown_with_work_in_flight(binary):
    with Gateway(binary) as gw:
        clients = [await gw.connect(token(i + 1)) for i in range(20)]
        for ws in clients:
            for i in range(20):
                await ws.send('{"type":"echo","data":"x"}')
        eq(await gw.astop(), 0, "exit status")
        true("gw_testd: stopped" in gw.log(), "clean stop")
        for ws in clients:
            try:
                while True:
                    await asyncio.wait_for(ws.recv(), 3)
            except websockets.ConnectionClosed:
                pass
            eq(ws.close_code, 1001, "close code")


main([test_frames_answered_from_another_thread, test_session_data_follows_each_session,
      test_fanout_to_every_device,
      test_slow_consumer_is_closed, test_kick, test_api_answered_asynchronously,
      test_health_hook, test_shutdown_with_work_in_flight])
