"""DiT block injection: the blended conditioning C in chosen main blocks of Z-Image, the text T everywhere else.

Z-Image's transformer embeds and refines each caption (`cap_embedder`, `context_refiner`), then runs one unified
sequence per image, [image tokens | caption tokens], through its main blocks `layers` with joint attention. Image
tokens read the caption only through attention to the caption positions, so "C in block ℓ" means: in block ℓ
the caption positions hold C's caption stream. Two caption streams run beside one image stream. With x_ℓ the
image part and c^T_ℓ, c^C_ℓ the caption parts entering block B_ℓ (c_0 = the refined caption of T or C):

    ℓ chosen       [x_ℓ+1, c^C_ℓ+1] = B_ℓ([x_ℓ, c^C_ℓ])     c^T_ℓ+1 = caption part of B_ℓ([x_ℓ, c^T_ℓ])
    ℓ not chosen   [x_ℓ+1, c^T_ℓ+1] = B_ℓ([x_ℓ, c^T_ℓ])     c^C_ℓ+1 = caption part of B_ℓ([x_ℓ, c^C_ℓ])

Each caption stream evolves exactly as it would in a plain run given the actual image stream, so the endpoints
are exact: no blocks is plain T generation, all blocks is plain C generation (bitwise; the tests check both).

What is swapped, where: a forward pre-hook on each chosen block replaces the caption positions of its input by
c^C_ℓ; a forward hook writes c^T_ℓ+1 back into the caption positions of its output, so the tensor passed between
blocks always carries T's stream. The second stream of block ℓ is one more call of `B_ℓ.forward` made by a hook
(torch hooks, these included, see only the pipeline's own call). Positions follow diffusers'
`_build_unified_sequence` (basic mode): item i holds its image tokens padded to a multiple of 32, then its
caption padded to a multiple of 32; every denoiser call checks this against the refined caption at block 0.

Cost per denoiser call: `cap_embedder` and `context_refiner` once more for C (caption tokens only, small), plus
one extra block call for each block before the final run of blocks that are all chosen or all not chosen (that
run needs no second stream). Blocks 0-9 of 30 cost 10 extra block calls (+33% of the main blocks), block 29
alone 29 (+97%), all blocks 0. Memory: up to two extra unified-sequence tensors.

Lengths: the unified layout and the image tokens' RoPE positions depend on the padded caption length, so C_i
must have len(T_i) rows to share one image stream; a C_i of another length is area-resampled to len(T_i)
(`blend.align`) and listed in `resampled`. With CFG the pipeline passes 2B captions [positive, negative]: C
replaces only the B positive ones, as in a plain run with `prompt_embeds=C`.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor, nn

from ..core.errors import UserError
from ..core.numerics import check_rows
from ..maths.blend import align

SEQ_MULTIPLE = 32  # diffusers pads image and caption tokens to a multiple of this


def padded(n: int) -> int:
    """n rounded up to a multiple of 32 (the length diffusers gives a caption or an image in the sequence)."""
    return n + (-n) % SEQ_MULTIPLE


def block_indices(blocks: Sequence[int], num_blocks: int) -> tuple[int, ...]:
    """Sorted distinct block indices in 0..num_blocks−1 (negative counts from the end); error if out of range."""
    out = set()
    for b in blocks:
        if isinstance(b, bool) or not isinstance(b, int) or not -num_blocks <= b < num_blocks:
            raise UserError(
                f"inject block {b!r} is out of range: the DiT has {num_blocks} main blocks "
                f"(valid: 0..{num_blocks - 1}, or -{num_blocks}..-1 from the end)"
            )
        out.add(b % num_blocks)
    return tuple(sorted(out))


def second_stream_blocks(blocks: Sequence[int], num_blocks: int) -> int:
    """How many leading blocks also run the other caption stream: all blocks before the final run of blocks
    that are all chosen or all not chosen (0 for no blocks or all blocks)."""
    wanted = set(blocks)
    chosen = [b in wanted for b in range(num_blocks)]
    start = num_blocks - 1
    while start > 0 and chosen[start - 1] == chosen[-1]:
        start -= 1
    return start if blocks else 0


@dataclass
class _Call:
    """What one denoiser call needs: which items get C, C's rows, the layout, and the two streams."""

    items: list[int]
    captions: list[Tensor]  # per item: C_i (aligned, cast) for injected items, T_i otherwise
    x_len: list[int]
    cap_len: list[int]
    refined_c: Tensor | None = None
    refined_t: Tensor | None = None
    cap_pos: Tensor | None = None  # [B, S, 1] bool: caption positions of the injected items
    cond: Tensor | None = None  # unified sequence whose caption positions hold c^C
    text: Tensor | None = None  # output of the T stream of the current block


def injected_rows(c: Tensor, n: int) -> Tensor:
    """C as the chosen blocks receive it: its own rows when it has `n` (= len(T)) rows, else area-resampled to `n`
    (`blend.align`): the unified layout needs len(C) = len(T)."""
    return c if c.shape[0] == n else align(c, n, "area")


class Injector:
    """Hooks that put `conditioning` (one C per image) into the chosen main blocks of a ZImageTransformer2DModel;
    installed by `with`, removed on exit. `calls` counts denoiser calls, `resampled` maps item → (rows of C,
    rows of T) for every C that had to be resampled."""

    def __init__(self, transformer: nn.Module, blocks: Sequence[int], conditioning: Sequence[Tensor]) -> None:
        n = len(transformer.layers)
        self.transformer = transformer
        self.blocks = block_indices(blocks, n)
        self.second_stream = second_stream_blocks(self.blocks, n)
        if not conditioning:
            raise UserError("DiT injection needs one conditioning tensor per image, got none")
        width = transformer.config.cap_feat_dim
        self.conditioning = [
            check_rows(c, f"injected conditioning {i}", width=width, width_of="the DiT caption width")
            for i, c in enumerate(conditioning)
        ]
        if self.blocks and len(transformer.context_refiner) == 0:
            raise UserError("DiT injection needs a transformer with a context refiner")
        self.calls = 0
        self.resampled: dict[int, tuple[int, int]] = {}
        self._handles: list = []
        self._call: _Call | None = None
        self._aligned: dict[tuple, Tensor] = {}

    # ------------------------------------------------------------------------------------------- install

    def __enter__(self) -> Injector:
        if self._handles:
            raise RuntimeError("this Injector is already installed")
        if not self.blocks:
            return self  # nothing to inject: the model runs untouched
        tr = self.transformer
        hook = self._handles.append
        hook(tr.register_forward_pre_hook(self._begin, with_kwargs=True))
        hook(tr.register_forward_hook(self._end, always_call=True))
        hook(tr.context_refiner[0].register_forward_pre_hook(self._refine_c, with_kwargs=True))
        hook(tr.context_refiner[-1].register_forward_hook(self._keep_refined_t))
        hook(tr.layers[0].register_forward_pre_hook(self._start_streams))
        for b in range(len(tr.layers)):
            if b in self.blocks:
                hook(tr.layers[b].register_forward_pre_hook(partial(self._chosen_pre, b), with_kwargs=True))
                hook(tr.layers[b].register_forward_hook(partial(self._chosen_post, b)))
            elif b < self.second_stream:
                hook(tr.layers[b].register_forward_pre_hook(partial(self._other_pre, b), with_kwargs=True))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._call = None

    # ------------------------------------------------------------------------------------------- hooks

    def _begin(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """Per denoiser call: pick the items that get C, align C to T's length, compute the layout."""
        bound = inspect.signature(module.forward).bind(*args, **kwargs)
        bound.apply_defaults()
        a = bound.arguments
        x, captions = a["x"], a["cap_feats"]
        if isinstance(x[0], list) or a.get("siglip_feats") is not None:
            raise UserError("DiT injection supports text-to-image and image-to-image, not omni/SigLIP mode")
        if a.get("controlnet_block_samples") is not None:
            raise UserError("DiT injection cannot be combined with a ControlNet")
        n_c, n = len(self.conditioning), len(captions)
        if n not in (n_c, 2 * n_c):
            raise UserError(f"DiT injection has {n_c} conditioning tensor(s) but the denoiser got {n} captions")
        p, pf = a["patch_size"], a["f_patch_size"]
        x_len = [padded((xi.shape[1] // pf) * (xi.shape[2] // p) * (xi.shape[3] // p)) for xi in x]
        rows = [self._aligned_c(i, captions[i]) if i < n_c else captions[i] for i in range(n)]
        self._call = _Call(list(range(n_c)), rows, x_len, [padded(len(c)) for c in captions])
        self.calls += 1

    def _end(self, *_: object) -> None:
        self._call = None

    def _aligned_c(self, i: int, text: Tensor) -> Tensor:
        c = self.conditioning[i]
        key = (i, text.shape[0], text.dtype, text.device)
        if key not in self._aligned:
            if c.shape[0] != text.shape[0]:
                self.resampled[i] = (c.shape[0], text.shape[0])
            self._aligned[key] = injected_rows(c, text.shape[0]).to(text.device, text.dtype)
        return self._aligned[key]

    def _refine_c(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """Before the refiner runs on T: run embedder + refiner on C with the same shapes (bitwise what a plain
        run with C computes), C's rows replacing T's non-pad rows of the refiner input."""
        call = self._call
        if call is None:
            return
        feats, rest = args[0], args[1:]
        embed_in = torch.cat([torch.cat([c, c[-1:].expand(padded(len(c)) - len(c), -1)]) for c in call.captions])
        embedded = self.transformer.cap_embedder(embed_in)
        stream, offset = feats.clone(), 0
        for i, c in enumerate(call.captions):
            if i in call.items:
                stream[i, : len(c)] = embedded[offset : offset + len(c)]
            offset += padded(len(c))
        for layer in self.transformer.context_refiner:
            stream = layer.forward(stream, *rest, **kwargs)
        call.refined_c = stream

    def _keep_refined_t(self, _m: nn.Module, _args: tuple, output: Tensor) -> None:
        if self._call is not None:
            self._call.refined_t = output

    def _start_streams(self, _m: nn.Module, args: tuple) -> None:
        """At block 0: check the layout, then build the C stream (refined C in the caption positions)."""
        call = self._call
        if call is None:
            return
        unified = args[0]
        b, s = unified.shape[:2]
        expected = max(x + c for x, c in zip(call.x_len, call.cap_len, strict=True))
        if call.refined_t is None or call.refined_c is None or s != expected:
            raise RuntimeError("Z-Image's unified sequence is not laid out as llm-dit's DiT injection assumes")
        cap_pos = torch.zeros(b, s, 1, dtype=torch.bool, device=unified.device)
        cond = unified.clone()
        for i in call.items:
            lo, n = call.x_len[i], call.cap_len[i]
            if not torch.equal(unified[i, lo : lo + n], call.refined_t[i, :n]):
                raise RuntimeError("Z-Image's caption positions are not where llm-dit's DiT injection expects them")
            cap_pos[i, lo : lo + n] = True
            cond[i, lo : lo + n] = call.refined_c[i, :n]
        call.cap_pos, call.cond = cap_pos, cond

    def _chosen_pre(self, b: int, module: nn.Module, args: tuple, kwargs: dict) -> tuple | None:
        """Chosen block: advance T's stream on the side (if a later block needs it), feed C's stream in."""
        call = self._call
        if call is None:
            return None
        unified, rest = args[0], args[1:]
        if b < self.second_stream:
            call.text = module.forward(unified, *rest, **kwargs)
        return (torch.where(call.cap_pos, call.cond, unified), *rest), kwargs

    def _chosen_post(self, b: int, _m: nn.Module, _args: tuple, output: Tensor) -> Tensor | None:
        """Chosen block: its output is C's stream; pass T's stream on in the caption positions."""
        call = self._call
        if call is None:
            return None
        call.cond = output
        if b < self.second_stream:
            return torch.where(call.cap_pos, call.text, output)
        return None

    def _other_pre(self, _b: int, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """Block without C (before a later chosen block): advance C's stream on the side."""
        call = self._call
        if call is None:
            return
        unified, rest = args[0], args[1:]
        call.cond = module.forward(torch.where(call.cap_pos, call.cond, unified), *rest, **kwargs)


def inject_conditioning(transformer: nn.Module, blocks: Sequence[int], conditioning: Sequence[Tensor]) -> Injector:
    """Context manager: inside it, `transformer` (a ZImageTransformer2DModel) sees `conditioning` (one C per
    image, `[L, cap_feat_dim]`) in main blocks `blocks` and the pipeline's `prompt_embeds` (T) in all others."""
    return Injector(transformer, blocks, conditioning)
