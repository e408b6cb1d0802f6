"""07-load: many concurrent connections on one gateway: every one is
authenticated, answered and counted; prints the gateway's memory per idle
connection.  GW_LOAD_CONNS sets the count (default 200)."""
import asyncio
import os

from gwtest import Gateway, eq, main, recv_json, token, true


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS for pid %d" % pid)


async def test_many_connections(binary):
    n = int(os.environ.get("GW_LOAD_CONNS", "200"))
    with Gateway(binary) as gw:
        before = rss_kib(gw.pid)
        # Open in waves: the listen backlog and the client's own loop both
        # like bounded bursts better than n simultaneous handshakes.
        clients = []
        for start in range(0, n, 100):
            wave = [gw.connect(token(1 + i % 50)) for i in range(start, min(n, start + 100))]
            clients += await asyncio.gather(*wave)
        eq(gw.metrics()["im_gateway_connections"], n, "connections gauge")
        await asyncio.gather(*(ws.send('{"type":"ping","cid":%d}' % i)
                               for i, ws in enumerate(clients)))
        replies = await asyncio.gather(*(recv_json(ws, timeout=20) for ws in clients))
        eq([r["cid"] for r in replies], list(range(n)), "every client answered")
        after = rss_kib(gw.pid)
        per_conn = (after - before) * 1024 / n
        print("    %d connections: RSS %d KiB -> %d KiB, %.0f bytes per connection"
              % (n, before, after, per_conn))
        true(per_conn < 64 * 1024, "memory per connection %.0f bytes" % per_conn)
        await asyncio.gather(*(ws.close() for ws in clients))
        for _ in range(100):
            m = gw.metrics()
            if m["im_gateway_connections"] == 0:
                break
            await asyncio.sleep(0.05)
        eq(m["im_gateway_connections"], 0, "all closed")
        eq(m['im_gateway_closes_total{reason="peer"}'], n, "peer closes")


main([test_many_connections])
