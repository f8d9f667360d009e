"""How `llm-dit bench` measures: speed and memory as ratios of two measurements taken side by side in one run.

Every timing is the median of `repeats` runs after one warm-up, so a ratio holds on a noisy machine even when the
absolute numbers do not. Memory figures come from fresh subprocesses (`memory_probe`: peak RSS over the RSS after
imports), so one measurement cannot inherit another's allocations. Each figure states its ratio as
`numerator / denominator` (`figure`). The figures are in `bench.figures`, the model-free `blend-cost` preset in
`bench.blend_cost`, the real models' memory in `bench.real_size`.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from PIL import Image

from ..config.settings import Config, load_config
from ..generation.records import library_versions
from ..models.zoo import model_settings

SIZES = {"tiny": 64, "small": 128}


STAGES = ("text_encoder", "vl", "pipeline")  # the components a generation runs one after another


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
    work. The sweep figures measure it on as well, their floor counting the probe's VL pass (`figures.floor_time`)."""
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
    probe = [sys.executable, "-m", "llm_dit.bench.memory_probe", *args]  # the program is bench/memory_probe.py
    out = subprocess.run(probe, capture_output=True, text=True, env=env)
    if out.returncode:
        raise RuntimeError(f"memory probe '{what}' failed: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])
