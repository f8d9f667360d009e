"""Running a sweep: prime the caches with the plan's unique forward passes, then generate every run not yet done,
writing each result atomically (its image, then one line of `results.jsonl`), so a sweep killed at any point
resumes without losing or duplicating work. A lock file refuses a second sweep into the same directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from PIL import Image

from .assemble import encode
from .cache import TensorCache
from .condition import Reference, Source, Steering, Text
from .config import Config
from .errors import UserError
from .files import atomic_write_bytes, image_bytes, load_image, write_json
from .generate import Generator, Result
from .imagedep import probe_image
from .progress import progress_bar
from .records import library_versions
from .render import Prepared
from .steer import load_direction
from .sweep import SweepSpec, baseline_pairs, check_runs, expand, iter_jsonl, plan, refuse_image_free, run_config


@contextmanager
def sweep_lock(out_dir: Path) -> Iterator[None]:
    """Exclusive lock on `out_dir/.lock` for the life of a sweep; a second sweep into the same directory fails."""
    out_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(out_dir / ".lock", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"another sweep is writing to {out_dir}") from None
        yield
    finally:
        os.close(fd)


def append_line(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line with a single write and fsync it."""
    data = (json.dumps(record, default=str) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def repair(out: Path) -> None:
    """Undo what a killed sweep can leave: temp files of unfinished atomic writes, and a torn last line of
    results.jsonl (cut so appends start on a fresh line). Runs under the sweep lock."""
    for tmp in [*out.glob(".*.tmp"), *out.glob("images/.*.tmp")]:
        tmp.unlink(missing_ok=True)
    results = out / "results.jsonl"
    if results.exists() and (data := results.read_bytes()) and not data.endswith(b"\n"):
        atomic_write_bytes(results, data[: data.rfind(b"\n") + 1])


class Inputs:
    """Images and directions a sweep reads, each loaded once."""

    def __init__(self) -> None:
        self._images: dict[str, Image.Image] = {}
        self._directions: dict[str, Any] = {}

    def image(self, path: str | None, label: str) -> Image.Image | None:
        if path is None:
            return None
        if path not in self._images:
            self._images[path] = load_image(path, label)
        return self._images[path]

    def direction(self, path: str):
        if path not in self._directions:
            self._directions[path] = load_direction(path)[0]
        return self._directions[path]


def prepare_run(gen: Generator, base: Config, run: dict[str, Any], inputs: Inputs) -> Prepared:
    """Prepare the run's conditioning with the run's config, on the generator's components."""
    source: Source = Text()
    if run["kind"] == "variant":
        if run.get("steer"):
            source = Steering(inputs.direction(run["steer"]))
        elif run["image"] is not None:
            neutral = inputs.image(run.get("neutral_image") or None, "neutral image")
            source = Reference(inputs.image(run["image"], "reference image"), neutral)
    init = inputs.image(run["init_image"], "init image")
    return gen.with_config(run_config(base, run)).prepare(run["prompt"], source, init_image=init)


def prime(gen: Generator, base: Config, work: dict[str, Any], inputs: Inputs) -> None:
    """Run the plan's unique forward passes once; every run then reads them from the cache."""
    for e in work["unique_extractions"]:
        with contextlib.suppress(UserError):  # a bad input fails its own runs later, with its message
            image = inputs.image(e["image"], "reference image")
            gen.components.vl.hidden_rows(image, e["text"], e["layers"], e["system_prompt"])
    for e in work.get("probe_extractions", []):
        with contextlib.suppress(UserError):
            gen.components.vl.hidden_rows(probe_image(tuple(e["probe"])), e["text"], e["layers"], e["system_prompt"])
    for e in work["unique_encodes"]:
        with contextlib.suppress(UserError):
            encode(gen.components, base.encoder.model_copy(update=e["encoder"]), e["prompt"])


def batches(runs: list[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    for i in range(0, len(runs), size):
        yield runs[i : i + size]


def render_batch(gen: Generator, prepared: list[Prepared]) -> list[Result]:
    """One diffusers call for runs that can share it, else one call each."""
    if all(p.batchable_with(prepared[0]) for p in prepared):
        return gen.render(prepared)
    return [gen.render([p])[0] for p in prepared]


def run_sweep(
    base: Config,
    spec: SweepSpec,
    out_dir: str | Path,
    *,
    resume: bool = False,
    batch_size: int = 1,
    executor: str = "local",
    on_result: Callable[[dict[str, Any]], None] | None = None,
    cache: TensorCache | None = None,
) -> dict[str, Any]:
    """Run `spec` into `out_dir`; returns the `sweep.json` summary. `cache`: the tensor cache (default: the one
    under `$LLM_DIT_CACHE`)."""
    out = Path(out_dir)
    runs = expand(spec)
    refuse_image_free(base, runs)  # before anything is written
    check_runs(base, spec, runs)
    t0 = time.perf_counter()
    with sweep_lock(out):
        results = out / "results.jsonl"
        if results.exists() and not resume:
            raise UserError(f"{out} already holds a sweep: finish it with 'resume', or use a new directory")
        repair(out)
        done = {r["id"] for r in iter_jsonl(results)}
        todo = [r for r in runs if r["id"] not in done]
        write_json(out / "spec.json", {"spec": spec.model_dump(), "config": base.model_dump(), "runs": runs})
        work = plan(base, todo)
        gen = Generator(base, cache)
        if executor == "ray":
            from .distributed import run_on_ray

            records = run_on_ray(base, todo, work, out, batch_size, on_result, cache_root=cache.root if cache else None)
            if gen.cache:  # the actors' cache counts, summed
                gen.cache.hits, gen.cache.misses = records["cache_hits"], records["cache_misses"]
        else:
            records = run_local(gen, base, todo, work, out, batch_size, on_result)
        counts = gen.components.forward_passes() if executor == "local" else records["forward_passes"]
        finished = list(iter_jsonl(results))
        summary = {
            "name": spec.name,
            "runs": len(runs),
            "completed": sum(r["status"] == "ok" for r in finished),
            "failed": sum(r["status"] == "failed" for r in finished),
            "ran_now": len(todo),
            "vl_forward_passes": counts["vl"],
            "text_forward_passes": counts["text"],
            "cache_hits": gen.cache.hits if gen.cache else 0,
            "cache_misses": gen.cache.misses if gen.cache else 0,
            "plan": {
                "unique_extractions": len(work["unique_extractions"]),
                "probe_extractions": len(work["probe_extractions"]),
                "unique_encodes": len(work["unique_encodes"]),
            },
            "executor": executor,
            "batch_size": batch_size,
            "wall_time_s": round(time.perf_counter() - t0, 3),
            "versions": library_versions(),
        }
        write_json(out / "sweep.json", summary)
    return summary


def run_local(
    gen: Generator,
    base: Config,
    todo: list[dict[str, Any]],
    work: dict[str, Any],
    out: Path,
    batch_size: int,
    on_result: Callable[[dict[str, Any]], None] | None,
) -> None:
    """Generate `todo` in this process with a progress bar; a failing run is recorded and the sweep goes on."""
    inputs = Inputs()
    prime(gen, base, work, inputs)
    with progress_bar() as progress:
        task = progress.add_task("sweep", total=len(todo))
        for batch in batches(todo, batch_size):
            for run, result, error in run_batch(gen, base, batch, inputs):
                finish(out, run, result, error, on_result)
            progress.advance(task, len(batch))


Outcome = tuple[dict[str, Any], Result | None, Exception | None]


def run_batch(gen: Generator, base: Config, batch: list[dict[str, Any]], inputs: Inputs) -> list[Outcome]:
    """Prepare and render one batch of runs: `(run, result, None)` or `(run, None, error)` for each, in order of
    completion; a failing run (or a failing shared diffusers call) fails only its own runs."""
    outcomes: list[Outcome] = []
    ready: list[tuple[dict[str, Any], Prepared]] = []
    for run in batch:
        try:
            ready.append((run, prepare_run(gen, base, run, inputs)))
        except Exception as e:
            outcomes.append((run, None, e))
    if ready:
        try:
            results = render_batch(gen, [p for _, p in ready])
            outcomes += [(run, result, None) for (run, _), result in zip(ready, results, strict=True)]
        except Exception as e:
            outcomes += [(run, None, e) for run, _ in ready]
    return outcomes


def finish(
    out: Path,
    run: dict[str, Any],
    result: Result | None,
    error: BaseException | None,
    on_result: Callable[[dict[str, Any]], None] | None,
) -> None:
    """Write a run's image (atomically), then its line in results.jsonl: a line on disk means a complete run."""
    fields = ("id", "kind", "label", "prompt", "image", "init_image", "steer", "neutral_image", "baseline", "settings")
    line = {k: run[k] for k in fields if k in run}
    if result is not None:
        output = f"images/{run['id']}.png"
        atomic_write_bytes(out / output, image_bytes(result.image))
        line |= {"status": "ok", "output": output, "record": result.record}
    else:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        line |= {"status": "failed", "error": f"{type(error).__name__}: {message}"}
    append_line(out / "results.jsonl", line)
    if on_result is not None:
        on_result(line)


def write_metrics(out_dir: str | Path, clip_model: str | None = None) -> dict[str, dict[str, float | None]]:
    """Metrics of every finished run into `metrics.json`: colour-histogram similarity to its reference image, SSIM
    to its own text-only baseline (the one its record names: every non-conditioning setting equal), grid-artifact
    score (None where the image is too small to measure it) and high-frequency energy; with `clip_model`
    (a CLIP or SigLIP id or path) also image-to-reference and image-to-prompt similarity in that model; and the
    ImageReward score when the `image-reward` package is installed."""
    from .clip import ClipScorer, compute_model_metrics, image_reward, image_reward_available
    from .metrics import compute_image_metrics
    from .report import load_runs

    out = Path(out_dir)
    scorer = ClipScorer.from_pretrained(clip_model) if clip_model else None
    reward = image_reward_available()
    runs = load_runs(out)
    pairs = baseline_pairs(runs)
    done = {r["id"]: r for r in runs if r["status"] == "ok"}
    inputs = Inputs()
    metrics: dict[str, dict[str, float | None]] = {}
    for r in done.values():
        image = Image.open(out / r["output"]).convert("RGB")
        base = done.get(pairs.get(r["id"]) or "")
        reference = inputs.image(r["image"], "reference image")
        metrics[r["id"]] = compute_image_metrics(
            image,
            reference=reference,
            baseline=Image.open(out / base["output"]).convert("RGB") if base else None,
        )
        if scorer is not None:
            metrics[r["id"]] |= compute_model_metrics(scorer, image, reference=reference, prompt=r["prompt"])
        if reward:
            metrics[r["id"]]["image_reward"] = image_reward(image, r["prompt"])
    write_json(out / "metrics.json", metrics)
    return metrics
