"""The figures of `llm-dit bench` (`run_bench`), each a ratio of two measurements taken side by side
(`bench.harness`):

- `pipeline_overhead_vs_diffusers`: our text-to-image (no cache) / diffusers' `ZImagePipeline(prompt=...)` on the
  same loaded modules; target <= 1.02.
- `extraction_early_exit_speedup`: full VL forward with all hidden states and logits / our layer -6 extraction;
  reported with the fraction of decoder layers that still run.
- `sweep_speedup_vs_naive`: the naive workflow (per run: load every model, full forwards, generate) / a 12-run
  sweep with `vl.image_check` on; target >= 3.
- `sweep_vs_floor`: that sweep / its floor (load each model once, the unique forward passes with the probe's VL
  pass per unique extraction, the generations, each timed alone); target <= 1.03. Both also with the check off
  (`sweep_speedup_vs_naive_no_image_check`, `sweep_vs_floor_no_image_check`), so its cost shows.
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
  The request is a draft, as the page's live re-render sends it (written without fsync until pinned).
- `studio_first_image_vs_generate`: the studio's first image of a new reference + prompt (models warm, nothing
  cached), request to PNG served / `Generator.generate` of the same work in a warm process; target <= 1.05. The
  request is the page's Generate: a saved image, written durably (fsynced). Each is a new prompt with the same
  reference file (both sides run the VL and text passes again; the studio decodes the file once, `read_image`).
- `cli_help_vs_typer`: the wall time of `llm-dit --help` in a fresh process / that of `python -c "import typer,
  rich"` (the CLI framework's own floor), run in turn; target <= 2.5. Reported with the `--help` of a bare typer app
  of the same commands (`bench.typer_floor`: typer's rich help alone) and llm-dit's ratio to it.
"""

from __future__ import annotations

import itertools
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

from ..conditioning.imagedep import probe_image
from ..config.settings import Config
from ..core.cache import TensorCache
from ..core.errors import check_choice
from ..generation.generate import Generator
from ..generation.render import denoise
from ..models.hooks import layer_position
from ..models.loading import load_model, resolve_device, resolve_dtype
from ..sweep.spec import SweepSpec, expand, resolve_spec
from .harness import (
    PROMPT,
    STAGES,
    bench_config,
    bench_overrides,
    figure,
    machine,
    median_time,
    memory_probe,
    reference_image,
    timed_call,
)


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
    """Sweep against the naive workflow, against its floor, and a cached rerun (each a median after a warm-up),
    with `vl.image_check` on (the figures' own names) and off (`..._no_image_check`), so the check's cost shows.
    The naive workflow runs no check either way; the floor counts the probe's VL pass when the check is on
    (`floor_time`)."""
    from ..experiment.run import run_sweep
    from ..sweep.runner import Session

    image_path = work / "reference.png"
    reference_image(preset).save(image_path)
    spec = sweep_spec(str(image_path))
    configs = {check: bench_config(preset, **{"vl.image_check": check}) for check in (True, False)}
    image = Image.open(image_path).convert("RGB")
    count = itertools.count()
    last: dict[str, Any] = {}

    def sweep(check: bool, cache_dir: Path | None = None) -> None:
        i = next(count)
        cache = TensorCache(cache_dir or work / f"cache{i}")
        last["summary"] = run_sweep(configs[check], spec, work / f"sweep{i}", session=Session(cache=cache))

    def naive() -> None:
        for run in expand(spec):
            naive_run(configs[False], image, run.settings["vl.hidden_layer"], run.settings["vl.alpha"])

    # interleaved, so a change in machine load between blocks cannot favour one side
    sweep(True), sweep(False), floor_time(configs[True], spec, image), naive()  # warm-up (sweep(True) fills cache0)
    sweep_t: dict[bool, list[float]] = {True: [], False: []}
    floor_t: dict[bool, list[float]] = {True: [], False: []}
    naive_t = []
    first: dict[str, Any] = {}  # the first timed checked sweep's summary (the cached rerun's reference)
    for i in range(repeats):
        for check in (True, False):
            sweep_t[check].append(timed_call(lambda check=check: sweep(check)))
            if check and not first:
                first = last["summary"]
            floor_t[check].append(floor_time(configs[check], spec, image))
        if i < max(1, repeats // 2):
            naive_t.append(timed_call(naive))
    sweep_s = {check: statistics.median(t) for check, t in sweep_t.items()}
    floor_s = {check: statistics.median(t) for check, t in floor_t.items()}
    naive_s = statistics.median(naive_t)
    rerun_s = median_time(lambda: sweep(True, work / "cache0"), repeats)
    rerun = last["summary"]
    probe = "with vl.image_check on: the floor counts one probe VL pass per unique extraction"
    out = {
        "sweep_speedup_vs_naive": figure(
            naive_s, sweep_s[True], "naive / sweep (image check on)", ">=3", unit="s for 12 runs", image_check=True
        ),
        "sweep_vs_floor": figure(
            sweep_s[True], floor_s[True], "sweep / floor (image check on)", "<=1.03", unit="s for 12 runs", floor=probe
        ),
        "sweep_speedup_vs_naive_no_image_check": figure(
            naive_s, sweep_s[False], "naive / sweep (image check off)", unit="s for 12 runs", image_check=False
        ),
        "sweep_vs_floor_no_image_check": figure(
            sweep_s[False], floor_s[False], "sweep / floor (image check off)", unit="s for 12 runs", image_check=False
        ),
        "cache_rerun_forward_passes": {
            "vl": rerun["vl_forward_passes"],
            "text": rerun["text_forward_passes"],
            "met": rerun["vl_forward_passes"] == rerun["text_forward_passes"] == 0,
            "first_run": {"vl": first["vl_forward_passes"], "text": first["text_forward_passes"]},
            "image_check": True,
        },
        "cache_rerun_time_ratio": figure(rerun_s, sweep_s[True], "rerun / first run (image check on)", unit="s"),
    }
    return out


def load_time(gen: Generator) -> float:
    """Seconds to load each model of `gen` once: the VL model, the text encoder and the pipeline (a floor's first
    piece; the components load on first use)."""
    t0 = time.perf_counter()
    gen.components.load("vl", "text_encoder", "pipeline", weights=True)
    return time.perf_counter() - t0


def floor_time(cfg: Config, spec: SweepSpec, image: Image.Image) -> float:
    """The irreducible work of the sweep, each piece timed alone: load each model once, one VL forward pass with
    all layers per unique extraction (here one: one image, one prompt), one text encode, and the generations from
    precomputed conditioning. With `vl.image_check` on, also the probe's VL forward pass per unique extraction
    (`imagedep.probe_image` of the reference's size, all layers): the check needs it and no cache can serve it
    on a first run; everything else of the check (its post-processing, blends and norms) is not counted."""
    from ..maths.blend import blend

    gen = Generator(cfg, cache=False)
    runs = expand(spec)
    layers = sorted({r.settings["vl.hidden_layer"] for r in runs})
    total = load_time(gen)
    t0 = time.perf_counter()
    rows, _, _, _ = gen.components.vl.hidden_rows(image, PROMPT, layers)
    if cfg.vl.image_check:
        gen.components.vl.hidden_rows(probe_image(image.size), PROMPT, layers)
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
    from ..scoring.scorer import Scoring, _shared_embedder
    from ..sweep.runner import Session

    cfg = bench_config(preset)
    suite = load_suite("builtin", references=1, prompts=EVAL_PROMPTS)
    methods = [Method(name="text", kind="text"), *parse_method("vl:alpha=" + ",".join(map(str, EVAL_ALPHAS)))]
    count = itertools.count()
    phases: list[dict[str, float]] = []

    def evaluate() -> None:
        i = next(count)
        _shared_embedder.cache_clear()  # metric models are kept per process: both sides load them
        result = run_eval(cfg, suite, methods, work / f"eval{i}", scoring=Scoring("tiny"),
                          session=Session(cache=TensorCache(work / f"ec{i}")))  # fmt: skip
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
    total = load_time(gen)
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

        def served(prompt: str, alpha: float, draft: bool) -> tuple[float, dict[str, Any]]:
            """Seconds from the request (as the page sends it: a live re-render is a draft) to its PNG served."""
            body = {"prompt": prompt, "image": ref, "settings": {"vl.alpha": alpha}, "draft": draft}
            t0 = time.perf_counter()
            job = client.post("/api/generate", json=body)
            job_id = job.json()["id"]
            client.get(f"/api/jobs/{job_id}/events")  # returns when the job has finished
            png = client.get(f"/api/jobs/{job_id}/image")
            seconds = time.perf_counter() - t0
            done = client.get(f"/api/jobs/{job_id}").json()
            if done["status"] != "done" or png.status_code != 200:
                raise RuntimeError(f"studio job {job_id}: {done['status']} {done['error']}")
            return seconds, done

        served(PROMPT, 0.3, draft=False)
        on_worker(studio, lambda: warm.generate("warm-up", Reference(image)))  # every model loaded on both sides
        cond, _ = studio.generator.condition(PROMPT, Reference(image))  # cached: no pass
        pipe, g = studio.generator.components.pipeline, cfg.generation
        rerender, dit, alone, passes = [], [], [], {"vl": 0, "text": 0}
        asked: dict[str, set[str]] = {"rerender": set(), "first": set()}  # a draft or a saved image, of each
        first, generate, first_passes = [], [], {"studio": {"vl": 0, "text": 0}, "generate": {"vl": 0, "text": 0}}
        for i in range(repeats):
            alpha = 0.35 + 0.5 * i / max(1, repeats)
            seconds, done = served(PROMPT, alpha, draft=True)
            rerender.append(seconds)
            asked["rerender"].add("draft" if done["request"].get("draft") else "saved")
            dit.append(done["result"]["timings_s"]["denoise"])  # the DiT + VAE time of that image
            passes = {k: passes[k] + done["forward_passes"][k] for k in passes}
            alone.append(on_worker(studio, lambda a=alpha: denoise(pipe, [cond.at(a)], g, [g.seed])))
            seconds, done = served(f"{PROMPT}, studio {i}", 0.3, draft=False)
            first.append(seconds)
            asked["first"].add("draft" if done["request"].get("draft") else "saved")
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
            request=" and ".join(sorted(asked["rerender"])),
            denoise_alone_s=round(statistics.median(alone), 5),
        ),
        "studio_first_image_vs_generate": figure(
            first_s,
            gen_s,
            "studio first image / warm generate",
            "<=1.05",
            unit="s per image",
            forward_passes=first_passes,  # both sides run the same passes (nothing cached)
            request=" and ".join(sorted(asked["first"])),
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
    each a fresh process, run in turn (A B A B ...) after one warm-up of each. Also timed in the same rounds, as
    `bare_typer_help_s`: the `--help` of a bare typer app shaped like llm-dit (`bench.typer_floor`), which is what
    typer's rich help costs by itself; `vs_bare_typer_help` is llm-dit's
    `--help` over it: what llm-dit adds."""

    def run(command: list[str]) -> Callable[[], Any]:
        return lambda: subprocess.run(command, capture_output=True, check=True)

    ours, floor = run([sys.executable, "-m", "llm_dit", "--help"]), run([sys.executable, "-c", "import typer, rich"])
    bare = run([sys.executable, "-m", "llm_dit.bench.typer_floor", "--help"])
    ours(), floor(), bare()
    rounds = [(timed_call(ours), timed_call(floor), timed_call(bare)) for _ in range(repeats)]
    ours_s, floor_s, bare_s = (statistics.median(r[i] for r in rounds) for i in range(3))
    return figure(
        ours_s, floor_s,
        "llm-dit --help / python -c 'import typer, rich' (fresh processes, wall seconds)", "<=2.5",
        bare_typer_help_s=round(bare_s, 4), vs_bare_typer_help=round(ours_s / bare_s, 3),
        bare_typer_help_vs_typer=round(bare_s / floor_s, 3),
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
