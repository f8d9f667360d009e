"""The sweep directory: the one module that knows its files and reads or writes them.

```
DIR/
├── .lock            held (`filelock`) while a sweep writes here: a second sweep into DIR fails
├── spec.json        what was asked: the resolved spec, the base config and every run (a resume must match it)
├── results.jsonl    one JSON line per finished run, appended (and fsynced) after its image
├── images/<id>.png  one image per successful run
├── sweep.json       the summary of the last `run_sweep`
├── metrics.json     {run id: {metric: value}}
├── grid.png         contact sheet
└── report.html      the report
```

A line of `results.jsonl` on disk means a complete run: its image was written (atomically) before it. A sweep
killed at any point leaves at most temp files of unfinished atomic writes and a torn last line; `repair` removes
both, and readers skip a torn line. The last record of a run id wins (the runner writes each id once; a merged or
hand-edited file may repeat one). Runs are written as `run.Run.as_record` makes them and read back as typed values
(`run.Run`, `run.RunResult`, `run.read_results`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout
from PIL import Image

from ..core.errors import UserError
from ..core.files import atomic_write_bytes, image_bytes, write_json
from .run import Run, RunResult, read_results


class SweepDir:
    """A sweep directory; its only state is its path. It is path-like (`Path(sweep)`, `SweepDir(sweep)` work), so
    the API takes a `SweepDir` or a path wherever it takes a sweep directory."""

    LOCK = ".lock"
    SPEC = "spec.json"
    RESULTS = "results.jsonl"
    IMAGES = "images"
    SUMMARY = "sweep.json"
    METRICS = "metrics.json"
    GRID = "grid.png"
    REPORT = "report.html"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    def __repr__(self) -> str:
        return f"SweepDir({str(self.path)!r})"

    @classmethod
    def existing(cls, path: str | os.PathLike[str]) -> SweepDir:
        """The sweep directory at `path`; `UserError` if it holds no sweep (no results file)."""
        sweep = cls(path)
        if not (sweep.path / cls.RESULTS).is_file():
            raise UserError(f"not a sweep directory (no {cls.RESULTS}): {sweep.path}")
        return sweep

    @property
    def grid(self) -> Path:
        return self.path / self.GRID

    @property
    def report(self) -> Path:
        return self.path / self.REPORT

    # ------------------------------------------------------------------------------------------- writing

    @contextmanager
    def writing(self, resume: bool = False) -> Iterator[SweepDir]:
        """Hold the directory for one sweep: take the lock (`UserError` when another sweep holds it), refuse a
        directory that already holds a sweep unless `resume`, and `repair` what a killed sweep left."""
        self.path.mkdir(parents=True, exist_ok=True)
        lock = FileLock(self.path / self.LOCK, timeout=0)  # flock on POSIX, msvcrt on Windows; never waits
        try:
            lock.acquire()
        except Timeout:
            raise UserError(f"another sweep is writing to {self.path}") from None
        try:
            if (self.path / self.RESULTS).exists() and not resume:
                raise UserError(f"{self.path} already holds a sweep: finish it with 'resume', or use a new directory")
            self.repair()
            yield self
        finally:
            lock.release()

    def repair(self) -> None:
        """Undo what a killed sweep can leave: temp files of unfinished atomic writes, and a torn last line of the
        results (cut, so appends start on a fresh line). Called under the lock (`writing`)."""
        for tmp in [*self.path.glob(".*.tmp"), *(self.path / self.IMAGES).glob(".*.tmp")]:
            tmp.unlink(missing_ok=True)
        results = self.path / self.RESULTS
        if results.exists() and (data := results.read_bytes()) and not data.endswith(b"\n"):
            atomic_write_bytes(results, data[: data.rfind(b"\n") + 1])

    def check_plan(self, config: dict[str, Any], runs: list[Run]) -> None:
        """Refuse to resume with a plan other than the one in `spec.json` (`UserError` naming the difference: runs
        planned now and not there, or there and not now, and base-config keys whose values differ): a resumed
        sweep must finish the sweep it started, not mix two. A directory without `spec.json` has nothing to
        compare."""
        before = _read_object(self.path / self.SPEC)
        if not before:
            return
        then = {r.id: r for r in self.plan()}
        now = {r.id: r for r in runs}
        problems = []
        if then.keys() != now.keys():

            def names(ids: list[str]) -> str:
                shown = [f"'{(now | then)[i].label}' ({i})" for i in ids[:4]]
                return ", ".join(shown + ([f"{len(ids) - 4} more"] if len(ids) > 4 else [])) or "none"

            new, gone = [i for i in now if i not in then], [i for i in then if i not in now]
            counts = f"{len(now)} planned now, {len(then)} in {self.path}"
            why = _differing_values([now[i] for i in new], [then[i] for i in gone])
            problems.append(f"runs differ: {counts}{why}; new: {names(new)}; gone: {names(gone)}")
        old_config = before.get("config", {})
        differ = [
            f"{section}.{key} ({value!r} now, {old_config[section][key]!r} there)"
            for section, values in json.loads(json.dumps(config, default=str)).items()
            for key, value in values.items()
            if key in old_config.get(section, {}) and old_config[section][key] != value
        ]
        if differ:
            problems.append(f"base config differs: {', '.join(differ[:4])}")
        if problems:
            raise UserError(
                f"cannot resume {self.path} with another plan: {'; '.join(problems)}; use a new directory, or the "
                "command that started it"
            )

    def write_spec(self, spec: dict[str, Any], config: dict[str, Any], runs: list[Run]) -> Path:
        """`spec.json`: the resolved spec, the base config and every run of the sweep."""
        records = [run.as_record() for run in runs]
        return write_json(self.path / self.SPEC, {"spec": spec, "config": config, "runs": records})

    def write_image(self, run_id: str, image: Image.Image) -> str:
        """A run's image, written atomically; returns its path relative to the directory (a result's `output`)."""
        output = f"{self.IMAGES}/{run_id}.png"
        atomic_write_bytes(self.path / output, image_bytes(image))
        return output

    def append_result(self, result: RunResult) -> None:
        """Append one result line with a single write and fsync it: once this returns, the run is on disk."""
        data = (json.dumps(result.as_record(), default=str) + "\n").encode()
        fd = os.open(self.path / self.RESULTS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)

    def write_summary(self, summary: dict[str, Any]) -> Path:
        return write_json(self.path / self.SUMMARY, summary)

    def write_metrics(self, metrics: dict[str, dict[str, float | None]]) -> Path:
        return write_json(self.path / self.METRICS, metrics)

    # ------------------------------------------------------------------------------------------- reading

    def lines(self) -> list[RunResult]:
        """Every result of the results file in file order (repeats included); a torn line (a crash mid-write) is
        skipped, and so is a line that is not a result record (`run.read_results`)."""
        path = self.path / self.RESULTS
        if not path.exists():
            return []
        records = []
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                records.append(record)
        return read_results(records)

    def runs(self) -> list[RunResult]:
        """The finished runs, one per id: the last record of an id wins but keeps the position of its first."""
        runs: dict[str, RunResult] = {}
        for result in self.lines():
            runs[result.id] = result
        return list(runs.values())

    def done(self) -> set[str]:
        """Ids of the runs whose last result is ok: a resumed sweep does not run them again (it retries failed
        ones; their new line wins, `runs`)."""
        return {result.id for result in self.runs() if result.ok}

    def plan(self) -> list[Run]:
        """The planned runs of `spec.json`, in plan order (the order their settings were asked in), each with the
        id it was written with; `[]` before a sweep wrote it. A record that is not a run is skipped."""
        records = _read_object(self.path / self.SPEC).get("runs")
        runs = []
        for record in records if isinstance(records, list) else []:
            if isinstance(record, dict):
                with suppress(ValueError):  # not a run's record
                    runs.append(Run.from_record(record))
        return runs

    def summary(self) -> dict[str, Any]:
        """`sweep.json`; `{}` when absent or unreadable."""
        return _read_object(self.path / self.SUMMARY)

    def metrics(self) -> dict[str, dict[str, float]]:
        """`metrics.json` as `{run id: {metric: value}}`; `{}` when absent or unreadable (metrics are optional)."""
        data = _read_object(self.path / self.METRICS)
        return {str(k): dict(v) for k, v in data.items() if isinstance(v, dict)}


def _read_object(path: Path) -> dict[str, Any]:
    """A JSON object file; `{}` when it is absent, unreadable or not an object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _differing_values(new: list[Run], gone: list[Run]) -> str:
    """What tells new runs from gone ones: the run fields and settings whose values differ between the two sets,
    as ` (image 'a.png' now, 'b.png' there)`; empty when nothing tells them apart at a glance."""

    def values(runs: list[Run], key: str) -> list[str]:
        field = key.removeprefix("settings:")
        got = [r.settings.get(field) if key != field else getattr(r, field) for r in runs]
        return sorted({json.dumps(v, default=str) for v in got})

    keys = ["prompt", "image", "init_image", "steer", "neutral_image", "negative_image"]
    keys += sorted({f"settings:{k}" for r in new + gone for k in r.settings})
    differ = [
        f"{key.removeprefix('settings:')} {', '.join(values(new, key))} now, {', '.join(values(gone, key))} there"
        for key in keys
        if new and gone and values(new, key) != values(gone, key)
    ]
    return f" ({'; '.join(differ[:3])})" if differ else ""
