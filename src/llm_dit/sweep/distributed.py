"""The `ray` sweep executor: the same plan as the local runner, rendered by Ray actors.

Each `Worker` actor holds one `Generator` (one per GPU, or one on a CPU-only cluster). One actor first runs the
plan's unique forward passes, which land in the shared on-disk tensor cache (`$LLM_DIT_CACHE`, passed on to the
workers), so every other actor reads them from there instead of running them again. Actors then render the batches
they are sent (runs of the driver's `runner.CheckedPlan`, checked once there, pickled with their inputs) with the
runner's own `run_batch`, and send back each run's PNG bytes and record, or its error. Only the driver writes
results, through the runner's `finish`, as they come in: the same sweep directory, written the same atomic way, so a
sweep resumes identically whichever executor ran it.
`run_on_ray` takes the same `runner.Job` as the local executor and returns the same `runner.Stats`.

Connects to the cluster at `$RAY_ADDRESS` when it is set, else starts a local Ray instance for the sweep (and shuts
it down after); a Ray already initialised in this process is used as it is. `$LLM_DIT_RAY_WORKERS` (or `workers=`)
sets the number of actors. Every node must have llm-dit, its models at the configured paths and the inputs at the
same paths; the tensor cache must be on a shared filesystem for actors on other nodes to reuse the priming.
"""

from __future__ import annotations

import io
import logging
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from PIL import Image

from ..config.settings import Config
from ..core.cache import TensorCache
from ..core.errors import UserError
from ..core.files import image_bytes
from ..core.progress import progress_bar
from ..generation.generate import Generator, Result
from .dir import SweepDir
from .runner import CheckedRun, Job, OnResult, Stats, batches, finish, prime, run_batch
from .spec import Inputs, Plan

IN_FLIGHT = 2  # batches queued per actor, so an actor never waits for the driver between batches
FORWARD_PREFIXES = ("LLM_DIT_", "HF_", "TRANSFORMERS_", "DIFFUSERS_", "TORCH_")
FORWARD_NAMES = ("XDG_CACHE_HOME",)

# What a worker sends back per run: (run id, PNG bytes, record, None) or (run id, None, None, (error type, message)).
Outcome = tuple[str, bytes | None, dict[str, Any] | None, tuple[str, str] | None]


def worker_env() -> dict[str, str]:
    """The driver's environment the workers need: llm-dit's cache (absolute), Hugging Face and torch settings."""
    env = {k: v for k, v in os.environ.items() if k.startswith(FORWARD_PREFIXES) or k in FORWARD_NAMES}
    for key in ("LLM_DIT_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        if env.get(key):
            env[key] = str(Path(env[key]).expanduser().absolute())
    return env


def worker_count(workers: int | None) -> int | None:
    """`workers`, else `$LLM_DIT_RAY_WORKERS`, else None (one per GPU, or one)."""
    if workers is None and (env := os.environ.get("LLM_DIT_RAY_WORKERS", "").strip()):
        try:
            workers = int(env)
        except ValueError:
            raise UserError(f"LLM_DIT_RAY_WORKERS must be a whole number, not '{env}'") from None
    if workers is not None and workers < 1:
        raise UserError(f"the ray executor needs at least one worker, not {workers}")
    return workers


def remote_error(kind: str, message: str) -> Exception:
    """An exception that `finish` records exactly as it would the worker's original `kind: message`."""
    return type(kind, (Exception,), {})(message)


class Worker:
    """One generator on a Ray worker: primes the cache, then renders batches of runs."""

    def __init__(self, base: Config, cwd: str, threads: int | None, cache_root: str | None) -> None:
        import torch

        if Path(cwd).is_dir():
            os.chdir(cwd)  # relative input and model paths mean what they mean to the driver
        if threads:
            torch.set_num_threads(threads)
        self.base = base
        self.gen = Generator(base, TensorCache(cache_root) if cache_root else None)
        self.inputs = Inputs()

    def prime(self, plan: Plan) -> None:
        prime(self.gen.components, plan, self.inputs)

    def render(self, batch: list[CheckedRun]) -> list[Outcome]:
        """The runner's batch step on checked runs (not checked again), returning what `finish` needs instead of
        writing it."""
        return [
            (run.id, image_bytes(result.image), result.record, None)
            if result is not None
            else (run.id, None, None, (type(error).__name__, str(error)))
            for run, result, error in run_batch(self.gen, batch)
        ]

    def stats(self) -> Stats:
        return Stats.of(self.gen)


def _import_ray():
    try:
        import ray
    except ImportError:
        raise UserError("the ray executor needs Ray: pip install 'llm-dit[ray]'") from None
    return ray


def _connect(ray, env: dict[str, str]) -> bool:
    """Join `$RAY_ADDRESS`'s cluster, or start a local instance; True when this call initialised Ray."""
    if ray.is_initialized():
        return False
    quiet = {"log_to_driver": False, "logging_level": logging.ERROR, "ignore_reinit_error": True}
    if address := os.environ.get("RAY_ADDRESS"):
        ray.init(address=address, runtime_env={"env_vars": env}, **quiet)
    else:
        import torch

        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report leaves the machine
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        ray.init(
            num_cpus=cpus,
            num_gpus=torch.cuda.device_count(),
            include_dashboard=False,
            runtime_env={"env_vars": env},
            **quiet,
        )
    return True


def _start_workers(ray, base: Config, workers: int | None, env: dict[str, str], cache_root: str | None) -> list[Any]:
    """One actor per GPU of the cluster (or `workers`), else `workers` CPU actors sharing the CPUs (default 1)."""
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), float(resources.get("CPU", 1))
    n = workers or gpus or 1
    if gpus:
        if n > gpus:
            raise UserError(f"{n} ray workers asked for, but the cluster has {gpus} GPUs")
        options: dict[str, Any] = {"num_gpus": 1, "num_cpus": min(1.0, cpus / n)}
        threads = None
    else:
        share = cpus / n
        options = {"num_cpus": math.floor(share) if share >= 1 else share}
        threads = max(1, math.floor(share))
    actor = ray.remote(Worker).options(runtime_env={"env_vars": env}, **options)
    return [actor.remote(base, os.getcwd(), threads, cache_root) for _ in range(n)]


def _unwrap(ray, e: BaseException) -> BaseException:
    """The worker's own exception behind Ray's wrapper, so the CLI reports a `UserError` as one line."""
    if isinstance(e, ray.exceptions.RayTaskError) and isinstance(e.cause, BaseException):
        return e.cause
    if isinstance(e, ray.exceptions.RayActorError):
        return UserError(f"a ray worker died ({e}); finished runs are saved: run the sweep again with 'resume'")
    return e


def _dispatch(
    ray,
    actors: list[Any],
    steps: Iterator[list[CheckedRun]],
    sweep: SweepDir,
    total: int,
    on_result: OnResult | None,
) -> None:
    """Keep every actor busy with batches; write each batch's results as soon as it comes back."""
    pending: dict[Any, tuple[Any, list[CheckedRun]]] = {}

    def submit(actor) -> None:
        if (batch := next(steps, None)) is not None:
            pending[actor.render.remote(batch)] = (actor, batch)

    for actor in actors:
        for _ in range(IN_FLIGHT):
            submit(actor)
    with progress_bar() as progress:
        task = progress.add_task("sweep (ray)", total=total)
        while pending:
            [ref], _ = ray.wait(list(pending), num_returns=1)
            actor, batch = pending.pop(ref)
            outcomes = ray.get(ref)
            submit(actor)
            by_id = {c.run.id: c.run for c in batch}
            for rid, png, record, error in outcomes:
                if error is not None:
                    finish(sweep, by_id[rid], None, remote_error(*error), on_result)
                else:
                    assert png is not None and record is not None
                    image = Image.open(io.BytesIO(png))
                    image.load()
                    finish(sweep, by_id[rid], Result(image, record), None, on_result)
            progress.advance(task, len(batch))


def run_on_ray(job: Job, *, workers: int | None = None) -> Stats:
    """The Ray executor: run the job's runs on Ray actors, writing into its sweep directory as the local executor
    does, and return their `Stats`, summed. The job's tensor cache root must be one path every actor can reach.
    `workers`: the number of actors (see `worker_count`)."""
    plan = job.plan
    if not plan.checked:
        return Stats()
    workers = worker_count(workers)
    ray = _import_ray()
    env = worker_env()
    started = _connect(ray, env)
    actors: list[Any] = []
    try:
        cache = job.session.cache
        root = str(Path(cache.root).absolute()) if cache is not None else None
        actors = _start_workers(ray, plan.base, workers, env, root)
        ray.get(actors[0].prime.remote(plan.plan))  # once: every other actor reads it from the shared cache
        steps = batches(plan, job.options.batch_size)
        _dispatch(ray, actors, steps, job.sweep, len(plan.checked), job.options.on_result)
        return sum(ray.get([a.stats.remote() for a in actors]), Stats())
    except (ray.exceptions.RayTaskError, ray.exceptions.RayActorError) as e:
        raise _unwrap(ray, e) from None
    finally:
        for a in actors:
            ray.kill(a)
        if started:
            ray.shutdown()
