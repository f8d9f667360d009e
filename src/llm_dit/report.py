"""Sweep reports: a contact-sheet `grid.png` and a self-contained, offline `report.html` for a sweep directory.

A sweep directory (see `sweep.py`) holds `results.jsonl` (one record per finished run; the last record of an id
wins), `metrics.json` (`{run_id: {metric: value}}`, optional) and `sweep.json` (the summary). From those:

* `grid_layout` arranges the runs into blocks, one per (prompt, reference image, seed); each block is a table of
  cells: the reference image, the block's text-only baseline, then the variants laid out by the sweep's varying
  settings (see `grid_layout` for the rules). A cell never holds two runs.
* `render_grid` / `write_grid` draw that layout as one PNG, `grid.png`.
* `write_report` writes `report.html`: the summary, the grid, a sortable table of runs with their varying settings
  and metrics, the best run per metric and every run's resolved settings and conditioning record.

The HTML needs no network: it loads no http(s) resource. Run images are referenced by their path relative to the
sweep directory (`images/<id>.png`, and `grid.png`), so the report stays small and works wherever the directory is
copied as a whole; reference images live outside the sweep directory, so they are embedded as small JPEG `data:`
thumbnails. All user text (prompts, labels, file names, errors, setting values) is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import io
import itertools
import json
import math
import textwrap
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from PIL import Image, ImageDraw, ImageFont

from .clip import IMAGE_REWARD_METRIC, MODEL_METRICS
from .errors import UserError
from .files import atomic_write_bytes, atomic_write_text, image_bytes, load_image
from .metrics import METRICS as IMAGE_METRICS
from .metrics import MetricInfo, pareto_optimal
from .sweep import baseline_pairs, is_conditioning, iter_jsonl, varying_keys

METRICS = {
    **IMAGE_METRICS,
    **MODEL_METRICS,
    IMAGE_REWARD_METRIC.name: IMAGE_REWARD_METRIC,
}  # every metric a sweep can hold, with range and direction

__all__ = [
    "Block",
    "Cell",
    "Grid",
    "TradeOff",
    "best_runs",
    "build_report",
    "grid_layout",
    "load_metrics",
    "load_runs",
    "render_grid",
    "render_report",
    "tradeoffs",
    "write_grid",
    "write_report",
]

SEED_KEY = "generation.seed"

# ------------------------------------------------------------------------------------------------ loading


def load_runs(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """The runs of `results.jsonl`, one per id: the last record of an id wins (the runner writes each id once;
    a hand-edited or merged file may repeat one) but keeps the position of the id's first record."""
    runs: dict[str, dict[str, Any]] = {}
    for rec in iter_jsonl(Path(sweep_dir) / "results.jsonl"):
        if isinstance(rec, dict) and "id" in rec:
            runs[str(rec["id"])] = rec
    return list(runs.values())


def load_metrics(sweep_dir: str | Path) -> dict[str, dict[str, float]]:
    """`metrics.json` as `{run_id: {metric: value}}`; `{}` when absent or unreadable (metrics are optional)."""
    path = Path(sweep_dir) / "metrics.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): dict(v) for k, v in data.items() if isinstance(v, dict)}


def _load_summary(sweep_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((sweep_dir / "sweep.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


# ------------------------------------------------------------------------------------------------ layout


@dataclass(frozen=True)
class Cell:
    """One grid cell: the reference image of a block, or one run (baseline or variant).

    `image` is the reference path as recorded, or the run's output path relative to the sweep directory (None for
    a failed run); `error` is set for failed runs, whose cell shows it instead of an image; `badge` is a warning
    drawn on the image (IMAGE_FREE_BADGE for a run whose output does not depend on its reference image)."""

    kind: str  # "reference" | "baseline" | "variant"
    caption: str
    image: str | None = None
    run_id: str | None = None
    error: str | None = None
    badge: str | None = None


@dataclass
class Block:
    """The runs of one (prompt, reference image, seed) group as a table of cells.

    `layout` says how the variants were arranged: "row" (no axis, or the fallback: one row per baseline group in
    run order), "columns" (one conditioning axis: one column per value), "rows" (only non-conditioning axes: one row
    per value combination, one variant each) or "table" (rows = combinations of the non-conditioning axes, then of
    all but the last conditioning axis; columns = values of the last). `cells[r][c]` is None where a position is
    empty; every row has `len(col_headers)` cells. `row_groups[r]` numbers the baseline group of row r: rows of one
    group share every non-conditioning setting, hence one baseline, shown in the group's first row.
    """

    prompt: str
    image: str | None
    seed: Any
    title: str
    subtitle: str
    layout: str
    col_headers: list[str]
    row_headers: list[str]
    cells: list[list[Cell | None]]
    row_groups: list[int] = field(default_factory=list)

    def positions(self) -> dict[str, tuple[int, int]]:
        """`{run_id: (row, col)}` of every run cell of the block."""
        return {
            cell.run_id: (r, c)
            for r, row in enumerate(self.cells)
            for c, cell in enumerate(row)
            if cell is not None and cell.run_id is not None
        }


@dataclass
class Grid:
    """The whole arrangement: the varying keys used as axes (non-conditioning keys first; seed and other keys that
    only vary between blocks are left out) and one `Block` per (prompt, image, seed), in first-seen order."""

    keys: list[str]
    blocks: list[Block] = field(default_factory=list)

    def run_cells(self) -> list[Cell]:
        """Every cell that shows a run (not the reference cells), block by block, row by row."""
        return [c for b in self.blocks for row in b.cells for c in row if c is not None and c.run_id is not None]


def _jkey(value: Any) -> str:
    """A hashable, type-preserving identity for a setting value (1 and 1.0 and "1" stay apart like in sweep.py)."""
    return json.dumps(value, sort_keys=True, default=str)


def fmt_value(value: Any) -> str:
    """A setting value as shown to people: strings bare, None as "unset", everything else as JSON-ish text."""
    if value is None:
        return "unset"
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float):
        return str(value)
    return json.dumps(value, default=str)


def short_keys(keys: Iterable[str]) -> dict[str, str]:
    """Header names for dotted keys: the last dotted part, or the full key when two keys share a last part."""
    keys = list(keys)
    lasts = [k.split(".")[-1] for k in keys]
    return {k: (last if lasts.count(last) == 1 else k) for k, last in zip(keys, lasts, strict=True)}


def _seed(run: dict[str, Any]) -> Any:
    settings = run.get("settings") or {}
    if SEED_KEY in settings:
        return settings[SEED_KEY]
    return ((run.get("record") or {}).get("settings") or {}).get(SEED_KEY)


def _block_key(run: dict[str, Any]) -> str:
    return _jkey([run.get("prompt"), run.get("image"), _seed(run)])


def image_free(run: dict[str, Any]) -> bool:
    """Whether the run's record says its output does not depend on its reference image (`image_dependence`)."""
    dependence = (run.get("record") or {}).get("image_dependence")
    return isinstance(dependence, dict) and dependence.get("image_free") is True


IMAGE_FREE_BADGE = "IMAGE-FREE"


def _ordered_values(values: list[Any]) -> list[Any]:
    """Distinct values of one axis: numbers ascending (unset last), anything else in first-seen order."""
    distinct: dict[str, Any] = {}
    for v in values:
        distinct.setdefault(_jkey(v), v)
    vals = list(distinct.values())
    real = [v for v in vals if v is not None]
    if real and all(isinstance(v, int | float) and not isinstance(v, bool) for v in real):
        return sorted(real) + [v for v in vals if v is None]
    return vals


def _cell(run: dict[str, Any], caption: str | None = None) -> Cell:
    failed = run.get("status") != "ok"
    error = str(run.get("error") or "failed (no error message)") if failed else None
    return Cell(
        kind=str(run.get("kind") or "variant"),
        caption=caption or str(run.get("label") or run.get("id")),
        image=None if failed else run.get("output"),
        run_id=str(run.get("id")),
        error=error,
        badge=IMAGE_FREE_BADGE if image_free(run) else None,
    )


Rows = list[list[dict[str, Any] | None]]


def _arrange(
    variants: list[dict[str, Any]],
    base_keys: list[str],
    cond_keys: list[str],
    values: dict[str, list[Any]],
    names: dict[str, str],
) -> tuple[str, list[str], list[str], Rows, list[int]]:
    """Place a block's variants: (layout, row headers, column headers, rows of runs or None, baseline group of
    each row).

    Rows are grouped by the non-conditioning keys `base_keys` first (a group shares every non-conditioning
    setting, hence one baseline), then by all but the last conditioning key; columns are the values of the last
    conditioning key. Falls back to one row per group in run order ("row") when two distinct runs would share a
    position, or when more than half of the rows would have an empty position (a sparse product, e.g. a list of
    variants)."""
    setting = [{k: (r.get("settings") or {}).get(k) for k in base_keys + cond_keys} for r in variants]
    groups = {_jkey(c): i for i, c in enumerate(_row_combos(setting, base_keys, values))}
    group_of = [groups[_jkey([s[k] for k in base_keys])] for s in setting]

    def header(keys: list[str], combo: list[Any]) -> str:
        return "\n".join(f"{names[k]}={fmt_value(v)}" for k, v in zip(keys, combo, strict=True))

    def by_group(layout: str) -> tuple[str, list[str], list[str], Rows, list[int]]:
        rows: Rows = [[run for run, g in zip(variants, group_of, strict=True) if g == i] for i in range(len(groups))]
        width = max((len(row) for row in rows), default=0)
        rows = [row + [None] * (width - len(row)) for row in rows]
        headers = [header(base_keys, json.loads(key)) for key in groups] if base_keys else [""]
        return layout, headers, ["" for _ in range(width)], rows or [[]], list(range(len(rows))) or [0]

    if not variants or not cond_keys:
        return by_group(
            "rows" if variants and base_keys and max(group_of.count(g) for g in groups.values()) == 1 else "row"
        )
    col_key, row_keys = cond_keys[-1], base_keys + cond_keys[:-1]
    cols = [v for v in values[col_key] if any(_jkey(s[col_key]) == _jkey(v) for s in setting)]
    col_index = {_jkey(v): i for i, v in enumerate(cols)}
    row_index = {_jkey(c): i for i, c in enumerate(_row_combos(setting, row_keys, values))}
    placed: dict[tuple[int, int], dict[str, Any]] = {}
    row_group: dict[int, int] = {}
    for run, s, g in zip(variants, setting, group_of, strict=True):
        pos = (row_index[_jkey([s[k] for k in row_keys])], col_index[_jkey(s[col_key])])
        if pos in placed:  # never two runs in one cell
            return by_group("row")
        placed[pos] = run
        row_group[pos[0]] = g
    n_rows, n_cols = len(row_index), len(cols)
    if row_keys:
        holey = sum(any((r, c) not in placed for c in range(n_cols)) for r in range(n_rows))
        if holey * 2 > n_rows:
            return by_group("row")
    col_headers = [f"{names[col_key]}={fmt_value(v)}" for v in cols]
    row_headers = [header(row_keys, json.loads(key)) for key in row_index]
    rows: Rows = [[placed.get((r, c)) for c in range(n_cols)] for r in range(n_rows)]
    return (
        ("table" if row_keys else "columns"),
        row_headers or [""],
        col_headers,
        rows,
        [row_group[r] for r in range(n_rows)],
    )


def _row_combos(setting: list[dict[str, Any]], row_keys: list[str], values: dict[str, list[Any]]) -> list[list[Any]]:
    """The combinations of the row keys that occur, ordered by each key's value order (first key slowest)."""
    seen: dict[str, list[Any]] = {}
    for s in setting:
        combo = [s[k] for k in row_keys]
        seen.setdefault(_jkey(combo), combo)
    rank = {k: {_jkey(v): i for i, v in enumerate(values[k])} for k in row_keys}
    return sorted(seen.values(), key=lambda c: [rank[k][_jkey(v)] for k, v in zip(row_keys, c, strict=True)])


def grid_layout(runs: list[dict[str, Any]]) -> Grid:
    """Arrange sweep runs into blocks of cells (see `Block`), so a grid shows what changed along which axis, each
    variant beside the baseline it is compared with.

    * Blocks: variants grouped by (prompt, image, seed = `settings["generation.seed"]`), in first-seen order. A
      baseline is shown in every block whose variants name it (`sweep.baseline_pairs`); a baseline no variant
      names forms or joins the block of its own (prompt, image, seed).
    * Columns of a block: the reference image (if the block has one, first row only), the baseline column (if any
      variant has a baseline), then the variants.
    * Axes: `varying_keys(runs)` minus the keys that never vary within a block (the seed, which only varies
      between blocks; such keys are named in the block subtitle instead), non-conditioning keys first
      (`sweep.is_conditioning`). The non-conditioning axes are row keys, so the rows of one baseline group are
      together and the group's first row starts with its own baseline (its caption repeats the group's values).
      Within a group, rows are combinations of all but the last conditioning axis, columns the values of the last;
      numeric values are sorted, others kept in first-seen order. No conditioning axis: one row per group.
    * Fallback to one row per group in run order when two runs would share a cell (they differ only in a way that
      is not an axis, e.g. a preset variant's label) or when the table would be sparse (more than half of its
      rows with an empty cell).
    * Failed runs are cells with their error; image-free runs carry IMAGE_FREE_BADGE; headers read `key=value`
      with the short key (last dotted part).
    """
    pairs = baseline_pairs(runs)
    by_id = {str(r.get("id")): r for r in runs}
    named = {b for b in pairs.values() if b}
    groups: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        if run.get("kind") != "baseline":
            groups.setdefault(_block_key(run), []).append(run)
        elif str(run.get("id")) not in named:  # a baseline no variant names: a block of baselines of its own
            groups.setdefault("baseline " + _block_key(run), []).append(run)

    def variants_of(group: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [r for r in group if r.get("kind") != "baseline"]

    all_keys = varying_keys([{**r, "kind": "variant"} for g in groups.values() for r in variants_of(g)])
    within = [
        k
        for k in all_keys
        if any(len({_jkey((r.get("settings") or {}).get(k)) for r in variants_of(g)}) > 1 for g in groups.values())
    ]
    base_keys = [k for k in within if not is_conditioning(k)]
    cond_keys = [k for k in within if is_conditioning(k)]
    between = [k for k in all_keys if k not in within and k != SEED_KEY]
    values = {
        k: _ordered_values([(r.get("settings") or {}).get(k) for g in groups.values() for r in variants_of(g)])
        for k in within
    }
    names = short_keys(all_keys)
    grid = Grid(keys=base_keys + cond_keys)
    for group in groups.values():
        first = group[0]
        vs = variants_of(group)
        layout, row_headers, col_headers, rows, row_groups = _arrange(vs, base_keys, cond_keys, values, names)
        lead_headers = ["reference"] if first.get("image") else []
        if any(pairs.get(str(r.get("id"))) for r in vs):
            lead_headers.append("baseline")
        if not vs:  # baselines only
            col_headers, rows = ["baseline"] * len(group), [list(group)]
        cells: list[list[Cell | None]] = []
        for r, row in enumerate(rows):
            lead: list[Cell | None] = []
            if first.get("image"):
                lead.append(
                    Cell(kind="reference", caption=Path(str(first["image"])).name, image=str(first["image"]))
                    if r == 0
                    else None
                )
            starts_group = r == 0 or row_groups[r] != row_groups[r - 1]
            if "baseline" in lead_headers:
                lead.append(_baseline_cell(row, pairs, by_id, base_keys, names) if starts_group else None)
            cells.append(lead + [None if run is None else _cell(run) for run in row])
        seed = _seed(first)
        meta = [f"image: {Path(str(first['image'])).name}" if first.get("image") else "no reference image"]
        if first.get("init_image"):
            meta.append(f"init: {Path(str(first['init_image'])).name}")
        meta.append(f"seed={fmt_value(seed)}")
        example = vs[0] if vs else first
        meta += [f"{names[k]}={fmt_value((example.get('settings') or {}).get(k))}" for k in between]
        grid.blocks.append(
            Block(
                prompt=str(first.get("prompt") or ""),
                image=first.get("image"),
                seed=seed,
                title=str(first.get("prompt") or "(no prompt)"),
                subtitle="  ·  ".join(meta),
                layout=layout,
                col_headers=lead_headers + col_headers,
                row_headers=row_headers or [""],
                cells=cells,
                row_groups=row_groups,
            )
        )
    return grid


def _baseline_cell(
    row: list[dict[str, Any] | None],
    pairs: dict[str, str | None],
    by_id: dict[str, dict[str, Any]],
    base_keys: list[str],
    names: dict[str, str],
) -> Cell | None:
    """The baseline cell of a row: the baseline its variants name, captioned with the row group's
    non-conditioning values; a named baseline without a result is a "missing" cell, never another run."""
    run = next((r for r in row if r is not None), None)
    bid = pairs.get(str(run.get("id"))) if run is not None else None
    if bid is None:
        return None
    values = [f"{names[k]}={fmt_value((run.get('settings') or {}).get(k))}" for k in base_keys]
    caption = " · ".join(["text only", *values])
    if bid not in by_id:
        return Cell(kind="baseline", caption=f"{caption} (no result yet)")
    return _cell(by_id[bid], caption)


# ------------------------------------------------------------------------------------------------ rendering

_WHITE = (255, 255, 255)
_INK = (20, 20, 20)
_MUTED = (90, 90, 90)
_FAIL_BG = (253, 226, 226)
_FAIL_INK = (170, 20, 20)
_MISSING_BG = (232, 232, 232)
_RULE = (200, 200, 200)
_GROUP_RULE = (120, 120, 120)  # between rows of different baseline groups
_BADGE_BG = (235, 110, 0)
_BADGE_INK = (255, 255, 255)


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """PIL's built-in scalable font (Pillow >= 10.1), else its fixed bitmap font."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # pragma: no cover - Pillow < 10.1
        return ImageFont.load_default()


def _text_w(font: Any, text: str) -> int:
    return math.ceil(font.getlength(text)) if text else 0


def _fit(font: Any, text: str, width: int) -> str:
    """`text` on one line, cut with "..." to fit `width` px."""
    text = " ".join(text.split())
    if _text_w(font, text) <= width:
        return text
    lo, hi = 0, len(text)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _text_w(font, text[:mid] + "...") <= width:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo].rstrip() + "..."


def _wrap(font: Any, text: str, width: int, max_lines: int) -> list[str]:
    """`text` wrapped to `width` px in at most `max_lines` lines (the last one cut with "...")."""
    avg = max(1, _text_w(font, "abcdefghijklmnopqrstuvwxyz") // 26)
    lines = textwrap.wrap(" ".join(text.split()), width=max(4, width // avg), break_long_words=True) or [""]
    lines = [_fit(font, line, width) for line in lines]
    if len(lines) > max_lines:
        lines = [*lines[: max_lines - 1], _fit(font, " ".join(lines[max_lines - 1 :]), width)]
    return lines


def _resolve_image(sweep_dir: Path, path: str) -> Path | None:
    """Where an image path from a record is: as given (absolute or relative to the working directory), else
    relative to the sweep directory."""
    for candidate in (Path(path), sweep_dir / path):
        if candidate.is_file():
            return candidate
    return None


def _thumbnail(path: Path | None, thumb: int) -> Image.Image | None:
    """The image at `path` scaled (up or down, aspect kept) so its longer side is `thumb` px; None if unreadable."""
    if path is None:
        return None
    try:
        im = load_image(path)
    except UserError:  # a broken image must not break the report; the cell says "missing" instead
        return None
    scale = thumb / max(im.width, im.height)
    size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
    return im.resize(size, Image.Resampling.LANCZOS)


@dataclass(frozen=True)
class _Metrics:
    """Pixel geometry of a rendered grid, derived from the thumbnail size."""

    thumb: int
    font_size: int
    margin: int
    pad: int
    line: int  # height of one text line
    title_h: int
    header_h: int
    caption_h: int
    block_gap: int


def _geometry(thumb: int) -> _Metrics:
    size = max(11, round(thumb * 14 / 256))
    line = size + 5
    return _Metrics(
        thumb=thumb,
        font_size=size,
        margin=max(10, size),
        pad=max(6, size // 2),
        line=line,
        title_h=2 * line + 6,
        header_h=line + 4,
        caption_h=line + 4,
        block_gap=max(14, size + 4),
    )


def _row_header_width(block: Block, font: Any, g: _Metrics) -> int:
    lines = [line for h in block.row_headers for line in h.split("\n") if line]
    if not lines:
        return 0
    return min(max(_text_w(font, line) for line in lines) + 2 * g.pad, int(g.thumb * 1.5))


def _block_size(block: Block, font: Any, g: _Metrics) -> tuple[int, int]:
    n_cols = max(len(block.col_headers), 1)
    n_rows = len(block.cells)
    width = _row_header_width(block, font, g) + n_cols * (g.thumb + g.pad)
    height = g.title_h + g.header_h + n_rows * (g.thumb + g.caption_h + g.pad)
    return width, height


def render_grid(sweep_dir: str | Path, runs: list[dict[str, Any]], thumb: int = 256) -> Image.Image:
    """Draw `grid_layout(runs)` as one RGB image: per block a title (prompt; image, seed), column headers on top,
    row headers on the left, then thumbnails (longer side `thumb`, aspect kept) with a short caption each. Failed
    runs show their error on a red cell, missing images a grey one; an image-free run carries an orange
    IMAGE-FREE badge on its image; a dark rule separates rows of different baseline groups. Text is ~14 px at
    thumb 256."""
    sweep_dir = Path(sweep_dir)
    grid = grid_layout(runs)
    g = _geometry(thumb)
    font = _font(g.font_size)
    bold = _font(g.font_size + 1)
    if not grid.blocks:
        canvas = Image.new("RGB", (thumb + 2 * g.margin, g.title_h + 2 * g.margin), _WHITE)
        ImageDraw.Draw(canvas).text((g.margin, g.margin), "no runs yet", fill=_MUTED, font=bold)
        return canvas
    sizes = [_block_size(b, font, g) for b in grid.blocks]
    width = 2 * g.margin + max(w for w, _ in sizes)
    height = 2 * g.margin + sum(h for _, h in sizes) + g.block_gap * (len(sizes) - 1)
    canvas = Image.new("RGB", (width, height), _WHITE)
    draw = ImageDraw.Draw(canvas)
    inner = width - 2 * g.margin
    y = g.margin
    for i, (block, (_, block_h)) in enumerate(zip(grid.blocks, sizes, strict=True)):
        if i:
            draw.line([(g.margin, y - g.block_gap // 2), (width - g.margin, y - g.block_gap // 2)], fill=_RULE)
        draw.text((g.margin, y), _fit(bold, block.title, inner), fill=_INK, font=bold)
        draw.text((g.margin, y + g.line), _fit(font, block.subtitle, inner), fill=_MUTED, font=font)
        y0 = y + g.title_h
        x0 = g.margin + _row_header_width(block, font, g)
        for c, header in enumerate(block.col_headers):
            draw.text((x0 + c * (g.thumb + g.pad), y0), _fit(font, header, g.thumb), fill=_INK, font=font)
        y0 += g.header_h
        for r, row in enumerate(block.cells):
            ry = y0 + r * (g.thumb + g.caption_h + g.pad)
            if 0 < r < len(block.row_groups) and block.row_groups[r] != block.row_groups[r - 1]:
                rule_y = ry - g.pad // 2 - 1  # a new baseline group starts here
                draw.line([(g.margin, rule_y), (width - g.margin, rule_y)], fill=_GROUP_RULE, width=2)
            header_lines = block.row_headers[r].split("\n") if r < len(block.row_headers) else []
            max_lines = max(1, g.thumb // g.line)
            for j, line in enumerate(header_lines[:max_lines]):
                text = _fit(font, line, x0 - g.margin - g.pad)
                draw.text((g.margin, ry + j * g.line), text, fill=_INK, font=font)
            for c, cell in enumerate(row):
                if cell is not None:
                    _draw_cell(canvas, draw, sweep_dir, cell, (x0 + c * (g.thumb + g.pad), ry), font, g)
        y += block_h + g.block_gap
    return canvas


def _draw_cell(
    canvas: Image.Image,
    draw: ImageDraw.ImageDraw,
    sweep_dir: Path,
    cell: Cell,
    xy: tuple[int, int],
    font: Any,
    g: _Metrics,
) -> None:
    """One cell at `xy`: the thumbnail (or the error / a "missing" box) in a thumb x thumb square, caption below."""
    x, y = xy
    box = (x, y, x + g.thumb - 1, y + g.thumb - 1)
    if cell.error is not None:
        draw.rectangle(box, fill=_FAIL_BG, outline=_FAIL_INK)
        draw.text((x + g.pad, y + g.pad), "FAILED", fill=_FAIL_INK, font=font)
        lines = _wrap(font, cell.error, g.thumb - 2 * g.pad, max(1, (g.thumb - 2 * g.pad) // g.line - 1))
        for j, line in enumerate(lines):
            draw.text((x + g.pad, y + g.pad + (j + 1) * g.line), line, fill=_FAIL_INK, font=font)
    else:
        im = _thumbnail(_resolve_image(sweep_dir, cell.image) if cell.image else None, g.thumb)
        if im is None:
            draw.rectangle(box, fill=_MISSING_BG)
            draw.text((x + g.pad, y + g.pad), "image missing", fill=_MUTED, font=font)
        else:
            ix, iy = x + (g.thumb - im.width) // 2, y + (g.thumb - im.height) // 2
            canvas.paste(im, (ix, iy))
            if cell.badge:  # on the image's top-left corner, so it goes wherever the image goes
                w = min(im.width, _text_w(font, cell.badge) + 2 * g.pad)
                draw.rectangle((ix, iy, ix + w - 1, iy + min(im.height, g.line + 2) - 1), fill=_BADGE_BG)
                draw.text((ix + g.pad, iy + 1), _fit(font, cell.badge, w - 2 * g.pad), fill=_BADGE_INK, font=font)
    caption = cell.caption if cell.kind == "variant" else f"{cell.kind}: {cell.caption}"
    draw.text((x, y + g.thumb + 2), _fit(font, caption, g.thumb), fill=_MUTED, font=font)


def write_grid(sweep_dir: str | Path, thumb: int = 256) -> Path:
    """Render the sweep's runs and write `grid.png` in the sweep directory atomically."""
    sweep_dir = Path(sweep_dir)
    image = render_grid(sweep_dir, load_runs(sweep_dir), thumb=thumb)
    return atomic_write_bytes(sweep_dir / "grid.png", image_bytes(image))


# ------------------------------------------------------------------------------------------------ HTML


def _rankable(run: dict[str, Any]) -> bool:
    """A run a report may rank or put on a trade-off front: a successful variant whose output depends on its
    reference (baselines are the comparison, not a candidate; an image-free run shows no effect of the image)."""
    return run.get("kind") != "baseline" and run.get("status") == "ok" and not image_free(run)


def _value(metrics: dict[str, dict[str, Any]], run: dict[str, Any], name: str) -> float | None:
    v = metrics.get(str(run.get("id")), {}).get(name)
    return float(v) if _is_number(v) and math.isfinite(v) else None


def best_runs(
    runs: list[dict[str, Any]], metrics: dict[str, dict[str, float]]
) -> tuple[dict[str, tuple[str, float]], dict[str, str]]:
    """The best run per rankable metric: `({metric: (run_id, value)}, {metric: why not ranked})`.

    Only metrics whose registry entry says `ranked` (a direction that means better whatever the conditioning
    strength: defects, quality) are ranked; style and content metrics trade off against each other (see
    `tradeoffs`), and ranking either would reward the strongest or the weakest conditioning. Candidates: successful
    variant runs that are not image-free (never baselines). Non-finite or unmeasured (None) values are ignored;
    ties go to the earlier run."""
    best: dict[str, tuple[str, float]] = {}
    skipped: dict[str, str] = {}
    for name in _metric_names(runs, metrics):
        info = METRICS.get(name)
        if info is None:
            skipped[name] = "not a registered metric; what it measures is unknown"
            continue
        if not info.ranked:
            skipped[name] = _NOT_RANKED[info.kind]
            continue
        candidates = [(str(r["id"]), v) for r in runs if _rankable(r) and (v := _value(metrics, r, name)) is not None]
        if not candidates:
            skipped[name] = "no successful, image-dependent variant run has a measured value"
            continue
        sign = 1.0 if info.higher_is_better else -1.0
        best[name] = max(candidates, key=lambda item: sign * item[1])
    return best, skipped


_NOT_RANKED = {
    "style": "style: rises with conditioning strength, shown against content as a trade-off",
    "content": "content kept: doing nothing scores best, shown against style as a trade-off",
    "descriptive": "descriptive metric with no better direction",
}


@dataclass
class TradeOff:
    """Runs of one block on a style-against-content plane: `points` are (run_id, content, style, pareto)."""

    style: str
    content: str
    block: Block
    points: list[tuple[str, float, float, bool]]


def tradeoffs(runs: list[dict[str, Any]], metrics: dict[str, dict[str, float]]) -> list[TradeOff]:
    """For every (style metric, content metric) pair present and every block with two or more rankable runs
    (`_rankable`) measured on both: the runs' (content, style) values and which are Pareto-optimal within the
    block (`metrics.pareto_optimal`: no other run keeps at least as much content with at least as much style).
    A trade-off has no winner: the front is the set of settings worth choosing between."""
    present = _metric_names(runs, metrics)
    kinds = {k: [n for n in present if n in METRICS and METRICS[n].kind == k] for k in ("style", "content")}
    by_id = {str(r.get("id")): r for r in runs}
    out: list[TradeOff] = []
    blocks = grid_layout(runs).blocks
    for style, content in itertools.product(kinds["style"], kinds["content"]):
        for block in blocks:
            ids = [c.run_id for row in block.cells for c in row if c is not None and c.kind == "variant"]
            values = [
                (rid, _value(metrics, by_id[rid], content), _value(metrics, by_id[rid], style))
                for rid in ids
                if rid in by_id and _rankable(by_id[rid])
            ]
            measured = [(rid, c, s) for rid, c, s in values if c is not None and s is not None]
            if len(measured) < 2:
                continue
            front = pareto_optimal([(c, s) for _, c, s in measured])
            points = [(rid, c, s, opt) for (rid, c, s), opt in zip(measured, front, strict=True)]
            out.append(TradeOff(style, content, block, points))
    return out


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _metric_names(runs: list[dict[str, Any]], metrics: dict[str, dict[str, float]]) -> list[str]:
    """Metrics present for at least one run: registry order first, then any others alphabetically."""
    ids = {str(r.get("id")) for r in runs}
    present = {name for rid, m in metrics.items() if rid in ids for name in m}
    return [n for n in METRICS if n in present] + sorted(present - set(METRICS))


def _e(value: Any) -> str:
    """Escape any value for HTML text or a quoted attribute."""
    return html.escape(value if isinstance(value, str) else fmt_value(value), quote=True)


def _url(path: str) -> str:
    """A relative file path as an attribute-safe URL: percent-encoded (no scheme can survive: ':' is encoded)."""
    return _e(quote(path.replace("\\", "/"), safe="/"))


def _fmt_metric(v: Any) -> str:
    if not _is_number(v):
        return "" if v is None else str(v)
    return f"{v:.4g}" if math.isfinite(v) else str(v)


def _data_uri(path: Path | None, side: int = 160) -> str | None:
    """A small JPEG thumbnail of `path` as a data: URI (for images outside the sweep directory)."""
    im = _thumbnail(path, side)
    if im is None:
        return None
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px; color: #1a1a1a;
       background: #fff; }
h1 { font-size: 22px; margin: 0 0 12px; } h2 { font-size: 18px; margin: 28px 0 8px; }
table { border-collapse: collapse; } td, th { border: 1px solid #ddd; padding: 4px 8px; vertical-align: top; }
th { background: #f3f3f3; text-align: left; }
table.sortable th { cursor: pointer; user-select: none; white-space: nowrap; }
table.sortable th[aria-sort=ascending]::after { content: " \\25B2"; }
table.sortable th[aria-sort=descending]::after { content: " \\25BC"; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
img.thumb { max-width: 96px; max-height: 96px; display: block; }
img.grid { max-width: 100%; border: 1px solid #ddd; }
.failed { color: #a61414; } .err { color: #a61414; font-size: 12px; max-width: 320px; white-space: pre-wrap; }
.muted { color: #666; } details { margin: 4px 0; } summary { cursor: pointer; }
pre { background: #f7f7f7; padding: 8px; overflow-x: auto; font-size: 12px; }
tr.override td { font-weight: 600; } .refs figure { display: inline-block; margin: 0 12px 8px 0; }
.badge { background: #eb6e00; color: #fff; font-size: 11px; font-weight: 700; padding: 1px 5px; border-radius: 3px; }
.tradeoff h3 { font-size: 15px; margin: 16px 0 4px; } svg.scatter { display: block; margin: 4px 0; }
.refs img { max-height: 120px; display: block; }
"""

# Vanilla, dependency-free table sorting: click a header; numbers (from data-v or the text) sort numerically,
# empty cells always last; a second click reverses.
_JS = """
(function () {
  function key(cell) {
    var v = cell.hasAttribute("data-v") ? cell.getAttribute("data-v") : cell.textContent;
    return v.trim();
  }
  function cmp(a, b) {
    if (a === "" || b === "") { return a === b ? 0 : (a === "" ? 1 : -1); }
    var x = Number(a), y = Number(b);
    if (!isNaN(x) && !isNaN(y)) { return x - y; }
    return a.localeCompare(b, undefined, {numeric: true});
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    var heads = table.tHead.rows[0].cells;
    Array.prototype.forEach.call(heads, function (th, col) {
      th.addEventListener("click", function () {
        var asc = th.getAttribute("aria-sort") !== "ascending";
        Array.prototype.forEach.call(heads, function (h) { h.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", asc ? "ascending" : "descending");
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (r1, r2) {
          var a = key(r1.cells[col]), b = key(r2.cells[col]);
          if (a === "" || b === "") { return cmp(a, b); }
          return asc ? cmp(a, b) : cmp(b, a);
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  });
})();
"""


def render_report(sweep_dir: str | Path) -> str:
    """The report HTML of a sweep directory (see the module docstring); `write_report` writes it."""
    sweep_dir = Path(sweep_dir)
    runs = load_runs(sweep_dir)
    metrics = load_metrics(sweep_dir)
    summary = _load_summary(sweep_dir)
    name = str(summary.get("name") or sweep_dir.name)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>Sweep report: {_e(name)}</title><style>{_CSS}</style></head><body>",
        f"<h1>Sweep report: {_e(name)}</h1>",
        _summary_html(summary, runs),
        _references_html(sweep_dir, runs),
        "<h2>Grid</h2>",
        '<p><a href="grid.png"><img class="grid" src="grid.png" alt="grid of all runs"></a></p>'
        if (sweep_dir / "grid.png").is_file()
        else '<p class="muted">grid.png has not been written yet.</p>',
        _best_html(runs, metrics),
        _tradeoff_html(runs, metrics),
        _table_html(sweep_dir, runs, metrics),
        _details_html(runs, metrics),
        f"<script>{_JS}</script>",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _summary_html(summary: dict[str, Any], runs: list[dict[str, Any]]) -> str:
    ok = sum(r.get("status") == "ok" for r in runs)
    rows = [f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in summary.items()]
    rows.append(f"<tr><th>runs in results.jsonl</th><td>{len(runs)} ({ok} ok, {len(runs) - ok} failed)</td></tr>")
    return '<h2>Summary</h2><table class="summary">' + "".join(rows) + "</table>"


def _references_html(sweep_dir: Path, runs: list[dict[str, Any]]) -> str:
    paths = list(dict.fromkeys(str(r["image"]) for r in runs if r.get("image")))
    if not paths:
        return ""
    figures = []
    for p in paths:
        uri = _data_uri(_resolve_image(sweep_dir, p))
        img = f'<img src="{uri}" alt="{_e(Path(p).name)}">' if uri else '<span class="muted">(missing)</span>'
        figures.append(f"<figure>{img}<figcaption>{_e(Path(p).name)}</figcaption></figure>")
    return '<h2>Reference images</h2><div class="refs">' + "".join(figures) + "</div>"


def _run_link(run: dict[str, Any]) -> str:
    rid = str(run.get("id"))
    return f'<a href="#run-{_e(rid)}">{_e(run.get("label") or rid)}</a> <code>{_e(rid)}</code>'


def _best_html(runs: list[dict[str, Any]], metrics: dict[str, dict[str, float]]) -> str:
    best, skipped = best_runs(runs, metrics)
    by_id = {str(r.get("id")): r for r in runs}
    out = [
        '<h2 id="best">Best run per ranked metric</h2>',
        '<p class="muted">Only metrics whose direction means better whatever the conditioning strength (defects,',
        " quality) are ranked, among successful variant runs that depend on their reference image; baselines and",
        " image-free runs are never ranked. Style and content are a trade-off, shown below.</p>",
    ]
    if best:
        out.append(
            "<table><thead><tr><th>metric</th><th>measures</th><th>better</th><th>run</th><th>value</th></tr>"
            "</thead><tbody>"
        )
        for name, (rid, value) in best.items():
            direction = "higher" if METRICS[name].higher_is_better else "lower"
            out.append(
                f'<tr class="best" data-metric="{_e(name)}" data-run="{_e(rid)}"><td>{_e(name)}</td>'
                f"<td>{_e(METRICS[name].measures)}</td><td>{direction}</td><td>{_run_link(by_id[rid])}</td>"
                f'<td class="num">{_e(_fmt_metric(value))}</td></tr>'
            )
        out.append("</tbody></table>")
    else:
        out.append('<p class="muted">No metric to rank.</p>')
    if skipped:
        items = "".join(f'<li data-metric="{_e(n)}">{_e(n)}: not ranked ({_e(why)})</li>' for n, why in skipped.items())
        out.append(f'<ul class="skipped">{items}</ul>')
    return "".join(out)


def _tradeoff_html(runs: list[dict[str, Any]], metrics: dict[str, dict[str, float]]) -> str:
    found = tradeoffs(runs, metrics)
    if not found:
        return ""
    by_id = {str(r.get("id")): r for r in runs}
    out = [
        '<h2 id="tradeoff">Style against content (a trade-off, not a ranking)</h2>',
        '<p class="muted">Per block, each successful variant that depends on its reference: content kept (x) against',
        " style taken from the reference (y). Filled points (&#9733; in the table) are Pareto-optimal: no other run",
        " keeps at least as much content with at least as much style. Choose along that front; no point is best.</p>",
    ]
    for t in found:
        out.append(
            f'<div class="tradeoff" data-style="{_e(t.style)}" data-content="{_e(t.content)}">'
            f'<h3>{_e(t.style)} against {_e(t.content)} · {_e(t.block.title)} <span class="muted">'
            f"{_e(t.block.subtitle)}</span></h3>{_scatter_svg(t, by_id)}<table><thead><tr><th>run</th>"
            f"<th>{_e(t.content)} (content)</th><th>{_e(t.style)} (style)</th><th>Pareto-optimal</th></tr>"
            "</thead><tbody>"
        )
        for rid, content, style, optimal in sorted(t.points, key=lambda p: -p[1]):
            out.append(
                f'<tr data-run="{_e(rid)}" data-pareto="{str(optimal).lower()}"><td>{_run_link(by_id[rid])}</td>'
                f'<td class="num">{_e(_fmt_metric(content))}</td><td class="num">{_e(_fmt_metric(style))}</td>'
                f"<td>{'&#9733;' if optimal else ''}</td></tr>"
            )
        out.append("</tbody></table></div>")
    return "".join(out)


def _scatter_svg(t: TradeOff, by_id: dict[str, dict[str, Any]], w: int = 360, h: int = 240, m: int = 36) -> str:
    """An inline SVG scatter of a trade-off: Pareto-optimal points filled and joined, the others hollow."""
    xs, ys = [p[1] for p in t.points], [p[2] for p in t.points]

    def scale(v: float, lo: float, hi: float, a: float, b: float) -> float:
        return (a + b) / 2 if hi == lo else a + (v - lo) / (hi - lo) * (b - a)

    def xy(c: float, s: float) -> tuple[float, float]:
        return scale(c, min(xs), max(xs), m, w - m / 2), scale(s, min(ys), max(ys), h - m, m / 2)

    front = sorted((xy(c, s) for _, c, s, opt in t.points if opt), key=lambda p: p[0])
    parts = [
        f'<svg class="scatter" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" '
        f'aria-label="{_e(t.style)} against {_e(t.content)}">',
        f'<line x1="{m}" y1="{h - m}" x2="{w - m / 2}" y2="{h - m}" stroke="#888"/>',
        f'<line x1="{m}" y1="{h - m}" x2="{m}" y2="{m / 2}" stroke="#888"/>',
        f'<text x="{w / 2}" y="{h - 8}" text-anchor="middle" font-size="11">{_e(t.content)} (content kept) &#8594;'
        "</text>",
        f'<text x="12" y="{h / 2}" text-anchor="middle" font-size="11" transform="rotate(-90 12 {h / 2})">'
        f"{_e(t.style)} (style) &#8594;</text>",
        '<polyline fill="none" stroke="#1f5fa8" stroke-width="1.5" points="'
        + " ".join(f"{x:.1f},{y:.1f}" for x, y in front)
        + '"/>',
    ]
    for rid, c, s, optimal in t.points:
        x, y = xy(c, s)
        fill = "#1f5fa8" if optimal else "#fff"
        label = by_id[rid].get("label") or rid
        parts.append(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5" fill="{fill}" stroke="#1f5fa8">'
            f"<title>{_e(label)}: {_e(t.content)} {_e(_fmt_metric(c))}, {_e(t.style)} {_e(_fmt_metric(s))}</title>"
            "</circle>"
        )
    return "".join(parts) + "</svg>"


def _table_columns(runs: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(header, what) for the group columns that vary across runs (prompt, image) and the varying settings."""
    cols: list[tuple[str, str]] = []
    for field_name in ("prompt", "image"):
        if len({_jkey(r.get(field_name)) for r in runs}) > 1:
            cols.append((field_name, "field:" + field_name))
    keys = varying_keys(runs)
    if len({_jkey(_seed(r)) for r in runs}) > 1 and SEED_KEY not in keys:
        keys.append(SEED_KEY)
    names = short_keys(keys)
    cols += [(names[k], "setting:" + k) for k in keys]
    return cols


def _table_html(sweep_dir: Path, runs: list[dict[str, Any]], metrics: dict[str, dict[str, float]]) -> str:
    if not runs:
        return '<h2>Runs</h2><p class="muted">No finished runs yet.</p>'
    cols = _table_columns(runs)
    metric_names = _metric_names(runs, metrics)
    heads = ["image", "label", "id", "kind", "status", "baseline", "image-free", *(h for h, _ in cols)]
    heads += [m + _metric_mark(METRICS.get(m)) for m in metric_names]
    pairs = baseline_pairs(runs)
    out = [
        "<h2>Runs</h2>",
        '<p class="muted">Click a column header to sort. ↑ higher is better, ↓ lower is better (ranked metrics);',
        " (style) and (content) trade off against each other. <i>baseline</i>: the text-only run this run is",
        " compared with (every non-conditioning setting equal).</p>",
        '<table class="sortable" id="runs"><thead><tr>',
        *(f'<th data-key="{_e(h)}">{_e(h)}</th>' for h in heads),
        "</tr></thead><tbody>",
    ]
    for i, run in enumerate(runs):
        rid = str(run.get("id"))
        out.append(f'<tr data-run="{_e(rid)}">')
        output = run.get("output")
        if run.get("status") == "ok" and output and (sweep_dir / str(output)).is_file():
            out.append(f'<td data-v="{i}"><img class="thumb" src="{_url(str(output))}" alt="{_e(rid)}"></td>')
        else:
            out.append(f'<td data-v="{i}" class="muted">no image</td>')
        badge = f' <span class="badge">{IMAGE_FREE_BADGE}</span>' if image_free(run) else ""
        out.append(
            f'<td><a href="#run-{_e(rid)}">{_e(run.get("label") or rid)}</a>{badge}</td><td><code>{_e(rid)}</code></td>'
        )
        out.append(f"<td>{_e(run.get('kind') or '')}</td>")
        if run.get("status") == "ok":
            out.append("<td>ok</td>")
        else:
            err = _e(run.get("error") or "")
            out.append(
                f'<td data-v="failed"><span class="failed">{_e(run.get("status") or "failed")}</span>'
                f'<div class="err">{err}</div></td>'
            )
        bid = pairs.get(rid)
        out.append(f'<td><a href="#run-{_e(bid)}"><code>{_e(bid)}</code></a></td>' if bid else "<td></td>")
        out.append(f"<td>{_image_dependence_text(run)}</td>")
        for _, what in cols:
            kind, _, key = what.partition(":")
            if kind == "field":
                value = run.get(key)
                text = Path(str(value)).name if key == "image" and value else (value or "")
            else:
                value = _seed(run) if key == SEED_KEY else (run.get("settings") or {}).get(key)
                text = "" if value is None else fmt_value(value)
            num = f' data-v="{_e(value)}" class="num"' if _is_number(value) else ""
            out.append(f"<td{num}>{_e(text)}</td>")
        for m in metric_names:
            v = metrics.get(rid, {}).get(m)
            finite = _is_number(v) and math.isfinite(v)
            num = f' data-v="{_e(repr(float(v)))}" class="num"' if finite else ' data-v=""'  # sorts last
            text = "not measured" if v is None and m in metrics.get(rid, {}) else _fmt_metric(v)
            out.append(f"<td{num}>{_e(text)}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _metric_mark(info: MetricInfo | None) -> str:
    """The header mark of a metric column: its better direction if ranked, else what it measures."""
    if info is None or info.kind == "descriptive":
        return ""
    if info.ranked:
        return " ↑" if info.higher_is_better else " ↓"
    return f" ({info.kind})"


def _image_dependence_text(run: dict[str, Any]) -> str:
    """The image-free cell of a run: a badge if image-free, "no" if checked and image-dependent, else empty."""
    dependence = (run.get("record") or {}).get("image_dependence")
    if not isinstance(dependence, dict) or not dependence.get("checked"):
        return ""
    change = dependence.get("relative_change")
    change = f" (relative change {_fmt_metric(change)})" if _is_number(change) else ""
    if image_free(run):
        return f'<span class="badge">{IMAGE_FREE_BADGE}</span>{_e(change)}'
    return f"no{_e(change)}"


def _details_html(runs: list[dict[str, Any]], metrics: dict[str, dict[str, float]]) -> str:
    """Per run: its full resolved settings (its own overrides in bold) and its conditioning record, folded."""
    if not runs:
        return ""
    out = ["<h2>Run details</h2>"]
    pairs = baseline_pairs(runs)
    for run in runs:
        rid = str(run.get("id"))
        record = run.get("record") or {}
        own = run.get("settings") or {}
        resolved = record.get("settings") or own
        badge = f' <span class="badge">{IMAGE_FREE_BADGE}</span>' if image_free(run) else ""
        out.append(
            f'<details id="run-{_e(rid)}"><summary>{_e(run.get("label") or rid)} <code>{_e(rid)}</code> '
            f"({_e(run.get('kind') or '')}, {_e(run.get('status') or '')}){badge}</summary>"
        )
        facts = [
            ("prompt", run.get("prompt")),
            ("reference image", run.get("image")),
            ("neutral image", run.get("neutral_image")),
            ("init image", run.get("init_image")),
            ("compared with baseline", pairs.get(rid)),
            ("output", run.get("output")),
        ]
        if run.get("status") != "ok":
            facts.append(("error", run.get("error")))
        cells = "".join(f"<tr><th>{k}</th><td>{'' if v is None else _e(v)}</td></tr>" for k, v in facts)
        out.append(f"<table>{cells}</table>")
        if record.get("settings"):
            out.append("<p><b>Resolved settings</b> (bold: this run's own overrides)</p><table>")
        else:
            out.append("<p><b>Settings</b> (this run's own overrides; there is no generation record)</p><table>")
        for k, v in resolved.items():
            cls = ' class="override"' if k in own else ""
            out.append(f"<tr{cls}><td>{_e(k)}</td><td>{_e(v)}</td></tr>")
        out.append("</table>")
        for title, value in (
            ("Conditioning", record.get("conditioning")),
            ("Image dependence", record.get("image_dependence")),
            ("Timings (s)", record.get("timings_s")),
            ("Metrics", metrics.get(rid)),
        ):
            if value:
                text = json.dumps(value, indent=2, sort_keys=False, default=str)
                out.append(f"<p><b>{title}</b></p><pre>{_e(text)}</pre>")
        out.append("</details>")
    return "".join(out)


def write_report(sweep_dir: str | Path) -> Path:
    """Write `report.html` in the sweep directory atomically (it references `grid.png`; see `build_report`)."""
    sweep_dir = Path(sweep_dir)
    return atomic_write_text(sweep_dir / "report.html", render_report(sweep_dir))


def build_report(sweep_dir: str | Path, thumb: int = 256) -> tuple[Path, Path]:
    """Write `grid.png` then `report.html` for a sweep directory; returns both paths."""
    grid = write_grid(sweep_dir, thumb=thumb)
    return grid, write_report(sweep_dir)
