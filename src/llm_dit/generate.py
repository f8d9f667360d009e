"""Generation: caption rows in, images out, through diffusers' Z-Image pipelines.

`denoise` is the single call into diffusers (`ZImagePipeline`, or `ZImageImg2ImgPipeline` with an init image):
llm-dit never re-implements the sampling loop. `Generator` holds the loaded components for one `Config` and
turns a prompt into an image plus the record that says exactly how it was made.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

import torch
from PIL import Image

from .adapter import Adapter
from .blend import DIT_MAX_ROWS, blend_stats, check_alpha, check_options, mode_options, replace_rows
from .cache import TensorCache
from .condition import Conditioning, blend_conditioning, combine_layers, parse_layer_weights
from .config import Config, GenerationConfig
from .errors import UserError
from .files import check_embeddings, library_versions, sha256_file
from .inject import inject_conditioning
from .models import load_pipeline, model_identity, read_model_json, release_memory
from .schedule import parse_schedule, schedule_callback
from .stats import ReferenceStats
from .steer import apply_direction
from .text import EncodedPrompt, TextEncoder
from .vl import VLEmbeddingExtractor, VLEmbeddings


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
    per step. With `init_image` this is image-to-image at `gen.strength` (the init image is resized to the output
    size with Lanczos first: diffusers' img2img requires the two to match).
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
    # diffusers encodes the init image at its own size; it must match the output size, so resize it first
    if init_image.size != (gen.width, gen.height):
        init_image = init_image.resize((gen.width, gen.height), Image.Resampling.LANCZOS)
    return img2img(image=init_image, strength=gen.strength, **kwargs).images


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
    """The components for one `Config`, each loaded on first use, sharing one tensor cache.

    With `models.low_memory`, the text encoder and the VL model are released before the DiT loads, so peak
    memory is the largest component's, not the sum.
    """

    def __init__(self, config: Config, cache: TensorCache | Literal[False] | None = None) -> None:
        """`cache`: a `TensorCache`, `None` for the default one under `$LLM_DIT_CACHE`, `False` for none."""
        self.config = config
        self.cache = TensorCache() if cache is None else (cache or None)
        self._text_encoder: TextEncoder | None = None
        self._vl: VLEmbeddingExtractor | None = None
        self._pipeline = None
        self._released_passes = {"text_encoder": 0, "vl": 0}
        self._stats: dict[int, ReferenceStats] = {}
        self._adapters: dict[str, tuple[Adapter, dict[str, Any]]] = {}

    @property
    def text_encoder(self) -> TextEncoder:
        if self._text_encoder is None:
            c = self.config
            self._text_encoder = TextEncoder.from_pretrained(
                c.models.zimage, c.encoder.device, c.encoder.dtype, self.cache, c.models.trust_remote_code
            )
        return self._text_encoder

    @property
    def vl(self) -> VLEmbeddingExtractor:
        if self._vl is None:
            c = self.config
            self._vl = VLEmbeddingExtractor.from_pretrained(
                c.models.vl, c.vl.device, c.vl.dtype, cache=self.cache, trust_remote_code=c.models.trust_remote_code
            )
        return self._vl

    @property
    def pipeline(self):
        if self._pipeline is None:
            if self.config.models.low_memory:
                self.release("text_encoder", "vl")
            g = self.config.generation
            self._pipeline = load_pipeline(
                self.config.models.zimage, g.device, g.dtype, self.config.models.trust_remote_code
            )
        return self._pipeline

    def release(self, *components: str) -> None:
        """Drop loaded components (`text_encoder`, `vl`, `pipeline`) and return their memory."""
        for name in components:
            component = getattr(self, f"_{name}")
            if name in self._released_passes and component is not None:
                self._released_passes[name] += component.forward_passes
            setattr(self, f"_{name}", None)
        release_memory()

    def forward_passes(self) -> dict[str, int]:
        """Forward passes run so far by the VL model and the text encoder (released ones included)."""
        live = {"text_encoder": self._text_encoder, "vl": self._vl}
        n = {k: v + (live[k].forward_passes if live[k] is not None else 0) for k, v in self._released_passes.items()}
        return {"vl": n["vl"], "text": n["text_encoder"]}

    @cached_property
    def caption_width(self) -> int:
        """The DiT's caption width (`cap_feat_dim`), read from its config without loading it."""
        return read_model_json(self.config.models.zimage, "transformer/config.json", "a Z-Image folder")["cap_feat_dim"]

    def encode(self, prompt: str) -> EncodedPrompt:
        return self.text_encoder.encode(prompt, self.config.encoder)

    def vl_layers(self) -> dict[int, float]:
        v = self.config.vl
        return parse_layer_weights(v.layers) if v.layers else {v.hidden_layer: 1.0}

    def reference_stats(self, layers: list[int]) -> dict[int, ReferenceStats] | ReferenceStats:
        """`vl.reference_stats` when set, else the text encoder's statistics at exactly these layers (computed
        once per generator)."""
        if self.config.vl.reference_stats:
            return ReferenceStats.load(self.config.vl.reference_stats)
        missing = [layer for layer in layers if layer not in self._stats]
        if missing:
            self._stats |= self.text_encoder.reference_stats(missing)
        return {layer: self._stats[layer] for layer in layers}

    def adapter(self, path: str) -> tuple[Adapter, dict[str, Any]]:
        """A trained adapter (loaded once), checked against the VL settings it was trained with."""
        if path not in self._adapters:
            adapter, meta = Adapter.load(path)
            v = self.config.vl
            if adapter.dim != self.caption_width:
                raise UserError(
                    f"adapter {path} has width {adapter.dim}, the DiT caption width is {self.caption_width}"
                )
            trained = (meta.get("hidden_layer"), meta.get("token_mode"))
            if (None not in trained and trained != (v.hidden_layer, v.token_mode)) or v.layers:
                raise UserError(
                    f"adapter {path} was trained on layer {trained[0]} with token mode {trained[1]}; "
                    f"use --vl-layer {trained[0]} --token-mode {trained[1]} (and no --vl-layers)"
                )
            if v.normalize != "none" or v.outlier_masking != "none":
                raise UserError(f"adapter {path} maps raw VL rows: use --normalize none --outlier-masking none")
            self._adapters[path] = adapter, {"path": path, "sha256": sha256_file(path), **meta}
        return self._adapters[path]

    def extraction_reference(self, layers: list[int]) -> dict[int, ReferenceStats] | ReferenceStats | None:
        """Reference statistics the `vl` settings need (normalisation or outlier masking), else None."""
        v = self.config.vl
        return self.reference_stats(layers) if v.normalize != "none" or v.outlier_masking != "none" else None

    def extract(self, image: Image.Image, prompt: str | None) -> tuple[torch.Tensor, dict[int, VLEmbeddings]]:
        """VL rows of `image` + `prompt` with the `vl` settings, layers combined by their weights; also each
        layer's extraction (spans, statistics, settings) for records."""
        v = self.config.vl
        weights = self.vl_layers()
        extracted = self.vl.extract_layers(
            image,
            prompt,
            list(weights),
            token_mode=v.token_mode,
            normalization=v.normalize,
            outlier_masking=v.outlier_masking,
            outlier_threshold=v.outlier_threshold,
            system_prompt=v.system_prompt,
            reference=self.extraction_reference(list(weights)),
            clip_sigma=v.clip_sigma,
            hybrid_weight=v.hybrid_weight,
        )
        return combine_layers({layer: e.embeddings for layer, e in extracted.items()}, weights), extracted

    def condition(
        self,
        prompt: str,
        *,
        reference: Image.Image | None = None,
        vl_embeddings: torch.Tensor | None = None,
        neutral: Image.Image | torch.Tensor | None = None,
        embeddings: torch.Tensor | None = None,
        steer: torch.Tensor | None = None,
    ) -> tuple[Conditioning, EncodedPrompt]:
        """The caption rows for `prompt`: plain text, or text blended with VL rows from `reference` (or given
        `vl_embeddings`), or steered along `steer`, or exactly `embeddings`."""
        if sum(x is not None for x in (reference, vl_embeddings, embeddings, steer)) > 1:
            raise UserError("give one of: a reference image, VL embeddings, embeddings, a steering direction")
        encoded = self.encode(prompt)
        if self.config.models.low_memory and (reference is not None or isinstance(neutral, Image.Image)):
            self.extraction_reference(list(self.vl_layers()))  # the text encoder's last job, before the VL model loads
            self.release("text_encoder")
        text = encoded.embeddings
        v = self.config.vl
        if embeddings is not None:
            rows = check_embeddings(embeddings, self.caption_width, "embeddings")
            return Conditioning(rows, "embeddings"), encoded
        if steer is not None:
            return Conditioning(text, "steer", lambda t, a: apply_direction(t, steer, a)), encoded
        if reference is None and vl_embeddings is None:
            return Conditioning(text, "text"), encoded
        record: dict[str, Any] = {"blend": v.blend, "blend_options": v.blend_options}
        if vl_embeddings is not None:
            vl = check_embeddings(vl_embeddings, self.caption_width, "VL embeddings").float()
            source = "vl_embeddings"
        else:
            if self.vl.hidden_size != self.caption_width:
                raise UserError(
                    f"the Qwen3-VL hidden size {self.vl.hidden_size} does not match the DiT caption width "
                    f"{self.caption_width}: these models cannot be combined"
                )
            vl, extracted = self.extract(reference, prompt)
            record["vl"] = {str(layer): e.metadata() for layer, e in extracted.items()}
            source = "reference"
        if v.adapter:
            adapter, record["adapter"] = self.adapter(v.adapter)
            with torch.no_grad():
                vl = adapter(vl)
        options = dict(v.blend_options)
        if "resample" in mode_options(v.blend):
            options.setdefault("resample", v.resample)
        if v.blend == "style_delta":
            if neutral is None:
                raise UserError(
                    "blend 'style_delta' needs a neutral extraction (--neutral-image or --neutral-embeddings)"
                )
            options["neutral"] = (
                self.extract(neutral, prompt)[0]
                if isinstance(neutral, Image.Image)
                else check_embeddings(neutral, self.caption_width, "neutral embeddings").float()
            )
        record["resample"] = options.get("resample")  # None: this mode pairs no rows, so no alignment ran
        if v.blend == "replace":  # the rows the DiT receives, and whether they had to be pooled
            record["replace"] = replace_rows(int(vl.shape[0]), int(options.get("max_rows", DIT_MAX_ROWS)))
        return Conditioning(text, source, blend_conditioning(text, vl, v.blend, options), record), encoded

    def prepare(self, prompt: str, *, init_image: Image.Image | None = None, **inputs: Any) -> Prepared:
        """Everything one image needs before the DiT runs: conditioning (as `condition(**inputs)` describes), the
        per-step alphas, the first step's caption rows, negative rows for CFG, and a snapshot of the config."""
        times: dict[str, float] = {}
        cfg = self.config
        g, v = cfg.generation, cfg.vl
        schedule = parse_schedule(v.alpha_schedule)
        if v.inject_layers and schedule.kind != "constant":
            raise UserError("an alpha schedule and DiT block injection cannot be combined; choose one")
        steps = denoising_steps(g, init_image is not None)
        alphas = schedule.alphas(steps, v.alpha)
        if inputs.get("reference") is not None or inputs.get("vl_embeddings") is not None:
            check_options(v.blend, [*v.blend_options, *(["neutral"] if v.blend == "style_delta" else [])])
            for a in set(alphas):  # before any model runs
                check_alpha(v.blend, a)
        if init_image is not None and steps == g.steps and g.strength < 1:
            warnings.warn(
                f"strength {g.strength} at {g.steps} steps skips no denoising step in diffusers (it skips "
                f"int(N - N*strength)), so the init image has no effect; lower the strength or raise the steps",
                stacklevel=2,
            )
        with timed(times, "condition"):
            cond, encoded = self.condition(prompt, **inputs)
            first = cond.at(alphas[0])
            negative = self.encode("").embeddings if g.guidance > 0 else None
        varies = cond.combine is not None and len(set(alphas)) > 1
        return Prepared(
            prompt, cfg, cond, encoded, alphas if varies else alphas[:1], first, negative, init_image, times
        )

    def render(self, batch: list[Prepared]) -> list[Result]:
        """Run the DiT for prepared images; several in one diffusers call when they can share it (same generation
        settings and init image, no per-step conditioning, no block injection)."""
        with timed(batch[0].times, "load"):
            pipe = self.pipeline
        if len(batch) > 1 and not all(p.batchable_with(batch[0]) for p in batch):
            raise UserError("these images cannot share one diffusers call (different generation settings)")
        head = batch[0]
        g, v = head.config.generation, head.config.vl
        seeds = [p.config.generation.seed for p in batch]
        negative = [p.negative for p in batch] if g.guidance > 0 else None
        t0 = time.perf_counter()
        callback = None
        if len(head.alphas) > 1:
            callback = schedule_callback(lambda a: [head.conditioning.at(a)], head.alphas)
            images = denoise(
                pipe,
                [head.first],
                g,
                seeds,
                negative_prompt_embeds=negative,
                init_image=head.init_image,
                callback=callback,
            )
        elif v.inject_layers and head.conditioning.combine is not None:
            with inject_conditioning(pipe.transformer, v.inject_layers, [head.first]):
                images = denoise(
                    pipe,
                    [head.conditioning.text],
                    g,
                    seeds,
                    negative_prompt_embeds=negative,
                    init_image=head.init_image,
                )
        else:
            images = denoise(
                pipe, [p.first for p in batch], g, seeds, negative_prompt_embeds=negative, init_image=head.init_image
            )
        share = (time.perf_counter() - t0) / len(batch)
        results = []
        for p, image in zip(batch, images, strict=True):
            p.times["denoise"] = share
            blended = p.conditioning.combine is not None
            conditioning = p.conditioning.record | {
                "source": p.conditioning.source,
                "alpha": p.config.vl.alpha if blended else None,
                "alphas": p.alphas if blended else [],
                "caption_rows": int(p.first.shape[0]),
                "blend_stats": blend_stats(p.conditioning.text, p.first),
                "batch_size": len(batch),
            }
            if callback is not None:
                conditioning["alphas_used"] = list(callback.used)
            g = p.config.generation
            img2img = None
            if p.init_image is not None:
                img2img = {"strength": g.strength, "skipped_steps": g.steps - denoising_steps(g, True)}
            record = self.record(p, conditioning=conditioning, img2img=img2img)
            results.append(Result(image, record))
        return results

    def generate(self, prompt: str, *, init_image: Image.Image | None = None, **inputs: Any) -> Result:
        """Text-to-image (image-to-image with `init_image`) for `prompt` with this generator's config: conditioned
        as `condition(**inputs)` describes, with alpha schedules and DiT injection when configured."""
        return self.render([self.prepare(prompt, init_image=init_image, **inputs)])[0]

    def record(self, p: Prepared, **extra: Any) -> dict[str, Any]:
        """The sidecar record: resolved settings, models, library versions, seed, tokens and timings."""
        models = {"zimage": model_identity(p.config.models.zimage)}
        if p.conditioning.source == "reference":
            models["vl"] = model_identity(p.config.models.vl)
        return {
            "prompt": p.prompt,
            "seed": p.config.generation.seed,
            "settings": p.config.flat(),
            "models": models,
            "text": {
                "rendered": p.encoded.rendered,
                "token_count": p.encoded.token_count,
                "caption_rows": int(p.encoded.embeddings.shape[0]),
                "shortened": p.encoded.shortened,
            },
            **extra,
            "versions": library_versions(),
            "timings_s": {k: round(v, 4) for k, v in p.times.items()},
        }
