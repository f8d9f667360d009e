"""Scoring a sweep: the metrics of every finished run, each variant measured against its own text-only baseline.

The model-free metrics are `metrics.compute_image_metrics`; with a CLIP or SigLIP model also
`clip.compute_model_metrics`, and the ImageReward score when the `image-reward` package is installed. The runs
come from the sweep directory and the metrics go back into it (`sweepdir.SweepDir`).
"""

from __future__ import annotations

import os

from PIL import Image

from .clip import ClipScorer, compute_model_metrics, image_reward, image_reward_available
from .metrics import compute_image_metrics
from .sweep import Inputs, baseline_pairs, reference_paths
from .sweepdir import SweepDir

Metrics = dict[str, dict[str, float | None]]


def write_metrics(sweep_dir: str | os.PathLike[str], clip_model: str | None = None) -> Metrics:
    """Metrics of every finished run of a sweep directory, written to its metrics file and returned as
    `{run id: {metric: value}}`: colour-histogram similarity to its reference image, SSIM to its own text-only
    baseline (the one its record names: every non-conditioning setting equal), grid-artifact score (None where the
    image is too small to measure it) and high-frequency energy; with `clip_model` (a CLIP or SigLIP id or path)
    also image-to-reference and image-to-prompt similarity in that model; and the ImageReward score when the
    `image-reward` package is installed."""
    sweep = SweepDir(sweep_dir)
    scorer = ClipScorer.from_pretrained(clip_model) if clip_model else None
    reward = image_reward_available()
    runs = sweep.runs()
    pairs = baseline_pairs(runs)
    done = {r["id"]: r for r in runs if r["status"] == "ok"}
    inputs = Inputs()
    metrics: Metrics = {}
    for r in done.values():
        image = Image.open(sweep.path / r["output"]).convert("RGB")
        base = done.get(pairs.get(r["id"]) or "")
        # a reference set (a.png+b.png) has no one reference image: its reference metrics are not measured
        reference = None if len(reference_paths(r["image"])) > 1 else inputs.image(r["image"], "reference image")
        metrics[r["id"]] = compute_image_metrics(
            image,
            reference=reference,
            baseline=Image.open(sweep.path / base["output"]).convert("RGB") if base else None,
        )
        if scorer is not None:
            metrics[r["id"]] |= compute_model_metrics(scorer, image, reference=reference, prompt=r["prompt"])
        if reward:
            metrics[r["id"]]["image_reward"] = image_reward(image, r["prompt"])
    sweep.write_metrics(metrics)
    return metrics
