"""A sweep run as a typed value (`Run`), its id rule (`run_id`), its text-only baseline (`baseline_of`), and a
finished run as `results.jsonl` holds it (`RunResult`).

A run is what to render: a prompt, what conditions it (a reference image or reference set, a steering direction or
style files, with a neutral and a negative image), an init image and its settings (config overrides,
`{"vl.alpha": 0.3, ...}`). `spec.expand` makes the runs of a spec; `sweepdir.SweepDir` writes them as JSON
(`as_record`) and reads them back (`from_record`, `read_results`) with the keys today's and earlier releases wrote.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Field

# A conditioning setting shapes only what the reference image (or steering direction) adds to the caption: every
# `vl.*` key. The run fields below are the conditioning's sources. Everything else (generation.*, encoder.*, the
# prompt, the init image) is shared by a run and its text-only baseline. The one definition of "conditioning".
CONDITIONING_SECTION = "vl"
CONDITIONING_FIELDS = ("image", "reference_weights", "steer", "style", "neutral_image", "negative_image")

# The id rule (`run_id`): a hash of the fields that determine a run's image; not its label, nor its baseline's id
# (which follows from the rest). Until runs were typed, a run was a dict hashed whole but for those two, and the
# three fields added last were put in it only when used, so that the runs not using them kept their ids: those are
# hashed only when set. So every id stays what it was: sweep directories written then resume, and their image
# files keep their names. (Records older than some HASHED_FIELDS hashed fewer fields: read from a file, a run keeps
# the id it was written with.)
HASHED_FIELDS = ("prompt", "image", "init_image", "steer", "neutral_image", "kind", "settings")
HASHED_WHEN_SET = ("reference_weights", "style", "negative_image")


def is_conditioning(key: str) -> bool:
    """Whether the dotted setting `key` is a conditioning setting (a `vl.*` key; see CONDITIONING_SECTION)."""
    return key.partition(".")[0] == CONDITIONING_SECTION


def run_id(run: Run) -> str:
    """The id of `run`: the first 12 hex digits of the SHA-256 of the JSON object (keys sorted, values not JSON
    written as `str`) of its HASHED_FIELDS and those of its HASHED_WHEN_SET that are set (not None). Not its label,
    nor the id of the baseline it is compared with. Pinned by tests/sweep/test_runs.py to the ids runs had as dicts."""
    fields = {name: getattr(run, name) for name in HASHED_FIELDS}
    fields |= {name: value for name in HASHED_WHEN_SET if (value := getattr(run, name)) is not None}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:12]


class Run(BaseModel):
    """One run of a sweep: a `variant` (conditioned, or a listed run) or the text-only `baseline` its variants are
    compared with (`baseline`: that baseline's id). `id` is `run_id` of the run as made; a run read from a record
    (`from_record`) keeps the id it was written with, which names its image file. A run is frozen: make a changed
    run anew (`model_copy(update=...)` would keep the old id)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["variant", "baseline"] = "variant"
    label: str = "run"
    prompt: str
    image: str | None = None  # a reference image, or a reference set `a.png+b.png` (`spec.SET_SEP`)
    reference_weights: list[float] | None = None  # the weights of a reference set's images (None: 1/n each)
    init_image: str | None = None
    steer: str | None = None  # a steering direction file
    style: list[str] | None = None  # style files FILE[:SCALE], combined
    neutral_image: str | None = None  # the unstyled reference of blend style_delta
    negative_image: str | None = None  # CFG's negative rows: the empty prompt's blended with this image
    baseline: str | None = None  # the id of the text-only baseline a variant is compared with (None: none)
    settings: dict[str, Any] = Field(default_factory=dict)  # config overrides by dotted key, the seed among them

    # fields a record holds only when they are set (earlier releases wrote them so; readers take absent as None)
    WRITTEN_WHEN_SET: ClassVar[tuple[str, ...]] = HASHED_WHEN_SET

    _id: str = ""

    def model_post_init(self, context: Any) -> None:
        """Fix the id once: the one given in the validation context (`from_record`), else `run_id`."""
        given = context.get("id") if isinstance(context, dict) else None
        self._id = str(given) if given is not None else run_id(self)

    @property
    def id(self) -> str:
        return self._id

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Self:
        """The run (or result) a JSON record describes, with the record's `id`. Keys this type does not know are
        left out (a result line's outcome, for a `Run`; a later release's additions): records are read, never
        written back. `ValueError` (a pydantic `ValidationError`, but for a missing id) for a record without an id
        or with a missing or mistyped field."""
        if "id" not in record:
            raise ValueError("a run record has an 'id'")
        known = {k: v for k, v in record.items() if k in cls.model_fields}
        return cls.model_validate(known, context={"id": record["id"]})

    def as_record(self) -> dict[str, Any]:
        """The run as JSON-able data: `id` first, then every field, except the WRITTEN_WHEN_SET fields when None."""
        fields = self.model_dump()
        return {"id": self.id} | {k: v for k, v in fields.items() if v is not None or k not in self.WRITTEN_WHEN_SET}


def baseline_of(run: Run) -> Run:
    """The text-only baseline of a conditioned run: the run minus its conditioning. Same prompt, init image and
    every non-conditioning setting (seed, steps, size, shift, guidance, strength, encoder.*: text layer, think
    block, long-prompt mode, ...); no conditioning source (CONDITIONING_FIELDS) and no `vl.*` setting."""
    return Run(
        kind="baseline",
        label="text only",
        prompt=run.prompt,
        init_image=run.init_image,
        settings={k: v for k, v in run.settings.items() if not is_conditioning(k)},
    )


class RunResult(Run):
    """A line of `results.jsonl`: a run (with the id it was written with) and what came of it: `ok` with its image
    (`output`, relative to the sweep directory) and its generation record (`generation.Result.record`), or `failed`
    with its error (`Type: first line of the message`)."""

    status: Literal["ok", "failed"]
    output: str | None = None
    error: str | None = None
    record: dict[str, Any] | None = None

    WRITTEN_WHEN_SET: ClassVar[tuple[str, ...]] = (*HASHED_WHEN_SET, "output", "error", "record")

    @classmethod
    def of(cls, run: Run, **outcome: Any) -> RunResult:
        """The result of `run` (its id kept) with `outcome`: `status` and `output`, `record` or `error`."""
        return cls.model_validate(run.model_dump() | outcome, context={"id": run.id})

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def read_results(records: Iterable[Mapping[str, Any]]) -> list[RunResult]:
    """The results that `records` (result lines, in file order) describe; a record that is not a result (no id, a
    field of the wrong type) is skipped, as a torn line is. A variant whose record has no `baseline` key was written
    before baselines were matched: it is paired with the first baseline of its (prompt, image, seed) group, as it
    was then."""
    parsed: list[tuple[RunResult, bool]] = []
    for record in records:
        try:
            parsed.append((RunResult.from_record(record), "baseline" in record))
        except ValueError:
            continue
    legacy: dict[str, str] = {}
    for result, _ in parsed:
        if result.kind == "baseline":
            legacy.setdefault(_group(result), result.id)
    return [result if named or result.kind == "baseline" else _paired(result, legacy) for result, named in parsed]


def _paired(result: RunResult, baselines: dict[str, str]) -> RunResult:
    """`result` compared with its group's baseline in `baselines` (None: none). `model_copy` keeps the id as
    written: the pairing is read from the file, not a change of the run."""
    return result.model_copy(update={"baseline": baselines.get(_group(result))})


def _group(run: Run) -> str:
    """A run's (prompt, image, seed) group, what results written before baselines were matched were paired by."""
    return json.dumps([run.prompt, run.image, run.settings.get("generation.seed")])


def baseline_pairs(runs: Sequence[Run]) -> dict[str, str | None]:
    """`{variant id: id of the baseline it is compared with, or None}`."""
    return {run.id: run.baseline for run in runs if run.kind != "baseline"}


def varying_keys(runs: Sequence[Run]) -> list[str]:
    """Settings keys whose value differs between variant runs (the grid's axes), in first-seen order."""
    variants = [r for r in runs if r.kind == "variant"]
    keys: list[str] = []
    for r in variants:
        keys += [k for k in r.settings if k not in keys]
    return [k for k in keys if len({json.dumps(r.settings.get(k), default=str) for r in variants}) > 1]
