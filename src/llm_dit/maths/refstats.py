"""Reference statistics: the per-dimension mean and std of the text encoder's content rows at one layer, computed,
saved, loaded, and the packaged example.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import MappingProxyType

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as _st_save
from torch import Tensor

from ..core.files import atomic_write_bytes
from ..core.modes import SINK_RATIO
from ..core.numerics import check_number
from .sinks import check_sink_ratio, describe_sinks, find_sinks
from .stats import TENSOR_KEYS, StatsError, as_float_tensor, check_sequences, check_stats_tensors, mean_std, pooled_std

__all__ = [
    "SHIPPED_STATS_FILE",
    "ReferenceStats",
    "compute_reference_stats",
    "shipped_stats",
]


SHIPPED_STATS_FILE = "qwen3-4b_layer-2_stats.safetensors"
"""Packaged example statistics of real Qwen3-4B ``hidden_states[-2]``, sink-contaminated (``llm_dit/data/README.md``);
never used unless loaded explicitly with :func:`shipped_stats`."""

_STRUCTURAL_KEYS = ("format", "model", "layer", "prompt_count", "token_count", "hidden_dim")
_FORMAT = "llm-dit-reference-stats/1"


@dataclass(frozen=True, eq=False)
class ReferenceStats:
    """Per-dimension statistics of text-encoder hidden states at one layer.

    ``per_dim_mean[d] = μ_ref_d`` and ``per_dim_std[d] = σ_ref_d`` (population std) over ``token_count``
    rows from ``prompt_count`` prompts of ``model`` at ``hidden_states[layer]``. Tensors are stored as
    contiguous float32. ``metadata`` holds extra string entries (provenance, recorded measurements).
    Equality is identity (tensors have no single truth value).
    """

    per_dim_mean: Tensor
    per_dim_std: Tensor
    layer: int
    model: str
    prompt_count: int
    token_count: int
    metadata: Mapping[str, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        mean = as_float_tensor(self.per_dim_mean, "per_dim_mean")
        std = as_float_tensor(self.per_dim_std, "per_dim_std")
        check_stats_tensors(mean, std)
        for name in ("layer", "prompt_count", "token_count"):
            check_number(getattr(self, name), name, lambda _: True, "an int", integer=True, error=StatsError)
        if self.prompt_count < 0 or self.token_count < 0:
            raise StatsError(
                f"counts must be >= 0, got prompt_count={self.prompt_count}, token_count={self.token_count}"
            )
        if not isinstance(self.model, str) or not self.model:
            raise StatsError(f"model must be a non-empty string, got {self.model!r}")
        meta = dict(self.metadata)
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
            raise StatsError("metadata keys and values must be strings")
        object.__setattr__(self, "per_dim_mean", mean)
        object.__setattr__(self, "per_dim_std", std)
        object.__setattr__(self, "metadata", MappingProxyType(meta))

    @property
    def hidden_dim(self) -> int:
        """``D``, the number of dimensions."""
        return int(self.per_dim_mean.numel())

    @property
    def global_mean(self) -> float:
        """Mean of all elements pooled: ``mean_d(μ_ref_d)``."""
        return float(self.per_dim_mean.mean())

    @property
    def global_std(self) -> float:
        """Population std of all elements pooled: ``sqrt(mean_d(σ_ref_d²) + var_d(μ_ref_d))``."""
        return pooled_std(self.per_dim_mean, self.per_dim_std)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write a safetensors file atomically (temp file in the same folder, fsync, ``os.replace``).

        Tensors ``per_dim_mean``/``per_dim_std``; string metadata ``format``, ``model``, ``layer``,
        ``prompt_count``, ``token_count``, ``hidden_dim`` (always from the fields), then every entry of
        ``self.metadata``; ``global_mean``/``global_std`` are the derived values unless ``metadata``
        records them (e.g. as measured at collection time).
        """
        path = Path(path)
        meta = dict(self.metadata)
        meta.update(
            format=_FORMAT,
            model=self.model,
            layer=str(self.layer),
            prompt_count=str(self.prompt_count),
            token_count=str(self.token_count),
            hidden_dim=str(self.hidden_dim),
        )
        meta.setdefault("global_mean", repr(self.global_mean))
        meta.setdefault("global_std", repr(self.global_std))
        data = _st_save({"per_dim_mean": self.per_dim_mean.cpu(), "per_dim_std": self.per_dim_std.cpu()}, metadata=meta)
        atomic_write_bytes(path, data)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ReferenceStats:
        """Read a file written by :meth:`save` (safetensors only; never unpickles anything).

        Raises :class:`StatsError` for a missing or unreadable file, missing tensors or metadata, and
        tensors that are not 1-D of equal shape.
        """
        path = Path(path)
        if not path.is_file():
            raise StatsError(f"reference stats file not found: {path}")
        try:
            with safe_open(str(path), framework="pt") as f:
                keys = set(f.keys())
                missing = [k for k in TENSOR_KEYS if k not in keys]
                if missing:
                    raise StatsError(f"{path}: missing tensor(s) {', '.join(missing)}")
                mean = f.get_tensor("per_dim_mean")
                std = f.get_tensor("per_dim_std")
                meta = dict(f.metadata() or {})
        except (SafetensorError, OSError) as exc:
            first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise StatsError(f"{path}: not a readable safetensors file ({first_line})") from exc
        if mean.shape != std.shape or mean.ndim != 1:
            raise StatsError(
                f"{path}: shape mismatch, per_dim_mean {tuple(mean.shape)} vs per_dim_std {tuple(std.shape)}"
            )
        missing_meta = [k for k in ("model", "layer", "prompt_count", "token_count") if k not in meta]
        if missing_meta:
            raise StatsError(f"{path}: missing metadata {', '.join(missing_meta)}")
        try:
            layer, prompts, tokens = (int(meta[k]) for k in ("layer", "prompt_count", "token_count"))
        except ValueError as exc:
            raise StatsError(f"{path}: layer/prompt_count/token_count metadata must be integers") from exc
        extra = {k: v for k, v in meta.items() if k not in _STRUCTURAL_KEYS}
        try:
            return cls(
                mean,
                std,
                layer=layer,
                model=meta["model"],
                prompt_count=prompts,
                token_count=tokens,
                metadata=extra,
            )
        except StatsError as exc:
            raise StatsError(f"{path}: {exc}") from exc


def compute_reference_stats(
    rows: Tensor | Sequence[Tensor],
    layer: int,
    model: str,
    prompt_count: int,
    *,
    sink_ratio: float = SINK_RATIO,
    token: Callable[[int, int], str] | None = None,
) -> ReferenceStats:
    """Reference statistics of the content rows of ``rows`` (any float dtype), computed in float32.

    ``rows`` is one ``[n_p, D]`` tensor per prompt (a single tensor counts as one sequence). The sink rows of
    each (:func:`find_sinks` with ``r = sink_ratio``, per sequence) are left out; over the remaining content rows
    ``μ_ref_d = mean_i x_id``, ``σ_ref_d = sqrt(mean_i (x_id − μ_ref_d)²)`` (population, correction 0);
    ``token_count`` = content rows. ``metadata`` records ``sink_ratio``, ``sink_count`` and ``sinks`` (JSON: one
    :func:`describe_sinks` row per sink, plus its ``prompt`` index; ``token(p, position)`` names its token).
    """
    r = check_sink_ratio(sink_ratio)
    content, found = [], []
    for p, x in enumerate(check_sequences(rows, "no rows to compute reference statistics from")):
        sinks = find_sinks(x, r)
        name = (lambda pos, p=p: token(p, pos)) if token is not None else None
        found += [{"prompt": p, **row} for row in describe_sinks(x, sinks, r, token=name)["rows"]]
        content.append(x[~sinks])
    x = torch.cat(content)
    mean, std = mean_std(x, dim=0)
    return ReferenceStats(
        mean.cpu(),
        std.cpu(),
        layer=layer,
        model=model,
        prompt_count=prompt_count,
        token_count=int(x.shape[0]),
        metadata={"sink_ratio": repr(r), "sink_count": str(len(found)), "sinks": json.dumps(found)},
    )


@functools.lru_cache(maxsize=1)
def _load_shipped() -> ReferenceStats:
    resource = resources.files("llm_dit").joinpath("data", SHIPPED_STATS_FILE)
    with resources.as_file(resource) as file:
        return ReferenceStats.load(file)


def shipped_stats() -> ReferenceStats:
    """The packaged example: statistics of real Qwen3-4B ``hidden_states[-2]`` (10 prompts, 220 tokens).

    **Sink-contaminated** (metadata ``sink_contaminated = "true"``): computed over every row, attention sinks
    included (the spread of dims 4 and 396 is mostly a few sink rows per prompt), and not repairable without the
    real model. Kept as a documented measurement; nothing in llm-dit loads it implicitly. Compute statistics to
    use with ``llm-dit stats --layer L``. Loaded once; each call returns fresh tensor copies.
    """
    s = _load_shipped()
    return ReferenceStats(
        s.per_dim_mean.clone(),
        s.per_dim_std.clone(),
        layer=s.layer,
        model=s.model,
        prompt_count=s.prompt_count,
        token_count=s.token_count,
        metadata=s.metadata,
    )
