"""The package is arranged by feature: one subpackage per feature, in a declared order. A module imports only from
its own package or from packages below it (lazy imports inside functions included), and no modules import each other
in a loop. ARCHITECTURE.md says what lives in each package."""

from __future__ import annotations

import ast
from pathlib import Path

from .conftest import REPO

PACKAGE = REPO / "src" / "llm_dit"

PACKAGES: list[str] = [
    "core",  # errors, progress, numerics, files, the tensor cache, mode names and limits (no torch)
    "maths",  # pure maths on rows: blend modes, composition, schedules, steering, statistics and sinks
    "models",  # loading, hooks, the text encoder, the VL extractor, DiT injection, the offline zoo
    "config",  # pydantic settings sections and profiles, the one option table
    "conditioning",  # the typed conditioning source and the image-dependence rule and measure
    "adapter",  # the trained bridge
    "generation",  # components, assembly, render, records, the Generator, one call per file-writing command
    "sweep",  # specs, plans, matched baselines, the sweep directory, the executors
    "scoring",  # image metrics, metric models, the scorer, a sweep's metrics
    "report",  # grids, rankings, composability, the sweep and eval reports and their templates
    "experiment",  # run_sweep and run_experiment: run, score, report in one call
    "eval",  # suites, methods, statistics and verdicts, run_eval
    "studio",  # the HTTP API and page
    "bench",  # measures everything above, the studio included
    "cli",  # the `llm-dit` command
]
TOP_LEVEL = {"__init__", "__main__"}


def modules() -> dict[str, Path]:
    """Every module by dotted name below `llm_dit` (`core.errors`, `__main__`), package faces left out."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] != "__init__" or len(parts) == 1:
            found[".".join(parts)] = path
    return found


def imports(name: str, path: Path) -> set[str]:
    """The package modules (dotted, below `llm_dit`) that module `name` imports anywhere in its source."""
    package = name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = [*base, *(node.module.split(".") if node.module else [])]
            elif (node.module or "").startswith("llm_dit."):
                target = node.module.split(".")[1:]
            else:
                continue
            found.add(".".join(target))
            found |= {".".join([*target, a.name]) for a in node.names}  # `from ..generation import records`
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("llm_dit.") for a in node.names if a.name.startswith("llm_dit.")}
    return found & set(modules())


def package_of(name: str) -> str:
    return name.split(".")[0] if "." in name else name


def test_every_module_lives_in_a_declared_package():
    stray = [n for n in modules() if n not in TOP_LEVEL and package_of(n) not in PACKAGES]
    assert not stray, f"modules outside the declared packages: {stray}"
    assert all((PACKAGE / p / "__init__.py").is_file() for p in PACKAGES)


def test_packages_import_only_packages_below_them():
    rank = {p: i for i, p in enumerate(PACKAGES)} | {"__main__": len(PACKAGES), "__init__": -1}
    upward = [
        f"{name} ({package_of(name)}) imports {dep} ({package_of(dep)})"
        for name, path in modules().items()
        for dep in sorted(imports(name, path))
        if rank[package_of(dep)] > rank[package_of(name)]
    ]
    assert not upward, "\n".join(upward)


def test_no_modules_import_each_other_in_a_loop():
    graph = {name: imports(name, path) - {name} for name, path in modules().items()}
    state: dict[str, str] = {}
    loops: list[str] = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                loops.append(" -> ".join([*trail[trail.index(dep) :], dep]))
            elif dep not in state:
                visit(dep, [*trail, dep])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not loops, "\n".join(loops)


def test_the_check_sees_lazy_and_relative_imports():
    # the cli imports most of the package inside its commands: the checks must count those too
    assert {"experiment.run", "sweep.spec", "config.options"} <= imports("cli.runs", PACKAGE / "cli" / "runs.py")
    assert {"generation.tasks", "cli.common"} <= imports("cli.files", PACKAGE / "cli" / "files.py")
    assert {"cli.files", "cli.runs"} <= imports("cli.app", PACKAGE / "cli" / "app.py")  # `from . import files, runs`
    assert "generation.records" in imports("generation.generate", PACKAGE / "generation" / "generate.py")


CROSS_CUTTING = {  # tests of promises that span the packages, kept at the top of tests/
    "test_api.py",  # the public API and its imports
    "test_architecture.py",  # this file
    "test_docs.py",  # every documented command
    "test_reliability.py",  # docs/reliability.md: bad input, row by row
    "test_settings_honoured.py",  # docs/validity.md §4: every setting of every command acts or is refused
    "test_validity.py",  # docs/validity.md names existing tests
}


def test_the_tests_mirror_the_packages():
    """Each package's tests live in `tests/<package>/`, so the folder tree finds them; only the cross-cutting ones
    sit at the top. Every test file's name is unique (the docs name tests by file)."""
    tests = REPO / "tests"
    folders = {p.name for p in tests.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert folders <= set(PACKAGES), folders - set(PACKAGES)
    assert {p.name for p in tests.glob("test_*.py")} == CROSS_CUTTING
    names = [p.name for p in tests.rglob("test_*.py")]
    assert len(names) == len(set(names))
