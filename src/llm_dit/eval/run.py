"""`llm-dit eval`: does reference conditioning beat the cheap alternatives? Every method of an eval
(`evalmethods`) runs on every cell of a suite (`suite`), the images are scored with the metric models
(`scorer.MetricScorer`, each loaded once, batched), and the methods are compared cell by cell (`comparison`).

Each (method, cell) is one run of ONE sweep (`sweep.ListedRun`), run by `experiment.run_sweep` into `DIR/runs`, so
an eval gets everything a sweep has: every run checked before any model loads, each unique extraction and encode
once (the tensor cache), the executors (local, Ray), the progress bar, and a directory that resumes after a kill
without redoing a finished run. The `caption` method's caption is written once per reference, before the sweep
(`DIR/captions.json`, reused on resume), and is part of its runs' prompts.

```
DIR/
├── captions.json     the style caption of each reference (model, instruction), when a caption method runs
├── references/       the images of a datasets suite, one PNG per distinct image
├── runs/             the sweep directory (sweepdir.SweepDir) of every (method, cell) run
├── eval.json         everything machine-readable (`load_eval` reads it)
└── leaderboard.md    the methods sorted by the style gain's lower bound (not a tested ranking), the verdicts vs caption
```
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config.settings import Config
from ..core.cache import TensorCache
from ..core.errors import UserError, check_choice
from ..core.files import atomic_write_text, load_image, write_json
from ..core.modes import ADHERENCE_TOLERANCE
from ..core.progress import progress_bar
from ..experiment.run import EXECUTORS, checked_plan, run_sweep
from ..generation.components import Components
from ..generation.generate import timed
from ..generation.records import library_versions
from ..models.vl import STYLE_CAPTION_PROMPT, caption_image
from ..report.eval_report import REPORT, notes, render_eval_report, style_label
from ..report.grid import image_free
from ..scoring.scorer import MetricScorer, ScoreItem, Scoring
from ..sweep.dir import SweepDir
from ..sweep.runner import CheckedPlan, RunOptions, Session, with_prompts
from ..sweep.spec import SweepSpec, expand
from .methods import Method, check_strengths, method_run
from .statistics import (
    ALPHA,
    CI_METHOD,
    LEVEL,
    Estimate,
    Metrics,
    Paired,
    Verdict,
    adherence_status,
    estimate,
    family_verdicts,
    paired_difference,
    single_level_factor,
)
from .suite import Suite

SCHEMA = "llm-dit eval 3"
"""3: verdicts Holm-corrected over the methods compared and needing no worse content leak (`settings.correction`),
none for a suite of one reference or prompt (`settings.no_verdicts`), matched baselines (`methods[].baselines`),
image dependence (`runs[].image_dependence`, `image_free`), the style metric's fallback (`primary.style_fallback`).
2: CIs clustered by reference and prompt (`settings.ci`), `timings`."""
OLD_SCHEMAS = {
    "llm-dit eval 1": "bootstrap intervals over cells",
    "llm-dit eval 2": "verdicts without family-wise correction, content leak or image dependence",
}
RUNS, CAPTIONS, EVAL, LEADERBOARD, REFERENCES = "runs", "captions.json", "eval.json", "leaderboard.md", "references"
STYLE_METRICS = ("csd", "clip_i", "color_hist_similarity")
"""The style metric the verdict and the ranking use: the first one the scorer computes; any but the first is a
fallback (`STYLE_FALLBACKS`), labelled as one in every output (`evalreport.style_label`)."""
STYLE_FALLBACKS = {
    "clip_i": "CLIP image similarity, which rewards copying the reference's content as much as its style",
    "color_hist_similarity": "colour histograms, which see only colours",
}
LEAK_METRIC = "dino_leak"
"""The content-leak metric a verdict of better needs not shown worse than caption's."""
IMAGE_FREE = "no image effect"
"""The status and verdict of a method with a run whose record says the image has no effect on it."""
ADHERENCE_METRICS = ("clip_t", "siglip_t")
"""The prompt-adherence metric the verdict and the ranking use: the first one the scorer computes."""
CAPTION_TOKENS = 60
DEFAULT_SCORING = Scoring("default")
"""An eval's metric models unless given: the real ones (`scorer.DEFAULT_METRIC_MODELS`)."""


@dataclass(frozen=True)
class EvalResult:
    """An eval directory's results: `data` is `eval.json` (see docs/cli.md for its schema); the paths of it and of
    the leaderboard. What the report reads (`load_eval`)."""

    dir: Path
    data: dict[str, Any]

    @property
    def eval_json(self) -> Path:
        return self.dir / EVAL

    @property
    def leaderboard(self) -> Path:
        return self.dir / LEADERBOARD

    @property
    def report(self) -> Path:
        return self.dir / REPORT

    def image(self, method: str, cell: dict[str, Any]) -> Path | None:
        """The image file of `method` on `cell` (an item of `data["cells"]`), or None when that run failed."""
        run = next((r for r in self.data["runs"] if r["method"] == method and r["cell"] == cell["id"]), None)
        return self.dir / run["image"] if run and run.get("image") else None


def load_eval(path: str | os.PathLike[str]) -> EvalResult:
    """The results of the eval directory `path` (its `eval.json`); `UserError` when it holds none."""
    folder = Path(path)
    try:
        data = json.loads((folder / EVAL).read_text())
    except (OSError, json.JSONDecodeError):
        raise UserError(f"not an eval directory (no readable {EVAL}): {folder}") from None
    if isinstance(data, dict) and (old := OLD_SCHEMAS.get(data.get("schema"))):  # type: ignore[arg-type]
        raise UserError(
            f"{folder / EVAL} was written by an earlier llm-dit ({data['schema']}: {old}): run the same eval again "
            "with --resume to recompute its statistics (its finished runs are kept)"
        )
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise UserError(f"{folder / EVAL} is not an llm-dit eval ({SCHEMA}) file")
    return EvalResult(folder, data)


def eval_spec(suite: Suite, methods: Sequence[Method], captions: dict[str, str]) -> SweepSpec:
    """The sweep of an eval: each method on each cell, one listed run each, cell by cell (a stopped eval has whole
    cells done); the `text` run of a (prompt, seed) is one run, shared by every reference."""
    runs = [method_run(m, cell, captions.get(cell.reference.hash)) for cell in suite.cells() for m in methods]
    return SweepSpec(name=f"eval {suite.name}", baseline=False, runs=runs)


def write_captions(config: Config, suite: Suite, path: Path, components: Components) -> dict[str, str]:
    """The style caption of each reference (`vl.caption_image` with `STYLE_CAPTION_PROMPT`, greedy), generated once
    with the VL model of `components` and kept in `path` after each one (a rerun reuses those of the same model and
    instruction). An empty caption is refused: the caption method would be the text method under another name."""
    model = config.models.vl
    try:
        kept = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        kept = {}
    same = kept.get("model") == model and kept.get("instruction") == STYLE_CAPTION_PROMPT
    captions: dict[str, str] = dict(kept.get("captions", {})) if same else {}
    todo = [r for r in suite.references if r.hash not in captions]
    if todo:
        extractor = components.vl
        with progress_bar() as progress:
            task = progress.add_task("captions", total=len(todo))
            for ref in todo:
                text = caption_image(extractor, load_image(ref.path, "reference image"), STYLE_CAPTION_PROMPT,
                                     CAPTION_TOKENS, words_only=True)  # fmt: skip
                if not text.strip():
                    raise UserError(
                        f"the VL model {model} wrote an empty style caption of reference {ref.name}: the caption "
                        "method cannot run with it (use a real Qwen3-VL model, or leave out the caption method)"
                    )
                captions[ref.hash] = text
                write_json(path, {"model": model, "instruction": STYLE_CAPTION_PROMPT, "captions": captions})
                progress.advance(task)
    return {r.hash: captions[r.hash] for r in suite.references}


def run_id_of(run: Any) -> str:
    """The sweep run id of one listed run (`sweep.expand` makes it)."""
    return expand(SweepSpec(runs=[run]))[0].id


def score_runs(
    suite: Suite, methods: Sequence[Method], ids: dict[tuple[str, tuple], str], sweep: SweepDir, scorer: MetricScorer
) -> dict[tuple[str, tuple], dict[str, Any]]:
    """Every finished (method, cell) run's metrics (`scorer.score`, one batched call): prompt adherence to the
    cell's prompt (not the caption-extended one), style and content leak against the cell's reference, content
    kept against the image of the method's `text` baseline (`Method.baseline`) on the same cell."""
    done = {r.id: r for r in sweep.runs() if r.ok and r.output is not None}
    keys, items = [], []
    for cell in suite.cells():
        for m in methods:
            run = done.get(ids[(m.name, cell.key)])
            if run is None:
                continue
            text = done.get(ids.get((m.baseline("text"), cell.key), ""))
            baseline = None if m.kind == "text" or text is None else sweep.path / str(text.output)
            keys.append((m.name, cell.key))
            items.append(ScoreItem(sweep.path / str(run.output), cell.prompt, cell.reference.path, baseline))
    return dict(zip(keys, scorer.score(items), strict=True))


def first_metric(names: Sequence[str], computed: Sequence[str]) -> str | None:
    return next((n for n in names if n in computed), None)


def primary_metrics(scorer: MetricScorer) -> dict[str, str | None]:
    """The metrics the verdicts and the order use (eval.json `primary`): `style` (the first of `STYLE_METRICS`
    computed), `adherence` (of `ADHERENCE_METRICS`), `leak` (`LEAK_METRIC`, when computed) and `style_fallback`:
    None for `csd`, else the one line saying the style metric is a fallback, what it measures and why csd is not
    there."""
    style = first_metric(STYLE_METRICS, scorer.metrics)
    fallback = None
    if style is not None and style != STYLE_METRICS[0]:
        why = scorer.unavailable.get("csd", "no csd metric model was given")
        fallback = f"{style} is a fallback style metric ({STYLE_FALLBACKS[style]}): csd was not computed ({why})"
    return {
        "style": style,
        "adherence": first_metric(ADHERENCE_METRICS, scorer.metrics),
        "leak": LEAK_METRIC if LEAK_METRIC in scorer.metrics else None,
        "style_fallback": fallback,
    }


ORDER = "sorted by the lower bound of the style gain's CI against text: an order, not a tested ranking"
"""What the leaderboard's order is (no pairwise tests between methods back it)."""


def correction(family: int) -> str:
    """How the verdicts are decided (eval.json `settings.correction`, the leaderboard, the report)."""
    return (
        f"one-sided paired tests against caption, clustered t with G - 1 degrees of freedom: the style gain "
        f"Holm-corrected over the {family} method{'s' if family != 1 else ''} compared (family-wise alpha "
        f"{ALPHA:g}); the content leak ({LEAK_METRIC}), a guard, at alpha {ALPHA:g} uncorrected"
    )


def image_free_note(entry: dict[str, Any]) -> str:
    """The one line a method with image-free runs (its `stats` entry) gets as its leaderboard status and its
    verdict: it gets no rank and no verdict."""
    runs = entry["image_free_runs"]
    return (
        f"{IMAGE_FREE}: the image has no effect on {runs} of its {max(entry['cells'], runs)} runs "
        "(image_dependence.image_free in their records)"
    )


def compare_methods(
    suite: Suite,
    methods: Sequence[Method],
    scores: dict[tuple[str, tuple], dict[str, Any]],
    primary: dict[str, str | None],
    *,
    tolerance: float,
    image_free_runs: dict[str, int] | None = None,
) -> tuple[dict[str, Any], dict[str, Verdict]]:
    """Per method: each metric's mean and clustered CI over cells, paired differences against its `text` and
    `caption` baselines (`Method.pairs`; cells paired by reference, prompt and seed); and each method's verdict
    against its caption (`comparison.family_verdicts`: Holm over the methods tested, content leak not worse). No
    verdict for a method with image-free runs (`image_free_runs`: method -> count), nor for any in a suite with
    one reference or prompt (`comparison.single_level_factor`). A metric measured on fewer than two cells has no
    interval and is left out."""
    values: dict[str, dict[str, dict[tuple, float]]] = {}
    for (method, cell), metrics in scores.items():
        for name, value in metrics.items():
            if value is not None:
                values.setdefault(method, {}).setdefault(name, {})[cell] = float(value)
    stats: dict[str, Any] = {}
    verdicts: dict[str, Verdict] = {}
    names = {m.name for m in methods}
    refused = single_level_factor(len(suite.references), len(suite.prompts))
    paired: dict[str, Paired] = {}
    for m in methods:
        own = values.get(m.name, {})
        entry: dict[str, Any] = {"cells": len({c for v in own.values() for c in v}), "metrics": {}}
        for kind, against in m.pairs().items():
            if against not in names:
                continue
            entry[f"vs_{kind}"] = {}
            for name, by_cell in own.items():
                if (d := paired_difference(by_cell, values.get(against, {}).get(name, {}))) is not None:
                    entry[f"vs_{kind}"][name] = d.as_dict()
        for name, by_cell in own.items():
            if len(by_cell) >= 2:
                entry["metrics"][name] = estimate(by_cell).as_dict()
        entry["image_free_runs"] = (image_free_runs or {}).get(m.name, 0)
        stats[m.name] = entry
        if m.kind in ("text", "caption"):
            continue
        if entry["image_free_runs"]:
            verdicts[m.name] = Verdict(False, image_free_note(entry))
        elif refused:
            verdicts[m.name] = Verdict(False, f"no verdict: {refused}")
        elif m.baseline("caption") not in names:
            verdicts[m.name] = Verdict(False, "undecided: no caption method in this eval")
        else:
            vs = entry.get("vs_caption", {})
            style, adherence, leak = (vs.get(primary.get(k) or "") for k in ("style", "adherence", "leak"))
            paired[m.name] = Paired(*(Estimate(**e) if e else None for e in (style, adherence, leak)))
    metrics = Metrics(style_label(primary), str(primary.get("adherence")), str(primary.get("leak") or LEAK_METRIC))
    against = {m.name: m.baseline("caption") for m in methods}
    verdicts |= family_verdicts(paired, tolerance, against, metrics)
    return stats, {m.name: verdicts[m.name] for m in methods if m.name in verdicts}


def leaderboard(
    methods: Sequence[Method],
    stats: dict[str, Any],
    primary: dict[str, str | None],
    tolerance: float,
    refused: str | None = None,
) -> list[dict[str, Any]]:
    """The methods in the order of what the question allows: a method is placed (`rank`) only when its prompt
    adherence against its `text` is kept (CI lower bound >= -tolerance), its style gain against `text` lies
    above 0, no run of it is image-free and the suite is not `refused` (`comparison.single_level_factor`); placed
    methods are sorted by the gain's CI lower bound, an order, not a tested ranking (no pairwise tests between
    methods). The others follow unplaced with the reason. `text` methods are the reference (gain 0 by
    definition), never placed: doing nothing wins nothing."""
    rows: list[dict[str, Any]] = []
    for m in methods:
        if m.kind == "text":
            continue
        vs = stats[m.name].get("vs_text", {})
        gain, adh = vs.get(primary["style"] or ""), vs.get(primary["adherence"] or "")
        free = stats[m.name].get("image_free_runs", 0)
        if free:
            status = image_free_note(stats[m.name])
        elif refused:
            status = f"not ranked: {refused.partition(':')[0]}"
        elif gain is None:
            status = "unmeasured: no paired style metric against text"
        elif not adh:
            status = "unmeasured: no paired prompt-adherence metric"
        elif lost := adherence_status(Estimate(**adh), tolerance):
            status = lost
        elif gain["low"] <= 0:
            status = "no style gain (CI includes 0)"
        else:
            status = "ranked"
        rows.append({"method": m.name, "kind": m.kind, "text": m.baseline("text"), "status": status,
                     "style_gain": gain, "adherence": adh, "image_free_runs": free})  # fmt: skip
    ranked = sorted((r for r in rows if r["status"] == "ranked"), key=lambda r: -r["style_gain"]["low"])
    for i, r in enumerate(ranked, 1):
        r["rank"] = i
    return ranked + [r for r in rows if r["status"] != "ranked"]


def _ci(e: dict[str, Any] | None) -> str:
    return "–" if not e else f"{e['mean']:+.4f} [{e['low']:+.4f}, {e['high']:+.4f}]"


def _mean(stats: dict[str, Any], method: str, metric: str) -> str:
    e = stats[method]["metrics"].get(metric)
    return "–" if not e else f"{e['mean']:.4f}"


def leaderboard_markdown(data: dict[str, Any]) -> str:
    """`leaderboard.md` from the eval's data."""
    p, stats, suite = data["primary"], data["stats"], data["suite"]
    s = data["settings"]
    kept = next((n for n in ("dino_kept", "ssim_to_baseline") if n in data["metrics"]["metrics"]), None)
    leak = LEAK_METRIC if LEAK_METRIC in data["metrics"]["metrics"] else None
    style = style_label(p)
    lines = [
        f"# Eval leaderboard: {suite['name']}",
        "",
        f"{suite['cells']} cells = {len(suite['references'])} references x {len(suite['prompts'])} prompts x "
        f"{len(suite['seeds'])} seeds. Style: `{style}`; prompt adherence: `{p['adherence']}`. Differences are "
        f"paired by cell (reference, prompt, seed) against each method's `text`, mean [{s['level']:.0%} CI], the CI "
        f"{s['ci']}: cells sharing a reference or a prompt are correlated, so few references or prompts give wide "
        "intervals.",
        *(f"**{n}**" for n in notes(data)),
        f"A method is placed only when its prompt adherence is kept (CI lower bound >= -{s['tolerance']}) and its "
        f"style gain's CI lies above 0; `text` is the reference, never placed. Order: {s['order']}.",
        f"Verdicts: {s['correction']}.",
        "",
        f"| order (by lower bound) | method | style gain ({style}) | prompt adherence ({p['adherence']}) | content "
        f"leak ({leak or '–'}) | content kept ({kept or '–'}) | vs caption |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in data["leaderboard"]:
        verdict = data["verdicts"].get(r["method"])
        vs = "–" if verdict is None else ("**better**" if verdict["better"] else verdict["reason"].split(":")[0])
        rank = str(r.get("rank", r["status"]))
        lines.append(
            f"| {rank} | {r['method']} | {_ci(r['style_gain'])} | {_ci(r['adherence'])} | "
            f"{_mean(stats, r['method'], leak) if leak else '–'} | "
            f"{_mean(stats, r['method'], kept) if kept else '–'} | {vs} |"
        )
    lines += ["", "## Verdicts against caption", ""]
    lines += [f"- **{name}**: {v['reason']}" for name, v in data["verdicts"].items()] or ["- none"]
    return "\n".join(lines) + "\n"


def checked_eval(
    config: Config,
    suite: Suite,
    methods: Sequence[Method],
    *,
    scoring: Scoring | None = None,
    tolerance: float = ADHERENCE_TOLERANCE,
) -> CheckedPlan:
    """The sweep of an eval, checked before any model loads: the methods, the cells, the metric models and device
    (`scoring`, default `DEFAULT_SCORING`), and every run and input file (`experiment.checked_plan`). Its `caption`
    runs carry a placeholder caption of each reference until the VL model has written the real one
    (`runner.with_prompts` then swaps them in, checking nothing again)."""
    if not methods or methods[0].kind != "text" or methods[0].settings:
        raise UserError("an eval's first method must be 'text' (every other method is paired with it)")
    names = {m.name for m in methods}
    for m in methods:
        if missing := [b for b in m.baselines.values() if b not in names]:
            raise UserError(f"method '{m.name}' is paired with '{missing[0]}', which is no method of this eval")
    if tolerance < 0:
        raise UserError(f"'tolerance' must be >= 0, got {tolerance}")
    if len(suite.cells()) < 2:
        raise UserError("an eval needs at least two cells (references x prompts x seeds) for its intervals")
    check_strengths(config, methods)
    (scoring or DEFAULT_SCORING).check()  # a bad metric-model spec or device is refused before any work
    placeholder = {r.hash: f"the caption of {r.hash}" for r in suite.references}  # distinct, as real ones are
    return checked_plan(config, eval_spec(suite, methods, placeholder))  # every run and input, no model


def plan_eval(
    config: Config,
    suite: Suite,
    methods: Sequence[Method],
    *,
    scoring: Scoring | None = None,
    tolerance: float = ADHERENCE_TOLERANCE,
) -> dict[str, Any]:
    """What `run_eval` will run, checked as it checks before any model loads (`checked_eval`), loading no model and
    writing nothing: what `eval --dry-run` prints. Returns the counts: cells, methods, runs (a `text` run of a
    prompt and seed is shared by every reference), the style captions to write, and the sweep's forward passes
    (`sweep.Plan.passes`); the matched baselines (`baselines`: method -> its `text` and `caption`, for each method
    not paired with the plain ones) and why the suite gets no verdicts (`no_verdicts`, or None)."""
    work = checked_eval(config, suite, methods, scoring=scoring, tolerance=tolerance)
    captioned = any(m.kind == "caption" for m in methods)
    return {
        "cells": len(suite.cells()),
        "methods": [m.name for m in methods],
        "runs": len(work.plan.runs),
        "captions": len(suite.references) if captioned else 0,
        **work.plan.passes(),
        "baselines": {m.name: m.pairs() for m in methods if set(m.pairs().values()) - {"text", "caption"}},
        "no_verdicts": single_level_factor(len(suite.references), len(suite.prompts)),
    }


def run_eval(
    config: Config,
    suite: Suite,
    methods: Sequence[Method],
    out_dir: str | os.PathLike[str],
    *,
    options: RunOptions | None = None,
    scoring: Scoring | None = None,
    tolerance: float = ADHERENCE_TOLERANCE,
    session: Session | None = None,
) -> EvalResult:
    """Run `methods` (`evalmethods.methods_of`; `text` first) on every cell of `suite` into the eval directory
    `out_dir`, score them and compare them; writes `eval.json`, `leaderboard.md` and `report.html`; returns
    `EvalResult`.
    Every run is checked once, before any model loads (`checked_eval`); `options.resume` finishes an eval already in
    `out_dir` (finished runs are kept). `options`, `session`: as `experiment.run_sweep` (the session's components,
    or new ones on its cache, write the captions and run the local executor's runs); `scoring`: the metric models
    (default `Scoring("default")`); `tolerance`: how much prompt adherence a method may lose and still be better
    than caption (`comparison`: the intervals are clustered by reference and prompt)."""
    out = Path(out_dir)
    options, scoring, session = options or RunOptions(), scoring or DEFAULT_SCORING, session or Session()
    check_choice(options.executor, EXECUTORS, "executor")
    work = checked_eval(config, suite, methods, scoring=scoring, tolerance=tolerance)
    runs = SweepDir(out / RUNS)
    if runs.done() and not options.resume:
        raise UserError(f"{out} already holds an eval: finish it with 'resume', or use a new directory")
    captioned = any(m.kind == "caption" for m in methods)
    times: dict[str, float] = {}  # seconds per phase of this call (a resumed eval's sweep runs only what was left)
    with timed(times, "captions"):
        components = session.components  # captions and local runs share them
        if components is None:
            components = Components(config, TensorCache() if session.cache is None else session.cache)
        captions = write_captions(config, suite, out / CAPTIONS, components) if captioned else {}
        if options.executor != "local":
            components.release("vl")  # Ray workers load their own
    if captioned:  # the caption runs' prompts with the real captions (no rule reads a prompt: nothing checked again)
        work = with_prompts(work, eval_spec(suite, methods, captions))
    with timed(times, "sweep"):
        local = Session(components if options.executor == "local" else None, session.cache)
        summary = run_sweep(config, work, runs, options=options, session=local)
    with timed(times, "release"):
        components.release(*components.loaded())  # the metric models get the memory the generators held
    ids = {(m.name, c.key): run_id_of(method_run(m, c, captions.get(c.reference.hash))) for c in suite.cells()
           for m in methods}  # fmt: skip
    with timed(times, "scoring"):
        scorer = scoring.scorer()
        scores = score_runs(suite, methods, ids, runs, scorer)
    primary = primary_metrics(scorer)
    results = {r.id: r for r in runs.runs()}
    free = {
        m.name: sum(image_free(r) for c in suite.cells() if (r := results.get(ids[(m.name, c.key)])) is not None)
        for m in methods
    }
    with timed(times, "statistics"):
        stats, verdicts = compare_methods(suite, methods, scores, primary, tolerance=tolerance, image_free_runs=free)
    family = [k for k, v in verdicts.items() if v.family]
    cells = [{"id": i, **c.as_dict()} for i, c in enumerate(suite.cells())]
    run_rows = []
    for i, cell in enumerate(suite.cells()):
        for m in methods:
            rid = ids[(m.name, cell.key)]
            result = results.get(rid)
            row = {"method": m.name, "cell": i, "run": rid, "status": result.status if result else "not run"}
            row["prompt"] = result.prompt if result else None
            row["image"] = f"{RUNS}/{result.output}" if result and result.ok else None
            row["error"] = result.error if result else None
            row["image_dependence"] = ((result.record if result else None) or {}).get("image_dependence")
            row["metrics"] = scores.get((m.name, cell.key))
            run_rows.append(row)
    data = {
        "schema": SCHEMA,
        "suite": suite.as_dict(),
        "methods": [m.model_dump() for m in methods],
        "captions": {"instruction": STYLE_CAPTION_PROMPT, "model": config.models.vl, "captions": captions}
        if captioned
        else None,
        "cells": cells,
        "runs": run_rows,
        "metrics": scorer.describe(),
        "primary": primary,
        "stats": stats,
        "verdicts": {k: v.as_dict() for k, v in verdicts.items()},
        "image_free": {k: v for k, v in free.items() if v},
        "settings": {
            "tolerance": tolerance,
            "level": LEVEL,
            "ci": CI_METHOD,
            "pairing": "cells (reference hash, prompt, seed)",
            "alpha": ALPHA,
            "correction": correction(len(family)),
            "family": family,
            "no_verdicts": single_level_factor(len(suite.references), len(suite.prompts)),
            "order": ORDER,
        },
        "models": {"zimage": config.models.zimage, "vl": config.models.vl},
        "config": config.model_dump(mode="json"),
        "sweep": summary,
        "versions": library_versions(),
    }
    data["leaderboard"] = leaderboard(methods, stats, primary, tolerance, data["settings"]["no_verdicts"])
    with timed(times, "report"):
        html = render_eval_report(out, data)
    data["timings"] = {k: round(v, 3) for k, v in times.items()}
    write_json(out / EVAL, data)
    atomic_write_text(out / LEADERBOARD, leaderboard_markdown(data))
    atomic_write_text(out / REPORT, html)
    return EvalResult(out, data)
