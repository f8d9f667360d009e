"""Scoring a sweep: the metrics of every finished run, each variant measured against its own text-only baseline.

Every metric of the registry (`metrics.METRICS`) through one `scorer.MetricScorer`: the model-free ones always, the
model-based ones with the metric models given (`scorer.Scoring`). The runs come from the sweep directory and
the metrics go back into it (`sweepdir.SweepDir`).
"""

from __future__ import annotations

import os

from ..sweep.dir import SweepDir
from ..sweep.run import baseline_pairs
from ..sweep.spec import Inputs, reference_paths
from .scorer import ScoreItem, Scoring

Metrics = dict[str, dict[str, float | None]]


def write_metrics(
    sweep_dir: str | os.PathLike[str],
    scoring: Scoring | None = None,
    inputs: Inputs | None = None,
) -> Metrics:
    """Metrics of every finished run of a sweep directory, written to its metrics file and returned as
    `{run id: {metric: value}}`: model-free (colour-histogram similarity to its reference image, SSIM to its own
    text-only baseline -- the one its record names: every non-conditioning setting equal --, grid-artifact score,
    None where the image is too small to measure it, high-frequency energy) and, with `scoring.metric_models` (e.g.
    `["tiny"]`, `["default"]`, `["clip=ID"]`), the model-based metrics whose model is given, on
    `scoring.metric_device` (default: model-free metrics only). `inputs`: the reference images already decoded (by
    the sweep)."""
    sweep = SweepDir(sweep_dir)
    scorer = (scoring or Scoring()).scorer()
    runs = sweep.runs()
    pairs = baseline_pairs(runs)
    done = {r.id: r for r in runs if r.ok and r.output is not None}
    inputs = inputs if inputs is not None else Inputs()
    items = []
    for r in done.values():
        base = done.get(pairs.get(r.id) or "")
        # a reference set (a.png+b.png) has no one reference image: its reference metrics are not measured
        reference = None if len(reference_paths(r.image)) > 1 else inputs.image(r.image, "reference image")
        items.append(
            ScoreItem(
                sweep.path / str(r.output),
                prompt=r.prompt,
                reference=reference,
                baseline=sweep.path / str(base.output) if base else None,
            )
        )
    metrics: Metrics = dict(zip(done, scorer.score(items), strict=True))
    sweep.write_metrics(metrics)
    return metrics
