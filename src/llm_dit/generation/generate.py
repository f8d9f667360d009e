"""Generation: a prompt and a conditioning source in, an image and the record of how it was made out.

`Generator` is one `Config` plus the `Components` that serve it: `prepare` checks what it is given
(`assemble.check_request`), assembles the conditioning (`generation.assemble`) and measures how it depends on the
image (`prepare_checked`: the same for a request checked already, e.g. a sweep run), `render` runs the DiT
(`generation.render`), and `generation.records` writes what happened. `with_config` gives the same components
another config (a sweep's runs).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
from PIL import Image

from ..conditioning.source import Conditioning, Reference, Source, as_source, extracts
from ..config.settings import Config
from ..core.cache import TensorCache
from ..core.errors import UserError
from ..maths.compose import linearity
from ..models.text import EncodedPrompt
from ..models.vl import VLEmbeddings
from . import records
from .assemble import (
    CheckedRequest,
    TextSide,
    blend_vl,
    build_conditioning,
    check_request,
    check_source,
    encode,
    encode_text,
    extract,
    extraction_stats,
    image_dependence,
)
from .components import Components
from .render import OnStep, Prepared, denoising_steps, render


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
    """One config and the components that serve it (loaded on first use, sharing one tensor cache).

    `source` is what conditions an image (`llm_dit.conditioning.source`): `Text()` (the default), `Reference(image)` (or
    just the PIL image), `VLRows(rows)`, `Steering(direction)` or `CaptionRows(rows)`.
    """

    def __init__(
        self,
        config: Config,
        cache: TensorCache | Literal[False] | None = None,
        *,
        components: Components | None = None,
    ) -> None:
        """`cache`: a `TensorCache`, `None` for the default one under `$LLM_DIT_CACHE`, `False` for none.
        `components`: models already loaded for the same models and devices, with their cache (see `with_config`)."""
        if components is not None and cache is not None:
            raise UserError("give a cache or components (which bring their own cache), not both")
        if components is not None and (differ := components.differences(config)):
            raise UserError(
                f"{', '.join(differ)} differ from the loaded components' (models, devices and dtypes are fixed per "
                f"Components): use a new Generator"
            )
        self._config = config
        self.components = components or Components(config, TensorCache() if cache is None else (cache or None))

    @property
    def config(self) -> Config:
        """The settings of every image this generator makes (fixed: `with_config` gives another config)."""
        return self._config

    @property
    def cache(self) -> TensorCache | None:
        return self.components.cache

    def with_config(self, config: Config) -> Generator:
        """A generator for `config` sharing these components (loaded models, statistics, adapters, cache): the
        form a sweep's runs take. `config` must choose the same models, devices and dtypes (`COMPONENT_KEYS`)."""
        return Generator(config, components=self.components)

    def encode(self, prompt: str) -> EncodedPrompt:
        """The prompt's caption rows T with the `encoder` settings."""
        return encode(self.components, self.config.encoder, prompt)

    def extract(self, image: Image.Image, prompt: str | None) -> tuple[torch.Tensor, dict[int, VLEmbeddings]]:
        """VL rows of `image` + `prompt` with the `vl` settings, layers combined by their weights; also each
        layer's extraction for records (`assemble.extract`)."""
        vl = self.config.vl
        return extract(self.components, vl, image, prompt, extraction_stats(self.components, vl))

    def condition(
        self, prompt: str, source: Source | Image.Image | None = None, negative: Reference | None = None
    ) -> tuple[Conditioning, TextSide]:
        """The conditioning of `prompt` by `source` (its `at(alpha)` gives the caption rows) and the text side it
        was built on; with `negative` (CFG's negative reference), also the negative conditioning
        (`Conditioning.negative`: the empty prompt's rows blended with the negative images). The sources are
        checked first (`assemble.check_source`: weights, neutral, style files), before any model loads."""
        source = as_source(source)
        for given in (source, negative):
            if given is not None:
                check_source(self.config, given)
        return self._condition(prompt, source, negative)

    def _condition(self, prompt: str, source: Source, negative: Reference | None) -> tuple[Conditioning, TextSide]:
        """`condition` of sources already checked: runs the text encoder's whole share first, then (with a VL
        extraction) the low-memory stage that releases it before the VL model loads."""
        text = encode_text(self.components, self.config, prompt, source)
        negative_text = None if negative is None else encode_text(self.components, self.config, "", negative)
        if extracts(source) or negative is not None:
            self.components.stage("vl")
        cond = build_conditioning(self.components, self.config, prompt, text, source)
        if negative is not None and negative_text is not None:
            cond.negative = blend_vl(self.components, self.config, prompt, negative_text, negative)
        return cond, text

    def prepare(
        self,
        prompt: str,
        source: Source | Image.Image | None = None,
        *,
        init_image: Image.Image | None = None,
        negative: Reference | Image.Image | None = None,
    ) -> Prepared:
        """Everything one image needs before the DiT runs: the conditioning, the per-step alphas, the first step's
        caption rows, negative rows for CFG, the image-dependence check and a snapshot of the config. Settings that
        cannot act are refused before any model loads (`assemble.check_request`). `negative` (a reference, or an
        image): CFG's negative rows are the empty prompt's rows blended with it at the first step's alpha, instead
        of the empty prompt's rows (needs generation.guidance > 0)."""
        request = check_request(self.config, prompt, source, init_image=init_image, negative=negative)
        return self.prepare_checked(request)

    def prepare_checked(self, request: CheckedRequest) -> Prepared:
        """`prepare` for a request `assemble.check_request` has checked against this generator's config (a
        sweep's runs, checked with their plan): nothing is checked again."""
        if request.config != self.config:
            raise ValueError("the request was checked for another config: use with_config(request.config)")
        prompt, source, init_image, negative = request.prompt, request.source, request.init_image, request.negative
        cfg, alphas, times = self.config, list(request.alphas), {}
        g = cfg.generation
        if init_image is not None and denoising_steps(g, True) == g.steps and g.strength < 1:
            warnings.warn(
                f"strength {g.strength} at {g.steps} steps skips no denoising step in diffusers (it skips "
                f"int(N - N*strength)), so the init image has no effect; lower the strength or raise the steps",
                stacklevel=3,
            )
        with timed(times, "condition"):
            cond, text = self._condition(prompt, source, negative)
            first = cond.at(alphas[0])
            if cond.singles:  # several references: how linear the combination is, at the first alpha
                singles = [single(cond.text, alphas[0]) for single in cond.singles]
                measured = linearity(cond.text, first, singles, cond.weights)
                cond.record["composition"] = None if measured is None else {"alpha": alphas[0], **measured}
            negative_rows = text.negative
            if cond.negative is not None:
                negative_rows = cond.negative.at(alphas[0])
                cond.record["negative"] = {"source": "reference", "alpha": alphas[0]} | {
                    "references": cond.negative.record["references"]
                }
        with timed(times, "image_check"):
            dependence = image_dependence(self.components, cfg, prompt, text, source, cond, alphas)
        if dependence["image_free"]:
            warnings.warn(f"the image has no effect on this run: {dependence['reason']}", stacklevel=3)
        varies = cond.combine is not None and len(set(alphas)) > 1
        alphas = alphas if varies else alphas[:1]
        return Prepared(prompt, cfg, cond, text.encoded, alphas, first, negative_rows, init_image, times, dependence)

    def render(self, batch: list[Prepared], on_step: OnStep | None = None) -> list[Result]:
        """Run the DiT for prepared images, several in one diffusers call when they can share it (same generation
        settings and init image, no per-step conditioning, no block injection), each with its record; `on_step`
        is called after each denoising step (`render.denoise`)."""
        self.components.stage("pipeline")
        with timed(batch[0].times, "load"):
            pipe, loras = self.components.dit(batch[0].config.generation.loras)
        rendered = replace(render(pipe, batch, on_step), loras=loras)
        for p in batch:
            p.times["denoise"] = rendered.seconds / len(batch)
        return [Result(image, records.sidecar(p, rendered)) for p, image in zip(batch, rendered.images, strict=True)]

    def generate(
        self,
        prompt: str,
        source: Source | Image.Image | None = None,
        *,
        init_image: Image.Image | None = None,
        negative: Reference | Image.Image | None = None,
        on_step: OnStep | None = None,
    ) -> Result:
        """Text-to-image (image-to-image with `init_image`) for `prompt` conditioned by `source` with this
        generator's config, alpha schedules and DiT injection included; `negative`: see `prepare`; `on_step(done,
        total)` after each denoising step."""
        return self.render([self.prepare(prompt, source, init_image=init_image, negative=negative)], on_step)[0]
