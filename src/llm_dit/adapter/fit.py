"""Fitting an adapter in closed form: ridge regression on paired rows (Qwen3-VL rows of image + caption against the
text encoder's rows of the same caption), attention sinks left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from PIL import Image
from torch import Tensor

from ..core.errors import UserError
from ..core.files import load_image
from ..core.numerics import check_number, check_rows
from ..maths.sinks import SINK_RATIO, find_sinks
from ..models.text import TextEncoder, render_prompt
from ..models.vl import VLEmbeddingExtractor, find_spans
from .model import Adapter

__all__ = [
    "PairedRows",
    "check_pairs",
    "common_block",
    "paired_rows",
    "ridge_fit",
]


def check_pairs(x: Tensor, y: Tensor) -> None:
    """`x` and `y` as `ridge_fit` needs them: finite rows `[n, D]` (`numerics.check_rows`) of one shape, n >= 2."""
    check_rows(x, "ridge_fit: x")
    check_rows(y, "ridge_fit: y", width=x.shape[1], width_of="the width of x")
    if x.shape != y.shape:
        raise UserError(f"ridge_fit needs x and y of the same shape, got {list(x.shape)} and {list(y.shape)}")
    if x.shape[0] < 2:
        raise UserError(f"ridge_fit needs at least 2 row pairs, got {x.shape[0]}")


def ridge_fit(x: Tensor, y: Tensor, lam: float, kind: str = "linear", rank: int | None = None) -> Adapter:
    """The ridge regression of `y` on `x` with a bias, as an adapter of `kind` (float64 solve).

    With `X = x − x̄`, `Y = y − ȳ` (column means over the n rows) and the bias `b = ȳ − x̄ W`:

    - `linear`: `W = (XᵀX + λI)⁻¹ XᵀY`;
    - `low_rank`: the ridge fit of the residual `Y − X` (so λ shrinks toward the identity, the kind's
      initialisation; at λ = 0 it equals `linear`), `Δ = (XᵀX + λI)⁻¹ Xᵀ(Y − X)`, truncated to rank r by SVD:
      `Δ = P S Qᵀ`, `U = P_r √S_r`, `V = Q_r √S_r`, `W = I + U Vᵀ` (b from the truncated W);
    - `affine`: per dimension d, `s_d = Σᵢ X_id Y_id / (Σᵢ X_id² + λ)`, `t_d = ȳ_d − s_d x̄_d`.

    λ ≥ 0 is in the units of the sums (it does not scale with n).
    """
    check_pairs(x, y)
    check_number(lam, "ridge lambda", lambda x: x >= 0, "a finite number >= 0")
    adapter = Adapter(x.shape[1], kind, rank)
    xd, yd = x.double().cpu(), y.double().cpu()
    x_mean, y_mean = xd.mean(0), yd.mean(0)
    xc, yc = xd - x_mean, yd - y_mean
    dim = adapter.dim
    if kind == "affine":
        scale = (xc * yc).sum(0) / ((xc * xc).sum(0) + lam)
        scale = torch.where(torch.isfinite(scale), scale, torch.zeros_like(scale))  # constant input, λ = 0
        adapter.set_tensors({"scale": scale.float(), "shift": (y_mean - scale * x_mean).float()})
        return adapter
    gram = xc.T @ xc + lam * torch.eye(dim, dtype=torch.float64)
    target = yc if kind == "linear" else yc - xc
    if lam == 0 and int(torch.linalg.matrix_rank(gram)) < dim:
        raise UserError("ridge_fit: XᵀX is singular (fewer independent rows than dimensions); use lambda > 0")
    w = torch.linalg.solve(gram, xc.T @ target)
    if kind == "linear":
        adapter.set_tensors({"weight": w.float(), "bias": (y_mean - x_mean @ w).float()})
        return adapter
    p, s, qh = torch.linalg.svd(w)
    r = adapter.rank
    root = s[:r].sqrt()
    u, v = p[:, :r] * root, qh[:r].T * root
    full = torch.eye(dim, dtype=torch.float64) + u @ v.T
    adapter.set_tensors({"u": u.float(), "v": v.float(), "bias": (y_mean - x_mean @ full).float()})
    return adapter


def common_block(a: Sequence[int], b: Sequence[int]) -> tuple[int, int, int]:
    """The longest run of tokens that `a` and `b` share, `(start in a, start in b, length)` (ties: the latest in
    `a`). For a caption rendered by two chat templates it is the caption plus the closing tokens both templates
    write — the shared tail, or what is left of it when one template adds more (a Thinking model's `<think>`)."""
    best = (len(a), len(b), 0)
    run = [0] * (len(b) + 1)
    for i in range(len(a)):
        prev = 0
        for j in range(len(b)):
            here = run[j + 1]
            run[j + 1] = prev + 1 if a[i] == b[j] else 0
            prev = here
            if run[j + 1] >= best[2] and run[j + 1] > 0:
                best = (i + 1 - run[j + 1], j + 1 - run[j + 1], run[j + 1])
    return best


class PairedRows(NamedTuple):
    """What `paired_rows` gives: the pairs `x` (Qwen3-VL rows) and `y` (text-encoder rows), and `sinks`: the pair
    rows there were (`pair_rows`, the pooled one included), how many were `dropped` as attention sinks, and how many
    rows of each side were left out of the pooled pair (`pooled_left_out`: `{"vl": k, "text": k}`)."""

    x: Tensor
    y: Tensor
    sinks: dict[str, Any]


def paired_rows(
    extractor: VLEmbeddingExtractor,
    text_encoder: TextEncoder,
    image: Image.Image | str | Path,
    caption: str,
    hidden_layer: int = -6,
    text_layer: int = -2,
    *,
    system_prompt: str | None = None,
    text_system_prompt: str | None = None,
    think_block: bool = False,
    sink_ratio: float = SINK_RATIO,
) -> PairedRows:
    """Training pairs `(x, y)`, each `[m + 1, D]` float32: Qwen3-VL rows in, text-encoder rows out, and what the
    attention sinks left out (`PairedRows.sinks`).

    Rows 0..m−1: the Qwen3-VL rows (layer `hidden_layer`, raw: no masking or normalisation; the VL template with
    `system_prompt`) of image + caption at the caption's positions — the text after the image block
    (`spans.after`) — against the text encoder's rows (layer `text_layer`, rendered with `text_system_prompt` and
    `think_block` as `text.render_prompt` does) of the same caption at the same tokens: the two token sequences are
    aligned on the run they share (`common_block`: the caption and the template's closing tokens, i.e. the shared
    tail), n its length. Row m, the pooled pair: the mean of the image-pad rows against the mean of those
    text-encoder rows (not of the whole encoding: the template's opening rows are the same for every caption).

    Attention sinks (`sinks.find_sinks` with `r = sink_ratio`, config `vl.sink_ratio`, applied once to each whole
    sequence: `S_v` of the VL rows, `S_t` of the text rows) are not content, so nothing is fitted on them: of the n
    aligned positions k, the pair is kept when `k ∉ S_v ∧ k ∉ S_t` (m of them, `dropped = n − m`); the pooled pair
    is `mean{v_i : i image pad, i ∉ S_v}` against `mean{t_k : k aligned, k ∉ S_t}` (`pooled_left_out`: the rows
    of each side left out of those means).
    """
    if isinstance(image, str | Path):
        image = load_image(image, "training image")
    if not caption or not caption.strip():
        raise UserError("paired_rows needs a non-empty caption")
    vl_rows, ids, _, _ = extractor.hidden_rows(image, caption, [hidden_layer], system_prompt)
    spans = find_spans(ids, extractor.ids["start"], extractor.ids["end"], extractor.ids["pad"])
    if spans.image_pad is None or spans.image_pad[0] == spans.image_pad[1]:
        raise UserError("paired_rows: the Qwen3-VL prompt has no image-pad rows")
    tok = text_encoder.tokenizer
    te_ids = tok(render_prompt(tok, caption, text_system_prompt, think_block), add_special_tokens=False).input_ids
    i, j, n = common_block(ids[spans.after[0] :], te_ids)
    if n == 0:
        raise UserError("paired_rows: the Qwen3-VL and text-encoder token sequences share no caption tokens")
    te_rows = text_encoder.hidden_rows(te_ids, [text_layer])[text_layer].float()
    v = vl_rows[hidden_layer].float()
    if v.shape[1] != te_rows.shape[1]:
        raise UserError(f"Qwen3-VL width {v.shape[1]} does not match the text encoder width {te_rows.shape[1]}")
    start = spans.after[0] + i
    v_sinks, t_sinks = find_sinks(v, sink_ratio), find_sinks(te_rows, sink_ratio)
    caption_sinks = t_sinks[j : j + n]
    keep = ~(v_sinks[start : start + n] | caption_sinks)
    pad = slice(*spans.image_pad)
    pad_content = v[pad][~v_sinks[pad]]
    caption_content = te_rows[j : j + n][~caption_sinks]
    if len(pad_content) == 0 or len(caption_content) == 0:
        raise UserError(
            f"paired_rows: every {'image-pad' if len(pad_content) == 0 else 'caption'} row is an attention sink "
            f"(vl.sink_ratio {sink_ratio:g}): nothing is left to pool; raise vl.sink_ratio"
        )
    x = torch.cat([v[start : start + n][keep], pad_content.mean(0, keepdim=True)])
    y = torch.cat([te_rows[j : j + n][keep], caption_content.mean(0, keepdim=True)])
    left_out = {"vl": int(v_sinks[pad].sum()), "text": int(caption_sinks.sum())}
    return PairedRows(x, y, {"pair_rows": n + 1, "dropped": int((~keep).sum()), "pooled_left_out": left_out})
