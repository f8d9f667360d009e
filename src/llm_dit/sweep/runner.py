"""Running a planned sweep: the steps every executor shares, and the local executor.

Before any of them, `check_plan` checks every run once (`check_run`: its files read, what it is made from through
`assemble.check_request`) into a `CheckedPlan`, which nothing checks again. The steps: `prime` runs the plan's
unique forward passes once to fill the tensor cache; `run_batch` prepares and renders a batch of checked runs, each
with the config the plan resolved for it; `finish` writes a run's result into the sweep directory
(`sweepdir.SweepDir`: its image atomically, then its result line), so a sweep killed at any point resumes without
losing or duplicating work.

An executor is given a `Job` (a checked plan, the sweep directory to write it into, `RunOptions`, a `Session`) and
returns `Stats`: `run_local` (this module) and `distributed.run_on_ray` alike; `experiment.run_sweep` chooses one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..adapter.model import check_use
from ..conditioning.imagedep import probe_image
from ..conditioning.source import Reference, Source, Steering, Styled, Text, neutral_of
from ..config.settings import Config
from ..core.cache import TensorCache
from ..core.errors import UserError
from ..core.modes import parse_lora
from ..core.numerics import NonFiniteError
from ..core.progress import progress_bar
from ..generation.assemble import CheckedRequest, check_request
from ..generation.components import Components, caption_width, check_adapter_width
from ..generation.generate import Generator, Result
from ..generation.render import Prepared
from ..maths.compose import load_styles
from ..models.loading import resolve_device
from .dir import SweepDir
from .run import Run, RunResult, run_id
from .spec import Inputs, Plan, SweepSpec, expand, reference_paths

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
class RunOptions:
    """How a sweep runs, as `llm-dit sweep` and `eval` take it (`--resume`, `--executor`, `--batch-size`): `resume`
    finishes a sweep already in its directory (its done runs are kept); `executor` is a name of
    `experiment.EXECUTORS`; `batch_size`: runs per diffusers call when they can share one; `on_result`: called with
    each result line as it is written."""

    resume: bool = False
    executor: str = "local"
    batch_size: int = 1
    on_result: OnResult | None = None


@dataclass(frozen=True)
class Session:
    """What a sweep reuses from the process that runs it: `components`, models already loaded for the sweep's base
    config (the eval's captioning VL model, the studio's warm models; they bring their own cache), or else `cache`,
    the tensor cache (default: the one under `$LLM_DIT_CACHE`). The local executor generates on them; Ray workers
    load their own models and share only the cache's folder."""

    components: Components | None = None
    cache: TensorCache | None = None

    def generator(self, base: Config) -> Generator:
        """A generator for `base`: on the session's components when given, else a new one with its cache."""
        if self.components is not None:
            return Generator(base, components=self.components)
        return Generator(base, self.cache)


@dataclass(frozen=True)
class CheckedRun:
    """One run of a `CheckedPlan`: the run as planned and what its image is made from, checked
    (`assemble.check_request`: its resolved config, source, init image, negative reference and alphas)."""

    run: Run
    request: CheckedRequest


@dataclass(frozen=True)
class CheckedPlan:
    """A sweep's plan with every input read and every run checked (`check_plan`), before any model loads: the
    base config and spec it was made of, the plan (`spec.Plan`: runs, configs, forward passes), each run checked
    (`CheckedRun`, in plan order) and the input files read (`inputs`, reused by priming and scoring). Made by
    `experiment.checked_plan`; the executors, the eval and the studio run it without checking anything again.
    Plain data (Ray sends its runs to workers)."""

    base: Config
    spec: SweepSpec
    plan: Plan
    checked: tuple[CheckedRun, ...]
    inputs: Inputs

    def only(self, ids: Collection[str]) -> CheckedPlan:
        """The plan of the runs whose id is in `ids`, in the same order (checked already: not checked again)."""
        checked = tuple(c for c in self.checked if c.run.id in ids)
        return replace(self, plan=self.plan.only(ids), checked=checked)


@dataclass(frozen=True)
class Job:
    """What an executor is given: the checked plan of the runs to do (with the base config its generators load),
    the sweep directory to write their results into, how to run them (`RunOptions`: batch size, a callback for
    each result line) and what to reuse (`Session`: warm components or the tensor cache)."""

    plan: CheckedPlan
    sweep: SweepDir
    options: RunOptions = RunOptions()
    session: Session = Session()


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


def run_negative(run: Run, source: Source, inputs: Inputs) -> Reference | None:
    """CFG's negative reference of a run (`negative_image`, with the run's neutral image), or None."""
    image = inputs.image(run.negative_image or None, "negative image")
    return None if image is None else Reference(image, neutral_of(source))


def check_run(run: Run, config: Config, inputs: Inputs) -> CheckedRun:
    """One run checked with its resolved `config` before any model loads, its files read once into `inputs`
    (images decoded, steering directions, style files, adapters and reference statistics loaded): what it is made
    from goes through `assemble.check_request`, the rules `Generator.prepare` applies to one image, and what only
    a sweep's settings can get wrong besides: devices this machine lacks, LoRA files, the adapter's width and
    trained settings (`adapter.model.check_use`). `UserError` naming the run."""
    try:
        for device in {config.encoder.device, config.vl.device, config.generation.device}:
            resolve_device(device)  # a device this machine lacks (cuda without CUDA), before any run
        for path, _ in map(parse_lora, config.generation.loras):
            if not Path(path).expanduser().is_file():
                raise UserError(f"LoRA file not found: {path}")
        source = run_source(run, inputs)
        init = inputs.image(run.init_image, "init image")
        negative = run_negative(run, source, inputs)
        request = check_request(config, run.prompt, source, init_image=init, negative=negative)
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
    return CheckedRun(run, request)


def check_plan(base: Config, spec: SweepSpec, plan: Plan, inputs: Inputs) -> CheckedPlan:
    """`plan` (of `spec` over `base`) with every run checked (`check_run`), each file read once into `inputs`;
    `UserError` naming the first bad run."""
    return CheckedPlan(base, spec, plan, tuple(check_run(run, plan.config(run), inputs) for run in plan.runs), inputs)


def with_prompts(work: CheckedPlan, spec: SweepSpec) -> CheckedPlan:
    """`work` for `spec`, whose runs are `work.spec`'s but for their prompts (an eval's `caption` runs, whose style
    captions the VL model writes only after every run was checked): the runs planned anew (`spec.expand`; their
    ids, their forward passes), each with its config and checked request reused under its new prompt, since no
    rule reads the prompt: nothing is resolved or checked again. `ValueError` for a run that differs otherwise."""

    def promptless(run: Run) -> str:
        return run_id(run.model_copy(update={"prompt": ""}))

    requests = {promptless(c.run): c.request for c in work.checked}
    checked = []
    for run in expand(spec):
        if (request := requests.get(promptless(run))) is None:
            raise ValueError(f"run '{run.label}' differs from the checked plan's runs in more than its prompt")
        checked.append(CheckedRun(run, replace(request, prompt=run.prompt)))
    configs = {c.run.id: c.request.config for c in checked}
    plan = Plan.of([c.run for c in checked], configs, work.inputs)
    return CheckedPlan(work.base, spec, plan, tuple(checked), work.inputs)


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


def batches(plan: CheckedPlan, size: int) -> Iterator[list[CheckedRun]]:
    """The plan's checked runs, `size` at a time, in order."""
    for i in range(0, len(plan.checked), size):
        yield list(plan.checked[i : i + size])


def prepare_run(gen: Generator, checked: CheckedRun) -> Prepared:
    """Prepare a checked run's conditioning with its resolved config, on the generator's components (nothing is
    checked again: `Generator.prepare_checked`)."""
    return gen.with_config(checked.request.config).prepare_checked(checked.request)


def render_batch(gen: Generator, prepared: list[Prepared]) -> list[Result]:
    """One diffusers call for runs that can share it, else one call each."""
    if all(p.batchable_with(prepared[0]) for p in prepared):
        return gen.render(prepared)
    return [gen.render([p])[0] for p in prepared]


Outcome = tuple[Run, Result | None, Exception | None]


def run_batch(gen: Generator, batch: list[CheckedRun]) -> list[Outcome]:
    """Prepare and render one batch of checked runs: `(run, result, None)` or `(run, None, error)` for each, in
    order of completion; a failing run (or a failing shared diffusers call) fails only its own runs."""
    outcomes: list[Outcome] = []
    ready: list[tuple[Run, Prepared]] = []
    for checked in batch:
        try:
            ready.append((checked.run, prepare_run(gen, checked)))
        except Exception as e:
            outcomes.append((checked.run, None, e))
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
    gen = job.session.generator(job.plan.base)
    before = Stats.of(gen)  # warm components bring the counts of what they ran before this job
    prime(gen.components, job.plan.plan, job.plan.inputs)
    with progress_bar() as progress:
        task = progress.add_task("sweep", total=len(job.plan.checked))
        for batch in batches(job.plan, job.options.batch_size):
            for run, result, error in run_batch(gen, batch):
                finish(job.sweep, run, result, error, job.options.on_result)
            progress.advance(task, len(batch))
    return Stats.of(gen) - before
