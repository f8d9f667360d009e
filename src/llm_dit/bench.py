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
  scoring, bootstrap statistics, eval.json, leaderboard and report.html) / its floor (the generation floor as above
  plus the metric forward passes: a fresh scorer loading each metric model once and embedding each distinct image
  and prompt once); target <= 1.10.
- `cache_rerun_forward_passes` (must be 0) and `cache_rerun_time_ratio`: a rerun into a new directory / the first.
- `batched_vs_sequential`: N images in one diffusers call / N calls.
- `peak_memory_ratio`: peak of a low-memory reference-conditioned generation / the largest single component;
  target <= 1.15 (all-resident and staged peaks reported too).
"""

from __future__ import annotations

import itertools
import json
import os
import platform
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

from .cache import TensorCache
from .config import Config, load_config
from .generate import Generator
from .hooks import layer_position
from .models import load_model, resolve_device, resolve_dtype
from .records import library_versions
from .render import denoise
from .sweep import SweepSpec, expand, resolve_spec
from .zoo import model_settings

SIZES = {"tiny": 64, "small": 128}
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


def bench_config(preset: str, **overrides: Any) -> Config:
    """The zoo preset's models at its size, 4 steps. The image-dependence check (`vl.image_check`) is off: it is
    a second extraction the naive workflow and the floors do not do, so with it the figures would compare unequal
    work."""
    size = SIZES[preset]
    return load_config(
        overrides={
            **model_settings(preset),
            "generation.width": size,
            "generation.height": size,
            "generation.steps": 4,
            "vl.image_check": False,
            **overrides,
        }
    )


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

    from .blend import blend

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
    from .experiment import run_sweep

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
            naive_run(cfg, image, run["settings"]["vl.hidden_layer"], run["settings"]["vl.alpha"])

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
    from .blend import blend

    gen = Generator(cfg, cache=False)
    runs = expand(spec)
    layers = sorted({r["settings"]["vl.hidden_layer"] for r in runs})
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
    conds = [blend(text, rows[r["settings"]["vl.hidden_layer"]], cfg.vl.blend, r["settings"]["vl.alpha"]) for r in runs]
    for c in conds:
        t0 = time.perf_counter()
        denoise(gen.components.pipeline, [c], g, [g.seed])
        total += time.perf_counter() - t0
    return total


EVAL_ALPHAS = (0.3, 0.6)
EVAL_PROMPTS = 2


def eval_figure(preset: str, work: Path, repeats: int) -> dict[str, Any]:
    """An eval against its floor (`eval_floor_time`), interleaved, each a median after a warm-up."""
    from .evalmethods import Method, parse_method
    from .evaluate import run_eval
    from .scorer import _shared_embedder
    from .suite import load_suite

    cfg = bench_config(preset)
    suite = load_suite("builtin", references=1, prompts=EVAL_PROMPTS)
    methods = [Method(name="text", kind="text"), *parse_method("vl:alpha=" + ",".join(map(str, EVAL_ALPHAS)))]
    count = itertools.count()

    def evaluate() -> None:
        i = next(count)
        _shared_embedder.cache_clear()  # metric models are kept per process: both sides load them
        run_eval(cfg, suite, methods, work / f"eval{i}", metric_models_spec="tiny", cache=TensorCache(work / f"ec{i}"))

    evaluate(), eval_floor_time(cfg, suite, work)  # warm-up
    eval_t, floor_t = [], []
    for _ in range(repeats):
        eval_t.append(timed_call(evaluate))
        floor_t.append(eval_floor_time(cfg, suite, work))
    runs = EVAL_PROMPTS * (1 + len(EVAL_ALPHAS))
    return figure(statistics.median(eval_t), statistics.median(floor_t), "eval / floor", "<=1.10",
                  unit=f"s for {runs} runs, scored")  # fmt: skip


def eval_floor_time(cfg: Config, suite: Any, work: Path) -> float:
    """The irreducible work of `eval_figure`'s eval, each piece timed alone: load each model once, per prompt one
    VL forward pass and one text encode, the generations (text, then each alpha) from precomputed conditioning; then
    a fresh metric scorer (each metric model loaded once, each distinct image and prompt embedded once, batched)."""
    from .blend import blend
    from .files import load_image
    from .scorer import MetricScorer, ScoreItem, _shared_embedder

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
    return total + time.perf_counter() - t0


def batched(preset: str, repeats: int, n: int = 4) -> dict[str, Any]:
    """N images in one diffusers call against N calls."""
    gen = Generator(bench_config(preset), cache=False)
    emb = gen.encode(PROMPT).embeddings
    g = gen.config.generation
    seeds = list(range(n))
    sequential = median_time(lambda: [denoise(gen.components.pipeline, [emb], g, [s]) for s in seeds], repeats)
    together = median_time(lambda: denoise(gen.components.pipeline, [emb] * n, g, seeds), repeats)
    return figure(together, sequential, "one call / N calls", unit=f"s for {n} images", batch=n)


MEMORY_PROBE = """
import json, sys
import torch
import diffusers.pipelines.z_image.pipeline_z_image
import transformers.models.qwen3.modeling_qwen3, transformers.models.qwen3_vl.modeling_qwen3_vl
from llm_dit.bench import PROMPT, bench_config, reference_image
from llm_dit.generate import Generator
from llm_dit.render import denoise
def status_mb(field):  # VmRSS now, VmHWM peak (per address space: unlike ru_maxrss, not inherited via fork)
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field)) / 1024
preset, what = sys.argv[1], sys.argv[2]
torch.set_num_threads(1)
gen = Generator(bench_config(preset, **{"models.low_memory": what == "staged"}), cache=False)
gen.components.text_encoder, gen.components.vl  # tokenizers and image processor: not part of any component's weights
image = reference_image(preset)
base = status_mb("VmRSS")
if what == "text_encoder":
    gen.encode(PROMPT)
elif what == "vl":
    gen.extract(image, PROMPT)
elif what == "pipeline":
    g = gen.config.generation
    denoise(gen.components.pipeline, [torch.zeros(32, gen.components.caption_width)], g, [g.seed])
else:
    gen.generate(PROMPT, image)
print(json.dumps({"base_mb": base, "peak_mb": status_mb("VmHWM")}))
"""


def memory_probe(preset: str, what: str) -> dict[str, float]:
    env = os.environ | {"PYTHONWARNINGS": "ignore"}
    out = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, preset, what], capture_output=True, text=True, env=env, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def peak_memory(preset: str) -> dict[str, Any]:
    """Peak RSS above the post-import baseline of a low-memory reference-conditioned generation, against the
    largest single component's peak when it is loaded and run alone (its weights are paged in as they are used,
    so a component's resident size is measured while it works)."""
    peaks = {name: memory_probe(preset, name) for name in ("text_encoder", "vl", "pipeline", "staged", "resident")}
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


def run_bench(preset: str = "small", repeats: int = 5, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Every figure for `preset`; see the module docstring."""
    say = progress or (lambda _: None)
    t0 = time.perf_counter()
    out: dict[str, Any] = {
        "preset": preset,
        "repeats": repeats,
        "date": date.today().isoformat(),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()},
        "versions": library_versions(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        say("pipeline overhead vs diffusers")
        out["pipeline_overhead_vs_diffusers"] = pipeline_overhead(preset, repeats)
        say("extraction early exit")
        out["extraction_early_exit_speedup"] = early_exit(preset, repeats)
        say("sweep vs naive, floor and cached rerun")
        out |= sweep_figures(preset, Path(tmp), repeats)
        say("eval vs floor")
        out["eval_vs_floor"] = eval_figure(preset, Path(tmp), repeats)
        say("batched vs sequential")
        out["batched_vs_sequential"] = batched(preset, repeats)
        say("peak memory")
        out["peak_memory_ratio"] = peak_memory(preset)
    out["wall_time_s"] = round(time.perf_counter() - t0, 1)
    return out
