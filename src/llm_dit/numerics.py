"""Numbers that would poison a run: NaN/Inf rows are stopped where they appear, with the stage named.

A broken checkpoint or an fp16 overflow gives NaN/Inf hidden rows; nothing downstream repairs them (a blend keeps
NaN, the DiT turns them into a black or noise image). Each stage that makes rows checks them with
`require_finite`: the text encoder and the VL extraction per layer (`text.TextEncoder.hidden_rows`,
`vl.VLEmbeddingExtractor.hidden_rows`), the adapter (`generate.Generator.condition`) and every blend
(`blend._finish`).
"""

from __future__ import annotations

import torch

from .errors import UserError


class NonFiniteError(UserError):
    """NaN or Inf values where rows must be finite."""


def require_finite(
    rows: torch.Tensor, stage: str, hint: str = "", error: type[UserError] = NonFiniteError
) -> torch.Tensor:
    """`rows` unchanged if every value is finite, else `error` naming `stage` and counting the bad values (one
    line; `hint` is appended)."""
    finite = torch.isfinite(rows)
    if bool(finite.all()):
        return rows
    nan = int(torch.isnan(rows).sum())
    inf = int((~finite).sum()) - nan
    hint = f"; {hint}" if hint else ""
    raise error(f"{stage}: {nan} NaN and {inf} Inf values in {tuple(rows.shape)} rows{hint}")
