"""Optional human-preference quality scores, used only when their package is *usable* (imports), not merely installed.

- ``image_reward``: ImageReward (``pip install image-reward``, module ``ImageReward``; ``ImageReward.load(name)``,
  ``model.score(prompt, image)``; unbounded, ~N(0, 1) over its training set). ImageReward 1.5 does not import
  under transformers 5 (``find_pruneable_heads_and_indices`` is gone; zai-org/ImageReward#122).
- ``hpsv2``: HPSv2 (``pip install hpsv2``; ``hpsv2.score(images, prompt, hps_version)``; ≈ 0.2–0.3). Its pins
  (protobuf < 4, pytest 7.2, torchvision) conflict with this project: install it in a separate environment.

``reward_status()`` imports each package once per process, inside ``try/except Exception``, and gives
``{metric: None}`` when usable or ``{metric: "one-line reason"}`` when not; an unusable metric is absent from the
results (never NaN-filled) and its reason is recorded.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from functools import cache
from typing import Any

import torch

from ..core.errors import UserError
from .embedders import to_pil
from .image_metrics import ImageLike

__all__ = ["REWARD_MODELS", "RewardModel", "reward_status"]

# metric -> (module, default model name, install hint)
REWARD_MODELS: dict[str, tuple[str, str, str]] = {
    "image_reward": ("ImageReward", "ImageReward-v1.0", "pip install image-reward"),
    "hpsv2": ("hpsv2", "v2.1", "pip install hpsv2"),
}


@cache
def _probe(module: str) -> str | None:
    """None when ``module`` imports, else the one-line reason it does not."""
    try:
        importlib.import_module(module)
    except Exception as e:  # any import failure means: not usable here
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return f"{module} is not usable here: {type(e).__name__}: {first}"[:300]
    return None


def reward_status() -> dict[str, str | None]:
    """``{metric: None if usable else the one-line reason}`` for every optional quality metric."""
    return {name: _probe(module) for name, (module, _, _) in REWARD_MODELS.items()}


class RewardModel:
    """One usable quality scorer, loaded once: ``score(images, prompts) -> list[float]``."""

    def __init__(self, metric: str, name: str | None = None, device: str | torch.device = "cpu") -> None:
        module_name, default, hint = REWARD_MODELS[metric]
        reason = _probe(module_name)
        if reason is not None:
            raise UserError(f"{metric} needs a usable {module_name} ({hint}): {reason}")
        self.metric = metric
        self.name = name or default
        self.device = str(device)
        self.module: Any = importlib.import_module(module_name)
        self.model: Any = self.module.load(self.name, device=self.device) if metric == "image_reward" else None

    @torch.no_grad()
    def score(self, images: Sequence[ImageLike], prompts: Sequence[str]) -> list[float]:
        """The score of each image for its prompt (higher = better)."""
        out: list[float] = []
        for image, prompt in zip(images, prompts, strict=True):
            pil = to_pil(image)
            if self.metric == "image_reward":
                out.append(float(self.model.score(prompt, pil)))
            else:
                value = self.module.score([pil], prompt, hps_version=self.name)
                out.append(float(value[0] if isinstance(value, list | tuple) else value))
        return out
