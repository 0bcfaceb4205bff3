"""The in-process runner: outcomes, import failures, readiness, two-phase stops, folders.

Agents live in ``tests/agents/inproc_agents.py`` (the tests' root is ``tests/``) and
report through ``ctx.status``; modules that must be broken, edited or duplicated are
written to ``tmp_path``. Every test runs under the autojump clock with a `fail_after`,
so stop timeouts are checked in exact trio time and a hang fails at once.
"""

from __future__ import annotations

import copy
import itertools
import logging
import re
import sys
import textwrap
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from supervisor.context import AgentContext
from supervisor.manifest import AgentSpec
from supervisor.runners import Outcome
from supervisor.runners.inprocess import run_inprocess

from ..conftest import make_spec

_module_numbers = itertools.count()


class Recorder:
    """Hooks that keep what the runner (and the agent, via ``ctx.status``) reported."""

    def __init__(self) -> None:
        self.output_lines: list[tuple[str, str]] = []
        self.events: list[str] = []
        self._changed = trio.Event()
        self.request_stop: Callable[[], None] = lambda: None

    def output(self, stream: str, lines: Sequence[str]) -> None:
        self.output_lines.extend((stream, line) for line in lines)

    def on_stop(self, callback: Callable[[], None]) -> None:
        self.request_stop = callback

    refuse: str | None = None  # what may_spawn answers

    def may_spawn(self) -> str | None:
        return self.refuse

    def launched(self, pid: int | None) -> None:
        self._add(f"launched {pid}")

    def ready(self) -> None:
        self._add("ready")

    def status(self, text: str) -> None:
        self._add(text)

    def _add(self, event: str) -> None:
        self.events.append(event)
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, event: str) -> None:
        while event not in self.events:
            await self._changed.wait()


def agent(name: str, **keys: Any) -> AgentSpec:
    return make_spec(entry=f"agents.inproc_agents:{name}", **keys)


async def run(spec: AgentSpec) -> tuple[Outcome, list[str]]:
    hooks = Recorder()
    outcome = await run_inprocess(spec, hooks)
    return outcome, hooks.events


async def run_and_stop(spec: AgentSpec, hooks: Recorder, when: str, then: float = 0) -> float:
    """Run `spec`, stop it `then` seconds after `hooks` saw `when`; return the seconds the
    stop took.

    Checks the contract's end of a stop: a bare `trio.Cancelled` out of the runner.
    """
    scope = trio.CancelScope()
    stopped_at = 0.0
    cancelled = False

    async def stop() -> None:
        nonlocal stopped_at
        await hooks.wait_for(when)
        await trio.sleep(then)
        stopped_at = trio.current_time()
        hooks.request_stop()  # as the slot does: the runner's callback, then the cancel
        scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(stop)
        with scope:
            try:
                outcome = await run_inprocess(spec, hooks)
            except trio.Cancelled:
                cancelled = True
                raise
            pytest.fail(f"returned {outcome} instead of raising Cancelled")
    assert cancelled
    return trio.current_time() - stopped_at


@pytest.fixture(autouse=True)
def _forget_tmp_modules(tmp_path: Path) -> Iterator[None]:
    """Put sys.path back as it was, and drop the modules the test loaded from tmp_path."""
    path = list(sys.path)
    yield
    sys.path[:] = path
    for name, module in list(sys.modules.items()):
        if str(getattr(module, "__file__", None)).startswith(str(tmp_path)):
            del sys.modules[name]


def write_module(root: Path, source: str) -> str:
    """Write `source` as a uniquely named module in `root`; return its name."""
    name = f"inproc_tmp_{next(_module_numbers)}"
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{name}.py").write_text(textwrap.dedent(source))
    return name


def write_folder(folder: Path, files: dict[str, str]) -> AgentSpec:
    """An agent folder holding `files`; its spec, with the folder's default entry."""
    for name, source in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(textwrap.dedent(source))
    return make_spec(folder.name, entry="agent:main", path=folder, root=folder, cwd=folder)


# --- How a run ends ----------------------------------------------------------------------


async def test_returning_is_exit_code_0(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(5):
        assert await run(agent("returns")) == (Outcome(code=0), ["launched None", "ready", "ran"])


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("raises", "ValueError: boom"),
        ("raises_in_child", "ValueError: boom"),  # a one-leaf group counts as its leaf
        (
            "raises_many",
            "4 exceptions: ValueError: a; KeyError: 'b'; OSError: c; and 1 more",
        ),
    ],
)
async def test_raising_is_an_error_with_type_and_text(
    autojump_clock: trio.testing.MockClock, name: str, error: str
) -> None:
    with trio.fail_after(5):
        outcome, _ = await run(agent(name))
    assert outcome == Outcome(error=error)


async def test_a_crash_logs_its_traceback_under_the_agent(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(5):
        await run(agent("raises", agent_id="web"))
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert record.getMessage() == "crashed: ValueError: boom"
    assert getattr(record, "agent", None) == "web"
    assert record.exc_info is not None


@pytest.mark.parametrize(
    ("code", "outcome"),
    [(3, Outcome(code=3)), (None, Outcome(code=0)), ("bye", Outcome(code=1, error="bye"))],
)
async def test_system_exit_is_its_exit_code(
    autojump_clock: trio.testing.MockClock, code: object, outcome: Outcome
) -> None:
    with trio.fail_after(5):
        assert (await run(agent("exits", params={"code": code})))[0] == outcome


async def test_system_exit_in_a_child_task_is_its_exit_code(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(5):
        assert (await run(agent("exits_in_child")))[0] == Outcome(code=4)


@pytest.mark.parametrize(
    ("name", "params", "error"),
    [
        ("interrupts", {}, "KeyboardInterrupt"),
        ("interrupts_in_child", {}, "KeyboardInterrupt"),
        ("raises_base_exception", {"raise": "GeneratorExit"}, "GeneratorExit: closed"),
        (
            "raises_base_exception",
            {"raise": "KeyboardInterrupt+ValueError"},
            "2 exceptions: KeyboardInterrupt; ValueError: v",
        ),
        (
            "raises_base_exception",
            {"raise": "KeyboardInterrupt+SystemExit"},
            "2 exceptions: KeyboardInterrupt; SystemExit: 1",
        ),
        (
            "raises_base_exception",
            {"raise": "SystemExit+ValueError"},
            "2 exceptions: SystemExit: 3; ValueError: v",
        ),
    ],
)
async def test_base_exceptions_of_an_agent_are_its_failure(
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
    name: str,
    params: dict[str, str],
    error: str,
) -> None:
    """KeyboardInterrupt, GeneratorExit and groups of them end the agent, not the caller."""
    with trio.fail_after(5):
        outcome, _ = await run(agent(name, params=params))
    assert outcome == Outcome(error=error)
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert record.getMessage() == f"crashed: {error}"
    assert record.exc_info is not None


async def test_a_keyboard_interrupt_while_stopping_is_logged_and_the_stop_goes_on(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    hooks = Recorder()
    with trio.fail_after(5):
        await run_and_stop(agent("interrupts_while_stopping", ready="notify"), hooks, "ready")
    [record] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert record.getMessage() == "raised while stopping: KeyboardInterrupt"


def test_trios_keyboard_interrupt_for_a_real_sigint_still_propagates() -> None:
    """A SIGINT that trio's own handler turns into KeyboardInterrupt inside the agent's
    code (no signal receiver installed) is the process's Ctrl-C: it ends `trio.run`."""
    with pytest.raises(KeyboardInterrupt):
        trio.run(run, agent("interrupted_by_sigint"))


@pytest.mark.parametrize(
    "params",
    [{"url": "x", "nested": {"n": 1}}, {"url": "x", "n": 1.5, "on": True}],
    ids=["nested", "flat"],
)
async def test_params_are_passed_as_the_agents_own_copy(
    autojump_clock: trio.testing.MockClock, params: dict[str, object]
) -> None:
    spec = agent("echoes_params", params=copy.deepcopy(params))
    with trio.fail_after(5):
        _, events = await run(spec)
    assert f"params {params}" in events
    assert spec.params == params


@pytest.mark.parametrize(
    ("entry", "said"), [("service", "service called"), ("service.run", "service.run called")]
)
async def test_async_callables_and_attribute_paths_are_entries(
    autojump_clock: trio.testing.MockClock, entry: str, said: str
) -> None:
    with trio.fail_after(5):
        assert (await run(agent(entry)))[1][-1] == said


# --- Starts that cannot succeed ----------------------------------------------------------

M = "agents.inproc_agents"


@pytest.mark.parametrize(
    ("entry", "error"),  # {M}: the agents' module; {E}: the entry, quoted
    [
        ("nosuch.mod:main", "cannot import {E}: ModuleNotFoundError: No module named 'nosuch'"),
        ("{M}:nothing", "cannot import {E}: module '{M}' has no attribute 'nothing'"),
        ("{M}:Service.nothing", "cannot import {E}: '{M}:Service' has no attribute 'nothing'"),
        ("{M}:service.run.x", "cannot import {E}: '{M}:service.run' has no attribute 'x'"),
        ("{M}", "cannot import {E}: an entry looks like 'pkg.mod:func'"),
        ("{M}:not_async", "{E} is not an async function"),
        ("{M}:NOT_CALLABLE", "{E} is not an async function"),
        ("{M}:Service", "{E} is not an async function"),
    ],
)
async def test_an_entry_that_cannot_load_is_a_failed_start(
    autojump_clock: trio.testing.MockClock, entry: str, error: str
) -> None:
    entry = entry.format(M=M)
    with trio.fail_after(5):
        outcome, events = await run(make_spec(entry=entry))
    assert outcome == Outcome(start_failed=True, error=error.format(M=M, E=repr(entry)))
    assert events == []  # never launched


@pytest.mark.parametrize(
    ("source", "error"),
    [
        ("async def main(ctx)\n    pass\n", "SyntaxError: expected ':' ({name}.py, line 1)"),
        ("raise RuntimeError('no config')\n", "RuntimeError: no config"),
        ("import nosuchdependency\n", "ModuleNotFoundError: No module named 'nosuchdependency'"),
        ("import sys\nsys.exit(2)\n", "SystemExit: 2"),
        ("raise KeyboardInterrupt\n", "KeyboardInterrupt"),
        ("raise GeneratorExit\n", "GeneratorExit"),
    ],
)
async def test_a_module_that_fails_to_import_is_a_failed_start(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, source: str, error: str
) -> None:
    name = write_module(tmp_path, source)
    with trio.fail_after(5):
        outcome, _ = await run(make_spec(entry=f"{name}:main", root=tmp_path))
    expected = f"cannot import '{name}:main': " + error.format(name=name)
    assert outcome == Outcome(start_failed=True, error=expected)


async def test_the_root_comes_first_on_the_import_path(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    name = write_module(tmp_path, "async def main(ctx):\n    ctx.status(__file__)\n")
    sys.path.append(str(tmp_path))  # present, but last: it must still come first
    with trio.fail_after(5):
        _, events = await run(make_spec(entry=f"{name}:main", root=tmp_path))
    assert events[-1] == str(tmp_path / f"{name}.py")
    assert sys.path[0] == str(tmp_path)
    assert sys.path.count(str(tmp_path)) == 1


async def test_a_later_start_gets_what_importing_again_would(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """Later starts of an entry skip the import system, never for something an import
    would not give: a replaced function, a module dropped from sys.modules (imported
    anew), a root no longer first on the import path (put first again)."""
    name = write_module(tmp_path, "async def main(ctx):\n    ctx.status('first')\n")
    spec = make_spec(entry=f"{name}:main", root=tmp_path)

    async def replaced(ctx: AgentContext) -> None:
        ctx.status("replaced")

    with trio.fail_after(5):
        assert [(await run(spec))[1][-1] for _ in range(2)] == ["first", "first"]
        sys.modules[name].main = replaced
        assert (await run(spec))[1][-1] == "replaced"
        (tmp_path / f"{name}.py").write_text("async def main(ctx):\n    ctx.status('anew')\n")
        del sys.modules[name]
        assert (await run(spec))[1][-1] == "anew"
        sys.path.remove(str(tmp_path))
        sys.path.append(str(tmp_path))
        assert (await run(spec))[1][-1] == "anew"
    assert sys.path[0] == str(tmp_path)


# --- Readiness ---------------------------------------------------------------------------


async def test_ready_immediate_is_reported_at_launch_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    hooks = Recorder()
    with trio.fail_after(5):
        await run_and_stop(agent("notifies"), hooks, when="ready said")
    assert hooks.events == ["launched None", "ready", "ready said"]


async def test_ready_notify_waits_for_ctx_ready(autojump_clock: trio.testing.MockClock) -> None:
    hooks = Recorder()
    spec = agent("notifies", ready="notify", params={"delay": 7})
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_and_stop, spec, hooks, "ready said")
        with trio.fail_after(10):
            await hooks.wait_for("launched None")
            assert hooks.events == ["launched None"]
            await hooks.wait_for("ready")
            assert trio.current_time() == 7
    assert hooks.events == ["launched None", "ready", "ready said"]


# --- Stopping ----------------------------------------------------------------------------


async def test_a_stop_runs_finally_once_with_stopping_set(
    autojump_clock: trio.testing.MockClock,
) -> None:
    hooks = Recorder()
    with trio.fail_after(5):
        took = await run_and_stop(agent("idles"), hooks, when="running")
    assert hooks.events == ["launched None", "ready", "running", "finally, stopping=True"]
    assert took == 0


async def test_a_stop_while_starting_runs_finally_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    hooks = Recorder()
    with trio.fail_after(5):
        await run_and_stop(agent("starts_slowly", ready="notify"), hooks, when="connecting")
    assert hooks.events == ["launched None", "connecting", "finally, stopping=True"]


async def test_a_stop_before_the_start_never_starts_the_agent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    hooks = Recorder()
    with trio.fail_after(5), trio.CancelScope() as scope:
        scope.cancel()
        await run_inprocess(agent("starts_at_once"), hooks)
    assert scope.cancelled_caught
    assert hooks.events == []


async def test_a_cancel_that_is_no_stop_still_runs_finally(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A start timeout cancels without a stop request: cleanup runs all the same."""
    hooks = Recorder()
    with trio.fail_after(5), trio.move_on_after(1) as scope:
        await run_inprocess(agent("starts_slowly", ready="notify"), hooks)
    assert scope.cancelled_caught
    assert hooks.events == ["launched None", "connecting", "finally, stopping=False"]


async def test_cleanup_that_awaits_gets_its_time(autojump_clock: trio.testing.MockClock) -> None:
    hooks = Recorder()
    spec = agent("cleans_up", stop_timeout=5.0, params={"cleanup": 2})
    with trio.fail_after(10):
        took = await run_and_stop(spec, hooks, when="ready")
    assert took == 2
    assert hooks.events[-1] == "cleaned up"


async def test_cleanup_that_hangs_is_cancelled_at_stop_timeout(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    hooks = Recorder()
    with trio.fail_after(10):
        took = await run_and_stop(agent("hangs_in_cleanup", stop_timeout=3.0), hooks, "ready")
    assert took == 3
    assert hooks.events[-1] == "cleanup cut short=True"
    assert "cleanup cut short: not done 3s after the stop (stop_timeout)" in caplog.messages


async def test_an_agent_can_drain_when_stopping_is_set(
    autojump_clock: trio.testing.MockClock,
) -> None:
    hooks = Recorder()
    with trio.fail_after(10):
        took = await run_and_stop(agent("drains"), hooks, when="ready")
    assert took == 1
    assert hooks.events[-1] == "drained at 1"


async def test_an_error_while_stopping_is_logged_and_the_stop_goes_on(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(5):
        await run_and_stop(agent("raises_while_stopping"), Recorder(), when="ready")
    assert "raised while stopping: RuntimeError: cleanup failed" in caplog.messages


async def test_an_agent_that_swallows_the_stop_still_ends_in_cancelled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    hooks = Recorder()
    with trio.fail_after(5):
        await run_and_stop(agent("swallows_the_stop"), hooks, when="ready")
    assert hooks.events[-1] == "swallowed"


async def test_anyio_agents_are_stopped_with_their_cleanup(
    autojump_clock: trio.testing.MockClock,
) -> None:
    hooks = Recorder()
    spec = agent("anyio_workers", ready="notify", stop_timeout=5.0)
    with trio.fail_after(10):
        took = await run_and_stop(spec, hooks, when="ready")
    assert took == 1
    assert sorted(hooks.events[-3:-1]) == ["worker 1 cancelled", "worker 2 cancelled"]
    assert hooks.events[-1] == "anyio cleanup done"


async def test_anyio_shielded_scopes_work_for_cleanup(
    autojump_clock: trio.testing.MockClock,
) -> None:
    hooks = Recorder()
    with trio.fail_after(10):
        took = await run_and_stop(agent("anyio_shielded_cleanup"), hooks, when="ready")
    assert took == 1
    assert hooks.events[-1] == "anyio shielded cleanup done"


# --- Agent folders -----------------------------------------------------------------------

FOLDER_AGENT = """\
import helper


async def main(ctx):
    import trio

    await trio.sleep(1)  # by now the other folder has been imported too
    ctx.status(f"{__name__} from {__file__}, helper {helper.NAME}")
"""


async def test_two_folders_each_run_their_own_agent_py(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    specs = [
        write_folder(tmp_path / name, {"agent.py": FOLDER_AGENT, "helper.py": f"NAME = {name!r}"})
        for name in ("one", "two")
    ]
    hooks = {spec.id: Recorder() for spec in specs}
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            for spec in specs:
                nursery.start_soon(run_inprocess, spec, hooks[spec.id])
    for name in ("one", "two"):
        assert hooks[name].events[-1] == f"agent from {tmp_path}/{name}/agent.py, helper {name}"


async def test_a_folder_agent_runs_its_current_code_on_every_start(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    folder = tmp_path / "edited"
    said = []
    for version in ("v1", "v2"):  # same size, same second: only a fresh import sees v2
        spec = write_folder(
            folder, {"agent.py": f"async def main(ctx):\n    ctx.status('{version}')\n"}
        )
        with trio.fail_after(5):
            said.append((await run(spec))[1][-1])
    assert said == ["v1", "v2"]
    assert not (folder / "__pycache__").exists()


async def test_folder_imports_leave_the_import_path_as_it_was(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    path, meta_path = list(sys.path), list(sys.meta_path)
    spec = write_folder(tmp_path / "f", {"agent.py": "async def main(ctx):\n    pass\n"})
    with trio.fail_after(5):
        for _ in range(3):
            assert (await run(spec))[0] == Outcome(code=0)
    assert (sys.path, sys.meta_path) == (path, meta_path)


async def test_a_folder_may_hold_packages(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    spec = write_folder(
        tmp_path / "pkgs",
        {
            "lib/__init__.py": "",
            "lib/words.py": "WORD = 'hello'\n",
            "lib/main.py": """\
                from . import words

                async def main(ctx):
                    ctx.status(words.WORD)
            """,
        },
    )
    with trio.fail_after(5):
        _, events = await run(attrs.evolve(spec, entry="lib.main:main"))
    assert events[-1] == "hello"


async def test_a_broken_folder_agent_fails_to_start_until_fixed(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    folder = tmp_path / "broken"
    spec = write_folder(folder, {"agent.py": "async def main(ctx)\n    pass\n"})
    with trio.fail_after(5):
        assert (await run(spec))[0] == Outcome(
            start_failed=True,
            error="cannot import 'agent:main': SyntaxError: expected ':' (agent.py, line 1)",
        )
        spec = write_folder(folder, {"agent.py": "async def main(ctx):\n    pass\n"})
        assert (await run(spec))[0] == Outcome(code=0)


async def test_a_module_deleted_from_a_folder_is_not_served_from_an_earlier_start(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    folder = tmp_path / "shrinking"
    files = {"agent.py": FOLDER_AGENT.replace("sleep(1)", "sleep(0)"), "helper.py": "NAME = 1"}
    spec = write_folder(folder, files)
    with trio.fail_after(5):
        assert (await run(spec))[0] == Outcome(code=0)
        (folder / "helper.py").unlink()
        assert (await run(spec))[0] == Outcome(
            start_failed=True,
            error="cannot import 'agent:main': ModuleNotFoundError: No module named 'helper'",
        )


async def test_a_root_module_is_not_shadowed_by_a_folders_module_of_that_name(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    source = "async def main(ctx):\n    ctx.status(__file__)\n"
    folder_spec = write_folder(tmp_path / "folder", {"agent.py": source})
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "agent.py").write_text(source)
    root_spec = make_spec(entry="agent:main", root=tmp_path / "root")
    with trio.fail_after(5):
        starts = (folder_spec, root_spec, folder_spec, root_spec)
        said = [(await run(spec))[1][-1] for spec in starts]
    assert said == [str(tmp_path / f / "agent.py") for f in ("folder", "root") * 2]
    assert sys.modules["agent"].__file__ == str(tmp_path / "root" / "agent.py")  # given back


async def test_a_folder_entry_named_like_a_library_module_is_refused(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    spec = write_folder(tmp_path / "clash", {"textwrap.py": "async def main(ctx):\n    pass\n"})
    with trio.fail_after(5):
        outcome, _ = await run(attrs.evolve(spec, entry="textwrap:main"))
    assert outcome == Outcome(
        start_failed=True,
        error=(
            "cannot import 'textwrap:main': ImportError: 'textwrap' is already loaded from "
            f"{textwrap.__file__}; rename the folder's 'textwrap'"
        ),
    )


# --- The guide's examples ----------------------------------------------------------------

GUIDE = Path(__file__).parents[2] / "docs" / "agents.md"


def guide_examples() -> list[str]:
    """The Python examples of the guide's "In-process agents" section."""
    section = GUIDE.read_text().split("\n## In-process agents\n")[1].split("\n## ")[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)


@pytest.mark.parametrize("source", guide_examples())
async def test_the_guides_examples_run_and_stop_cleanly(
    autojump_clock: trio.testing.MockClock,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    source: str,
) -> None:
    name = write_module(tmp_path, source)
    ready = "notify" if "ctx.ready()" in source else "immediate"
    hooks = Recorder()
    with trio.fail_after(30):
        took = await run_and_stop(
            make_spec(entry=f"{name}:main", root=tmp_path, ready=ready), hooks, "ready", then=5
        )
    assert took <= 10  # the default stop_timeout
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
