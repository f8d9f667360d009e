"""The sweep grid: runs arranged into blocks of cells (`grid_layout`) and drawn as one contact sheet (`render_grid`).

A block is one (prompt, reference image, seed) group: the reference image, the block's text-only baseline, then the
variants laid out by the sweep's varying settings (see `grid_layout` for the rules). A cell never holds two runs.
`report.write_grid` writes the drawing as `grid.png`; `report.render_report` shows the same layout's captions.
Also here: how a setting value reads to people (`fmt_value`, `short_keys`) and whether a run is image-free, which
the grid and the report show the same way.
"""

from __future__ import annotations

import json
import math
import textwrap
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from ..core.errors import UserError
from ..core.files import load_image
from ..sweep.run import Run, RunResult, baseline_pairs, is_conditioning, varying_keys
from ..sweep.spec import reference_paths

__all__ = [
    "IMAGE_FREE_BADGE",
    "SEED_KEY",
    "Block",
    "Cell",
    "Grid",
    "fmt_value",
    "grid_layout",
    "image_free",
    "is_number",
    "render_grid",
    "resolve_image",
    "run_seed",
    "short_keys",
    "thumbnail",
    "value_key",
]

SEED_KEY = "generation.seed"

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


def value_key(value: Any) -> str:
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


def is_number(v: Any) -> bool:
    """A real number (int or float, not a bool)."""
    return isinstance(v, int | float) and not isinstance(v, bool)


def run_seed(run: RunResult) -> Any:
    """The run's seed: its own setting, else the one its record resolved."""
    if SEED_KEY in run.settings:
        return run.settings[SEED_KEY]
    return ((run.record or {}).get("settings") or {}).get(SEED_KEY)


def _block_key(run: RunResult) -> str:
    return value_key([run.prompt, run.image, run.reference_weights, run_seed(run)])


def image_free(run: RunResult) -> bool:
    """Whether the run's record says its output does not depend on its reference image (`image_dependence`)."""
    dependence = (run.record or {}).get("image_dependence")
    return isinstance(dependence, dict) and dependence.get("image_free") is True


IMAGE_FREE_BADGE = "IMAGE-FREE"


def _ordered_values(values: list[Any]) -> list[Any]:
    """Distinct values of one axis in first-seen order: the order they were asked in, when `values` follow the
    plan (`grid_layout`'s `planned`)."""
    distinct: dict[str, Any] = {}
    for v in values:
        distinct.setdefault(value_key(v), v)
    return list(distinct.values())


def _cell(run: RunResult, caption: str | None = None) -> Cell:
    error = None if run.ok else run.error or "failed (no error message)"
    return Cell(
        kind=run.kind,
        caption=caption or run.label or run.id,
        image=run.output if run.ok else None,
        run_id=run.id,
        error=error,
        badge=IMAGE_FREE_BADGE if image_free(run) else None,
    )


Rows = list[list[RunResult | None]]


def _arrange(
    variants: list[RunResult],
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
    setting = [{k: r.settings.get(k) for k in base_keys + cond_keys} for r in variants]
    groups = {value_key(c): i for i, c in enumerate(_row_combos(setting, base_keys, values))}
    group_of = [groups[value_key([s[k] for k in base_keys])] for s in setting]

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
    cols = [v for v in values[col_key] if any(value_key(s[col_key]) == value_key(v) for s in setting)]
    col_index = {value_key(v): i for i, v in enumerate(cols)}
    row_index = {value_key(c): i for i, c in enumerate(_row_combos(setting, row_keys, values))}
    placed: dict[tuple[int, int], RunResult] = {}
    row_group: dict[int, int] = {}
    for run, s, g in zip(variants, setting, group_of, strict=True):
        pos = (row_index[value_key([s[k] for k in row_keys])], col_index[value_key(s[col_key])])
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
        seen.setdefault(value_key(combo), combo)
    rank = {k: {value_key(v): i for i, v in enumerate(values[k])} for k in row_keys}
    return sorted(seen.values(), key=lambda c: [rank[k][value_key(v)] for k, v in zip(row_keys, c, strict=True)])


def grid_layout(runs: list[RunResult], planned: list[Run] | None = None) -> Grid:
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
      each axis's values in the order they were asked (`--layers -2,-6,-8` reads -2, -6, -8; a preset's values as
      listed): their order in `planned` (the sweep's planned runs, `SweepDir.plan`), then in `runs` (values no
      planned run has, or all of them without a plan). No conditioning axis: one row per group.
    * Fallback to one row per group in run order when two runs would share a cell (they differ only in a way that
      is not an axis, e.g. a preset variant's label) or when the table would be sparse (more than half of its
      rows with an empty cell).
    * Failed runs are cells with their error; image-free runs carry IMAGE_FREE_BADGE; headers read `key=value`
      with the short key (last dotted part).
    """
    pairs = baseline_pairs(runs)
    by_id = {r.id: r for r in runs}
    named = {b for b in pairs.values() if b}
    groups: dict[str, list[RunResult]] = {}
    for run in runs:
        if run.kind != "baseline":
            groups.setdefault(_block_key(run), []).append(run)
        elif run.id not in named:  # a baseline no variant names: a block of baselines of its own
            groups.setdefault("baseline " + _block_key(run), []).append(run)

    def variants_of(group: list[RunResult]) -> list[RunResult]:
        return [r for r in group if r.kind != "baseline"]

    all_keys = varying_keys([r for g in groups.values() for r in variants_of(g)])
    within = [
        k
        for k in all_keys
        if any(len({value_key(r.settings.get(k)) for r in variants_of(g)}) > 1 for g in groups.values())
    ]
    base_keys = [k for k in within if not is_conditioning(k)]
    cond_keys = [k for k in within if is_conditioning(k)]
    between = [k for k in all_keys if k not in within and k != SEED_KEY]
    ordered: list[Run] = [r for r in (planned or []) if r.kind != "baseline"]
    ordered += [r for g in groups.values() for r in variants_of(g)]
    values = {k: _ordered_values([r.settings.get(k) for r in ordered]) for k in within}
    names = short_keys(all_keys)
    grid = Grid(keys=base_keys + cond_keys)
    for group in groups.values():
        first = group[0]
        vs = variants_of(group)
        layout, row_headers, col_headers, rows, row_groups = _arrange(vs, base_keys, cond_keys, values, names)
        lead_headers = ["reference"] if first.image else []
        if any(pairs.get(r.id) for r in vs):
            lead_headers.append("baseline")
        if not vs:  # baselines only
            col_headers, rows = ["baseline"] * len(group), [list(group)]
        cells: list[list[Cell | None]] = []
        for r, row in enumerate(rows):
            lead: list[Cell | None] = []
            if first.image:
                lead.append(
                    Cell(kind="reference", caption=reference_caption(first), image=first.image) if r == 0 else None
                )
            starts_group = r == 0 or row_groups[r] != row_groups[r - 1]
            if "baseline" in lead_headers:
                lead.append(_baseline_cell(row, pairs, by_id, base_keys, names) if starts_group else None)
            cells.append(lead + [None if run is None else _cell(run) for run in row])
        seed = run_seed(first)
        meta = [f"image: {reference_caption(first)}" if first.image else "no reference image"]
        if first.init_image:
            meta.append(f"init: {Path(first.init_image).name}")
        meta.append(f"seed={fmt_value(seed)}")
        example = vs[0] if vs else first
        meta += [f"{names[k]}={fmt_value(example.settings.get(k))}" for k in between]
        grid.blocks.append(
            Block(
                prompt=first.prompt,
                image=first.image,
                seed=seed,
                title=first.prompt or "(no prompt)",
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
    row: list[RunResult | None],
    pairs: dict[str, str | None],
    by_id: dict[str, RunResult],
    base_keys: list[str],
    names: dict[str, str],
) -> Cell | None:
    """The baseline cell of a row: the baseline its variants name, captioned with the row group's
    non-conditioning values; a named baseline without a result is a "missing" cell, never another run."""
    run = next((r for r in row if r is not None), None)
    bid = pairs.get(run.id) if run is not None else None
    if run is None or bid is None:
        return None
    values = [f"{names[k]}={fmt_value(run.settings.get(k))}" for k in base_keys]
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


def reference_caption(run: Run) -> str:
    """A run's reference as a header says it: the file name, or each file of a reference set with its weight
    (`a.png 0.5 + b.png 0.5`; default weights 1/n)."""
    paths = reference_paths(run.image)
    if len(paths) == 1 and run.reference_weights is None:
        return Path(paths[0]).name
    weights = run.reference_weights or [1 / len(paths)] * len(paths)
    return " + ".join(f"{Path(p).name} {fmt_value(w)}" for p, w in zip(paths, weights, strict=False))


def reference_thumbnail(sweep_dir: Path, image: str, thumb: int) -> Image.Image | None:
    """The thumbnail of a run's reference: the image, or a reference set's images side by side in one square."""
    paths = reference_paths(image)
    if len(paths) == 1:
        return thumbnail(resolve_image(sweep_dir, paths[0]), thumb)
    tiles = [thumbnail(resolve_image(sweep_dir, p), max(1, thumb // len(paths))) for p in paths]
    if any(t is None for t in tiles):
        return None
    sheet = Image.new("RGB", (thumb, max(t.height for t in tiles)), "white")
    x = 0
    for t in tiles:
        sheet.paste(t, (x, (sheet.height - t.height) // 2))
        x += thumb // len(paths)
    return sheet


def resolve_image(sweep_dir: Path, path: str) -> Path | None:
    """Where an image path from a record is: as given (absolute or relative to the working directory), else
    relative to the sweep directory."""
    for candidate in (Path(path), sweep_dir / path):
        if candidate.is_file():
            return candidate
    return None


def thumbnail(path: Path | None, thumb: int) -> Image.Image | None:
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


def render_grid(
    sweep_dir: str | Path, runs: list[RunResult], thumb: int = 256, planned: list[Run] | None = None
) -> Image.Image:
    """Draw `grid_layout(runs, planned)` as one RGB image: per block a title (prompt; image, seed), column headers on
    top, row headers on the left, then thumbnails (longer side `thumb`, aspect kept) with a short caption each. Failed
    runs show their error on a red cell, missing images a grey one; an image-free run carries an orange
    IMAGE-FREE badge on its image; a dark rule separates rows of different baseline groups. Text is ~14 px at
    thumb 256."""
    sweep_dir = Path(sweep_dir)
    grid = grid_layout(runs, planned)
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
        if cell.kind == "reference" and cell.image:
            im = reference_thumbnail(sweep_dir, cell.image, g.thumb)
        else:
            im = thumbnail(resolve_image(sweep_dir, cell.image) if cell.image else None, g.thumb)
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
