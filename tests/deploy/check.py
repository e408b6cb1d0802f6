#!/usr/bin/python3
"""check.py - validates the deployment files without Docker or a cluster.

    /usr/bin/python3 tests/deploy/check.py LOGIC_BINARY GATEWAY_BINARY [--k8s-models DIR]

Checks, each printed with what it looked at (ok / FAIL / skip):

  * every compose file, Kubernetes manifest, Prometheus and Grafana provisioning file parses
    as YAML; the Grafana dashboard parses as JSON;
  * every IM_* variable set in the Dockerfiles, docker-compose.yml (environment and env
    files) and the Kubernetes manifests (env, ConfigMaps they load) is one that `--help` of
    the binary that reads it lists; references between files (env files, mounts, ConfigMaps,
    Secrets, Services, probe ports, HPA targets, Prometheus targets, nginx upstreams) resolve;
  * the Dockerfiles: build packages come from scripts/deps.sh, CMake runs Release with
    -DIM_WERROR=ON and builds the binary the ENTRYPOINT runs (at the path this build puts
    it), COPY sources exist and are not excluded by .dockerignore, the runtime packages are
    exactly those that provide the libraries the binary links (ldd, dpkg -S) and their
    dependencies cover every library ldd resolves (apt-cache), the user is not root, the
    exposed ports are the ones listened on;
  * the binaries are started (upstream servers unreachable) and their real /metrics output
    is parsed: the metric names this project documents exist, and every metric the
    dashboard queries exists; the images' healthcheck script is run against them; both exit
    0 on SIGTERM within the grace periods of the manifests;
  * nginx.conf passes `nginx -t` and proxies a WebSocket (upgrade, a ping frame, the 1001
    close of a stopping gateway) to a real gateway, when nginx is installed (skipped, saying
    so, when it is not: the test does not install it);
  * prometheus.yml passes `promtool check config` when promtool is installed (skip otherwise);
  * docker-compose.yml passes `docker-compose config` / `docker compose config` when either
    is installed (skip otherwise);
  * deploy/k8s builds with `kubectl kustomize` when kubectl is installed (skip otherwise),
    and every manifest validates against the Kubernetes API schemas of the npm package
    kubernetes-models when --k8s-models names its node_modules (skip otherwise).

Exit status 0 when nothing failed.  Run it with /usr/bin/python3 (python3-yaml,
python3-websockets).
"""
import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

import yaml

REPO = os.path.realpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
DEPLOY = os.path.join(REPO, "deploy")
K8S = os.path.join(DEPLOY, "k8s")
COMPOSE = os.path.join(REPO, "docker-compose.yml")
DOCKERFILES = {"logic": "deploy/docker/logic.Dockerfile",
               "gateway": "deploy/docker/gateway.Dockerfile"}
DASHBOARD = os.path.join(DEPLOY, "grafana", "dashboards", "imserver.json")
PROMETHEUS = os.path.join(DEPLOY, "prometheus", "prometheus.yml")
NGINX = os.path.join(DEPLOY, "nginx", "nginx.conf")

# The metric names the project documents (issue 8); the real /metrics output must have them.
DOCUMENTED_METRICS = {
    "gateway": """im_gateway_connections im_gateway_connections_total im_gateway_frames_in_total
        im_gateway_frames_out_total im_gateway_bytes_in_total im_gateway_bytes_out_total
        im_gateway_closes_total im_gateway_upgrades_refused_total im_gateway_http_requests_total
        im_gateway_rate_limited_total im_gateway_frame_errors_total im_gateway_bufpool_in_use
        im_gateway_bufpool_bytes im_gateway_sends_total im_gateway_acks_total
        im_gateway_send_errors_total im_gateway_deliveries_total im_gateway_delivered_frames_total
        im_gateway_resyncs_total im_gateway_groups_bound im_gateway_logic_up im_gateway_broker_up
        im_gateway_upstream_calls_in_flight im_gateway_send_ack_seconds""".split(),
    "logic": """im_logic_sends_total im_logic_send_refused_total im_logic_send_ack_seconds
        im_logic_publisher_confirmed_total im_logic_publisher_failed_total
        im_logic_publisher_reconnects_total im_logic_writer_messages_total
        im_logic_writer_batches_total im_logic_writer_flush_errors_total
        im_logic_writer_poison_total im_logic_writer_reconnects_total
        im_logic_writer_last_batch_size im_logic_writer_unacked im_logic_up""".split(),
}
# What the dashboard must show (issue 8): connections, messages in/out, send->ack latency,
# writer batch size and lag, unacked deliveries, errors.
DASHBOARD_MUST_QUERY = """im_gateway_connections im_gateway_frames_in_total
    im_gateway_frames_out_total im_gateway_send_ack_seconds_bucket im_logic_send_ack_seconds_bucket
    im_logic_writer_last_batch_size im_logic_writer_messages_total im_logic_writer_unacked
    im_gateway_send_errors_total im_logic_writer_flush_errors_total""".split()
# Series Prometheus makes itself, which no binary exports.
PROMETHEUS_BUILTIN = {"up"}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and",
                "or", "unless", "offset", "inf", "nan"}

# The images' user.
NON_ROOT = re.compile(r"^(?!root\b|0\b|0:)\S+")
WAIT = 15  # seconds any single step may take


# ------------------------------------------------------------------------------- reporting

class Report:
    def __init__(self):
        self.passed = self.failed = self.skipped = 0

    def ok(self, what):
        self.passed += 1
        print("ok    " + what, flush=True)

    def fail(self, what):
        self.failed += 1
        print("FAIL  " + what, flush=True)

    def skip(self, what):
        self.skipped += 1
        print("skip  " + what, flush=True)

    def check(self, cond, what, why=""):
        if cond:
            self.ok(what)
        else:
            self.fail(what + (": " + why if why else ""))
        return bool(cond)

    def section(self, title):
        print("\n== " + title, flush=True)


R = Report()


def rel(path):
    return os.path.relpath(path, REPO)


def run(cmd, timeout=60, **kw):
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout, **kw)


# ------------------------------------------------------------------------------- binaries

def help_vars(binary):
    """The IM_* variables `binary --help` lists, in brackets after each flag."""
    out = run([binary, "--help"], timeout=WAIT).stdout
    return set(re.findall(r"\[(IM_[A-Z0-9_]+)\]", out))


def check_vars(where, binary, names, known):
    """Every name must be an IM_* variable of binary."""
    names = sorted(set(names))
    bad = [n for n in names if n not in known[binary]]
    return R.check(not bad, "%s: %d variables are %s's (%s)" % (where, len(names), binary,
                                                               " ".join(names) or "none"),
                   "not in `%s --help`: %s" % (binary, " ".join(bad)))


# ------------------------------------------------------------------------------- Dockerfiles

def parse_dockerfile(path):
    """[(stage_name, [(INSTRUCTION, args)])]: continuation lines joined, comments dropped."""
    instrs, cur = [], ""
    for line in open(path):
        s = line.rstrip("\n")
        if s.strip().startswith("#"):
            continue
        if s.endswith("\\"):
            cur += s[:-1] + " "
            continue
        cur += s
        if cur.strip():
            word, _, args = cur.strip().partition(" ")
            instrs.append((word.upper(), args.strip()))
        cur = ""
    stages = []
    for word, args in instrs:
        if word == "FROM":
            m = re.match(r"(\S+)(?:\s+AS\s+(\S+))?", args, re.I)
            stages.append({"image": m.group(1), "name": m.group(2), "instrs": []})
        stages[-1]["instrs"].append((word, args))
    return stages


def json_or_shell(args):
    args = args.strip()
    if args.startswith("["):
        return json.loads(args)
    return shlex.split(args)


def parse_env(args):
    """ENV K=V [K=V ...] or ENV K V."""
    tokens = shlex.split(args)
    if tokens and "=" not in tokens[0]:
        return {tokens[0]: " ".join(tokens[1:])}
    return dict(t.split("=", 1) for t in tokens)


def parse_copy(args):
    tokens = json_or_shell(args)
    opts = {}
    while tokens and tokens[0].startswith("--"):
        k, _, v = tokens.pop(0)[2:].partition("=")
        opts[k] = v
    return opts, tokens[:-1], tokens[-1]


def apt_installs(run_args):
    """Package names of every `apt-get install` in a RUN line."""
    pkgs = []
    for part in re.split(r"&&|;", run_args):
        tokens = part.split()
        if "apt-get" in tokens and "install" in tokens:
            pkgs += [t for t in tokens[tokens.index("install") + 1:] if not t.startswith("-")]
    return pkgs


def deps_packages():
    text = open(os.path.join(REPO, "scripts", "deps.sh")).read()
    body = re.search(r"^PACKAGES=\((.*?)^\)", text, re.S | re.M).group(1)
    body = re.sub(r"#.*", "", body)
    body = re.sub(r"\$\([^)]*\)", "", body)
    return set(body.split())


def dockerignore_patterns():
    path = os.path.join(REPO, ".dockerignore")
    if not os.path.exists(path):
        return []
    pats = []
    for line in open(path):
        line = line.strip()
        if line and not line.startswith("#"):
            pats.append(line)
    return pats


def glob_regex(pattern):
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out + r"\Z")


def dockerignored(relpath, patterns):
    """True when .dockerignore excludes relpath or a directory above it (last match wins)."""
    relpath = relpath.strip("/")
    parts = relpath.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    excluded = False
    for pat in patterns:
        neg = pat.startswith("!")
        rx = glob_regex(pat.lstrip("!").strip("/"))
        if any(rx.match(p) for p in prefixes):
            excluded = not neg
    return excluded


def ldd_libs(binary):
    """{soname: resolved path} of every library ldd resolves."""
    libs = {}
    for line in run(["ldd", binary], timeout=WAIT).stdout.splitlines():
        m = re.match(r"\s*(\S+)\s+=>\s+(/\S+)", line)
        if m:
            libs[m.group(1)] = m.group(2)
    return libs


def needed(binary):
    if shutil.which("objdump") is None:
        return None
    out = run(["objdump", "-p", binary], timeout=WAIT).stdout
    return re.findall(r"^\s*NEEDED\s+(\S+)", out, re.M)


def owner_packages(paths):
    """{path: the Debian package that installed it, or None}, in one dpkg -S per attempt
    (the real path first: with merged /usr, dpkg may know a file under /lib or /usr/lib)."""
    owners = {p: None for p in paths}
    for resolve in (os.path.realpath, lambda p: p):
        todo = {resolve(p): p for p, o in owners.items() if o is None}
        if not todo:
            break
        out = run(["dpkg", "-S", *todo], timeout=60).stdout
        for line in out.splitlines():
            m = re.match(r"([^:\s]+)(?::\S+)?: (/\S+)$", line)
            if m and m.group(2) in todo:
                owners[todo[m.group(2)]] = m.group(1)
    return owners


def apt_closure(pkgs):
    """The packages `apt-get install pkgs` would bring (Depends and Pre-Depends, recursively),
    or None when apt-cache cannot tell."""
    if shutil.which("apt-cache") is None:
        return None
    r = run(["apt-cache", "depends", "--recurse", "--no-recommends", "--no-suggests",
             "--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances", *pkgs],
            timeout=120)
    if r.returncode != 0:
        return None
    return {l.strip() for l in r.stdout.splitlines() if l and not l[0].isspace()
            and not l.startswith("<")}


def check_dockerfile(binary, path, bins, known, ignore):
    """Returns {'entrypoint', 'copies' {dest: src}, 'env', 'expose', 'healthcheck'}."""
    R.section("Dockerfile " + path)
    full = os.path.join(REPO, path)
    stages = parse_dockerfile(full)
    info = {"env": {}, "copies": {}, "expose": set(), "entrypoint": None}
    R.check(len(stages) >= 2, "%s: multi-stage (%d stages)" % (path, len(stages)))
    build, final = stages[0], stages[-1]
    R.check(build["image"] == "debian:bookworm" and build["name"],
            "%s: build stage FROM %s AS %s" % (path, build["image"], build["name"]))
    R.check(final["image"] == "debian:bookworm-slim", "%s: runtime stage FROM %s"
            % (path, final["image"]))

    # Build stage: packages from deps.sh, CMake Release + IM_WERROR, the target built.
    runs = [a for w, a in build["instrs"] if w == "RUN"]
    pkgs = [p for a in runs for p in apt_installs(a)]
    deps = deps_packages()
    extra = sorted(set(pkgs) - deps)
    R.check(pkgs and not extra, "%s: %d build packages, all in scripts/deps.sh PACKAGES"
            % (path, len(pkgs)), "not in deps.sh: " + " ".join(extra))
    dev_in_deps = sorted(p for p in deps if p.endswith("-dev") and not p.startswith("libclang"))
    missing_dev = [p for p in dev_in_deps if p not in pkgs]
    R.check(not missing_dev, "%s: every -dev package of deps.sh is installed (%s)"
            % (path, " ".join(dev_in_deps)), "missing: " + " ".join(missing_dev))
    cmake = " ".join(a for a in runs if "cmake" in a)
    R.check("-DCMAKE_BUILD_TYPE=Release" in cmake and "-DIM_WERROR=ON" in cmake,
            "%s: cmake configures Release with -DIM_WERROR=ON" % path)
    workdir = next((a for w, a in build["instrs"] if w == "WORKDIR"), "/")
    m = re.search(r"-B\s*(\S+)", cmake)
    build_dir = os.path.normpath(os.path.join(workdir, m.group(1))) if m else None
    targets = re.search(r"--target\s+([\w\s-]+?)(?:&&|$)", cmake)
    targets = targets.group(1).split() if targets else []
    R.check(binary in targets, "%s: the build stage builds target %s (--target %s)"
            % (path, binary, " ".join(targets)))

    # Runtime stage.
    for word, args in final["instrs"]:
        if word == "COPY":
            opts, srcs, dest = parse_copy(args)
            for src in srcs:
                target = dest
                if dest.endswith("/") and not src.endswith("/"):
                    target = dest + os.path.basename(src)
                info["copies"][target] = (opts.get("from"), src)
        elif word == "ENV":
            info["env"].update(parse_env(args))
        elif word == "EXPOSE":
            info["expose"] |= {int(p.split("/")[0]) for p in args.split()}
        elif word == "ENTRYPOINT":
            info["entrypoint"] = json_or_shell(args)
        elif word == "USER":
            info["user"] = args.strip()
        elif word == "HEALTHCHECK":
            info["healthcheck"] = args

    for dest, (frm, src) in sorted(info["copies"].items()):
        if frm:
            R.check(frm == build["name"], "%s: COPY --from=%s %s: from the build stage"
                    % (path, frm, src))
            continue
        exists = os.path.exists(os.path.join(REPO, src))
        R.check(exists and not dockerignored(src, ignore),
                "%s: COPY %s -> %s: exists and is not excluded by .dockerignore"
                % (path, src, dest),
                "missing" if not exists else "excluded by .dockerignore")

    ep = info["entrypoint"] or []
    R.check(len(ep) >= 1 and os.path.basename(ep[0]) == binary,
            "%s: ENTRYPOINT %s runs %s" % (path, ep, binary))
    frm, src = info["copies"].get(ep[0] if ep else "", (None, ""))
    in_build = os.path.relpath(src, build_dir) if build_dir and frm else None
    local = os.path.realpath(bins[binary])
    R.check(in_build and not in_build.startswith("..")
            and local.endswith(os.sep + in_build),
            "%s: ENTRYPOINT %s is COPY --from=%s %s, i.e. <build>/%s, where CMake puts "
            "target %s (here: %s)" % (path, ep[0] if ep else None, frm, src, in_build, binary,
                                      bins[binary]))

    user = info.get("user", "root")
    R.check(NON_ROOT.match(user), "%s: runs as USER %s (not root)" % (path, user))
    if R.check("healthcheck" in info, "%s: has a HEALTHCHECK" % path):
        hc = info["healthcheck"]
        cmd = hc.split(" CMD ", 1)[1].split()[0] if " CMD " in " " + hc else ""
        cmd = cmd.strip('["')
        dests = {d: s for d, s in info["copies"].items()}
        hit = [d for d in dests if d == cmd or os.path.basename(d) == cmd]
        R.check(hit, "%s: HEALTHCHECK runs %s, copied into the image (%s)"
                % (path, cmd, " ".join(hit)))
    check_vars(path + " ENV", binary, [k for k in info["env"] if k.startswith("IM_")], known)
    listen = [v for k, v in info["env"].items() if k.endswith("LISTEN")]
    for v in listen:
        port = int(v.rsplit(":", 1)[1])
        R.check(v.startswith("0.0.0.0:") and port in info["expose"],
                "%s: listens on %s, outside loopback, and EXPOSEs %d" % (path, v, port))
    static = info["env"].get("IM_STATIC_DIR")
    if static is not None:
        frm, src = info["copies"].get(static.rstrip("/") + "/", info["copies"].get(
            static, (None, None)))
        R.check(src and not frm and os.path.exists(os.path.join(REPO, src, "index.html")),
                "%s: IM_STATIC_DIR=%s is COPY %s (the web client, with index.html)"
                % (path, static, src))

    check_runtime_packages(path, binary, bins[binary], final)
    return info


# Libraries a binary loads with dlopen at run time, which ldd cannot see: the
# packages that must be in its image besides those of its linked libraries.
PLUGINS = {
    # lws loads its libev event-loop plugin when the gateway asks for libev
    "gateway": ["libwebsockets-evlib-ev"],
}


def check_runtime_packages(path, binary, exe, final):
    pkgs = [p for w, a in final["instrs"] if w == "RUN" for p in apt_installs(a)]
    libs = ldd_libs(exe)
    if not libs or shutil.which("dpkg") is None:
        R.skip("%s: runtime packages (no ldd or dpkg output for %s)" % (path, exe))
        return
    sanitizers = sorted(s for s in libs if re.match(r"lib(asan|ubsan|tsan|lsan)\.so", s))
    if sanitizers:
        # The images build without sanitizers: their runtimes are not image packages.
        R.skip("%s: runtime packages: this %s is a sanitizer build (%s); checked on plain "
               "builds only" % (path, binary, " ".join(sanitizers)))
        return
    by_path = owner_packages(sorted(set(libs.values())))
    owners = {soname: by_path[lib] for soname, lib in libs.items()}
    unknown = [s for s, p in owners.items() if p is None]
    R.check(not unknown, "%s: every library %s links is from a Debian package (%d libraries)"
            % (path, binary, len(libs)), "no package owns " + " ".join(unknown))
    direct = needed(exe)
    if direct is None:
        R.skip("%s: direct libraries (objdump not installed)" % path)
    else:
        want = sorted(({owners.get(s) for s in direct if owners.get(s)} - {"libc6"})
                      | set(PLUGINS.get(binary, [])))
        R.check(sorted(set(pkgs)) == want,
                "%s: runtime packages are exactly those of the libraries %s links directly "
                "and its run-time plugins (%s -> %s)" % (path, binary, " ".join(direct),
                                                           " ".join(want)),
                "installs " + " ".join(sorted(pkgs)))
    closure = apt_closure(pkgs)
    if closure is None:
        R.skip("%s: dependency closure of the runtime packages (apt-cache missing or failed: "
               "apt-get update may be needed)" % path)
        return
    uncovered = sorted({p for p in owners.values() if p} - closure)
    R.check(not uncovered, "%s: apt-get install %s brings all %d packages of the %d libraries "
            "ldd resolves" % (path, " ".join(pkgs), len(set(owners.values())), len(libs)),
            "not brought: " + " ".join(uncovered))


# ------------------------------------------------------------------------------- YAML files

def load_yaml_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def guard(fn, *args, default=None):
    """Runs one group of checks; a crash (a file too broken to check further) is one
    failure, and the other groups still run."""
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001 - reported, not hidden
        R.fail("%s stopped: %s: %s" % (fn.__name__, type(e).__name__, e))
        return default


def check_yaml_files():
    R.section("YAML")
    files = [COMPOSE, PROMETHEUS]
    for base in (K8S, os.path.join(DEPLOY, "grafana")):
        for root, _, names in os.walk(base):
            files += [os.path.join(root, n) for n in sorted(names) if n.endswith((".yaml", ".yml"))]
    docs = {}
    for f in files:
        try:
            docs[f] = load_yaml_docs(f)
            R.ok("%s parses as YAML (%d document%s)" % (rel(f), len(docs[f]),
                                                        "" if len(docs[f]) == 1 else "s"))
        except (yaml.YAMLError, OSError) as e:
            R.fail("%s parses as YAML: %s" % (rel(f), e))
    return docs


def env_file(path):
    out = {}
    for line in open(path):
        line = line.strip()
        if line and not line.startswith("#"):
            k, _, v = line.partition("=")
            out[k.strip()] = v
    return out


# ------------------------------------------------------------------------------- compose

def listen_port(value):
    return int(str(value).rsplit(":", 1)[1])


def check_compose(compose, images, known, dockerinfo):
    """images: {image name: binary}.  Returns {service: (binary, env)} of our services."""
    R.section("docker-compose.yml")
    services = compose.get("services", {})
    ours = {}
    secrets = {}
    for name, svc in sorted(services.items()):
        build = svc.get("build")
        if build:
            df = build.get("dockerfile") if isinstance(build, dict) else "Dockerfile"
            ctx = build.get("context", ".") if isinstance(build, dict) else build
            binary = next((b for b, p in DOCKERFILES.items()
                           if os.path.normpath(os.path.join(ctx, df)) == p), None)
            if not R.check(binary, "%s: builds %s from context %s" % (name, df, ctx)):
                continue
            R.check(svc.get("image", "").split(":")[0] in images
                    and images[svc["image"].split(":")[0]] == binary,
                    "%s: image %s is the %s image" % (name, svc.get("image"), binary))
        elif svc.get("image", "").split(":")[0] in images:
            binary = images[svc["image"].split(":")[0]]
        else:
            continue
        env = {}
        files = svc.get("env_file", [])
        for f in [files] if isinstance(files, str) else files:
            p = os.path.join(REPO, f)
            if R.check(os.path.exists(p), "%s: env_file %s exists" % (name, f)):
                env.update(env_file(p))
                for k in env_file(p):
                    secrets.setdefault(k, set()).add(f)
        environment = svc.get("environment", {})
        if isinstance(environment, list):
            environment = dict(e.split("=", 1) for e in environment)
        env.update({k: str(v) for k, v in environment.items()})
        check_vars("compose service " + name, binary, env, known)
        for key in ("command", "entrypoint"):
            if key in svc:
                cmd = svc[key] if isinstance(svc[key], list) else shlex.split(svc[key])
                if key == "entrypoint":
                    R.check(cmd and os.path.basename(cmd[0]) == binary,
                            "%s: entrypoint %s runs %s" % (name, cmd, binary))
                    cmd = cmd[1:]
                flags = [c.split("=")[0] for c in cmd if c.startswith("--")]
                bad = [f for f in flags
                       if "IM_" + f[2:].upper().replace("-", "_") not in known[binary]]
                R.check(not bad, "%s: %s flags %s are %s's" % (name, key, flags, binary),
                        "unknown: " + " ".join(bad))
        if not any(k in svc for k in ("command", "entrypoint")):
            R.ok("%s: no command/entrypoint override: runs the image's ENTRYPOINT %s"
                 % (name, dockerinfo.get(binary, {}).get("entrypoint")))
        ours[name] = (binary, env)

    # Cross-service consistency.
    logic = {n: e for n, (b, e) in ours.items() if b == "logic"}
    gateways = {n: e for n, (b, e) in ours.items() if b == "gateway"}
    R.check(len(logic) >= 2 and len(gateways) >= 2,
            "two or more logic (%s) and gateway (%s) services" % (" ".join(sorted(logic)),
                                                                   " ".join(sorted(gateways))))
    ids = [e.get("IM_NODE_ID") for e in logic.values()]
    R.check(None not in ids and len(set(ids)) == len(ids),
            "IM_NODE_ID distinct per logic service: %s" % ids)
    for n, e in sorted(logic.items()):
        for k in ("IM_GRPC_LISTEN", "IM_HTTP_LISTEN"):
            R.check(str(e.get(k, "")).startswith("0.0.0.0:"), "%s: %s=%s faces the network"
                    % (n, k, e.get(k)))
    where = secrets.get("IM_JWT_SECRET", set())
    inline = [n for n, (b, e) in ours.items()
              if "IM_JWT_SECRET" in (services[n].get("environment") or {})]
    values = {e.get("IM_JWT_SECRET") for e in list(logic.values()) + list(gateways.values())}
    R.check(len(where) == 1 and not inline and len(values) == 1 and None not in values,
            "IM_JWT_SECRET comes from one place (%s) for every logic and gateway"
            % " ".join(sorted(where)))
    secret = next(iter(values)) if len(values) == 1 else ""
    R.check(secret and len(secret.encode()) >= 32, "IM_JWT_SECRET is at least 32 bytes (%d)"
            % len((secret or "").encode()))
    for n, e in sorted(gateways.items()):
        addrs = [a for a in e.get("IM_LOGIC", "").split(",") if a]
        good = [a for a in addrs if a.rsplit(":", 1)[0] in logic
                and listen_port(logic[a.rsplit(":", 1)[0]].get("IM_GRPC_LISTEN", ":0"))
                == int(a.rsplit(":", 1)[1])]
        R.check(addrs and good == addrs and set(a.split(":")[0] for a in addrs) == set(logic),
                "%s: IM_LOGIC=%s names every logic service at its gRPC port" % (n, addrs))
    for n, (b, e) in sorted(ours.items()):
        for k in ("IM_AMQP_HOST", "IM_MYSQL_HOST", "IM_REDIS_HOST"):
            if k in e:
                R.check(e[k] in services, "%s: %s=%s is a compose service" % (n, k, e[k]))

    for name, svc in sorted(services.items()):
        for dep, spec in (svc.get("depends_on") or {}).items() if isinstance(
                svc.get("depends_on"), dict) else [(d, {}) for d in svc.get("depends_on", [])]:
            ok = dep in services
            cond = (spec or {}).get("condition", "service_started")
            if ok and cond == "service_healthy":
                img = services[dep].get("image", "").split(":")[0]
                has = "healthcheck" in services[dep] or (
                    img in images and "healthcheck" in dockerinfo.get(images[img], {}))
                R.check(has, "%s depends on %s being healthy: it has a healthcheck" % (name, dep))
            else:
                R.check(ok, "%s depends on %s (%s): a service" % (name, dep, cond))
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0] if isinstance(vol, str) else vol.get("source", "")
            if src.startswith("."):
                R.check(os.path.exists(os.path.join(REPO, src)), "%s: mounts %s (exists)"
                        % (name, vol))
            elif src:
                R.check(src in (compose.get("volumes") or {}), "%s: volume %s is declared"
                        % (name, src))
    redis = " ".join(str(c) for c in services.get("redis", {}).get("command", []))
    R.check(re.search(r"--appendonly\s+yes", redis) and
            re.search(r"--maxmemory-policy\s+noeviction", redis),
            "redis: appendonly yes, maxmemory-policy noeviction (%s)" % redis)
    mysql_vols = services.get("mysql", {}).get("volumes", [])
    R.check("./sql/migrations:/docker-entrypoint-initdb.d:ro" in mysql_vols,
            "mysql: sql/migrations mounted as /docker-entrypoint-initdb.d")
    R.check("management" in services.get("rabbitmq", {}).get("image", ""),
            "rabbitmq: the management image (%s)" % services.get("rabbitmq", {}).get("image"))
    return ours


def check_nginx_upstreams(services, ours):
    R.section("nginx.conf")
    text = open(NGINX).read()
    ups = re.findall(r"^\s*server\s+([\w.-]+):(\d+)", text, re.M)
    gateways = {n: e for n, (b, e) in ours.items() if b == "gateway"}
    R.check(ups and all(h in gateways and int(p) == listen_port(gateways[h]["IM_LISTEN"])
                        for h, p in ups) and {h for h, _ in ups} == set(gateways),
            "upstream servers %s are every gateway service at its IM_LISTEN port"
            % ["%s:%s" % u for u in ups])
    ws = re.search(r"location\s*=\s*/ws\s*\{(.*?)\}", text, re.S)
    body = ws.group(1) if ws else ""
    whole = text
    R.check(re.search(r"proxy_set_header\s+Upgrade\s+\$http_upgrade", whole) and
            re.search(r"proxy_set_header\s+Connection\s+\$connection_upgrade", whole) and
            re.search(r"proxy_http_version\s+1\.1", whole),
            "passes Upgrade and Connection (HTTP/1.1) to the gateways")
    t = re.search(r"proxy_read_timeout\s+(\d+)([smh]?)", body)
    secs = int(t.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[t.group(2)] if t else 0
    R.check(secs >= 600, "location /ws: proxy_read_timeout %ds (long)" % secs)
    nginx = services.get("nginx", {})
    R.check("./deploy/nginx/nginx.conf:/etc/nginx/nginx.conf:ro" in nginx.get("volumes", []),
            "compose nginx mounts deploy/nginx/nginx.conf as /etc/nginx/nginx.conf")


def check_prometheus(prom, compose, ours):
    R.section("prometheus.yml")
    services = compose.get("services", {})
    scraped = {}
    for job in prom.get("scrape_configs", []):
        for sc in job.get("static_configs", []):
            for t in sc.get("targets", []):
                host, port = t.rsplit(":", 1)
                if host == "localhost" and job["job_name"] in services:
                    scraped[job["job_name"]] = (job["job_name"], int(port))
                    R.ok("job %s target %s: the %s service itself" % (job["job_name"], t,
                                                                     job["job_name"]))
                    continue
                scraped[host] = (job["job_name"], int(port))
                ok = host in services
                if ok and host in ours:
                    binary, env = ours[host]
                    want = listen_port(env.get("IM_LISTEN" if binary == "gateway" else
                                               "IM_HTTP_LISTEN", ":0"))
                    ok = want == int(port) and job.get("metrics_path", "/metrics") == "/metrics"
                R.check(ok, "job %s target %s: a compose service%s" % (
                    job["job_name"], t, ", its /metrics port" if host in ours else ""))
    for name, svc in sorted(services.items()):
        if name in scraped:
            continue
        via = [h for h in scraped if h in services and re.search(
            r"\b%s[:/]" % re.escape(name), json.dumps(services[h]))]
        if name == "grafana":
            R.ok("grafana: not scraped (a viewer, not part of the system)")
        else:
            R.check(via, "%s: scraped through %s" % (name, " ".join(via) or "nothing"))
    if shutil.which("promtool"):
        r = run(["promtool", "check", "config", PROMETHEUS], timeout=WAIT)
        R.check(r.returncode == 0, "promtool check config %s" % rel(PROMETHEUS),
                r.stdout.strip())
    else:
        R.skip("promtool check config: promtool not installed (Debian package prometheus)")


def check_grafana(compose):
    R.section("Grafana provisioning")
    services = compose.get("services", {})
    g = services.get("grafana", {})
    vols = {v.split(":")[1]: v.split(":")[0] for v in g.get("volumes", []) if ":" in v}
    prov = os.path.join(DEPLOY, "grafana", "provisioning")
    R.check(vols.get("/etc/grafana/provisioning") == "./deploy/grafana/provisioning",
            "compose grafana mounts deploy/grafana/provisioning at /etc/grafana/provisioning")
    for f in sorted(os.listdir(os.path.join(prov, "datasources"))):
        for ds in load_yaml_docs(os.path.join(prov, "datasources", f))[0].get("datasources", []):
            host = re.sub(r"^\w+://", "", ds.get("url", "")).split(":")[0]
            R.check(ds.get("type") == "prometheus" and host in services,
                    "datasource %s (uid %s): %s, a compose service" % (ds.get("name"),
                                                                       ds.get("uid"), ds.get("url")))
    for f in sorted(os.listdir(os.path.join(prov, "dashboards"))):
        for p in load_yaml_docs(os.path.join(prov, "dashboards", f))[0].get("providers", []):
            path = p.get("options", {}).get("path")
            R.check(vols.get(path) == "./deploy/grafana/dashboards",
                    "dashboard provider %s reads %s, where compose mounts deploy/grafana/"
                    "dashboards" % (p.get("name"), path))


# ------------------------------------------------------------------------------- Kubernetes

def check_k8s(docs_by_file, images, known, models_dir):
    R.section("Kubernetes manifests (deploy/k8s)")
    objs = []
    for f, docs in sorted(docs_by_file.items()):
        if not f.startswith(K8S + os.sep):
            continue
        for d in docs:
            if not isinstance(d, dict):
                R.fail("%s: a document is not a mapping" % rel(f))
                continue
            if d.get("kind") == "Kustomization":
                continue
            ok = all(k in d for k in ("apiVersion", "kind", "metadata")) and \
                d["metadata"].get("name")
            R.check(ok, "%s: %s %s has apiVersion, kind, metadata.name" % (
                rel(f), d.get("kind"), d.get("metadata", {}).get("name")))
            if d.get("kind") != "Namespace":
                R.check(d["metadata"].get("namespace") == "imserver",
                        "%s: %s/%s in namespace imserver" % (rel(f), d["kind"],
                                                             d["metadata"]["name"]))
            objs.append((f, d))

    by = {}
    for f, d in objs:
        by.setdefault(d["kind"], {})[d["metadata"]["name"]] = d

    kust = os.path.join(K8S, "kustomization.yaml")
    if os.path.exists(kust):
        res = load_yaml_docs(kust)[0].get("resources", [])
        top = sorted(n for n in os.listdir(K8S) if n.endswith(".yaml") and n != "kustomization.yaml")
        R.check(sorted(res) == top, "kustomization.yaml lists every manifest of deploy/k8s: %s"
                % " ".join(res), "files: " + " ".join(top))
        if shutil.which("kubectl"):
            r = run(["kubectl", "kustomize", K8S], timeout=60)
            count = len(re.findall(r"(?m)^kind: ", r.stdout)) if r.returncode == 0 else 0
            R.check(r.returncode == 0, "kubectl kustomize deploy/k8s builds (%d objects)" % count,
                    r.stdout.strip()[-500:])
        else:
            R.skip("kubectl kustomize deploy/k8s: kubectl not installed")

    R.check("Namespace" in by and "imserver" in by["Namespace"], "Namespace imserver")
    jwt = None
    secret_data = {}
    for name, sec in by.get("Secret", {}).items():
        data = dict(sec.get("stringData") or {})
        for k, v in (sec.get("data") or {}).items():
            data[k] = base64.b64decode(v).decode()
        secret_data[name] = data
    seen = set()

    workloads = [(k, n, d) for k in ("Deployment", "StatefulSet", "Job")
                 for n, d in by.get(k, {}).items()]
    for kind, name, w in workloads:
        spec = w["spec"]["template"]["spec"]
        labels = w["spec"]["template"].get("metadata", {}).get("labels", {})
        sel = w["spec"].get("selector", {}).get("matchLabels", {})
        if kind != "Job":
            R.check(sel and all(labels.get(k) == v for k, v in sel.items()),
                    "%s/%s: selector %s matches the pod labels" % (kind, name, sel))
        for c in spec.get("containers", []):
            where = "%s/%s container %s" % (kind, name, c["name"])
            image = c["image"].split(":")[0]
            binary = images.get(image)
            env = [e["name"] for e in c.get("env", [])]
            for e in c.get("env", []):
                ref = (e.get("valueFrom") or {})
                for rk, kind2 in (("secretKeyRef", "Secret"), ("configMapKeyRef", "ConfigMap")):
                    if rk in ref:
                        obj = by.get(kind2, {}).get(ref[rk]["name"])
                        data = (secret_data.get(ref[rk]["name"], {}) if kind2 == "Secret"
                                else (obj or {}).get("data")) or {}
                        R.check(obj is not None and ref[rk]["key"] in data,
                                "%s: %s from %s %s key %s (exists)" % (
                                    where, e["name"], kind2, ref[rk]["name"], ref[rk]["key"]))
                        if e["name"] == "IM_JWT_SECRET" and obj is not None:
                            jwt = data.get(ref[rk]["key"])
            for ef in c.get("envFrom", []):
                if "configMapRef" in ef:
                    cm = by.get("ConfigMap", {}).get(ef["configMapRef"]["name"])
                    if R.check(cm is not None, "%s: envFrom ConfigMap %s (exists)"
                               % (where, ef["configMapRef"]["name"])):
                        env += list((cm.get("data") or {}).keys())
                        if binary:
                            check_vars("ConfigMap %s (loaded by %s)" % (
                                ef["configMapRef"]["name"], where), binary,
                                (cm.get("data") or {}).keys(), known)
            if binary is None:
                R.ok("%s: image %s is not ours: its variables are not checked" % (where, image))
                continue
            R.check(image in images, "%s: image %s is the %s image" % (where, image, binary))
            seen.add(binary)
            check_vars(where + " env", binary, [e["name"] for e in c.get("env", [])], known)
            for key in ("command", "args"):
                if key in c:
                    bad = [a for a in c[key] if a.startswith("--") and "IM_" + a[2:].split(
                        "=")[0].upper().replace("-", "_") not in known[binary]]
                    R.check(not bad, "%s: %s %s" % (where, key, c[key]), "unknown " + str(bad))
            ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
            for probe in ("readinessProbe", "livenessProbe"):
                pr = c.get(probe)
                if not R.check(pr, "%s: has a %s" % (where, probe)):
                    continue
                hg = pr.get("httpGet", {})
                R.check(hg.get("port") in ports or hg.get("port") in ports.values(),
                        "%s: %s GET %s on port %s (a container port)" % (
                            where, probe, hg.get("path"), hg.get("port")))
            R.check(c["readinessProbe"].get("httpGet", {}).get("path") == "/healthz",
                    "%s: readiness on /healthz" % where)
            res = c.get("resources", {})
            R.check(res.get("requests") and res.get("limits"),
                    "%s: resources requests %s, limits %s" % (where, res.get("requests"),
                                                              res.get("limits")))
            pre = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
            grace = spec.get("terminationGracePeriodSeconds", 30)
            sleep = int(pre[1]) if len(pre) == 2 and pre[0] == "sleep" else 0
            R.check(sleep > 0, "%s: preStop %s (the load balancer drains first)" % (where, pre))
            cm_env = {}
            for ef in c.get("envFrom", []):
                cm_env.update((by.get("ConfigMap", {}).get(ef.get("configMapRef", {}).get(
                    "name"), {}) or {}).get("data") or {})
            stop = 0
            if binary == "gateway":
                stop = parse_seconds(cm_env.get("IM_SHUTDOWN_TIMEOUT", "2s"))
            else:
                stop = parse_seconds(cm_env.get("IM_PUBLISH_TIMEOUT", "5s")) + 5
            R.check(grace > sleep + stop, "%s: terminationGracePeriodSeconds %d > preStop %ds + "
                    "drain %ds" % (where, grace, sleep, stop))
            R.check(spec.get("securityContext", {}).get("runAsNonRoot") is True,
                    "%s: runAsNonRoot" % where)
            if binary == "logic":
                for k in ("IM_GRPC_LISTEN", "IM_HTTP_LISTEN"):
                    R.check(str(cm_env.get(k, "")).startswith("0.0.0.0:"),
                            "%s: %s=%s faces the pod network" % (where, k, cm_env.get(k)))
                node = next((e for e in c.get("env", []) if e["name"] == "IM_NODE_ID"), None)
                field = ((node or {}).get("valueFrom") or {}).get("fieldRef", {}).get("fieldPath")
                R.check(kind == "StatefulSet" and
                        field == "metadata.labels['apps.kubernetes.io/pod-index']",
                        "%s: IM_NODE_ID is the StatefulSet pod index (%s): distinct per pod"
                        % (where, field))
                R.check(str(ports.get("http")) == cm_env.get("IM_HTTP_LISTEN", ":").split(":")[-1]
                        and str(ports.get("grpc")) == cm_env.get("IM_GRPC_LISTEN", ":").split(":")[-1],
                        "%s: container ports %s are the listen ports" % (where, ports))
            else:
                R.check(str(ports.get("http")) == cm_env.get("IM_LISTEN", ":").split(":")[-1],
                        "%s: container port %s is IM_LISTEN's" % (where, ports.get("http")))
                logic_addr = cm_env.get("IM_LOGIC", "")
                svc = by.get("Service", {}).get(logic_addr.split(":")[0])
                R.check(svc and any(str(p["port"]) == logic_addr.split(":")[-1]
                                    for p in svc["spec"]["ports"]),
                        "%s: IM_LOGIC=%s is a Service port" % (where, logic_addr))
        if kind == "StatefulSet":
            R.check(w["spec"].get("serviceName") in by.get("Service", {}) and
                    by["Service"][w["spec"]["serviceName"]]["spec"].get("clusterIP") == "None",
                    "StatefulSet/%s: serviceName %s is a headless Service" % (
                        name, w["spec"].get("serviceName")))
    R.check(seen == {"logic", "gateway"}, "workloads run both images: %s" % " ".join(sorted(seen)))
    if R.check(jwt is not None, "IM_JWT_SECRET comes from a Secret"):
        R.check(len(jwt.encode()) >= 32, "Secret jwt-secret is at least 32 bytes (%d)"
                % len(jwt.encode()))

    pods = {(k, n): d["spec"]["template"] for k, n, d in workloads}
    for name, svc in by.get("Service", {}).items():
        sel = svc["spec"].get("selector", {})
        match = [(k, n, t) for (k, n), t in pods.items()
                 if all(t.get("metadata", {}).get("labels", {}).get(a) == b
                        for a, b in sel.items())]
        R.check(match, "Service %s: selector %s matches %s" % (
            name, sel, " ".join("%s/%s" % (k, n) for k, n, _ in match)))
        names = {p.get("name") for _, _, t in match for c in t["spec"]["containers"]
                 for p in c.get("ports", [])}
        for p in svc["spec"]["ports"]:
            tp = p.get("targetPort", p["port"])
            R.check(isinstance(tp, int) or tp in names,
                    "Service %s port %s -> %s (a container port)" % (name, p["port"], tp))
    for name, ing in by.get("Ingress", {}).items():
        for rule in ing["spec"].get("rules", []):
            for path in rule.get("http", {}).get("paths", []):
                b = path["backend"]["service"]
                svc = by.get("Service", {}).get(b["name"])
                R.check(svc and any(p.get("name") == b["port"].get("name") or
                                    p["port"] == b["port"].get("number")
                                    for p in svc["spec"]["ports"]),
                        "Ingress %s: %s -> Service %s port %s" % (
                            name, path["path"], b["name"], b["port"]))
        ann = ing["metadata"].get("annotations", {})
        R.check(int(ann.get("nginx.ingress.kubernetes.io/proxy-read-timeout", 0)) >= 600,
                "Ingress %s: WebSocket read timeout %ss" % (
                    name, ann.get("nginx.ingress.kubernetes.io/proxy-read-timeout")))
    for name, hpa in by.get("HorizontalPodAutoscaler", {}).items():
        t = hpa["spec"]["scaleTargetRef"]
        R.check(t["name"] in by.get(t["kind"], {}), "HorizontalPodAutoscaler %s -> %s/%s "
                "(exists), %s..%s replicas" % (name, t["kind"], t["name"],
                                                hpa["spec"].get("minReplicas"),
                                                hpa["spec"]["maxReplicas"]))
    for w in ("gateway", "logic"):
        R.check(any(h["spec"]["scaleTargetRef"]["name"] == w
                    for h in by.get("HorizontalPodAutoscaler", {}).values()),
                "%s has a HorizontalPodAutoscaler" % w)
    for name, pdb in by.get("PodDisruptionBudget", {}).items():
        sel = pdb["spec"]["selector"]["matchLabels"]
        R.check(any(all(t.get("metadata", {}).get("labels", {}).get(a) == b
                        for a, b in sel.items()) for t in pods.values()),
                "PodDisruptionBudget %s: selector %s matches pods" % (name, sel))

    validate_k8s_schemas(objs, models_dir)


def parse_seconds(v):
    m = re.match(r"(\d+)(ms|s|m|h)?$", str(v))
    if not m:
        return 0
    n = int(m.group(1))
    return {"ms": n / 1000, "s": n, None: n / 1000, "m": n * 60, "h": n * 3600}[m.group(2)]


def validate_k8s_schemas(objs, models_dir):
    node = shutil.which("node")
    if not models_dir or not os.path.isdir(os.path.join(models_dir, "kubernetes-models")):
        R.skip("Kubernetes API schemas: kubernetes-models not installed (--k8s-models DIR)")
        return
    if node is None:
        R.skip("Kubernetes API schemas: node not installed")
        return
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "k8s_schema.mjs")
    docs = [{"file": rel(f), "doc": d} for f, d in objs]
    r = subprocess.run([node, script, models_dir], input=json.dumps(docs), text=True,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
    lines = [l for l in r.stdout.splitlines() if l.strip()]
    for line in lines:
        status, _, what = line.partition(" ")
        if status == "valid":
            R.ok("Kubernetes API schema: " + what)
        else:
            R.fail("Kubernetes API schema: " + line)
    if r.returncode != 0 and not any(l.startswith("invalid") for l in lines):
        R.fail("Kubernetes API schema validation failed to run (exit %d)" % r.returncode)


# ------------------------------------------------------------------------------- live binaries

def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Proc:
    """A binary as a child process, its output drained, its port read from its log."""

    def __init__(self, name, argv, port_re):
        env = {k: v for k, v in os.environ.items() if not k.startswith("IM_")}
        self.name, self.lines = name, []
        self.port, self.ready = None, threading.Event()
        self.port_re = re.compile(port_re)
        self.proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.ready.wait(WAIT)

    def _read(self):
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace")
            self.lines.append(line)
            m = self.port_re.search(line)
            if m and self.port is None:
                self.port = int(m.group(1))
                self.ready.set()
        self.ready.set()

    def log(self):
        return "".join(self.lines[-40:])

    def stop(self, timeout):
        """SIGTERM; returns (exit status or None if it hung, seconds taken)."""
        if self.proc.poll() is not None:
            return self.proc.returncode, 0.0
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            rc = None
            self.proc.kill()
            self.proc.wait()
        self.reader.join(5)
        return rc, time.monotonic() - t0

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def http_get(port, path):
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def metric_names(text):
    """Every sample name of a Prometheus text exposition, histograms expanded."""
    names = set()
    for line in text.splitlines():
        m = re.match(r"# TYPE (\S+) (\w+)", line)
        if m:
            names.add(m.group(1))
            if m.group(2) == "histogram":
                names |= {m.group(1) + s for s in ("_bucket", "_sum", "_count")}
        elif line and not line.startswith("#"):
            names.add(re.match(r"[A-Za-z_:][A-Za-z0-9_:]*", line).group(0))
    return names


def promql_metrics(expr):
    """Metric names a PromQL expression reads."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    e = re.sub(r"\{[^}]*\}", "", e)
    e = re.sub(r"\[[^\]]*\]", "", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", e)
    e = re.sub(r"\$\w+", "", e)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", e):
        rest = e[m.end():].lstrip()
        word = m.group(0)
        if rest.startswith("(") or word.lower() in PROMQL_WORDS:
            continue
        if re.match(r"\d", e[m.start() - 1:m.start()] or " "):
            continue
        names.add(word)
    return names


def check_live(bins, dockerinfo, k8s_grace):
    """Starts both binaries with their upstream servers unreachable; returns the metric names."""
    R.section("live binaries: /metrics, healthcheck, SIGTERM")
    dead = free_port()  # nothing listens here: every upstream connection is refused
    secret = "deploy-check-secret-0123456789abcdef0123456789"
    gw = Proc("gateway", [bins["gateway"], "--listen", "127.0.0.1:0", "--static-dir", "",
                          "--jwt-secret", secret, "--logic", "127.0.0.1:%d" % dead,
                          "--amqp-port", str(dead)],
              r"gateway: listening on 127\.0\.0\.1:(\d+)")
    lg = Proc("logic", [bins["logic"], "--grpc-listen", "127.0.0.1:0", "--http-listen",
                        "127.0.0.1:0", "--jwt-secret", secret, "--amqp-port", str(dead),
                        "--mysql-port", str(dead), "--redis-port", str(dead)],
              r"logic: http listening on 127\.0\.0\.1:(\d+)")
    names = {}
    try:
        for p in (gw, lg):
            if not R.check(p.port, "%s started (upstream servers unreachable), HTTP port %s"
                           % (p.name, p.port), p.log()):
                continue
            status, body = http_get(p.port, "/metrics")
            names[p.name] = metric_names(body) if status == 200 else set()
            R.check(status == 200 and names[p.name], "%s GET /metrics: %d, %d series names"
                    % (p.name, status, len(names[p.name])))
            missing = [m for m in DOCUMENTED_METRICS[p.name] if m not in names[p.name]]
            R.check(not missing, "%s /metrics has the %d documented metrics"
                    % (p.name, len(DOCUMENTED_METRICS[p.name])), "missing: " + " ".join(missing))
            status, _ = http_get(p.port, "/healthz")
            R.check(status == 503, "%s GET /healthz: %d while its upstream is unreachable"
                    % (p.name, status))
            script = os.path.join(REPO, "deploy", "docker", "healthcheck.sh")
            for path, want in (("/metrics", 0), ("/healthz", 1)):
                rc = run(["bash", script, str(p.port), path], timeout=WAIT).returncode
                R.check(rc == want, "healthcheck.sh %d %s against %s: exit %d (want %d)"
                        % (p.port, path, p.name, rc, want))
        rc = run(["bash", os.path.join(REPO, "deploy", "docker", "healthcheck.sh"), str(dead)],
                 timeout=WAIT).returncode
        R.check(rc == 1, "healthcheck.sh on a closed port: exit %d (want 1)" % rc)
    finally:
        for p in (gw, lg):
            budget = k8s_grace.get(p.name, 30)
            rc, took = p.stop(budget)
            R.check(rc == 0, "%s exits 0 on SIGTERM in %.1fs (pod budget after preStop: %ds)"
                    % (p.name, took, budget), "exit %r\n%s" % (rc, p.log()))
    return names


def check_dashboard(names):
    R.section("Grafana dashboard " + rel(DASHBOARD))
    try:
        dash = json.load(open(DASHBOARD))
        R.ok("%s parses as JSON (%d panels)" % (rel(DASHBOARD), len(dash.get("panels", []))))
    except (ValueError, OSError) as e:
        R.fail("%s parses as JSON: %s" % (rel(DASHBOARD), e))
        return
    known = set().union(*names.values()) | PROMETHEUS_BUILTIN if names else None
    used = set()
    for panel in dash.get("panels", []):
        exprs = [t.get("expr", "") for t in panel.get("targets", [])]
        if panel.get("type") == "row":
            continue
        R.check(exprs and all(t.get("datasource", {}).get("uid") == "prometheus"
                              for t in panel["targets"]),
                "panel %r: %d queries on datasource uid prometheus" % (panel.get("title"),
                                                                     len(exprs)))
        for expr in exprs:
            ms = promql_metrics(expr)
            used |= ms
            if known is None:
                continue
            bad = sorted(ms - known)
            R.check(ms and not bad, "panel %r: %s" % (panel.get("title"), " ".join(sorted(ms))),
                    "not exported by gateway or logic: " + " ".join(bad))
    if known is None:
        R.skip("dashboard metric names: the binaries' /metrics could not be read")
    missing = [m for m in DASHBOARD_MUST_QUERY if m not in used]
    R.check(not missing, "the dashboard shows connections, messages in/out, send->ack latency, "
            "writer batch size and lag, unacked deliveries, errors (%s)" % " ".join(
                DASHBOARD_MUST_QUERY), "not queried: " + " ".join(missing))


# ------------------------------------------------------------------------------- nginx

def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def token(secret, sub=42):
    now = int(time.time())
    head = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    body = b64url(json.dumps({"sub": str(sub), "iat": now, "exp": now + 600},
                             separators=(",", ":")).encode())
    sig = b64url(hmac.new(secret.encode(), (head + "." + body).encode(),
                          hashlib.sha256).digest())
    return head + "." + body + "." + sig


def check_nginx_live(bins):
    R.section("nginx (nginx -t, a WebSocket through it)")
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx")
                                      else None)
    if nginx is None:
        R.skip("nginx -t and the WebSocket proxy test: nginx is not installed (Debian package "
               "nginx; this test does not install it)")
        return
    text = open(NGINX).read()
    tmp = tempfile.mkdtemp(prefix="im-deploy-nginx-")
    secret = "deploy-check-secret-0123456789abcdef0123456789"
    gw = None
    ng = None
    try:
        # nginx -t on the file as it is, the compose host names pointed at loopback (nginx
        # resolves upstream names when it loads the file).
        conf = os.path.join(tmp, "nginx.conf")
        with open(conf, "w") as f:
            f.write(re.sub(r"(?m)^(\s*server\s+)gateway-\d+(:\d+)", r"\g<1>127.0.0.1\2", text))
        r = run([nginx, "-t", "-c", conf, "-p", tmp, "-e", tmp + "/error.log"], timeout=WAIT)
        R.check(r.returncode == 0, "nginx -t -c nginx.conf (gateway-N host names as 127.0.0.1)",
                r.stdout.strip())

        # A bare gateway (no upstream: it answers ping frames) behind nginx on free ports.
        gw = Proc("gateway", [bins["gateway"], "--listen", "127.0.0.1:0", "--static-dir", "",
                              "--jwt-secret", secret, "--logic", ""],
                  r"gateway: listening on 127\.0\.0\.1:(\d+)")
        if not R.check(gw.port, "bare gateway started for the proxy test", gw.log()):
            return
        front, status_port = free_port(), free_port()
        live = re.sub(r"(?m)^(\s*server\s+)gateway-\d+:\d+", r"\g<1>127.0.0.1:%d" % gw.port, text)
        live = re.sub(r"(?m)^(\s*)listen\s+80;", r"\1listen 127.0.0.1:%d;" % front, live)
        live = re.sub(r"(?m)^(\s*)listen\s+8081;", r"\1listen 127.0.0.1:%d;" % status_port, live)
        live = re.sub(r"(?m)^pid\s+\S+;", "pid %s/nginx.pid;" % tmp, live)
        live = re.sub(r"(?m)^worker_processes\s+\S+;", "worker_processes 1;", live)
        live = re.sub(r"(?m)^(\s*)access_log\s+/dev/stdout", r"\1access_log %s/access.log" % tmp,
                      live)
        conf = os.path.join(tmp, "live.conf")
        with open(conf, "w") as f:
            f.write(live)
        out = open(os.path.join(tmp, "nginx.out"), "w")
        ng = subprocess.Popen([nginx, "-c", conf, "-p", tmp, "-e", tmp + "/error.log",
                               "-g", "daemon off;"], stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", front), timeout=1).close()
                break
            except OSError:
                if ng.poll() is not None:
                    break
                time.sleep(0.05)
        if not R.check(ng.poll() is None, "nginx runs nginx.conf on 127.0.0.1:%d -> gateway "
                       "127.0.0.1:%d" % (front, gw.port),
                       open(os.path.join(tmp, "nginx.out")).read()):
            return
        status, body = http_get(front, "/healthz")
        R.check(status == 200 and '"status":"ok"' in body, "GET /healthz through nginx: %d"
                % status)
        status, _ = http_get(front, "/metrics")
        R.check(status == 404, "GET /metrics through nginx: %d (not public)" % status)
        status, body = http_get(status_port, "/stub_status")
        R.check(status == 200 and "Active connections" in body,
                "GET /stub_status on the exporter port: %d" % status)
        asyncio.run(ws_through_nginx(front, token(secret), gw))
    finally:
        if ng is not None and ng.poll() is None:
            ng.send_signal(signal.SIGQUIT)
            try:
                ng.wait(WAIT)
            except subprocess.TimeoutExpired:
                ng.kill()
                ng.wait()
        if gw is not None:
            gw.kill()
        shutil.rmtree(tmp, ignore_errors=True)


async def ws_through_nginx(port, tok, gw):
    import websockets
    url = "ws://127.0.0.1:%d/ws?token=%s" % (port, tok)
    try:
        async with websockets.connect(url, open_timeout=5, close_timeout=5) as ws:
            R.ok("WebSocket upgrade through nginx (101)")
            await ws.send('{"type":"ping","cid":"d1"}')
            reply = json.loads(await asyncio.wait_for(ws.recv(), 5))
            R.check(reply == {"type": "pong", "cid": "d1"}, "ping frame through nginx -> %s"
                    % reply)
            # The gateway stops: its 1001 must reach the client through nginx.
            loop = asyncio.get_running_loop()
            fut = loop.run_in_executor(None, gw.stop, 10)
            try:
                await asyncio.wait_for(ws.recv(), 10)
            except websockets.ConnectionClosed:
                pass
            rc, _ = await fut
            R.check(ws.close_code == 1001 and rc == 0,
                    "gateway SIGTERM: close %s reaches the client through nginx, gateway exit %s"
                    % (ws.close_code, rc))
    except (OSError, asyncio.TimeoutError, websockets.WebSocketException) as e:
        R.fail("WebSocket through nginx: %r" % e)


# ------------------------------------------------------------------------------- compose tools

def check_compose_tool():
    R.section("compose tooling")
    for cmd in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(cmd[0]) is None:
            continue
        probe = run(cmd + ["version"], timeout=WAIT)
        if probe.returncode != 0:
            continue
        r = run(cmd + ["-f", COMPOSE, "config", "-q"], timeout=60, cwd=REPO)
        R.check(r.returncode == 0, "%s config -q (schema, interpolation, anchors)"
                % " ".join(cmd), r.stdout.strip())
        return
    R.skip("docker compose config: neither `docker compose` nor docker-compose is installed")


# ------------------------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("logic")
    ap.add_argument("gateway")
    ap.add_argument("--k8s-models", help="node_modules holding kubernetes-models")
    args = ap.parse_args()
    bins = {"logic": os.path.abspath(args.logic), "gateway": os.path.abspath(args.gateway)}

    R.section("binaries")
    known = {}
    for b, path in bins.items():
        known[b] = help_vars(path)
        R.check(known[b], "%s --help lists %d IM_* variables (%s)" % (b, len(known[b]), path))

    docs = check_yaml_files()
    ignore = dockerignore_patterns()
    R.check(ignore, ".dockerignore has %d patterns" % len(ignore))
    dockerinfo = {b: guard(check_dockerfile, b, p, bins, known, ignore, default={})
                  for b, p in DOCKERFILES.items()}

    compose = (docs.get(COMPOSE) or [{}])[0]
    images = {}
    for svc in compose.get("services", {}).values():
        b = svc.get("build")
        if isinstance(b, dict):
            for binary, p in DOCKERFILES.items():
                if os.path.normpath(os.path.join(b.get("context", "."), b["dockerfile"])) == p:
                    images[svc["image"].split(":")[0]] = binary
    ours = guard(check_compose, compose, images, known, dockerinfo, default={})
    guard(check_compose_tool)
    guard(check_nginx_upstreams, compose.get("services", {}), ours)
    guard(check_prometheus, (docs.get(PROMETHEUS) or [{}])[0], compose, ours)
    guard(check_grafana, compose)
    guard(check_k8s, docs, images, known, args.k8s_models)

    # Shutdown budget of each binary in Kubernetes: grace period minus the preStop sleep.
    grace = {}
    for f, ds in docs.items():
        for d in ds:
            if isinstance(d, dict) and d.get("kind") in ("Deployment", "StatefulSet"):
                spec = d["spec"]["template"]["spec"]
                for c in spec["containers"]:
                    b = images.get(c["image"].split(":")[0])
                    pre = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get(
                        "command", ["sleep", "0"])
                    if b:
                        grace[b] = spec.get("terminationGracePeriodSeconds", 30) - int(pre[-1])
    names = guard(check_live, bins, dockerinfo, grace, default={})
    guard(check_dashboard, names)
    guard(check_nginx_live, bins)

    print("\ndeploy checks: %d passed, %d failed, %d skipped" % (R.passed, R.failed, R.skipped))
    return 1 if R.failed else 0


if __name__ == "__main__":
    sys.exit(main())
