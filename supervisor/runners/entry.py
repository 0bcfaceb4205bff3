"""Loading an in-process agent's entry: the import system of `supervisor.runners.inprocess`.

`load_entry(spec)` imports ``spec.entry`` (``"pkg.mod:func"`` or ``"pkg.mod:obj.attr"``)
with ``spec.root`` first on the import path and returns the async callable; anything that
stops it is an `EntryError` whose message a user can act on.

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

from supervisor.context import AgentContext
from supervisor.core.outcome import describe_exception, is_signal_interrupt
from supervisor.manifest import AgentSpec

AgentMain = Callable[[AgentContext], Awaitable[object]]


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
    if spec.path is None:
        known = _loaded_entry(entry, qualname, str(spec.root))
        if known is not None:
            return known
    if not module_name or not qualname:
        raise EntryError(f"cannot import {entry!r}: an entry looks like 'pkg.mod:func'")
    try:
        if spec.path is None:
            module = _import_from_root(module_name, spec.root)
        else:
            module = _import_fresh(module_name, spec.root)
    except BaseException as exc:  # KeyboardInterrupt, GeneratorExit: the agent's too
        if is_signal_interrupt(exc):
            raise
        raise EntryError(f"cannot import {entry!r}: {describe_exception(exc)}") from exc
    target = _resolve(module, qualname, entry)
    if not _is_async_callable(target):
        raise EntryError(f"{entry!r} is not an async function")
    if spec.path is None:
        _entries[entry, str(spec.root)] = (module, target)
    return target


# The entries loaded for agents that are not folder agents, by (entry, root): the module
# and the callable found in it. One is taken again, without the import system, while
# the root still leads `sys.path`, the module is still `sys.modules`' own (once a folder
# agent's modules of its name are dropped, as for an import), and the name still
# resolves to it: what importing again would give (10,000 agents of one entry
# import it once, not 10,000 times: docs/performance.md). One entry per entry and root.
_entries: dict[tuple[str, str], tuple[ModuleType, AgentMain]] = {}


def _loaded_entry(entry: str, qualname: str, root: str) -> AgentMain | None:
    known = _entries.get((entry, root))
    if known is None or sys.path[:1] != [root]:
        return None
    module, target = known
    _FolderModules.forget({_top(module.__name__)}, folder=None)  # as an import would
    if sys.modules.get(module.__name__) is not module:
        return None
    if "." in qualname:
        found: object = _resolve(module, qualname, entry)
    else:
        found = module.__dict__.get(qualname)
    return target if found is target else None


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
