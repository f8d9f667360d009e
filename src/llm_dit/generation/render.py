"""Rendering: caption rows in, images out, through diffusers' Z-Image pipelines.

`denoise` is the single call into diffusers (`ZImagePipeline`, or `ZImageImg2ImgPipeline` with an init image):
llm-dit never re-implements the sampling loop. `render` runs prepared images: it chooses how the conditioning
reaches the DiT first (the caption rows as they are, a step callback for an alpha schedule, or block hooks for DiT
injection) and then makes that one `denoise` call.

Nothing non-finite becomes an image: `denoise` watches the latents after every denoising step (`watch_latents`)
and the decoded pixels before they are quantised (`check_pixels`), and a NaN/Inf in either fails the call with
`numerics.NonFiniteError` naming the stage (the DiT, or the VAE), so no PNG is written (before, NaN became an
all-black image recorded as a success).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from ..conditioning.source import Conditioning
from ..config.settings import Config, GenerationConfig
from ..core.errors import UserError
from ..core.numerics import NonFiniteError
from ..maths.schedule import schedule_callback
from ..models.inject import inject_conditioning
from ..models.text import EncodedPrompt

OnStep = Callable[[int, int], None]
"""Progress of one denoise call: `on_step(steps done, total steps)`."""


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
    on_step: OnStep | None = None,
) -> list[Image.Image]:
    """One diffusers call for `len(prompt_embeds)` images, image i seeded with a CPU generator `seeds[i]`.

    `guidance > 0` needs `negative_prompt_embeds` (one per prompt). `callback` is passed as diffusers'
    `callback_on_step_end` with `prompt_embeds` among its tensor inputs, so it can change the conditioning
    per step. With `init_image` this is image-to-image at `gen.strength` (the init image is resized to the output
    size with Lanczos first: diffusers' img2img requires the two to match). `on_step(done, total)` is called after
    each denoising step (through the same diffusers callback; an exception it raises stops the call).

    Non-finite output fails the call (`NonFiniteError`, one line): latents after any step (`watch_latents`, checked
    at the last step, before the VAE runs) or decoded pixels (`check_pixels`). The pipeline returns float pixels
    (`output_type="np"`) and they become PIL images by the same `numpy_to_pil` its `"pil"` output uses, so the
    images are bit for bit what `output_type="pil"` gives.
    """
    set_shift(pipe, gen.shift)
    dtype = pipe.transformer.dtype
    device = pipe._execution_device  # with CPU offload the DiT waits on the CPU: the accelerator it runs on
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
    if on_step is not None:
        callback = with_progress(callback, on_step)
    kwargs["callback_on_step_end"] = watch_latents(callback)
    kwargs["callback_on_step_end_tensor_inputs"] = ["latents", "prompt_embeds"]
    kwargs["output_type"] = "np"
    if init_image is None:
        return check_pixels(pipe, pipe(**kwargs).images)
    from diffusers import ZImageImg2ImgPipeline

    img2img = ZImageImg2ImgPipeline.from_pipe(pipe)
    img2img.set_progress_bar_config(disable=True)
    # diffusers encodes the init image at its own size; it must match the output size, so resize it first
    if init_image.size != (gen.width, gen.height):
        init_image = init_image.resize((gen.width, gen.height), Image.Resampling.LANCZOS)
    return check_pixels(img2img, img2img(image=init_image, strength=gen.strength, **kwargs).images)


NON_FINITE_HINT = "a broken checkpoint, or fp16 overflow (try generation.dtype float32); no image written"


def which_images(bad: list[bool]) -> str:
    """The images of a batch flagged in `bad`, e.g. `" (image 2 of 3 in this call)"`; `""` for a batch of one."""
    if len(bad) == 1:
        return ""
    listed = ", ".join(str(i + 1) for i, b in enumerate(bad) if b)
    return f" (image{'s' if sum(bad) > 1 else ''} {listed} of {len(bad)} in this call)"


def watch_latents(callback: Callable[..., dict] | None) -> Callable[..., dict]:
    """diffusers' step callback `callback` (or none) that also watches the latents each step leaves.

    Per image b of the batch and step i (0-based), `first_b = min{i : latents_b after step i has a NaN/Inf}` (or
    none), kept on the latents' device so no step waits for the accelerator; at the last step (`i + 1 =
    pipe.num_timesteps`, before the VAE decodes) one read of `first` and, when any image has one,
    `NonFiniteError`: "generation: the DiT produced non-finite latents (NaN/Inf) at step first_b + 1 of N". A NaN
    never leaves the latents again (the Euler step adds to them), so the last step alone would find it; `first`
    says where it started."""
    first: list[torch.Tensor] = []

    def step_end(pipe, i: int, t, kwargs: dict) -> dict:
        out = callback(pipe, i, t, kwargs) if callback is not None else {}
        latents = out.get("latents", kwargs["latents"])
        bad = ~torch.isfinite(latents.flatten(1)).all(1)
        if not first:
            first.append(torch.full(bad.shape, -1, dtype=torch.long, device=bad.device))
        first[0] = torch.where(bad & (first[0] < 0), i, first[0])
        if i + 1 == pipe.num_timesteps:
            steps = first[0].tolist()
            if any(s >= 0 for s in steps):
                at = min(s for s in steps if s >= 0) + 1
                raise NonFiniteError(
                    f"generation: the DiT produced non-finite latents (NaN/Inf) at step {at} of "
                    f"{pipe.num_timesteps}{which_images([s >= 0 for s in steps])}: {NON_FINITE_HINT}"
                )
        return out

    return step_end


def check_pixels(pipe, pixels) -> list[Image.Image]:
    """The decoded float pixels `[B, H, W, 3]` in [0, 1] (diffusers' `output_type="np"`) as PIL images, converted
    by the pipeline's own `image_processor.numpy_to_pil` (`round(255·x)` as uint8, what its `"pil"` output does);
    `NonFiniteError` naming the VAE when any value is NaN/Inf (the clamp to [0, 1] keeps NaN, and the cast would
    make it 0: black)."""
    import numpy as np

    finite = np.isfinite(pixels.reshape(len(pixels), -1)).all(1)
    if not finite.all():
        raise NonFiniteError(
            f"generation: the VAE decoded non-finite pixels (NaN/Inf){which_images([not f for f in finite])}: "
            f"{NON_FINITE_HINT}"
        )
    return pipe.image_processor.numpy_to_pil(pixels)


def with_progress(callback: Callable[..., dict] | None, on_step: OnStep) -> Callable[..., dict]:
    """diffusers' step callback `callback` (or none) that also reports `on_step(done, total)` after each step."""

    def step_end(pipe, i: int, t, kwargs: dict) -> dict:
        out = callback(pipe, i, t, kwargs) if callback is not None else {}
        on_step(i + 1, pipe.num_timesteps)
        return out

    return step_end


def denoising_steps(gen: GenerationConfig, img2img: bool) -> int:
    """Steps diffusers actually runs: all of them, or for img2img `N - int(N - N*strength)` (it skips the first
    `int(N - N*strength)`)."""
    return gen.steps - int(gen.steps - gen.steps * gen.strength) if img2img else gen.steps


@dataclass
class Prepared:
    """One image ready for the DiT (see `Generator.prepare`)."""

    prompt: str
    config: Config
    conditioning: Conditioning
    encoded: EncodedPrompt
    alphas: list[float]  # one per denoising step when they vary, else the single alpha
    first: torch.Tensor  # caption rows of the first step
    negative: torch.Tensor | None
    init_image: Image.Image | None
    times: dict[str, float]
    image_dependence: dict[str, Any] = field(default_factory=dict)  # see llm_dit.conditioning.imagedep

    def batchable_with(self, other: Prepared) -> bool:
        """Can share one diffusers call with `other`: same generation settings except the seed, same init image,
        constant conditioning and no block injection."""
        mine, theirs = self.config.generation.model_dump(), other.config.generation.model_dump()
        mine.pop("seed"), theirs.pop("seed")
        return (
            mine == theirs
            and self.init_image is other.init_image
            and len(self.alphas) == 1
            and len(other.alphas) == 1
            and not self.config.vl.inject_layers
            and not other.config.vl.inject_layers
        )


@dataclass
class Rendered:
    """What one `render` call did: the images, in the batch's order, and how the conditioning reached the DiT."""

    images: list[Image.Image]
    seconds: float
    alphas_used: list[float] | None = None  # the alpha in force at each step, under a schedule
    injected_blocks: list[int] = field(default_factory=list)  # DiT blocks that received C (DiT injection)
    loras: list[dict[str, Any]] = field(default_factory=list)  # LoRAs that acted: path, sha256, scale


def render(pipe, batch: list[Prepared], on_step: OnStep | None = None) -> Rendered:
    """Run the DiT once for `batch` (several images only when they can share the call: `Prepared.batchable_with`).

    Per-step alphas: the pipeline starts from the first step's rows and a step callback swaps in `C(α_i)`.
    DiT injection: the pipeline gets T and block hooks give the chosen blocks C. Otherwise each image's rows as
    they are. `on_step`: see `denoise`."""
    head = batch[0]
    if not all(p.batchable_with(head) for p in batch[1:]):
        raise UserError("these images cannot share one diffusers call (different generation settings)")
    g, v = head.config.generation, head.config.vl
    rows = [p.first for p in batch]
    callback, context = None, nullcontext()
    if len(head.alphas) > 1:
        callback = schedule_callback(lambda a: [head.conditioning.at(a)], head.alphas)
    elif v.inject_layers and head.conditioning.combine is not None:
        context = inject_conditioning(pipe.transformer, v.inject_layers, rows)
        rows = [p.conditioning.text for p in batch]
    negative = [p.negative for p in batch] if g.guidance > 0 else None
    t0 = time.perf_counter()
    with context as injector:
        images = denoise(
            pipe,
            rows,
            g,
            [p.config.generation.seed for p in batch],
            negative_prompt_embeds=negative,
            init_image=head.init_image,
            callback=callback,
            on_step=on_step,
        )
    return Rendered(
        images,
        time.perf_counter() - t0,
        list(callback.used) if callback is not None else None,
        list(injector.blocks) if injector is not None else [],
    )
