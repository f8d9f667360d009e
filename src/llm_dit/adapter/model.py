"""A small trained bridge from Qwen3-VL rows to the DiT's caption space: the module, its file, and when it applies.

Rows are row vectors: an adapter maps `x [n, D]` to `y = x W + b` (`D` is both the Qwen3-VL hidden size and the
DiT's caption width). Three kinds:

- `linear`: a full `W [D, D]` and `b [D]`;
- `low_rank`: `W = I + U Vᵀ` with `U, V [D, r]`, plus `b` — a residual on the identity (initialised to it:
  `U = 0`, `V` small and random, so gradients reach both);
- `affine`: `y = x ⊙ s + t`, a scale and a shift per dimension.

Two ways to fit one: `fit.ridge_fit` in closed form on paired rows (`fit.paired_rows`), and `train.finetune` through
the frozen DiT with the flow-matching loss; `train.train_adapter` runs both.

Adapter files are safetensors with JSON metadata (`files.save_tensors`); never pickle.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..core.errors import UserError, check_choice
from ..core.files import load_tensors, save_tensors
from ..core.modes import ADAPTER_KINDS
from ..core.numerics import check_number, check_rows

__all__ = [
    "ADAPTER_KINDS",
    "SPACE_KEYS",
    "Adapter",
    "check_raw_rows",
    "check_use",
    "trained_settings",
]

DEFAULT_RANK = 32
FILE_KIND = "adapter"


def check_kind(kind: str, dim: int, rank: int | None) -> int:
    """Validate `kind`, `dim` and `rank`; the effective rank (`low_rank`: `rank` or min(32, D); else 0)."""
    check_choice(kind, ADAPTER_KINDS, "adapter kind")
    check_number(dim, "adapter width", lambda d: d >= 1, "a positive integer", integer=True)
    if kind != "low_rank":
        return 0
    r = min(DEFAULT_RANK, dim) if rank is None else rank
    return int(
        check_number(r, "low-rank adapter rank", lambda x: 1 <= x <= dim, f"an integer in [1, {dim}]", integer=True)
    )


def tensor_shapes(kind: str, dim: int, rank: int) -> dict[str, tuple[int, ...]]:
    """The parameters of an adapter kind and their shapes."""
    if kind == "linear":
        return {"weight": (dim, dim), "bias": (dim,)}
    if kind == "low_rank":
        return {"u": (dim, rank), "v": (dim, rank), "bias": (dim,)}
    return {"scale": (dim,), "shift": (dim,)}


class Adapter(nn.Module):
    """`y = x W + b` on rows `[n, D]` (see the module docstring for the kinds); float32 parameters and maths,
    output in the input's dtype and device. A new adapter is the identity map."""

    def __init__(self, dim: int, kind: str = "linear", rank: int | None = None) -> None:
        super().__init__()
        self.rank = check_kind(kind, dim, rank)
        self.kind = kind
        self.dim = dim
        if kind == "linear":
            self.weight = nn.Parameter(torch.eye(dim))
            self.bias = nn.Parameter(torch.zeros(dim))
        elif kind == "low_rank":
            g = torch.Generator().manual_seed(0)
            self.u = nn.Parameter(torch.zeros(dim, self.rank))
            self.v = nn.Parameter(torch.randn(dim, self.rank, generator=g) / math.sqrt(dim))
            self.bias = nn.Parameter(torch.zeros(dim))
        else:
            self.scale = nn.Parameter(torch.ones(dim))
            self.shift = nn.Parameter(torch.zeros(dim))

    def forward(self, rows: Tensor) -> Tensor:
        check_rows(rows, "adapter input", width=self.dim, width_of="the adapter's width", finite=False)
        device = next(self.parameters()).device
        x = rows.to(device=device, dtype=torch.float32)
        if self.kind == "linear":
            y = x @ self.weight + self.bias
        elif self.kind == "low_rank":
            y = x + (x @ self.u) @ self.v.T + self.bias
        else:
            y = x * self.scale + self.shift
        return y.to(device=rows.device, dtype=rows.dtype)

    def matrix(self) -> Tensor:
        """The effective `W [D, D]` (detached float32): `weight`, `I + U Vᵀ`, or `diag(scale)`."""
        with torch.no_grad():
            if self.kind == "linear":
                return self.weight.detach().clone()
            if self.kind == "low_rank":
                return torch.eye(self.dim, device=self.u.device) + self.u @ self.v.T
            return torch.diag(self.scale.detach())

    def offset(self) -> Tensor:
        """The effective `b [D]` (detached float32)."""
        return (self.shift if self.kind == "affine" else self.bias).detach().clone()

    def describe(self) -> dict[str, Any]:
        return {"adapter_kind": self.kind, "rank": self.rank, "dim": self.dim}

    def tensors(self) -> dict[str, Tensor]:
        return {name: p.detach().float().cpu() for name, p in self.named_parameters()}

    def set_tensors(self, tensors: dict[str, Tensor]) -> None:
        with torch.no_grad():
            for name, p in self.named_parameters():
                p.copy_(tensors[name])

    def save(self, path: str | Path, meta: dict[str, Any] | None = None) -> Path:
        """Write the parameters and `meta` (the caller's: VL model, layer, token mode, training settings, data
        hash, ...) plus `kind: "adapter"`, `adapter_kind`, `rank`, `dim` (these four win over the caller's)."""
        return save_tensors(path, self.tensors(), {**(meta or {}), "kind": FILE_KIND, **self.describe()})

    @classmethod
    def load(cls, path: str | Path) -> tuple[Adapter, dict[str, Any]]:
        """Read a file written by `save`, validated: its kind, the tensor names, shapes and values."""
        tensors, meta = load_tensors(path, "adapter file")
        if meta.get("kind") != FILE_KIND:
            raise UserError(f"{path} is not an adapter file (kind: {meta.get('kind', 'none')})")
        return cls.from_tensors(tensors, meta, f"adapter file {path}"), meta

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor], meta: dict[str, Any], label: str) -> Adapter:
        """An adapter from its parameters and the `adapter_kind`/`dim`/`rank` of `meta`, with one-line errors for
        anything missing, misshapen or not finite."""
        try:
            adapter = cls(meta.get("dim"), meta.get("adapter_kind"), meta.get("rank") or None)
        except UserError as e:
            raise UserError(f"{label}: {e}") from None
        expected = tensor_shapes(adapter.kind, adapter.dim, adapter.rank)
        if missing := sorted(set(expected) - set(tensors)):
            raise UserError(f"{label}: missing tensors {', '.join(missing)} (has: {', '.join(tensors) or 'none'})")
        if extra := sorted(set(tensors) - set(expected)):
            raise UserError(f"{label}: unexpected tensors {', '.join(extra)} for a {adapter.kind} adapter")
        for name, shape in expected.items():
            t = tensors[name]
            if tuple(t.shape) != shape:
                raise UserError(f"{label}: tensor '{name}' has shape {list(t.shape)}, expected {list(shape)}")
            if not t.is_floating_point():
                raise UserError(f"{label}: tensor '{name}' has dtype {t.dtype}, expected a float type")
            if not torch.isfinite(t).all():
                raise UserError(f"{label}: tensor '{name}' contains {int((~torch.isfinite(t)).sum())} NaN/Inf values")
        adapter.set_tensors(tensors)
        return adapter


# ------------------------------------------------------------------------------------ settings it was trained for

# The settings that define the rows an adapter maps from (Qwen3-VL side) and to (text-encoder side): used with other
# values it would map rows it was never fitted on. `train_adapter` records the ones that acted in `settings`.
SPACE_KEYS = (
    "vl.hidden_layer",
    "vl.token_mode",
    "vl.system_prompt",
    "encoder.hidden_layer",
    "encoder.system_prompt",
    "encoder.think_block",
)
_LEGACY_KEYS = {"hidden_layer": "vl.hidden_layer", "token_mode": "vl.token_mode", "text_layer": "encoder.hidden_layer"}


def trained_settings(meta: dict[str, Any]) -> dict[str, Any]:
    """The `SPACE_KEYS` an adapter file records (`settings`; files without it: the legacy `hidden_layer`,
    `token_mode`, `text_layer` fields, when present)."""
    if isinstance(meta.get("settings"), dict):
        return {k: v for k, v in meta["settings"].items() if k in SPACE_KEYS}
    return {key: meta[old] for old, key in _LEGACY_KEYS.items() if meta.get(old) is not None}


def check_raw_rows(vl: Any, what: str) -> None:
    """An adapter maps raw VL rows of one layer: refuse weighted layers, outlier masking and normalisation."""
    if vl.layers:
        raise UserError(f"{what} maps the rows of one VL layer (vl.hidden_layer): unset vl.layers ('{vl.layers}')")
    if vl.normalize != "none" or vl.outlier_masking != "none":
        raise UserError(f"{what} maps raw VL rows: set vl.normalize = 'none' and vl.outlier_masking = 'none'")


def check_use(path: str | Path, meta: dict[str, Any], config: Any) -> None:
    """Refuse to apply the adapter at `path` (metadata `meta`) under `config` (a `Config`) unless every setting it
    was trained with (`trained_settings`) has the same value now and the rows are raw (`check_raw_rows`). Cheap:
    run on every use, so a sweep that changes the layer or token mode between runs cannot reuse it unchecked."""
    check_raw_rows(config.vl, f"adapter {path}")
    now = config.flat()
    differ = {k: v for k, v in trained_settings(meta).items() if now.get(k) != v}
    if differ:
        trained = ", ".join(f"{k} = {v!r}" for k, v in differ.items())
        current = ", ".join(f"{k} = {now.get(k)!r}" for k in differ)
        raise UserError(f"adapter {path} was trained with {trained}; this run has {current}: use the trained values")
