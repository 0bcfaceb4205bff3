"""Starting a process agent's leader: its environment, its user, the spawn, and why not.

`Child.spawn` spawns with ``os.posix_spawn`` where it can (`supervisor.runners.spawn`),
else with `subprocess.Popen`. Either runs right in the trio loop, without trio's thread hop
(`trio.lowlevel.open_process`). Popen takes the vfork path here (no ``preexec_fn``; the
process group is set with ``process_group=0``), and CPython 3.11 holds the GIL across
vfork until the child has exec'd, so a worker thread could not spare the loop that time
anyway: it would only add a thread hand-off to every spawn. Measured on the 2-core dev
machine, spawning 300 ``sleep`` children back to back: Popen with our pipes and pidfd
0.75 ms per child, the same through a thread 1.0 ms, trio's open_process 0.9 ms, and a
bare ``os.posix_spawn`` 0.62 ms (the floor). An agent with a ``user`` or ``group`` costs
a plain fork instead (CPython does not vfork when it must change ids).
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import signal
import subprocess
from collections.abc import Coroutine, Mapping
from typing import Any

import attrs
import trio

from supervisor.core.outcome import Outcome
from supervisor.manifest import AgentSpec
from supervisor.runners.spawn import spawn


@attrs.frozen
class Identity:
    """Who a process agent runs as: ids, supplementary groups, and its login variables."""

    uid: int
    gid: int
    groups: tuple[int, ...]
    env: dict[bytes, bytes]


def identity(spec: AgentSpec) -> Identity | None:
    """The `user`/`group` of `spec` looked up now; None if it gives neither.

    Raises:
      ValueError: unknown user or group (the manifest check says so first), or a
        supervisor that is not root asked to run as someone else.
    """
    if not spec.user and not spec.group:
        return None
    entry = _user(spec.user) if spec.user else pwd.getpwuid(os.getuid())
    gid = _group(spec.group) if spec.group else entry.pw_gid
    if os.geteuid() != 0 and (entry.pw_uid != os.geteuid() or gid != os.getegid()):
        raise ValueError(
            f"user/group {spec.user or spec.group!r} needs a supervisor running as root"
        )
    groups = tuple(os.getgrouplist(entry.pw_name, gid)) if entry.pw_name else (gid,)
    env = {
        b"HOME": os.fsencode(entry.pw_dir or "/"),
        b"USER": os.fsencode(entry.pw_name),
        b"LOGNAME": os.fsencode(entry.pw_name),
    }
    return Identity(entry.pw_uid, gid, groups, env)


def _user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
    except KeyError:
        raise ValueError(f"unknown user {name!r}") from None


def _group(name: str) -> int:
    try:
        return grp.getgrgid(int(name)).gr_gid if name.isdigit() else grp.getgrnam(name).gr_gid
    except KeyError:
        raise ValueError(f"unknown group {name!r}") from None


# `os.environb`'s own dict of bytes (CPython's, kept current by os.putenv/environ
# writes): copied in C, where `dict(os.environb)` runs Python for every variable
# (~16 us of each spawn). Any other Python: the mapping itself.
_ENVIRON_BYTES: Mapping[bytes, bytes] = getattr(os.environb, "_data", os.environb)


def environment(spec: AgentSpec, *extra: dict[bytes, bytes]) -> dict[bytes, bytes]:
    """Our environment, plus each of `extra` (a user's HOME…, ``$NOTIFY_SOCKET``, the
    marks), then the agent's own `env`. As bytes: copying `os.environb` skips decoding
    every variable and Popen encoding it back, on every spawn."""
    env = dict(_ENVIRON_BYTES)
    # If we run under systemd ourselves, our NOTIFY_SOCKET is not the agent's to use;
    # and the API token is the operator's, not every agent's (an agent's own env may
    # still set it).
    env.pop(b"NOTIFY_SOCKET", None)
    env.pop(b"SUPERVISOR_TOKEN", None)
    for more in extra:
        env.update(more)
    env.update((os.fsencode(k), os.fsencode(v)) for k, v in spec.env.items())
    return env


class Child:
    """A spawned group leader: its pid, a pidfd to await its exit, its output pipes."""

    exited = False  # its exit was seen (`wait_exited` returned): set by the one who waited

    def __init__(
        self,
        pid: int,
        pidfd: int,
        stdout_fd: int,
        stderr_fd: int,
        popen: subprocess.Popen[bytes] | None = None,
    ) -> None:
        self._popen = popen  # if Popen spawned it (else `supervisor.runners.spawn`)
        self.pid = pid
        self._pidfd = pidfd
        self.stdout_fd = stdout_fd
        self.stderr_fd = stderr_fd
        self.outcome = _NOT_REAPED

    @classmethod
    def spawn(
        cls,
        spec: AgentSpec,
        env: dict[bytes, bytes],
        command: list[str],
        who: Identity | None,
    ) -> Child:
        """Start the child in a new process group. Raises OSError/ValueError if it cannot.

        On failure nothing is left behind: no descriptor, and no child (one spawned
        before a later step failed, say pidfd_open hitting the fd limit, is killed).
        """
        assert spec.command
        if _UNREAPED:
            _reap_unreaped()
        # Like trio's open_process: the child's pipe ends are always closed here (it
        # has its copies, and ours would keep the pipes from reaching EOF); ours only
        # if the spawn fails. (try blocks, not ExitStacks: this is a restart's path.)
        stdout_r, stdout_w = os.pipe()
        try:
            stderr_r, stderr_w = os.pipe()
        except BaseException:
            _close(stdout_r, stdout_w)
            raise
        try:
            popen = None
            cwd = str(spec.cwd)
            pid = None if who is not None else spawn(command, env, cwd, stdout_w, stderr_w)
            if pid is None:
                popen = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=stdout_w,
                    stderr=stderr_w,
                    cwd=cwd,
                    env=env,
                    process_group=0,
                    user=None if who is None else who.uid,
                    group=None if who is None else who.gid,
                    extra_groups=None if who is None else list(who.groups),
                )
                pid = popen.pid
            try:
                # pidfd_open works on a zombie too, so a child that already exited is fine.
                pidfd = os.pidfd_open(pid)
            except BaseException:
                _kill_now(pid, popen)
                raise
        except BaseException:
            _close(stdout_r, stderr_r)
            raise
        finally:
            _close(stdout_w, stderr_w)
        return cls(pid, pidfd, stdout_r, stderr_r, popen)

    def wait_exited(self) -> Coroutine[Any, Any, None]:
        """Await it: returns once the leader has exited (it stays a zombie until `reap`).
        On trio's own epoll, not the pump's: the exit then wakes its task in the loop's
        first pass, with the pump's (docs/performance.md, crash -> running)."""
        return trio.lowlevel.wait_readable(self._pidfd)  # noqa: ASYNC105 (awaited by the caller)

    def signal_group(self, sig: int) -> None:
        """Send `sig` to the whole group. Only valid before `reap`: until then the
        leader's pid, and so the group's number, cannot be reused."""
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass

    def reap(self) -> None:
        """Collect the exited leader's status into `outcome`. Never blocks once exited."""
        try:
            # By pidfd, not pid: immune to pid reuse, and it fails loudly (ECHILD) rather
            # than reporting 0 if someone else's waitpid(-1) took the status first.
            info = os.waitid(os.P_PIDFD, self._pidfd, os.WEXITED)
        except ChildProcessError:
            self.outcome = Outcome(error="exit status lost: the process was reaped elsewhere")
            returncode = 0
        else:
            assert info is not None
            if info.si_code == os.CLD_EXITED:
                self.outcome = Outcome(code=info.si_status)
                returncode = info.si_status
            else:
                self.outcome = Outcome(signal=info.si_status)
                returncode = -info.si_status
        if self._popen is not None:  # reaped: Popen must not wait for it
            self._popen.returncode = returncode

    def close(self) -> None:
        """Release the pidfd. The pipes belong to their `LineRelay`s.

        A leader never reaped (stuck in the kernel past KILL_TIMEOUT) is reaped at a
        later spawn (`_reap_unreaped`). No task waits on the pidfd by now, so trio is not
        told (`notify_closing`): an epoll call for nothing.
        """
        if self.outcome is _NOT_REAPED:
            _UNREAPED.append(self._pidfd)  # by pidfd: its pid may be reaped and reused
            if self._popen is not None:
                self._popen.returncode = 0  # Popen must not waitpid a pid maybe reused
        else:
            os.close(self._pidfd)


_NOT_REAPED = Outcome(error="the process was not reaped")
# The pidfds of leaders that their run could not reap (`Child.close`), for a later spawn.
_UNREAPED: list[int] = []


def _reap_unreaped() -> None:
    for pidfd in list(_UNREAPED):
        try:
            if os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG) is None:
                continue  # still there
        except ChildProcessError:
            pass  # reaped elsewhere
        _UNREAPED.remove(pidfd)
        os.close(pidfd)


def _close(*fds: int) -> None:
    for fd in fds:
        os.close(fd)


def _kill_now(pid: int, popen: subprocess.Popen[bytes] | None) -> None:
    """Undo a spawn: SIGKILL the new group and reap its leader (dead within a moment)."""
    os.killpg(pid, signal.SIGKILL)
    if popen is not None:
        popen.wait()
    else:
        os.waitpid(pid, 0)


# The supervisor's own shortage, not the agent's fault (its restart budget is not spent).
SHORT_OF_FDS = (errno.EMFILE, errno.ENFILE)


def notify_socket_error(exc: OSError, spec: AgentSpec) -> str:
    if exc.errno in SHORT_OF_FDS:
        return start_error(exc, spec)
    where = f" ({exc.filename})" if exc.filename else ""
    return (
        f"cannot create a $NOTIFY_SOCKET: {exc.strerror or exc}{where}; "
        "set TMPDIR to a writable folder"
    )


def start_error(exc: OSError | ValueError, spec: AgentSpec) -> str:
    """Why the spawn failed, in words a user can act on."""
    assert spec.command
    program, cwd = spec.command[0], str(spec.cwd)
    if isinstance(exc, ValueError):
        return f"cannot start {program!r}: {exc}"
    if exc.errno in SHORT_OF_FDS:
        return (
            f"cannot start {program!r}: the supervisor has too many open files "
            "(raise its limit: ulimit -n, LimitNOFILE=)"
        )
    if exc.filename == cwd and program != cwd:
        if isinstance(exc, FileNotFoundError):
            return f"cwd does not exist: {cwd!r}"
        if isinstance(exc, NotADirectoryError):
            return f"cwd is not a directory: {cwd!r}"
        return f"cannot enter cwd {cwd!r}: {exc.strerror}"
    if isinstance(exc, FileNotFoundError):
        if "/" in program and (spec.cwd / program).exists():
            return f"cannot run {program!r}: its #! interpreter was not found"
        return f"command not found: {program!r}"
    if isinstance(exc, PermissionError):
        if (spec.cwd / program).is_dir():
            return f"permission denied: {program!r} is a directory"
        if spec.user or spec.group:
            return f"permission denied: {program!r} (running as {spec.user or spec.group!r})"
        return f"permission denied: {program!r} is not executable"
    if exc.errno == errno.ENOEXEC:
        return f"cannot run {program!r}: not an executable format (a script needs a #! line)"
    return f"cannot start {program!r}: {exc.strerror}"
