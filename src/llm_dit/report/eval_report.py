"""`report.html` of an eval directory: one offline page (no network; plots and images embedded as data: URIs).

* the Pareto chart of style similarity (the eval's primary style metric, CSD when computed) against prompt
  adherence (CLIP-T): one point per method with its 95% CI in both axes, the Pareto front joined, every point named;
* metric-against-alpha curves for the VL methods that differ only in `vl.alpha`, each metric with its CI band;
* per-cell image strips (reference | text | caption | methods...);
* the leaderboard, the verdicts against caption with the tolerance, the model ids and library versions;
* above them, the notes every output of an eval states (`notes`, which leaderboard.md states too): a fallback
  style metric, a suite that gets no verdicts, methods with image-free runs (badged in the strips as in a sweep's
  grid), matched baselines.

The figures are drawn from pure functions of `eval.json` (`pareto_points`, `alpha_curves`) with matplotlib's Agg
canvas (`matplotlib.figure.Figure`, no pyplot: no global backend state) as PNG. The page is the jinja2 template
`templates/eval_report.html.j2` with the sweep report's stylesheet (`report.render_template`, autoescape on).
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.files import atomic_write_text
from .grid import IMAGE_FREE_BADGE
from .sweep_report import data_uri, render_template

REPORT = "report.html"
ALPHA = "vl.alpha"
LABELLED = ("text", "caption")
"""The kinds whose points the Pareto chart always names (the baselines every verdict is against)."""


def style_label(primary: dict[str, Any]) -> str:
    """The style metric's name as every output shows it: `csd`, or e.g. `clip_i, a fallback` when
    `primary["style_fallback"]` says it is a fallback."""
    style = str(primary.get("style"))
    return f"{style}, a fallback" if primary.get("style_fallback") else style


@dataclass(frozen=True)
class ParetoPoint:
    """One method on the Pareto chart: prompt adherence (x) and style (y), each a mean with its CI, over `n` cells;
    `optimal` when no other method has at least as much of both and more of one."""

    method: str
    kind: str
    x: float
    x_low: float
    x_high: float
    y: float
    y_low: float
    y_high: float
    n: int
    optimal: bool


def pareto_points(data: dict[str, Any]) -> list[ParetoPoint]:
    """The Pareto chart's points from an eval's data (`eval.json`): each method with both primary metrics (style:
    `data["primary"]["style"]`, adherence: `data["primary"]["adherence"]`), their means and CIs over cells, in the
    eval's method order; empty when the eval has no style or no adherence metric."""
    style, adherence = data["primary"].get("style"), data["primary"].get("adherence")
    if not style or not adherence:
        return []
    raw = []
    for m in data["methods"]:
        metrics = data["stats"].get(m["name"], {}).get("metrics", {})
        s, a = metrics.get(style), metrics.get(adherence)
        if s and a:
            raw.append((m, a, s))

    def dominated(a: dict[str, Any], s: dict[str, Any]) -> bool:
        return any(
            a2["mean"] >= a["mean"] and s2["mean"] >= s["mean"] and (a2["mean"], s2["mean"]) != (a["mean"], s["mean"])
            for _, a2, s2 in raw
        )

    return [
        ParetoPoint(
            m["name"],
            m["kind"],
            a["mean"],
            a["low"],
            a["high"],
            s["mean"],
            s["low"],
            s["high"],
            min(a["n"], s["n"]),
            not dominated(a, s),
        )
        for m, a, s in raw
    ]


@dataclass(frozen=True)
class AlphaCurve:
    """One metric against `vl.alpha` over VL methods equal in every other setting (`fixed`): per alpha, the
    method, the mean and its CI."""

    metric: str
    fixed: dict[str, Any]
    alphas: list[float]
    methods: list[str]
    mean: list[float]
    low: list[float]
    high: list[float]


def alpha_curves(data: dict[str, Any]) -> list[AlphaCurve]:
    """Each metric against alpha, per group of `vl` methods that differ only in `vl.alpha` (a method without it
    has the config's alpha) and have at least two alphas; metrics every method of the group has, in name order."""
    default = (data.get("config") or {}).get("vl", {}).get("alpha")
    groups: dict[str, list[tuple[float, dict[str, Any]]]] = {}
    fixed_of: dict[str, dict[str, Any]] = {}
    for m in data["methods"]:
        if m["kind"] != "vl":
            continue
        alpha = m["settings"].get(ALPHA, default)
        if alpha is None:
            continue
        fixed = {k: v for k, v in m["settings"].items() if k != ALPHA}
        key = repr(sorted(fixed.items())) + repr(m.get("steer"))
        groups.setdefault(key, []).append((float(alpha), m))
        fixed_of[key] = fixed
    curves = []
    for key, members in groups.items():
        members.sort(key=lambda am: am[0])
        if len({a for a, _ in members}) < 2:
            continue
        stats = [data["stats"].get(m["name"], {}).get("metrics", {}) for _, m in members]
        for metric in sorted(set.intersection(*(set(s) for s in stats))):
            es = [s[metric] for s in stats]
            curves.append(
                AlphaCurve(
                    metric,
                    fixed_of[key],
                    [a for a, _ in members],
                    [m["name"] for _, m in members],
                    [e["mean"] for e in es],
                    [e["low"] for e in es],
                    [e["high"] for e in es],
                )
            )
    return curves


# ------------------------------------------------------------------------------------------------ figures


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def pareto_figure(points: Sequence[ParetoPoint], style: str, adherence: str) -> str:
    """The Pareto chart as a PNG data: URI: each point with its CI bars, the front joined left to right, every
    point named (text and caption in bold)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 5))
    ax = fig.add_subplot()
    for p in points:
        color = "#1f5fa8" if p.optimal else "#888888"
        ax.errorbar(
            p.x,
            p.y,
            xerr=[[p.x - p.x_low], [p.x_high - p.x]],
            yerr=[[p.y - p.y_low], [p.y_high - p.y]],
            fmt="o",
            color=color,
            ecolor=color,
            capsize=3,
            markerfacecolor=color if p.optimal else "white",
        )
        ax.annotate(
            p.method,
            (p.x, p.y),
            textcoords="offset points",
            xytext=(6, 6),
            fontsize=8,
            fontweight="bold" if p.kind in LABELLED else "normal",
        )
    front = sorted((p.x, p.y) for p in points if p.optimal)
    if len(front) > 1:
        ax.plot([x for x, _ in front], [y for _, y in front], "-", color="#1f5fa8", lw=1, label="Pareto front")
        ax.legend(loc="best", fontsize=8)
    ax.set_xlabel(f"prompt adherence: {adherence} (higher: closer to the prompt)")
    ax.set_ylabel(f"style similarity: {style} (higher: closer to the reference)")
    ax.grid(alpha=0.3)
    return _png(fig)


def alpha_figure(curves: Sequence[AlphaCurve]) -> str:
    """The metric-against-alpha curves of one group of VL methods as a PNG data: URI, one panel per metric."""
    from matplotlib.figure import Figure

    cols = min(3, len(curves))
    rows = math.ceil(len(curves) / cols)
    fig = Figure(figsize=(4 * cols, 3 * rows))
    for i, c in enumerate(curves):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.fill_between(c.alphas, c.low, c.high, alpha=0.25, color="#1f5fa8", lw=0)
        ax.plot(c.alphas, c.mean, "o-", color="#1f5fa8")
        ax.set_title(c.metric, fontsize=10)
        ax.set_xlabel("vl.alpha")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


# ------------------------------------------------------------------------------------------------ page


def _ci(e: dict[str, Any] | None, sign: str = "+") -> str:
    """`mean [low, high]`, signed (`sign` "+") for differences, unsigned ("") for means; "–" when not measured."""
    return "–" if not e else f"{e['mean']:{sign}.4f} [{e['low']:{sign}.4f}, {e['high']:{sign}.4f}]"


def _strips(folder: Path, data: dict[str, Any], side: int) -> list[dict[str, Any]]:
    """Per cell: its reference then each method's image (embedded thumbnails; None for a failed run)."""
    refs = {r["hash"]: r for r in data["suite"]["references"]}
    runs = {(r["method"], r["cell"]): r for r in data["runs"]}
    strips = []
    for cell in data["cells"]:
        ref = refs.get(cell["reference"], {})
        path = Path(ref["path"]) if ref.get("path") else None
        if path is not None and not path.is_absolute():
            path = folder / path
        images = [{"label": f"reference {ref.get('name', '')}".strip(), "uri": data_uri(path, side), "badge": None}]
        for m in data["methods"]:
            run = runs.get((m["name"], cell["id"]), {})
            uri = data_uri(folder / run["image"], side) if run.get("image") else None
            free = (run.get("image_dependence") or {}).get("image_free") is True
            images.append({"label": m["name"], "uri": uri, "status": run.get("status", "not run"),
                           "badge": IMAGE_FREE_BADGE if free else None})  # fmt: skip
        strips.append({"id": cell["id"], "prompt": cell["prompt"], "seed": cell["seed"], "images": images})
    return strips


def notes(data: dict[str, Any]) -> list[str]:
    """The lines every output of an eval states above its numbers (leaderboard.md, report.html): the style metric's
    fallback, a suite refused for verdicts, the methods with image-free runs, the matched baselines."""
    p, s = data["primary"], data["settings"]
    out = []
    if p.get("style_fallback"):
        out.append(f"Style metric fallback: {p['style_fallback']}.")
    if s.get("no_verdicts"):
        out.append(f"No verdicts or ranks: {s['no_verdicts']}.")
    if free := {k: v for k, v in data.get("image_free", {}).items() if v}:
        listed = ", ".join(f"{k} ({v} runs)" for k, v in free.items())
        out.append(f"No image effect (image-free runs, no rank, no verdict): {listed}.")
    matched = [
        f"{m['name']} against {' and '.join(m['baselines'].values())}"
        for m in data["methods"]
        if m.get("baselines") and set(m["baselines"].values()) - {"text", "caption"}
    ]
    if matched:
        out.append(f"Matched baselines (same settings but what is compared): {'; '.join(matched)}.")
    return out


def render_eval_report(folder: str | Path, data: dict[str, Any], thumb: int = 192) -> str:
    """The report HTML of an eval directory `folder` whose data (`eval.json`) is `data`."""

    folder = Path(folder)
    p = data["primary"]
    points = pareto_points(data)
    curves = alpha_curves(data)
    groups: dict[str, list[AlphaCurve]] = {}
    for c in curves:
        groups.setdefault(repr(sorted(c.fixed.items())), []).append(c)
    alpha_plots = [
        {
            "fixed": ", ".join(f"{k}={v}" for k, v in cs[0].fixed.items()) or "the config's other settings",
            "methods": cs[0].methods,
            "uri": alpha_figure(cs),
        }
        for cs in groups.values()
    ]
    verdicts = data["verdicts"]
    rows = [
        {
            "rank": r.get("rank", ""),
            "method": r["method"],
            "kind": r["kind"],
            "status": r["status"],
            "style_gain": _ci(r["style_gain"]),
            "adherence": _ci(r["adherence"]),
            "verdict": verdicts.get(r["method"]),
            "image_free": bool(r.get("image_free_runs")),
        }
        for r in data["leaderboard"]
    ]
    s = data["settings"]
    means = [
        {
            "method": m["name"],
            "image_free": bool(data["stats"][m["name"]].get("image_free_runs")),
            "cells": [_ci(data["stats"][m["name"]]["metrics"].get(n), "") for n in data["metrics"]["metrics"]],
        }
        for m in data["methods"]
    ]
    sweep = data["sweep"]
    return render_template(
        "eval_report.html.j2",
        name=data["suite"]["name"],
        suite=data["suite"],
        primary=p,
        style=style_label(p),
        notes=notes(data),
        badge=IMAGE_FREE_BADGE,
        settings=s,
        pareto={"uri": pareto_figure(points, style_label(p), p["adherence"]), "points": points} if points else None,
        alpha_plots=alpha_plots,
        strips=_strips(folder, data, thumb),
        rows=rows,
        verdicts=list(verdicts.items()),
        metric_names=list(data["metrics"]["metrics"]),
        metric_info=data["metrics"]["metrics"],
        means=means,
        progress=f"{sweep['completed']} of {sweep['runs']} runs done; {sweep['failed']} failed",
        models=data["models"],
        metric_models=data["metrics"].get("models", {}),
        versions=data.get("versions", {}),
    )


def write_eval_report(folder: str | Path, data: dict[str, Any]) -> Path:
    """Write `report.html` in the eval directory `folder` atomically; returns its path."""
    return atomic_write_text(Path(folder) / REPORT, render_eval_report(folder, data))
