"""llm-dit: training-free reference-image conditioning for Z-Image through Qwen3-VL hidden states.

The Python API a notebook uses is the one the CLI calls; the main names are importable from here (loaded on first
use, so `import llm_dit` stays light):

    from llm_dit import Generator, load_config
    gen = Generator(load_config(profile="rtx4090"))
    result = gen.generate("a lighthouse", PIL.Image.open("style.png"))  # or Reference(image, neutral=...), ...
"""

import logging
import os
from importlib import import_module

# The one library-output policy (`models.quiet_libraries`) must hold from the first import: diffusers and the optional
# quantisation backends (torchao, bitsandbytes) log warnings while being imported, before any model loads; on a CPU
# with AVX512-BF16, importing bitsandbytes asks `kernels` for a Hub kernel, which warns in offline mode (so what is
# printed would depend on the CPU). A user's own DIFFUSERS_VERBOSITY / TRANSFORMERS_VERBOSITY still wins.
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
for _name in ("torchao", "bitsandbytes", "kernels", "torch.utils._pytree"):
    logging.getLogger(_name).setLevel(logging.ERROR)

_EXPORTS = {
    "load_config": "config.settings",
    "Config": "config.settings",
    "with_overrides": "config.settings",
    "Generator": "generation.generate",
    "denoise": "generation.render",
    "Components": "generation.components",
    "Text": "conditioning.source",
    "Reference": "conditioning.source",
    "VLRows": "conditioning.source",
    "Steering": "conditioning.source",
    "CaptionRows": "conditioning.source",
    "TextEncoder": "models.text",
    "VLEmbeddingExtractor": "models.vl",
    "blend": "maths.blend",
    "BLEND_MODES": "maths.blend",
    "ReferenceStats": "maths.refstats",
    "SweepSpec": "sweep.spec",
    "Run": "sweep.run",
    "RunResult": "sweep.run",
    "run_sweep": "experiment.run",
    "run_experiment": "experiment.run",
    "ExperimentResult": "experiment.run",
    "checked_plan": "experiment.run",
    "CheckedPlan": "sweep.runner",
    "RunOptions": "sweep.runner",
    "Session": "sweep.runner",
    "Scoring": "scoring.scorer",
    "SweepDir": "sweep.dir",
    "UserError": "core.errors",
}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name == "__version__":  # importlib.metadata costs a CLI start ~0.1 s: read only when asked for
        from importlib import metadata

        return metadata.version("llm-dit")
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'llm_dit' has no attribute '{name}'")
