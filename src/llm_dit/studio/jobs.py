"""The studio's worker: the warm generator, the workspace (every path a client names stays inside it) and the one
thread that runs model jobs in order; and the studio's errors, each an HTTP status (`app.STATUS`).

Durability: every output is written atomically (a reader never sees a half file). A draft (a generate request with
`draft`: the page's live re-render) is not fsynced, so it is shown without waiting for the disk, and its history
entry is kept in memory until the next durable history write; pinning it (`Studio.pin`) fsyncs its PNG, record and
the history. Everything else is durable as before: saved images (generate without `draft`), extractions and sweeps
are fsynced before their job is done, the history after each of their jobs. A crash can lose only unpinned drafts:
their files, and their history entries unless a later job wrote the history.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import queue
import tempfile
import threading
import time
import traceback
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from fastapi import UploadFile
from PIL import Image
from pydantic import BaseModel

from ..config.options import OPTIONS
from ..config.settings import Config, with_overrides
from ..core.cache import TensorCache
from ..core.errors import UserError
from ..core.files import load_image, make_durable, write_json
from ..core.modes import parse_lora
from ..experiment.run import checked_plan, run_experiment
from ..generation.generate import Generator
from ..generation.tasks import IMAGE_SUFFIXES, extract_file, generate_file, inspect_image
from ..sweep.dir import SweepDir
from ..sweep.runner import RunOptions, Session
from ..sweep.spec import SweepSpec, resolve_spec
from .requests import (
    LORAS,
    ExtractRequest,
    GenerateRequest,
    InspectRequest,
    SweepRequest,
    given_settings,
    input_options,
    setting_options,
)

UPLOAD_FORMATS = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp"}


class Refused(UserError):
    """A request for something the studio never does (a path outside the workspace): HTTP 403."""


class NotFound(UserError):
    """No such job or file: HTTP 404."""


class Conflict(UserError):
    """The request conflicts with the state (a busy worker, a finished job, an existing sweep): HTTP 409."""


class UploadTooLarge(UserError):
    """An upload over the studio's limit (`max_upload_mb`): HTTP 413."""


class Cancelled(Exception):
    """Raised inside a running job when its cancel was asked for."""


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
    pinned: bool = False  # a generate job's image the client pinned: made durable (`Studio.pin`)

    @property
    def finished(self) -> bool:
        return self.status in ("done", "failed", "cancelled")

    @property
    def draft(self) -> bool:
        """A generate job asked for as a draft: its files are not fsynced unless it is pinned."""
        return self.kind == "generate" and bool(self.request.get("draft"))

    def as_dict(self) -> dict[str, Any]:
        keys = ("id", "kind", "status", "created", "started", "ended", "seconds", "request", "result", "error")
        keys += ("warnings", "progress", "pinned")
        return {k: getattr(self, k) for k in keys} | {"forward_passes": self.forward_passes}


class Studio:
    """The warm generator, the workspace and the one worker thread that runs jobs in order."""

    KEEPALIVE_S = 15.0  # an event stream with nothing new sends a comment this often
    IMAGES_KEPT_MB = 256  # decoded input images kept for re-renders (`read_image`), the oldest dropped first

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
        self._history_unsaved = False  # entries of drafts not yet in the history file
        self._images: OrderedDict[tuple, Image.Image] = OrderedDict()  # (path, stat) -> decoded, worker thread only
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

    def read_image(self, path: str | Path, label: str) -> Image.Image:
        """`files.load_image` of a workspace file, kept decoded (`IMAGES_KEPT_MB`) while the file is unchanged (same
        size, modification time and inode), so a re-render does not decode its reference again; each call gets a
        copy, so a caller cannot change what the next one reads. Called on the worker thread only."""
        try:
            stat = os.stat(path)
        except OSError:  # gone since the request was checked: load_image says so
            return load_image(path, label)
        key = (str(path), stat.st_size, stat.st_mtime_ns, stat.st_ino)
        if key in self._images:
            self._images.move_to_end(key)
            return self._images[key].copy()
        image = load_image(path, label)
        self._images[key] = image.copy()
        kept = sum(len(im.getbands()) * im.width * im.height for im in self._images.values())
        while kept > self.IMAGES_KEPT_MB * 2**20:  # drops the new image too when it is over the budget alone
            _, old = self._images.popitem(last=False)
            kept -= len(old.getbands()) * old.width * old.height
        return image

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
        """Stop the worker after the job it runs (queued jobs are dropped); write the history of drafts."""
        self._queue.put(None)
        self._worker.join(timeout=60)
        with self._history_lock:
            if self._history_unsaved:
                self._write_history()

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
        """Add a finished job to the history, and write the history file (atomically, fsynced, one writer at a
        time) unless the job is a draft: a draft's entry waits in memory for the next write (another job, a pin,
        `close`), so a draft costs no fsync; a crash loses it with the draft."""
        with self._history_lock:  # a pin may come between the job's end and this: its entry is then durable
            entry = job.as_dict()
            if job.kind == "inspect" and entry["result"]:  # a report is large: the job keeps it
                entry["result"] = {"layers": list(entry["result"].get("layers", {}))}
            self.history.append(entry)
            if job.draft and not job.pinned:
                self._history_unsaved = True
            else:
                self._write_history()

    def _write_history(self) -> None:
        """Rewrite the history file, durably (call with `self._history_lock` held)."""
        write_json(self.history_file, self.history)
        self._history_unsaved = False

    def pin(self, job_id: str) -> Job:
        """Pin a generate job's image: fsync its PNG and record (a draft was written without) and write the history
        with it, so the image and its entry survive a crash. Pinning an image again, or one that was durable
        already, only marks it pinned."""
        job = self.job(job_id)
        if job.kind != "generate":
            raise UserError(f"job '{job.id}' is a {job.kind} job: only a generate job's image can be pinned")
        if job.status != "done" or not job.result:
            raise Conflict(f"job '{job.id}' is {job.status}: it has no image to pin")
        image = self.existing(job.result["image"], "image")
        make_durable(self.existing(job.result["record"], "record"), image)
        with self._history_lock:
            job.pinned = True
            for entry in self.history:
                if entry["id"] == job.id:
                    entry["pinned"] = True
            self._write_history()
        return job

    def events(self, job: Job) -> Iterator[str]:
        """The job's events as server-sent events, from the first, until it is finished."""
        sent = 0
        while True:
            with self.changed:
                self.changed.wait_for(lambda n=sent: len(job.events) > n, timeout=self.KEEPALIVE_S)
                new, done = job.events[sent:], job.finished
                sent += len(new)
            if new:  # every pending event in one chunk: one hop through the server's thread pool, not one each
                yield "".join(f"event: {e['type']}\ndata: {json.dumps(e, default=str)}\n\n" for e in new)
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
            step, durable = self.step(job), not req.draft  # a draft is fsynced when pinned (`pin`)
            generate_file(cfg, req.prompt, out, **paths, generator=self.generator, on_step=step, durable=durable,
                          read_image=self.read_image)  # fmt: skip
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


def settings_of(record: dict[str, Any]) -> dict[str, Any]:
    """The settings a record says acted (`settings`), for the page's settings diff."""
    return record.get("settings") or {}
