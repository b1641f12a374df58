"""HTTP cache conformance: distpat cache, nginx proxy_cache and Varnish under the suite of cache-tests.fyi.

The suite is the npm package ``http-cache-tests@0.4.5`` (350 tests for a shared cache; Mark
Nottingham's https://github.com/http-tests/cache-tests, which checks RFC 9111 and its extensions).
It is installed once with ``npm install --no-audit --no-fund --prefix DIR http-cache-tests@0.4.5``
into DIR = ``.cache/http-cache-tests/`` under the repository (git-ignored; ``--suite-dir`` picks
another), and not again while that version is there.

One invocation starts, each in its own process group:

  origin    the suite's server, ``npm run server --port=P --pidfile=TMP/origin.pid`` in the package.
            server/server.mjs calls ``server.listen(port)`` with no host, i.e. on every interface;
            it is given ``NODE_OPTIONS=--import TMP/loopback.mjs``, a five-line preload that adds
            the host 127.0.0.1 to a ``listen(port)`` call, so that here it listens on loopback
            only (its log line says where). ``npm run server`` is ``node server/server.mjs &``:
            npm returns at once, and the server is ended at the end by the pid in its pid file.
  nginx     nginx, 1 worker, ``proxy_cache`` with ``proxy_cache_revalidate on``, a fresh
            ``proxy_cache_path`` in the temp dir, no ``proxy_cache_valid`` (only the response's
            headers decide), the http_proxy benchmark's upstream settings (keepalive 64, HTTP/1.1,
            ``Connection ""``) and ``proxy_set_header Host`` of the origin. nginx passes every
            method (PUT, DELETE, M-SEARCH) and unknown request header through as it stands.
  varnish   ``varnishd -F -a 127.0.0.1:P -T none -j none -n TMP/varnish -s malloc,64m
            -p default_ttl=0 -p default_grace=0 -p default_keep=3600`` with a VCL that names only
            the backend (so the builtin VCL rules: it pipes unknown methods, passes requests with
            Authorization or Cookie).
  distpat   ``distpat cache --listen 127.0.0.1:P --upstream http://127.0.0.1:ORIGIN`` (and
            ``--distpat-args``), when ``distpat cache --help`` exits 0; otherwise its row says
            "distpat cache: not built yet".

Each contender is started fresh (an empty cache) right before its run and stopped after it. Its run
is the suite's client, ``npm run --silent cli --base=http://127.0.0.1:P``, which prints a JSON object
{test id: true | [error kind, message]}; the suite's own result logic then judges it:
determineTestResult of lib/display.mjs, imported by a small module written to the temp dir, with
``depends_on`` honoured as on the published results page (a test whose dependency did not pass or
answer "yes" is a dependency failure). Counted per contender: passes, required failures (``fail``),
optional failures (``optional_fail``, tests of kind "optimal"), checks (yes / no: informational),
and other (setup failures, where the cache did not even do what the test needs first; harness
failures; dependency failures; retries). Goals: distpat passes more tests than each of nginx and
Varnish, with at most 10 required failures.

What a cache under this suite meets: every test first PUTs its configuration (a JSON body) to
/config/UUID through the cache, then GETs /test/UUID (and /state/UUID at the end, which must not be
served from cache); requests carry ``Pragma: foo``, ``Cache-Control: nothing-to-see-here`` and the
headers ``Test-Name`` (the test's name in prose), ``Test-ID`` and ``Req-Num``; the invalidation
tests send POST, PUT, DELETE and the extension method M-SEARCH with a body; HEAD is asked too. One
``If-None-Match`` holds a non-ASCII byte (``"abcdef\\xfc"``, Latin-1). The origin answers status
codes 299, 499 and 599, and 999 where it expected a conditional request and got none; it sends
``Content-Length: 5`` or ``10`` with a 36-byte body (the Content-Length tests: Node does not hold
it to the length), so an upstream connection after such an answer holds stray bytes; it sends a
``Transfer-Encoding`` of an unknown coding, ``Content-Range`` on a 200, and hop-by-hop fields
(``Connection: a, b`` naming others, ``Keep-Alive``, ``Upgrade``) a cache must not store; and some
tests close the connection with no answer. Run:

    .venv/bin/python benchmarks/cache_conformance.py                 # all three, a few minutes
    .venv/bin/python benchmarks/cache_conformance.py --only nginx --out results/
    .venv/bin/python benchmarks/cache_conformance.py --only varnish --id freshness-max-age

``--id TEST`` runs one test against the one ``--only`` contender with the client's and the
origin's dump of the exchange. Exit code 1 if a contender could not be run (distpat not built yet
excepted), else 0; a missed goal does not change it. Needs node and npm (Debian packages nodejs
and npm), and the Debian packages nginx-light and varnish.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import describe
from _servers import (
    LOOPBACK,
    Service,
    ServiceError,
    free_ports,
    interruptible,
    require_tool,
    shown_command,
    start_nginx,
    start_process,
    tool_output,
    tool_version,
    wait_for_port,
)
from http_proxy import distpat_command

REPO = Path(__file__).resolve().parents[1]
SUITE = "http-cache-tests"
SUITE_VERSION = "0.4.5"
DEFAULT_SUITE_DIR = REPO / ".cache" / SUITE
NGINX, VARNISH, DISTPAT = "nginx", "varnish", "distpat"
CONTENDERS = (NGINX, VARNISH, DISTPAT)
NOT_BUILT = "distpat cache: not built yet"
REQUIRED_GOAL = 10  # at most this many required failures for distpat
OUTCOMES = ("pass", "fail", "optional_fail", "yes", "no")
OTHER = ("setup_fail", "harness_fail", "dependency_fail", "retry", "untested")

# Binds a listen(port) with no host to loopback: the suite's server names no host.
LOOPBACK_PRELOAD = """\
import http from 'node:http'
const listen = http.Server.prototype.listen
http.Server.prototype.listen = function (...args) {
  const bare = args.length === 1 && (typeof args[0] === 'number' || typeof args[0] === 'string')
  if (bare) args.push('127.0.0.1')
  return listen.apply(this, args)
}
"""

# The suite's own judgement (lib/display.mjs determineTestResult, dependencies honoured, as the
# results page shows them) of each raw result file; its answer is named by the symbol it returns.
JUDGE = """\
import fs from 'node:fs'
const [pkg, ...files] = process.argv.slice(2)
const tests = (await import(`${pkg}/tests/index.mjs`)).default
tests.push((await import(`${pkg}/tests/surrogate-control.mjs`)).default)
const display = await import(`${pkg}/lib/display.mjs`)
const names = { '-': 'untested', '✅': 'pass', '⛔️': 'fail', '⚠️': 'optional_fail', Y: 'yes', N: 'no',
  '🔹': 'setup_fail', '⁉️': 'harness_fail', '⚪️': 'dependency_fail', '↻': 'retry' }
const info = {}
for (const suite of tests) {
  for (const test of suite.tests) {
    if (test.browser_only === true) continue
    info[test.id] = { name: test.name, kind: test.kind || 'required', suite: suite.name }
  }
}
const judged = files.map(file => {
  const results = JSON.parse(fs.readFileSync(file, 'utf8'))
  const out = {}
  for (const id of Object.keys(info)) {
    const symbol = display.determineTestResult(tests, id, results)[2]
    if (!(symbol in names)) throw new Error(`unknown result symbol ${symbol} for ${id}`)
    out[id] = names[symbol]
  }
  return out
})
console.log(JSON.stringify({ info, judged }))
"""


# --- the suite --------------------------------------------------------------------------------------


def installed_version(package_dir: Path) -> str | None:
    try:
        meta = json.loads((package_dir / "package.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    version = meta.get("version") if isinstance(meta, dict) else None
    return version if isinstance(version, str) else None


def ensure_suite(npm: str, suite_dir: Path, timeout: float) -> Path:
    """The package's directory, after ``npm install`` into ``suite_dir`` if that version is not there."""
    package_dir = suite_dir / "node_modules" / SUITE
    if installed_version(package_dir) == SUITE_VERSION:
        return package_dir
    suite_dir.mkdir(parents=True, exist_ok=True)
    argv = [npm, "install", "--no-audit", "--no-fund", "--prefix", str(suite_dir), f"{SUITE}@{SUITE_VERSION}"]
    print(f"installing the suite: {shown_command([Path(npm).name, *argv[1:]])}", flush=True)
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise SystemExit(f"npm install took more than {timeout:g} s") from None
    if done.returncode != 0 or installed_version(package_dir) != SUITE_VERSION:
        tail = (done.stdout + done.stderr).strip()[-2000:]
        raise SystemExit(f"npm install of {SUITE}@{SUITE_VERSION} failed (exit {done.returncode}):\n{tail}")
    return package_dir


@dataclass(slots=True)
class Origin:
    """The suite's server: its port, pid (from its pid file) and log."""

    port: int
    pid: int
    log_path: Path

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM to the pid of the pid file (then SIGKILL), and to its process group."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for kill in (os.kill, os.killpg):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    kill(self.pid, sig)
            deadline = time.monotonic() + timeout
            while self.alive() and time.monotonic() < deadline:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(self.pid, os.WNOHANG)
                time.sleep(0.05)
            if not self.alive():
                return

    def log_text(self) -> str:
        try:
            return self.log_path.read_bytes().decode("utf-8", "replace")
        except OSError:
            return ""


def start_origin(npm: str, package_dir: Path, tmp: Path, port: int, timeout: float = 20.0) -> Origin:
    """``npm run server --port=P --pidfile=...`` in its own session; wait for the port and the pid file."""
    preload = tmp / "loopback.mjs"
    preload.write_text(LOOPBACK_PRELOAD, encoding="utf-8")
    pidfile = tmp / "origin.pid"
    log_path = tmp / "origin.log"
    env = dict(os.environ)
    env["NODE_OPTIONS"] = (env.get("NODE_OPTIONS", "") + f" --import {preload.as_uri()}").strip()
    argv = [npm, "run", "server", f"--port={port}", f"--pidfile={pidfile}", "--protocol=http"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            argv,
            cwd=package_dir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
    try:
        proc.wait(timeout=timeout)  # npm starts the server in the background and returns
        wait_for_port(port, timeout=timeout)
        deadline = time.monotonic() + timeout
        while True:
            text = pidfile.read_text(encoding="ascii").strip() if pidfile.exists() else ""
            if text.isdigit():
                return Origin(port, int(text), log_path)
            if time.monotonic() >= deadline:
                raise ServiceError(f"no pid in {pidfile} after {timeout:g} s")
            time.sleep(0.05)
    except (ServiceError, subprocess.TimeoutExpired) as e:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        tail = "\n".join(log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-12:])
        raise SystemExit(f"the suite's server did not start: {e}\n{tail}") from None


# --- contenders -------------------------------------------------------------------------------------


def nginx_cache_body(origin_port: int, listen: str, cache_dir: Path) -> str:
    """nginx's ``http { }`` body: proxy_cache in front of the origin, only response headers deciding."""
    return f"""
proxy_cache_path {cache_dir} levels=1:2 keys_zone=conformance:10m max_size=64m inactive=60m use_temp_path=off;
upstream origin {{
    server {LOOPBACK}:{origin_port};
    keepalive 64;
    keepalive_requests 1000000;
}}
server {{
    listen {listen};
    location / {{
        proxy_pass http://origin;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host {LOOPBACK}:{origin_port};
        proxy_cache conformance;
        proxy_cache_revalidate on;
    }}
}}
"""


def varnish_vcl(origin_port: int) -> str:
    return f'vcl 4.1;\n\nbackend origin {{\n    .host = "{LOOPBACK}";\n    .port = "{origin_port}";\n}}\n'


def start_varnish(varnishd: str, origin_port: int, port: int, tmp: Path) -> tuple[Service, str]:
    vcl = tmp / "varnish.vcl"
    vcl.write_text(varnish_vcl(origin_port), encoding="utf-8")
    workdir = tmp / "varnish"
    argv = [varnishd, "-F", "-a", f"{LOOPBACK}:{port}", "-T", "none", "-j", "none", "-f", str(vcl)]
    argv += ["-n", str(workdir), "-s", "malloc,64m"]
    argv += ["-p", "default_ttl=0", "-p", "default_grace=0", "-p", "default_keep=3600"]
    return start_process(VARNISH, argv, port=port, log_dir=tmp, timeout=30), shown_command(argv, tmp)


def distpat_has_cache(distpat: Sequence[str]) -> bool:
    try:
        done = subprocess.run([*distpat, "cache", "--help"], capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


@dataclass(slots=True)
class Tools:
    npm: str
    node: str
    package_dir: Path
    distpat: list[str]
    distpat_args: list[str]
    nginx: str | None = None
    varnishd: str | None = None


@dataclass(slots=True)
class Run:
    """One contender's run: its version, command and raw results, or why it has none."""

    name: str
    version: str = "-"
    command: str = ""
    results: dict[str, object] | None = None
    error: str | None = None
    judged: dict[str, str] = field(default_factory=dict)


def start_contender(
    name: str, tools: Tools, origin: Origin, tmp: Path, stack: contextlib.ExitStack, run: Run
) -> int:
    """Start ``name`` fresh on a free port (its stop registered on ``stack``); its port."""
    port = free_ports(1)[0]
    base = tmp / f"{name}-{port}"
    base.mkdir()
    if name == NGINX:
        assert tools.nginx is not None
        body = nginx_cache_body(origin.port, f"{LOOPBACK}:{port}", base / "cache")
        run.command = "nginx, 1 worker, http {" + body.replace(str(tmp), "$TMP").rstrip() + "\n}"
        service = start_nginx(name, tools.nginx, port=port, base_dir=base, http_body=body)
    elif name == VARNISH:
        assert tools.varnishd is not None
        service, run.command = start_varnish(tools.varnishd, origin.port, port, base)
    else:
        argv = [*tools.distpat, "cache", "--listen", f"{LOOPBACK}:{port}"]
        argv += ["--upstream", f"http://{LOOPBACK}:{origin.port}", *tools.distpat_args]
        run.command = shown_command(argv, tmp)
        service = start_process(name, argv, port=port, log_dir=base, timeout=20)
    stack.callback(service.stop)
    return port


def run_client(tools: Tools, port: int, timeout: float, test_id: str | None) -> tuple[int, str, str]:
    """``npm run --silent cli --base=http://127.0.0.1:P`` (``--id=TEST``): (exit code, stdout, stderr)."""
    argv = [tools.npm, "run", "--silent", "cli", f"--base=http://{LOOPBACK}:{port}"]
    if test_id:
        argv.append(f"--id={test_id}")
    proc = subprocess.Popen(
        argv,
        cwd=tools.package_dir,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ServiceError(f"the suite's client still running after {timeout:g} s") from None
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, out, err


def parse_results(out: str) -> dict[str, object]:
    """The client's JSON object, from its first line that opens one."""
    start = 0 if out.startswith("{") else out.find("\n{") + 1
    if start <= 0 and not out.startswith("{"):
        raise ValueError("no JSON object in the client's output")
    results = json.loads(out[start:])
    if not isinstance(results, dict) or not results:
        raise ValueError("the client printed no results")
    return results


def judge(tools: Tools, tmp: Path, runs: Sequence[Run]) -> dict[str, dict[str, str]]:
    """Judge every run that has results with the suite's logic; the tests' names, kinds and suites."""
    script = tmp / "judge.mjs"
    script.write_text(JUDGE, encoding="utf-8")
    done = [r for r in runs if r.results is not None]
    files = []
    for r in done:
        path = tmp / f"{r.name}-results.json"
        path.write_text(json.dumps(r.results), encoding="utf-8")
        files.append(str(path))
    argv = [tools.node, "--no-warnings", str(script), tools.package_dir.as_uri(), *files]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"judging the results failed: {proc.stderr.strip()[-2000:]}")
    answer = json.loads(proc.stdout)
    for r, judged in zip(done, answer["judged"], strict=True):
        r.judged = judged
    info: dict[str, dict[str, str]] = answer["info"]
    return info


# --- report -----------------------------------------------------------------------------------------


def counts(run: Run) -> Counter[str]:
    return Counter(run.judged.values())


def table(runs: Sequence[Run]) -> list[str]:
    head = f"{'contender':10s} {'version':30s} {'passes':>6s} {'req.fail':>8s} {'opt.fail':>8s}"
    head += f" {'checks y/n':>10s}  other"
    lines = [head, "-" * len(head)]
    for r in runs:
        if r.results is None:
            lines.append(f"{r.name:10s} {r.version[:30]:30s} {r.error or 'not run'}")
            continue
        c = counts(r)
        other = ", ".join(f"{k} {c[k]}" for k in OTHER if c[k]) or "none"
        checks = f"{c['yes']}/{c['no']}"
        lines.append(
            f"{r.name:10s} {r.version[:30]:30s} {c['pass']:6d} {c['fail']:8d} {c['optional_fail']:8d}"
            f" {checks:>10s}  {other}"
        )
    return lines


def failures(run: Run, info: Mapping[str, Mapping[str, str]]) -> list[str]:
    lines = []
    for outcome in ("fail", "optional_fail", *OTHER):
        ids = sorted(i for i, o in run.judged.items() if o == outcome)
        if ids:
            lines.append(f"{outcome} ({len(ids)}):")
            lines += [f"  {i}: {info[i]['name']}" for i in ids]
    return lines


def others_pass(ours: Run, theirs: Sequence[Run], info: Mapping[str, Mapping[str, str]]) -> list[str]:
    lines = []
    for test_id in sorted(info):
        if ours.judged.get(test_id) in ("pass", "yes", "no"):
            continue
        who = [r.name for r in theirs if r.judged.get(test_id) == "pass"]
        if who:
            lines.append(f"  {test_id} ({ours.judged.get(test_id)}; {' and '.join(who)} pass)")
    return lines


def goals(runs: Mapping[str, Run]) -> str:
    ours = runs.get(DISTPAT)
    if ours is None or ours.results is None:
        why = ours.error if ours is not None else "not selected"
        return f"goals: NOT MET (distpat not run: {why})"
    mine = counts(ours)
    parts, ok = [], True
    for name in (NGINX, VARNISH):
        other = runs.get(name)
        if other is None or other.results is None:
            parts.append(f"passes > {name}: not compared ({name} not run)")
            ok = False
            continue
        theirs = counts(other)["pass"]
        parts.append(
            f"passes {mine['pass']} > {name} {theirs}: {'met' if mine['pass'] > theirs else 'NOT MET'}"
        )
        ok = ok and mine["pass"] > theirs
    fine = mine["fail"] <= REQUIRED_GOAL
    parts.append(f"required failures {mine['fail']} <= {REQUIRED_GOAL}: {'met' if fine else 'NOT MET'}")
    return "goals: " + "; ".join(parts) + f" => {'met' if ok and fine else 'NOT MET'}"


# --- main -------------------------------------------------------------------------------------------


def version_of(name: str, tools: Tools) -> str:
    if name == NGINX and tools.nginx:
        return tool_version([tools.nginx, "-v"]).removeprefix("nginx version: ")
    if name == VARNISH and tools.varnishd:
        found = re.search(r"varnish-([\w.]+)", tool_version([tools.varnishd, "-V"]))
        return f"varnish {found.group(1)}" if found else "varnish (unknown version)"
    return tool_version([*tools.distpat, "--version"])


def run_one(name: str, tools: Tools, origin: Origin, tmp: Path, args: argparse.Namespace) -> Run:
    run = Run(name, version_of(name, tools))
    if name == DISTPAT and not distpat_has_cache(tools.distpat):
        run.error = NOT_BUILT
        return run
    with contextlib.ExitStack() as stack:
        try:
            port = start_contender(name, tools, origin, tmp, stack, run)
            print(f"{name}: {run.command}", flush=True)
            t0 = time.monotonic()
            code, out, err = run_client(tools, port, args.timeout, args.id)
            if args.id:
                print(out + err)
                run.error = "single test"
                return run
            if code != 0:
                raise ServiceError(f"the suite's client exited with code {code}: {err.strip()[-500:]}")
            run.results = parse_results(out)
            print(f"{name}: {len(run.results)} results in {time.monotonic() - t0:.0f} s", flush=True)
        except (ServiceError, ValueError) as e:
            run.error = " | ".join(str(e).split("\n")[:4])[:300] or type(e).__name__
            print(f"{name}: could not be run: {e}", flush=True)
    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=CONTENDERS, default=None, help="run one contender")
    p.add_argument("--id", default=None, help="run the one test TEST (with --only), dumping its exchange")
    p.add_argument("--out", type=Path, default=None, help="write each contender's raw JSON results here")
    p.add_argument("--timeout", type=float, default=300, help="seconds for one contender's run (300)")
    p.add_argument("--suite-dir", type=Path, default=DEFAULT_SUITE_DIR, help="where the suite is installed")
    p.add_argument("--distpat", default=None, help="command that runs distpat (default: .venv/bin/distpat)")
    p.add_argument("--distpat-args", default="", help="extra flags for distpat cache, one string")
    args = p.parse_args()
    if args.id and not args.only:
        p.error("--id needs --only NAME: one test against one contender")
    names = [args.only] if args.only else list(CONTENDERS)

    npm = require_tool("npm", "npm")
    node = require_tool("node", "nodejs")
    tools = Tools(npm, node, Path(), distpat_command(args.distpat), shlex.split(args.distpat_args))
    if NGINX in names:
        tools.nginx = require_tool("nginx", "nginx-light")
    if VARNISH in names:
        tools.varnishd = require_tool("varnishd", "varnish")
    tools.package_dir = ensure_suite(npm, args.suite_dir.resolve(), timeout=600)

    print("# distpat benchmark: HTTP cache conformance (cache-tests.fyi)")
    print(describe("distpat"))
    node_version = tool_output([node, "--version"]).strip()
    where = str(tools.package_dir).replace(str(REPO) + "/", "")
    print(f"suite: {SUITE} {SUITE_VERSION} in {where}; node {node_version}")
    runs: dict[str, Run] = {}
    with interruptible(), tempfile.TemporaryDirectory(prefix="distpat-conformance-") as tmp_name:
        tmp = Path(tmp_name)
        origin = start_origin(npm, tools.package_dir, tmp, free_ports(1)[0])
        try:
            listening = [line for line in origin.log_text().splitlines() if "Listening on" in line]
            print(f"origin: npm run server, pid {origin.pid}; {listening[-1] if listening else 'listening'}")
            for name in names:
                runs[name] = run_one(name, tools, origin, tmp, args)
            if args.id:
                print("# the origin's log\n" + origin.log_text())
                return
            info = judge(tools, tmp, list(runs.values()))
        finally:
            origin.stop()
    report(runs, info, args.out)
    broken = [r for r in runs.values() if r.results is None and r.error != NOT_BUILT]
    raise SystemExit(1 if broken else 0)


def report(runs: Mapping[str, Run], info: Mapping[str, Mapping[str, str]], out: Path | None) -> None:
    print(
        f"\n## Results ({len(info)} tests, judged by the suite's determineTestResult, dependencies honoured)"
    )
    for line in table(list(runs.values())):
        print(line)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        for r in runs.values():
            if r.results is not None:
                (out / f"{r.name}.json").write_text(json.dumps(r.results, indent=2) + "\n", encoding="utf-8")
        print(f"raw results written to {out}/")
    ours = runs.get(DISTPAT)
    if ours is not None and ours.results is not None:
        print("\n## Tests distpat fails (required first)")
        for line in failures(ours, info) or ["none"]:
            print(line)
        theirs = [r for r in runs.values() if r.name != DISTPAT and r.results is not None]
        print("\n## Tests distpat fails that nginx or Varnish pass")
        for line in others_pass(ours, theirs, info) or ["  none"]:
            print(line)
    print("\n## Goals")
    print(goals(runs))


if __name__ == "__main__":
    main()
