"""Rows checked where they enter, and numbers that would poison a run stopped where they appear.

`check_number` is the one check of a numeric setting or argument (finite, real, not a bool, in range); `check_rows`
is the one validator of `[n, D]` row tensors, used wherever rows come from a caller or a file (blend
modes, statistics, steering examples, caption rows from files, DiT injection, adapters): a non-empty 2-D
floating-point tensor, of a given width, finite where the caller needs it; each failure is one line that starts with
the caller's label.

A broken checkpoint or an fp16 overflow gives NaN/Inf hidden rows; nothing downstream repairs them (a blend keeps
NaN, the DiT turns them into a black or noise image). Each stage that makes rows checks them with
`require_finite`, naming the stage: the text encoder and the VL extraction per layer
(`text.TextEncoder.hidden_rows`, `vl.VLEmbeddingExtractor.hidden_rows`), the adapter (`generate.Generator.condition`)
and every blend (`blend._finish`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from numbers import Integral, Real
from typing import TYPE_CHECKING

from .errors import UserError

if TYPE_CHECKING:  # torch is imported where rows are checked, so `check_number` (settings) stays torch-free
    import torch


class NonFiniteError(UserError):
    """NaN or Inf values where rows must be finite."""


def require_finite(
    rows: torch.Tensor, stage: str, hint: str = "", error: type[UserError] = NonFiniteError
) -> torch.Tensor:
    """`rows` unchanged if every value is finite, else `error` naming `stage` and counting the bad values (one
    line; `hint` is appended)."""
    import torch

    finite = torch.isfinite(rows)
    if bool(finite.all()):
        return rows
    nan = int(torch.isnan(rows).sum())
    inf = int((~finite).sum()) - nan
    hint = f"; {hint}" if hint else ""
    raise error(f"{stage}: {nan} NaN and {inf} Inf values in {tuple(rows.shape)} rows{hint}")


def check_rows(
    rows: object,
    label: str,
    *,
    width: int | None = None,
    width_of: str = "",
    finite: bool = True,
    error: type[UserError] | None = None,
) -> torch.Tensor:
    """`rows` unchanged if it is a floating-point tensor `[n, D]` with n, D >= 1, `D == width` (when given;
    `width_of` says whose width that is) and, with `finite`, no NaN/Inf; else `error` (default `UserError`, and
    `NonFiniteError` for NaN/Inf) in one line that starts with `label` and names the shape, dtype or widths."""
    import torch

    fail = error or UserError
    if not isinstance(rows, torch.Tensor):
        raise fail(f"{label} must be a torch.Tensor, got {type(rows).__name__}")
    shape = tuple(rows.shape)
    if rows.ndim != 2:
        raise fail(f"{label} must be a 2-D [rows, D] tensor, got shape {shape}")
    if 0 in shape:
        raise fail(f"{label} must be non-empty: it has no {'rows' if shape[0] == 0 else 'columns'} (shape {shape})")
    if not rows.is_floating_point():
        raise fail(f"{label}: dtype {rows.dtype} is not a floating-point type")
    if width is not None and shape[1] != width:
        raise fail(f"{label} has width {shape[1]}, expected {width}" + (f" ({width_of})" if width_of else ""))
    return require_finite(rows, label, error=error or NonFiniteError) if finite else rows


def check_number(
    value: object,
    what: str,
    ok: Callable[[float], bool],
    rule: str,
    *,
    integer: bool = False,
    error: type[UserError] = UserError,
) -> float:
    """`value` as a float if it is a finite real number (integral with `integer`; a bool is not a number) for which
    `ok` holds, else `error`: "{what} must be {rule}, got {value!r}"."""
    kind = Integral if integer else Real
    x = float(value) if isinstance(value, kind) and not isinstance(value, bool) else math.nan
    if not (math.isfinite(x) and ok(x)):
        raise error(f"{what} must be {rule}, got {value!r}")
    return x
