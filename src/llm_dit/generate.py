"""Generation: caption rows in, images out, through diffusers' Z-Image pipelines.

`denoise` is the single call into diffusers (`ZImagePipeline`, or `ZImageImg2ImgPipeline` with an init image):
llm-dit never re-implements the sampling loop. `Generator` holds the loaded components for one `Config` and
turns a prompt into an image plus the record that says exactly how it was made.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from .config import Config, GenerationConfig
from .files import library_versions
from .models import load_pipeline, release_memory
from .text import EncodedPrompt, TextEncoder


def set_shift(pipe, shift: float) -> None:
    """Give the pipeline a flow-match scheduler with `shift` (a no-op when it already has it)."""
    if pipe.scheduler.config.get("shift") != shift:
        pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, shift=shift)


@torch.no_grad()
def denoise(
    pipe,
    prompt_embeds: list[torch.Tensor],
    gen: GenerationConfig,
    seeds: list[int],
    *,
    negative_prompt_embeds: list[torch.Tensor] | None = None,
    init_image: Image.Image | None = None,
    callback: Callable[..., dict] | None = None,
) -> list[Image.Image]:
    """One diffusers call for `len(prompt_embeds)` images, image i seeded with a CPU generator `seeds[i]`.

    `guidance > 0` needs `negative_prompt_embeds` (one per prompt). `callback` is passed as diffusers'
    `callback_on_step_end` with `prompt_embeds` among its tensor inputs, so it can change the conditioning
    per step. With `init_image` this is image-to-image at `gen.strength`.
    """
    set_shift(pipe, gen.shift)
    dtype = pipe.transformer.dtype
    device = pipe.transformer.device
    generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    kwargs: dict[str, Any] = {
        "prompt_embeds": [e.to(device, dtype) for e in prompt_embeds],
        "height": gen.height,
        "width": gen.width,
        "num_inference_steps": gen.steps,
        "guidance_scale": gen.guidance,
        "generator": generators[0] if len(generators) == 1 else generators,
    }
    if gen.guidance > 0:
        kwargs["negative_prompt_embeds"] = [e.to(device, dtype) for e in negative_prompt_embeds or []]
    if callback is not None:
        kwargs["callback_on_step_end"] = callback
        kwargs["callback_on_step_end_tensor_inputs"] = ["latents", "prompt_embeds"]
    if init_image is None:
        return pipe(**kwargs).images
    from diffusers import ZImageImg2ImgPipeline

    img2img = ZImageImg2ImgPipeline.from_pipe(pipe)
    img2img.set_progress_bar_config(disable=True)
    return img2img(image=init_image, strength=gen.strength, **kwargs).images


@dataclass
class Result:
    image: Image.Image
    record: dict[str, Any]


@contextmanager
def timed(times: dict[str, float], name: str) -> Iterator[None]:
    """Add the wall-clock seconds of the `with` block to `times[name]`."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        times[name] = times.get(name, 0.0) + time.perf_counter() - t0


class Generator:
    """The components for one `Config`, loaded on first use. With `models.low_memory`, each component is released
    as soon as the next stage no longer needs it (text encoder before the DiT loads)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._text_encoder: TextEncoder | None = None
        self._pipeline = None

    @property
    def text_encoder(self) -> TextEncoder:
        if self._text_encoder is None:
            c = self.config
            self._text_encoder = TextEncoder.from_pretrained(c.models.zimage, c.encoder.device, c.encoder.dtype)
        return self._text_encoder

    @property
    def pipeline(self):
        if self._pipeline is None:
            if self.config.models.low_memory:
                self.release("text_encoder")
            g = self.config.generation
            self._pipeline = load_pipeline(self.config.models.zimage, g.device, g.dtype)
        return self._pipeline

    def release(self, component: str) -> None:
        """Drop a loaded component (`text_encoder` or `pipeline`) and return its memory."""
        setattr(self, f"_{component}", None)
        release_memory()

    def encode(self, prompt: str) -> EncodedPrompt:
        return self.text_encoder.encode(prompt, self.config.encoder)

    def generate(self, prompt: str, *, init_image: Image.Image | None = None) -> Result:
        """Text-to-image (or image-to-image with `init_image`) for `prompt` with this generator's config."""
        times: dict[str, float] = {}
        g = self.config.generation
        with timed(times, "encode"):
            encoded = self.encode(prompt)
            negative = [self.encode("").embeddings] if g.guidance > 0 else None
        with timed(times, "load"):
            pipe = self.pipeline
        with timed(times, "denoise"):
            image = denoise(pipe, [encoded.embeddings], g, [g.seed], negative_prompt_embeds=negative,
                            init_image=init_image)[0]  # fmt: skip
        return Result(image, self.record(prompt, encoded, times, init_image=init_image is not None))

    def record(self, prompt: str, encoded: EncodedPrompt, times: dict[str, float], **extra: Any) -> dict[str, Any]:
        """The sidecar record: resolved settings, models, library versions, seed, tokens and timings."""
        return {
            "prompt": prompt,
            "seed": self.config.generation.seed,
            "settings": self.config.flat(),
            "models": {"zimage": self.config.models.zimage},
            "text": {
                "rendered": encoded.rendered,
                "token_count": encoded.token_count,
                "caption_rows": int(encoded.embeddings.shape[0]),
                "shortened": encoded.shortened,
            },
            **extra,
            "versions": library_versions(),
            "timings_s": {k: round(v, 4) for k, v in times.items()},
        }
