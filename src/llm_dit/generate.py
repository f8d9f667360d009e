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
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

import torch
from PIL import Image

from .adapter import Adapter, check_use
from .blend import CAPTION_LIMIT, blend_stats, check_alpha, check_options, mode_options, replace_rows
from .cache import TensorCache
from .condition import (
    Conditioning,
    blend_conditioning,
    combine_layers,
    drop_sinks,
    find_sink_rows,
    parse_layer_weights,
    steer_conditioning,
)
from .config import Config, GenerationConfig, VLConfig
from .errors import UserError
from .files import library_versions, sha256_file
from .imagedep import PROBE_SEED, describe_probe, image_free_by_construction, measure, not_checked, probe_image
from .inject import Injector, inject_conditioning, injected_rows
from .models import load_pipeline, model_identity, read_model_json, release_memory
from .numerics import check_rows, require_finite
from .provenance import Facts, split_settings
from .schedule import parse_schedule, schedule_callback
from .stats import ReferenceStats
from .text import EncodedPrompt, TextEncoder
from .vl import VLEmbeddingExtractor, VLEmbeddings, image_sha256


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


def check_neutral(blend: str, blended: bool, neutral: bool) -> None:
    """A neutral extraction acts only in `style_delta` on VL rows (a reference image or VL embeddings), and that
    mode needs one: refuse any other combination, before a model loads, rather than ignore the input."""
    if neutral and not blended:
        raise UserError(
            "a neutral extraction only acts on a reference image or VL embeddings (with vl.blend 'style_delta'); "
            "this conditioning has neither: remove it"
        )
    if neutral and blend != "style_delta":
        raise UserError(
            f"a neutral extraction only acts with vl.blend 'style_delta' (vl.blend is '{blend}'): remove it or "
            f"set vl.blend = 'style_delta'"
        )
    if blended and blend == "style_delta" and not neutral:
        raise UserError(
            "vl.blend 'style_delta' needs a neutral extraction (the `neutral` input: a neutral image or neutral "
            "embeddings)"
        )


def extraction_settings(v: VLConfig) -> dict[str, Any]:
    """The `vl.*` settings that act on the rows `Generator.extract` returns, as flat config keys: the layer choice
    (`vl.layers` when set, else `vl.hidden_layer`), token mode, system prompt, outlier masking and normalisation,
    and the parameters of a step only when that step runs (its threshold, the statistics it reads, the clip and
    hybrid weight of the normalisations that use them). What a steering direction file records."""
    out: dict[str, Any] = {"vl.layers": v.layers} if v.layers else {"vl.hidden_layer": v.hidden_layer}
    out |= {
        "vl.token_mode": v.token_mode,
        "vl.system_prompt": v.system_prompt,
        "vl.outlier_masking": v.outlier_masking,
        "vl.normalize": v.normalize,
    }
    if v.outlier_masking != "none":
        out["vl.outlier_threshold"] = v.outlier_threshold
    if v.normalize in ("per_dim", "hybrid"):
        out["vl.clip_sigma"] = v.clip_sigma
    if v.normalize == "hybrid":
        out["vl.hybrid_weight"] = v.hybrid_weight
    if v.outlier_masking != "none" or v.normalize != "none":
        out["vl.reference_stats"] = v.reference_stats  # None: the text encoder's statistics of the same layer
    return out


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
    image_dependence: dict[str, Any] = field(default_factory=dict)  # see llm_dit.imagedep

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
        return self.text_encoder.encode(prompt, **self.config.encoder.model_dump(exclude={"device", "dtype"}))

    def vl_layers(self) -> dict[int, float]:
        v = self.config.vl
        return parse_layer_weights(v.layers) if v.layers else {v.hidden_layer: 1.0}

    def reference_stats(self, layers: list[int]) -> dict[int, ReferenceStats] | ReferenceStats:
        """`vl.reference_stats` when set, else the text encoder's statistics at exactly these layers, over content
        rows (attention sinks at `vl.sink_ratio` left out; computed once per generator)."""
        v = self.config.vl
        if v.reference_stats:
            stats = ReferenceStats.load(v.reference_stats)
            if "sink_ratio" not in stats.metadata:
                warnings.warn(
                    f"vl.reference_stats {v.reference_stats} were computed without leaving out attention-sink rows "
                    f"(sink-contaminated: a few rows set the spread of some dimensions); recompute them with "
                    f"`llm-dit stats --layer {stats.layer}`",
                    stacklevel=2,
                )
            return stats
        missing = [layer for layer in layers if layer not in self._stats]
        if missing:
            self._stats |= self.text_encoder.reference_stats(missing, sink_ratio=v.sink_ratio)
        return {layer: self._stats[layer] for layer in layers}

    def adapter(self, path: str) -> tuple[Adapter, dict[str, Any]]:
        """A trained adapter, loaded once per path, and checked against the current config on every use (a sweep
        changes the config between runs): the settings it was trained with must match (`adapter.check_use`)."""
        if path not in self._adapters:
            adapter, meta = Adapter.load(path)
            if adapter.dim != self.caption_width:
                raise UserError(
                    f"adapter {path} has width {adapter.dim}, the DiT caption width is {self.caption_width}"
                )
            self._adapters[path] = adapter, {"path": path, "sha256": sha256_file(path), **meta}
        check_use(path, self._adapters[path][1], self.config)
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
            sink_ratio=v.sink_ratio,
            sink_rows=v.sink_rows,
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
        check_neutral(self.config.vl.blend, reference is not None or vl_embeddings is not None, neutral is not None)
        encoded = self.encode(prompt)
        conditioned = steer is not None or reference is not None or vl_embeddings is not None
        sinks = self.text_sinks(encoded) if conditioned else None  # names tokens: before the encoder is released
        if self.config.models.low_memory and (reference is not None or isinstance(neutral, Image.Image)):
            self.extraction_reference(list(self.vl_layers()))  # the text encoder's last job, before the VL model loads
            self.release("text_encoder")
        cond = self.condition_encoded(
            prompt,
            encoded,
            sinks,
            reference=reference,
            vl_embeddings=vl_embeddings,
            neutral=neutral,
            embeddings=embeddings,
            steer=steer,
        )
        return cond, encoded

    def condition_encoded(
        self,
        prompt: str,
        encoded: EncodedPrompt,
        text_sinks: tuple[torch.Tensor | None, dict[str, Any]] | None = None,
        *,
        reference: Image.Image | None = None,
        vl_embeddings: torch.Tensor | None = None,
        neutral: Image.Image | torch.Tensor | None = None,
        embeddings: torch.Tensor | None = None,
        steer: torch.Tensor | None = None,
    ) -> Conditioning:
        """`condition` for a prompt already encoded (the image-dependence probe reuses the text rows); `text_sinks`
        from `text_sinks(encoded)` (found here, without token names, when not given)."""
        text = encoded.embeddings
        v = self.config.vl
        if embeddings is not None:
            rows = check_rows(embeddings, "embeddings", width=self.caption_width, width_of="the DiT caption width")
            return Conditioning(rows, "embeddings")
        if steer is None and reference is None and vl_embeddings is None:
            return Conditioning(text, "text")
        t_sinks, found = text_sinks or self.text_sinks(encoded, named=False)
        sinks = dict(found)
        if steer is not None:
            return Conditioning(text, "steer", steer_conditioning(text, steer, t_sinks, v.sink_rows), {"sinks": sinks})
        record: dict[str, Any] = {"blend": v.blend, "blend_options": v.blend_options, "sinks": sinks}
        if vl_embeddings is not None:
            vl = check_rows(
                vl_embeddings, "VL embeddings", width=self.caption_width, width_of="the DiT caption width"
            ).float()
            vl, sinks["vl"] = drop_sinks(vl, v.sink_ratio, v.sink_rows)
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
                vl = require_finite(adapter(vl), f"adapter {v.adapter}")
        options = dict(v.blend_options)
        if "resample" in mode_options(v.blend):
            options.setdefault("resample", v.resample)
        if v.blend == "style_delta":
            if isinstance(neutral, Image.Image):
                options["neutral"], neutral_layers = self.extract(neutral, prompt)
                record["neutral_vl"] = {str(layer): e.metadata() for layer, e in neutral_layers.items()}
            else:
                rows = check_rows(
                    neutral, "neutral embeddings", width=self.caption_width, width_of="the DiT caption width"
                ).float()
                options["neutral"], sinks["neutral"] = drop_sinks(rows, v.sink_ratio, v.sink_rows)
            record["neutral"] = "image" if isinstance(neutral, Image.Image) else "embeddings"
        record["resample"] = options.get("resample")  # None: this mode pairs no rows, so no alignment ran
        if v.blend == "replace":  # the rows the DiT receives, and whether they had to be pooled
            record["replace"] = replace_rows(int(vl.shape[0]), int(options.get("max_rows", CAPTION_LIMIT)))
        return Conditioning(text, source, blend_conditioning(text, vl, v.blend, options, t_sinks, v.sink_rows), record)

    def text_sinks(self, encoded: EncodedPrompt, named: bool = True) -> tuple[torch.Tensor, dict[str, Any]]:
        """T's attention-sink rows (found once) and the `sinks` record: `ratio`, `rows` (the `vl.sink_rows`
        setting) and `text` (positions, tokens when `named` and rows are tokens, dims and values)."""
        v, rows, ids = self.config.vl, encoded.embeddings, encoded.token_ids
        token = None
        if named and len(ids) == rows.shape[0]:  # rows are tokens (not resampled by a long-prompt mode)

            def token(position: int) -> str:
                return self.text_encoder.tokenizer.decode([ids[position]])

        mask, text = find_sink_rows(rows, v.sink_ratio, v.sink_rows, "text", token)
        return mask, {"ratio": v.sink_ratio, "rows": v.sink_rows, "text": text}

    def image_dependence(
        self, prompt: str, encoded: EncodedPrompt, cond: Conditioning, alphas: list[float], inputs: dict[str, Any]
    ) -> dict[str, Any]:
        """The `image_dependence` record (`llm_dit.imagedep`): the same conditioning rebuilt with the probe image
        in place of the reference (same size, so the same token counts), compared at every alpha used."""
        if cond.source != "reference":
            return not_checked("not conditioned on a reference image")
        if not self.config.vl.image_check:
            return not_checked("vl.image_check is off")
        reference = inputs["reference"]
        seed = PROBE_SEED
        if image_sha256(probe_image(reference.size, seed)) == image_sha256(reference):
            seed += 1  # the reference is the probe itself: use another noise image
        probe = self.condition_encoded(
            prompt, encoded, reference=probe_image(reference.size, seed), neutral=inputs.get("neutral")
        )
        return measure(cond.at, probe.at, cond.text, alphas, describe_probe(reference.size, seed))

    def prepare(self, prompt: str, *, init_image: Image.Image | None = None, **inputs: Any) -> Prepared:
        """Everything one image needs before the DiT runs: conditioning (as `condition(**inputs)` describes), the
        per-step alphas, the first step's caption rows, negative rows for CFG, and a snapshot of the config."""
        times: dict[str, float] = {}
        cfg = self.config
        g, v = cfg.generation, cfg.vl
        schedule = parse_schedule(v.alpha_schedule)
        if v.inject_layers and schedule.kind != "constant":
            raise UserError("an alpha schedule and DiT block injection cannot be combined; choose one")
        if inputs.get("reference") is not None and (reason := image_free_by_construction(v)):
            raise UserError(reason)
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
        with timed(times, "image_check"):
            dependence = self.image_dependence(prompt, encoded, cond, alphas, inputs)
        if dependence["image_free"]:
            warnings.warn(f"the image has no effect on this run: {dependence['reason']}", stacklevel=2)
        varies = cond.combine is not None and len(set(alphas)) > 1
        return Prepared(
            prompt, cfg, cond, encoded, alphas if varies else alphas[:1], first, negative, init_image, times, dependence
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
        callback = injector = None
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
            with inject_conditioning(pipe.transformer, v.inject_layers, [head.first]) as injector:
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
            conditioning = self.conditioning_record(p, injector) | {"batch_size": len(batch)}
            if callback is not None:
                conditioning["alphas_used"] = list(callback.used)
            g = p.config.generation
            img2img = None
            if p.init_image is not None:
                img2img = {"strength": g.strength, "skipped_steps": g.steps - denoising_steps(g, True)}
            record = self.record(p, conditioning=conditioning, img2img=img2img)
            results.append(Result(image, record))
        return results

    @staticmethod
    def conditioning_record(p: Prepared, injector: Injector | None = None) -> dict[str, Any]:
        """What conditioned the DiT: the source, the alphas per step, and the caption rows it received (with DiT
        injection: `T` for the pipeline and the blocks not chosen, `C` aligned to `T`'s rows in the chosen ones)."""
        cond = p.conditioning
        record = cond.record | {"source": cond.source, "alpha": None, "alphas": []}
        received = p.first
        if cond.combine is not None:
            g = p.config.generation
            per_step = p.alphas * denoising_steps(g, p.init_image is not None) if len(p.alphas) == 1 else p.alphas
            rows = [int(cond.at(a).shape[0]) for a in per_step]
            record |= {
                "alpha": per_step[0] if len(set(per_step)) == 1 else None,  # one alpha acted, else see `alphas`
                "alpha_schedule": p.config.vl.alpha_schedule,
                "alphas": per_step,
                "caption_rows": rows[0] if len(set(rows)) == 1 else rows,
            }
            if injector is not None and injector.blocks:
                received = injected_rows(p.first, cond.text.shape[0])
                record["caption_rows"] = int(cond.text.shape[0])  # the pipeline's prompt_embeds: T
                record["injection"] = {
                    "blocks": list(injector.blocks),
                    "caption_rows": int(received.shape[0]),  # C in the chosen blocks, aligned to T's rows
                    "resampled_from": int(p.first.shape[0]) if p.first.shape[0] != received.shape[0] else None,
                }
        else:
            record["caption_rows"] = int(p.first.shape[0])
        record["blend_stats"] = blend_stats(cond.text, received)
        return record

    def generate(self, prompt: str, *, init_image: Image.Image | None = None, **inputs: Any) -> Result:
        """Text-to-image (image-to-image with `init_image`) for `prompt` with this generator's config: conditioned
        as `condition(**inputs)` describes, with alpha schedules and DiT injection when configured."""
        return self.render([self.prepare(prompt, init_image=init_image, **inputs)])[0]

    def record(self, p: Prepared, **extra: Any) -> dict[str, Any]:
        """The sidecar record: the settings that acted (`settings`) and why the others did not (`inactive_settings`,
        `llm_dit.provenance`), the image-dependence check, models, library versions, seed, tokens and timings."""
        cond = p.conditioning
        facts = Facts(
            source=cond.source,
            extracted=cond.source == "reference" or cond.record.get("neutral") == "image",
            img2img=p.init_image is not None,
            token_count=p.encoded.token_count,
            shortened=p.encoded.shortened,
            resampled=cond.record.get("resample") is not None,
        )
        settings, inactive = split_settings(p.config, facts)
        models = {"zimage": model_identity(p.config.models.zimage)}
        if facts.extracted:
            models["vl"] = model_identity(p.config.models.vl)
        return {
            "prompt": p.prompt,
            "seed": p.config.generation.seed,
            "settings": settings,
            "inactive_settings": inactive,
            "image_dependence": p.image_dependence,
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
