"""03-sessions: several devices of one user, idle timeouts driven by the
timing wheel, pings to quiet clients, and pongs counting as liveness."""
import asyncio
import time

from gwtest import Gateway, RawWs, eq, expect_close, main, recv_json, token, true


async def test_two_devices_of_one_user(binary):
    with Gateway(binary) as gw:
        async with gw.connect(token(5, name="bob")) as a, gw.connect(token(5, name="bob")) as b:
            await a.send('{"type":"ping","cid":"a"}')
            await b.send('{"type":"ping","cid":"b"}')
            eq((await recv_json(a))["cid"], "a", "device a")
            eq((await recv_json(b))["cid"], "b", "device b")
            eq(gw.metrics()["im_gateway_connections"], 2, "connections gauge")
        # Closing both is seen: the gauge drops, each as a peer close.
        for _ in range(50):
            m = gw.metrics()
            if m["im_gateway_connections"] == 0:
                break
            await asyncio.sleep(0.05)
        eq(m["im_gateway_connections"], 0, "connections after closing")
        eq(m['im_gateway_closes_total{reason="peer"}'], 2, "peer closes")
        eq(m["im_gateway_connections_total"], 2, "sessions opened")


async def test_idle_timeout_closes_silent_client(binary):
    with Gateway(binary, "--idle-timeout", "1s", "--ping-interval", "0") as gw:
        async with gw.connect(token(1), ping_interval=None) as ws:
            start = time.monotonic()
            reason = await expect_close(ws, 1000, timeout=5)
            took = time.monotonic() - start
            eq(reason, "idle timeout", "close reason")
            true(0.8 <= took <= 2.5, "closed after %.2fs, want about 1s" % took)
        eq(gw.metrics()['im_gateway_closes_total{reason="idle"}'], 1, "idle closes")


async def test_traffic_keeps_a_session_open(binary):
    with Gateway(binary, "--idle-timeout", "1s", "--ping-interval", "0") as gw:
        async with gw.connect(token(1), ping_interval=None) as ws:
            for i in range(6):  # 2.4 s of traffic, every 0.4 s
                await asyncio.sleep(0.4)
                await ws.send('{"type":"ping"}')
                eq((await recv_json(ws))["type"], "pong", "reply %d" % i)


async def test_pongs_count_as_liveness(binary):
    # The client never sends a message, but the websockets library answers
    # the gateway's pings: that keeps it open past several idle timeouts.
    with Gateway(binary, "--idle-timeout", "1s", "--ping-interval", "300ms") as gw:
        async with gw.connect(token(1), ping_interval=None) as ws:
            await asyncio.sleep(2.5)
            true(ws.open, "still open after 2.5 s of pings")
        true(gw.metrics()["im_gateway_pings_total"] >= 4, "pings were sent")


def test_unanswered_pings_still_time_out(binary):
    # A raw client that reads but never answers pings: it sees the pings,
    # then the idle close.
    with Gateway(binary, "--idle-timeout", "1200ms", "--ping-interval", "300ms") as gw:
        ws = RawWs(gw.port, token(1))
        pings = 0
        start = time.monotonic()
        while True:
            op, payload = ws.read_frame()
            if op == 0x9:
                pings += 1
                continue
            eq(op, 0x8, "opcode after the pings")
            eq(int.from_bytes(payload[:2], "big"), 1000, "close code")
            break
        took = time.monotonic() - start
        true(pings >= 2, "pings before the close: %d" % pings)
        true(1.0 <= took <= 3.0, "closed after %.2fs" % took)
        ws.close()


main([test_two_devices_of_one_user, test_idle_timeout_closes_silent_client,
      test_traffic_keeps_a_session_open, test_pongs_count_as_liveness,
      test_unanswered_pings_still_time_out])
