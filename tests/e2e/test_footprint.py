"""What `supervisor run` loads: only what it uses (docs/performance.md#what-limits-ours).

Every module imported at start costs start time before the first agent is spawned, and
memory for as long as the supervisor runs.
"""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import SupervisorProcess, wait_until

# Loaded only when used: the metrics library at the first scrape of /metrics, watchfiles
# with --watch, the JSON Schema builder for `supervisor schema`, the etcd client
# (httpx) and the cluster's models in cluster mode, the in-process runner at the first
# in-process agent, the TOML writer at the first write of the state file, and what a
# manifest needs only for a mistake (difflib), a command written as a string (shlex) or
# a TOML date (datetime). Loading the manifest of process agents loads none of them.
NOT_AT_START = [
    "prometheus_client",
    "watchfiles",
    "supervisor.manifest.schema",
    "httpx",
    "supervisor.cluster",
    "supervisor.runners.inprocess",
    "tomli_w",
    "difflib",
    "shlex",
    "datetime",
]


# A module is loaded if it is in sys.modules and not lazy (`supervisor.lazyimports`).
LOADED = "m in sys.modules and type(sys.modules[m]).__name__ != '_Lazy'"


def test_run_loads_nothing_it_does_not_use_at_start(tmp_path: Path) -> None:
    manifest = tmp_path / "agents.toml"
    manifest.write_text(
        '[supervisor]\napi = ""\n[defaults]\nrestart = "always"\n'
        '[agents.a]\ncommand = ["sleep", "1"]\n[agents.b]\ncommand = ["true"]\n'
    )
    code = (
        "import sys, pathlib, supervisor.cli, supervisor.run, supervisor.api.serve\n"
        f"supervisor.run.mf.load(pathlib.Path({str(manifest)!r}))\n"
        f"print(sorted(m for m in {NOT_AT_START!r} if {LOADED}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# Imported by the API task once the first agents are spawned (`supervisor.api.serve`):
# the agents' start does not wait for the HTTP stack.
AFTER_THE_FIRST_SPAWNS = ["starlette", "h11", "anyio", "supervisor.api.app"]


def test_run_spawns_before_it_imports_the_http_stack() -> None:
    code = (
        "import sys, supervisor.cli, supervisor.run\n"
        f"print(sorted(m for m in {AFTER_THE_FIRST_SPAWNS!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# OpenSSL's libraries (~5 MiB) load only when something uses TLS or hashes, and asyncio,
# http.client (with the email package), email.utils, html, http.cookies and idna only
# when used (`supervisor.lazyimports`); hypercorn is not used at all. A lazy module is in
# sys.modules, but not loaded (its type is `_Lazy`).
NEVER_LOADED = [
    "hypercorn",
    "_ssl",
    "_hashlib",
    "ssl",
    "hashlib",
    "hmac",
    "asyncio",
    "asyncio.events",
    "http.client",
    "email.parser",
    "email.message",
    "email.utils",
    "calendar",
    "html",
    "html.entities",
    "http.cookies",
    "idna",
    "idna.core",
    "anyio._backends._trio",  # a sync handler of errors would run in anyio's worker thread
    "mimetypes",
    "zipfile",  # importlib.resources': the status page is read at its first request
    "supervisor.api.openapi",  # at the first GET /openapi.json
    "supervisor.api.cluster",  # a cluster member's
    "supervisor.cluster",
    "shutil",  # its import loads zlib, bz2 and lzma, with their libraries
    "zlib",
    "_bz2",
    "_lzma",
    "tempfile",
]  # (not datetime: the in-process runner, which the reporter needs, uses its classes)
OPENSSL = ("libssl", "libcrypto")

REPORTER = """
import json, sys
from pathlib import Path
import trio

async def report(ctx):
    while not Path(ctx.params["ask"]).exists():
        await trio.sleep(0.02)
    maps = Path("/proc/self/maps").read_text()
    modules = [(m, sys.modules.get(m)) for m in ctx.params["modules"]]
    loaded = [m for m, module in modules if module is not None and type(module).__name__ != "_Lazy"]
    loaded += [lib for lib in ctx.params["libraries"] if lib in maps]
    Path(ctx.params["out"]).write_text(json.dumps(loaded))
    await trio.sleep_forever()
"""


def test_a_running_supervisor_has_not_loaded_what_it_does_not_use(tmp_path: Path) -> None:
    """Asked after its API answered requests (a listing, a 404, a 403), by an in-process
    agent (which runs in the supervisor's process)."""
    (tmp_path / "reporter.py").write_text(REPORTER)
    ask, out = tmp_path / "ask", tmp_path / "out"
    params = {"ask": str(ask), "out": str(out), "modules": NEVER_LOADED, "libraries": OPENSSL}
    manifest = tmp_path / "agents.toml"
    table = ", ".join(f"{key} = {json.dumps(value)}" for key, value in params.items())
    manifest.write_text(f'[agents.reporter]\nentry = "reporter:report"\nparams = {{ {table} }}\n')
    token = "footprint-token"
    with SupervisorProcess(
        manifest, "--api", "127.0.0.1:0", env={"SUPERVISOR_TOKEN": token}
    ) as sup:
        wait_until(lambda: "API on 127.0.0.1:" in sup.output(), 30, "the API")
        port = int(sup.output().split("API on 127.0.0.1:")[1].split()[0])
        for path, auth, status in [
            ("/agents", token, 200),
            ("/agents/nobody", token, 404),
            ("/agents", "wrong", 403),
        ]:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("GET", path, headers={"Authorization": f"Bearer {auth}"})
            response = conn.getresponse()
            assert response.status == status
            response.read()
            conn.close()
        ask.touch()
        wait_until(out.exists, 30, "the report")
        wait_until(lambda: out.read_text(), 5, "the report written")
        assert json.loads(out.read_text()) == []


LAZY_MODULES_WORK = """
import supervisor.lazyimports
import sys, trio, supervisor.run, supervisor.api.app
lazy = [m for m in supervisor.lazyimports.LAZY if type(sys.modules[m]).__name__ == "_Lazy"]
assert lazy == list(supervisor.lazyimports.LAZY), lazy
assert "_ssl" not in sys.modules and "_hashlib" not in sys.modules, sorted(sys.modules)

# OpenSSL
import hmac, secrets, hashlib, ssl, asyncio.sslproto
assert hmac.compare_digest(b"a", b"a") and not hmac.compare_digest(b"a", b"b")
assert len(secrets.token_hex(8)) == 16
assert "_ssl" not in sys.modules and "_hashlib" not in sys.modules
assert hmac.new(b"k", b"m", "sha256").hexdigest() == "b60090e3052297aeb5a080889ce2fc4bca957e756faeb4df7d31800ca1e771ec"
assert type(hashlib.sha256()).__name__ == "HASH"  # OpenSSL's
from ssl import SSLContext
context = ssl.create_default_context()
assert isinstance(context, SSLContext) and isinstance(context, trio._ssl._stdlib_ssl.SSLContext)
assert asyncio.sslproto.SSLAgainErrors == (ssl.SSLWantReadError, ssl.SSLSyscallError)
print("ok")
"""

LAZY_STDLIB_WORKS = """
import supervisor.lazyimports
import sys, trio, supervisor.api.app
from unittest import mock
from starlette._utils import is_async_callable
from starlette.exceptions import HTTPException
from starlette.responses import Response

async def coroutine_function(): pass
assert is_async_callable(coroutine_function) and not is_async_callable(len)
assert HTTPException(418).detail == "I'm a Teapot" and HTTPException(404).detail == "Not Found"
response = Response()
response.set_cookie("k", "v", expires=10)  # http.cookies and email.utils, for real
assert b"k=v" in response.headers.raw[-1][1] and b"expires=" in response.headers.raw[-1][1]
import html, idna
assert html.escape("<a>") == "&lt;a&gt;" and html.unescape("&eacute;") == "\u00e9"
assert idna.encode("b\u00fccher.de") == b"xn--bcher-kva.de"
from starlette.responses import guess_type
assert guess_type("page.html")[0] == "text/html"
import starlette.formparsers
spool = starlette.formparsers.SpooledTemporaryFile(max_size=4)  # tempfile, for real
spool.write(b"rolled over")
assert spool._rolled and type(sys.modules["tempfile"]).__name__ == "module"
spool.close()
import shutil, tempfile
assert shutil.which("sh") and "zlib" in sys.modules  # loaded for real
with tempfile.TemporaryDirectory() as scratch:  # tempfile's own lazy shutil, for rmtree
    pass
import starlette.responses, datetime as dt
assert type(sys.modules["datetime"]).__name__ == "_Lazy"
assert not isinstance(3, starlette.responses.datetime)  # starlette's, while it is lazy
from datetime import datetime, timezone  # anyone else's: the real class
assert datetime.__module__ == "datetime" and dt.datetime is datetime
expires = datetime(2030, 1, 1, tzinfo=timezone.utc)
assert isinstance(expires, starlette.responses.datetime)
response = Response()
response.set_cookie("k", "v", expires=expires)
assert b"expires=Tue, 01 Jan 2030 00:00:00 GMT" in response.headers.raw[-1][1]
assert trio._socket._idna.decode(b"xn--bcher-kva.de") == "b\u00fccher.de"
from http.client import HTTPConnection, responses  # the real module, by now
assert responses[404] == "Not Found" and HTTPConnection.__module__ == "http.client"
assert supervisor.lazyimports._SERVED["http.client", "responses"] == responses
# asyncio, the last: once imported, asyncio.iscoroutinefunction is its own
assert "asyncio.events" not in sys.modules
assert is_async_callable(mock.AsyncMock())  # imports asyncio: marked by asyncio only
import asyncio.events
import asyncio
assert asyncio.run(asyncio.sleep(0, "done")) == "done"
from asyncio import events, iscoroutinefunction
assert events is asyncio.events and iscoroutinefunction is asyncio.coroutines.iscoroutinefunction
print("ok")
"""


LAZY_DATETIME_FORWARDS = """
import supervisor.lazyimports
import sys, supervisor.api.app
import starlette.responses
assert type(sys.modules["datetime"]).__name__ == "_Lazy"
made = starlette.responses.datetime(2030, 1, 1)  # any other use: the real class
assert (type(made).__module__, type(made).__name__) == ("datetime", "datetime")
assert isinstance(starlette.responses.datetime.now(), starlette.responses.datetime)
print("ok")
"""


@pytest.mark.parametrize("code", [LAZY_MODULES_WORK, LAZY_STDLIB_WORKS, LAZY_DATETIME_FORWARDS])
def test_lazy_modules_load_when_used(code: str) -> None:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stdout.strip()) == (0, "ok"), out.stderr


def test_the_openapi_media_type_of_metrics_is_prometheus_clients() -> None:
    from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

    from supervisor.api.openapi import METRICS_MEDIA_TYPE

    assert CONTENT_TYPE_PLAIN_0_0_4.split(";")[0] == METRICS_MEDIA_TYPE


GC_PROBE = """
import gc

import trio


async def main(ctx):
    while not gc.isenabled():
        await trio.sleep(0.01)
    ctx.status("collecting")
    open("collecting", "w").close()
    await trio.sleep_forever()
"""


def test_run_collects_garbage_again_once_the_agents_are_spawned(tmp_path: Path) -> None:
    # No cyclic collection while `supervisor run` imports and reads the manifest (start
    # time), but it must come back: without it, cycles would never be freed.
    (tmp_path / "gcprobe.py").write_text(GC_PROBE)
    manifest = tmp_path / "agents.toml"
    manifest.write_text('[agents.probe]\nentry = "gcprobe:main"\n[agents.s]\ncommand = ["true"]\n')
    with SupervisorProcess(manifest) as sup:
        wait_until(lambda: (tmp_path / "collecting").exists(), 30, "the collector back on")
        sup.signal(signal.SIGTERM)
        assert sup.wait_exit() == 0


FREE_HEAP = """
from supervisor.api.serve import return_free_heap
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
blocks = [bytes(2048) for _ in range(20_000)]  # ~40 MiB of blocks from malloc, not pymalloc
kept = blocks[::50]  # the heap cannot shrink from its top: the free pages are inside it
del blocks
before = rss()
return_free_heap()
print((before - rss()) // 2**20)
"""


def test_the_free_pages_of_the_heap_go_back_to_the_system() -> None:
    # What `serve_bound` does once the start is done (~0.1 MiB at 500 agents)
    out = subprocess.run([sys.executable, "-c", FREE_HEAP], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) >= 20, out.stdout  # MiB returned
