"""`llm-dit bench`: speed and memory as ratios of two measurements taken side by side in the same run.

Every timing is the median of `repeats` runs after one warm-up, so a ratio holds on a noisy machine even when the
absolute numbers do not. Memory figures come from fresh subprocesses (peak RSS over the RSS after imports), so one
measurement cannot inherit another's allocations. Each figure states its ratio as `numerator / denominator`:

- `pipeline_overhead_vs_diffusers`: our text-to-image (no cache) / diffusers' `ZImagePipeline(prompt=...)` on the
  same loaded modules; target <= 1.02.
- `extraction_early_exit_speedup`: full VL forward with all hidden states and logits / our layer -6 extraction;
  reported with the fraction of decoder layers that still run.
- `sweep_speedup_vs_naive`: the naive workflow (per run: load every model, full forwards, generate) / a 12-run
  sweep; target >= 3.
- `sweep_vs_floor`: the sweep / its floor (load each model once, the unique forward passes, the generations, each
  timed alone); target <= 1.10.
- `eval_vs_floor`: `llm-dit eval` (text and two VL alphas on 1 reference x 2 prompts, tiny metric models: sweep,
  scoring, clustered statistics, eval.json, leaderboard and report.html) / its floor (the generation floor as above
  plus the metric forward passes: a fresh scorer loading each metric model once and embedding each distinct image
  and prompt once); target <= 1.10.
- `cache_rerun_forward_passes` (must be 0) and `cache_rerun_time_ratio`: a rerun into a new directory / the first.
- `batched_vs_sequential`: N images in one diffusers call / N calls.
- `compiled_vs_eager`: a generation with `models.compile` (regional compile of the DiT) / eager, after the first
  compiled call (reported apart: it pays the compile), with the largest pixel difference of the two images.
- `peak_memory_ratio`: peak of a low-memory reference-conditioned generation / the largest single component;
  target <= 1.15 (all-resident and staged peaks reported too).
- `studio_rerender_vs_dit`: in `llm-dit studio` (its HTTP API, in-process), the time from a request with a changed
  alpha to the new PNG served / the DiT + VAE time of that image (its `denoise` call, from its record); target
  <= 1.05, with the re-renders' VL and text forward passes (must be 0) and `denoise` of the same rows timed alone.
- `studio_first_image_vs_generate`: the studio's first image of a new reference + prompt (models warm, nothing
  cached), request to PNG served / `Generator.generate` of the same work in a warm process; target <= 1.05.
- `cli_help_vs_typer`: the wall time of `llm-dit --help` in a fresh process / that of `python -c "import typer,
  rich"` (the CLI framework's own floor), the two run in turn; target <= 2.5.
"""

from __future__ import annotations

import itertools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..config.settings import Config, load_config
from ..core.cache import TensorCache
from ..core.errors import UserError, check_choice
from ..generation.generate import Generator
from ..generation.records import library_versions
from ..generation.render import denoise
from ..models.hooks import layer_position
from ..models.loading import load_model, resolve_device, resolve_dtype
from ..models.zoo import model_settings, zoo_dir
from ..sweep.spec import SweepSpec, expand, resolve_spec

SIZES = {"tiny": 64, "small": 128}
STAGES = ("text_encoder", "vl", "pipeline")  # the components a generation runs one after another
BLEND_COST = "blend-cost"  # the model-free section: blend, normalisation, sinks, outliers, VL tokens at real sizes
PROMPT = "a lighthouse on a cliff at sunset, watercolor"


def median_time(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall time of `fn` over `repeats` calls after one warm-up call."""
    fn()
    return statistics.median(timed_call(fn) for _ in range(repeats))


def timed_call(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def figure(numerator: float, denominator: float, ratio_is: str, target: str | None = None, **extra: Any) -> dict:
    """One figure: both measurements, their ratio `numerator / denominator`, and whether the target holds."""
    ratio = numerator / denominator if denominator else float("inf")
    out = {
        "numerator": round(numerator, 5),
        "denominator": round(denominator, 5),
        "ratio": round(ratio, 4),
        "ratio_is": ratio_is,
        **extra,
    }
    if target:
        op, value = target[:2], float(target[2:])
        out |= {"target": target, "met": ratio <= value if op == "<=" else ratio >= value}
    return out


def bench_overrides(preset: str) -> dict[str, Any]:
    """The zoo preset's models at its size, 4 steps. The image-dependence check (`vl.image_check`) is off: it is
    a second extraction the naive workflow and the floors do not do, so with it the figures would compare unequal
    work."""
    size = SIZES[preset]
    return {
        **model_settings(preset),
        "generation.width": size,
        "generation.height": size,
        "generation.steps": 4,
        "vl.image_check": False,
    }


def bench_config(preset: str, **overrides: Any) -> Config:
    """`bench_overrides(preset)` and `overrides` as a config."""
    return load_config(overrides=bench_overrides(preset) | overrides)


def reference_image(preset: str) -> Image.Image:
    """A deterministic 512x512 reference (256 image tokens, like the notes' downscaled references)."""
    g = torch.Generator().manual_seed(0)
    low = torch.rand(3, 8, 8, generator=g)
    big = torch.nn.functional.interpolate(low[None], size=(512, 512), mode="bilinear")[0]
    return Image.fromarray((big.permute(1, 2, 0) * 255).to(torch.uint8).numpy())


def pipeline_overhead(preset: str, repeats: int) -> dict[str, Any]:
    """Our text-to-image against diffusers' own `ZImagePipeline(prompt=...)` on the same loaded modules."""
    from diffusers import ZImagePipeline

    gen = Generator(bench_config(preset), cache=False)
    pipe = gen.components.pipeline
    te = gen.components.text_encoder
    reference = ZImagePipeline(pipe.scheduler, pipe.vae, te.model, te.tokenizer, pipe.transformer)
    reference.set_progress_bar_config(disable=True)
    g = gen.config.generation

    def theirs() -> None:
        reference(
            prompt=PROMPT,
            height=g.height,
            width=g.width,
            num_inference_steps=g.steps,
            guidance_scale=0.0,
            generator=torch.Generator("cpu").manual_seed(g.seed),
        )

    ours = median_time(lambda: gen.generate(PROMPT), repeats)
    return figure(ours, median_time(theirs, repeats), "ours / diffusers", "<=1.02", unit="s per image")


def early_exit(preset: str, repeats: int) -> dict[str, Any]:
    """Extracting layer -6 with early exit against a full forward with every hidden state and the logits."""
    gen = Generator(bench_config(preset), cache=False)
    x = gen.components.vl
    image = reference_image(preset)
    inputs, _ = x.prepare(image, PROMPT)

    def full() -> None:
        with torch.no_grad():
            x.model(**inputs, output_hidden_states=True)

    n = x.num_layers
    fraction = layer_position(-6, n) / n
    ours = median_time(lambda: x.hidden_rows(image, PROMPT, [-6]), repeats)
    return figure(
        median_time(full, repeats),
        ours,
        "full forward / early exit",
        ">=1.0",
        unit="s per extraction",
        decoder_layers_run_fraction=round(fraction, 3),
    )


def sweep_spec(image_path: str) -> SweepSpec:
    """12 runs: 3 VL layers x 4 alphas, one image, one prompt, no baseline."""
    spec = SweepSpec(prompts=[PROMPT], images=[image_path], baseline=False)
    return resolve_spec(spec, None, {"vl.hidden_layer": [-2, -4, -6], "vl.alpha": [0.2, 0.4, 0.6, 0.8]}, {})


def naive_run(cfg: Config, image: Image.Image, layer: int, alpha: float) -> None:
    """The research scripts' workflow for one run: load every model, full forwards, blend, generate."""
    from diffusers import ZImagePipeline
    from transformers import Qwen3VLForConditionalGeneration

    from ..maths.blend import blend

    vl_dev = resolve_device(cfg.vl.device)
    vl_model = load_model(Qwen3VLForConditionalGeneration, cfg.models.vl, vl_dev, resolve_dtype(cfg.vl.dtype, vl_dev))
    extractor = Generator(cfg, cache=False).components.vl
    inputs, _ = extractor.prepare(image, PROMPT)
    with torch.no_grad():
        vl_rows = vl_model(**inputs, output_hidden_states=True).hidden_states[layer][0].float()
    pipe = ZImagePipeline.from_pretrained(cfg.models.zimage)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        text = pipe.encode_prompt(PROMPT, do_classifier_free_guidance=False)[0][0]
    g = cfg.generation
    denoise(pipe, [blend(text, vl_rows, cfg.vl.blend, alpha)], g, [g.seed])


def sweep_figures(preset: str, work: Path, repeats: int) -> dict[str, Any]:
    """Sweep against the naive workflow, against its floor, and a cached rerun (each a median after a warm-up)."""
    from ..experiment.run import run_sweep

    image_path = work / "reference.png"
    reference_image(preset).save(image_path)
    spec = sweep_spec(str(image_path))
    cfg = bench_config(preset)
    image = Image.open(image_path).convert("RGB")
    count = itertools.count()
    last: dict[str, Any] = {}

    def sweep(cache_dir: Path | None = None) -> None:
        i = next(count)
        last["summary"] = run_sweep(cfg, spec, work / f"sweep{i}", cache=TensorCache(cache_dir or work / f"cache{i}"))

    def naive() -> None:
        for run in expand(spec):
            naive_run(cfg, image, run.settings["vl.hidden_layer"], run.settings["vl.alpha"])

    # interleaved, so a change in machine load between blocks cannot favour one side
    sweep(), floor_time(cfg, spec, image), naive()  # warm-up
    sweep_t, floor_t, naive_t = [], [], []
    for i in range(repeats):
        sweep_t.append(timed_call(sweep))
        first = last["summary"]
        floor_t.append(floor_time(cfg, spec, image))
        if i < max(1, repeats // 2):
            naive_t.append(timed_call(naive))
    sweep_s, floor_s, naive_s = (statistics.median(t) for t in (sweep_t, floor_t, naive_t))
    rerun_s = median_time(lambda: sweep(work / "cache0"), repeats)
    rerun = last["summary"]
    return {
        "sweep_speedup_vs_naive": figure(naive_s, sweep_s, "naive / sweep", ">=3", unit="s for 12 runs"),
        "sweep_vs_floor": figure(sweep_s, floor_s, "sweep / floor", "<=1.10", unit="s for 12 runs"),
        "cache_rerun_forward_passes": {
            "vl": rerun["vl_forward_passes"],
            "text": rerun["text_forward_passes"],
            "met": rerun["vl_forward_passes"] == rerun["text_forward_passes"] == 0,
            "first_run": {"vl": first["vl_forward_passes"], "text": first["text_forward_passes"]},
        },
        "cache_rerun_time_ratio": figure(rerun_s, sweep_s, "rerun / first run", unit="s"),
    }


def floor_time(cfg: Config, spec: SweepSpec, image: Image.Image) -> float:
    """The irreducible work of the sweep, each piece timed alone: load each model once, one VL forward pass with
    all layers, one text encode, and the generations from precomputed conditioning."""
    from ..maths.blend import blend

    gen = Generator(cfg, cache=False)
    runs = expand(spec)
    layers = sorted({r.settings["vl.hidden_layer"] for r in runs})
    total = 0.0
    t0 = time.perf_counter()
    _ = gen.components.vl.model, gen.components.text_encoder.model, gen.components.pipeline
    total += time.perf_counter() - t0
    t0 = time.perf_counter()
    rows, _, _, _ = gen.components.vl.hidden_rows(image, PROMPT, layers)
    total += time.perf_counter() - t0
    t0 = time.perf_counter()
    text = gen.encode(PROMPT).embeddings
    total += time.perf_counter() - t0
    g = cfg.generation
    conds = [blend(text, rows[r.settings["vl.hidden_layer"]], cfg.vl.blend, r.settings["vl.alpha"]) for r in runs]
    for c in conds:
        t0 = time.perf_counter()
        denoise(gen.components.pipeline, [c], g, [g.seed])
        total += time.perf_counter() - t0
    return total


EVAL_ALPHAS = (0.3, 0.6)
EVAL_PROMPTS = 2


def eval_figure(preset: str, work: Path, repeats: int) -> dict[str, Any]:
    """An eval against its floor (`eval_floor_time`), interleaved, each a median after a warm-up."""
    from ..eval.methods import Method, parse_method
    from ..eval.run import run_eval
    from ..eval.suite import load_suite
    from ..scoring.scorer import _shared_embedder

    cfg = bench_config(preset)
    suite = load_suite("builtin", references=1, prompts=EVAL_PROMPTS)
    methods = [Method(name="text", kind="text"), *parse_method("vl:alpha=" + ",".join(map(str, EVAL_ALPHAS)))]
    count = itertools.count()
    phases: list[dict[str, float]] = []

    def evaluate() -> None:
        i = next(count)
        _shared_embedder.cache_clear()  # metric models are kept per process: both sides load them
        result = run_eval(cfg, suite, methods, work / f"eval{i}", metric_models_spec="tiny",
                          cache=TensorCache(work / f"ec{i}"))  # fmt: skip
        phases.append(result.data["timings"])

    evaluate(), eval_floor_time(cfg, suite, work)  # warm-up
    eval_t, floor_t = [], []
    for _ in range(repeats):
        eval_t.append(timed_call(evaluate))
        floor_t.append(eval_floor_time(cfg, suite, work))
    runs = EVAL_PROMPTS * (1 + len(EVAL_ALPHAS))
    timed_phases = phases[1:]  # the warm-up's left out
    return figure(
        statistics.median(eval_t),
        statistics.median(sum(f.values()) for f in floor_t),
        "eval / floor",
        "<=1.10",
        unit=f"s for {runs} runs, scored",
        eval_phases_s={k: round(statistics.median(p[k] for p in timed_phases), 3) for k in timed_phases[0]},
        floor_phases_s={k: round(statistics.median(f[k] for f in floor_t), 3) for k in floor_t[0]},
    )


def eval_floor_time(cfg: Config, suite: Any, work: Path) -> dict[str, float]:
    """The irreducible work of `eval_figure`'s eval, each piece timed alone, in seconds: `generation` (load each
    model once, per prompt one VL forward pass and one text encode, the generations, text then each alpha, from
    precomputed conditioning) and `scoring` (a fresh metric scorer: each metric model loaded once, each distinct
    image and prompt embedded once, batched)."""
    from ..core.files import load_image
    from ..maths.blend import blend
    from ..scoring.scorer import MetricScorer, ScoreItem, _shared_embedder

    gen = Generator(cfg, cache=False)
    ref = suite.references[0].path
    image = load_image(ref, "reference image")
    layer = cfg.vl.hidden_layer
    g = cfg.generation
    total = 0.0
    t0 = time.perf_counter()
    _ = gen.components.vl.model, gen.components.text_encoder.model, gen.components.pipeline
    total += time.perf_counter() - t0
    items = []
    for p, prompt in enumerate(suite.prompts):
        t0 = time.perf_counter()
        rows, _, _, _ = gen.components.vl.hidden_rows(image, prompt, [layer])
        text = gen.encode(prompt).embeddings
        conds = [text] + [blend(text, rows[layer], cfg.vl.blend, a) for a in EVAL_ALPHAS]
        outs = [denoise(gen.components.pipeline, [c], g, [suite.seeds[0]])[0] for c in conds]
        total += time.perf_counter() - t0
        paths = []
        for k, im in enumerate(outs):
            paths.append(work / f"floor-{p}-{k}.png")
            im.save(paths[-1])
        items += [ScoreItem(path, prompt, ref, None if k == 0 else paths[0]) for k, path in enumerate(paths)]
    _shared_embedder.cache_clear()  # metric models are kept per process: both sides load them, as a fresh eval does
    t0 = time.perf_counter()
    MetricScorer("tiny").score(items)
    return {"generation": total, "scoring": time.perf_counter() - t0}


def batched(preset: str, repeats: int, n: int = 4) -> dict[str, Any]:
    """N images in one diffusers call against N calls."""
    gen = Generator(bench_config(preset), cache=False)
    emb = gen.encode(PROMPT).embeddings
    g = gen.config.generation
    seeds = list(range(n))
    sequential = median_time(lambda: [denoise(gen.components.pipeline, [emb], g, [s]) for s in seeds], repeats)
    together = median_time(lambda: denoise(gen.components.pipeline, [emb] * n, g, seeds), repeats)
    return figure(together, sequential, "one call / N calls", unit=f"s for {n} images", batch=n)


def compiled(preset: str, repeats: int) -> dict[str, Any]:
    """`models.compile` end to end: a text-to-image with the DiT's repeated blocks compiled against eager on the
    same settings, the first compiled call (which pays the compile) apart, and the largest pixel difference."""
    import numpy as np

    eager = Generator(bench_config(preset), cache=False)
    fast = Generator(bench_config(preset, **{"models.compile": True}), cache=False)
    first = timed_call(lambda: fast.generate(PROMPT))
    difference = np.abs(
        np.asarray(fast.generate(PROMPT).image, dtype=np.int16)
        - np.asarray(eager.generate(PROMPT).image, dtype=np.int16)
    ).max()
    ours = median_time(lambda: fast.generate(PROMPT), repeats)
    return figure(ours, median_time(lambda: eager.generate(PROMPT), repeats), "compiled / eager", unit="s per image",
                  first_call_s=round(first, 2), max_pixel_difference=int(difference))  # fmt: skip


MEMORY_PROBE = """
import json, sys, time
import torch
import diffusers.pipelines.z_image.pipeline_z_image
import transformers.models.qwen3.modeling_qwen3, transformers.models.qwen3_vl.modeling_qwen3_vl
from llm_dit.bench.harness import PROMPT, reference_image, stage_modules, touch_weights
from llm_dit.config.settings import load_config
from llm_dit.generation.generate import Generator
from llm_dit.generation.render import denoise
def status_mb(field):  # VmRSS now, VmHWM peak (per address space: unlike ru_maxrss, not inherited via fork)
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field)) / 1024
overrides, what, threads = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
what, _, touch = what.partition("+")
torch.set_num_threads(threads)
gen = Generator(load_config(overrides=overrides | {"models.low_memory": what == "staged"}), cache=False)
gen.components.text_encoder, gen.components.vl  # tokenizers and image processor: not part of any component's weights
image = reference_image("")
base = status_mb("VmRSS")
t0 = time.perf_counter()
weights = touch_weights(stage_modules(gen.components, what)) if touch else None
if what == "text_encoder":
    gen.encode(PROMPT)
elif what == "vl":
    gen.extract(image, PROMPT)
elif what == "pipeline":
    g = gen.config.generation
    denoise(gen.components.pipeline, [torch.zeros(32, gen.components.caption_width)], g, [g.seed])
else:
    gen.generate(PROMPT, image)
seconds = round(time.perf_counter() - t0, 2)
print(json.dumps({"base_mb": base, "peak_mb": status_mb("VmHWM"), "seconds": seconds, "weights_mb": weights}))
"""
WEIGHTS = "+weights"  # a probe suffix: every weight of the stage read once before it runs (`touch_weights`)


def stage_modules(components: Any, stage: str) -> list[torch.nn.Module]:
    """The modules whose weights `stage` (one of `STAGES`) holds: the text encoder, Qwen3-VL, or the DiT and VAE."""
    if stage == "text_encoder":
        return [components.text_encoder.model]
    if stage == "vl":
        return [components.vl.model]
    return [components.pipeline.transformer, components.pipeline.vae]


def touch_weights(modules: list[torch.nn.Module]) -> float:
    """Read every parameter and buffer of `modules` once and return their size in MB (each tensor once).

    Safetensors weights on the CPU are memory-mapped: a page counts in RSS only once it is read, so a stage that
    indexes a few embedding rows or stops after its deepest layer leaves the rest on disk. Moving a model to a GPU
    copies every weight; reading them all first makes the CPU peak count them as the GPU's would."""
    seen: dict[int, int] = {}
    for module in modules:
        for t in (*module.parameters(), *module.buffers()):
            if t.data_ptr() not in seen and t.numel():
                t.detach().sum()  # reads every page of the tensor, allocates one scalar
                seen[t.data_ptr()] = t.numel() * t.element_size()
    return sum(seen.values()) / 2**20


def memory_probe(overrides: dict[str, Any], what: str, threads: int | None = None) -> dict[str, float]:
    """Base RSS, peak RSS (MB) and seconds of `what` (a stage of `STAGES`, `staged`: the low-memory generation,
    `resident`: the generation with every component kept; a stage with the suffix `WEIGHTS` reads all its weights
    first and also returns their size, `weights_mb`) in a fresh process with the config `overrides`."""
    env = os.environ | {"PYTHONWARNINGS": "ignore"}
    args = [json.dumps(overrides), what, str(threads or 1)]
    out = subprocess.run([sys.executable, "-c", MEMORY_PROBE, *args], capture_output=True, text=True, env=env)
    if out.returncode:
        raise RuntimeError(f"memory probe '{what}' failed: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def peak_memory(preset: str) -> dict[str, Any]:
    """Peak RSS above the post-import baseline of a low-memory reference-conditioned generation, against the
    largest single component's peak when it is loaded and run alone (its weights are paged in as they are used,
    so a component's resident size is measured while it works)."""
    overrides = bench_overrides(preset)
    peaks = {name: memory_probe(overrides, name) for name in (*STAGES, "staged", "resident")}
    above = {name: m["peak_mb"] - m["base_mb"] for name, m in peaks.items()}
    components = {k: above[k] for k in ("text_encoder", "vl", "pipeline")}
    largest = max(components, key=components.get)
    return figure(
        above["staged"],
        components[largest],
        "staged peak / largest component",
        "<=1.15",
        unit="MB above baseline",
        largest_component=largest,
        component_mb={k: round(v, 1) for k, v in components.items()},
        all_resident_peak_mb=round(above["resident"], 1),
        staged_peak_mb=round(above["staged"], 1),
    )


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
    from ..maths.stats import (
        NORMALIZATION_MODES,
        OUTLIER_MODES,
        ReferenceStats,
        find_sinks,
        get_outlier_dimensions,
        mask_outlier_dimensions,
        normalize,
    )

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


def machine() -> dict[str, Any]:
    """The machine and library versions every bench result states."""
    return {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_average_1m": round(os.getloadavg()[0], 2),  # other processes on the machine when the run began
        },
        "versions": library_versions(),
    }


def studio_figures(preset: str, work: Path, repeats: int) -> dict[str, Any]:
    """The studio against the work it cannot avoid, interleaved: a re-render (changed alpha) against the DiT + VAE
    time of that image, and a first image (new prompt, nothing cached) against `Generator.generate` of the same
    work on warm models. Every model call runs on the studio's worker thread (`on_worker`): torch's CPU thread pools
    belong to the thread that calls, and two pools on the same cores slow each other."""
    from fastapi.testclient import TestClient

    from ..conditioning.source import Reference
    from ..studio.app import create_app

    cfg = bench_config(preset)
    image = reference_image(preset)
    reference_image(preset).save(work / "reference.png")
    warm = Generator(cfg, cache=TensorCache(work / "generate-cache"))
    app = create_app(cfg, work / "studio", cache=TensorCache(work / "studio-cache"))
    with TestClient(app, base_url="http://127.0.0.1") as client:  # a loopback Host, as a browser on this machine
        studio = client.app.state.studio
        upload = client.post("/api/uploads", files={"file": ("r.png", (work / "reference.png").read_bytes())})
        ref = upload.json()["path"]

        def served(prompt: str, alpha: float) -> tuple[float, dict[str, Any]]:
            t0 = time.perf_counter()
            job = client.post("/api/generate", json={"prompt": prompt, "image": ref, "settings": {"vl.alpha": alpha}})
            job_id = job.json()["id"]
            client.get(f"/api/jobs/{job_id}/events")  # returns when the job has finished
            png = client.get(f"/api/jobs/{job_id}/image")
            seconds = time.perf_counter() - t0
            done = client.get(f"/api/jobs/{job_id}").json()
            if done["status"] != "done" or png.status_code != 200:
                raise RuntimeError(f"studio job {job_id}: {done['status']} {done['error']}")
            return seconds, done

        served(PROMPT, 0.3)
        on_worker(studio, lambda: warm.generate("warm-up", Reference(image)))  # every model loaded on both sides
        cond, _ = studio.generator.condition(PROMPT, Reference(image))  # cached: no pass
        pipe, g = studio.generator.components.pipeline, cfg.generation
        rerender, dit, alone, passes = [], [], [], {"vl": 0, "text": 0}
        first, generate, first_passes = [], [], {"studio": {"vl": 0, "text": 0}, "generate": {"vl": 0, "text": 0}}
        for i in range(repeats):
            alpha = 0.35 + 0.5 * i / max(1, repeats)
            seconds, done = served(PROMPT, alpha)
            rerender.append(seconds)
            dit.append(done["result"]["timings_s"]["denoise"])  # the DiT + VAE time of that image
            passes = {k: passes[k] + done["forward_passes"][k] for k in passes}
            alone.append(on_worker(studio, lambda a=alpha: denoise(pipe, [cond.at(a)], g, [g.seed])))
            seconds, done = served(f"{PROMPT}, studio {i}", 0.3)
            first.append(seconds)
            before = warm.components.forward_passes()
            generate.append(on_worker(studio, lambda i=i: warm.generate(f"{PROMPT}, generate {i}", Reference(image))))
            after = warm.components.forward_passes()
            for k in ("vl", "text"):
                first_passes["studio"][k] += done["forward_passes"][k]
                first_passes["generate"][k] += after[k] - before[k]
    re_s, dit_s = statistics.median(rerender), statistics.median(dit)
    first_s, gen_s = statistics.median(first), statistics.median(generate)
    return {
        "studio_rerender_vs_dit": figure(
            re_s,
            dit_s,
            "changed alpha to PNG served / DiT + VAE",
            "<=1.05",
            unit="s per image",
            rerender_forward_passes=passes,
            zero_passes=passes == {"vl": 0, "text": 0},
            denoise_alone_s=round(statistics.median(alone), 5),
        ),
        "studio_first_image_vs_generate": figure(
            first_s,
            gen_s,
            "studio first image / warm generate",
            "<=1.05",
            unit="s per image",
            forward_passes=first_passes,  # both sides run the same passes (nothing cached)
        ),
    }


def on_worker(studio: Any, fn: Callable[[], Any]) -> float:
    """Wall time of `fn` run as a job on the studio's worker thread, where its own jobs run."""
    job = studio.submit("bench", {}, lambda _: {"seconds": timed_call(fn)})
    with studio.changed:
        studio.changed.wait_for(lambda: job.finished)
    if job.status != "done":
        raise RuntimeError(f"bench job failed: {job.error}")
    return job.result["seconds"]


def cli_help(repeats: int) -> dict[str, Any]:
    """`cli_help_vs_typer`: median wall time of `python -m llm_dit --help` / of `python -c "import typer, rich"`,
    each a fresh process, run in turn (A B A B ...) after one warm-up of each."""
    import subprocess
    import sys

    def run(command: list[str]) -> Callable[[], Any]:
        return lambda: subprocess.run(command, capture_output=True, check=True)

    ours, floor = run([sys.executable, "-m", "llm_dit", "--help"]), run([sys.executable, "-c", "import typer, rich"])
    ours(), floor()
    pairs = [(timed_call(ours), timed_call(floor)) for _ in range(repeats)]
    return figure(
        statistics.median(a for a, _ in pairs), statistics.median(b for _, b in pairs),
        "llm-dit --help / python -c 'import typer, rich' (fresh processes, wall seconds)", "<=2.5",
    )  # fmt: skip


def _studio(preset: str, tmp: Path, repeats: int) -> dict[str, Any]:
    (tmp / "studio").mkdir()
    return studio_figures(preset, tmp / "studio", repeats)


FIGURE_GROUPS: dict[str, tuple[str, Callable[[str, Path, int], dict[str, Any]]]] = {
    "pipeline": ("pipeline overhead vs diffusers",
                 lambda p, _, r: {"pipeline_overhead_vs_diffusers": pipeline_overhead(p, r)}),
    "early_exit": ("extraction early exit", lambda p, _, r: {"extraction_early_exit_speedup": early_exit(p, r)}),
    "sweep": ("sweep vs naive, floor and cached rerun", sweep_figures),
    "eval": ("eval vs floor", lambda p, t, r: {"eval_vs_floor": eval_figure(p, t, r)}),
    "batched": ("batched vs sequential", lambda p, _, r: {"batched_vs_sequential": batched(p, r)}),
    "compiled": ("compiled DiT vs eager", lambda p, _, r: {"compiled_vs_eager": compiled(p, r)}),
    "memory": ("peak memory", lambda p, _, r: {"peak_memory_ratio": peak_memory(p)}),
    "studio": ("studio re-render and first image", _studio),
    "cli": ("CLI start", lambda _, __, r: {"cli_help_vs_typer": cli_help(r)}),
}  # fmt: skip
"""Each group of figures `run_bench` measures (in this order; `only` limits it): what it says, and the figures."""
FIGURES = tuple(FIGURE_GROUPS)


def run_bench(
    preset: str = "small",
    repeats: int = 5,
    progress: Callable[[str], None] | None = None,
    only: list[str] | None = None,
) -> dict[str, Any]:
    """Every figure for `preset` (or those of the groups `only`, names of `FIGURES`); see the module docstring."""
    say = progress or (lambda _: None)
    t0 = time.perf_counter()
    out: dict[str, Any] = {"preset": preset, "repeats": repeats, "date": date.today().isoformat(), **machine()}
    for name in only or ():
        check_choice(name, FIGURES, "figure group")
    wanted = set(only or FIGURES)
    with tempfile.TemporaryDirectory() as tmp:
        for name, (label, measure) in FIGURE_GROUPS.items():
            if name in wanted:
                say(label)
                out |= measure(preset, Path(tmp), repeats)
    out["wall_time_s"] = round(time.perf_counter() - t0, 1)
    return out


# ------------------------------------------------------------------------------------------- real-size memory

REAL_SIZE = "real-size"
# The real configurations (FACTS.md §1), applied to the tiny zoo's config files: sizes change, token ids and the
# tokenizer stay the zoo's (they index into the real vocabulary size), so every loader and code path is the real one.
_QWEN3_4B = {
    "vocab_size": 151936, "hidden_size": 2560, "intermediate_size": 9728, "num_hidden_layers": 36,
    "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "rms_norm_eps": 1e-6,
}  # fmt: skip
REAL_CONFIGS: dict[str, dict[str, Any]] = {
    "zimage/text_encoder": {**_QWEN3_4B, "max_position_embeddings": 40960, "tie_word_embeddings": True},
    "zimage/transformer": {
        "dim": 3840, "n_layers": 30, "n_refiner_layers": 2, "n_heads": 30, "n_kv_heads": 30, "cap_feat_dim": 2560,
        "axes_dims": [32, 48, 48], "axes_lens": [1536, 512, 512],
    },
    "zimage/vae": {"block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "norm_num_groups": 32},
    "qwen3-vl": {
        "tie_word_embeddings": True,
        "text_config": {
            **_QWEN3_4B, "max_position_embeddings": 262144,
            "rope_parameters": {"rope_type": "default", "rope_theta": 5e6, "mrope_section": [24, 20, 20],
                                "mrope_interleaved": True},
        },
        "vision_config": {
            "depth": 24, "hidden_size": 1024, "intermediate_size": 4096, "num_heads": 16, "out_hidden_size": 2560,
            "num_position_embeddings": 2304, "deepstack_visual_indexes": [5, 11, 17],
        },
    },
}  # fmt: skip
REAL_DISK_GB = 32.0  # 29.4 GB of bf16 safetensors (research-realckpt §6.2) and a margin
REAL_RAM_GIB = 13.0  # staged peak ≈ 11.9 GiB (the DiT stage) and the VAE decode
REAL_SIZE_PIXELS = 256  # output side: 256 DiT image tokens
SHARD_BYTES = 2 << 30


def meta_model(component: str, config: dict[str, Any]) -> torch.nn.Module:
    """`component` (a key of `REAL_CONFIGS`) built from its config dict on the meta device: names and shapes only."""
    from diffusers import AutoencoderKL, ZImageTransformer2DModel
    from transformers import AutoConfig, AutoModel, Qwen3VLForConditionalGeneration

    with torch.device("meta"):
        if component == "zimage/transformer":
            return ZImageTransformer2DModel.from_config(config)
        if component == "zimage/vae":
            return AutoencoderKL.from_config(config)
        cfg = AutoConfig.for_model(**config)
        return Qwen3VLForConditionalGeneration(cfg) if component == "qwen3-vl" else AutoModel.from_config(cfg)


def _merged(config: dict[str, Any], updates: dict[str, Any]) -> dict[str, Any]:
    out = dict(config)
    for key, value in updates.items():
        out[key] = _merged(out.get(key, {}), value) if isinstance(value, dict) and key != "rope_parameters" else value
    return out


def real_config(component: str, config: dict[str, Any]) -> dict[str, Any]:
    """`config` (a tiny zoo component's) with the real sizes of `REAL_CONFIGS`; per-layer lists the zoo's depth
    wrote (`layer_types`) are dropped so transformers derives them for the real depth."""
    out = _merged(config, REAL_CONFIGS[component])
    for section in (out, out.get("text_config", {})):
        section.pop("layer_types", None)
    return out


def _unique_tensors(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """`{name: shape}` of the persistent tensors a checkpoint stores, tied weights once (transformers re-ties)."""
    tied = set(dict(model.named_parameters(remove_duplicate=False))) - set(dict(model.named_parameters()))
    return {name: tuple(t.shape) for name, t in model.state_dict().items() if name not in tied}


def _fill(name: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """Random bf16 weights of a trained model's scale: zero biases, unit norms, N(0, 0.02) elsewhere (made in row
    blocks so the float32 temporary of the 742 MiB embedding never exists whole)."""
    if name.endswith("bias"):
        return torch.zeros(shape, dtype=torch.bfloat16)
    if len(shape) == 1 and "norm" in name:
        return torch.ones(shape, dtype=torch.bfloat16)
    out = torch.empty(shape, dtype=torch.bfloat16)
    for block in out.view(shape[0], -1).split(4096) if len(shape) else [out]:
        block.copy_(torch.randn(block.shape, generator=gen) * 0.02)
    return out


def write_random_checkpoint(component: str, config: dict[str, Any], folder: Path, stem: str) -> int:
    """Random bf16 weights for `config` in `folder`, written shard by shard (one shard in memory at a time) with the
    index `from_pretrained` reads; returns the bytes written. The model is built on the meta device for its names."""
    from safetensors.torch import save_file

    model = meta_model(component, config)
    tensors = _unique_tensors(model)
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, shape in tensors.items():
        nbytes = 2 * int(torch.Size(shape).numel())
        if shards[-1] and size + nbytes > SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += nbytes
    gen = torch.Generator().manual_seed(0)
    weight_map, total = {}, 0
    for i, shard in enumerate(shards, 1):
        file = f"{stem}-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file({n: _fill(n, s, gen) for n, s in shard}, folder / file, metadata={"format": "pt"})
        weight_map |= {n: file for n, _ in shard}
        total += (folder / file).stat().st_size
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / f"{stem}.safetensors.index.json").write_text(json.dumps(index, indent=1))
    return total


def build_real_size(work: Path, scale: str = "real", progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """`work/zimage` and `work/qwen3-vl` with random bf16 weights: the tiny zoo's folders (tokenizer, scheduler,
    processor, configs) with the configurations of `REAL_CONFIGS` (`scale="tiny"`: the zoo's own sizes, the dry
    path that tests this code). A finished build is marked by `work/built.json` and reused."""
    marker = work / "built.json"
    if marker.is_file() and json.loads(marker.read_text()).get("scale") == scale:
        return json.loads(marker.read_text())
    say = progress or (lambda _: None)
    if work.exists():
        shutil.rmtree(work)
    zoo = zoo_dir("tiny")
    shutil.copytree(zoo, work, ignore=shutil.ignore_patterns("*.safetensors", "*.safetensors.index.json"))
    written: dict[str, Any] = {}
    for component in REAL_CONFIGS:
        folder = work / component
        config = json.loads((folder / "config.json").read_text())
        if scale == "real":
            config = real_config(component, config)
            (folder / "config.json").write_text(json.dumps(config, indent=2))
        say(f"writing random bf16 weights: {component}")
        t0 = time.perf_counter()
        stem = "model" if component in ("qwen3-vl", "zimage/text_encoder") else "diffusion_pytorch_model"
        nbytes = write_random_checkpoint(component, config, folder, stem)
        written[component] = {"gb": round(nbytes / 1e9, 3), "write_s": round(time.perf_counter() - t0, 1)}
    result = {"scale": scale, "components": written, "total_gb": round(sum(w["gb"] for w in written.values()), 2)}
    marker.write_text(json.dumps(result, indent=2))
    return result


def _meminfo_gib(field: str) -> float:
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field)) / 2**20


def check_real_size(work: Path) -> dict[str, float]:
    """Refuse (one line) before anything is written when `work`'s disk or the free RAM cannot hold the bench."""
    work.mkdir(parents=True, exist_ok=True)
    built = (work / "built.json").is_file()
    disk = shutil.disk_usage(work).free / 1e9
    ram = _meminfo_gib("MemAvailable")
    if (disk < REAL_DISK_GB and not built) or ram < REAL_RAM_GIB:
        raise UserError(
            f"bench --preset {REAL_SIZE} needs {REAL_DISK_GB:g} GB free disk in {work} (has {disk:.1f}) and "
            f"{REAL_RAM_GIB:g} GiB available RAM (has {ram:.1f}); it writes 29.4 GB of random bf16 weights and runs "
            f"the 4 B encoders and the 6 B DiT one at a time on the CPU"
        )
    return {"disk_free_gb": round(disk, 1), "ram_available_gib": round(ram, 1)}


def real_size_overrides(work: Path) -> dict[str, Any]:
    """The low-memory bf16 pipeline on CPU at a small output size (2 steps) on the built folders."""
    return {
        "models.zimage": str(work / "zimage"),
        "models.vl": str(work / "qwen3-vl"),
        "encoder.device": "cpu",
        "vl.device": "cpu",
        "generation.device": "cpu",
        "encoder.dtype": "bfloat16",
        "vl.dtype": "bfloat16",
        "generation.dtype": "bfloat16",
        "generation.width": REAL_SIZE_PIXELS,
        "generation.height": REAL_SIZE_PIXELS,
        "generation.steps": 2,
        "vl.image_check": False,
    }


def _gib(mb: float) -> float:
    return round(mb / 1024, 2)


def run_real_size(
    work: Path, scale: str = "real", progress: Callable[[str], None] | None = None, threads: int | None = None
) -> dict[str, Any]:
    """The `real-size` preset: check disk and RAM (`check_real_size`; `scale="tiny"` skips it), build the folders,
    then peak RSS above the post-import baseline of each stage alone (text encoder, VL model, DiT + VAE), each in
    a fresh process, and of the whole low-memory generation, against the sum of the stages. Each stage is probed
    twice: as it runs (memory-mapped weights count only once read) and with every weight read first
    (`touch_weights`: what a GPU holds, since moving a model there copies all of it), with the weights' size."""
    say = progress or (lambda _: None)
    t0 = time.perf_counter()
    out: dict[str, Any] = {"preset": REAL_SIZE, "scale": scale, "date": date.today().isoformat(), **machine()}
    out["machine"]["ram_total_gib"] = round(_meminfo_gib("MemTotal"), 1)
    out["resources"] = check_real_size(work) if scale == "real" else {}
    out["build"] = build_real_size(work, scale, say)
    overrides = real_size_overrides(work)
    stages: dict[str, Any] = {}
    for what in (*STAGES, "staged"):
        say(f"peak memory: {what}")
        m = memory_probe(overrides, what, threads)
        stages[what] = {"peak_above_base_gib": _gib(m["peak_mb"] - m["base_mb"]), "seconds": m["seconds"]}
        if what in STAGES:
            say(f"peak memory: {what}, every weight read first")
            w = memory_probe(overrides, what + WEIGHTS, threads)
            stages[what] |= {
                "weights_gib": _gib(w["weights_mb"]),
                "all_weights_peak_above_base_gib": _gib(w["peak_mb"] - w["base_mb"]),
            }
    out["stages"] = stages
    out["sum_of_stages_gib"] = round(sum(stages[s]["peak_above_base_gib"] for s in STAGES), 2)
    out["staged_vs_sum"] = figure(
        stages["staged"]["peak_above_base_gib"], out["sum_of_stages_gib"], "staged peak / sum of stages"
    )
    all_weights = {s: stages[s]["all_weights_peak_above_base_gib"] for s in STAGES}
    out["all_weights_sum_gib"] = round(sum(all_weights.values()), 2)
    out["all_weights_staged_peak_gib"] = max(all_weights.values())  # stages run one at a time, each released
    out["output_size"] = REAL_SIZE_PIXELS
    out["wall_time_s"] = round(time.perf_counter() - t0, 1)
    return out
