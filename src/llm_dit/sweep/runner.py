"""Running a planned sweep: the steps every executor shares, and the local executor.

The steps: `prime` runs the plan's unique forward passes once to fill the tensor cache; `run_batch` prepares and
renders a batch of runs, each with the config the plan resolved for it; `finish` writes a run's result into the
sweep directory (`sweepdir.SweepDir`: its image atomically, then its result line), so a sweep killed at any point
resumes without losing or duplicating work.

An executor is given a `Job` (a plan's runs, the sweep directory to write them into, how) and returns `Stats`:
`run_local` (this module) and `distributed.run_on_ray` alike; `experiment.run_sweep` chooses one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..adapter.adapter import check_use
from ..conditioning.imagedep import probe_image
from ..conditioning.source import Reference, Source, Steering, Styled, Text, neutral_of
from ..config.settings import Config
from ..core.cache import TensorCache
from ..core.errors import UserError
from ..core.modes import parse_lora
from ..core.numerics import NonFiniteError
from ..core.progress import progress_bar
from ..generation.assemble import check_styles, refuse, step_alphas
from ..generation.components import Components, caption_width, check_adapter_width
from ..generation.generate import Generator, Result
from ..generation.render import Prepared
from ..maths.compose import load_styles
from ..models.loading import resolve_device
from .dir import SweepDir
from .run import Run, RunResult
from .spec import Inputs, Plan, reference_paths

Step = tuple[Run, Config]  # a planned run and its resolved config
OnResult = Callable[[RunResult], None]


@dataclass
class Stats:
    """What an executor reports: forward passes run (`vl`, `text`) and tensor-cache hits and misses, summed over
    its workers."""

    forward_passes: dict[str, int] = field(default_factory=lambda: {"vl": 0, "text": 0})
    cache_hits: int = 0
    cache_misses: int = 0

    @classmethod
    def of(cls, gen: Generator) -> Stats:
        """The counts of one generator's components and cache."""
        cache = gen.cache
        return cls(gen.components.forward_passes(), cache.hits if cache else 0, cache.misses if cache else 0)

    def __add__(self, other: Stats) -> Stats:
        passes = {k: v + other.forward_passes[k] for k, v in self.forward_passes.items()}
        return Stats(passes, self.cache_hits + other.cache_hits, self.cache_misses + other.cache_misses)

    def __sub__(self, other: Stats) -> Stats:
        passes = {k: v - other.forward_passes[k] for k, v in self.forward_passes.items()}
        return Stats(passes, self.cache_hits - other.cache_hits, self.cache_misses - other.cache_misses)


@dataclass(frozen=True)
class Job:
    """What an executor is given: the base config (what its generators load), the plan of the runs to do (each
    with its resolved config), the sweep directory to write their results into, runs per diffusers call when they
    can share one, a callback for each result line as it is written, and the tensor cache (default: the one under
    `$LLM_DIT_CACHE`) and the input files already read (`validate`), so none is decoded twice. `components`: models
    already loaded for `base` (with their own cache), which the local executor uses instead of loading its own."""

    base: Config
    plan: Plan
    sweep: SweepDir
    batch_size: int = 1
    on_result: OnResult | None = None
    cache: TensorCache | None = None
    inputs: Inputs | None = None  # the files `validate` read (default: read again)
    components: Components | None = None


def run_source(run: Run, inputs: Inputs) -> Source:
    """What conditions a run: its steering direction, its style files, its reference image or reference set
    (`a.png+b.png`, with its weights and the neutral image), or nothing."""
    if run.kind == "variant":
        if run.steer:
            return Steering(inputs.direction(run.steer))
        if run.style:
            return Styled(*load_styles(run.style))
        if run.image is not None:
            neutral = inputs.image(run.neutral_image or None, "neutral image")
            images = [inputs.image(path, "reference image") for path in reference_paths(run.image)]
            return Reference(images[0] if len(images) == 1 else images, neutral, run.reference_weights)
    return Text()


def prepare_run(gen: Generator, run: Run, config: Config, inputs: Inputs) -> Prepared:
    """Prepare the run's conditioning with its resolved `config`, on the generator's components."""
    source = run_source(run, inputs)
    init = inputs.image(run.init_image, "init image")
    return gen.with_config(config).prepare(
        run.prompt, source, init_image=init, negative=run_negative(run, source, inputs)
    )


def run_negative(run: Run, source: Source, inputs: Inputs) -> Reference | None:
    """CFG's negative reference of a run (`negative_image`, with the run's neutral image), or None."""
    image = inputs.image(run.negative_image or None, "negative image")
    return None if image is None else Reference(image, neutral_of(source))


def validate(plan: Plan, inputs: Inputs) -> None:
    """Check every input and every run's settings before any model loads: each file a run names is read once into
    `inputs` (images decoded, steering directions, adapters and reference statistics loaded and checked), and each
    run's settings go through `assemble.refuse` with every alpha its schedule uses, as `Generator.prepare` checks
    one image, plus its devices, its LoRA files, its style files (`assemble.check_styles`) and the adapter's width
    and trained settings (`adapter.check_use`).
    `UserError` naming the first bad run."""
    for run in plan.runs:
        config = plan.config(run)
        try:
            for device in {config.encoder.device, config.vl.device, config.generation.device}:
                resolve_device(device)  # a device this machine lacks (cuda without CUDA), before any run
            for path, _ in map(parse_lora, config.generation.loras):
                if not Path(path).expanduser().is_file():
                    raise UserError(f"LoRA file not found: {path}")
            source = run_source(run, inputs)
            init = inputs.image(run.init_image, "init image")
            refuse(config, source, step_alphas(config, init is not None), run_negative(run, source, inputs))
            if isinstance(source, Styled):
                check_styles(config, source)  # made with these settings, as `Generator.prepare` checks one image
            v = config.vl
            if isinstance(source, Reference):
                if v.adapter:
                    adapter, meta = inputs.adapter(v.adapter)
                    check_adapter_width(v.adapter, adapter, caption_width(config.models.zimage))
                    check_use(v.adapter, meta, config)
                if v.reference_stats:
                    inputs.stats(v.reference_stats)
        except UserError as e:
            raise UserError(f"sweep run '{run.label}': {e}") from None


def prime(components: Components, plan: Plan, inputs: Inputs) -> None:
    """Run the plan's unique forward passes once, with the planned settings; every run then reads them from the
    cache. A bad input is skipped here: it fails its own runs later, with its message."""
    for e in plan.unique_extractions:
        with contextlib.suppress(UserError):
            image = inputs.image(e["image"], "reference image")
            components.vl.hidden_rows(image, e["text"], e["layers"], e["system_prompt"], e["max_pixels"])
    for e in plan.probe_extractions:
        with contextlib.suppress(UserError):
            probe = probe_image(tuple(e["probe"]))
            components.vl.hidden_rows(probe, e["text"], e["layers"], e["system_prompt"], e["max_pixels"])
    for e in plan.unique_encodes:
        with contextlib.suppress(UserError):
            components.text_encoder.encode(e["prompt"], **e["encoder"])


def batches(plan: Plan, size: int) -> Iterator[list[Step]]:
    """The plan's runs with their configs, `size` at a time, in order."""
    steps = [(run, plan.config(run)) for run in plan.runs]
    for i in range(0, len(steps), size):
        yield steps[i : i + size]


def render_batch(gen: Generator, prepared: list[Prepared]) -> list[Result]:
    """One diffusers call for runs that can share it, else one call each."""
    if all(p.batchable_with(prepared[0]) for p in prepared):
        return gen.render(prepared)
    return [gen.render([p])[0] for p in prepared]


Outcome = tuple[Run, Result | None, Exception | None]


def run_batch(gen: Generator, batch: list[Step], inputs: Inputs) -> list[Outcome]:
    """Prepare and render one batch of runs: `(run, result, None)` or `(run, None, error)` for each, in order of
    completion; a failing run (or a failing shared diffusers call) fails only its own runs."""
    outcomes: list[Outcome] = []
    ready: list[tuple[Run, Prepared]] = []
    for run, config in batch:
        try:
            ready.append((run, prepare_run(gen, run, config, inputs)))
        except Exception as e:
            outcomes.append((run, None, e))
    return outcomes + (render_ready(gen, ready) if ready else [])


def render_ready(gen: Generator, ready: list[tuple[Run, Prepared]]) -> list[Outcome]:
    """Render prepared runs (`render_batch`); an error fails them all, except a non-finite output
    (`numerics.NonFiniteError`) of a call several runs shared: then each is rendered alone, so only the runs whose
    own output is NaN/Inf fail (the others get the image they get alone)."""
    try:
        results = render_batch(gen, [p for _, p in ready])
        return [(run, result, None) for (run, _), result in zip(ready, results, strict=True)]
    except NonFiniteError as e:
        if len(ready) == 1:
            return [(ready[0][0], None, e)]
        return [outcome for one in ready for outcome in render_ready(gen, [one])]
    except Exception as e:
        return [(run, None, e) for run, _ in ready]


def finish(
    sweep: SweepDir, run: Run, result: Result | None, error: BaseException | None, on_result: OnResult | None
) -> None:
    """Write a run's image (atomically), then its result line: a line on disk means a complete run."""
    if result is not None:
        line = RunResult.of(run, status="ok", output=sweep.write_image(run.id, result.image), record=result.record)
    else:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        line = RunResult.of(run, status="failed", error=f"{type(error).__name__}: {message}")
    sweep.append_result(line)
    if on_result is not None:
        on_result(line)


def run_local(job: Job) -> Stats:
    """The local executor: prime, then generate the job's runs in this process with a progress bar; a failing run
    is recorded and the sweep goes on."""
    gen = Generator(job.base, components=job.components) if job.components else Generator(job.base, job.cache)
    before = Stats.of(gen)  # warm components bring the counts of what they ran before this job
    inputs = job.inputs or Inputs()
    prime(gen.components, job.plan, inputs)
    with progress_bar() as progress:
        task = progress.add_task("sweep", total=len(job.plan.runs))
        for batch in batches(job.plan, job.batch_size):
            for run, result, error in run_batch(gen, batch, inputs):
                finish(job.sweep, run, result, error, job.on_result)
            progress.advance(task, len(batch))
    return Stats.of(gen) - before
