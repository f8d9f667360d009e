"""Text encoding with Z-Image's Qwen3 text encoder, as diffusers does it, with every knob exposed.

Default behaviour equals `ZImagePipeline.encode_prompt`: the chat template with no think block, hidden state
`[-2]`, rows of the prompt's real tokens only, at most 512 rows. Captions longer than `max_length` rows (at most
the DiT's 1504) are shortened by `long_prompt_mode`:

- `truncate`: keep the first `max_length` tokens (diffusers' behaviour; the tail is never encoded);
- `interpolate`: encode everything, resample the rows linearly to `max_length`;
- `pool`: encode everything, average-pool the rows to `max_length` (`adaptive_avg_pool1d`, every row counts);
- `attention_pool`: like `pool`, but within each window row j has weight `softmax_j(cos(x_j, m) / 0.1)` with
  `m` the mean of the window, so rows that agree with their neighbourhood dominate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .blend import align
from .config import EncoderConfig
from .hooks import capture_hidden_states
from .models import load_text_encoder

ATTENTION_POOL_TEMPERATURE = 0.1


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
        weights = torch.softmax(F.cosine_similarity(window, window.mean(0, keepdim=True), dim=-1)
                                / ATTENTION_POOL_TEMPERATURE, dim=0)  # fmt: skip
        out.append(weights @ window)
    return torch.stack(out).to(rows.dtype)


def shorten(rows: torch.Tensor, n: int, mode: str) -> torch.Tensor:
    """Apply `long_prompt_mode` to caption rows longer than `n` (see the module docstring)."""
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


class TextEncoder:
    """Z-Image's tokenizer and Qwen3 text encoder, loaded once."""

    def __init__(self, tokenizer, model) -> None:
        self.tokenizer = tokenizer
        self.model = model

    @classmethod
    def from_pretrained(cls, zimage: str, device: str = "auto", dtype: str = "auto") -> TextEncoder:
        return cls(*load_text_encoder(zimage, device, dtype))

    @property
    def num_layers(self) -> int:
        return self.model.config.num_hidden_layers

    @torch.no_grad()
    def encode(self, prompt: str, config: EncoderConfig | None = None) -> EncodedPrompt:
        """Encode one prompt with the settings of `config` (`hidden_layer`, `max_length`, `long_prompt_mode`,
        `system_prompt`, `think_block`)."""
        cfg = config or EncoderConfig()
        rendered = render_prompt(self.tokenizer, prompt, cfg.system_prompt, cfg.think_block)
        ids = self.tokenizer(rendered, add_special_tokens=False).input_ids
        keep = ids[: cfg.max_length] if cfg.long_prompt_mode == "truncate" else ids
        input_ids = torch.tensor([keep], device=self.model.device)
        hidden = capture_hidden_states(
            self.model, [cfg.hidden_layer], lambda: self.model(input_ids=input_ids, use_cache=False)
        )[cfg.hidden_layer][0]
        return EncodedPrompt(
            embeddings=shorten(hidden, cfg.max_length, cfg.long_prompt_mode),
            token_ids=keep,
            rendered=rendered,
            hidden_layer=cfg.hidden_layer,
            token_count=len(ids),
            shortened=len(ids) > cfg.max_length,
        )
