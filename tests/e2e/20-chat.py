"""20-chat: the whole system end to end with an independent WebSocket client
(python3-websockets): two logic instances and two gateways on the real
RabbitMQ, MariaDB and Redis.

  - direct chat between users on different gateways, with multi-device echo
    (the sender's other device gets the message, the sending one only the ack);
  - a group chat across both gateways, joined before and while connected;
  - a user offline during messages reconnects and syncs exactly the missed
    ones, in order;
  - receipts and typing reach the other side;
  - bad input gets clear error frames; the REST API's errors are JSON;
  - a burst of sends from one client is acked send by send, and reaches
    logic in fewer SendBatch calls than sends;
  - 50 sessions opened at once (registered by Session.Connect) are all
    ready and routed, and closed at once (Session.Disconnect) all go offline;
  - a gateway whose lease and routes vanished from Redis registers its 300
    sessions again (batched) at its next heartbeat, and they get messages live.

Usage: 20-chat.py <logic binary> <gateway binary>   (IM_STATE_DIR: infra)
"""
import asyncio
import json
import signal
import subprocess
import sys
import time

import pymysql
import websockets

from imsys import System, nothing, ready, recv, recv_type, send
import gwtest
from gwtest import eq, true


async def direct_and_multi_device(sys_):
    alice, bob = sys_.signup("alice"), sys_.signup("bob")
    async with sys_.ws(0, alice) as a1, sys_.ws(1, alice) as a2, sys_.ws(1, bob) as b:
        for ws in (a1, a2, b):
            await ready(ws)
        await send(a1, "d-1", "hello bob \U0001f44b", user=bob["id"])
        ack = await recv_type(a1, "ack")
        eq(ack["cid"], "d-1", "ack cid")
        true(ack["seq"] >= 1 and ack["id"] and ack["conv"].startswith("d:"), "ack fields")
        got = await recv_type(b, "msg")
        eq((got["id"], got["body"], got["from"], got["seq"]),
           (ack["id"], "hello bob \U0001f44b", alice["id"], ack["seq"]), "bob's msg")
        eq(got["to"], {"user": bob["id"]}, "msg to")
        echo = await recv_type(a2, "msg")
        eq(echo["id"], ack["id"], "alice's other device")
        await nothing(a1)  # the sending device gets the ack only
        # The reply reaches both of alice's devices.
        await send(b, "d-2", "hi alice", user=alice["id"])
        ack2 = await recv_type(b, "ack")
        true(ack2["seq"] > ack["seq"], "seq increases in the conversation")
        for ws in (a1, a2):
            eq((await recv_type(ws, "msg"))["id"], ack2["id"], "reply on every device")
        # A retry with the same cid is the same message, not a second one.
        await send(a1, "d-1", "hello bob again", user=bob["id"])
        dup = await recv_type(a1, "ack")
        eq((dup["id"], dup.get("duplicate")), (ack["id"], True), "dedup of a retried send")
        await nothing(b)
        # Receipts and typing.
        await b.send(json.dumps({"type": "read", "conv": ack["conv"], "seq": ack2["seq"]}))
        eq((await recv_type(b, "read_ok"))["seq"], ack2["seq"], "read_ok")
        r = await recv_type(a1, "receipt")
        eq((r["user"], r["seq"], r["conv"]), (bob["id"], ack2["seq"], ack["conv"]), "receipt")
        await b.send(json.dumps({"type": "typing", "to": {"user": alice["id"]}}))
        t = await recv_type(a2, "typing")
        eq(t["user"], bob["id"], "typing")
        # Who is online now, for a client that connected after the peer did.
        status, body = sys_.api("GET", "/api/v1/conversations", None, alice["token"])
        conv = [c for c in body["conversations"] if c["conv"] == ack["conv"]][0]
        eq((status, conv["peer"], conv["peer_online"]), (200, bob["id"], True), "peer online")
    for _ in range(50):  # bob's Offline is asynchronous
        status, body = sys_.api("GET", "/api/v1/conversations", None, alice["token"])
        conv = [c for c in body["conversations"] if c["conv"] == ack["conv"]][0]
        if not conv["peer_online"]:
            break
        await asyncio.sleep(0.1)
    eq(conv["peer_online"], False, "peer offline after it left")


async def group_chat(sys_):
    owner, bob, carol, eve = (sys_.signup(t) for t in ("own", "bob", "carol", "eve"))
    status, body = sys_.api("POST", "/api/v1/groups", {"name": "team \u2615"}, owner["token"])
    eq(status, 201, "create group (%r)" % body)
    gid = body["group"]["id"]
    status, _ = sys_.api("POST", "/api/v1/groups/%s/join" % gid, None, carol["token"], gw=1)
    eq(status, 200, "carol joins")
    async with sys_.ws(0, owner) as o, sys_.ws(1, bob) as b, sys_.ws(1, carol) as c, \
            sys_.ws(0, eve) as e:
        for ws in (o, b, c, e):
            await ready(ws)
        # bob joins while connected: his gateway binds the group by itself.
        status, body = sys_.api("POST", "/api/v1/groups/%s/join" % gid, None, bob["token"])
        eq((status, body["group"]["member_count"]), (200, 3), "bob joins")
        await recv_type(b, "group")
        await send(o, "g-1", "hello team", group=gid)
        ack = await recv_type(o, "ack")
        eq(ack["conv"], "g:" + gid, "group conv")
        for ws in (b, c):
            m = await recv_type(ws, "msg")
            eq((m["id"], m["to"]), (ack["id"], {"group": gid}), "group msg")
        await nothing(o)
        await nothing(e)
        # Non-members may not post; the error says why.
        await send(e, "g-2", "let me in", group=gid)
        err = await recv_type(e, "error")
        eq((err["cid"], err["code"]), ("g-2", "not_member"), "non-member refused")
        status, body = sys_.api("GET", "/api/v1/groups/%s/members" % gid, None, eve["token"])
        eq((status, body["error"]["code"]), (403, "not_member"), "members: non-member")


async def offline_sync(sys_):
    alice, dave = sys_.signup("alice"), sys_.signup("dave")
    acks = []
    async with sys_.ws(0, alice) as a:
        await ready(a)
        for i in range(5):
            await send(a, "o-%d" % i, "missed %d" % i, user=dave["id"])
            acks.append(await recv_type(a, "ack"))
    conv = acks[0]["conv"]
    async with sys_.ws(1, dave) as d:
        await ready(d)
        # Acked messages are durable: they are in MySQL within the writer's
        # delay, so a sync right after ready may need one retry.
        for _ in range(50):
            await d.send(json.dumps({"type": "sync", "cid": "s1", "have": {}}))
            msgs = []
            while True:
                f = await recv(d)
                if f["type"] == "synced":
                    break
                if f["type"] == "msg":
                    msgs.append(f)
            if len(msgs) >= 5:
                break
            await asyncio.sleep(0.1)
        eq([m["id"] for m in msgs], [x["id"] for x in acks], "exactly the missed, in order")
        eq([m["seq"] for m in msgs], sorted(m["seq"] for m in msgs), "seq order")
        # Having the third, it gets the last two.
        await d.send(json.dumps({"type": "sync", "have": {conv: acks[2]["seq"]}}))
        rest = []
        while (f := await recv(d))["type"] != "synced":
            if f["type"] == "msg":
                rest.append(f["id"])
        eq(rest, [x["id"] for x in acks[3:]], "sync from a seq")
        await d.send(json.dumps({"type": "history", "cid": "h", "conv": conv, "limit": 2}))
        h = await recv_type(d, "history")
        eq(([m["id"] for m in h["messages"]], h["more"]),
           ([acks[4]["id"], acks[3]["id"]], True), "history newest first")


async def bad_input(sys_):
    u = sys_.signup("bad")
    async with sys_.ws(0, u) as w:
        await ready(w)
        cases = [
            ("{not json", "bad_json"),
            (json.dumps({"type": "send", "to": {"user": u["id"]}, "body": "x"}), "bad_request"),
            (json.dumps({"type": "send", "cid": "b1", "to": {}, "body": "x"}), "bad_target"),
            (json.dumps({"type": "send", "cid": "b2", "to": {"user": "1"}, "body": "x"}),
             "unknown_user"),
            (json.dumps({"type": "send", "cid": "b3", "to": {"user": u["id"]}, "body": ""}),
             "empty_body"),
            (json.dumps({"type": "send", "cid": "b4", "to": {"user": u["id"]},
                         "body": "x" * 5000}), "body_too_large"),
            (json.dumps({"type": "send", "cid": "b5", "to": {"user": u["id"]}, "body": 7}),
             "bad_request"),
            (json.dumps({"type": "read", "conv": "d:1:2", "seq": 1}), "not_participant"),
            (json.dumps({"type": "history", "conv": "nope"}), "bad_conv"),
            (json.dumps({"type": "fly"}), "unknown_type"),
        ]
        for frame, code in cases:
            await w.send(frame)
            err = await recv_type(w, "error")
            eq(err["code"], code, "error for %s" % frame[:60])
        status, body = sys_.api("POST", "/api/v1/login", {"username": u["name"],
                                                          "password": "wrong-password"})
        eq((status, body["error"]["code"]), (401, "bad_credentials"), "bad login")
        status, body = sys_.api("GET", "/api/v1/groups", None, "forged.token.here")
        eq((status, body["error"]["code"]), (401, "invalid_token"), "forged token")
        status, body = sys_.api("POST", "/api/v1/register", {"username": u["name"],
                                                             "password": "password1"})
        eq((status, body["error"]["code"]), (409, "username_taken"), "duplicate username")
        status, _, raw = gwtest.http("GET", sys_.gateways[0].url("/healthz"))
        eq(status, 200, "healthz with logic and broker up (%r)" % raw)


async def verbatim(sys_):
    """SQL-looking, control-character, huge and odd Unicode text is stored
    and returned byte for byte (prepared statements everywhere)."""
    a, b = sys_.signup("vrb"), sys_.signup("vrb")
    bodies = [
        "'); DROP TABLE messages; --",
        "\" OR 1=1 -- \\ \\' %s %d",
        "\u202eRTL override\u202c zero\u200bwidth \ufeff BOM",
        "emoji \U0001F469\u200d\U0001F469\u200d\U0001F467 combining e\u0301",
        "tab\tnewline\nbell\x07 del\x7f",
        "\U00010348" * 1000,  # 4000 bytes of 4-byte UTF-8: right at the limit
    ]
    status, body = sys_.api("POST", "/api/v1/groups", {"name": "Robert'); DROP TABLE--"},
                            a["token"])
    eq((status, body["group"]["name"]), (201, "Robert'); DROP TABLE--"), "group name verbatim")
    async with sys_.ws(0, a) as wa, sys_.ws(1, b) as wb:
        await ready(wa)
        await ready(wb)
        acks = []
        for i, text in enumerate(bodies):
            await send(wa, "v-%d" % i, text, user=b["id"])
            ack = await recv_type(wa, "ack")
            acks.append(ack)
            eq((await recv_type(wb, "msg"))["body"], text, "live body %d verbatim" % i)
        for _ in range(50):
            status, h = sys_.api("GET", "/api/v1/conversations/%s/messages?limit=50"
                                 % acks[0]["conv"], None, b["token"], gw=1)
            if status == 200 and len(h["messages"]) == len(bodies):
                break
            await asyncio.sleep(0.1)
        eq([m["body"] for m in reversed(h["messages"])], bodies, "stored bodies verbatim")
        # NUL is the one character a body may not hold: refused, not cut short.
        await send(wa, "v-nul", "before\x00after", user=b["id"])
        eq((await recv_type(wa, "error"))["code"], "bad_request", "NUL in a body")


async def deleted_account(sys_):
    """A deleted account cannot log in, open a session or send, even with a
    token issued before; the deletion asks for the password."""
    u, peer = sys_.signup("del"), sys_.signup("del")
    status, body = sys_.api("GET", "/api/v1/users?name=" + u["name"].upper(), None, peer["token"])
    eq((status, body["users"]), (200, [{"id": u["id"], "username": u["name"]}]), "find by name")
    status, body = sys_.api("GET", "/api/v1/users?ids=%s,%s,1" % (u["id"], peer["id"]), None,
                            peer["token"])
    eq(sorted(x["id"] for x in body["users"]), sorted([u["id"], peer["id"]]), "find by ids")
    async with sys_.ws(0, u) as w:
        await ready(w)
        status, body = sys_.api("POST", "/api/v1/me/delete", {"password": "not-it-1"},
                                u["token"])
        eq((status, body["error"]["code"]), (401, "bad_credentials"), "delete needs the password")
        status, body = sys_.api("POST", "/api/v1/me/delete", {"password": "password1"},
                                u["token"])
        eq((status, body), (200, {"deleted": True}), "delete")
        await send(w, "del-1", "still here?", user=peer["id"])
        eq((await recv_type(w, "error"))["code"], "user_deleted", "send after delete")
    status, body = sys_.api("POST", "/api/v1/login", {"username": u["name"],
                                                      "password": "password1"})
    eq(status, 401, "login after delete")
    status, body = sys_.api("GET", "/api/v1/users?name=" + u["name"], None, peer["token"])
    eq((status, body["users"]), (200, []), "a deleted user is not found")
    async with sys_.ws(1, u) as w:
        try:
            f = await recv(w)
            raise AssertionError("a deleted user's session got %r" % f)
        except websockets.exceptions.ConnectionClosed as e:
            eq((e.code, e.reason), (1008, "user_deleted"), "session of a deleted user")


async def connect_storm(sys_):
    """Sessions that close before logic answered their registration (a
    benchmark crashed the gateway this way): the gateway stays up and a
    session opened afterwards works."""
    u = sys_.signup("storm")
    for _ in range(3):
        conns = [await sys_.ws(0, u).__aenter__() for _ in range(20)]
        for ws in conns:
            await ws.close()
    async with sys_.ws(0, u) as w:
        await ready(w)
        await w.send(json.dumps({"type": "ping", "cid": 1}))
        eq((await recv_type(w, "pong"))["cid"], 1, "pong after the storm")
    status, _, _ = gwtest.http("GET", sys_.gateways[0].url("/healthz"))
    eq(status, 200, "healthz after the storm")


async def metrics_move(sys_):
    """Both services' /metrics parse as Prometheus text and count what
    flowed: sends, acks, deliveries, commits, latency observations."""
    before_gw = sys_.gateways[0].metrics()
    before_lg = [lg.metrics() for lg in sys_.logics]
    a, b = sys_.signup("met"), sys_.signup("met")
    async with sys_.ws(0, a) as wa, sys_.ws(0, b) as wb:
        await ready(wa)
        await ready(wb)
        for i in range(6):
            await send(wa, "mt-%d" % i, "counted", user=b["id"])
            await recv_type(wa, "ack")
            await recv_type(wb, "msg")
    after_gw = sys_.gateways[0].metrics()
    true(after_gw["im_gateway_acks_total"] >= before_gw["im_gateway_acks_total"] + 6, "gw acks")
    true(after_gw["im_gateway_delivered_frames_total"]
         >= before_gw["im_gateway_delivered_frames_total"] + 6, "gw delivered frames")
    true(after_gw["im_gateway_send_ack_seconds_count"]
         >= before_gw["im_gateway_send_ack_seconds_count"] + 6, "gw ack latency histogram")
    for _ in range(50):  # the writer commits within its delay
        after_lg = [lg.metrics() for lg in sys_.logics]
        committed = sum(m["im_logic_writer_messages_total"] for m in after_lg) - \
            sum(m["im_logic_writer_messages_total"] for m in before_lg)
        if committed >= 6:
            break
        await asyncio.sleep(0.1)
    true(committed >= 6, "writer commits counted (%r)" % committed)
    sends = sum(m["im_logic_sends_total"] for m in after_lg) - \
        sum(m["im_logic_sends_total"] for m in before_lg)
    acked = sum(m["im_logic_send_ack_seconds_count"] for m in after_lg) - \
        sum(m["im_logic_send_ack_seconds_count"] for m in before_lg)
    true(sends >= 6 and acked >= 6, "logic sends %r, ack latencies %r" % (sends, acked))
    for m in after_lg:
        eq((m["im_logic_up"], m["im_logic_publisher_connected"], m["im_logic_writer_connected"]),
           (1, 1, 1), "logic up and connected")


BURST = 300
GROUP_BURST = 100


async def send_burst_is_batched(sys_):
    """One client sending 300 messages without waiting for acks: 300 acks,
    one per cid, each a distinct message of the conversation with seqs in the
    order they were sent (two logic instances run: the conversation's lane
    takes them all to one, one batch at a time), the peer gets each once and
    in that order, and the gateway made fewer SendBatch calls to logic than
    there were sends (the sends read in one loop turn share one call)."""
    a, b = sys_.signup("burst"), sys_.signup("burst")
    gw = sys_.gateways[0]
    async with sys_.ws(0, a) as wa, sys_.ws(1, b) as wb:
        await ready(wa)
        await ready(wb)
        before = gw.metrics()
        cids = ["bu-%d" % i for i in range(BURST)]
        for cid in cids:
            await send(wa, cid, "burst " + cid, user=b["id"])
        acks = {}
        while len(acks) < BURST:
            ack = await recv_type(wa, "ack")
            true(ack["cid"] not in acks, "a second ack for %r" % ack["cid"])
            acks[ack["cid"]] = ack
        eq(sorted(acks), sorted(cids), "one ack per cid")
        eq(len({x["id"] for x in acks.values()}), BURST, "distinct message ids")
        eq(len({x["seq"] for x in acks.values()}), BURST, "distinct seqs")
        eq({x["conv"] for x in acks.values()}, {acks[cids[0]]["conv"]}, "one conversation")
        true(not any(x.get("duplicate") for x in acks.values()), "no ack is a duplicate")
        seqs = [int(acks[c]["seq"]) for c in cids]
        eq(seqs, sorted(seqs), "seqs in the order the client sent")
        got, order = {}, []
        while len(got) < BURST:
            m = await recv_type(wb, "msg")
            true(m["id"] not in got, "message %s delivered twice" % m["id"])
            got[m["id"]] = m["body"]
            order.append(m["body"])
        eq(got, {x["id"]: "burst " + c for c, x in acks.items()}, "the peer got each message")
        eq(order, ["burst " + c for c in cids], "the peer got them in the order sent")
        await nothing(wa)
        after = gw.metrics()
    sends = after["im_gateway_sends_total"] - before["im_gateway_sends_total"]
    batches = after["im_gateway_send_batches_total"] - before["im_gateway_send_batches_total"]
    eq(sends, BURST, "gateway sends counted")
    eq(after["im_gateway_acks_total"] - before["im_gateway_acks_total"], BURST, "gateway acks")
    eq(after["im_gateway_send_errors_total"], before["im_gateway_send_errors_total"],
       "no send errors")
    true(1 <= batches < sends, "SendBatch calls %r for %r sends: not batched" % (batches, sends))
    print("     %d sends in %d SendBatch calls" % (sends, batches), flush=True)
    # A group burst: the batch's messages reach the group's key as one
    # delivery, which every member's gateway unpacks; the sender's other
    # device gets them too, the sending one only its acks.
    owner, member = sys_.signup("burst"), sys_.signup("burst")
    status, body = sys_.api("POST", "/api/v1/groups", {"name": "burst"}, owner["token"])
    eq(status, 201, "create group (%r)" % body)
    gid = body["group"]["id"]
    status, _ = sys_.api("POST", "/api/v1/groups/%s/join" % gid, None, member["token"], gw=1)
    eq(status, 200, "member joins")
    async with sys_.ws(0, owner) as o1, sys_.ws(1, owner) as o2, sys_.ws(1, member) as m:
        for ws in (o1, o2, m):
            await ready(ws)
        for i in range(GROUP_BURST):
            await send(o1, "gb-%d" % i, "group burst %d" % i, group=gid)
        acks = {}
        while len(acks) < GROUP_BURST:
            ack = await recv_type(o1, "ack")
            acks[ack["cid"]] = ack["id"]
        eq(sorted(acks), sorted("gb-%d" % i for i in range(GROUP_BURST)), "group acks")
        for ws, who in ((m, "member"), (o2, "owner's other device")):
            got = []
            while len(got) < GROUP_BURST:
                f = await recv_type(ws, "msg")
                eq(f["to"], {"group": gid}, "group msg to")
                got.append(f["id"])
            eq(sorted(got), sorted(acks.values()), "the group burst reached the %s once" % who)
        await nothing(o1)


STORM = 50


async def peers_online(sys_, user, peers, gw=1):
    """{peer id: peer_online} of user's direct conversations with peers."""
    status, body = sys_.api("GET", "/api/v1/conversations", None, user["token"], gw=gw)
    eq(status, 200, "conversations (%r)" % body)
    return {c["peer"]: c["peer_online"] for c in body["conversations"] if c["peer"] in peers}


async def presence_of(ws, ids, online, timeout=10):
    """Waits for a presence frame (online or not) of each of ids."""
    left, deadline = set(ids), time.monotonic() + timeout
    while left and time.monotonic() < deadline:
        try:
            f = await recv(ws, max(0.1, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            break
        if f["type"] == "presence" and f["online"] == online:
            left.discard(f["user"])
        elif f["type"] == "error":
            raise AssertionError("waiting for presence, got %r" % f)
    eq(left, set(), "no %s presence of these users" % ("online" if online else "offline"))


async def connect_burst_is_batched(sys_):
    """50 WebSockets of distinct users opened at once on one gateway (the
    gateway registers the sessions of a loop turn with one Session.Connect):
    each hears "ready", is routed to (a peer sees it online, and a message
    to it arrives live), and its peer hears its presence.  All closed at once
    (one Session.Disconnect per turn): each goes offline, the peer hears
    that too.  (Neither service counts Session calls, so how many were made
    is not checked.)"""
    users = [sys_.signup("cb") for _ in range(STORM)]
    ids = {u["id"] for u in users}
    peer = sys_.signup("cbpeer")
    gw = sys_.gateways[0]
    before = gw.metrics()
    async with sys_.ws(1, peer) as p:
        await ready(p)
        # A direct chat with each, so each one's presence reaches the peer.
        for i, u in enumerate(users):
            await send(p, "cb-%d" % i, "before", user=u["id"])
            await recv_type(p, "ack")
        for _ in range(100):  # user_convs rows are written with the messages
            online = await peers_online(sys_, peer, ids)
            if len(online) == STORM:
                break
            await asyncio.sleep(0.1)
        eq(online, {i: False for i in ids}, "a conversation with each, nobody online")
        conns = await asyncio.gather(*(sys_.ws(0, u).__aenter__() for u in users))
        try:
            await asyncio.gather(*(ready(ws) for ws in conns))
            await presence_of(p, ids, True)
            eq(await peers_online(sys_, peer, ids), {i: True for i in ids}, "all routed")
            for i, u in enumerate(users):
                await send(p, "cb-live-%d" % i, "live %d" % i, user=u["id"])
                await recv_type(p, "ack")
            for i, ws in enumerate(conns):
                m = await recv_type(ws, "msg")
                eq((m["body"], m["from"]), ("live %d" % i, peer["id"]), "live to user %d" % i)
        finally:
            await asyncio.gather(*(ws.close() for ws in conns), return_exceptions=True)
        await presence_of(p, ids, False)
        for _ in range(50):
            online = await peers_online(sys_, peer, ids)
            if not any(online.values()):
                break
            await asyncio.sleep(0.1)
        eq(online, {i: False for i in ids}, "all taken offline")
    after = gw.metrics()
    true(after["im_gateway_connections_total"] - before["im_gateway_connections_total"] >= STORM,
         "connections counted")
    print("     %d sessions opened and closed at once" % STORM, flush=True)


def redis_cli(sys_, *args):
    out = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", sys_.env["IM_REDIS_PORT"]] +
                         [str(a) for a in args], check=True, capture_output=True, text=True)
    return out.stdout.split()


REREG_MANY = 280  # sessions of one user
REREG_USERS = 20  # users with one session each


async def routes_back_after_lease_lost(sys_):
    """The gateway's lease and its sessions' routes vanish from Redis (as
    when Redis loses its data): the gateway's next heartbeat finds the lease
    new and registers all 300 of its sessions again, in batched
    Session.Connect calls; every route is back, and a message to each user
    then arrives live on every one of its sessions."""
    many, peer = sys_.signup("rrmany"), sys_.signup("rrpeer")
    users = [sys_.signup("rr") for _ in range(REREG_USERS)]
    gw = sys_.gateways[0]
    before = gw.metrics()["im_gateway_reregistered_sessions_total"]
    conns = await asyncio.gather(*(sys_.ws(0, many).__aenter__() for _ in range(REREG_MANY)),
                                 *(sys_.ws(0, u).__aenter__() for u in users))
    try:
        await asyncio.gather(*(ready(ws) for ws in conns))
        async with sys_.ws(1, peer) as p:
            await ready(p)
            leases = redis_cli(sys_, "--scan", "--pattern", "im:gw:*-%d-*" % gw.pid)
            eq(len(leases), 1, "the gateway's lease (%r)" % leases)
            redis_cli(sys_, "DEL", leases[0], "im:route:%s" % many["id"],
                      *("im:route:%s" % u["id"] for u in users))
            for _ in range(150):  # heartbeats every second
                back = [int(redis_cli(sys_, "ZCARD", "im:route:%s" % u["id"])[0])
                        for u in [many] + users]
                if back == [REREG_MANY] + [1] * REREG_USERS:
                    break
                await asyncio.sleep(0.1)
            eq(back, [REREG_MANY] + [1] * REREG_USERS, "routes registered again")
            after = gw.metrics()["im_gateway_reregistered_sessions_total"]
            true(after - before >= REREG_MANY + REREG_USERS,
                 "sessions registered again counted (%r)" % (after - before))
            for i, u in enumerate([many] + users):
                await send(p, "rr-%d" % i, "again %d" % i, user=u["id"])
                await recv_type(p, "ack")
            got = await asyncio.gather(*(recv_type(ws, "msg") for ws in conns),
                                       return_exceptions=True)
            missed = [i for i, m in enumerate(got) if isinstance(m, BaseException)]
            eq(missed, [], "sessions without their message live")
            for i, m in enumerate(got):
                want = 0 if i < REREG_MANY else i - REREG_MANY + 1
                eq(m["body"], "again %d" % want, "live to session %d" % i)
    finally:
        await asyncio.gather(*(ws.close() for ws in conns), return_exceptions=True)
    print("     %d sessions registered again" % (REREG_MANY + REREG_USERS), flush=True)


async def stop_with_sessions(sys_):
    """A gateway stopped (SIGTERM) while its sessions are open: each client
    gets 1001, the gateway exits 0, and logic hears the sessions go (the
    peer on another gateway gets the offline presence and sees the user
    offline) rather than waiting for the gateway's lease to run out."""
    user, peer = sys_.signup("stop"), sys_.signup("stoppeer")
    gw = sys_.start_gateway_at(2)  # a third gateway, stopped here
    try:
        async with sys_.ws(1, peer) as p:
            await ready(p)
            await send(p, "st-0", "hello", user=user["id"])
            await recv_type(p, "ack")
            for _ in range(100):  # presence finds peers through the stored conversation
                if await peers_online(sys_, peer, {user["id"]}):
                    break
                await asyncio.sleep(0.1)
            uri = "ws://127.0.0.1:%d/ws?token=%s" % (gw.port, user["token"])
            async with websockets.connect(uri) as u:
                await ready(u)
                await presence_of(p, {user["id"]}, True)
                stopping = asyncio.ensure_future(gw.astop(signal.SIGTERM, timeout=10))
                code = None
                try:
                    await asyncio.wait_for(u.recv(), 5)
                except websockets.exceptions.ConnectionClosed as e:
                    code = e.code
                eq(code, 1001, "close code")
                eq(await stopping, 0, "gateway exit status after SIGTERM with a session open")
            await presence_of(p, {user["id"]}, False)
            eq(await peers_online(sys_, peer, {user["id"]}), {user["id"]: False},
               "the user is offline at once")
    finally:
        gw.__exit__(None, None, None)
    print("     stopped with a session open: exit 0, 1001, offline", flush=True)


async def connect_timed_out(sys_):
    """A Session.Connect that times out as a whole (here: its group lookup
    waits for a table lock past the gateway's 1 s deadline) after logic
    routed the session: the gateway closes the session (1011) and also takes
    it offline again, so the peer sees the user offline, not routed forever."""
    env = sys_.env
    peer, u = sys_.signup("cto"), sys_.signup("cto")
    async with sys_.ws(0, peer) as p:
        await ready(p)
        await send(p, "cto-1", "hi", user=u["id"])
        await recv_type(p, "ack")
        for _ in range(100):  # the writer stores the conversation's rows
            if await peers_online(sys_, peer, {u["id"]}, gw=0):
                break
            await asyncio.sleep(0.1)
        db = pymysql.connect(host=env["IM_MYSQL_HOST"], port=int(env["IM_MYSQL_PORT"]),
                             user=env["IM_MYSQL_USER"], password=env["IM_MYSQL_PASSWORD"],
                             database=env["IM_MYSQL_DB"], autocommit=True)
        try:
            db.cursor().execute("LOCK TABLES group_members WRITE")
            code = None
            try:
                async with sys_.ws(0, u) as w:
                    await recv(w, 15)
            except websockets.exceptions.ConnectionClosed as e:
                code = e.code
            eq(code, 1011, "the session whose Connect timed out is closed")
        finally:
            db.cursor().execute("UNLOCK TABLES")
            db.close()
        online = None
        for _ in range(50):
            online = await peers_online(sys_, peer, {u["id"]}, gw=0)
            if online == {u["id"]: False}:
                break
            await asyncio.sleep(0.1)
        eq(online, {u["id"]: False}, "the user is not left routed")
    print("     a timed-out Connect leaves nothing routed", flush=True)


def main():
    logic_bin, gateway_bin = sys.argv[1], sys.argv[2]
    with System(logic_bin, gateway_bin, n_logic=2, n_gateways=2) as sys_:
        for test in (direct_and_multi_device, group_chat, offline_sync, bad_input, verbatim,
                     deleted_account, connect_storm, metrics_move, send_burst_is_batched,
                     connect_burst_is_batched, routes_back_after_lease_lost, stop_with_sessions):
            asyncio.run(test(sys_))
            print("ok  ", test.__name__, flush=True)
    with System(logic_bin, gateway_bin, gateway_args=("--rpc-timeout", "1s")) as sys_:
        asyncio.run(connect_timed_out(sys_))
        print("ok  ", connect_timed_out.__name__, flush=True)


if __name__ == "__main__":
    main()
