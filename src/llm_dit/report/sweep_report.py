"""Sweep reports: a contact-sheet `grid.png` and a self-contained, offline `report.html` for a sweep directory.

A sweep directory (`sweepdir.SweepDir`, which reads it) holds the finished runs (the last record of an id wins),
their metrics (`{run_id: {metric: value}}`, optional) and the summary. From those:

* `write_grid` draws the runs as `grid.png` (`grid.grid_layout` arranges them, `grid.render_grid` draws).
* `write_report` writes `report.html`: the summary, the grid, a sortable table of runs with their varying settings
  and metrics, the best run per ranked metric and block by its effect against its own baseline and the
  style-against-content trade-offs (`ranking.py`), and every run's resolved settings and conditioning record.

The page is rendered from the jinja2 template `templates/report.html.j2` with autoescape on: this module prepares
plain data (strings, numbers, lists, dicts) and the template writes all markup, so all user text (prompts, labels,
file names, errors, setting values) is HTML-escaped. `templates/report.css` and `report.js` are inlined, so the
page is one file that loads no http(s) resource: run images are referenced by their path relative to the sweep
directory (`images/<id>.png`, and `grid.png`), so the report stays small and works wherever the directory is copied
as a whole; reference images live outside the sweep directory, so they are embedded as small JPEG `data:`
thumbnails.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
from markupsafe import Markup

from ..core.files import atomic_write_bytes, atomic_write_text, image_bytes
from ..scoring.image_metrics import MetricInfo
from ..sweep.dir import SweepDir
from ..sweep.run import RunResult, baseline_pairs, varying_keys
from ..sweep.spec import reference_paths
from .composability import composability, diagonal_plot
from .grid import (
    IMAGE_FREE_BADGE,
    SEED_KEY,
    Block,
    Cell,
    Grid,
    fmt_value,
    grid_layout,
    image_free,
    is_number,
    reference_caption,
    render_grid,
    resolve_image,
    run_seed,
    short_keys,
    thumbnail,
    value_key,
)
from .ranking import METRICS, RANKING_RULE, Best, TradeOff, best_runs, metric_names, tradeoffs

__all__ = [  # Cell, Block, Grid, grid_layout, render_grid (grid.py) and the rankings (ranking.py) are re-exported
    "METRICS",
    "Block",
    "Cell",
    "Grid",
    "TradeOff",
    "best_runs",
    "build_report",
    "grid_layout",
    "render_grid",
    "render_report",
    "tradeoffs",
    "write_grid",
    "write_report",
]

# ------------------------------------------------------------------------------------------------ writing


def write_grid(sweep_dir: str | os.PathLike[str], thumb: int = 256) -> Path:
    """Render the sweep's runs and write `grid.png` in the sweep directory atomically."""
    sweep = SweepDir(sweep_dir)
    image = render_grid(sweep.path, sweep.runs(), thumb=thumb, planned=sweep.plan())
    return atomic_write_bytes(sweep.grid, image_bytes(image))


def write_report(sweep_dir: str | os.PathLike[str]) -> Path:
    """Write `report.html` in the sweep directory atomically (it references `grid.png`; see `build_report`)."""
    sweep = SweepDir(sweep_dir)
    return atomic_write_text(sweep.report, render_report(sweep))


def build_report(sweep_dir: str | os.PathLike[str], thumb: int = 256) -> tuple[Path, Path]:
    """Write `grid.png` then `report.html` for a sweep directory; returns both paths."""
    return write_grid(sweep_dir, thumb=thumb), write_report(sweep_dir)


# ------------------------------------------------------------------------------------------------ HTML

_LOADER = jinja2.PackageLoader(
    "llm_dit.report", "templates"
)  # package data: works from a wheel as from the source tree
_TEMPLATES = jinja2.Environment(
    loader=_LOADER,
    autoescape=True,  # every value the template prints is escaped; only `asset` output is trusted markup
    undefined=jinja2.StrictUndefined,  # a misspelt field fails the render instead of printing nothing
    trim_blocks=True,
    lstrip_blocks=True,
)


def _asset(name: str) -> Markup:
    """A file of the package's templates folder (report.css, report.js) as trusted text, to inline it in the page:
    it is not a template (braces stay as written) and not escaped (it is ours, not user data)."""
    source, _, _ = _LOADER.get_source(_TEMPLATES, name)
    return Markup(source)


_TEMPLATES.globals["asset"] = _asset


def render_template(template: str, **data: Any) -> str:
    """Render the package template `template` (autoescape on, `asset` inlines report.css/report.js): one template per
    report kind (a sweep's `report.html.j2`, an eval's `eval_report.html.j2`), one shared stylesheet."""
    return _TEMPLATES.get_template(template).render(**data)


def progress(runs: list[RunResult], planned: int) -> str:
    """How far a sweep got: `3 of 8 runs done; 1 failed; 4 not run` (runs planned: `planned`, else the runs with
    a result)."""
    done = sum(r.ok for r in runs)
    failed = len(runs) - done
    total = max(planned, len(runs))
    missing = f"; {total - len(runs)} not run" if total > len(runs) else ""
    return f"{done} of {total} runs done; {failed} failed{missing}"


def render_report(sweep_dir: str | os.PathLike[str]) -> str:
    """The report HTML of a sweep directory (see the module docstring); `write_report` writes it."""
    sweep = SweepDir(sweep_dir)
    sweep_dir = sweep.path
    runs, metrics, summary = sweep.runs(), sweep.metrics(), sweep.summary()
    best, skipped = best_runs(runs, metrics)
    by_id = {r.id: r for r in runs}
    pairs = baseline_pairs(runs)
    return render_template(
        "report.html.j2",
        name=str(summary.get("name") or sweep_dir.name),
        summary=[(str(k), fmt_value(v)) for k, v in summary.items()],
        progress=progress(runs, len(sweep.plan())),
        references=_references(sweep_dir, runs),
        has_grid=sweep.grid.is_file(),
        best=[_best_row(b, by_id) for b in best],
        ranking_rule=RANKING_RULE,
        skipped=list(skipped.items()),
        tradeoffs=[_tradeoff(t, by_id) for t in tradeoffs(runs, metrics)],
        composition=_composition(composability(sweep_dir, runs, metrics, pairs)),
        table=_table(sweep_dir, runs, metrics, pairs) if runs else None,
        details=[_details(run, metrics, pairs) for run in runs],
        badge=IMAGE_FREE_BADGE,
    )


def _composition(entries: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The composability section (`composability.composability`): a row per combination, a plot per space
    (conditioning, image) and the metrics compared; None when the sweep has no combination with its singles."""
    if not entries:
        return None

    def measured(m: dict[str, float] | None) -> dict[str, str] | None:
        return None if m is None else {k: _fmt_metric(m[k]) for k in ("residual", "cosine", "effect", "sum_of_effects")}

    plots = {}
    for space in ("conditioning", "image"):
        points = [
            (e[space]["sum_of_effects"], e[space]["projection"], f"{e['caption']} · {e['settings']}")
            for e in entries
            if e[space] is not None
        ]
        plots[space] = diagonal_plot(points)
    rows = [
        {
            "run": _run(e["run"]),
            "caption": e["caption"],
            "settings": e["settings"],
            "conditioning": measured(e["conditioning"]),
            "image": measured(e["image"]),
        }
        for e in entries
    ]
    metric_rows = [
        {
            "run": _run(e["run"]),
            "metric": name,
            "value": _fmt_metric(v),
            "sum": _fmt_metric(s),
            "diff": _fmt_metric(v - s),
        }
        for e in entries
        for name, v, s in e["metrics"]
    ]
    return {"rows": rows, "plots": plots, "metrics": metric_rows}


def _fmt_metric(v: Any) -> str:
    if not is_number(v):
        return "" if v is None else str(v)
    return f"{v:.4g}" if math.isfinite(v) else str(v)


def data_uri(path: Path | None, side: int = 160) -> str | None:
    """A small JPEG thumbnail of `path` as a data: URI (for images outside the sweep directory)."""
    im = thumbnail(path, side)
    if im is None:
        return None
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _references(sweep_dir: Path, runs: list[RunResult]) -> list[dict[str, Any]]:
    """Each distinct reference image once: its file name and a data: URI thumbnail (None if unreadable)."""
    paths = dict.fromkeys(p for r in runs for p in reference_paths(r.image))
    return [{"name": Path(p).name, "uri": data_uri(resolve_image(sweep_dir, p))} for p in paths]


def _run(run: RunResult) -> dict[str, str]:
    """What a link to a run shows: its id and its label (the id when it has none)."""
    return {"id": run.id, "label": fmt_value(run.label or run.id)}


def _best_row(best: Best, by_id: dict[str, RunResult]) -> dict[str, Any]:
    """One row of the best-run table: the metric, its block, the run, its effect against its own baseline (signed,
    and whether that is better or worse than the baseline), its value, the baseline's value and how many runs of the
    block were compared."""
    info = METRICS[best.metric]
    sign = 1.0 if info.higher_is_better else -1.0
    gain = sign * best.effect
    return {
        "metric": best.metric,
        "measures": info.measures,
        "direction": "higher" if info.higher_is_better else "lower",
        "block": best.block.title,
        "where": best.block.subtitle,
        "run": _run(by_id[best.run_id]),
        "effect": f"{best.effect:+.4g}" if best.effect else "0",
        "against": "better than" if gain > 0 else "worse than" if gain < 0 else "equal to",
        "value": _fmt_metric(best.value),
        "baseline": best.baseline_id,
        "baseline_value": _fmt_metric(best.baseline_value),
        "compared": best.compared,
        "unpaired": best.unpaired,
    }


def _tradeoff(t: TradeOff, by_id: dict[str, RunResult]) -> dict[str, Any]:
    """One trade-off as the template shows it: a scatter (`_scatter`) and its table, most content first."""
    return {
        "style": t.style,
        "content": t.content,
        "title": t.block.title,
        "subtitle": t.block.subtitle,
        "plot": _scatter(t, by_id),
        "rows": [
            {"run": _run(by_id[rid]), "content": _fmt_metric(c), "style": _fmt_metric(s), "optimal": optimal}
            for rid, c, s, optimal in sorted(t.points, key=lambda p: -p[1])
        ],
    }


def _scatter(t: TradeOff, by_id: dict[str, RunResult], w: int = 360, h: int = 240, m: int = 36) -> dict[str, Any]:
    """Pixel positions of a trade-off's points in a `w` x `h` plot with margin `m` (the template draws the SVG):
    content on x, style on y (up), each axis scaled linearly from its minimum to its maximum, a single value in the
    middle; `front` is the Pareto-optimal points joined left to right."""
    xs, ys = [p[1] for p in t.points], [p[2] for p in t.points]

    def scale(v: float, lo: float, hi: float, a: float, b: float) -> float:
        return (a + b) / 2 if hi == lo else a + (v - lo) / (hi - lo) * (b - a)

    def xy(c: float, s: float) -> tuple[float, float]:
        return scale(c, min(xs), max(xs), m, w - m / 2), scale(s, min(ys), max(ys), h - m, m / 2)

    points = []
    for rid, c, s, optimal in t.points:
        label = fmt_value(by_id[rid].label or rid)
        title = f"{label}: {t.content} {_fmt_metric(c)}, {t.style} {_fmt_metric(s)}"
        x, y = xy(c, s)
        points.append({"x": x, "y": y, "optimal": optimal, "title": title})
    front = sorted((xy(c, s) for _, c, s, opt in t.points if opt), key=lambda p: p[0])
    return {"w": w, "h": h, "m": m, "front": front, "points": points}


def _table_columns(runs: list[RunResult]) -> list[tuple[str, str]]:
    """(header, what) for the group columns that vary across runs (prompt, image) and the varying settings."""
    cols: list[tuple[str, str]] = []
    for field_name in ("prompt", "image", "reference_weights"):
        if len({value_key(getattr(r, field_name)) for r in runs}) > 1:
            cols.append((field_name, "field:" + field_name))
    keys = varying_keys(runs)
    if len({value_key(run_seed(r)) for r in runs}) > 1 and SEED_KEY not in keys:
        keys.append(SEED_KEY)
    names = short_keys(keys)
    cols += [(names[k], "setting:" + k) for k in keys]
    return cols


def _table(
    sweep_dir: Path, runs: list[RunResult], metrics: dict[str, dict[str, float]], pairs: dict[str, str | None]
) -> dict[str, Any]:
    """The sortable runs table: header names, then per run its image, label, id, kind, status, baseline,
    image dependence and one cell per varying column and metric. A cell's `v` is the sort key the script reads
    (`data-v`): the number itself for numbers, "" for a metric with no finite value (sorts last)."""
    cols = _table_columns(runs)
    names = metric_names(runs, metrics)
    heads = ["image", "label", "id", "kind", "status", "baseline", "image-free", *(h for h, _ in cols)]
    heads += [m + _metric_mark(METRICS.get(m)) for m in names]
    rows = []
    for run in runs:
        rid, output = run.id, run.output
        shown = run.ok and output and (sweep_dir / output).is_file()
        cells = []
        for _, what in cols:
            kind, _, key = what.partition(":")
            if kind == "field":
                value = getattr(run, key)
                text = reference_caption(run) if key == "image" and value else fmt_value(value or "")
            else:
                value = run_seed(run) if key == SEED_KEY else run.settings.get(key)
                text = "" if value is None else fmt_value(value)
            number = is_number(value)
            cells.append({"text": text, "v": fmt_value(value) if number else None, "num": number})
        for m in names:
            v = metrics.get(rid, {}).get(m)
            finite = is_number(v) and math.isfinite(v)
            text = "not measured" if v is None and m in metrics.get(rid, {}) else _fmt_metric(v)
            cells.append({"text": text, "v": repr(float(v)) if finite else "", "num": finite})
        rows.append(
            {
                "run": _run(run),
                "image": quote(str(output).replace("\\", "/"), safe="/") if shown else None,
                "image_free": image_free(run),
                "kind": fmt_value(run.kind),
                "failed": not run.ok,
                "status": fmt_value(run.status),
                "error": fmt_value(run.error or ""),
                "baseline": pairs.get(rid),
                "dependence": _image_dependence(run),
                "cells": cells,
            }
        )
    return {"heads": heads, "rows": rows}


def _metric_mark(info: MetricInfo | None) -> str:
    """The header mark of a metric column: its better direction if ranked, else what it measures."""
    if info is None or info.kind == "descriptive":
        return ""
    if info.ranked:
        return " ↑" if info.higher_is_better else " ↓"
    return f" ({info.kind})"


def _image_dependence(run: RunResult) -> dict[str, Any] | None:
    """The image-free cell of a run: None if never checked, else whether it is image-free and the measured relative
    change ("" when there is none)."""
    dependence = (run.record or {}).get("image_dependence")
    if not isinstance(dependence, dict) or not dependence.get("checked"):
        return None
    change = dependence.get("relative_change")
    return {"image_free": image_free(run), "change": _fmt_metric(change) if is_number(change) else ""}


def _details(run: RunResult, metrics: dict[str, dict[str, float]], pairs: dict[str, str | None]) -> dict[str, Any]:
    """A run's folded details: where it came from, its full resolved settings (its own overrides marked) and its
    records (conditioning, image dependence, timings, metrics) as indented JSON."""
    rid, record, own = run.id, run.record or {}, run.settings
    facts = [
        ("prompt", run.prompt),
        ("reference image", run.image),
        ("reference weights", run.reference_weights),
        ("neutral image", run.neutral_image),
        ("negative image", run.negative_image),
        ("init image", run.init_image),
        ("compared with baseline", pairs.get(rid)),
        ("output", run.output),
    ]
    if not run.ok:
        facts.append(("error", run.error))
    records = [
        ("Conditioning", record.get("conditioning")),
        ("Image dependence", record.get("image_dependence")),
        ("Timings (s)", record.get("timings_s")),
        ("Metrics", metrics.get(rid)),
    ]
    return {
        **_run(run),
        "kind": fmt_value(run.kind),
        "status": fmt_value(run.status),
        "image_free": image_free(run),
        "facts": [(k, "" if v is None else fmt_value(v)) for k, v in facts],
        "resolved": bool(record.get("settings")),
        "settings": [(k, fmt_value(v), k in own) for k, v in (record.get("settings") or own).items()],
        "records": [(title, json.dumps(v, indent=2, default=str)) for title, v in records if v],
    }
