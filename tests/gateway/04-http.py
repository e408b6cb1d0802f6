"""04-http: the HTTP side of the gateway port: /healthz, /metrics in the
Prometheus text format, /api/ without a handler, body limits, static files."""
from http.client import HTTPConnection
import json
import os
import socket
import subprocess
import tempfile

from gwtest import Gateway, eq, http, main, parse_metrics, recv_json, token, true


def test_healthz(binary):
    with Gateway(binary, "--gateway-id", "gw-test-1") as gw:
        status, headers, body = http("GET", gw.url("/healthz"))
        eq(status, 200, "status")
        true(headers["content-type"].startswith("application/json"), "content type")
        h = json.loads(body)
        eq(h["status"], "ok", "status field")
        eq(h["gateway"], "gw-test-1", "gateway id")
        true(h["instance"].startswith("gw-test-1-") and len(h["instance"]) == 26,
             "instance id %r: gateway id plus 16 hex digits" % h["instance"])
        eq(h["connections"], 0, "connections")


def test_instance_id_is_new_at_every_start(binary):
    ids = set()
    for _ in range(2):
        with Gateway(binary, "--gateway-id", "same") as gw:
            ids.add(json.loads(http("GET", gw.url("/healthz"))[2])["instance"])
    eq(len(ids), 2, "distinct instance ids")


async def test_metrics(binary):
    with Gateway(binary) as gw:
        status, headers, body = http("GET", gw.url("/metrics"))
        eq(status, 200, "status")
        true(headers["content-type"].startswith("text/plain; version=0.0.4"), "content type")
        m = parse_metrics(body.decode())
        for name in ["im_gateway_connections", "im_gateway_frames_in_total",
                     "im_gateway_frames_out_total", 'im_gateway_closes_total{reason="idle"}',
                     'im_gateway_closes_total{reason="slow_consumer"}',
                     "im_gateway_bufpool_in_use"]:
            true(name in m, "metric %s present" % name)
        async with gw.connect(token(3)) as ws:
            for _ in range(3):
                await ws.send('{"type":"ping"}')
                await recv_json(ws)
            m = gw.metrics()
            eq(m["im_gateway_connections"], 1, "connections gauge")
            eq(m["im_gateway_frames_in_total"], 3, "frames in")
            eq(m["im_gateway_frames_out_total"], 3, "frames out")
        # Every line of the exposition is a comment or a sample.
        for line in body.decode().splitlines():
            true(line.startswith("# HELP ") or line.startswith("# TYPE ") or
                 parse_metrics(line), "line %r" % line)


def test_api_without_handler_is_404_json(binary):
    with Gateway(binary) as gw:
        for method, body in [("GET", None), ("POST", b'{"a":1}'), ("DELETE", None)]:
            status, headers, data = http(method, gw.url("/api/v1/things?x=1"), body=body)
            eq(status, 404, "%s status" % method)
            eq(json.loads(data)["error"]["code"], "not_found", "%s error code" % method)
        eq(http("GET", gw.url("/nope"))[0], 404, "non-api path without static dir")


def test_api_body_limit(binary):
    with Gateway(binary, "--max-body", "1k") as gw:
        status, _, data = http("POST", gw.url("/api/x"), body=b"a" * 2000)
        eq(status, 413, "status over max-body")
        eq(json.loads(data)["error"]["code"], "too_large", "error code")
        eq(http("POST", gw.url("/api/x"), body=b"a" * 1000)[0], 404, "under the limit")
        # The connection stays usable after a 413 (keep-alive).
        c = HTTPConnection("127.0.0.1", gw.port, timeout=5)
        c.request("POST", "/api/x", body=b"b" * 5000)
        r = c.getresponse()
        eq(r.status, 413, "first request")
        r.read()
        c.request("GET", "/healthz")
        eq(c.getresponse().status, 200, "second request on the same connection")
        c.close()


def test_ws_path_without_upgrade(binary):
    with Gateway(binary) as gw:
        eq(http("GET", gw.url("/ws"))[0], 426, "plain GET /ws")


def test_static_files(binary):
    with tempfile.TemporaryDirectory() as d:
        os.makedirs(os.path.join(d, "js"))
        with open(os.path.join(d, "index.html"), "w") as f:
            f.write("<html>im</html>")
        with open(os.path.join(d, "js", "app.js"), "w") as f:
            f.write("console.log(1)")
        with open(os.path.join(d, ".secret"), "w") as f:
            f.write("no")
        with Gateway(binary, "--static-dir", d) as gw:
            status, headers, body = http("GET", gw.url("/"))
            eq((status, body), (200, b"<html>im</html>"), "index")
            true(headers["content-type"].startswith("text/html"), "html type")
            status, headers, body = http("GET", gw.url("/js/app.js"))
            eq((status, body), (200, b"console.log(1)"), "app.js")
            true("javascript" in headers["content-type"], "js type")
            eq(http("GET", gw.url("/missing.css"))[0], 404, "missing file")
            eq(http("GET", gw.url("/.secret"))[0], 404, "hidden file")
            # Traversal, sent verbatim (urllib would normalise it).
            c = HTTPConnection("127.0.0.1", gw.port, timeout=5)
            c.request("GET", "/js/../../../../etc/passwd")
            r = c.getresponse()
            true(r.status in (403, 404), "traversal refused, got %d" % r.status)
            true(b"root:" not in r.read(), "no /etc/passwd")
            c.close()
            eq(http("GET", gw.url("/healthz"))[0], 200, "healthz next to static files")


def test_bad_settings_exit_2_or_1(binary):
    env = {"PATH": os.environ.get("PATH", "")}
    r = subprocess.run([binary, "--listen", "127.0.0.1:0"], env=env, capture_output=True)
    eq(r.returncode, 1, "no secret")
    true(b"jwt-secret" in r.stdout + r.stderr, "names the missing setting")
    r = subprocess.run([binary, "--listen", "127.0.0.1:0", "--jwt-secret", "short"], env=env,
                       capture_output=True)
    eq(r.returncode, 1, "short secret")
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    r = subprocess.run([binary, "--listen", "127.0.0.1:%d" % busy.getsockname()[1]],
                       env=dict(env, IM_JWT_SECRET="x" * 32), capture_output=True)
    busy.close()
    eq(r.returncode, 1, "port in use")
    r = subprocess.run([binary, "--listen", "192.0.2.1:0"], env=dict(env, IM_JWT_SECRET="x" * 32),
                       capture_output=True)
    eq(r.returncode, 1, "not a local address")
    r = subprocess.run([binary, "--idle-timeout", "banana"], env=env, capture_output=True)
    eq(r.returncode, 2, "unparsable flag")
    r = subprocess.run([binary, "--help"], env=env, capture_output=True)
    eq(r.returncode, 0, "--help")
    true(b"IM_IDLE_TIMEOUT" in r.stdout, "--help names the environment variables")


main([test_healthz, test_instance_id_is_new_at_every_start, test_metrics,
      test_api_without_handler_is_404_json, test_api_body_limit, test_ws_path_without_upgrade,
      test_static_files, test_bad_settings_exit_2_or_1])
