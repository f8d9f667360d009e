"""The package's import graph follows the data flow: every module imports only modules below it (ARCHITECTURE.md).

`LAYERS` is the architecture as declared, bottom to top; a module may import (at module level or inside a
function) only modules of earlier layers. A new module must be placed here, so its place in the flow is a choice.
"""

from __future__ import annotations

import ast

from .conftest import REPO

PACKAGE = REPO / "src" / "llm_dit"

LAYERS: list[tuple[str, ...]] = [
    ("errors", "progress"),  # foundations
    ("numerics", "files", "hooks", "metrics"),
    ("cache", "stats", "schedule", "steer", "comparison"),  # pure maths on rows, schedules, directions, statistics
    ("blend", "models"),
    ("compose", "zoo"),  # blend modes split into extract / combine / apply; the tiny zoo (built quietly: `models`)
    ("inject", "condition", "text", "vl", "embedders", "csd"),  # conditioning maths, encoders, metric models
    ("imagedep", "adapter", "diagnostics", "config", "metriczoo", "reward"),
    ("provenance", "components", "render", "sweepdir", "scorer", "suite"),
    ("assemble", "records", "sweep"),  # assembly, records, sweep specs and plans
    ("generate", "grid", "scoring", "evalmethods"),
    ("ranking", "runner", "tasks", "composability"),
    ("report", "distributed"),
    ("experiment", "evalreport"),  # evalreport: an eval's report.html (on the sweep report's templates)
    ("evaluate",),  # llm-dit eval: a sweep of methods x cells, scored and compared
    ("options",),
    ("studio",),  # the HTTP surface: the option table's settings over the same API
    ("bench",),  # measures the studio beside the rest
    ("cli",),
    ("__main__",),
]


def package_imports(module: str) -> set[str]:
    """The package modules `module` imports, anywhere in its source (relative or absolute imports)."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("llm_dit."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("llm_dit.")}
    return found


def test_every_module_has_a_place_in_the_declared_layers():
    declared = [m for layer in LAYERS for m in layer]
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    assert len(declared) == len(set(declared)), "a module is declared twice"
    assert set(declared) == modules, (sorted(modules - set(declared)), sorted(set(declared) - modules))


def test_modules_import_only_modules_below_them():
    rank = {m: i for i, layer in enumerate(LAYERS) for m in layer}
    upward = [
        f"{m} (layer {rank[m]}) imports {dep} (layer {rank[dep]})"
        for m in rank
        for dep in sorted(package_imports(m))
        if dep in rank and rank[dep] >= rank[m]
    ]
    assert not upward, "\n".join(upward)


def test_the_layer_check_sees_lazy_imports_inside_functions():
    # cli imports most of the package inside its commands: the check must count those too
    assert {"experiment", "tasks", "options"} <= package_imports("cli")
