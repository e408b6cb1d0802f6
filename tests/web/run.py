"""run.py - the browser test's launcher: starts one logic and two gateways
(tests/e2e/imsys.py, against the servers of scripts/infra.sh in
$IM_STATE_DIR) with the gateways serving the web client from web/, runs the
node script that drives headless chromium against them, and stops every
process it started by its pid on every exit path (also on SIGTERM, which is
how ctest ends a test that runs past its timeout).

Usage: run.py <logic> <gateway> <node> <script.js>
  The script gets IM_WEB_URLS="http://127.0.0.1:P0,http://127.0.0.1:P1";
  IM_WEB_TIMEOUT (seconds, default 150) bounds it.
Run with Debian's /usr/bin/python3 (imsys needs python3-websockets).
"""
import os
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "e2e"))
from imsys import System  # noqa: E402


def on_sigterm(signum, frame):
    # Unwind through the `finally` and `with` blocks below.
    raise SystemExit(128 + signum)


def run_script(node, script, urls, timeout):
    env = dict(os.environ)
    env["IM_WEB_URLS"] = ",".join(urls)
    env["PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD"] = "1"
    # Its own process group (pgid = its pid), so chromium and its helpers go
    # with it if it has to be killed.
    proc = subprocess.Popen([node, script], env=env, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        print("run.py: %s ran past %d s: killed" % (script, timeout), file=sys.stderr)
        return 124
    finally:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        else:
            # node is gone; a browser it left behind is still in its group.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def main():
    if len(sys.argv) != 5:
        print(__doc__, file=sys.stderr)
        return 2
    logic_bin, gateway_bin, node, script = sys.argv[1:]
    signal.signal(signal.SIGTERM, on_sigterm)
    web_dir = os.path.normpath(os.path.join(HERE, "..", "..", "web"))
    timeout = int(os.environ.get("IM_WEB_TIMEOUT", "150"))
    start = time.monotonic()
    with System(logic_bin, gateway_bin, n_logic=1, n_gateways=2,
                gateway_args=("--static-dir", web_dir)) as sys_:
        urls = ["http://127.0.0.1:%d" % gw.port for gw in sys_.gateways]
        print("run.py: logic and gateways up in %.1f s: %s" % (time.monotonic() - start,
                                                               " ".join(urls)), flush=True)
        rc = run_script(node, script, urls, timeout)
    print("run.py: done in %.1f s, exit %d" % (time.monotonic() - start, rc), flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
