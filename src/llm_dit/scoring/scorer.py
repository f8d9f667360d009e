"""Scoring images with every metric of the registry (`metrics.METRICS`): each metric model loaded once, each unique
image embedded once per model (batched), similarities from the cached embeddings.

``MetricScorer(metric_models, device)`` loads the metric-model set of the spec ``metric_models``
(``metric_model_set``: ``"default"`` = the real ids, ``"tiny"`` = the offline tiny zoo, ``"ROLE=ID_OR_PATH"`` /
``"ROLE=none"`` items override one role). ``Scoring(metric_models, metric_device)`` is what a sweep or an eval is
scored with (checked before it runs).
``scorer.score(items)`` gives, per ``ScoreItem(image, prompt, reference, baseline)``, every metric whose inputs are
present and whose model is loaded, in registry order (model-free ones always). An image is keyed by its pixels
(sha256 of its 8-bit RGB bytes), so a reference shared by many cells, or the text-only image that is both scored
and the baseline of other cells, is embedded once per model. Embeddings are float32; cosines are float64.
Optional quality scores (ImageReward, HPSv2) are present only when their package is usable; otherwise
``scorer.unavailable`` holds the one-line reason (never a NaN column).
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..config.settings import MODELS_ENV
from ..core.cache import cache_root
from ..core.errors import UserError
from ..models.loading import resolve_device
from .embedders import ROLES, DualEncoder, Embedder, cosine_matrix, load_embedder, to_pil
from .image_metrics import IMAGE_METRICS, METRICS, ImageLike, compute_image_metrics
from .reward import REWARD_MODELS, RewardModel, reward_status

__all__ = [
    "DEFAULT_METRIC_MODELS",
    "MODEL_ROLES",
    "MetricModels",
    "MetricScorer",
    "ScoreItem",
    "Scoring",
    "default_csd_dir",
    "metric_model_set",
]

MODEL_ROLES = (*ROLES, *REWARD_MODELS)  # clip, siglip, csd, dino, image_reward, hpsv2


def default_csd_dir() -> Path:
    """Where ``llm-dit models convert-csd`` writes the converted CSD model by default (and ``default`` looks)."""
    return cache_root() / "metric-models" / "csd-vit-l"


DEFAULT_METRIC_MODELS: dict[str, str] = {
    "clip": "openai/clip-vit-large-patch14",  # CLIP ViT-L/14, 428 M params (torchmetrics' CLIPScore default)
    "siglip": "google/siglip-base-patch16-224",  # 203 M params; its tokenizer needs sentencepiece
    "csd": "<converted CSD folder>",  # default_csd_dir(); absent with a reason until convert-csd has run
    "dino": "facebook/dinov2-base",  # ViT-B/14, 86 M params
    "image_reward": REWARD_MODELS["image_reward"][1],  # only when the package is usable
    "hpsv2": REWARD_MODELS["hpsv2"][1],
}


MetricModels = str | Sequence[str] | Mapping[str, str | None] | None
"""A metric-model spec (`metric_models`, `--metric-models`): see `metric_model_set`."""


def metric_model_set(spec: MetricModels) -> dict[str, str | None]:
    """The metric-model set ``{role: id or folder, or None (off)}`` of a spec: ``None``/empty = none (model-free
    metrics only); items ``default`` (the real ids), ``tiny`` (the tiny zoo, no reward models) and
    ``ROLE=ID_OR_PATH`` or ``ROLE=none``, later items overriding earlier ones (``"tiny,dino=none"``); a mapping is
    taken as given. With ``$LLM_DIT_MODELS`` set (the model-location switch, `config.locate_models`), ``default``
    means ``tiny``: the default metric-model ids resolve to the offline tiny metric models, as the generators' do."""
    if isinstance(spec, Mapping):
        items: list[str] = [f"{k}={'none' if v is None else v}" for k, v in spec.items()]
    elif isinstance(spec, str):
        items = [s.strip() for s in spec.split(",") if s.strip()]
    else:
        items = list(spec or [])
    out: dict[str, str | None] = {}
    for item in items:
        if item == "default" and os.environ.get(MODELS_ENV):
            item = "tiny"
        if item == "default":
            out |= {**DEFAULT_METRIC_MODELS, "csd": str(default_csd_dir())}
        elif item == "tiny":
            from .metriczoo import metric_zoo_dir

            root = metric_zoo_dir()
            out |= {role: str(root / role) for role in ROLES} | dict.fromkeys(REWARD_MODELS)
        else:
            role, sep, value = item.partition("=")
            if not sep or role not in MODEL_ROLES or not value:
                raise UserError(
                    f"metric_models: '{item}' is not default, tiny or ROLE=ID_OR_PATH|none"
                    f" (roles: {', '.join(MODEL_ROLES)})"
                )
            out[role] = None if value == "none" else value
    return out


def check_metric_device(device: str | torch.device | None) -> str:
    """The metric models' device as a string; a device that is not a torch device, or is not on this machine
    (`cuda` without CUDA), is one line naming `metric_device`, before any work (not after a sweep has run)."""
    try:
        resolved = torch.device(device or "cpu")
    except RuntimeError:
        raise UserError(f"metric_device: '{device}' is not a torch device (e.g. cpu, cuda, cuda:1, mps)") from None
    try:
        resolve_device(str(device or "cpu"))  # the one check that the device exists on this machine
    except UserError as e:
        raise UserError(f"metric_device: {e}") from None
    return str(resolved)


@dataclass(frozen=True)
class Scoring:
    """What a sweep or an eval is scored with: the metric models `metric_models` (a spec, `metric_model_set`: None
    = model-free metrics only) on `metric_device`. `check` refuses a bad spec or device before anything runs."""

    metric_models: MetricModels = None
    metric_device: str = "cpu"

    def check(self) -> None:
        """`UserError` for a bad metric-model spec or device, before any work (not after a sweep has run)."""
        metric_model_set(self.metric_models)
        check_metric_device(self.metric_device)

    def scorer(self) -> MetricScorer:
        """A `MetricScorer` with these metric models on this device."""
        return MetricScorer(self.metric_models, self.metric_device)


@dataclass
class ScoreItem:
    """One image to score and its comparison inputs: ``prompt`` (prompt adherence, quality), ``reference`` (style,
    content leak), ``baseline`` (the text-only image of the same cell: content kept). Images: PIL, array or path."""

    image: ImageLike | str | os.PathLike[str]
    prompt: str | None = None
    reference: ImageLike | str | os.PathLike[str] | None = None
    baseline: ImageLike | str | os.PathLike[str] | None = None


@functools.cache
def _shared_embedder(role: str, source: str, device: str) -> Embedder:
    """Each metric model is loaded once per process: scorers with the same role, source and device share it."""
    return load_embedder(role, source, device)


def _image(value: ImageLike | str | os.PathLike[str]) -> Image.Image:
    if isinstance(value, str | os.PathLike):
        path = Path(value)
        if not path.is_file():
            raise UserError(f"image '{path}' does not exist")
        with Image.open(path) as im:
            return im.convert("RGB")
    return to_pil(value)


def _key(image: Image.Image) -> str:
    return hashlib.sha256(f"{image.size}".encode() + image.tobytes()).hexdigest()


class MetricScorer:
    """Every registered metric of images, with the metric models of ``metric_models`` (``metric_model_set``) on
    ``device`` (each loaded once per process, shared between scorers); ``batch_size`` images per forward pass.
    Embeddings are cached per scorer."""

    def __init__(
        self,
        metric_models: MetricModels = "default",
        device: str | torch.device = "cpu",
        batch_size: int = 16,
    ) -> None:
        if batch_size < 1:
            raise UserError(f"metric batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.device = check_metric_device(device)
        self.sources = metric_model_set(metric_models)
        self.embedders: dict[str, Embedder] = {}
        self.rewards: dict[str, RewardModel] = {}
        self.unavailable: dict[str, str] = {}  # metric -> why it is not computed
        status = reward_status()
        for role, source in self.sources.items():
            if source is None:
                continue
            if role in REWARD_MODELS:
                if status[role] is not None:
                    self.unavailable[role] = status[role]
                else:
                    self.rewards[role] = RewardModel(role, source, device)
            elif role == "csd" and source == str(default_csd_dir()) and not Path(source).exists():
                self.unavailable["csd"] = (
                    f"no converted CSD model at {source} (run: llm-dit models convert-csd CHECKPOINT), or pass csd=PATH"
                )
            else:
                self.embedders[role] = _shared_embedder(role, source, self.device)
        self._images: dict[tuple[str, str], torch.Tensor] = {}
        self._texts: dict[tuple[str, str], torch.Tensor] = {}

    @property
    def metrics(self) -> list[str]:
        """The metrics this scorer computes (when their inputs are given), in registry order."""
        return [
            n
            for n, info in METRICS.items()
            if info.model is None or info.model in self.embedders or info.model in self.rewards
        ]

    def embedder(self, role: str) -> Embedder:
        if role not in self.embedders:
            raise UserError(f"no {role} metric model loaded (metric models: {', '.join(self.embedders) or 'none'})")
        return self.embedders[role]

    def embed_images(self, role: str, images: Sequence[ImageLike | str | os.PathLike[str]]) -> torch.Tensor:
        """The ``role`` model's embeddings of ``images``, ``[n, dim]`` float32; each distinct image (by pixels) is
        embedded once per scorer, in batches."""
        embedder = self.embedder(role)
        pils = [_image(image) for image in images]
        keys = [_key(image) for image in pils]
        todo = {k: im for k, im in zip(keys, pils, strict=True) if (role, k) not in self._images}
        if todo:
            for k, emb in zip(todo, embedder.embed_images(list(todo.values()), self.batch_size), strict=True):
                self._images[(role, k)] = emb
        return torch.stack([self._images[(role, k)] for k in keys]) if keys else torch.empty(0, 0)

    def embed_texts(self, role: str, texts: Sequence[str]) -> torch.Tensor:
        """The ``role`` dual encoder's embeddings of ``texts``, ``[n, dim]`` float32; each distinct text once."""
        embedder = self.embedder(role)
        if not isinstance(embedder, DualEncoder):
            raise UserError(f"the {role} metric model has no text tower")
        todo = list(dict.fromkeys(t for t in texts if (role, t) not in self._texts))
        if todo:
            for t, emb in zip(todo, embedder.embed_texts(todo, self.batch_size), strict=True):
                self._texts[(role, t)] = emb
        return torch.stack([self._texts[(role, t)] for t in texts]) if texts else torch.empty(0, 0)

    def _pair_cosines(self, role: str, images: list[Image.Image], others: list[Any], text: bool) -> list[float]:
        a = self.embed_images(role, images)
        b = self.embed_texts(role, others) if text else self.embed_images(role, others)
        return [float(v) for v in cosine_matrix(a, b).diagonal()]

    def score(self, items: Sequence[ScoreItem]) -> list[dict[str, float | None]]:
        """Every computable metric of each item, ``[{metric: value}]`` in registry order; None where a model-free
        metric cannot be measured (``grid_artifact_score`` under 128 px)."""
        images = [_image(it.image) for it in items]
        refs = [None if it.reference is None else _image(it.reference) for it in items]
        bases = [None if it.baseline is None else _image(it.baseline) for it in items]
        prompts = [it.prompt or None for it in items]
        values: dict[str, dict[int, float | None]] = {n: {} for n in METRICS}
        for i, (img, ref, base) in enumerate(zip(images, refs, bases, strict=True)):
            for name, value in compute_image_metrics(img, reference=ref, baseline=base).items():
                values[name][i] = value
        need = {"prompt": prompts, "reference": refs, "baseline": bases}
        todo = {  # metric -> the items that have its input
            name: [i for i in range(len(items)) if need[info.needs][i] is not None]
            for name, info in METRICS.items()
            if name not in IMAGE_METRICS and info.model in (*self.embedders, *self.rewards)
        }
        for role in self.embedders:  # every distinct image a role needs, embedded in one batched pass
            wanted = [
                image
                for name, idx in todo.items()
                if METRICS[name].model == role
                for i in idx
                for image in (images[i], need[METRICS[name].needs][i])
                if isinstance(image, Image.Image)
            ]
            if wanted:
                self.embed_images(role, wanted)
        for name, idx in todo.items():
            info = METRICS[name]
            if not idx:
                continue
            others = [need[info.needs][i] for i in idx]
            if info.model in self.rewards:
                scores = self.rewards[info.model].score([images[i] for i in idx], others)
            else:
                scores = self._pair_cosines(info.model, [images[i] for i in idx], others, info.needs == "prompt")
            values[name].update(zip(idx, scores, strict=True))
        return [{n: values[n][i] for n in METRICS if i in values[n]} for i in range(len(items))]

    def describe(self) -> dict[str, Any]:
        """What this scorer computes with which model, for a record (eval.json, a sweep's metrics)."""
        import transformers

        models = {
            role: {
                "source": e.source,
                "class": type(e.model).__name__,
                "embedding": getattr(e, "output", "get_image_features/get_text_features pooler_output"),
                "params": sum(p.numel() for p in e.model.parameters()),
            }
            for role, e in self.embedders.items()
        } | {role: {"source": r.name, "package": REWARD_MODELS[role][0]} for role, r in self.rewards.items()}
        return {
            "device": self.device,
            "precision": "float32 models and embeddings; cosines in float64",
            "transformers": transformers.__version__,
            "models": models,
            "metrics": {
                n: {
                    "kind": METRICS[n].kind,
                    "higher_is_better": METRICS[n].higher_is_better,
                    "needs": METRICS[n].needs,
                    "model": models.get(METRICS[n].model or "", {}).get("source"),
                    "measures": METRICS[n].measures,
                }
                for n in self.metrics
            },
            "unavailable": dict(self.unavailable),
        }
