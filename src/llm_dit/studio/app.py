"""llm-dit studio: an HTTP API and a local web page over one process that keeps the models warm.

`create_app(config, workspace, token)` is the FastAPI app `llm-dit studio` serves with uvicorn. It is a surface like
the CLI, over the same API: a generate request is `tasks.generate_file` on the studio's one warm `Generator` (its
`Components`, with `models.low_memory` staging, and the same tensor cache as the CLI), extraction is
`tasks.extract_file`, inspection `tasks.inspect_image`, a sweep `experiment.run_experiment`. The settings a request
may carry are the rows of the CLI's option table (`options.OPTIONS`) that `llm-dit generate` takes, named by their
config keys (`vl.alpha`), so a setting has one name in the config, the CLI's errors, the API, records and the page.

Model work runs one job at a time on a single worker thread (`Studio`); other requests queue. Each job reports the
VL and text forward passes it ran (`Components.forward_passes`, the counter sweeps and `llm-dit bench` report): a
re-render of an image whose reference and prompt were seen before, with another alpha or blend or an extracted layer,
runs none (the cache holds the rows). A generate job streams its denoising steps as server-sent events.

Every file the client names is a path inside the workspace (`Studio.inside`: absolute paths, `..`, and symlinks out
are refused); uploads are size-limited and opened with the CLI's image guards (`files.load_image`); outputs and the
history are written atomically (`files`). Errors are JSON `{"error": "one line"}` with a 4xx status.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import itertools
import json
import os
import queue
import tempfile
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from fastapi import FastAPI, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, create_model
from starlette.exceptions import HTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware

from ..config.options import OPTIONS, Option, choices
from ..config.settings import Config, with_overrides
from ..core.cache import TensorCache
from ..core.errors import UserError
from ..core.files import load_image, write_json
from ..core.modes import parse_lora
from ..experiment.run import checked_plan, run_experiment
from ..generation.generate import Generator
from ..generation.tasks import IMAGE_SUFFIXES, extract_file, generate_file, inspect_image
from ..maths.blend import ALPHA_MAX, ALPHA_VALUES
from ..sweep.dir import SweepDir
from ..sweep.runner import RunOptions, Session
from ..sweep.spec import PRESETS, SweepSpec, resolve_spec

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
SETTING_TAGS = ("generation", "conditioning")  # the settings `llm-dit generate` takes, in the table's order
UPLOAD_FORMATS = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp"}
MAX_UPLOAD_MB = 20.0
TOKEN_COOKIE = "llm_dit_token"
PAGE_FILES = {"": ("studio.html", "text/html"), "studio.js": ("studio.js", "text/javascript"),
              "studio.css": ("studio.css", "text/css")}  # fmt: skip
PAGE_CSP = "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; frame-src 'self'; object-src 'none'"


class Refused(UserError):
    """A request for something the studio never does (a path outside the workspace): HTTP 403."""


class NotFound(UserError):
    """No such job or file: HTTP 404."""


class Conflict(UserError):
    """The request conflicts with the state (a busy worker, a finished job, an existing sweep): HTTP 409."""


class Cancelled(Exception):
    """Raised inside a running job when its cancel was asked for."""


STATUS = {Refused: 403, NotFound: 404, Conflict: 409}


def check_bind(host: str, token: str | None) -> None:
    """Binding an address other than the loopback needs a token (everyone who can reach it could use it)."""
    if host not in LOCAL_HOSTS and not token:
        raise UserError(
            f"binding {host} serves the studio beyond this machine: give it a token (--token or LLM_DIT_STUDIO_TOKEN)"
        )


# ----------------------------------------------------------------------------------------------- request models

LORAS = "generation.loras"
"""The setting whose items `FILE[:SCALE]` name files: each FILE is a workspace path (`Studio.loras`)."""


def setting_options() -> list[Option]:
    """The table rows a request's `settings` may carry: config keys of `llm-dit generate`'s setting tags, once."""
    seen: dict[str, Option] = {}
    for o in OPTIONS:
        if o.config_key and any(t in o.tags for t in SETTING_TAGS) and o.key not in seen:
            seen[o.key] = o
    return list(seen.values())


def input_options() -> list[Option]:
    """The table rows of `llm-dit generate`'s input files (`tasks.generate_file`'s arguments): workspace paths."""
    return [o for o in OPTIONS if "inputs" in o.tags and not o.config_key]


def config_field(key: str):
    """The pydantic field of the config key `key` (`section.name`)."""
    section, _, name = key.partition(".")
    return Config.model_fields[section].annotation.model_fields[name]


def settings_model() -> type[BaseModel]:
    """`Settings`: one optional field per `setting_options` row, named (alias) by its config key and typed by the
    config's field, described by the CLI's help. Values are validated by the config itself (`with_overrides`)."""
    fields: dict[str, Any] = {
        o.key.replace(".", "__"): (config_field(o.key).annotation | None, Field(None, alias=o.key, description=o.help))
        for o in setting_options()
    }
    return create_model("Settings", __config__=ConfigDict(extra="forbid", populate_by_name=True), **fields)


Settings = settings_model()
InputFiles = create_model(
    "InputFiles",
    __config__=ConfigDict(extra="forbid"),
    **{o.key: (str | None, Field(None, description=f"{o.help} A path in the workspace.")) for o in input_options()},
)


class GenerateRequest(InputFiles):  # type: ignore[misc, valid-type]
    """One image: the prompt, input files (workspace paths, as `llm-dit generate`'s) and settings."""

    prompt: str = Field(min_length=1)
    settings: Settings = Field(default_factory=Settings)  # type: ignore[valid-type]


class ExtractRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image: str = Field(description="Reference image, a path in the workspace.")
    text: str | None = Field(None, description="Text after the image (the prompt).")
    settings: Settings = Field(default_factory=Settings)  # type: ignore[valid-type]


class InspectRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image: str = Field(description="Reference image, a path in the workspace.")
    prompt: str = Field(min_length=1)
    layers: list[int] | None = Field(None, description="Hidden layers (default: as `llm-dit inspect`).")
    settings: Settings = Field(default_factory=Settings)  # type: ignore[valid-type]


class SweepRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", description="Folder under sweeps/.")
    prompts: list[str] = Field(min_length=1)
    images: list[str] = Field(default_factory=list, description="Reference images, paths in the workspace.")
    preset: str | None = Field(None, description=f"A built-in sweep: {', '.join(PRESETS)}.")
    axes: dict[str, list[Any]] = Field(default_factory=dict, description="Config key -> values to vary.")
    settings: Settings = Field(default_factory=Settings)  # type: ignore[valid-type]
    neutral_image: str | None = Field(None, description="The unstyled reference of style_delta runs, a workspace path.")
    negative_image: str | None = Field(None, description="CFG's negative image of every reference run (needs "
                                       "generation.guidance > 0), a workspace path.")  # fmt: skip
    seeds: list[int] = Field(default_factory=lambda: [0])
    baseline: bool = True
    resume: bool = Field(False, description="Finish the sweep in sweeps/NAME: its finished runs are kept, its "
                         "failed ones retried; a different plan is refused.")  # fmt: skip


def given_settings(settings: BaseModel) -> dict[str, Any]:
    """`{config key: value}` of the settings a request set."""
    return settings.model_dump(by_alias=True, exclude_unset=True)


def option_info(o: Option, config: Config) -> dict[str, Any]:
    """What the page needs to draw a control for a setting: the table row, its type, valid values and bounds."""
    f = config_field(o.key)
    bounds = {
        name: getattr(m, name)
        for m in f.metadata
        for name in ("ge", "gt", "le", "lt")
        if getattr(m, name, None) is not None
    }
    value = config.flat()[o.key]
    kind = {int: "integer", float: "number", bool: "boolean"}.get(o.kind, "string")
    if o.many:  # how the page sends a list option's items: a dict (KEY=VALUE items), a joined string, or a list
        kind = {dict: "pairs", ",".join: "joined"}.get(o.join, f"list[{kind}]")  # type: ignore[call-overload]
    return {
        "key": o.key,
        "flags": list(o.flags),
        "help": o.help,
        "group": next(t for t in SETTING_TAGS if t in o.tags),
        "type": kind,
        "choices": list(choices(o.key)),
        "bounds": bounds,
        "value": value,
        "path": o.kind is Path,
        "sweep_axis": o.axis,
    }


# ------------------------------------------------------------------------------------------------------- jobs


@dataclass
class Job:
    """One queued unit of model work and what it reported."""

    id: str
    kind: str
    request: dict[str, Any]
    run: Callable[[Job], dict[str, Any]]
    status: Literal["queued", "running", "done", "failed", "cancelled"] = "queued"
    created: float = field(default_factory=time.time)
    started: float | None = None
    ended: float | None = None
    seconds: float | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    warnings: list[str] = field(default_factory=list)
    forward_passes: dict[str, int] | None = None
    progress: dict[str, int] | None = None  # denoising steps done and total, of a generate job
    events: list[dict[str, Any]] = field(default_factory=list)
    cancel: threading.Event = field(default_factory=threading.Event)

    @property
    def finished(self) -> bool:
        return self.status in ("done", "failed", "cancelled")

    def as_dict(self) -> dict[str, Any]:
        keys = ("id", "kind", "status", "created", "started", "ended", "seconds", "request", "result", "error")
        keys += ("warnings", "progress")
        return {k: getattr(self, k) for k in keys} | {"forward_passes": self.forward_passes}


class Studio:
    """The warm generator, the workspace and the one worker thread that runs jobs in order."""

    KEEPALIVE_S = 15.0  # an event stream with nothing new sends a comment this often

    def __init__(self, config: Config, workspace: str | Path, cache: TensorCache | None = None) -> None:
        self.config = config
        self.root = Path(workspace).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.generator = Generator(config, cache)  # default: the CLI's tensor cache
        self.jobs: dict[str, Job] = {}
        self.changed = threading.Condition()
        self.busy = threading.Lock()  # held while a job runs (release waits for none)
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._ids = itertools.count(1)
        self._prefix = time.strftime("%Y%m%d-%H%M%S")
        self.history_file = self.root / ".studio" / "history.json"
        self.history: list[dict[str, Any]] = self._read_history()
        self._history_lock = threading.Lock()
        self._worker = threading.Thread(target=self._work, name="llm-dit-studio-worker", daemon=True)
        self._worker.start()

    # paths ------------------------------------------------------------------------------------------------

    def inside(self, given: str, label: str) -> Path:
        """The workspace file `given` names (relative, POSIX separators), refused when it is absolute, climbs with
        `..`, or resolves (symlinks followed) outside the workspace."""
        if not given or "\x00" in given:
            raise UserError(f"{label}: give a path inside the workspace")
        rel = PurePosixPath(given)
        if given.startswith(("/", "\\")) or "\\" in given or rel.is_absolute() or ".." in rel.parts or ":" in given:
            raise Refused(f"{label} must be a relative path inside the workspace: {given!r}")
        path = (self.root / rel).resolve()
        if not path.is_relative_to(self.root):
            raise Refused(f"{label} leads outside the workspace: {given!r}")
        return path

    def existing(self, given: str, label: str) -> Path:
        path = self.inside(given, label)
        if not path.is_file():
            raise NotFound(f"{label} not found in the workspace: {given}")
        return path

    def relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def settings_for(self, settings: BaseModel, axes: dict[str, list[Any]] | None = None) -> dict[str, Any]:
        """`{config key: value}` a request set, with the values of path settings (statistics, adapter files, the
        files of LoRA items), and of their sweep axes in `axes` (changed in place), checked to be workspace files."""
        given = given_settings(settings)
        for o in setting_options():
            if o.kind is Path and given.get(o.key):
                given[o.key] = str(self.existing(given[o.key], f"'{o.key}'"))
            if o.kind is Path and axes and o.key in axes:
                axes[o.key] = [v and str(self.existing(str(v), f"'axes.{o.key}'")) for v in axes[o.key]]
        if given.get(LORAS):
            given[LORAS] = self.loras(given[LORAS], f"'{LORAS}'")
        if axes and LORAS in axes:
            axes[LORAS] = [self.loras(v, f"'axes.{LORAS}'") for v in axes[LORAS]]
        return given

    def loras(self, items: Any, label: str) -> Any:
        """LoRA items `FILE[:SCALE]` (`core.modes.parse_lora`) with each FILE a workspace file (`existing`: relative
        to the workspace, never outside it), given as its absolute path with the item's scale; a value that is not
        a list of items is left to the config's validation."""
        if not isinstance(items, list):
            return items
        out = []
        for item in items:
            if isinstance(item, str):
                path, _ = parse_lora(item)
                item = str(self.existing(path, label)) + item[len(path) :]
            out.append(item)
        return out

    def config_for(self, settings: BaseModel) -> Config:
        """The studio's config with a request's settings as one precedence level (validated by the config)."""
        return with_overrides(self.config, self.settings_for(settings), "the request's settings")

    # jobs -------------------------------------------------------------------------------------------------

    def submit(self, kind: str, request: dict[str, Any], run: Callable[[Job], dict[str, Any]]) -> Job:
        job = Job(f"{self._prefix}-{next(self._ids):04d}", kind, request, run)
        with self.changed:
            self.jobs[job.id] = job
            self._event(job, "queued", position=self._queue.qsize())
        self._queue.put(job)
        return job

    def job(self, job_id: str) -> Job:
        if job_id not in self.jobs:
            raise NotFound(f"no job '{job_id}'")
        return self.jobs[job_id]

    def _event(self, job: Job, kind: str, **data: Any) -> None:
        """Record an event of `job` and wake every listener (call with `self.changed` held)."""
        job.events.append({"type": kind, "job": job.id, "status": job.status, **data})
        self.changed.notify_all()

    def step(self, job: Job) -> Callable[[int, int], None]:
        """The `on_step` of a generate job: an event per denoising step; raises `Cancelled` when asked to stop."""

        def on_step(done: int, total: int) -> None:
            with self.changed:
                job.progress = {"step": done, "total": total}
                self._event(job, "step", step=done, total=total)
            if job.cancel.is_set():
                raise Cancelled

        return on_step

    def cancel(self, job_id: str) -> Job:
        job = self.job(job_id)
        with self.changed:
            if job.finished:
                raise Conflict(f"job '{job_id}' is already {job.status}")
            if job.status == "running" and job.kind != "generate":
                raise Conflict(f"a running {job.kind} job cannot be stopped; only queued jobs and generate jobs can")
            job.cancel.set()
            dropped = job.status == "queued"  # else the worker stops it after its current step
            if dropped:
                job.status, job.ended = "cancelled", time.time()
                self._event(job, "cancelled")
        if dropped:
            self._remember(job)
        return job

    def close(self) -> None:
        """Stop the worker after the job it runs (queued jobs are dropped)."""
        self._queue.put(None)
        self._worker.join(timeout=60)

    def _work(self) -> None:
        while (job := self._queue.get()) is not None:
            with self.changed:
                if job.cancel.is_set():
                    continue
                job.status, job.started = "running", time.time()
                self._event(job, "running")
            with self.busy:  # released before the job's end is published: a client told "done" finds it free
                outcome = self._run(job)
            with self.changed:
                for key, value in outcome.items():
                    setattr(job, key, value)
                job.ended = time.time()
                self._event(job, job.status, error=job.error, forward_passes=job.forward_passes, result=job.result)
            self._remember(job)  # after the event: the client need not wait for the history's fsync

    def _run(self, job: Job) -> dict[str, Any]:
        """Run the job; what it reports (status, result, error, warnings, seconds, forward passes)."""
        before = self.generator.components.forward_passes()
        t0 = time.perf_counter()
        status, result, error = "done", None, None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                result = job.run(job)
            except Cancelled:
                status = "cancelled"
            except UserError as e:
                status, error = "failed", str(e)
            except Exception as e:  # a bug, not bad input: keep the server up and say what happened
                traceback.print_exc()
                status, error = "failed", f"{type(e).__name__}: {e}"
        after = self.generator.components.forward_passes()
        return {
            "status": status,
            "result": result,
            "error": error,
            "warnings": list(dict.fromkeys(str(w.message) for w in caught)),
            "seconds": round(time.perf_counter() - t0, 4),
            "forward_passes": {k: after[k] - before[k] for k in after},
        }

    # history ----------------------------------------------------------------------------------------------

    def _read_history(self) -> list[dict[str, Any]]:
        with contextlib.suppress(OSError, json.JSONDecodeError):
            data = json.loads(self.history_file.read_text())
            if isinstance(data, list):
                return data
        return []

    def _remember(self, job: Job) -> None:
        """Add a finished job to the history file (atomically rewritten, one writer at a time)."""
        entry = job.as_dict()
        if job.kind == "inspect" and entry["result"]:  # a report is large: the job keeps it
            entry["result"] = {"layers": list(entry["result"].get("layers", {}))}
        with self._history_lock:
            self.history.append(entry)
            write_json(self.history_file, self.history)

    def events(self, job: Job) -> Iterator[str]:
        """The job's events as server-sent events, from the first, until it is finished."""
        sent = 0
        while True:
            with self.changed:
                self.changed.wait_for(lambda n=sent: len(job.events) > n, timeout=self.KEEPALIVE_S)
                new, done = job.events[sent:], job.finished
                sent += len(new)
            for e in new:
                yield f"event: {e['type']}\ndata: {json.dumps(e, default=str)}\n\n"
            if done:  # its last event is sent
                return
            if not new:
                yield ": waiting\n\n"

    # work -------------------------------------------------------------------------------------------------

    def generate(self, req: GenerateRequest) -> Job:
        cfg = self.config_for(req.settings)
        files = {o.key: getattr(req, o.key) for o in input_options()}
        paths = {k: self.existing(v, f"'{k}'") for k, v in files.items() if v}

        def run(job: Job) -> dict[str, Any]:
            out = self.root / "outputs" / f"{job.id}.png"
            generate_file(cfg, req.prompt, out, **paths, generator=self.generator, on_step=self.step(job))
            record = json.loads(out.with_suffix(".json").read_text())
            return {"image": self.relative(out), "record": self.relative(out.with_suffix(".json")),
                    "settings": settings_of(record), "timings_s": record.get("timings_s")}  # fmt: skip

        return self.submit("generate", req.model_dump(by_alias=True, exclude_unset=True), run)

    def extract(self, req: ExtractRequest) -> Job:
        cfg, image = self.config_for(req.settings), self.existing(req.image, "'image'")

        def run(job: Job) -> dict[str, Any]:
            out = self.root / "extractions" / f"{job.id}.safetensors"
            summary = extract_file(cfg, image, out, req.text, generator=self.generator)
            return summary | {"output": self.relative(out)}

        return self.submit("extract", req.model_dump(by_alias=True, exclude_unset=True), run)

    def inspect(self, req: InspectRequest) -> Job:
        cfg, image = self.config_for(req.settings), self.existing(req.image, "'image'")

        def run(job: Job) -> dict[str, Any]:
            return inspect_image(cfg, image, req.prompt, req.layers, generator=self.generator)

        return self.submit("inspect", req.model_dump(by_alias=True, exclude_unset=True), run)

    def sweep(self, req: SweepRequest) -> Job:
        """A sweep into `sweeps/NAME` (`experiment.run_experiment`), planned and checked before it queues."""
        out = self.inside(f"sweeps/{req.name}", "'name'")
        if out.exists() and not req.resume:
            raise Conflict(f"sweeps/{req.name} exists: choose another 'name', or set 'resume' to finish it")
        axes_keys = sorted({o.key for o in OPTIONS if o.axis})
        if unknown := [k for k in req.axes if k not in axes_keys]:
            raise UserError(f"'axes' has keys no sweep varies: {', '.join(unknown)} (valid: {', '.join(axes_keys)})")
        images = [str(self.existing(p, "'images'")) for p in req.images]
        files = {
            key: str(self.existing(path, f"'{key}'"))
            for key, path in (("neutral_image", req.neutral_image), ("negative_image", req.negative_image))
            if path
        }
        axes = dict(req.axes)
        fixed = self.settings_for(req.settings, axes)
        base = SweepSpec(
            prompts=req.prompts, images=images, seeds=req.seeds, baseline=req.baseline, name=req.name, **files
        )
        spec = resolve_spec(base, req.preset, axes, fixed)
        plan = checked_plan(self.config, spec)  # every input and run checked before the job queues, and only then
        if req.resume:
            SweepDir(out).check_plan(self.config.model_dump(), plan.plan.runs)  # the sweep it started, not another

        def run(job: Job) -> dict[str, Any]:  # on the studio's warm models (the worker thread runs one job at a time)
            options, warm = RunOptions(resume=req.resume), Session(self.generator.components)
            result = run_experiment(self.config, plan, out, options=options, session=warm)
            return {
                "summary": result.summary,
                "report": self.relative(result.report),
                "grid": self.relative(result.grid),
            }

        return self.submit("sweep", req.model_dump(by_alias=True, exclude_unset=True), run)

    async def upload(self, file: UploadFile, limit: int) -> dict[str, Any]:
        """Store an uploaded image as `uploads/SHA16.EXT` after the CLI's checks (`files.load_image`: a readable,
        complete image, not a decompression bomb, not empty) and a format check (PNG, JPEG, WebP)."""
        data = await file.read(limit + 1)
        if len(data) > limit:
            raise UploadTooLarge(f"upload is larger than {limit / 2**20:g} MB")
        name = file.filename or "upload"
        folder = self.root / "uploads"
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".upload.", suffix=".tmp", dir=folder)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            try:
                image = load_image(tmp, "upload")
                with Image.open(tmp) as im:
                    fmt = im.format
            except UserError as e:
                raise UserError(str(e).replace(tmp, name)) from None
            if fmt not in UPLOAD_FORMATS:
                raise UserError(f"upload {name} is {fmt}: send PNG, JPEG or WebP")
            digest = hashlib.sha256(data).hexdigest()
            final = folder / f"{digest[:16]}{UPLOAD_FORMATS[fmt]}"
            os.replace(tmp, final)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        return {"path": self.relative(final), "sha256": digest, "width": image.width, "height": image.height}

    def components(self) -> dict[str, Any]:
        c, cache = self.generator.components, self.generator.cache
        return {
            "loaded": c.loaded(),
            "low_memory": c.settings["models.low_memory"],
            "models": {"zimage": c.settings["models.zimage"], "vl": c.settings["models.vl"]},
            "forward_passes": c.forward_passes(),
            "cache": {"root": str(cache.root), "hits": cache.hits, "misses": cache.misses} if cache else None,
            "busy": self.busy.locked(),
            "queued": self._queue.qsize(),
        }

    def release(self) -> dict[str, Any]:
        if not self.busy.acquire(blocking=False):
            raise Conflict("a job is running: release the models after it finishes")
        try:
            self.generator.components.release(*self.generator.components.loaded())
        finally:
            self.busy.release()
        return self.components()

    def files(self, kind: Literal["images", "reports"]) -> list[str]:
        """Workspace images (png, jpg, webp) or sweep reports (`report.html`), newest first."""
        if kind == "reports":
            found = self.root.rglob("report.html")
        else:
            found = (p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        inside = [p for p in found if p.is_file() and p.resolve().is_relative_to(self.root)]
        return [self.relative(p) for p in sorted(inside, key=lambda p: p.stat().st_mtime, reverse=True)]


class UploadTooLarge(UserError):
    """HTTP 413."""


STATUS[UploadTooLarge] = 413


def settings_of(record: dict[str, Any]) -> dict[str, Any]:
    """The settings a record says acted (`settings`), for the page's settings diff."""
    return record.get("settings") or {}


# -------------------------------------------------------------------------------------------------------- app


def create_app(
    config: Config,
    workspace: str | Path,
    token: str | None = None,
    *,
    max_upload_mb: float = MAX_UPLOAD_MB,
    cache: TensorCache | None = None,
) -> FastAPI:
    """The studio app over `config` (the models it keeps warm and the default of every setting) and the
    `workspace` folder (inputs the client names, uploads, outputs, sweeps). With `token`, every request must carry
    it: header `Authorization: Bearer TOKEN` or `X-Token`, query `?token=` (the page; it sets a cookie so the
    page's own requests carry it) or that cookie. `cache`: the tensor cache (default: the CLI's, under
    `$LLM_DIT_CACHE`). Without a token only loopback Host names are served (`LOCAL_HOSTS`; others get 400)."""
    studio = Studio(config, workspace, cache)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        studio.close()

    app = FastAPI(
        title="llm-dit studio",
        version="1",
        summary="Reference-conditioned Z-Image, models kept warm.",
        lifespan=lifespan,
    )
    app.state.studio = studio
    limit = int(max_upload_mb * 2**20)
    if token is None:  # loopback only: refuse other Host names, so a web page cannot reach it by DNS rebinding
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=[*LOCAL_HOSTS, "[::1]"])

    @app.exception_handler(UserError)
    async def user_error(_: Request, e: UserError) -> JSONResponse:
        return JSONResponse({"error": str(e)}, status_code=STATUS.get(type(e), 400))

    @app.exception_handler(RequestValidationError)
    async def bad_request(_: Request, e: RequestValidationError) -> JSONResponse:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"] if p != "body")
        return JSONResponse({"error": f"bad request: '{where}': {err['msg']}"}, status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, e: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(e.detail).lower()}, status_code=e.status_code, headers=e.headers)

    @app.middleware("http")
    async def authorize(request: Request, call_next):
        if token is None:
            return await call_next(request)
        header = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        given = [header, request.headers.get("x-token", ""), request.query_params.get("token", ""),
                 request.cookies.get(TOKEN_COOKIE, "")]  # fmt: skip
        if not any(hmac.compare_digest(g.encode(), token.encode()) for g in given if g):
            return JSONResponse({"error": "missing or wrong token"}, status_code=401)
        response = await call_next(request)
        if request.query_params.get("token"):
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
        return response

    # the page
    def page_file(name: str) -> Response:
        file, media = PAGE_FILES[name]
        body = (resources.files("llm_dit.studio") / "static" / file).read_bytes()
        return Response(
            body, media_type=media, headers={"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-store"}
        )

    @app.get("/", include_in_schema=False)
    def page() -> Response:
        return page_file("")

    @app.get("/studio.js", include_in_schema=False)
    def page_js() -> Response:
        return page_file("studio.js")

    @app.get("/studio.css", include_in_schema=False)
    def page_css() -> Response:
        return page_file("studio.css")

    # the API
    @app.get("/api/options", summary="The settings a request may carry (the CLI's option table), with defaults")
    def options() -> dict[str, Any]:
        return {
            "settings": [option_info(o, config) for o in setting_options()],
            "inputs": [{"key": o.key, "flags": list(o.flags), "help": o.help} for o in input_options()],
            "alpha_max": {"default": 1.0, **ALPHA_MAX},
            "alpha_values": {k: list(v) for k, v in ALPHA_VALUES.items()},
            "presets": list(PRESETS),
            "token_required": token is not None,
        }

    @app.post("/api/uploads", summary="Upload a reference image (PNG, JPEG, WebP) into uploads/")
    async def upload(file: UploadFile) -> dict[str, Any]:
        return await studio.upload(file, limit)

    @app.get("/api/files", summary="Workspace images or sweep reports")
    def files(kind: Literal["images", "reports"] = "images") -> dict[str, list[str]]:
        return {"files": studio.files(kind)}

    @app.get("/files/{path:path}", summary="A workspace file (images, records, reports)")
    def workspace_file(path: str) -> FileResponse:
        return FileResponse(studio.existing(path, "path"))

    queued = {  # path: (Studio method, request model, summary)
        "generate": (studio.generate, GenerateRequest, "Queue one image (PNG + record in outputs/)"),
        "extract": (studio.extract, ExtractRequest, "Queue a VL extraction (fills the cache; file in extractions/)"),
        "inspect": (studio.inspect, InspectRequest, "Queue `llm-dit inspect` of an image and prompt"),
        "sweeps": (studio.sweep, SweepRequest, "Queue a sweep with metrics, grid and report (sweeps/NAME)"),
    }
    for path, (submit, model, summary) in queued.items():
        app.add_api_route(f"/api/{path}", job_route(submit, model), methods=["POST"], status_code=202, summary=summary)

    @app.get("/api/jobs", summary="Every job of this session")
    def jobs() -> list[dict[str, Any]]:
        return [j.as_dict() for j in studio.jobs.values()]

    @app.get("/api/jobs/{job_id}", summary="One job: status, result, error, forward passes")
    def job(job_id: str) -> dict[str, Any]:
        return studio.job(job_id).as_dict()

    @app.get("/api/jobs/{job_id}/events", summary="Server-sent events: queued, running, step, done/failed/cancelled")
    def events(job_id: str) -> StreamingResponse:
        return StreamingResponse(studio.events(studio.job(job_id)), media_type="text/event-stream")

    @app.post("/api/jobs/{job_id}/cancel", summary="Cancel a queued job or stop a running generate job")
    def cancel(job_id: str) -> dict[str, Any]:
        return studio.cancel(job_id).as_dict()

    @app.get("/api/jobs/{job_id}/image", summary="The PNG a generate job made")
    def job_image(job_id: str) -> FileResponse:
        return FileResponse(studio.existing(output_of(studio.job(job_id), "image"), "image"), media_type="image/png")

    @app.get("/api/jobs/{job_id}/record", summary="The record (JSON sidecar) of a generate job's image")
    def job_record(job_id: str) -> FileResponse:
        path = studio.existing(output_of(studio.job(job_id), "record"), "record")
        return FileResponse(path, media_type="application/json")

    @app.get("/api/history", summary="Finished jobs, oldest first (kept in .studio/history.json)")
    def history() -> list[dict[str, Any]]:
        return studio.history

    @app.get("/api/components", summary="Which models are loaded, forward passes so far, the tensor cache")
    def components() -> dict[str, Any]:
        return studio.components()

    @app.post("/api/components/release", summary="Release every loaded model (refused while a job runs)")
    def release() -> dict[str, Any]:
        return studio.release()

    return app


def serve(
    config: Config,
    workspace: str | Path,
    host: str = "127.0.0.1",
    port: int = 7860,
    token: str | None = None,
    say: Callable[[str], None] = print,
) -> None:
    """Run the studio with uvicorn until interrupted (`llm-dit studio`)."""
    import uvicorn

    check_bind(host, token)
    app = create_app(config, workspace, token)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    shown = f"[{host}]" if ":" in host else host
    say(
        f"llm-dit studio on http://{shown}:{port}/{'?token=…' if token else ''} (workspace {Path(workspace).resolve()})"
    )
    server.run()


def job_route(submit: Callable[[Any], Job], model: type[BaseModel]) -> Callable[..., dict[str, Any]]:
    """An endpoint that validates a `model` body and queues its job (`submit`), answering with the job."""

    def route(req: Any) -> dict[str, Any]:
        return submit(req).as_dict()

    route.__annotations__ = {"req": model, "return": dict[str, Any]}
    route.__name__ = submit.__name__
    return route


def output_of(job: Job, what: str) -> str:
    if job.kind != "generate":
        raise UserError(f"job '{job.id}' is a {job.kind} job, not generate")
    if job.status != "done" or not job.result:
        raise Conflict(f"job '{job.id}' is {job.status}: it has no {what}")
    return job.result[what]
