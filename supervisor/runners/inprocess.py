"""In-process agents: an async function run in the supervisor's own trio loop.

`run_inprocess` keeps the runner contract of `supervisor.runners` for agents whose spec
has an ``entry``. One call is one start of the agent:

1. **Load.** `load_entry` imports the entry (``"pkg.mod:func"`` or ``"pkg.mod:obj.attr"``)
   with the agent's `root` first on the import path. A folder agent's code is imported
   fresh on every start (see *Agent folders* below). Anything that stops the entry from
   loading is a start that cannot succeed: an `Outcome` with ``start_failed=True`` and a
   message a user can act on, never an exception.
2. **Run.** The entry is called with a new `AgentContext`. Returning is exit code 0,
   ``SystemExit(n)`` is exit code n, any other exception is a failure described as
   ``"ValueError: boom"``; the traceback is logged under the agent's name.
3. **Stop.** A stop is the cancellation of `run_inprocess` (the slot cancels the scope
   around it). It has two phases: first ``ctx.stopping`` is set, then the agent is
   cancelled, so its ``finally`` blocks and ``async with`` exits run, once. Awaits
   they make get up to `stop_timeout` seconds through ``ctx.cleanup()`` and are then
   cancelled for good. When the agent has finished, `trio.Cancelled` propagates.

What cannot be bounded
  The agent shares the supervisor's thread and loop, and trio's cancellation is
  cooperative: it is delivered at checkpoints. So no deadline can end

  - an agent that blocks the loop synchronously (``time.sleep``, a busy loop, blocking
    I/O, a long computation): every agent, and the supervisor itself, stands still until
    it yields;
  - an agent that shields itself (a ``trio.CancelScope(shield=True)`` or anyio's
    ``CancelScope(shield=True)`` of its own without a deadline), or that catches
    `trio.Cancelled` and keeps awaiting in a loop: a stop then waits for it as long as
    it chooses to go on.

  Blocking work belongs in ``trio.to_thread.run_sync`` (or a process agent); cleanup
  that must await belongs in ``with ctx.cleanup():``.

Agent folders
  For a folder agent (``spec.path`` set, ``root`` that folder) the folder's own modules
  (``agent.py``, ``helper.py``, ``pkg/__init__.py`` and its submodules) are found by a
  finder placed first on `sys.meta_path` for the length of the import, which wins over
  any other module of the same name and leaves `sys.path` untouched. Before each import,
  modules that an earlier import loaded from this folder, or from another folder under
  a name this folder also has, are dropped from `sys.modules`, so every start runs the
  folder's current files, and two folders that both have an ``agent.py`` each get their
  own. Other agents' modules of those names (the manifest folder's ``helper.py``) are
  set aside during the import and given back after it. Libraries' modules (the standard
  library's, installed packages') are not: a folder's ``logging.py`` is not used once
  ``logging`` is loaded, as in any Python program, and an entry module named like one
  is refused. Code is compiled from source each time: no ``__pycache__`` is read (a
  stale one could hide an edit made within the same second) or written (the folder
  stays as the user left it, and may be read-only). Modules imported later, while the
  agent runs, come from `sys.modules` or the ordinary import path, which does not
  include the folder: import the folder's modules at the top of ``agent.py``.
"""

from __future__ import annotations

import copy
import functools
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import inspect
import os
import site
import sys
import sysconfig
from collections.abc import Awaitable, Callable, Sequence
from collections.abc import Set as AbstractSet
from pathlib import Path
from types import CodeType, ModuleType
from typing import TypeGuard

import trio

from supervisor.context import AgentContext
from supervisor.logs import agent_log
from supervisor.manifest import AgentSpec
from supervisor.runners import Hooks, Outcome

AgentMain = Callable[[AgentContext], Awaitable[object]]

# How many leaves of an exception group an Outcome's error lists by name.
_LISTED_LEAVES = 3


async def run_inprocess(spec: AgentSpec, hooks: Hooks) -> Outcome:
    """Start the in-process agent `spec` once and return how it ended.

    Args:
      spec: an agent of kind ``"in-process"``.
      hooks: told ``launched(None)`` just before the entry is called, and ``ready()`` at
        the same time (``ready = "immediate"``) or when the agent calls ``ctx.ready()``.

    Returns:
      ``Outcome(code=0)`` if the agent returned, ``Outcome(code=n)`` for
      ``SystemExit(n)``, ``Outcome(error="ValueError: boom")`` if it raised, or
      ``Outcome(start_failed=True, error=...)`` if its entry cannot be loaded.

    Raises:
      trio.Cancelled: when cancelled, which is how an agent is stopped: ``ctx.stopping``
        is set, the agent is cancelled, its cleanup runs (awaits in ``ctx.cleanup()``
        get up to `stop_timeout`), and then the cancellation propagates. Errors the agent
        raises while being stopped are logged, not returned.
      KeyboardInterrupt: if the agent raises it.
    """
    try:
        main = load_entry(spec)
    except EntryError as exc:
        agent_log(spec.id).error("%s", exc, exc_info=exc.__cause__)
        await trio.lowlevel.checkpoint()
        return Outcome(start_failed=True, error=str(exc))
    # Stopped before it started (the stop came during the import): it never starts.
    await trio.lowlevel.checkpoint_if_cancelled()
    # A copy: the agent may change its params, the spec must stay as the manifest says.
    ctx = AgentContext(spec.id, copy.deepcopy(spec.params), spec.stop_timeout, hooks)
    hooks.on_stop(ctx._request_stop)
    hooks.launched(None)
    if spec.ready == "immediate":
        ctx.ready()
    return await _AgentRun(main, ctx).run()


class _AgentRun:
    """One start of an agent, run in the caller's task.

    A requested stop reaches the agent in two steps: the slot calls the callback this
    run registered with ``hooks.on_stop`` (which sets ``ctx.stopping``), then cancels.
    So code in the agent's ``finally`` sees ``ctx.stopping`` set when it was stopped,
    whether the stop came while it ran or while it was still starting. No task of our
    own watches for the stop: at 10,000 agents, a task per agent is memory we keep.
    """

    def __init__(self, main: AgentMain, ctx: AgentContext) -> None:
        self._main = main
        self._ctx = ctx
        self._interrupt: BaseException | None = None

    async def run(self) -> Outcome:
        outcome = await self._call_agent()
        if self._interrupt is not None:
            raise self._interrupt
        # After a stop the agent got the cancellation and has finished with it, but the
        # scope outside is still cancelled: this raises the stop's Cancelled once more,
        # for the caller. (Cancelled just as the agent ended by itself, it wins too.)
        await trio.lowlevel.checkpoint_if_cancelled()
        return outcome

    async def _call_agent(self) -> Outcome:
        try:
            await self._main(self._ctx)
        except BaseException as exc:
            return self._outcome_of(exc)
        return Outcome(code=0)

    def _outcome_of(self, exc: BaseException) -> Outcome:
        """Classify what the agent raised, and log it (runs in the ``except`` clause)."""
        if _contains(exc, KeyboardInterrupt):
            self._interrupt = exc
            return Outcome(error="KeyboardInterrupt")
        errors = _without_cancelled(exc)
        if errors is None:
            # Only a stop cancels the agent from outside; a Cancelled without one is an
            # agent that raised a cancellation of its own making.
            return Outcome(error=_describe(exc))
        outcome = _exit_outcome(errors)
        if _lone_exit(errors) is not None:
            return outcome  # not a crash: no traceback to show
        if self._ctx._stop_requested_at is not None:
            self._ctx.log.warning("raised while stopping: %s", outcome.error, exc_info=errors)
        else:
            self._ctx.log.error("crashed: %s", outcome.error, exc_info=errors)
        return outcome


def _contains(exc: BaseException, kind: type[BaseException]) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return exc.subgroup(kind) is not None
    return isinstance(exc, kind)


def _without_cancelled(exc: BaseException) -> BaseException | None:
    """`exc` minus its `trio.Cancelled` parts (an agent's nursery may mix both)."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(trio.Cancelled)[1]
    return None if isinstance(exc, trio.Cancelled) else exc


def _exit_outcome(exc: BaseException) -> Outcome:
    """The `Outcome` of an agent that raised `exc` (which holds no Cancelled).

    A group with one leaf counts as that leaf: with trio's strict exception groups an
    error in a nursery's child arrives wrapped, and the user raised the leaf.
    """
    exit_ = _lone_exit(exc)
    if exit_ is not None:
        if exit_.code is None or isinstance(exit_.code, int):
            return Outcome(code=exit_.code or 0)
        return Outcome(code=1, error=str(exit_.code))  # sys.exit("message"), as Python does
    leaves = _leaves(exc)
    if len(leaves) == 1:
        return Outcome(error=_describe(leaves[0]))
    listed = [_describe(leaf) for leaf in leaves[:_LISTED_LEAVES]]
    if len(leaves) > _LISTED_LEAVES:
        listed.append(f"and {len(leaves) - _LISTED_LEAVES} more")
    return Outcome(error=f"{len(leaves)} exceptions: " + "; ".join(listed))


def _lone_exit(exc: BaseException) -> SystemExit | None:
    """The `SystemExit` that `exc` is, alone or as the one leaf of a group."""
    leaves = _leaves(exc)
    if len(leaves) == 1 and isinstance(leaves[0], SystemExit):
        return leaves[0]
    return None


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _describe(exc: BaseException) -> str:
    """``"ValueError: boom"``, or only the type's name when the text is empty."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# --- Loading the entry ---------------------------------------------------------------


class EntryError(Exception):
    """An agent's entry cannot be loaded. The message says why, for the user.

    One of (``E`` the entry as written in the manifest, e.g. ``'pkg.mod:main'``)::

        cannot import E: ModuleNotFoundError: No module named 'pkg'
        cannot import E: SyntaxError: invalid syntax (mod.py, line 3)
        cannot import E: <any exception raised while importing, as "Type: text">
        cannot import E: module 'pkg.mod' has no attribute 'main'
        cannot import E: 'pkg.mod:obj' has no attribute 'attr'
        cannot import E: an entry looks like 'pkg.mod:func'
        E is not an async function
    """


def load_entry(spec: AgentSpec) -> AgentMain:
    """Import and return the async callable that ``spec.entry`` names.

    ``spec.root`` comes first on the import path. For an agent that is not a folder it
    is moved to the front of `sys.path` (if not already there) and kept there, as a
    script's folder is, so the agent can import more of its package while it runs; that
    is one entry per manifest folder, not per start. Its modules are imported once and
    shared by later starts, as any import is. A folder agent (``spec.path`` set) is
    imported fresh from ``spec.root`` on every call instead, and `sys.path` does not
    change (see the module's docstring).

    Accepted entries are ``async def`` functions and objects whose ``__call__`` is one
    (methods and `functools.partial` included); checking never calls the entry. A plain
    function that returns an awaitable is refused: telling would mean calling it.

    Raises:
      EntryError: the entry cannot be loaded; `__cause__` is the exception behind it.
    """
    entry = spec.entry or ""
    module_name, _, qualname = entry.partition(":")
    if not module_name or not qualname:
        raise EntryError(f"cannot import {entry!r}: an entry looks like 'pkg.mod:func'")
    try:
        if spec.path is None:
            module = _import_from_root(module_name, spec.root)
        else:
            module = _import_fresh(module_name, spec.root)
    except (Exception, SystemExit) as exc:
        raise EntryError(f"cannot import {entry!r}: {_describe(exc)}") from exc
    target = _resolve(module, qualname, entry)
    if not _is_async_callable(target):
        raise EntryError(f"{entry!r} is not an async function")
    return target


def _resolve(module: ModuleType, qualname: str, entry: str) -> object:
    target: object = module
    owner = f"module {module.__name__!r}"
    path = module.__name__ + ":"
    for attribute in qualname.split("."):
        try:
            target = getattr(target, attribute)
        except AttributeError as exc:
            message = f"cannot import {entry!r}: {owner} has no attribute {attribute!r}"
            raise EntryError(message) from exc
        path += attribute
        owner = repr(path)
        path += "."
    return target


def _is_async_callable(target: object) -> TypeGuard[AgentMain]:
    if inspect.iscoroutinefunction(target):
        return True
    # An instance whose class has ``async def __call__``; calling the class itself would
    # make an instance, not a coroutine.
    if isinstance(target, type) or not callable(target):
        return False
    return inspect.iscoroutinefunction(target.__call__)


def _import_from_root(module_name: str, root: Path) -> ModuleType:
    if sys.path[:1] != [str(root)]:
        if str(root) in sys.path:
            sys.path.remove(str(root))
        sys.path.insert(0, str(root))
    # A folder agent's module of the same name must not stand in for the root's.
    _FolderModules.forget({_top(module_name)}, folder=None)
    return importlib.import_module(module_name)


def _import_fresh(module_name: str, folder: Path) -> ModuleType:
    """Import `module_name` from `folder` anew.

    Imports are synchronous, so no other task runs while the finder is in place and
    other agents' modules are hidden.
    """
    finder = _FolderFinder(folder)
    _FolderModules.forget(finder.names, folder=finder.folder)
    top = _top(module_name)
    if top in finder.names and _is_library(sys.modules.get(top)):
        # Hiding a library's module, even for a moment, could hand the folder's to any
        # library imported meanwhile; and importing from the library would run the
        # wrong code.
        where = getattr(sys.modules[top], "__file__", None) or "the standard library"
        message = f"{top!r} is already loaded from {where}; rename the folder's {top!r}"
        raise ImportError(message)
    hidden = _hide_agent_modules(finder.names)
    sys.meta_path.insert(0, finder)
    try:
        return importlib.import_module(module_name)
    finally:
        sys.meta_path.remove(finder)
        sys.modules.update(hidden)
        _FolderModules.remember(finder)


def _hide_agent_modules(names: AbstractSet[str]) -> dict[str, ModuleType]:
    """Take out of `sys.modules`, to be put back, modules under `names` that are other
    agents' code (the manifest's folder's ``helpers.py``, say), so that for this import
    the folder's own modules of those names win. Libraries' modules stay: a folder's
    ``logging.py`` does not replace the standard library's, as in any Python program
    that has already imported it."""
    hidden: dict[str, ModuleType] = {}
    for top in names:
        if top in sys.modules and not _is_library(sys.modules[top]):
            for name in [top, *(n for n in sys.modules if n.startswith(top + "."))]:
                hidden[name] = sys.modules.pop(name)
    return hidden


def _is_library(module: ModuleType | None) -> bool:
    """Whether `module` is part of Python or of an installed package (not agent code)."""
    if module is None:
        return False
    filename = getattr(module, "__file__", None)
    return filename is None or filename.startswith(_library_folders())


@functools.cache
def _library_folders() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    folders = {paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib")}
    folders.update(site.getsitepackages(), [site.getusersitepackages()])
    return tuple(os.path.join(folder, "") for folder in folders)


def _top(module_name: str) -> str:
    return module_name.partition(".")[0]


class _FolderModules:
    """The modules in `sys.modules` that a `_FolderFinder` loaded, and their folders.

    Keyed by module name, so it holds at most one entry per name however many folders
    share it: the number of distinct module names across all agent folders.
    """

    _loaded: dict[str, tuple[str, ModuleType]] = {}

    @classmethod
    def remember(cls, finder: _FolderFinder) -> None:
        for spec in finder.specs:
            module = sys.modules.get(spec.name)
            if module is not None and module.__spec__ is spec:
                cls._loaded[spec.name] = (finder.folder, module)

    @classmethod
    def forget(cls, tops: AbstractSet[str], folder: str | None) -> None:
        """Drop from `sys.modules` what was loaded from `folder` or under any of `tops`."""
        for name, (origin, module) in list(cls._loaded.items()):
            if origin == folder or _top(name) in tops:
                del cls._loaded[name]
                if sys.modules.get(name) is module:
                    del sys.modules[name]


class _FolderFinder(importlib.abc.MetaPathFinder):
    """Finds one agent folder's own modules, for one import of its entry.

    It answers only for the names the folder provides at its top (``name.py`` or
    ``name/__init__.py``) and their submodules; every other import goes on to the
    ordinary finders. Only Python source is found.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = str(folder)
        self.names = _top_level_names(self.folder)
        self.specs: list[importlib.machinery.ModuleSpec] = []

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if _top(fullname) not in self.names:
            return None
        leaf = fullname.rpartition(".")[2]
        for directory in [self.folder] if path is None else path:
            spec = _source_spec(fullname, os.path.join(directory, leaf))
            if spec is not None:
                self.specs.append(spec)
                return spec
        return None


def _top_level_names(folder: str) -> frozenset[str]:
    names = set()
    with os.scandir(folder) as entries:
        for item in entries:
            if item.name.endswith(".py") and item.is_file():
                names.add(item.name[: -len(".py")])
            elif item.is_dir() and os.path.isfile(os.path.join(item.path, "__init__.py")):
                names.add(item.name)
    return frozenset(names)


def _source_spec(fullname: str, base: str) -> importlib.machinery.ModuleSpec | None:
    """The spec of package `base`/ or module `base`.py, packages first as Python does."""
    for filename in (os.path.join(base, "__init__.py"), base + ".py"):
        if os.path.isfile(filename):
            loader = _FreshSourceLoader(fullname, filename)
            return importlib.util.spec_from_file_location(fullname, filename, loader=loader)
    return None


class _FreshSourceLoader(importlib.machinery.SourceFileLoader):
    """Compiles from source every time, never reading or writing ``__pycache__``.

    A ``.pyc`` is trusted when its source's mtime (in whole seconds) and size match, so
    an edit that keeps the size within the same second would run the old code; and
    writing one would put files in a folder that is the user's (or read-only: a
    Kubernetes ConfigMap). Compiling an agent's few modules per start costs little.
    """

    def get_code(self, fullname: str) -> CodeType:
        path = self.get_filename(fullname)
        return self.source_to_code(self.get_data(path), path)
