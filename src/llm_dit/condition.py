"""Conditioning: the caption rows the DiT sees, made from text rows T and Qwen3-VL rows V.

`Conditioning.at(alpha)` is the one function of alpha that generation, alpha schedules and DiT injection all
evaluate, so every path blends with exactly the same mode, options and inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .blend import blend
from .errors import UserError


def parse_layer_weights(spec: str) -> dict[int, float]:
    """`"-6:0.7,-16:0.3"` -> `{-6: 0.7, -16: 0.3}`; a bare layer has weight 1 (`"-6"` -> `{-6: 1.0}`)."""
    out: dict[int, float] = {}
    for part in spec.split(","):
        layer, _, weight = part.strip().partition(":")
        try:
            out[int(layer)] = float(weight) if weight else 1.0
        except ValueError:
            raise UserError(f"bad layer weights '{spec}': expected LAYER[:WEIGHT],... e.g. -6:0.7,-16:0.3") from None
    if not out:
        raise UserError(f"bad layer weights '{spec}': no layers")
    return out


def combine_layers(rows: dict[int, torch.Tensor], weights: dict[int, float]) -> torch.Tensor:
    """`Σ_l w_l · V_l` over layers (all `[n, D]`, same rows), float32. Weights are used as given (not
    renormalised), so `-6:1.0` is exactly layer -6 and `-6:0.5,-8:0.5` is the mean of the two."""
    return torch.stack([w * rows[layer].float() for layer, w in weights.items()]).sum(0)


@dataclass
class Conditioning:
    """T plus whatever is blended into it. `combine(T, alpha)` gives the caption rows at `alpha`; `None` means
    plain text conditioning (the rows are T at every alpha)."""

    text: torch.Tensor
    source: str  # text | reference | vl_embeddings | embeddings | steer
    combine: Callable[[torch.Tensor, float], torch.Tensor] | None = None
    record: dict[str, Any] = field(default_factory=dict)
    _memo: dict[float, torch.Tensor] = field(default_factory=dict, repr=False)

    def at(self, alpha: float) -> torch.Tensor:
        """Caption rows at `alpha` (memoised: a schedule revisiting an alpha costs nothing)."""
        if self.combine is None:
            return self.text
        if alpha not in self._memo:
            self._memo[alpha] = self.combine(self.text, alpha)
        return self._memo[alpha]


def blend_conditioning(text: torch.Tensor, vl: torch.Tensor, mode: str, options: dict[str, Any]) -> Callable:
    """`alpha -> blend(T, V, mode, alpha, **options)`, checked once at alpha 0 so bad shapes or options fail here,
    not midway through denoising (`Generator.prepare` checks names and alphas earlier, before any model runs)."""
    blend(text, vl, mode, 0.0, **options)
    return lambda t, alpha: blend(t, vl, mode, alpha, **options)
