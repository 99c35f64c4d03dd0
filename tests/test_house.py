"""The package's layout: each floor imports only from the floors below it, no import circle,
no module too long to read in one sitting, every shell command in a ``commands.py``."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "sae_vlm_plugin"
FLOORS: dict[str, int] = {
    **dict.fromkeys(
        [
            "_compat",
            "_import_hooks",
            "_lazy",
            "_version",
            "command_line",
            "commands",
            "devices",
            "distributed",
            "environment",
            "hooks",
            "images",
            "json_files",
            "ownership",
            "threads",
            "tokens",
        ],
        0,
    ),
    "tiny": 1,
    "families": 2,
    "model": 3,
    "activations": 4,
    "cache": 5,
    "pretrained": 6,
    "metrics": 7,
    "training": 8,
    "naming": 9,
    "steering": 9,
    "dashboard": 10,
    "toy": 11,
    "demo": 12,
    "cli": 13,
}
"""Each top-level module or subpackage of ``sae_vlm_plugin`` and its floor (the root package,
which nothing inside may import, is above them all)."""
MAX_LINES = 600


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def _imported(name: str, path: Path, modules: dict[str, Path]) -> Iterator[str]:
    """The package's modules that ``name`` imports, at the top or inside a function."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1]
            target = ".".join([*base, node.module or ""]) if node.level else node.module or ""
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                if candidate in modules:
                    yield candidate
                elif target in modules:
                    yield target
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names if alias.name in modules)


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "<root>"


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: set(_imported(name, path, modules)) for name, path in modules.items()}


def test_every_top_level_module_has_a_floor():
    units = {_unit(name) for name in _modules()} - {"<root>"}
    assert units == set(FLOORS), "give each new module or package a floor in FLOORS"


def test_no_import_climbs_to_a_higher_floor_or_the_root():
    upward = [
        f"{importer} -> {imported}"
        for importer, targets in _graph().items()
        for imported in targets
        if _unit(importer) not in (_unit(imported), "<root>")
        and (_unit(imported) == "<root>" or FLOORS[_unit(imported)] > FLOORS[_unit(importer)])
    ]
    assert upward == []


def test_no_import_circle():
    graph, state, circles = _graph(), {}, []

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                circles.append(" -> ".join([*path[path.index(target) :], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert circles == []


def test_no_module_is_longer_than_one_sitting():
    long = {
        str(path.relative_to(PACKAGE)): n
        for path in PACKAGE.rglob("*.py")
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert long == {}


@pytest.mark.parametrize("call", ["add_parser", "add_subparsers"])
def test_shell_commands_live_in_commands_modules(call):
    """Only a package's ``commands.py`` (and the entry point, which makes the parser) builds
    subcommands; ``add_command`` in ``command_line.py`` is the one shared way to add one."""
    builders = {
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if f".{call}(" in path.read_text(encoding="utf-8")
    }
    allowed = {"cli.py", "command_line.py"}
    assert {b for b in builders if Path(b).name != "commands.py"} <= allowed


@pytest.fixture(scope="module", params=["first", "second"])
def shared_fixture(request) -> str:
    return request.param


def test_tests_that_share_a_module_fixture_share_a_worker(shared_fixture, request):
    """``conftest.py`` puts the tests of a file that use one module-scoped fixture (one
    parameter of it) in one ``xdist_group``, so that the fixture is built once; pytest-xdist's
    scheduler reads the group from the node id's ``@`` suffix, which pytest 9.2 no longer keeps
    (then every test runs alone, and the real-size encoders are built once per test)."""
    if not hasattr(request.config, "workerinput"):
        pytest.skip("runs on a pytest-xdist worker (the default `pytest`; not `-n 0`)")
    group = request.node.get_closest_marker("xdist_group").args[0]
    assert group.endswith(f",shared_fixture={shared_fixture}")
    assert request.node.nodeid.endswith(f"@{group}"), (
        f"pytest-xdist dropped the group from {request.node.nodeid}"
    )
