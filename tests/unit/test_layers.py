"""The architecture, checked: one package per layer, imports only downwards, no cycle, imports
at the top of files, one door to worker threads, every exception in errors.py.

The rule (docs/architecture.md):

    cli → mount → {read, backup, tsm} → catalog → store → cinder → base

where base is errors, config, log, threads, procfs, allocator, sample_image, prefetch and
startup_files. A module may import from its own package and from any lower layer; read,
backup and tsm do not import each other. The checks read the source with `ast`; nothing is
executed except for the exception check, which imports every module.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import pkgutil
from collections.abc import Iterable
from pathlib import Path

import bakfs
from bakfs import errors

ROOT = Path(bakfs.__file__).resolve().parent

BASE = ("errors", "config", "log", "threads", "procfs", "allocator", "sample_image", "spill",
        "devices", "prefetch", "startup_files")
LAYERS: dict[str, int] = {**dict.fromkeys(BASE, 0), "cinder": 1, "store": 2, "catalog": 3,
                          "read": 4, "backup": 4, "tsm": 4, "mount": 5, "cli": 6,
                          "__init__": 0, "__main__": 7}
THREAD_DOOR = "bakfs.threads"


@dataclasses.dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the bakfs module imported
    line: int
    in_function: bool
    commented: bool  # a `# lazy:` comment on the line or in the comment block above


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _resolve(name: str, known: dict[str, Path]) -> str:
    """The module `name` denotes: itself, or the nearest package above it (a name imported
    from a package)."""
    while name not in known and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def imports_of(name: str, path: Path, known: dict[str, Path]) -> list[Import]:
    source = path.read_text()
    lines = source.splitlines()
    tree = ast.parse(source)
    found: list[Import] = []

    def note(target: str, node: ast.stmt, in_function: bool) -> None:
        comment = [lines[node.lineno - 1]]
        above = node.lineno - 2
        while above >= 0 and lines[above].strip().startswith("#"):
            comment.append(lines[above])
            above -= 1
        commented = any("# lazy:" in text for text in comment)
        found.append(Import(name, _resolve(target, known), node.lineno, in_function,
                            commented))

    def visit(node: ast.AST, in_function: bool, type_checking: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            checking = type_checking or (isinstance(child, ast.If)
                                         and ast.unparse(child.test).endswith("TYPE_CHECKING"))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name.split(".")[0] == "bakfs":
                        note(alias.name, child, in_function and not checking)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0 \
                    and child.module.split(".")[0] == "bakfs":
                for alias in child.names:
                    submodule = f"{child.module}.{alias.name}"
                    note(submodule if submodule in known else child.module, child,
                         in_function and not checking)
            elif isinstance(child, ast.Import | ast.ImportFrom) and in_function \
                    and not checking:
                note("<library>", child, True)
            visit(child, inner, checking)

    visit(tree, False, False)
    return found


def all_imports() -> list[Import]:
    known = modules()
    return [i for name, path in known.items() for i in imports_of(name, path, known)]


def package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def wrong_way(found: Iterable[Import]) -> list[str]:
    """Imports that run against the layer rule."""
    problems = []
    for i in found:
        if i.target == "<library>" or i.target == "bakfs":
            continue
        source, target = package(i.module), package(i.target)
        if source == target or (LAYERS[source] == 0 and LAYERS[target] == 0):
            continue
        if LAYERS[source] <= LAYERS[target]:
            problems.append(f"{i.module}:{i.line} imports {i.target} ({source} may not use "
                            f"{target})")
    return problems


def cycles(found: Iterable[Import]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for i in found:
        if i.target not in ("<library>", i.module):
            graph.setdefault(i.module, set()).add(i.target)
            graph.setdefault(i.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return groups


def test_imports_run_downwards_only() -> None:
    assert wrong_way(all_imports()) == []


def test_no_import_cycle() -> None:
    assert cycles(all_imports()) == []


def test_imports_inside_functions_say_why() -> None:
    """Imports belong at the top of a file; one deferred for a measured start-up cost says
    so in a `# lazy:` comment."""
    loose = [f"{i.module}:{i.line}" for i in all_imports() if i.in_function and not i.commented]
    assert loose == []


def test_the_checks_catch_a_wrong_way_import_and_a_cycle() -> None:
    """The checker itself can fail: an upward import and a two-module cycle are reported."""
    fake = [Import("bakfs.catalog.index", "bakfs.mount.service", 3, False, False),
            Import("bakfs.mount.service", "bakfs.catalog.index", 5, False, False),
            Import("bakfs.read.engine", "bakfs.backup.sink", 7, False, False)]
    assert len(wrong_way(fake)) == 2
    assert cycles(fake) == [["bakfs.catalog.index", "bakfs.mount.service"]]


def test_worker_threads_only_through_the_threads_module() -> None:
    offenders = []
    for name, path in modules().items():
        if name == THREAD_DOOR:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            text = ast.unparse(node) if isinstance(node, ast.Attribute | ast.Name) else ""
            if text in ("trio.to_thread", "threading.Thread", "ThreadPoolExecutor",
                        "concurrent.futures"):
                offenders.append(f"{name}:{node.lineno} uses {text}")  # type: ignore[attr-defined]
    assert offenders == []


def _all_module_objects() -> list[object]:
    return [importlib.import_module(info.name)
            for info in pkgutil.walk_packages(bakfs.__path__, "bakfs.")
            if info.name != "bakfs.__main__"]


def test_every_exception_class_lives_in_errors_and_its_tree() -> None:
    outside = []
    for module in _all_module_objects():
        for name, value in vars(module).items():
            if inspect.isclass(value) and issubclass(value, BaseException) \
                    and value.__module__ == module.__name__ \
                    and module.__name__ != "bakfs.errors":  # type: ignore[attr-defined]
                outside.append(f"{module.__name__}.{name}")  # type: ignore[attr-defined]
    assert outside == []
    tree = errors.__doc__ or ""
    missing = [name for name, value in vars(errors).items()
               if inspect.isclass(value) and issubclass(value, BaseException)
               and value.__module__ == "bakfs.errors" and f" {name} " not in tree]
    assert missing == []
