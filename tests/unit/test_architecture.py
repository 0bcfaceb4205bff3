"""The layout's rules (docs/architecture.md), checked on the source with `ast`.

- no module over 400 lines;
- no import cycle between the package's modules, counting imports inside functions
  (only ``if TYPE_CHECKING:`` imports are left out: they never run);
- the pure core (`supervisor/core/`, `supervisor/manifest/`) imports no trio, no HTTP
  library and no module of the shell;
- no ``python -c PROGRAM`` in the package: programs are files, linted and typed;
- docs/architecture.md names every module.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "supervisor"
MAX_LINES = 400
PURE = ("supervisor.core", "supervisor.manifest")
FORBIDDEN_IN_PURE = ("trio", "anyio", "httpx", "h11", "starlette", "hypercorn", "watchfiles")


def modules() -> dict[str, Path]:
    """{dotted name: file} of every module of the package."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _type_checking_only(tree: ast.Module) -> set[int]:
    """ids of the import nodes inside ``if TYPE_CHECKING:`` blocks."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for inner in node.body:
                skipped.update(id(n) for n in ast.walk(inner))
    return skipped


@cache
def imports(name: str) -> frozenset[str]:
    """Every name `name`'s module imports at run time (function-level imports included),
    resolved to modules of the package where they are ones; others as written."""
    known = modules()
    path = known[name]
    tree = ast.parse(path.read_text())
    skipped = _type_checking_only(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.add(sub if sub in known else base)
    return frozenset(out)


def internal_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: {i for i in imports(name) if i in known and i != name} for name in known}


def test_no_module_is_over_400_lines() -> None:
    long = {
        str(path.relative_to(ROOT)): n
        for path in modules().values()
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def test_no_import_cycle() -> None:
    graph = internal_graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            # A package's own submodules importing it back is how packages work: the
            # package's __init__ runs first. Only cycles through other modules count.
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt) :]
                if not _package_and_child(cycle):
                    cycles.append([*cycle, nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert cycles == []


def _package_and_child(cycle: list[str]) -> bool:
    """A cycle of a package's __init__ and its own submodules only."""
    shortest = min(cycle, key=len)
    return all(m == shortest or m.startswith(shortest + ".") for m in cycle)


def test_the_pure_core_imports_no_trio_no_http_and_no_shell_module() -> None:
    known = modules()
    bad = {}
    for name in known:
        if not name.startswith(PURE):
            continue
        wrong = sorted(
            i
            for i in imports(name)
            if i.split(".")[0] in FORBIDDEN_IN_PURE
            or (i in known and i != "supervisor" and not i.startswith(PURE))
        )
        if wrong:
            bad[name] = wrong
    assert bad == {}


def test_no_python_dash_c_program_strings() -> None:
    found = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.List | ast.Tuple):
                items = [ast.unparse(e) for e in node.elts]
                python = any("executable" in i or "python" in i.lower() for i in items)
                if python and "'-c'" in items:
                    found.append(f"{name}:{node.lineno}")
    assert found == []


def test_docs_architecture_names_every_module() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()
    missing = [
        str(path.relative_to(ROOT))
        for path in modules().values()
        if str(path.relative_to(ROOT)) not in text
    ]
    assert missing == []
