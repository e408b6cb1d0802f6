"""02-frames: the client protocol's built-in behaviour: ping/pong, the error
frames for bad input, and the close codes for protocol violations."""
import websockets

from gwtest import Gateway, eq, expect_close, main, recv_json, token, true


async def test_ping_pong_echoes_cid(binary):
    with Gateway(binary) as gw:
        async with gw.connect(token(1)) as ws:
            await ws.send('{"type":"ping","cid":"c-1"}')
            eq(await recv_json(ws), {"type": "pong", "cid": "c-1"}, "string cid")
            await ws.send('{"cid":17,"type":"ping"}')
            eq(await recv_json(ws), {"type": "pong", "cid": 17}, "number cid")
            await ws.send('{"type":"ping"}')
            eq(await recv_json(ws), {"type": "pong"}, "no cid")


async def test_bad_json(binary):
    with Gateway(binary) as gw:
        async with gw.connect(token(1)) as ws:
            for bad in ['nope', '{"type":"ping"', '{"type":"ping",}', '', '{"a":1,"a":2}']:
                await ws.send(bad)
                r = await recv_json(ws)
                eq((r["type"], r["code"]), ("error", "bad_json"), "reply to %r" % bad)
                true(isinstance(r["message"], str) and r["message"], "a message")
            # Still usable afterwards.
            await ws.send('{"type":"ping"}')
            eq((await recv_json(ws))["type"], "pong", "after errors")


async def test_bad_request(binary):
    with Gateway(binary) as gw:
        async with gw.connect(token(1)) as ws:
            for bad in ['[1,2]', '"ping"', '{"cid":"x"}', '{"type":7}', '{"type":""}',
                        '{"type":"%s"}' % ("t" * 33), '{"type":"ping","cid":[1]}']:
                await ws.send(bad)
                r = await recv_json(ws)
                eq((r["type"], r["code"]), ("error", "bad_request"), "reply to %r" % bad)
            await ws.send('{"cid":"k9","type":null}')
            eq((await recv_json(ws)).get("cid"), "k9", "cid echoed on errors")


async def test_unknown_type(binary):
    with Gateway(binary) as gw:
        async with gw.connect(token(1)) as ws:
            await ws.send('{"type":"send","cid":"m1","to":{"user":"2"},"body":"hi"}')
            r = await recv_json(ws)
            eq((r["type"], r["code"], r["cid"]), ("error", "unknown_type", "m1"), "reply")


async def test_fragmented_message_is_reassembled(binary):
    with Gateway(binary, "--max-frame", "4k") as gw:
        async with gw.connect(token(1)) as ws:
            await ws.send(['{"type":', '"ping",', '"cid":"', "f" * 100, '"}'])
            eq(await recv_json(ws), {"type": "pong", "cid": "f" * 100}, "fragments")
            # Fragments that exceed max-frame only together.
            await ws.send(['{"type":"ping","pad":"', "x" * 3000, "y" * 3000, '"}'])
            await expect_close(ws, 1009)


async def test_max_frame(binary):
    with Gateway(binary, "--max-frame", "1k") as gw:
        async with gw.connect(token(1)) as ws:
            msg = '{"type":"ping","pad":"%s"}' % ("x" * (1024 - 24))
            eq(len(msg), 1024, "test message size")
            await ws.send(msg)
            eq((await recv_json(ws))["type"], "pong", "exactly max-frame is fine")
            await ws.send(msg + " ")
            reason = await expect_close(ws, 1009)
            eq(reason, "message too big", "close reason")
        # A big message in one frame, much larger than lws's receive buffer.
        async with gw.connect(token(1)) as ws:
            await ws.send("x" * 200000)
            await expect_close(ws, 1009)
        eq(gw.metrics()['im_gateway_closes_total{reason="too_big"}'], 2, "too_big closes")


async def test_invalid_utf8_closes_1007(binary):
    with Gateway(binary) as gw:
        async with gw.connect(token(1)) as ws:
            # websockets would refuse to encode this: write the frame raw.
            await ws.write_frame(True, 0x1, b'{"type":"ping","x":"\xc3\x28"}')
            await expect_close(ws, 1007)
        async with gw.connect(token(1)) as ws:
            # Valid halves of a character split across fragments are fine...
            await ws.write_frame(False, 0x1, b'{"type":"ping","cid":"\xc3')
            await ws.write_frame(True, 0x0, b'\xa9"}')
            eq(await recv_json(ws), {"type": "pong", "cid": "\u00e9"}, "split character")
            # ...an overlong encoding is not.
            await ws.write_frame(True, 0x1, b'{"type":"ping","x":"\xc0\xaf"}')
            await expect_close(ws, 1007)


async def test_binary_closes_1003(binary):
    with Gateway(binary) as gw:
        async with gw.connect(token(1)) as ws:
            await ws.send(b'{"type":"ping"}')
            await expect_close(ws, 1003)


async def test_rate_limit(binary):
    with Gateway(binary, "--rate-limit", "5", "--rate-burst", "10") as gw:
        async with gw.connect(token(1)) as ws:
            # A burst of 10 passes, the next ones are refused with an error
            # frame and the connection stays open.
            for i in range(14):
                await ws.send('{"type":"ping","cid":%d}' % i)
            replies = [await recv_json(ws) for _ in range(14)]
            eq([r["type"] for r in replies[:10]], ["pong"] * 10, "burst")
            eq([r.get("code") for r in replies[10:]], ["rate_limited"] * 4, "over the limit")
            # Sustained abuse (a debt of a whole burst) closes with 1008.
            try:
                for i in range(20):
                    await ws.send('{"type":"ping"}')
            except websockets.ConnectionClosed:
                pass  # the close may overtake the last sends
            await expect_close(ws, 1008)
        m = gw.metrics()
        true(m["im_gateway_rate_limited_total"] >= 10, "rate_limited counted")
        eq(m['im_gateway_closes_total{reason="rate_limit"}'], 1, "rate_limit closes")


main([test_ping_pong_echoes_cid, test_bad_json, test_bad_request, test_unknown_type,
      test_fragmented_message_is_reassembled, test_max_frame, test_invalid_utf8_closes_1007,
      test_binary_closes_1003, test_rate_limit])
