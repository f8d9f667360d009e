"""The ray executor: same runs, same images, same results.jsonl as the local one, on a local Ray instance."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from llm_dit.core.errors import UserError
from llm_dit.sweep.dir import SweepDir
from llm_dit.sweep.distributed import remote_error, worker_count, worker_env

from ..conftest import REPO

try:  # a failure, not a skip: `make setup` installs the ray extra, and CI must run these tests
    import ray
except ImportError as e:
    raise ImportError("the Ray executor tests need Ray: pip install -e '.[dev,ray]' (make setup does)") from e

REF = REPO / "examples" / "reference-images" / "test_scene.png"
TINY = ["--models", "tiny", "--width", "32", "--height", "32", "--steps", "2"]


def results(d: Path) -> list[dict]:
    return SweepDir(d).lines()


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


@pytest.fixture(scope="module")
def ray_instance():
    """One local Ray instance for the module, its processes started without llm-dit's environment: the executor
    must pass `LLM_DIT_CACHE` (and `HF_HUB_OFFLINE`) to its actors itself."""
    assert not ray.is_initialized()
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("LLM_DIT_CACHE")
        mp.delenv("HF_HUB_OFFLINE")
        mp.setenv("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    yield
    ray.shutdown()


def test_worker_env_carries_the_cache_and_offline_settings(monkeypatch):
    monkeypatch.setenv("LLM_DIT_CACHE", "rel/cache")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("UNRELATED_SECRET", "x")
    env = worker_env()
    assert env["LLM_DIT_CACHE"] == str(Path.cwd() / "rel" / "cache")
    assert env["HF_HUB_OFFLINE"] == "1" and "UNRELATED_SECRET" not in env
    monkeypatch.setenv("LLM_DIT_RAY_WORKERS", "3")
    assert worker_count(None) == 3 and worker_count(2) == 2
    for bad, message in (("two", "whole number"), ("0", "at least one")):
        monkeypatch.setenv("LLM_DIT_RAY_WORKERS", bad)
        with pytest.raises(UserError, match=message):
            worker_count(None)
    e = remote_error("BlendError", "unknown option(s) p\nmore")
    assert type(e).__name__ == "BlendError" and str(e) == "unknown option(s) p\nmore"


def test_ray_resume_reruns_lost_lines_and_failed_runs_with_identical_images(cli, zoo, tmp_path, monkeypatch):
    """A local sweep with an ok, a failing (at render time) and an ok variant loses its last line; `--executor ray
    --resume` redoes exactly the lost run and retries the failed one (on a Ray instance it starts and shuts down),
    writing the same image for the lost run."""
    from llm_dit.sweep import runner

    assert not ray.is_initialized()
    out = tmp_path / "r"
    args = ["--blend-modes", "interpolate,slerp", "-i", REF, "-p", "a barn", *TINY]
    real = runner.render_batch

    def render_batch(gen, prepared):
        if prepared[0].config.vl.blend == "slerp":
            raise RuntimeError("simulated render failure")
        return real(gen, prepared)

    with monkeypatch.context() as m:
        m.setattr(runner, "render_batch", render_batch)
        assert cli("sweep", *args, "-o", out).code == 3
    before = results(out)
    assert [x.status for x in before] == ["ok", "ok", "failed"]  # baseline, interpolate, slerp
    old = pixels(out / before[1].output)
    lines = (out / "results.jsonl").read_text().splitlines(keepends=True)
    (out / "results.jsonl").write_text(lines[0] + lines[2])  # the interpolate run's line lost
    (out / before[1].output).unlink()

    r = cli("sweep", *args, "-o", out, "--resume", "--executor", "ray")
    assert r.code == 0, r.err
    assert not ray.is_initialized()  # the instance the executor started is gone
    after = {x.id: x for x in SweepDir(out).runs()}
    assert set(after) == {x.id for x in before} and all(x.status == "ok" for x in after.values())
    assert after[before[0].id] == before[0]
    assert after[before[2].id].record["settings"]["vl.blend"] == "slerp"  # the failed run, retried
    lost = after[before[1].id]
    assert lost.record["settings"] == before[1].record["settings"]
    assert np.abs(pixels(out / lost.output) - old).max() <= 1
    summary = json.loads((out / "sweep.json").read_text())
    assert (summary["executor"], summary["ran_now"], summary["completed"], summary["failed"]) == ("ray", 2, 3, 0)
    assert summary["vl_forward_passes"] == summary["text_forward_passes"] == 0  # the local sweep cached them


def test_two_ray_workers_match_the_local_executor_and_share_one_cache(cli, zoo, tmp_path, monkeypatch, ray_instance):
    """Two actors on a running Ray instance: each unique forward pass runs once (the second actor reads the cache
    the first filled, through `LLM_DIT_CACHE`), and a local sweep afterwards finds everything cached and renders
    the same images."""
    monkeypatch.setenv("LLM_DIT_RAY_WORKERS", "2")
    args = ["--alphas", "0.2,0.5", "-i", REF, "-p", "a ray-traced house", *TINY]
    r = cli("sweep", *args, "-o", tmp_path / "ray", "--executor", "ray")
    assert r.code == 0, r.err
    assert ray.is_initialized()  # a Ray the executor did not start is left running
    monkeypatch.delenv("LLM_DIT_RAY_WORKERS")
    assert cli("sweep", *args, "-o", tmp_path / "local").code == 0

    remote, local = results(tmp_path / "ray"), results(tmp_path / "local")
    ids = [x.id for x in remote]
    assert len(ids) == len(set(ids)) == 3 and set(ids) == {x.id for x in local}
    assert all(x.status == "ok" for x in remote)
    by_id = {x.id: x for x in local}
    for x in remote:
        assert x.record["settings"] == by_id[x.id].record["settings"]
        diff = pixels(tmp_path / "ray" / x.output) - pixels(tmp_path / "local" / by_id[x.id].output)
        assert np.abs(diff).max() <= 1
    on_ray = json.loads((tmp_path / "ray" / "sweep.json").read_text())
    on_local = json.loads((tmp_path / "local" / "sweep.json").read_text())
    assert (on_ray["executor"], on_ray["completed"], on_ray["failed"]) == ("ray", 3, 0)
    # VL: the reference and the image-check probe (noise of the reference's size), each once
    assert (on_ray["vl_forward_passes"], on_ray["text_forward_passes"]) == (2, 1)
    # the actors' cache counts, summed: the three primed passes missed, and every run read its text encoding
    assert on_ray["cache_misses"] == 3 and on_ray["cache_hits"] >= 3
    assert (on_local["vl_forward_passes"], on_local["text_forward_passes"], on_local["cache_misses"]) == (0, 0, 0)
