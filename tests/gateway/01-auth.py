"""01-auth: the token is checked before the WebSocket upgrade; every bad one
gets HTTP 401 (not a dropped socket, not an upgrade then a close)."""
import json
import time

from gwtest import Gateway, eq, expect_refused, http, main, recv_json, token, true


async def test_missing_token(binary):
    with Gateway(binary) as gw:
        await expect_refused(gw, None, 401)


async def test_forged_token(binary):
    with Gateway(binary) as gw:
        await expect_refused(gw, token(7, secret="another-secret-0123456789abcdef-0123"), 401)
        # A valid token with one character of the payload changed.
        good = token(7)
        head, body, sig = good.split(".")
        bad = head + "." + body[:-2] + ("A" if body[-2] != "A" else "B") + body[-1] + "." + sig
        await expect_refused(gw, bad, 401)
        await expect_refused(gw, "not-a-jwt", 401)


async def test_expired_token(binary):
    with Gateway(binary) as gw:
        now = int(time.time())
        await expect_refused(gw, token(7, iat=now - 7200, exp=now - 3600), 401)
        eq(gw.metrics()['im_gateway_upgrades_refused_total{reason="expired"}'], 1,
           "expired refusals")


async def test_alg_none_token(binary):
    with Gateway(binary) as gw:
        await expect_refused(gw, token(7, alg="none", sign=False), 401)
        # "none" with a signature that is still a valid HS256 MAC: the gateway
        # only ever accepts HS256 headers.
        await expect_refused(gw, token(7, alg="none"), 401)
        await expect_refused(gw, token(7, alg="HS512"), 401)


async def test_401_is_a_real_http_response(binary):
    # A plain HTTP client sees the status, a JSON body and the challenge.
    with Gateway(binary) as gw:
        status, headers, body = http("GET", gw.url("/ws"), headers={
            "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
        eq(status, 401, "status")
        eq(headers.get("www-authenticate"), "Bearer", "www-authenticate")
        eq(json.loads(body)["error"]["code"], "unauthorized", "error code")


async def test_valid_token_query_and_header(binary):
    with Gateway(binary) as gw:
        async with gw.connect(token(42, name="alice")) as ws:
            await ws.send('{"type":"ping"}')
            eq((await recv_json(ws))["type"], "pong", "reply over ?token=")
        async with gw.connect(None, extra_headers={"Authorization": "Bearer " + token(43)}) as ws:
            await ws.send('{"type":"ping"}')
            eq((await recv_json(ws))["type"], "pong", "reply over Authorization")
        # No Sec-WebSocket-Protocol was offered by these clients: accepted.
        true(ws.subprotocol is None, "no subprotocol negotiated")


async def test_upgrade_elsewhere_is_404(binary):
    with Gateway(binary) as gw:
        await expect_refused(gw, token(7), 404, path="/chat")


main([test_missing_token, test_forged_token, test_expired_token, test_alg_none_token,
      test_401_is_a_real_http_response, test_valid_token_query_and_header,
      test_upgrade_elsewhere_is_404])
