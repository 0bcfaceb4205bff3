"""The checks a probe makes: ``http``, ``tcp``, ``exec`` (the ``log`` probe is a line
listener, see `supervisor.health.monitor`).

`open_check(probe, spec)` gives an async callable that runs one check and returns None
if it passed, or what failed in words (``GET http://127.0.0.1:8080/healthz: 503``). A
check never blocks the loop and never takes longer than the probe's `timeout`:

- ``http``: one GET with httpx (imported here, only when an http probe exists), no
  proxies from the environment, no redirects followed, no connection kept between checks
  (each check is a fresh connection, as a new client would make), no certificate check
  for https (as Kubernetes' httpGet probes do); any 2xx or 3xx answer passes. The whole
  request is bounded by a trio deadline, not only httpx's per-phase timeouts.
- ``tcp``: a connection is accepted (and closed at once).
- ``exec``: a child process in a process group of its own, with the agent's environment,
  working folder, `user` and `group`; exit 0 passes. At the timeout, or if the check is cancelled (the
  agent stops), the whole group gets SIGKILL and is reaped, so nothing of a hung check is
  left behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import trio

from supervisor.manifest import AgentSpec, Probe
from supervisor.runners.containment import LEADERS
from supervisor.runners.launch import identity

if TYPE_CHECKING:
    import httpx

Check = Callable[[], Awaitable[str | None]]


def describe_probe(probe: Probe) -> str:
    """What the probe checks, as the start of its failure messages."""
    if probe.http is not None:
        return f"GET {probe.http}"
    if probe.tcp is not None:
        return f"connect {probe.tcp}"
    if probe.exec is not None:
        return f"exec {_command_text(probe.exec)}"
    return "probe"


@asynccontextmanager
async def open_check(probe: Probe, spec: AgentSpec) -> AsyncIterator[Check]:
    """A check function for `probe` (not ``log``), for as long as the context is open."""
    if probe.http is not None:
        async with _http_client(probe) as client:
            yield _bounded(probe, lambda: _http(client, probe.http or ""))
    elif probe.tcp is not None:
        yield _bounded(probe, lambda: _tcp(probe.tcp or ""))
    else:
        command = _command(probe.exec)
        env = _environment(spec)
        yield _bounded(probe, lambda: _exec(command, spec, env))


def _bounded(probe: Probe, check: Check) -> Check:
    what = describe_probe(probe)

    async def bounded() -> str | None:
        with trio.move_on_after(probe.timeout):
            return await check()
        return f"{what}: no answer within {probe.timeout:g}s"

    return bounded


# -- http -------------------------------------------------------------------------------


@asynccontextmanager
async def _http_client(probe: Probe) -> AsyncIterator[httpx.AsyncClient]:
    import httpx  # only agents with an http probe pay for it (~60 ms of imports)

    client = httpx.AsyncClient(
        timeout=probe.timeout,
        trust_env=False,  # $HTTP_PROXY is for agents' traffic, not a local health check
        follow_redirects=False,
        verify=False,
        limits=httpx.Limits(max_keepalive_connections=0),
    )
    async with client:
        yield client


async def _http(client: httpx.AsyncClient, url: str) -> str | None:
    import httpx

    try:
        response = await client.get(url)
    except httpx.HTTPError as exc:
        return f"GET {url}: {_http_error(exc)}"
    if 200 <= response.status_code < 400:
        return None
    return f"GET {url}: {response.status_code}"


def _http_error(exc: Exception) -> str:
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror.lower()
    text = str(exc) or type(exc).__name__
    return text.lower() if text.startswith("All connection attempts failed") else text


# -- tcp --------------------------------------------------------------------------------


async def _tcp(address: str) -> str | None:
    host, _, port = address.rpartition(":")
    try:
        stream = await trio.open_tcp_stream(host.strip("[]"), int(port))
    except OSError as exc:
        return f"connect {address}: {_os_error(exc)}"
    await stream.aclose()
    return None


def _os_error(exc: OSError) -> str:
    inner = exc.__cause__
    if isinstance(inner, BaseExceptionGroup):  # trio tried several addresses
        inner = inner.exceptions[-1]
    for error in (inner, exc):
        if isinstance(error, OSError) and error.errno:
            return os.strerror(error.errno).lower()
    return str(exc).lower()


# -- exec -------------------------------------------------------------------------------


def _command(written: tuple[str, ...] | str | None) -> list[str]:
    # Structured from the manifest, `exec` is always a tuple (a string was split).
    assert isinstance(written, tuple)
    return list(written)


def _command_text(written: tuple[str, ...] | str) -> str:
    return written if isinstance(written, str) else " ".join(written)


def _environment(spec: AgentSpec) -> dict[str, str]:
    """The agent's environment, as its process gets it (less its notify socket)."""
    env = dict(os.environ)
    env.pop("NOTIFY_SOCKET", None)
    env.pop("SUPERVISOR_TOKEN", None)
    env.update(spec.env)
    return env


async def _exec(command: list[str], spec: AgentSpec, env: dict[str, str]) -> str | None:
    """Run the check's command once, as the agent's `user`/`group`; None if it exited 0.

    Spawned in the loop and registered in `LEADERS` before any checkpoint, then waited
    for and reaped by pidfd, like an agent's leader: a subreaper's or PID 1's reaper
    never takes its exit status (which Popen would then report as 0, a false pass).
    """
    shown = " ".join(command)
    try:
        popen = _spawn(command, spec, env)
    except (OSError, ValueError, KeyError) as exc:
        text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return f"exec {shown}: cannot start: {text.lower()}"
    LEADERS.add(popen.pid)
    try:
        code = await _wait(popen)
    finally:
        LEADERS.discard(popen.pid)
    if code == 0:
        return None
    if code < 0:
        return f"exec {shown}: killed by signal {-code}"
    return f"exec {shown}: exit {code}"


def _spawn(command: list[str], spec: AgentSpec, env: dict[str, str]) -> subprocess.Popen[bytes]:
    who = identity(spec)
    if who is not None:
        env = {**env, **_decoded(who.env), **spec.env}
    return subprocess.Popen(
        command,
        cwd=str(spec.cwd),
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        process_group=0,
        user=None if who is None else who.uid,
        group=None if who is None else who.gid,
        extra_groups=None if who is None else list(who.groups),
    )


async def _wait(popen: subprocess.Popen[bytes]) -> int:
    """Wait for the check's process and reap it (by pidfd). Its group gets SIGKILL once
    it has exited, or at once if the wait is cancelled (timeout, stop): nothing of a
    check is left. Returns its code, -N for signal N."""
    try:
        pidfd = os.pidfd_open(popen.pid)
    except OSError:  # out of descriptors: end it the blocking way
        _kill_group(popen.pid)
        return _reap_killed(popen)
    try:
        try:
            await trio.lowlevel.wait_readable(pidfd)
        finally:
            _kill_group(popen.pid)  # its leader unreaped: the group id is still its own
            with trio.CancelScope(shield=True):
                await trio.lowlevel.wait_readable(pidfd)
            _reap(popen, pidfd)
    finally:
        trio.lowlevel.notify_closing(pidfd)
        os.close(pidfd)
    assert popen.returncode is not None
    return popen.returncode


def _reap(popen: subprocess.Popen[bytes], pidfd: int) -> None:
    info = os.waitid(os.P_PIDFD, pidfd, os.WEXITED)  # exited: never blocks
    assert info is not None
    popen.returncode = info.si_status if info.si_code == os.CLD_EXITED else -info.si_status


def _reap_killed(popen: subprocess.Popen[bytes]) -> int:
    return popen.wait()  # SIGKILLed: a moment


def _decoded(env: dict[bytes, bytes]) -> dict[str, str]:
    return {os.fsdecode(k): os.fsdecode(v) for k, v in env.items()}


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
