"""Sweep reports: grid layout rules, grid.png rendering, report.html content and a real headless-browser render.

Fake sweep directories are built in tmp_path from `expand` (or hand-made runs) with small solid-colour PNGs, one
colour per run, so a run's thumbnail can be found in grid.png by its colour. No models are needed.
"""

from __future__ import annotations

import colorsys
import hashlib
import html
import itertools
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest
from PIL import Image

from llm_dit.report.sweep_report import (
    best_runs,
    build_report,
    grid_layout,
    render_grid,
    write_grid,
    write_report,
)
from llm_dit.sweep.dir import SweepDir
from llm_dit.sweep.run import Run, RunResult
from llm_dit.sweep.spec import PRESETS, SweepSpec, expand

DEFAULTS = {
    "generation.steps": 8,
    "generation.seed": 0,
    "generation.strength": 1.0,
    "vl.alpha": 1.0,
    "vl.hidden_layer": -2,
    "vl.token_mode": "full",
    "vl.blend": "interpolate",
    "vl.normalize": "none",
    "vl.outlier_masking": "none",
}
THUMB = 64
IMAGE_SIZE = (40, 30)  # -> 64 x 48 thumbnails


def palette(n: int) -> list[tuple[int, int, int]]:
    """n clearly distinct saturated colours (never white, grey or the pale failure colour)."""
    return [
        tuple(round(255 * c) for c in colorsys.hsv_to_rgb(i / n, 0.9, 0.9))  # type: ignore[misc]
        for i in range(n)
    ]


def make_reference(root: Path, name: str = "ref&co.png", color: tuple[int, int, int] = (10, 10, 10)) -> Path:
    path = root / "refs" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (30, 30), color).save(path)
    return path


def spec_runs(preset: dict[str, Any] | None = None, **spec: Any) -> list[Run]:
    """Runs of a sweep spec (a preset's fields plus overrides), as `expand` makes them."""
    fields = {k: v for k, v in (preset or {}).items() if k in SweepSpec.model_fields}
    spec.setdefault("prompts", ["a red fox"])
    return expand(SweepSpec(**{**fields, **spec}))


def manual_run(
    settings: dict[str, Any], label: str, *, salt: str, image: str | None = None, prompt: str = "a red fox"
) -> Run:
    """A hand-made variant run (for layouts `expand` cannot produce, e.g. two runs with equal settings): `salt`
    gives it an id of its own, as a record written by hand would have."""
    run = Run(prompt=prompt, image=image, label=label, settings={"generation.seed": 0, **settings})
    return Run.from_record(run.as_record() | {"id": hashlib.sha256((run.id + salt).encode()).hexdigest()[:12]})


def done(runs: list[Run]) -> list[RunResult]:
    """The runs as finished, each with its image (what the grid lays out); a result stays as it is."""
    return [r if isinstance(r, RunResult) else RunResult.of(r, status="ok", output=f"images/{r.id}.png") for r in runs]


def finish(
    sweep_dir: Path,
    runs: list[Run],
    *,
    failed: dict[str, str] | None = None,
    metrics: dict[str, dict[str, float]] | None = None,
    name: str = "test-sweep",
) -> dict[str, tuple[int, int, int]]:
    """Write a finished sweep directory for `runs`: images, results.jsonl, metrics.json, sweep.json.
    Returns each run's image colour."""
    failed = failed or {}
    colors = dict(zip((r.id for r in runs), palette(len(runs)), strict=True))
    (sweep_dir / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for run in runs:
        if run.id in failed:
            result = RunResult.of(run, status="failed", error=failed[run.id])
        else:
            record = {
                "prompt": run.prompt,
                "settings": {**DEFAULTS, **run.settings},
                "conditioning": {"source": "reference" if run.kind == "variant" else "text", "caption_rows": 17},
                "timings_s": {"condition": 0.1, "denoise": 1.5},
            }
            result = RunResult.of(run, status="ok", output=f"images/{run.id}.png", record=record)
            Image.new("RGB", IMAGE_SIZE, colors[run.id]).save(sweep_dir / str(result.output))
        lines.append(json.dumps(result.as_record()))
    (sweep_dir / "results.jsonl").write_text("\n".join(lines) + "\n")
    if metrics is not None:
        (sweep_dir / "metrics.json").write_text(json.dumps(metrics))
    summary = {"name": name, "runs": len(runs), "completed": len(runs) - len(failed), "failed": len(failed)}
    summary |= {"vl_forward_passes": 1, "text_forward_passes": 1, "wall_time_s": 12.5}
    (sweep_dir / "sweep.json").write_text(json.dumps(summary))
    return colors


def only_block(runs: list[Run]):
    grid = grid_layout(done(runs))
    assert len(grid.blocks) == 1
    return grid, grid.blocks[0]


def cell_ids(block) -> list[list[str | None]]:
    return [[None if c is None else (c.run_id or "REF") for c in row] for row in block.cells]


def variants(runs: list[Run]) -> list[Run]:
    return [r for r in runs if r.kind == "variant"]


def baseline(runs: list[Run]) -> Run:
    (b,) = [r for r in runs if r.kind == "baseline"]
    return b


# ---------------------------------------------------------------------------------------------------- layout


def test_no_varying_key_is_one_row_with_reference_and_baseline(tmp_path: Path) -> None:
    runs = spec_runs(images=[str(make_reference(tmp_path))])
    grid, block = only_block(runs)
    assert grid.keys == []
    assert block.layout == "row"
    assert block.col_headers[:2] == ["reference", "baseline"]
    assert cell_ids(block) == [["REF", baseline(runs).id, variants(runs)[0].id]]
    assert block.cells[0][0].kind == "reference" and block.cells[0][0].caption == "ref&co.png"


def test_no_varying_key_keeps_run_order(tmp_path: Path) -> None:
    runs = [manual_run({"vl.alpha": 0.5}, f"take {i}", salt=str(i)) for i in range(3)]
    _, block = only_block(runs)
    assert block.layout == "row"
    assert cell_ids(block) == [[r.id for r in runs]]  # no reference, no baseline column
    assert "reference" not in block.col_headers and "baseline" not in block.col_headers


def test_one_key_is_one_row_with_a_column_per_value(tmp_path: Path) -> None:
    runs = spec_runs(PRESETS["alpha"], images=[str(make_reference(tmp_path))])
    grid, block = only_block(runs)
    assert grid.keys == ["vl.alpha"]
    assert block.layout == "columns"
    assert block.col_headers == ["reference", "baseline", *(f"alpha={a}" for a in [0.1, 0.3, 0.5, 0.7, 1.0])]
    by_alpha = {r.settings["vl.alpha"]: r.id for r in variants(runs)}
    assert cell_ids(block) == [["REF", baseline(runs).id, *(by_alpha[a] for a in [0.1, 0.3, 0.5, 0.7, 1.0])]]


def test_axis_values_keep_the_asked_order_whatever_the_run_order(tmp_path: Path) -> None:
    """Before: numbers were sorted ascending, so `--layers -2,-6,-8` read -8, -6, -2."""
    asked = spec_runs(axes={"vl.hidden_layer": [-2, -6, -8], "vl.alpha": [0.6, 0.3]})
    finish(tmp_path, list(reversed(asked)))  # results in another order (a resumed or distributed sweep)
    SweepDir(tmp_path).write_spec({}, {}, asked)
    sweep = SweepDir(tmp_path)
    block = grid_layout(sweep.runs(), sweep.plan()).blocks[0]
    assert block.row_headers == [f"hidden_layer={v}" for v in (-2, -6, -8)]
    assert block.col_headers == ["alpha=0.6", "alpha=0.3"]
    # without a plan: the order of the runs; a preset's values as listed
    assert only_block(asked)[1].row_headers == [f"hidden_layer={v}" for v in (-2, -6, -8)]
    layer = spec_runs(PRESETS["layer"])
    listed = PRESETS["layer"]["axes"]["vl.hidden_layer"]
    assert only_block(layer)[1].col_headers == [f"hidden_layer={v}" for v in listed]


def test_a_partial_sweeps_report_says_how_many_runs_were_planned(tmp_path: Path) -> None:
    """Before: the report counted only the runs in results.jsonl (`4 (3 ok, 1 failed)`), not the 8 planned."""
    runs = spec_runs(axes={"vl.alpha": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]}, baseline=False)
    SweepDir(tmp_path).write_spec({}, {}, runs)
    finish(tmp_path, runs[:4], failed={runs[3].id: "RuntimeError: out of memory"})
    write_report(tmp_path)
    assert "3 of 8 runs done; 1 failed; 4 not run" in (tmp_path / "report.html").read_text()


def test_outlier_preset_gives_five_distinct_cells_in_one_row(tmp_path: Path) -> None:
    runs = spec_runs(PRESETS["outlier"], images=[str(make_reference(tmp_path))])
    grid, block = only_block(runs)
    assert grid.keys == ["vl.outlier_masking"]
    assert len(block.cells) == 1
    row = block.cells[0][2:]
    assert [c.run_id for c in row] == [r.id for r in variants(runs)]
    assert len({c.run_id for c in row}) == 5
    assert block.col_headers[2:] == [f"outlier_masking={m}" for m in ["none", "zero", "clamp", "scale", "reference"]]


def test_two_keys_rows_by_first_columns_by_last(tmp_path: Path) -> None:
    runs = spec_runs(PRESETS["blend_comparison"])  # blend x alpha, no image -> no reference, no baseline
    grid, block = only_block(runs)
    assert grid.keys == ["vl.blend", "vl.alpha"]
    assert block.layout == "table"
    assert block.row_headers == [f"blend={b}" for b in ["interpolate", "adain", "adain_per_dim", "slerp"]]
    assert block.col_headers == ["alpha=0.3", "alpha=0.5"]
    pos = block.positions()
    for run in runs:
        r = ["interpolate", "adain", "adain_per_dim", "slerp"].index(run.settings["vl.blend"])
        c = [0.3, 0.5].index(run.settings["vl.alpha"])
        assert pos[run.id] == (r, c)


def test_three_keys_rows_are_combinations_of_all_but_the_last(tmp_path: Path) -> None:
    axes = {"vl.hidden_layer": [-2, -6], "vl.token_mode": ["full", "image_only"], "vl.alpha": [0.3, 0.6]}
    runs = spec_runs(axes=axes, images=[str(make_reference(tmp_path))])
    grid, block = only_block(runs)
    assert grid.keys == list(axes)
    assert block.layout == "table"
    assert block.row_headers == [  # each axis's values as asked
        "hidden_layer=-2\ntoken_mode=full",
        "hidden_layer=-2\ntoken_mode=image_only",
        "hidden_layer=-6\ntoken_mode=full",
        "hidden_layer=-6\ntoken_mode=image_only",
    ]
    assert block.col_headers == ["reference", "baseline", "alpha=0.3", "alpha=0.6"]
    assert len(block.cells) == 4 and all(len(row) == 4 for row in block.cells)
    # reference and baseline only in the first row; every run exactly once
    assert cell_ids(block)[0][:2] == ["REF", baseline(runs).id]
    assert all(row[:2] == [None, None] for row in cell_ids(block)[1:])
    assert sorted(c.run_id for c in grid.run_cells()) == sorted(r.id for r in runs)
    pos = block.positions()
    run = next(
        r
        for r in runs
        if r.settings.get("vl.alpha") == 0.6
        and r.settings["vl.hidden_layer"] == -2
        and r.settings["vl.token_mode"] == "image_only"
    )
    assert pos[run.id] == (1, 3)


def test_colliding_runs_fall_back_to_one_row_of_distinct_cells() -> None:
    runs = [
        manual_run({"vl.alpha": 0.3}, "preset A", salt="a"),
        manual_run({"vl.alpha": 0.3}, "preset B", salt="b"),  # same settings, a distinct run
        manual_run({"vl.alpha": 0.5}, "preset C", salt="c"),
    ]
    grid, block = only_block(runs)
    assert grid.keys == ["vl.alpha"]  # alpha varies, yet two runs would share the alpha=0.3 cell
    assert block.layout == "row"
    ids = [c.run_id for c in grid.run_cells()]
    assert sorted(ids) == sorted(r.id for r in runs) and len(set(ids)) == len(runs)
    assert cell_ids(block) == [[r.id for r in runs]]


def test_sparse_variant_list_falls_back_to_one_row() -> None:
    runs = spec_runs(PRESETS["vl_only_vs_qwen3"], images=["ref.png"])
    grid, block = only_block(runs)
    assert len(grid.keys) >= 2
    assert block.layout == "row"
    assert cell_ids(block) == [["REF", baseline(runs).id, *(r.id for r in variants(runs))]]


def test_blocks_per_prompt_image_seed_and_seed_is_not_an_axis(tmp_path: Path) -> None:
    runs = spec_runs(PRESETS["alpha"], prompts=["a fox", "a cat"], images=["r1.png", "r2.png"], seeds=[0, 7])
    grid = grid_layout(done(runs))
    assert len(grid.blocks) == 8
    assert grid.keys == ["vl.alpha"]
    assert {(b.prompt, b.image, b.seed) for b in grid.blocks} == {
        (p, i, s) for p in ["a fox", "a cat"] for i in ["r1.png", "r2.png"] for s in [0, 7]
    }
    for block in grid.blocks:
        assert block.layout == "columns" and len(block.cells) == 1 and len(block.cells[0]) == 7
        assert f"seed={block.seed}" in block.subtitle and block.title == block.prompt
    # every variant exactly once; a text-only baseline does not depend on the reference image, so the two image
    # blocks of one prompt and seed show the same baseline, the one their variants name
    ids = [c.run_id for c in grid.run_cells() if c.kind == "variant"]
    assert sorted(ids) == sorted(r.id for r in variants(runs)) and len(ids) == len(set(ids))
    shown = [c.run_id for c in grid.run_cells() if c.kind == "baseline"]
    assert len(shown) == 8 and len(set(shown)) == 4 and all(shown.count(b) == 2 for b in shown)
    by_id = {r.id: r for r in runs}
    for block in grid.blocks:
        base, *rest = [c.run_id for c in block.cells[0][1:]]
        assert all(by_id[v].baseline == base for v in rest)


def test_failed_run_cell_carries_its_error(tmp_path: Path) -> None:
    runs = spec_runs(PRESETS["alpha"])
    bad = runs[2]
    finish(tmp_path, runs, failed={bad.id: "CUDA out of memory <oops>"})
    grid, _ = only_block(SweepDir(tmp_path).runs())
    cell = next(c for c in grid.run_cells() if c.run_id == bad.id)
    assert cell.error == "CUDA out of memory <oops>" and cell.image is None
    assert all(c.error is None for c in grid.run_cells() if c.run_id != bad.id)


# ---------------------------------------------------------------------------------------------------- grid.png


def find_color(image: np.ndarray, color: tuple[int, int, int], tol: int = 3) -> tuple[int, int, int, int, int]:
    """(left, top, right, bottom, pixel count) of the pixels of `color` in an HxWx3 array."""
    mask = (np.abs(image.astype(int) - np.array(color)) <= tol).all(axis=2)
    ys, xs = np.nonzero(mask)
    assert len(xs), f"colour {color} not found in the grid"
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1, int(mask.sum())


def test_grid_png_places_each_thumbnail_as_the_layout_says(tmp_path: Path) -> None:
    axes = {"vl.hidden_layer": [-2, -6], "vl.token_mode": ["full", "image_only"], "vl.alpha": [0.3, 0.6]}
    ref = make_reference(tmp_path, color=(0, 0, 255))
    runs = spec_runs(axes=axes, images=[str(ref)])
    sweep = tmp_path / "sweep"
    colors = finish(sweep, runs)
    _, block = only_block(SweepDir(sweep).runs())
    image = render_grid(sweep, SweepDir(sweep).runs(), thumb=THUMB)
    arr = np.asarray(image.convert("RGB"))
    n_rows, n_cols = len(block.cells), len(block.col_headers)
    assert (n_rows, n_cols) == (4, 4)
    assert n_cols * THUMB <= image.width <= n_cols * THUMB + 400
    assert n_rows * THUMB <= image.height <= n_rows * (THUMB + 60) + 150
    boxes = {rid: find_color(arr, colors[rid]) for rid in colors}
    for left, top, right, bottom, count in boxes.values():  # 40x30 -> 64x48, aspect kept, drawn exactly once
        assert (right - left, bottom - top) == (THUMB, THUMB * 3 // 4)
        assert count == THUMB * THUMB * 3 // 4
    ref_box = find_color(arr, (0, 0, 255))
    assert ref_box[2] - ref_box[0] == THUMB  # reference is upscaled to thumb size too
    pos = {**block.positions(), "REF": (0, 0)}
    boxes["REF"] = ref_box
    lefts: dict[int, set[int]] = {}
    tops: dict[int, set[int]] = {}
    for rid, (r, c) in pos.items():
        lefts.setdefault(c, set()).add(boxes[rid][0])
        if rid != "REF":  # the square reference is centred differently from the 4:3 runs
            tops.setdefault(r, set()).add(boxes[rid][1])
    # same column -> same x, same row -> same y
    assert all(len(v) == 1 for v in lefts.values()) and all(len(v) == 1 for v in tops.values())
    cols_x = [next(iter(lefts[c])) for c in sorted(lefts)]
    assert all(b - a >= THUMB for a, b in itertools.pairwise(cols_x))
    rows_y = [next(iter(tops[r])) for r in sorted(tops)]
    assert all(b - a >= THUMB for a, b in itertools.pairwise(rows_y))


def test_grid_png_shows_failed_run_and_headers(tmp_path: Path) -> None:
    runs = spec_runs(PRESETS["outlier"])
    failed = variants(runs)[1]
    sweep = tmp_path / "sweep"
    colors = finish(sweep, runs, failed={failed.id: "boom"})
    image = render_grid(sweep, SweepDir(sweep).runs(), thumb=THUMB)
    arr = np.asarray(image)
    for rid, color in colors.items():
        if rid != failed.id:
            find_color(arr, color)
    with pytest.raises(AssertionError):
        find_color(arr, colors[failed.id])
    pink = find_color(arr, (253, 226, 226), tol=0)  # the failure cell's fill
    assert pink[4] > THUMB * THUMB // 2
    header_band = arr[: find_color(arr, colors[variants(runs)[0].id])[1]]
    assert (header_band < 128).all(axis=2).sum() > 200  # dark text: title and column headers above the cells


def test_write_grid_writes_png_matching_render(tmp_path: Path) -> None:
    runs = spec_runs(PRESETS["alpha"], images=[str(make_reference(tmp_path))])
    sweep = tmp_path / "sweep"
    finish(sweep, runs)
    path = write_grid(sweep)
    assert path == sweep / "grid.png"
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size == render_grid(sweep, SweepDir(sweep).runs()).size
        assert im.width >= 7 * 256  # reference + baseline + 5 alphas at the default thumb size
    assert not [p for p in sweep.iterdir() if p.name.endswith(".tmp")]


# ---------------------------------------------------------------------------------------------------- report.html

EVIL_PROMPT = "<script>alert(1)</script> & a fox"


def evil_sweep(tmp_path: Path) -> tuple[Path, list[dict[str, Any]], dict[str, Any]]:
    """An alpha sweep with a hostile prompt, an '&' in the reference file name, one failed run and metrics where
    the baseline is best at everything (so it must be excluded from "best")."""
    ref = make_reference(tmp_path, name="ref&co.png")
    runs = spec_runs(PRESETS["alpha"], prompts=[EVIL_PROMPT], images=[str(ref)])
    failed = variants(runs)[0]
    v = [r for r in variants(runs) if r is not failed]
    metrics = {
        baseline(runs).id: {"ssim_to_baseline": 1.0, "grid_artifact_score": -5.0, "color_hist_similarity": 0.99},
        v[0].id: {"ssim_to_baseline": 0.5, "grid_artifact_score": 2.0, "high_frequency_energy": 0.2},
        v[1].id: {"ssim_to_baseline": 0.9, "grid_artifact_score": 10.5, "high_frequency_energy": 0.9},
        v[2].id: {"ssim_to_baseline": 0.7, "grid_artifact_score": 0.15, "color_hist_similarity": 0.4},
        v[3].id: {"ssim_to_baseline": 0.2, "grid_artifact_score": 0.9, "color_hist_similarity": 0.6},
        failed.id: {"ssim_to_baseline": 0.95},  # stale metric of a failed run: never "best"
    }
    sweep = tmp_path / "sweep"
    finish(sweep, runs, failed={failed.id: "RuntimeError: <bad> & worse"}, metrics=metrics)
    return sweep, runs, {"failed": failed, "v": v}


def test_report_is_offline_escaped_and_complete(tmp_path: Path) -> None:
    sweep, runs, info = evil_sweep(tmp_path)
    grid_path, report_path = build_report(sweep)
    assert grid_path == sweep / "grid.png" and grid_path.is_file()
    assert report_path == sweep / "report.html"
    text = report_path.read_text()
    assert "http://" not in text and "https://" not in text
    assert "<script>alert(1)" not in text and html.escape(EVIL_PROMPT) in text
    assert "ref&co.png" not in text and "ref&amp;co.png" in text
    assert "<bad>" not in text and html.escape("RuntimeError: <bad> & worse") in text
    for run in runs:
        assert run.id in text
        assert f'id="run-{run.id}"' in text  # a <details> per run
    assert text.count("<details") == len(runs)
    assert 'src="grid.png"' in text
    for run in runs:
        if run is not info["failed"]:
            assert f'src="images/{run.id}.png"' in text  # run images by relative path
    assert "data:image/jpeg;base64," in text  # the reference, which lives outside the sweep dir, is embedded
    assert "test-sweep" in text and "wall_time_s" in text  # sweep.json summary
    # resolved settings (from record.settings) in the details
    assert "generation.steps" in text and "vl.normalize" in text


def test_report_runs_table_is_sortable_with_all_columns(tmp_path: Path) -> None:
    sweep, runs, _ = evil_sweep(tmp_path)
    text = (build_report(sweep)[1]).read_text()
    table = re.search(r'<table class="sortable" id="runs">(.*?)</table>', text, re.S)
    assert table, "no sortable runs table"
    heads = re.findall(r"<th data-key=\"([^\"]*)\"", table.group(1))
    assert heads[:7] == ["image", "label", "id", "kind", "status", "baseline", "image-free"]
    assert "alpha" in heads
    # arrows only on ranked metrics; style and content say what they measure, not that higher is better
    marks = {"ssim_to_baseline (content_kept)", "grid_artifact_score ↓", "color_hist_similarity (style_similarity)"}
    assert marks | {"high_frequency_energy"} <= set(heads)
    assert len(re.findall(r"<tr data-run=", table.group(1))) == len(runs)
    assert 'addEventListener("click"' in text and "table.sortable" in text


def test_report_best_run_per_metric_excludes_baselines_and_undirected(tmp_path: Path) -> None:
    sweep, _, info = evil_sweep(tmp_path)
    text = (build_report(sweep)[1]).read_text()
    best = dict(re.findall(r'<tr class="best" data-metric="([^"]+)" data-run="([^"]+)"', text))
    v = info["v"]
    # only the ranked kind (a defect): style and content trade off, so neither is ranked
    assert best == {"grid_artifact_score": v[2].id}  # lower is better: 0.15 (baseline -5.0 excluded)
    assert re.search(r'data-metric="high_frequency_energy">[^<]*not ranked', text)
    assert re.search(r'data-metric="ssim_to_baseline">[^<]*not ranked \(content kept: doing nothing scores best', text)
    assert re.search(r'data-metric="color_hist_similarity">[^<]*not ranked \(style', text)


EASY, HARD = "an easy fox", "a hard fox"


def planted_prompt_sweep(tmp_path: Path, failed: tuple[str, int] | None = None):
    """Two prompts x steps {8, 30} x alpha {0.3, 0.7} on one reference, each variant with its steps-matched text-only
    baseline. The easy prompt and 30 steps lower every run's grid artefacts, baselines included; the planted effect
    of the conditioning against its own baseline is the same in both prompts: alpha 0.3 at 8 steps -0.30 (the only
    setting that removes artefacts), 8/0.7 +0.20, 30/0.3 +0.10, 30/0.7 +0.02. The lowest raw value (0.12) is the easy
    prompt's 30/0.7, best only because of its prompt and its steps. `failed`: (prompt, steps) of a baseline that
    failed."""
    runs = spec_runs(
        prompts=[EASY, HARD],
        images=[str(make_reference(tmp_path))],
        axes={"generation.steps": [8, 30], "vl.alpha": [0.3, 0.7]},
    )
    level = {(EASY, 8): 0.5, (EASY, 30): 0.1, (HARD, 8): 3.0, (HARD, 30): 2.0}
    effect = {(8, 0.3): -0.30, (8, 0.7): 0.20, (30, 0.3): 0.10, (30, 0.7): 0.02}
    ids: dict[tuple[str, str, int, float | None], str] = {}
    metrics = {}
    for r in runs:
        steps, alpha = r.settings["generation.steps"], r.settings.get("vl.alpha")
        value = level[(r.prompt, steps)] + (effect[(steps, alpha)] if r.kind == "variant" else 0.0)
        metrics[r.id] = {"grid_artifact_score": value}
        ids[(r.kind, r.prompt, steps, alpha)] = r.id
    broken = {ids[("baseline", *failed, None)]: "RuntimeError: out of memory"} if failed else None
    sweep = tmp_path / "sweep"
    finish(sweep, runs, metrics=metrics, failed=broken)
    return sweep, runs, metrics, ids


def test_best_run_is_ranked_within_its_block_by_effect_against_its_own_baseline(tmp_path: Path) -> None:
    sweep, runs, metrics, ids = planted_prompt_sweep(tmp_path)
    raw_best = min((r for r in variants(runs)), key=lambda r: metrics[r.id]["grid_artifact_score"])
    # the planted trap: the lowest raw value, from a run worse than its own baseline
    assert raw_best.id == ids[("variant", EASY, 30, 0.7)]
    right = [ids[("variant", p, 8, 0.3)] for p in (EASY, HARD)]  # -0.30 against its own baseline, in each prompt
    text = write_report(sweep).read_text()
    named = re.findall(r'<tr class="best" data-metric="grid_artifact_score" data-run="([^"]+)"', text)
    assert named == right and raw_best.id not in named  # one best per block, never the raw-value trap
    best, skipped = best_runs(SweepDir(sweep).runs(), metrics)
    assert not skipped
    assert [(b.block.prompt, b.run_id, b.baseline_id, b.compared) for b in best] == [
        (p, ids[("variant", p, 8, 0.3)], ids[("baseline", p, 8, None)], 4) for p in (EASY, HARD)
    ]
    assert [b.effect for b in best] == [pytest.approx(-0.30)] * 2
    assert re.findall(r'<tr class="best" [^>]*data-baseline="([^"]+)"', text) == [b.baseline_id for b in best]
    rule = "Ranked by the best effect against its own text-only baseline (run − baseline), within the same prompt,"
    assert rule + " reference image and seed" in " ".join(text.split())
    section = text[text.index('id="best-runs"') : text.index("</table>", text.index('id="best-runs"'))]
    assert section.count(">-0.3<") == 2 and section.count("better than its baseline") == 2


def test_a_run_whose_baseline_failed_is_not_ranked_by_its_raw_value(tmp_path: Path) -> None:
    # the hard prompt's 8-step baseline failed: its two 8-step variants have no effect to rank, so the block's best
    # is the better of the 30-step ones by effect (30/0.7: +0.02), and the report says two were left out
    sweep, _, metrics, ids = planted_prompt_sweep(tmp_path, failed=(HARD, 8))
    text = " ".join(write_report(sweep).read_text().split())
    named = re.findall(r'<tr class="best" data-metric="grid_artifact_score" data-run="([^"]+)"', text)
    assert named == [ids[("variant", EASY, 8, 0.3)], ids[("variant", HARD, 30, 0.7)]]
    assert "+2 not ranked: no measured baseline" in text and "worse than its baseline" in text
    best, _ = best_runs(SweepDir(sweep).runs(), metrics)
    hard = next(b for b in best if b.block.prompt == HARD)
    assert (hard.run_id, hard.compared, hard.unpaired) == (ids[("variant", HARD, 30, 0.7)], 2, 2)
    assert hard.effect == pytest.approx(0.02)


def test_report_last_record_per_id_wins(tmp_path: Path) -> None:
    runs = spec_runs(PRESETS["alpha"])
    sweep = tmp_path / "sweep"
    finish(sweep, runs, failed={runs[0].id: "first attempt died"})
    retry = RunResult.of(runs[0], status="ok", output=f"images/{runs[0].id}.png")
    Image.new("RGB", IMAGE_SIZE, (1, 2, 3)).save(sweep / str(retry.output))
    with (sweep / "results.jsonl").open("a") as f:
        f.write(json.dumps(retry.as_record()) + "\n" + '{"id": "torn')  # and a torn last line
    loaded = SweepDir(sweep).runs()
    assert [r.id for r in loaded] == [r.id for r in runs]
    assert loaded[0].status == "ok"
    text = write_report(sweep).read_text()
    assert "first attempt died" not in text


def test_report_without_metrics_or_runs(tmp_path: Path) -> None:
    sweep = tmp_path / "empty"
    sweep.mkdir()
    grid_path, report_path = build_report(sweep)
    assert Image.open(grid_path).size[0] > 0
    text = report_path.read_text()
    assert "No finished runs yet" in text and "http" not in text


class Page(HTMLParser):
    """A parsed page: every tag with its attributes (values unescaped) and every text chunk (unescaped)."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.texts: list[str] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.texts.append(data)

    def attrs(self, name: str) -> list[str]:
        return [a[name] for _, a in self.tags if a.get(name) is not None]  # type: ignore[misc]


HOSTILE = "<script>alert('x')</script> \"q\" & 'single' </td></table><img src=x onerror=alert(1)>"
REPORT_TAGS = {  # every element the template writes
    *("html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "p", "a", "i", "b", "img", "code", "span"),
    *("div", "ul", "li", "pre", "script", "table", "thead", "tbody", "tr", "th", "td", "figure", "figcaption"),
    *("details", "summary", "svg", "line", "text", "polyline", "circle"),
}


def hostile_sweep(tmp_path: Path) -> tuple[Path, list[dict[str, Any]], str]:
    """Two measured runs and a failed one whose prompt, label, reference file name, a string setting, the error and
    the sweep name all carry HTML: a script, quotes, '&' and an element with an event handler."""
    ref = make_reference(tmp_path, name='ref"<img src=x onerror=alert(1)>&.png')
    runs = []
    for i, alpha in enumerate([0.3, 0.6, 0.9]):
        settings = {"vl.alpha": alpha, "vl.system_prompt": f"{HOSTILE} {i}"}
        runs.append(manual_run(settings, HOSTILE, salt="", image=str(ref), prompt=HOSTILE))
    metrics = {  # a style and a content metric: a trade-off plot whose point titles carry the label
        runs[0].id: {"ssim_to_baseline": 0.9, "color_hist_similarity": 0.2, "grid_artifact_score": 0.5},
        runs[1].id: {"ssim_to_baseline": 0.5, "color_hist_similarity": 0.7, "grid_artifact_score": 0.3},
    }
    sweep = tmp_path / "sweep"
    finish(sweep, runs, failed={runs[2].id: HOSTILE}, metrics=metrics, name=HOSTILE)
    return sweep, runs, ref.name


def test_report_escapes_html_in_user_text_everywhere(tmp_path: Path) -> None:
    sweep, runs, ref_name = hostile_sweep(tmp_path)
    text = build_report(sweep)[1].read_text()
    page = Page(text)
    # no element, script or event handler from user text: only the template's own elements and its one script
    assert text.count("<script") == 1 and [t for t, _ in page.tags].count("script") == 1
    assert {t for t, _ in page.tags} <= REPORT_TAGS
    assert not [k for _, a in page.tags for k in a if k.startswith("on")]
    assert "<img src=x" not in text
    # ... and every hostile string reads back exactly as written, in text and in attributes
    assert f"Sweep report: {HOSTILE}" in page.texts  # <title> and <h1>: the sweep name
    assert HOSTILE in page.texts  # prompt, label, error
    assert f"{HOSTILE} 1" in page.texts  # a string setting value
    assert ref_name in page.texts and ref_name in page.attrs("alt")  # reference figure caption and alt text
    assert page.texts.count(HOSTILE) >= 3 * len(runs)  # label in the runs table, details and elsewhere
    assert [t for t, _ in page.tags].count("circle") == 2 and "svg" in [t for t, _ in page.tags]
    assert f"{HOSTILE}: ssim_to_baseline 0.9, color_hist_similarity 0.2" in page.texts  # an SVG point title
    assert '"q"' not in text and "'single'" not in text  # quotes are escaped too (text and attribute safe)


def test_report_names_only_files_of_the_sweep_directory_or_embedded_images(tmp_path: Path) -> None:
    sweep, runs, _ = evil_sweep(tmp_path)
    text = build_report(sweep)[1].read_text()
    page = Page(text)
    ids = set(page.attrs("id"))
    urls = [v for name in ("src", "href", "srcset", "poster", "data", "action", "xlink:href") for v in page.attrs(name)]
    assert len(urls) > 3 * len(runs)
    for url in urls:
        if url.startswith("#"):
            assert url[1:] in ids, f"link to a missing anchor: {url}"
        elif url.startswith("data:"):
            assert url.startswith("data:image/jpeg;base64,")
        else:  # a relative path to a file inside the sweep directory: no scheme, no host, no way out
            parts = urlsplit(url)
            assert not parts.scheme and not parts.netloc, url
            path = (sweep / unquote(parts.path)).resolve()
            assert path.is_relative_to(sweep.resolve()) and path.is_file(), url
    assert not {"link", "iframe", "object", "embed", "base", "source"} & {t for t, _ in page.tags}
    assert "@import" not in text and "url(" not in text


# ---------------------------------------------------------------------------------------------------- browser


def chromium() -> str:
    path = "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else shutil.which("chromium")
    if not path:
        pytest.fail("headless Chromium is needed for the report browser tests: run `make browser` to install it")
    return path


def run_chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--host-resolver-rules=MAP * ~NOTFOUND",  # the browser's own background requests never leave the machine
        *args,
    ]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=90, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail(f"headless Chromium did not finish in 90 s (a blocking dialog in the page?): {' '.join(cmd)}")


def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    sweep, runs, info = evil_sweep(tmp_path)
    _, report = build_report(sweep)
    shot = tmp_path / "report.png"
    proc = run_chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,2000", report.as_uri())
    assert shot.is_file(), f"no screenshot; chromium said: {proc.stderr[-2000:]}"
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float64)
    assert pixels.shape[:2] == (2000, 1280)
    assert pixels.std() > 20, "the screenshot is (nearly) blank"
    # run thumbnails and the grid are loaded from relative paths: their colours are on screen
    for run, color in zip(runs, palette(len(runs)), strict=True):
        on_screen = int((np.abs(pixels - np.array(color)) <= 3).all(axis=2).sum())
        if run is info["failed"]:
            assert on_screen == 0  # a failed run has no image
        else:
            assert on_screen > 200, f"the image of run {run.label} did not load in the browser"


@pytest.mark.parametrize("clicks", [1, 2])
def test_report_table_sorts_numerically_in_headless_chromium(tmp_path: Path, clicks: int) -> None:
    sweep, _, info = evil_sweep(tmp_path)
    _, report = build_report(sweep)
    th = "document.querySelector('#runs th[data-key=\"grid_artifact_score ↓\"]')"
    probe = report.with_name("probe.html")
    probe.write_text(report.read_text().replace("</body>", f"<script>{f'{th}.click();' * clicks}</script></body>"))
    proc = run_chromium(tmp_path, "--dump-dom", probe.as_uri())
    tbody = re.search(r'<table class="sortable" id="runs">.*?<tbody>(.*?)</tbody>', proc.stdout, re.S)
    assert tbody, f"no runs table in the DOM; chromium said: {proc.stderr[-2000:]}"
    order = re.findall(r'<tr data-run="([0-9a-f]+)"', tbody.group(1))
    v = info["v"]
    base = next(r for r in SweepDir(sweep).runs() if r.kind == "baseline").id
    # numeric ascending: -5.0 (baseline), 0.15, 0.9, 2.0, 10.5 (as text, even with numeric collation, "10.5" < "2.0"
    # and "0.9" < "0.15"); a second click reverses; the failed run (no value) sorts last either way
    ascending = [base, v[2].id, v[3].id, v[0].id, v[1].id]
    assert order == (ascending if clicks == 1 else ascending[::-1]) + [info["failed"].id]
    assert re.search(r'aria-sort="(\w+)"', proc.stdout).group(1) == ("ascending" if clicks == 1 else "descending")


def page_requests(netlog: Path) -> list[str]:
    """The http(s) URLs a page asked for, from a Chromium net log (the browser's own background requests, e.g.
    component updates, have no initiating origin and are left out)."""
    log = json.loads(netlog.read_text())
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    return [
        e["params"]["url"]
        for e in log["events"]
        if e["type"] == start
        and str(e.get("params", {}).get("url", "")).startswith(("http:", "https:"))
        and e["params"].get("initiator") != "not an origin"
    ]


def test_report_requests_nothing_over_the_network_in_headless_chromium(tmp_path: Path) -> None:
    sweep, _, _ = evil_sweep(tmp_path)
    _, report = build_report(sweep)
    remote = ["http://127.0.0.1:9/probe.png", "https://example.invalid/probe.css"]
    probe = report.with_name("probe.html")  # the control: the same page plus two remote resources
    extra = f'<img src="{remote[0]}"><link rel="stylesheet" href="{remote[1]}">'
    probe.write_text(report.read_text().replace("</body>", extra + "</body>"))
    requested = {}
    for page in (report, probe):
        netlog = tmp_path / f"{page.stem}.netlog.json"
        proc = run_chromium(tmp_path, f"--log-net-log={netlog}", "--dump-dom", page.as_uri())
        assert '<table class="sortable" id="runs">' in proc.stdout, f"page not rendered: {proc.stderr[-2000:]}"
        requested[page.stem] = page_requests(netlog)
    assert sorted(set(requested["probe"])) == sorted(remote)  # the net log shows what a page asks for ...
    assert requested["report"] == []  # ... and the report asks for nothing


def test_report_runs_table_fits_1400_px_in_headless_chromium(tmp_path: Path) -> None:
    """Before: at 1400 px the runs table ran past the window's right edge and its last column was cut."""
    sweep, _, _ = evil_sweep(tmp_path)
    _, report = build_report(sweep)
    probe = report.with_name("probe.html")
    measure = (
        "const t = document.querySelector('#runs'); const ths = t.querySelectorAll('thead th');"
        "document.body.setAttribute('data-probe', JSON.stringify({right: t.getBoundingClientRect().right,"
        " last: ths[ths.length - 1].getBoundingClientRect().right, view: document.documentElement.clientWidth,"
        " page: document.documentElement.scrollWidth}));"
    )
    probe.write_text(report.read_text().replace("</body>", f"<script>{measure}</script></body>"))
    proc = run_chromium(tmp_path, "--window-size=1400,1000", "--dump-dom", probe.as_uri())
    found = re.search(r'data-probe="([^"]+)"', proc.stdout)
    assert found, f"no measurement; chromium said: {proc.stderr[-2000:]}"
    m = json.loads(found.group(1).replace("&quot;", '"'))
    assert m["view"] > 1300, m  # the window really is ~1400 px wide
    assert m["last"] <= m["view"] and m["right"] <= m["view"] and m["page"] <= m["view"], m
