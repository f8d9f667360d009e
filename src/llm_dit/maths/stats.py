"""Reference statistics, normalisation and outlier analysis for hidden-state rows.

Everything here works on 2-D tensors ``[n, D]`` (rows = tokens, columns = hidden dimensions). All
statistics are computed in float32, whatever the input dtype, and are *population* statistics
(divide by ``n``, ``correction=0``).

Standard deviations are computed after dividing each column (or the whole tensor) by its largest absolute
value, so that squaring never overflows float32 even for activations of order 1e30; mathematically this
changes nothing.

Notation: ``x`` embeddings ``[n, D]``, ``μ_d``/``σ_d`` the mean/std of column ``d`` over the rows,
``μ_ref_d``/``σ_ref_d`` the reference per-dimension mean/std, ``ε = 1e-6`` the std floor.

Attention sinks (massive activations): a few fixed positions of an LLM's sequence (the first token, some
delimiters) carry values hundreds of times larger than any other row in a few fixed dimensions. They are not
content, and statistics that include them describe them, not the content. :func:`find_sinks` finds them; every
statistic here can be fitted on the content rows only (``content=``), and :func:`compute_reference_stats` leaves
them out of reference statistics.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as _st_save
from torch import Tensor

from ..core.errors import UserError, check_choice
from ..core.files import atomic_write_bytes
from ..core.modes import NORMALIZATION_MODES, OUTLIER_MODES, SINK_RATIO, SINK_ROW_MODES
from ..core.numerics import check_number, check_rows, require_finite

__all__ = [
    "NORMALIZATION_MODES",
    "OUTLIER_MODES",
    "SHIPPED_STATS_FILE",
    "SINK_MARGIN",
    "SINK_RATIO",
    "SINK_REPORT_EDGES",
    "SINK_ROW_MODES",
    "SINK_TOP_DIMS",
    "STD_EPS",
    "ReferenceStats",
    "StatsError",
    "check_sink_rows",
    "compute_reference_stats",
    "describe_sinks",
    "find_sinks",
    "get_outlier_dimensions",
    "mask_outlier_dimensions",
    "normalize",
    "normalize_global",
    "normalize_hybrid",
    "normalize_none",
    "normalize_per_dim",
    "pooled_std",
    "row_ratios",
    "shipped_stats",
    "sink_report",
    "sink_report_lines",
    "std_ratios",
]

STD_EPS = 1e-6
"""Floor applied to every standard deviation used as a divisor."""

SHIPPED_STATS_FILE = "qwen3-4b_layer-2_stats.safetensors"
"""Packaged example statistics of real Qwen3-4B ``hidden_states[-2]``, sink-contaminated (``llm_dit/data/README.md``);
never used unless loaded explicitly with :func:`shipped_stats`."""
SINK_TOP_DIMS = 3
"""Dimensions listed per sink row by :func:`describe_sinks`."""
"""What happens to sink rows (config ``vl.sink_rows``): ``exclude`` keeps T's sink rows out of every blend
(unchanged) and drops V's; ``include`` blends them as content. Statistics use content rows either way."""

_TENSOR_KEYS = ("per_dim_mean", "per_dim_std")
_STRUCTURAL_KEYS = ("format", "model", "layer", "prompt_count", "token_count", "hidden_dim")
_FORMAT = "llm-dit-reference-stats/1"
_TINY = torch.finfo(torch.float32).tiny
_F32_MAX = torch.finfo(torch.float32).max


class StatsError(UserError):
    """Invalid statistics, inputs or stats files; the message is one line."""


# --------------------------------------------------------------------------------------------------------
# Low-level helpers
# --------------------------------------------------------------------------------------------------------


def _scaled_mean_std(x: Tensor, dim: int | None) -> tuple[Tensor, Tensor, Tensor]:
    """Population mean/std of float32 ``x`` in scaled units.

    ``s = max|x|`` (over ``dim``, floored at the smallest normal float32), ``m = mean(x/s)``,
    ``v = sqrt(mean((x/s − m)²))``; then ``μ = m·s`` and ``σ = v·s``. Returns ``(m, v, s)`` with ``dim``
    kept (or 0-d tensors when ``dim`` is None). A constant column gives ``x/s = ±1`` exactly, so ``v = 0``.
    """
    if dim is None:
        s = x.abs().amax().clamp_min(_TINY)
        var, m = torch.var_mean(x / s, correction=0)
    else:
        s = x.abs().amax(dim=dim, keepdim=True).clamp_min(_TINY)
        var, m = torch.var_mean(x / s, dim=dim, correction=0, keepdim=True)
    return m, var.sqrt(), s


def _mean_std(x: Tensor, dim: int | None) -> tuple[Tensor, Tensor]:
    """Population ``(μ, σ)`` of float32 ``x`` over ``dim`` (``dim`` removed), overflow-safe."""
    m, v, s = _scaled_mean_std(x, dim)
    if dim is not None:
        m, v, s = m.squeeze(dim), v.squeeze(dim), s.squeeze(dim)
    return m * s, v * s


def _standardize(x: Tensor, dim: int | None, fit: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """``z = (x − μ) / max(σ, ε)`` over ``dim``; returns ``(z, μ, σ)`` with ``dim`` kept.

    ``μ``, ``σ`` come from the rows selected by ``fit`` (boolean ``[n]``; default all rows) and ``z`` is computed
    for every row. Computed in scaled units (``(x/s − m) / max(v, ε/s)``, ``s = max|x|`` over all rows) so nothing
    overflows; ``|z| ≤ sqrt(n)`` on the fitted rows, and z is saturated to the finite float32 range elsewhere.
    """
    if fit is None:
        m, v, s = _scaled_mean_std(x, dim)
    else:
        s = (x.abs().amax() if dim is None else x.abs().amax(dim=dim, keepdim=True)).clamp_min(_TINY)
        var, m = torch.var_mean(x[fit] / s, dim=dim, correction=0, keepdim=dim is not None)
        v = var.sqrt()
    denom = torch.maximum(v, (STD_EPS / s).clamp_min(_TINY))
    z = ((x / s - m) / denom).clamp(-_F32_MAX, _F32_MAX)
    return z, m * s, v * s


def _as_float_tensor(value: Any, name: str) -> Tensor:
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(np.ascontiguousarray(value))
    if not isinstance(value, Tensor):
        raise StatsError(f"{name} must be a torch.Tensor or numpy array, got {type(value).__name__}")
    if not (value.is_floating_point() or value.dtype in (torch.int32, torch.int64)):
        raise StatsError(f"{name} must be a real-valued tensor, got dtype {value.dtype}")
    return value.detach().to(torch.float32).contiguous()


def _check_embeddings(emb: Any, *, check_finite: bool = True) -> Tensor:
    """``emb`` checked as rows ``[n, D]`` (:func:`numerics.check_rows`), returned as float32 (finite if
    ``check_finite``: checked after the cast, which can overflow)."""
    x = check_rows(emb, "embeddings", finite=False, error=StatsError).detach().to(torch.float32)
    return require_finite(x, "embeddings", error=StatsError) if check_finite else x


def _check_width(width: int, ref_width: int) -> None:
    if width != ref_width:
        raise StatsError(f"embedding width {width} does not match reference width {ref_width}")


def _reference_tensors(reference: Any, device: torch.device | None = None) -> tuple[Tensor, Tensor]:
    """``(per_dim_mean, per_dim_std)`` as float32 1-D tensors from a ReferenceStats, mapping or object.

    There is no default: statistics of the wrong layer or model silently mis-scale every row, so the caller names
    them (``TextEncoder.reference_stats`` or ``llm-dit stats --layer L``).
    """
    if reference is None:
        raise StatsError(
            "reference statistics are required: pass the text encoder's statistics of the same layer "
            "(TextEncoder.reference_stats, or a file from `llm-dit stats --layer L`)"
        )
    values = []
    for key in _TENSOR_KEYS:
        if isinstance(reference, Mapping):
            if key not in reference:
                raise StatsError(f"reference mapping has no {key!r} entry")
            value = reference[key]
        elif hasattr(reference, key):
            value = getattr(reference, key)
        else:
            raise StatsError(f"reference {type(reference).__name__} has no {key!r} attribute")
        values.append(_as_float_tensor(value, f"reference {key}"))
    mean, std = values
    _check_stats_tensors(mean, std)
    if device is not None:
        mean, std = mean.to(device), std.to(device)
    return mean, std


def _check_stats_tensors(mean: Tensor, std: Tensor) -> None:
    if mean.ndim != 1 or std.ndim != 1 or mean.shape != std.shape or mean.numel() == 0:
        raise StatsError(
            f"per_dim_mean and per_dim_std must be non-empty 1-D tensors of equal shape, "
            f"got {tuple(mean.shape)} and {tuple(std.shape)}"
        )
    if not (bool(torch.isfinite(mean).all()) and bool(torch.isfinite(std).all())):
        raise StatsError("reference statistics contain NaN or infinite values")
    if bool((std < 0).any()):
        raise StatsError("per_dim_std contains negative values")


def pooled_std(per_dim_mean: Tensor, per_dim_std: Tensor) -> float:
    """Population std of all elements pooled over dimensions with equal row counts.

    ``σ_global = sqrt(mean_d(σ_d²) + var_d(μ_d))`` (law of total variance; ``var`` is the population
    variance over dimensions). Computed in float32, after scaling by the largest magnitude.
    """
    mean = per_dim_mean.detach().to(torch.float32)
    std = per_dim_std.detach().to(torch.float32)
    scale = torch.maximum(mean.abs().amax(), std.amax()).clamp_min(_TINY)
    var_means = torch.var(mean / scale, correction=0)
    mean_sq_std = ((std / scale) ** 2).mean()
    return float((mean_sq_std + var_means).sqrt() * scale)


# --------------------------------------------------------------------------------------------------------
# Reference statistics
# --------------------------------------------------------------------------------------------------------


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
        mean = _as_float_tensor(self.per_dim_mean, "per_dim_mean")
        std = _as_float_tensor(self.per_dim_std, "per_dim_std")
        _check_stats_tensors(mean, std)
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
                missing = [k for k in _TENSOR_KEYS if k not in keys]
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


def describe(x: Tensor) -> dict[str, float]:
    """Summary of a tensor for records, float32: mean, population std, min, max over all elements."""
    x = x.detach().float()
    return {
        "mean": x.mean().item(),
        "std": x.std(correction=0).item() if x.numel() > 1 else 0.0,
        "min": x.min().item(),
        "max": x.max().item(),
    }


# --------------------------------------------------------------------------------------------------------
# Attention sinks
# --------------------------------------------------------------------------------------------------------


def _check_sink_ratio(ratio: float) -> float:
    return check_number(ratio, "sink ratio (vl.sink_ratio)", lambda r: r > 1.0, "a finite number > 1", error=StatsError)


def check_sink_rows(mode: str) -> str:
    """``mode`` if it is one of :data:`SINK_ROW_MODES`, else a :class:`StatsError` naming ``vl.sink_rows``."""
    return check_choice(mode, SINK_ROW_MODES, "vl.sink_rows", StatsError)


def _row_peaks(rows: Tensor) -> tuple[Tensor, float]:
    """``m_i = max_d |x_id|`` (float32 ``[n]``) and their median ``M`` (lower median; NaN rows ignored)."""
    check_rows(rows, "sink detection rows", finite=False, error=StatsError)
    peaks = rows.detach().to(torch.float32).abs().amax(dim=1)
    return peaks, float(peaks.nanmedian())


def find_sinks(rows: Tensor, ratio: float = SINK_RATIO) -> Tensor:
    """Attention-sink (massive-activation) rows of one sequence ``rows`` ``[n, D]``: a boolean mask ``[n]``.

    With ``m_i = max_d |x_id|`` (float32) and ``M`` the median of the ``m_j`` (the lower one for even ``n``),
    row ``i`` is a sink when ``m_i > r · M``, ``r = ratio > 1`` (config ``vl.sink_ratio``, default 20).

    The median row is never a sink (``M ≤ r·M``), so at most ``⌊n/2⌋`` rows are flagged and a single row never
    is: the rule cannot call a whole sequence a sink. A NaN row is not flagged (NaN compares false).
    Apply it once per sequence (one prompt's rows), before any row is removed: the median is that sequence's.
    """
    r = _check_sink_ratio(ratio)
    peaks, median = _row_peaks(rows)
    return peaks > r * median


def describe_sinks(
    rows: Tensor,
    sinks: Tensor,
    ratio: float,
    *,
    positions: Sequence[int] | None = None,
    token: Callable[[int], str] | None = None,
    top_dims: int = SINK_TOP_DIMS,
) -> dict[str, Any]:
    """A JSON-able account of the sink rows of ``rows`` ``[n, D]`` (``sinks`` from :func:`find_sinks`).

    ``{"ratio": r, "median_max_abs": M, "count": k, "rows": [...]}`` with one entry per sink row, in row order:
    ``position`` (``positions[i]``, e.g. the token position in the prompt; default ``i``), ``token``
    (``token(position)`` or None), ``max_abs`` ``m_i``, ``ratio_to_median`` ``m_i / M`` and ``dims``: the
    ``top_dims`` dimensions of largest ``|x_id|`` as ``[d, x_id]`` pairs, largest first.
    """
    peaks, median = _row_peaks(rows)
    mask = torch.as_tensor(sinks, dtype=torch.bool)
    if mask.shape != peaks.shape:
        raise StatsError(f"sink mask must have shape ({peaks.numel()},), got {tuple(mask.shape)}")
    x = rows.detach().to(torch.float32)
    k = min(int(top_dims), x.shape[1])
    described = []
    for i in mask.nonzero().flatten().tolist():
        position = int(positions[i]) if positions is not None else i
        dims = x[i].abs().topk(k).indices.tolist()
        described.append(
            {
                "position": position,
                "token": token(position) if token is not None else None,
                "max_abs": float(peaks[i]),
                "ratio_to_median": float(peaks[i]) / median if median > 0 else math.inf,
                "dims": [[int(d), float(x[i, d])] for d in dims],
            }
        )
    return {"ratio": float(ratio), "median_max_abs": median, "count": len(described), "rows": described}


def sink_lines(rows: list[dict[str, Any]]) -> list[str]:
    """One line per sink row of a `stats.describe_sinks` record: where it is, its token, the dims that carry it."""
    out = []
    for r in rows:
        where = (f"prompt {r['prompt']} " if "prompt" in r else "") + f"position {r['position']}"
        token = f" {r['token']!r}" if r.get("token") is not None else ""
        dims = ", ".join(f"dim {d} = {v:.4g}" for d, v in r["dims"])
        out.append(f"{where}{token}: {dims} ({r['ratio_to_median']:.3g}x the median row's max)")
    return out


SINK_MARGIN = 2.0
"""How far a threshold ``r`` must keep content and sinks apart to *separate* them (:func:`sink_report`): every content
row's ratio at most ``r / SINK_MARGIN`` and every sink's at least ``r · SINK_MARGIN``."""
SINK_REPORT_EDGES = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 1000.0)
"""Bin edges of :func:`sink_report`'s histogram of row ratios: ``[0, 1)``, ``[1, 2)``, …, ``[1000, inf)``."""
SINK_REPORT_QUANTILES = (0.5, 0.9, 0.99)


def row_ratios(rows: Tensor) -> Tensor:
    """``ρ_i = m_i / M`` (float64 ``[n]``): each row's max ``|x_id|`` over the median row max, the quantity
    :func:`find_sinks` compares with ``r`` (``m``, ``M`` as there). ``M = 0``: ``ρ_i = 1`` for ``m_i = 0`` (a row
    like the median) and ``inf`` otherwise."""
    peaks, median = _row_peaks(rows)
    p = peaks.double()
    if median > 0:
        return p / median
    return torch.where(p > 0, math.inf, 1.0).double()


def sink_report(
    rows: Tensor | Sequence[Tensor],
    ratio: float = SINK_RATIO,
    *,
    token: Callable[[int, int], str] | None = None,
    top: int = 5,
) -> dict[str, Any]:
    """Does ``r = ratio`` (config ``vl.sink_ratio``) separate the attention sinks of ``rows`` (one ``[n_p, D]`` tensor
    per prompt) from their content rows? The distribution of the row ratios ``ρ_i = m_i / M_p`` (:func:`row_ratios`,
    each row against its own prompt's median row max ``M_p``; a sink is ``ρ_i > r``, :func:`find_sinks`) and:

    - ``rows``, ``above`` (sinks: rows with ``ρ > r``), ``quantiles`` (``50%``, ``90%``, ``99%`` — lower quantiles,
      i.e. ratios of actual rows — and ``max``), ``histogram`` (rows per bin of :data:`SINK_REPORT_EDGES`);
    - ``largest_content = max{ρ_i ≤ r}``, ``smallest_sink = min{ρ_i > r}`` (None without sinks) and ``gap =
      smallest_sink / largest_content``; ``highest_content`` and ``lowest_sinks``: the ``top`` rows on each side of
      the threshold (prompt, position, token, ratio, ``max_abs`` and the 3 largest ``[d, x_id]``);
    - ``separates``: ``largest_content ≤ r / m`` and (no sink or ``smallest_sink ≥ r · m``), ``m =``
      :data:`SINK_MARGIN`;
    - ``widest_gap = (a, b)``: the largest ratio ``b / a`` between consecutive sorted ratios ``a < b`` with ``a ≥ 1``
      (at or above a median row), where a gap between content and sinks lies; ``suggested_ratio = sqrt(a·b)`` (its
      geometric middle) when ``r`` does not separate and that gap is at least ``m²`` wide, else None.
    """
    r = _check_sink_ratio(ratio)
    seqs = [rows] if isinstance(rows, Tensor) else list(rows)
    if not seqs:
        raise StatsError("no rows to report on")
    xs, ratios, sinks, where = [], [], [], []
    for p, seq in enumerate(seqs):
        x = _check_embeddings(seq)
        xs.append(x)
        ratios.append(row_ratios(x))
        sinks.append(find_sinks(x, r))
        where += [(p, i) for i in range(x.shape[0])]
    rho, sink = torch.cat(ratios).numpy(), torch.cat(sinks).numpy()
    content = rho[~sink]

    def described(k: int) -> dict[str, Any]:
        p, i = where[k]
        x = xs[p][i]
        dims = x.abs().topk(min(SINK_TOP_DIMS, x.numel())).indices.tolist()
        return {
            "prompt": p,
            "position": i,
            "token": token(p, i) if token is not None else None,
            "ratio": float(rho[k]),
            "max_abs": float(x.abs().max()),
            "dims": [[int(d), float(x[d])] for d in dims],
        }

    order = np.argsort(rho, kind="stable")
    upper = np.sort(rho[rho >= 1.0])
    widest = None
    if len(upper) > 1 and upper[0] > 0:
        steps = upper[1:] / upper[:-1]
        k = int(np.argmax(steps))
        widest = (float(upper[k]), float(upper[k + 1]))
    largest_content = float(content.max())
    smallest_sink = float(rho[sink].min()) if sink.any() else None
    separates = largest_content <= r / SINK_MARGIN and (smallest_sink is None or smallest_sink >= r * SINK_MARGIN)
    clear = widest is not None and widest[1] >= widest[0] * SINK_MARGIN**2
    edges = (0.0, *SINK_REPORT_EDGES, math.inf)
    bins = {f"[{lo:g}, {hi:g})": int(((rho >= lo) & (rho < hi)).sum()) for lo, hi in itertools.pairwise(edges)}
    bins[f"[{edges[-2]:g}, inf)"] += int((rho == math.inf).sum())
    return {
        "ratio": r,
        "rows": len(rho),
        "above": int(sink.sum()),
        "quantiles": {f"{q * 100:g}%": float(np.quantile(rho, q, method="lower")) for q in SINK_REPORT_QUANTILES}
        | {"max": float(rho.max())},
        "histogram": bins,
        "largest_content": largest_content,
        "smallest_sink": smallest_sink,
        "gap": None if smallest_sink is None else smallest_sink / largest_content,
        "separates": separates,
        "widest_gap": widest,
        "suggested_ratio": math.sqrt(widest[0] * widest[1]) if widest and clear and not separates else None,
        "highest_content": [described(k) for k in order[~sink[order]][::-1][:top]],
        "lowest_sinks": [described(k) for k in order[sink[order]][:top]],
    }


def sink_report_lines(report: dict[str, Any]) -> list[str]:
    """:func:`sink_report` as lines of text: the distribution, the rows on each side of the threshold, and whether it
    separates them (if not, the gap to move ``vl.sink_ratio`` into, when there is one)."""
    r, q = report["ratio"], report["quantiles"]

    def row(e: dict[str, Any]) -> str:
        token = f" {e['token']!r}" if e.get("token") is not None else ""
        dims = ", ".join(f"dim {d} = {v:.4g}" for d, v in e["dims"])
        return f"  {e['ratio']:8.3g}x  prompt {e['prompt']} position {e['position']}{token}: {dims}"

    out = [
        f"row ratio = a row's max |x| / its prompt's median row max, over {report['rows']} rows",
        "quantiles: " + ", ".join(f"{k} {v:.3g}" for k, v in q.items()),
        *(f"  {name:12} {count}" for name, count in report["histogram"].items()),
        f"{report['above']} of {report['rows']} rows above vl.sink_ratio {r:g} (attention sinks)",
        "highest content rows:",
        *map(row, report["highest_content"]),
    ]
    if report["lowest_sinks"]:
        out += ["lowest sinks:", *map(row, report["lowest_sinks"])]
    content, sink = report["largest_content"], report["smallest_sink"]
    sinks = "no sinks" if sink is None else f"sinks from {sink:.3g}x (gap {report['gap']:.3g}x)"
    if report["separates"] and sink is None:
        out.append(
            f"vl.sink_ratio {r:g} finds no sinks: every row is at most {content:.3g}x its prompt's median row max "
            f"(at least {SINK_MARGIN:g}x below the threshold)"
        )
        return out
    if report["separates"]:
        out.append(f"vl.sink_ratio {r:g} separates them: content up to {content:.3g}x, {sinks}")
        return out
    out.append(
        f"vl.sink_ratio {r:g} does not separate them with a {SINK_MARGIN:g}x margin on each side: content up to "
        f"{content:.3g}x, {sinks}"
    )
    low, high = report["widest_gap"] or (None, None)
    if report["suggested_ratio"] is not None:
        out.append(
            f"the widest gap in the ratios is from {low:.3g}x to {high:.3g}x: set vl.sink_ratio to about "
            f"{report['suggested_ratio']:.3g} (its geometric middle) and run this report again"
        )
    else:
        widest = "none" if low is None else f"{low:.3g}x to {high:.3g}x"
        out.append(
            f"no clear gap (at least {SINK_MARGIN**2:g}x) in the ratios above the median (widest: {widest}): no "
            "threshold separates sinks from content here; look at the rows listed (tokens, dims) before changing "
            "vl.sink_ratio"
        )
    return out


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
    r = _check_sink_ratio(sink_ratio)
    seqs = [rows] if isinstance(rows, Tensor) else list(rows)
    if not seqs:
        raise StatsError("no rows to compute reference statistics from")
    content, found = [], []
    for p, seq in enumerate(seqs):
        x = _check_embeddings(seq)
        sinks = find_sinks(x, r)
        name = (lambda pos, p=p: token(p, pos)) if token is not None else None
        found += [{"prompt": p, **row} for row in describe_sinks(x, sinks, r, token=name)["rows"]]
        content.append(x[~sinks])
    x = torch.cat(content)
    mean, std = _mean_std(x, dim=0)
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


# --------------------------------------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------------------------------------


def normalize_none(emb: Tensor) -> Tensor:
    """``x' = x`` (returned as float32; a copy, never the input object)."""
    return emb.detach().to(torch.float32, copy=True)


def normalize_global(emb: Tensor, ref_global_std: float, *, content: Tensor | None = None) -> Tensor:
    """Scale the spread of all elements to the reference global std, keeping the global mean.

    ``x' = μ + (x − μ) · σ_ref / max(σ, ε)`` with ``μ``/``σ`` the population mean/std of *all* elements
    of ``x``. Afterwards ``std(x') = σ_ref`` and ``mean(x') = μ`` (the mean is kept, not scaled; for a
    zero-mean input this is plain ``x · σ_ref / σ``). ``content`` (boolean ``[n]``): ``μ``, ``σ`` over those
    rows only (e.g. without attention sinks); the map is applied to every row.
    """
    x = _check_embeddings(emb)
    z, mu, _ = _standardize(x, dim=None, fit=_fit_rows(content, x))
    return (mu + z * float(ref_global_std)).clamp(-_F32_MAX, _F32_MAX)


def normalize_per_dim(
    emb: Tensor,
    ref_mean: Tensor,
    ref_std: Tensor,
    *,
    clip_sigma: float | None = None,
    content: Tensor | None = None,
) -> Tensor:
    """Match each dimension to the reference: z-score over the tokens, optional clip, re-scale.

    ``z_id = (x_id − μ_d) / max(σ_d, ε)``; if ``clip_sigma = k``: ``z_id ← clamp(z_id, −k, k)``;
    ``x'_id = z_id · σ_ref_d + μ_ref_d``. Without clipping (and with ``σ_d > ε``) every output column has
    exactly mean ``μ_ref_d`` and std ``σ_ref_d``; a constant column becomes ``μ_ref_d``. ``content`` (boolean
    ``[n]``): ``μ_d``, ``σ_d`` over those rows only; the map is applied to every row (then the content rows
    have the reference moments).
    """
    x = _check_embeddings(emb)
    mean = ref_mean.detach().to(device=x.device, dtype=torch.float32)
    std = ref_std.detach().to(device=x.device, dtype=torch.float32)
    _check_width(x.shape[1], mean.numel())
    z, _, _ = _standardize(x, dim=0, fit=_fit_rows(content, x))
    if clip_sigma is not None:
        k = _check_clip(clip_sigma)
        z = z.clamp(-k, k)
    return (z * std + mean).clamp(-_F32_MAX, _F32_MAX)


def normalize_hybrid(
    emb: Tensor,
    ref_mean: Tensor,
    ref_std: Tensor,
    *,
    hybrid_weight: float = 0.5,
    clip_sigma: float | None = None,
    content: Tensor | None = None,
) -> Tensor:
    """Blend of the two: ``x' = w · per_dim(x) + (1 − w) · global(x)`` with ``w = hybrid_weight ∈ [0, 1]``.

    ``global`` targets the pooled reference std ``sqrt(mean_d(σ_ref_d²) + var_d(μ_ref_d))``;
    ``clip_sigma`` applies to the per-dimension part only; ``content`` to both.
    """
    w = _check_weight(hybrid_weight)
    per_dim = normalize_per_dim(emb, ref_mean, ref_std, clip_sigma=clip_sigma, content=content)
    glob = normalize_global(emb, pooled_std(ref_mean, ref_std), content=content)
    return w * per_dim + (1.0 - w) * glob


def _content_mask(content: Tensor, x: Tensor) -> Tensor:
    """``content`` checked as a boolean mask over the rows of ``x``."""
    mask = torch.as_tensor(content, device=x.device)
    if mask.dtype != torch.bool or mask.shape != (x.shape[0],):
        shape = tuple(mask.shape)
        raise StatsError(f"content must be a boolean mask of shape ({x.shape[0]},), got {mask.dtype} {shape}")
    return mask


def _fit_rows(content: Tensor | None, x: Tensor) -> Tensor | None:
    """The boolean ``[n]`` mask of rows statistics are fitted on (None: all rows); at least one row."""
    if content is None:
        return None
    mask = _content_mask(content, x)
    if not bool(mask.any()):
        raise StatsError("content selects no rows: statistics need at least one content row")
    return mask


def _check_clip(clip_sigma: float) -> float:
    return check_number(clip_sigma, "clip_sigma", lambda k: k > 0.0, "a finite number > 0", error=StatsError)


def _check_weight(weight: float) -> float:
    return check_number(weight, "hybrid_weight", lambda w: 0.0 <= w <= 1.0, "in [0, 1]", error=StatsError)


def normalize(
    emb: Tensor,
    mode: str,
    reference: Any,
    *,
    clip_sigma: float | None = None,
    hybrid_weight: float = 0.5,
    content: Tensor | None = None,
) -> Tensor:
    """Normalise ``emb`` ``[n, D]`` towards ``reference`` with one of :data:`NORMALIZATION_MODES`.

    ``none`` → :func:`normalize_none`; ``global`` → :func:`normalize_global` (target: the pooled reference
    std); ``per_dim`` → :func:`normalize_per_dim`; ``hybrid`` → :func:`normalize_hybrid`. ``reference`` is
    a :class:`ReferenceStats`, a mapping or any object with ``per_dim_mean``/``per_dim_std`` (required).
    ``clip_sigma`` only affects ``per_dim`` and ``hybrid``. ``content`` (boolean ``[n]``, e.g. the rows that are
    not attention sinks): the moments of ``emb`` come from those rows only; every row is mapped.
    Input of any float dtype; output float32.
    Raises :class:`StatsError` for an unknown mode, a width mismatch or non-finite input.
    """
    check_choice(mode, NORMALIZATION_MODES, "normalization mode", StatsError)
    x = _check_embeddings(emb, check_finite=mode != "none")
    ref_mean, ref_std = _reference_tensors(reference, device=x.device)
    _check_width(x.shape[1], ref_mean.numel())
    if clip_sigma is not None:
        _check_clip(clip_sigma)
    _check_weight(hybrid_weight)
    if mode == "none":
        return normalize_none(emb)
    if mode == "global":
        return normalize_global(x, pooled_std(ref_mean, ref_std), content=content)
    if mode == "per_dim":
        return normalize_per_dim(x, ref_mean, ref_std, clip_sigma=clip_sigma, content=content)
    return normalize_hybrid(x, ref_mean, ref_std, hybrid_weight=hybrid_weight, clip_sigma=clip_sigma, content=content)


# --------------------------------------------------------------------------------------------------------
# Outlier dimensions
# --------------------------------------------------------------------------------------------------------


def std_ratios(embeddings: Tensor, reference: Any) -> Tensor:
    """Per-dimension spread relative to the reference: ``ratio_d = σ_d / max(σ_ref_d, ε)``.

    ``σ_d`` is the population std of column ``d`` over the given rows (float32; pass content rows: an attention
    sink row alone can set ``σ_d``). ``ratio_d > 1``: the embeddings vary more than the reference; ``< 1``: less.
    Returns a float32 tensor ``[D]``.
    """
    x = _check_embeddings(embeddings)
    ref_mean, ref_std = _reference_tensors(reference, device=x.device)
    _check_width(x.shape[1], ref_mean.numel())
    _, std = _mean_std(x, dim=0)
    return std / ref_std.clamp_min(STD_EPS)


def _check_threshold(threshold: float) -> float:
    return check_number(threshold, "threshold", lambda t: t > 1.0, "a finite number > 1", error=StatsError)


def _severity(ratio: float) -> float:
    """``max(ratio, 1/ratio)``; ``inf`` for a ratio of 0."""
    if ratio <= 0.0:
        return math.inf
    return max(ratio, 1.0 / ratio)


def _outliers_from_ratios(ratios: Tensor, threshold: float) -> list[tuple[int, float]]:
    flagged = ((ratios > threshold) | (ratios < 1.0 / threshold)).nonzero().flatten().tolist()
    values = ratios.cpu().tolist()
    found = [(int(d), float(values[d])) for d in flagged]
    found.sort(key=lambda item: (-_severity(item[1]), item[0]))
    return found


def get_outlier_dimensions(
    embeddings: Tensor, threshold: float = 10.0, reference: Any = None
) -> list[tuple[int, float]]:
    """Dimensions whose spread is far from the reference, most severe first.

    With ``ratio_d`` from :func:`std_ratios`: ``d`` is an outlier when ``ratio_d > t`` or
    ``ratio_d < 1/t`` (``t = threshold > 1``). Sorted by severity ``max(ratio_d, 1/ratio_d)`` descending,
    ties by dimension index. Returns ``[(d, ratio_d), ...]``. With fewer than 2 rows no spread can be
    measured and the result is empty. ``reference`` is required (a :class:`StatsError` says so when missing).
    """
    t = _check_threshold(threshold)
    ratios = std_ratios(embeddings, reference)
    if embeddings.shape[0] < 2:
        return []
    return _outliers_from_ratios(ratios, t)


def _row_mask(rows: Any, n: int, device: torch.device) -> Tensor:
    """Boolean ``[n]`` mask from ``None`` (all rows), a boolean mask ``[n]`` or integer row indices."""
    if rows is None:
        return torch.ones(n, dtype=torch.bool, device=device)
    r = torch.as_tensor(rows, device=device)
    if r.dtype == torch.bool:
        if r.shape != (n,):
            raise StatsError(f"boolean rows mask must have shape ({n},), got {tuple(r.shape)}")
        return r
    if r.is_floating_point() or r.is_complex():
        raise StatsError(f"rows must be a boolean mask or integer indices, got dtype {r.dtype}")
    r = r.reshape(-1).long()
    if r.numel() and (int(r.min()) < -n or int(r.max()) >= n):
        raise StatsError(f"row index out of range for {n} rows")
    mask = torch.zeros(n, dtype=torch.bool, device=device)
    mask[r] = True
    return mask


def _mask_zero(sel: Tensor, dims: Tensor) -> Tensor:
    """``x'_id = 0`` for the selected rows ``i`` and outlier dimensions ``d``."""
    out = sel.clone()
    out[:, dims] = 0.0
    return out


def _mask_clamp(sel: Tensor, dims: Tensor, ref_std: Tensor, threshold: float, fit: Tensor | None) -> Tensor:
    """Compress each too-wide outlier column to ratio exactly ``t``, about its mean.

    ``x'_id = μ_d + (x_id − μ_d) · t / ratio_d`` (only columns with ``ratio_d > t`` get here), computed as
    ``μ_d + z_id · t · max(σ_ref_d, ε)``; ``μ_d``, ``z`` from the ``fit`` rows.
    """
    out = sel.clone()
    z, mu, _ = _standardize(sel[:, dims], dim=0, fit=fit)
    out[:, dims] = mu + z * (threshold * ref_std[dims].clamp_min(STD_EPS))
    return out


def _mask_scale(sel: Tensor, dims: Tensor, ref_std: Tensor, fit: Tensor | None) -> Tensor:
    """Soft correction: halve the log-ratio, about the mean.

    ``x'_id = μ_d + (x_id − μ_d) · ratio_d^(−1/2)``, so the new ratio is ``sqrt(ratio_d)``. Computed as
    ``μ_d + z_id · sqrt(σ_d) · sqrt(max(σ_ref_d, ε))``; ``μ_d``, ``σ_d``, ``z`` from the ``fit`` rows.
    """
    out = sel.clone()
    z, mu, sigma = _standardize(sel[:, dims], dim=0, fit=fit)
    out[:, dims] = mu + z * (sigma.sqrt() * ref_std[dims].clamp_min(STD_EPS).sqrt())
    return out


def _mask_reference(sel: Tensor, dims: Tensor, ref_mean: Tensor) -> Tensor:
    """``x'_id = μ_ref_d`` for the selected rows and outlier dimensions."""
    out = sel.clone()
    out[:, dims] = ref_mean[dims]
    return out


def mask_outlier_dimensions(
    embeddings: Tensor,
    threshold: float = 10.0,
    mode: str = "zero",
    reference: Any = None,
    rows: Tensor | None = None,
    content: Tensor | None = None,
) -> tuple[Tensor, dict[str, Any]]:
    """Find outlier dimensions on the selected rows and correct them there, with one of :data:`OUTLIER_MODES`.

    ``rows`` (boolean mask ``[n]`` or integer indices; default all rows) selects the rows that are analysed
    (:func:`get_outlier_dimensions`) and modified; other rows are copied unchanged. ``content`` (boolean
    ``[n]``, e.g. the rows that are not attention sinks) narrows the *analysis* to ``rows ∧ content``; the
    correction still applies to every selected row. ``reference`` is required. Per outlier dimension ``d``
    with ``μ_d``/``σ_d`` over the analysed rows and ``t = threshold``:

    - ``none``: nothing changes, nothing is reported as masked;
    - ``zero``: ``x' = 0``;
    - ``clamp``: only columns that vary too much (``ratio_d > t``) are compressed,
      ``x' = μ_d + (x − μ_d) · t/ratio_d`` (ratio → t). Columns with ``ratio_d < 1/t`` are left unchanged and
      listed in ``unchanged_dimensions``: bringing them up to ``1/t`` would multiply a near-constant column
      (e.g. against sink-inflated reference stds) by ``1/(t·ratio_d)``, without bound as ``ratio_d → 0``;
    - ``scale``: ``x' = μ_d + (x − μ_d) · ratio_d^(−1/2)`` (ratio → sqrt(ratio));
    - ``reference``: ``x' = μ_ref_d``.

    Returns ``(masked, info)``: ``masked`` is a new float32 tensor (the input is never modified);
    ``info`` has ``masked_dimensions`` (the dimensions changed, severity order), ``ratios`` (their ratios
    before masking), ``unchanged_dimensions`` (``[(d, ratio_d)]`` flagged but left alone), ``mode``,
    ``threshold`` and ``row_count`` (rows analysed). Fewer than 2 analysed rows: nothing masked.
    """
    check_choice(mode, OUTLIER_MODES, "outlier mode", StatsError)
    t = _check_threshold(threshold)
    x = _check_embeddings(embeddings, check_finite=mode != "none")
    ref_mean, ref_std = _reference_tensors(reference, device=x.device)
    _check_width(x.shape[1], ref_mean.numel())
    mask = _row_mask(rows, x.shape[0], x.device)
    analysed = mask if content is None else mask & _content_mask(content, x)
    out = x.clone()
    row_count = int(analysed.sum())
    info: dict[str, Any] = {
        "masked_dimensions": [],
        "ratios": [],
        "unchanged_dimensions": [],
        "mode": mode,
        "threshold": t,
        "row_count": row_count,
    }
    if mode == "none" or row_count < 2:
        return out, info
    sel = x[mask]
    fit = None if content is None else analysed[mask]
    ratios = std_ratios(x[analysed], {"per_dim_mean": ref_mean, "per_dim_std": ref_std})
    outliers = _outliers_from_ratios(ratios, t)
    if mode == "clamp":
        info["unchanged_dimensions"] = [(d, r) for d, r in outliers if r < 1.0 / t]
        outliers = [(d, r) for d, r in outliers if r > t]
    info["masked_dimensions"] = [d for d, _ in outliers]
    info["ratios"] = [r for _, r in outliers]
    if not outliers:
        return out, info
    dims = torch.tensor(info["masked_dimensions"], dtype=torch.long, device=x.device)
    if mode == "zero":
        new = _mask_zero(sel, dims)
    elif mode == "clamp":
        new = _mask_clamp(sel, dims, ref_std, t, fit)
    elif mode == "scale":
        new = _mask_scale(sel, dims, ref_std, fit)
    else:
        new = _mask_reference(sel, dims, ref_mean)
    out[mask] = new
    return out, info
