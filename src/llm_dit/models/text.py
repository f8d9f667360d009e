"""Text encoding with Z-Image's Qwen3 text encoder, as diffusers does it, with every knob exposed.

With the default settings, a prompt whose rendered template has at most `max_length` (512) tokens is encoded
exactly as `ZImagePipeline.encode_prompt` encodes it: the chat template with no think block, hidden state `[-2]`,
rows of the prompt's real tokens only. Longer prompts differ from diffusers on purpose: diffusers cuts the
tokens at 512, while the default `long_prompt_mode = "interpolate"` encodes every token and resamples the rows to
`max_length` (at most the DiT's 1504). Captions longer than `max_length` rows are shortened by `long_prompt_mode`:

- `truncate`: keep the first `max_length` tokens (diffusers' behaviour; the tail is never encoded);
- `interpolate` (default): encode everything, resample the rows linearly to `max_length`;
- `pool`: encode everything, average-pool the rows to `max_length` (`adaptive_avg_pool1d`, every row counts);
- `attention_pool`: like `pool`, but within each window row j has weight `softmax_j(cos(x_j, m) / 0.1)` with
  `m` the mean of the window, so rows that agree with their neighbourhood dominate.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F

from ..core.errors import UserError, check_choice
from ..core.modes import LONG_PROMPT_MODES
from ..core.numerics import check_number
from ..maths.blend import CAPTION_LIMIT, align
from ..maths.refstats import ReferenceStats, compute_reference_stats
from ..maths.sinks import SINK_RATIO
from .hooks import capture_hidden_states
from .loading import LazyEncoder, check_zimage, load_model, model_identity

ATTENTION_POOL_TEMPERATURE = 0.1
_BROKEN = "a broken checkpoint, or fp16 overflow (try encoder.dtype float32)"

# The built-in prompt set for reference statistics: varied subjects, styles and lengths, like image prompts.
STATS_PROMPTS = (
    "A red fox standing in a snowy forest at dawn, soft golden light",
    "Homer Simpson eating spaghetti in a cartoon kitchen",
    "A watercolor painting of a quiet harbour with small fishing boats",
    "Close-up portrait of an old man with a grey beard, dramatic studio lighting, 85mm photo",
    "A cyberpunk city street at night, neon signs reflected in rain puddles",
    "Pixel art castle on a hill under a purple sky",
    "An art deco poster of a train crossing a bridge, bold geometric shapes",
    "A bowl of ramen with a soft-boiled egg, overhead food photography",
    "Ukiyo-e style great wave with Mount Fuji in the background",
    "A cozy reading room with a fireplace, bookshelves and a sleeping cat",
    "Macro photo of a dewdrop on a green leaf",
    "A desert highway at sunset with long shadows and a lone red car",
)


def render_prompt(tokenizer, prompt: str, system_prompt: str | None = None, think_block: bool = False) -> str:
    """The chat-template text the encoder sees. `think_block=True` adds the empty `<think>` block that Qwen3's
    template writes for `enable_thinking=False`; diffusers renders without it."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": prompt})
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, enable_thinking=not think_block
    )


def attention_pool(rows: torch.Tensor, n: int) -> torch.Tensor:
    """Pool `[L, D]` rows to `[n, D]` over the `adaptive_avg_pool1d` windows, weighting row j of a window by
    `softmax_j(cos(x_j, m) / 0.1)`, `m` = the window mean. Float32 inside, output in the input dtype."""
    x = rows.float()
    length = x.shape[0]
    out = []
    for i in range(n):
        start, end = (i * length) // n, math.ceil((i + 1) * length / n)
        window = x[start:end]
        weights = torch.softmax(
            F.cosine_similarity(window, window.mean(0, keepdim=True), dim=-1) / ATTENTION_POOL_TEMPERATURE, dim=0
        )
        out.append(weights @ window)
    return torch.stack(out).to(rows.dtype)


def check_long_prompt_mode(mode: str) -> str:
    """`mode` if it is one of `LONG_PROMPT_MODES`, else a `UserError` naming `encoder.long_prompt_mode`."""
    return check_choice(mode, LONG_PROMPT_MODES, "encoder.long_prompt_mode")


def shorten(rows: torch.Tensor, n: int, mode: str) -> torch.Tensor:
    """Apply `long_prompt_mode` to caption rows longer than `n` (see the module docstring)."""
    check_long_prompt_mode(mode)
    if rows.shape[0] <= n:
        return rows
    if mode == "truncate":
        return rows[:n]
    if mode == "attention_pool":
        return attention_pool(rows, n)
    return align(rows, n, {"interpolate": "linear", "pool": "area"}[mode]).to(rows.dtype)


@dataclass
class EncodedPrompt:
    """Caption rows for the DiT plus what produced them."""

    embeddings: torch.Tensor  # [L, D] on the encoder's device, in its dtype
    token_ids: list[int]
    rendered: str
    hidden_layer: int
    token_count: int  # tokens in the rendered prompt before shortening
    shortened: bool


class TextEncoder(LazyEncoder):
    """Z-Image's tokenizer and Qwen3 text encoder with an optional tensor cache of hidden rows. The model loads on
    the first cache miss, so a fully cached run never loads it."""

    def __init__(self, tokenizer, config, **encoder: Any) -> None:
        """`tokenizer`, the Qwen3 `config`, and `LazyEncoder`'s arguments (load, identity, dtype, cache, device)."""
        super().__init__(**encoder)
        self.tokenizer = tokenizer
        self.config = config

    @classmethod
    def _parts(cls, zimage: str, trust_remote_code: bool) -> tuple[dict[str, Any], Callable[..., torch.nn.Module]]:
        """Tokenizer and config of the Z-Image folder's text encoder (the weights load on the first cache miss)."""
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        check_zimage(zimage)
        remote = {"trust_remote_code": trust_remote_code}
        try:
            tokenizer = AutoTokenizer.from_pretrained(zimage, subfolder="tokenizer", **remote)
            config = AutoConfig.from_pretrained(zimage, subfolder="text_encoder", **remote)
        except (OSError, ValueError) as e:
            raise UserError(f"cannot load the text encoder of {zimage}: {str(e).splitlines()[0]}") from None
        parts = {"tokenizer": tokenizer, "config": config, "identity": model_identity(zimage, "text_encoder")}
        return parts, partial(load_model, AutoModel, zimage, subfolder="text_encoder", **remote)

    @property
    def num_layers(self) -> int:
        return self.config.num_hidden_layers

    @torch.no_grad()
    def hidden_rows(self, token_ids: list[int], layers: Sequence[int]) -> dict[int, torch.Tensor]:
        """`{layer: [len(token_ids), D]}` in the encoder's dtype on the CPU, from at most one forward pass;
        layers already in the cache are not recomputed."""

        def forward(missing: list[int]) -> dict[int, torch.Tensor]:
            input_ids = torch.tensor([token_ids], device=self.model.device)
            captured = capture_hidden_states(
                self.model, missing, lambda: self.model(input_ids=input_ids, use_cache=False)
            )
            return {layer: hidden[0].cpu() for layer, hidden in captured.items()}

        rows, _ = self.cached_rows("text", {"token_ids": token_ids}, layers, forward, "text encoder", _BROKEN)
        return rows

    def encode(
        self,
        prompt: str,
        *,
        hidden_layer: int = -2,
        max_length: int = 512,
        long_prompt_mode: str = "interpolate",
        system_prompt: str | None = None,
        think_block: bool = False,
    ) -> EncodedPrompt:
        """Encode one prompt: rows of `hidden_layer` for the rendered template (`system_prompt`, `think_block`),
        shortened to `max_length` (1..CAPTION_LIMIT) rows by `long_prompt_mode`. The arguments are the settings of
        config section `encoder` (less its device and dtype), with the same defaults."""
        check_long_prompt_mode(long_prompt_mode)
        check_number(
            max_length,
            "encoder.max_length",
            lambda n: 1 <= n <= CAPTION_LIMIT,
            f"an int in 1..{CAPTION_LIMIT}",
            integer=True,
        )
        rendered = render_prompt(self.tokenizer, prompt, system_prompt, think_block)
        ids = self.tokenizer(rendered, add_special_tokens=False).input_ids
        keep = ids[:max_length] if long_prompt_mode == "truncate" else ids
        hidden = self.hidden_rows(keep, [hidden_layer])[hidden_layer]
        return EncodedPrompt(
            embeddings=shorten(hidden, max_length, long_prompt_mode),
            token_ids=keep,
            rendered=rendered,
            hidden_layer=hidden_layer,
            token_count=len(ids),
            shortened=len(ids) > max_length,
        )

    def reference_stats(
        self, layers: Sequence[int], prompts: Sequence[str] = STATS_PROMPTS, sink_ratio: float = SINK_RATIO
    ) -> dict[int, ReferenceStats]:
        """Per-dimension statistics of the caption rows (default rendering) of `prompts` at each layer, over content
        rows only: each prompt's attention-sink rows (`sinks.find_sinks`, ratio `sink_ratio`) are left out, and the
        metadata lists them (`sink_ratio`, `sink_count`, `sinks` with prompt, position, token and dims)."""
        per_layer: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
        prompt_ids = []
        for prompt in prompts:
            ids = self.tokenizer(render_prompt(self.tokenizer, prompt), add_special_tokens=False).input_ids
            prompt_ids.append(ids)
            for layer, rows in self.hidden_rows(ids, layers).items():
                per_layer[layer].append(rows)
        name = self.identity["id"]

        def token(prompt: int, position: int) -> str:
            return self.tokenizer.decode([prompt_ids[prompt][position]])

        return {
            layer: compute_reference_stats(rows, layer, name, len(prompts), sink_ratio=sink_ratio, token=token)
            for layer, rows in per_layer.items()
        }
