"""05-shutdown: SIGTERM/SIGINT close every client with 1001 "going away" and
the process exits 0 within a couple of seconds, even when a client does not
cooperate."""
import asyncio
import signal
import time

from gwtest import Gateway, RawWs, eq, expect_close, main, recv_json, token, true


async def test_sigterm_closes_clients_with_1001(binary):
    with Gateway(binary) as gw:
        clients = [await gw.connect(token(i + 1)) for i in range(5)]
        for ws in clients:
            await ws.send('{"type":"ping"}')
            await recv_json(ws)
        start = time.monotonic()
        stopped = asyncio.ensure_future(gw.astop())
        for ws in clients:
            eq(await expect_close(ws, 1001, timeout=3), "going away", "close reason")
        rc = await stopped
        took = time.monotonic() - start
        eq(rc, 0, "exit status")
        true(took < 2.5, "stopped in %.2fs" % took)
        true("gateway: stopped" in gw.log(), "logged its stop")


def test_sigint_without_clients(binary):
    with Gateway(binary) as gw:
        start = time.monotonic()
        eq(gw.stop(signal.SIGINT), 0, "exit status")
        true(time.monotonic() - start < 1.0, "prompt exit")


def test_uncooperative_client_does_not_hold_shutdown(binary):
    # A raw client that never reads nor answers the close: the gateway waits
    # shutdown-timeout (2 s by default), then cuts it and exits 0.
    with Gateway(binary) as gw:
        ws = RawWs(gw.port, token(9))
        start = time.monotonic()
        rc = gw.stop(signal.SIGTERM, timeout=6)
        took = time.monotonic() - start
        eq(rc, 0, "exit status")
        true(took < 4.0, "stopped in %.2fs" % took)
        ws.close()


async def test_new_connections_refused_while_stopping(binary):
    # A client that holds the shutdown open (it reads the 1001 but never
    # replies) gives a window in which new upgrades must be refused.
    with Gateway(binary, "--shutdown-timeout", "3s") as gw:
        ws = RawWs(gw.port, token(9))
        gw.proc.send_signal(signal.SIGTERM)
        op, payload = ws.read_frame()
        eq((op, int.from_bytes(payload[:2], "big")), (0x8, 1001), "close frame")
        opened = False
        try:
            async with gw.connect(token(10)):
                opened = True
        except Exception:
            pass  # refused at accept: a reset or an incomplete handshake
        true(not opened, "a new session opened during shutdown")
        ws.close()
        eq(await asyncio.get_running_loop().run_in_executor(None, gw.wait, 6), 0,
           "exit status")


main([test_sigterm_closes_clients_with_1001, test_sigint_without_clients,
      test_uncooperative_client_does_not_hold_shutdown,
      test_new_connections_refused_while_stopping])
