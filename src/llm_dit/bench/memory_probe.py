"""The memory probe: one stage of a generation in a fresh process, so no measurement inherits another's allocations.

`harness.memory_probe` runs it as `python -m llm_dit.bench.memory_probe OVERRIDES WHAT THREADS`: OVERRIDES the
config overrides (JSON), WHAT a stage of `harness.STAGES`, `staged` (the low-memory generation) or `resident` (the
generation with every component kept), a stage with the suffix `harness.WEIGHTS` reading all its weights first;
THREADS torch's CPU threads. It prints one JSON line: `base_mb` (RSS once everything is imported and the
tokenizers are loaded), `peak_mb`, `seconds` and `weights_mb` (with the suffix, else null).
"""

from __future__ import annotations

import json
import sys
import time
from importlib import import_module
from typing import Any

import torch

from ..config.settings import load_config
from ..generation.generate import Generator
from ..generation.render import denoise
from .harness import PROMPT, reference_image, stage_modules, touch_weights

PRELOADED = (
    "diffusers.pipelines.z_image.pipeline_z_image",
    "transformers.models.qwen3.modeling_qwen3",
    "transformers.models.qwen3_vl.modeling_qwen3_vl",
)
"""The libraries the stages run, imported before the baseline is read, so the peak above it is the stage's own."""


def status_mb(field: str) -> float:
    """`VmRSS` (now) or `VmHWM` (peak) of this process in MB: per address space, unlike `ru_maxrss`, which a forked
    child inherits."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field)) / 1024


def probe(overrides: dict[str, Any], what: str, threads: int) -> dict[str, Any]:
    """Base and peak RSS (MB), seconds and weights (MB) of `what` (see the module docstring) in this process."""
    what, _, touch = what.partition("+")
    torch.set_num_threads(threads)
    gen = Generator(load_config(overrides=overrides | {"models.low_memory": what == "staged"}), cache=False)
    gen.components.load("text_encoder", "vl")  # the tokenizers and image processor (no weights), before the base
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
    return {"base_mb": base, "peak_mb": status_mb("VmHWM"), "seconds": seconds, "weights_mb": weights}


def main(argv: list[str]) -> None:
    """`OVERRIDES WHAT THREADS` -> one JSON line on stdout."""
    overrides, what, threads = argv
    for name in PRELOADED:
        import_module(name)
    print(json.dumps(probe(json.loads(overrides), what, int(threads))))


if __name__ == "__main__":
    main(sys.argv[1:])
