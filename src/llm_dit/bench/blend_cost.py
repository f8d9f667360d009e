"""The `blend-cost` preset of `llm-dit bench`: the model-free section at the real sizes (blend modes,
normalisation, sink detection, outlier analysis, VL image tokens), in milliseconds per call."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from datetime import date
from typing import Any

import torch

from ..models.zoo import zoo_dir
from .harness import PROMPT, machine, median_time, reference_image, timed_call

BLEND_COST = "blend-cost"  # the model-free section: blend, normalisation, sinks, outliers, VL tokens at real sizes


# Real dimensions (FACTS.md): Qwen3 / Qwen3-VL hidden size, VL rows of a ~1000-token reference, text rows of a prompt.
REAL_D, VL_ROWS, TEXT_ROWS = 2560, 1000, 50


BLEND_TARGET_MS = 50.0


CACHED_MODES = ("svd_style", "whiten", "gram")  # their alpha-independent part is kept in blend.DECOMPOSITIONS


RESOLUTIONS = (512, 1024, 1536, 2048)


CAPPED_PIXELS = 1024 * 32 * 32  # vl.max_pixels for 1024 image tokens (patch 16 x merge 2 = 32 pixels a token)


def blend_cost(repeats: int, d: int = REAL_D, vl_rows: int = VL_ROWS, text_rows: int = TEXT_ROWS) -> dict[str, Any]:
    """Milliseconds per call at the real width: every blend mode (T 50 rows, V 1000 rows), each normalisation,
    sink detection and outlier analysis on V. Rows are random with a few planted sink rows and outlier dimensions.
    The cached modes report a cold call (cache cleared: the decomposition) and the warm median (what each further
    alpha of a sweep costs), with the cache's hit count over the warm calls."""
    from ..maths.blend import BLEND_MODES, DECOMPOSITIONS, blend
    from ..maths.normalize import NORMALIZATION_MODES, normalize
    from ..maths.outliers import OUTLIER_MODES, get_outlier_dimensions, mask_outlier_dimensions
    from ..maths.refstats import ReferenceStats
    from ..maths.sinks import find_sinks

    g = torch.Generator().manual_seed(0)
    text = torch.randn(text_rows, d, generator=g)
    vl = torch.randn(vl_rows, d, generator=g) * 3
    vl[:3] *= 200  # attention-sink rows
    vl[:, :4] *= 40  # outlier dimensions
    neutral = torch.randn(vl_rows, d, generator=g) * 3
    reference = ReferenceStats(torch.zeros(d), torch.ones(d), layer=-2, model="bench", prompt_count=1,
                               token_count=text_rows)  # fmt: skip

    def ms(fn: Callable[[], Any]) -> dict[str, float]:
        """Median and minimum milliseconds over `repeats` calls after a warm-up: on a shared machine the minimum
        is the closest to the code's own cost, the median what a user on that machine sees."""
        fn()
        runs = [timed_call(fn) for _ in range(repeats)]
        return {"ms": round(1000 * statistics.median(runs), 2), "min_ms": round(1000 * min(runs), 2)}

    modes: dict[str, Any] = {}
    for mode in BLEND_MODES:
        alpha = 1.0 if mode == "replace" else 0.3
        options = {"neutral": neutral} if mode == "style_delta" else {}
        call = lambda m=mode, a=alpha, o=options: blend(text, vl, m, a, **o)  # noqa: E731
        row: dict[str, Any] = {}
        if mode in CACHED_MODES:
            DECOMPOSITIONS.clear()
            row["first_ms"] = round(1000 * timed_call(call), 2)
            hits = DECOMPOSITIONS.hits
            row |= ms(call)
            row["cache_hits"], row["cache_misses"] = DECOMPOSITIONS.hits - hits, DECOMPOSITIONS.misses
        else:
            row |= ms(call)
        modes[mode] = row | {"target_ms": BLEND_TARGET_MS, "met": row["ms"] <= BLEND_TARGET_MS}
    content = ~find_sinks(vl)
    return {
        "shapes": {"D": d, "vl_rows": vl_rows, "text_rows": text_rows},
        "blend_ms": modes,
        "normalize_ms": {
            m: ms(lambda m=m: normalize(vl, m, reference, clip_sigma=3.0, content=content)) for m in NORMALIZATION_MODES
        },
        "sink_detection_ms": ms(lambda: find_sinks(vl)),
        "outlier_analysis_ms": ms(lambda: get_outlier_dimensions(vl, 10.0, reference)),
        "outlier_masking_ms": {
            m: ms(lambda m=m: mask_outlier_dimensions(vl, 10.0, m, reference, content=content)) for m in OUTLIER_MODES
        },
        "vl_tokens": vl_tokens(repeats),
    }


def vl_tokens(repeats: int) -> dict[str, Any]:
    """Image tokens and preprocessing time of a square reference per side length, with the Qwen3-VL image
    processor's own limit and with `vl.max_pixels = CAPPED_PIXELS` (the tiny zoo's processor is the real one's:
    patch 16, merge 2, 65,536 ... 16,777,216 pixels). Tokens come from `VLEmbeddingExtractor.prepare`, the path
    every extraction takes."""
    from ..models.vl import VLEmbeddingExtractor

    x = VLEmbeddingExtractor.from_pretrained(str(zoo_dir("tiny") / "qwen3-vl"), "cpu")
    out: dict[str, Any] = {"max_pixels": CAPPED_PIXELS, "processor_size": dict(x.image_processor.size)}
    for side in RESOLUTIONS:
        image = reference_image("tiny").resize((side, side))
        row = {}
        for name, cap in (("default", None), ("capped", CAPPED_PIXELS)):
            inputs, _ = x.prepare(image, PROMPT, None, cap)
            grid = inputs["image_grid_thw"][0].tolist()
            row[f"{name}_tokens"] = int(grid[0] * grid[1] * grid[2]) // (x.image_processor.merge_size**2)
            row[f"{name}_grid"] = grid
            x._prepared.clear()
            prep = lambda c=cap, im=image: x._prepare(im, PROMPT, None, c)  # noqa: E731
            row[f"{name}_preprocess_ms"] = round(1000 * median_time(prep, repeats), 1)
        out[f"{side}x{side}"] = row
    return out


def run_blend_cost(repeats: int = 5, progress: Callable[[str], None] | None = None, threads: int = 1) -> dict[str, Any]:
    """The `blend-cost` preset: `blend_cost` with the machine and versions, on `threads` torch threads (default 1:
    on a shared machine several threads per small op mostly measure the thread pool waiting for a busy core)."""
    (progress or (lambda _: None))("blend, normalisation, sinks, outliers and VL tokens at D = 2560")
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    out = {"preset": BLEND_COST, "repeats": repeats, "date": date.today().isoformat(), **machine()}
    out |= blend_cost(repeats)
    out["wall_time_s"] = round(time.perf_counter() - t0, 1)
    return out


def print_blend_cost(result: dict[str, Any]) -> str:
    """The blend-cost result as the Markdown tables BENCHMARKS.md shows."""
    lines = [
        "| blend mode | median ms | min ms | first call, cache cold (ms) | median ≤ 50 ms |",
        "|---|---|---|---|---|",
    ]
    for mode, row in result["blend_ms"].items():
        first = f"{row['first_ms']} (then {row['cache_hits']} cache hits)" if "first_ms" in row else ""
        lines.append(f"| {mode} | {row['ms']} | {row['min_ms']} | {first} | {'met' if row['met'] else 'missed'} |")
    steps = {f"normalize {m}": v for m, v in result["normalize_ms"].items()}
    steps |= {"sink detection": result["sink_detection_ms"], "outlier analysis": result["outlier_analysis_ms"]}
    steps |= {f"outlier masking {m}": v for m, v in result["outlier_masking_ms"].items()}
    lines += ["", "| step | median ms | min ms |", "|---|---|---|"]
    lines += [f"| {name} | {v['ms']} | {v['min_ms']} |" for name, v in steps.items()]
    tokens = result["vl_tokens"]
    capped = f"image tokens (vl.max_pixels = {tokens['max_pixels']})"
    lines += ["", f"| reference | image tokens (processor limit) | {capped} |", "|---|---|---|"]
    for side in RESOLUTIONS:
        row = tokens[f"{side}x{side}"]
        lines.append(f"| {side}² | {row['default_tokens']} | {row['capped_tokens']} |")
    return "\n".join(lines)
