"""The studio's HTTP API through FastAPI's test client: every endpoint, bad inputs, auth, path traversal, the queue.

One studio on the tiny zoo (64 px, 2 steps) serves the module: its warm components and the session's isolated
tensor cache are what a re-render reuses. Apps without models (auth, upload limits) are built per test: building
one loads nothing.
"""

from __future__ import annotations

import io
import json
import os
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient  # the studio extra: `make setup` installs it
from PIL import Image

from llm_dit.config.options import OPTIONS, command_params
from llm_dit.core.errors import UserError

from ..conftest import tiny_config

PROMPT = "a house by the sea"
LOCAL = "http://127.0.0.1"  # a loopback Host, as a browser on this machine sends it (the app refuses others)


def png(color=(200, 30, 30), size=(48, 48), fmt="PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("workspace")


@pytest.fixture(scope="module")
def client(zoo, workspace):
    from llm_dit.studio.app import create_app

    with TestClient(create_app(tiny_config(zoo), workspace), base_url=LOCAL) as c:
        yield c


@pytest.fixture(scope="module")
def reference(client) -> str:
    r = client.post("/api/uploads", files={"file": ("ref.png", png(), "image/png")})
    assert r.status_code == 200, r.text
    return r.json()["path"]


def wait(client, job_id: str, timeout: float = 300) -> dict:
    t0 = time.monotonic()
    while (job := client.get(f"/api/jobs/{job_id}").json())["status"] in ("queued", "running"):
        assert time.monotonic() - t0 < timeout, job
        time.sleep(0.02)
    return job


def generate(client, image: str | None, **settings) -> dict:
    body = {"prompt": PROMPT, "settings": settings} | ({"image": image} if image else {})
    r = client.post("/api/generate", json=body)
    assert r.status_code == 202, r.text
    return wait(client, r.json()["id"])


def error_of(r) -> str:
    body = r.json()
    assert set(body) == {"error"} and body["error"], body
    return body["error"]


# ---------------------------------------------------------------------------------------- the option table


def test_settings_are_generates_options_by_config_key(client):
    generate_cmd = {p.option.key for p in command_params(("generation", "conditioning"))[0] if p.option.config_key}
    listed = client.get("/api/options").json()["settings"]
    assert [s["key"] for s in listed] == list(dict.fromkeys(k for k in (o.key for o in OPTIONS) if k in generate_cmd))
    alpha = next(s for s in listed if s["key"] == "vl.alpha")
    assert alpha["flags"] == ["--alpha"] and alpha["value"] == 0.3 and alpha["type"] == "number"
    blend = next(s for s in listed if s["key"] == "vl.blend")
    assert "interpolate" in blend["choices"] and blend["group"] == "conditioning"
    steps = next(s for s in listed if s["key"] == "generation.steps")
    assert steps["value"] == 2 and steps["bounds"] == {"ge": 1}
    schema = client.get("/openapi.json").json()["components"]["schemas"]["Settings"]["properties"]
    assert set(schema) == generate_cmd  # the HTTP names are the config keys


# ------------------------------------------------------------------------------------ generate and re-render


def test_rerender_with_another_alpha_blend_or_extracted_layer_runs_no_forward_pass(client, reference, workspace):
    first = generate(client, reference, **{"vl.alpha": 0.3})
    assert first["status"] == "done", first["error"]
    assert first["forward_passes"]["vl"] >= 1 and first["forward_passes"]["text"] >= 1
    layer2 = generate(client, reference, **{"vl.hidden_layer": -2})  # a layer not extracted yet: one VL pass
    assert layer2["status"] == "done" and layer2["forward_passes"]["vl"] >= 1

    images = {first["result"]["image"]}
    for settings in ({"vl.alpha": 0.6}, {"vl.alpha": 0.6, "vl.blend": "interpolate"}, {"vl.hidden_layer": -2}):
        job = generate(client, reference, **settings)
        assert job["status"] == "done", job["error"]
        assert job["forward_passes"] == {"vl": 0, "text": 0}, settings
        record = json.loads((workspace / job["result"]["record"]).read_text())
        for key, value in settings.items():
            assert record["settings"][key] == value  # the record says the new value acted
        images.add(job["result"]["image"])
    pixels = {Image.open(workspace / p).tobytes() for p in images}
    assert len(pixels) == len(images) == 4  # each setting changed the image


def test_a_generate_job_streams_its_steps_and_serves_png_and_record(client, reference, workspace, monkeypatch):
    job = generate(client, reference)
    studio = client.app.state.studio
    waits, wait_for = [], studio.changed.wait_for
    monkeypatch.setattr(studio, "KEEPALIVE_S", 0.05)
    monkeypatch.setattr(studio.changed, "wait_for", lambda *a, **kw: waits.append(wait_for(*a, **kw)) or waits[-1])
    events = client.get(f"/api/jobs/{job['id']}/events")
    assert False not in waits  # the stream of a finished job ends after its last event, no keep-alive wait
    assert events.headers["content-type"].startswith("text/event-stream")
    data = [json.loads(line[6:]) for line in events.text.splitlines() if line.startswith("data: ")]
    assert [e["type"] for e in data] == ["queued", "running", "step", "step", "done"]
    assert [(e["step"], e["total"]) for e in data if e["type"] == "step"] == [(1, 2), (2, 2)]
    image = client.get(f"/api/jobs/{job['id']}/image")
    assert image.headers["content-type"] == "image/png"
    assert image.content == (workspace / job["result"]["image"]).read_bytes()
    assert Image.open(io.BytesIO(image.content)).size == (64, 64)
    record = client.get(f"/api/jobs/{job['id']}/record").json()
    assert record["prompt"] == PROMPT and record["inputs"]["reference_image"]["path"].endswith(reference)
    assert client.get(f"/files/{job['result']['record']}").json() == record
    history = client.get("/api/history").json()
    assert job["id"] in [h["id"] for h in history]
    assert json.loads((workspace / ".studio" / "history.json").read_text()) == history


def until(condition, timeout: float = 30) -> None:
    t0 = time.monotonic()
    while not condition():
        assert time.monotonic() - t0 < timeout
        time.sleep(0.01)


def test_a_draft_is_served_without_fsync_and_pinning_makes_it_durable(client, reference, workspace, fsynced):
    outputs, history_file = workspace.resolve() / "outputs", workspace.resolve() / ".studio" / "history.json"
    r = client.post("/api/generate", json={"prompt": PROMPT, "image": reference, "draft": True})
    draft = wait(client, r.json()["id"])
    assert draft["status"] == "done" and draft["request"]["draft"] and not draft["pinned"]
    png, record = outputs / f"{draft['id']}.png", outputs / f"{draft['id']}.json"
    served = client.get(f"/api/jobs/{draft['id']}/image")
    assert served.status_code == 200 and served.content == png.read_bytes()
    Image.open(io.BytesIO(served.content)).load()  # a complete PNG, with its record
    assert client.get(f"/api/jobs/{draft['id']}/record").json()["prompt"] == PROMPT
    assert not list(outputs.glob(".*.tmp"))
    assert draft["id"] in [h["id"] for h in client.get("/api/history").json()]  # listed, from memory
    # the worker wrote the history of earlier jobs before it ran the draft; the draft fsynced nothing of its own
    assert not {png, record, outputs} & set(fsynced)
    written = history_file.read_text() if history_file.exists() else ""  # none yet if the draft was the first job
    assert draft["id"] not in written  # its history entry waits in memory

    fsynced.clear()
    pinned = client.post(f"/api/jobs/{draft['id']}/pin")
    assert pinned.status_code == 200 and pinned.json()["pinned"]
    assert fsynced == [record, png, outputs, history_file, history_file.parent]  # made durable, history with it
    entry = next(h for h in json.loads(history_file.read_text()) if h["id"] == draft["id"])
    assert entry["pinned"] and entry["result"]["image"] == f"outputs/{draft['id']}.png"
    assert client.get(f"/api/jobs/{draft['id']}").json()["pinned"]
    saved = generate(client, reference)  # the same image, saved: the same pixels and record but for its path
    saved_record = client.get(f"/api/jobs/{saved['id']}/record").json()
    assert Image.open(workspace / saved["result"]["image"]).tobytes() == Image.open(png).tobytes()
    assert json.loads(record.read_text())["settings"] == saved_record["settings"]


def test_a_saved_image_and_a_sweep_are_fsynced_as_before(client, reference, workspace, fsynced):
    root = workspace.resolve()
    saved = generate(client, reference, **{"vl.alpha": 0.45})  # no draft: the API's default
    assert saved["status"] == "done" and not saved["pinned"]
    png, record = (root / saved["result"][k] for k in ("image", "record"))
    assert {png, record, png.parent} <= set(fsynced)  # before the job was done
    assert fsynced.index(record) < fsynced.index(png)  # the record first: an image on disk has its record
    history_file = root / ".studio" / "history.json"
    until(lambda: history_file in fsynced[fsynced.index(png) :])  # with its entry, after its event, as before

    body = {"name": "durable", "prompts": [PROMPT], "images": [reference], "axes": {"vl.alpha": [0.5]}}
    sweep = wait(client, client.post("/api/sweeps", json=body).json()["id"])
    assert sweep["status"] == "done", sweep["error"]
    images = list((root / "sweeps" / "durable").rglob("*.png"))  # the runs' images and the grid
    assert len(images) >= 3 and set(images) <= set(fsynced)
    assert root / "sweeps" / "durable" / "results.jsonl" in fsynced


def test_a_rerender_does_not_decode_its_reference_again(client, reference, workspace, monkeypatch):
    import llm_dit.studio.jobs

    decoded, real = [], llm_dit.studio.jobs.load_image
    monkeypatch.setattr(llm_dit.studio.jobs, "load_image", lambda *a: decoded.append(a[0]) or real(*a))
    assert generate(client, reference, **{"vl.alpha": 0.35})["status"] == "done"
    decoded.clear()
    rerender = generate(client, reference, **{"vl.alpha": 0.55})
    assert rerender["status"] == "done" and rerender["forward_passes"] == {"vl": 0, "text": 0}
    assert decoded == []  # the reference was kept decoded

    studio, changed = client.app.state.studio, workspace / "uploads" / "changing.png"
    Image.new("RGB", (16, 16), (1, 1, 1)).save(changed)
    first = studio.read_image(changed, "image")
    first.paste((9, 9, 9), (0, 0, 16, 16))  # a caller's change is its own copy
    assert studio.read_image(changed, "image").getpixel((0, 0)) == (1, 1, 1)
    Image.new("RGB", (16, 16), (2, 2, 2)).save(changed)
    os.utime(changed, ns=(0, 10**9))  # another modification time: read again
    assert studio.read_image(changed, "image").getpixel((0, 0)) == (2, 2, 2)
    assert decoded.count(changed) == 2


def test_pinning_only_a_finished_generate_job(client, reference):
    extract = wait(client, client.post("/api/extract", json={"image": reference}).json()["id"])
    r = client.post(f"/api/jobs/{extract['id']}/pin")
    assert r.status_code == 400 and "only a generate job" in error_of(r)
    r = client.post("/api/jobs/no-such-job/pin")
    assert r.status_code == 404


def test_the_history_of_drafts_is_written_when_the_studio_closes(zoo, tmp_path):
    from llm_dit.studio.app import create_app

    history_file = tmp_path / ".studio" / "history.json"
    with TestClient(create_app(tiny_config(zoo), tmp_path), base_url=LOCAL) as c:
        r = c.post("/api/generate", json={"prompt": PROMPT, "draft": True})
        draft = wait(c, r.json()["id"])
        assert draft["status"] == "done"
        assert not history_file.exists()  # a draft alone writes no history
    assert [h["id"] for h in json.loads(history_file.read_text())] == [draft["id"]]  # closing wrote it


def test_two_concurrent_generate_requests_queue_and_both_complete(client, reference, workspace):
    ids: list[str] = []
    barrier = threading.Barrier(2)

    def post(alpha: float) -> None:
        barrier.wait()
        ids.append(client.post("/api/generate", json={"prompt": PROMPT, "image": reference,
                                                       "settings": {"vl.alpha": alpha}}).json()["id"])  # fmt: skip

    threads = [threading.Thread(target=post, args=(a,)) for a in (0.2, 0.4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    jobs = sorted((wait(client, i) for i in ids), key=lambda j: j["started"])
    assert [j["status"] for j in jobs] == ["done", "done"]
    assert jobs[0]["ended"] <= jobs[1]["started"]  # one at a time
    for j in jobs:
        record = json.loads((workspace / j["result"]["record"]).read_text())
        assert record["settings"]["vl.alpha"] == j["request"]["settings"]["vl.alpha"]
        Image.open(workspace / j["result"]["image"]).load()  # complete PNGs
    assert not list((workspace / "outputs").glob(".*.tmp"))


def test_cancel_a_queued_and_a_running_job(client, reference, workspace, monkeypatch):
    studio = client.app.state.studio
    first_step, cancelled = threading.Event(), threading.Event()
    step = studio.step

    def held_after_the_first_step(job):  # the job waits after step 1 until the test has cancelled it
        report = step(job)

        def on_step(done: int, total: int) -> None:
            if done == 1:
                first_step.set()
                cancelled.wait(30)
            report(done, total)

        return on_step

    monkeypatch.setattr(studio, "step", held_after_the_first_step)
    slow = {"prompt": PROMPT, "image": reference, "settings": {"generation.steps": 4}}
    running = client.post("/api/generate", json=slow).json()["id"]
    queued = client.post("/api/generate", json=slow).json()["id"]
    assert client.post(f"/api/jobs/{queued}/cancel").json()["status"] == "cancelled"
    assert first_step.wait(120)
    assert client.post(f"/api/jobs/{running}/cancel").status_code == 200
    cancelled.set()
    stopped = wait(client, running)
    assert stopped["status"] == "cancelled" and stopped["progress"] == {"step": 1, "total": 4}
    assert wait(client, queued)["started"] is None  # never ran
    assert not (workspace / "outputs" / f"{running}.png").exists()
    assert not (workspace / "outputs" / f"{queued}.png").exists()
    r = client.post(f"/api/jobs/{queued}/cancel")
    assert r.status_code == 409 and "already cancelled" in error_of(r)


def test_extract_inspect_and_release(client, reference, workspace):
    body = {"image": reference, "text": PROMPT}
    ext = [client.post("/api/extract", json=body).json() for _ in range(2)]
    ins = client.post("/api/inspect", json={"image": reference, "prompt": PROMPT, "layers": [-2, -6]}).json()
    ext, ins = [wait(client, e["id"]) for e in ext], wait(client, ins["id"])
    assert all(e["status"] == "done" and (workspace / e["result"]["output"]).is_file() for e in ext)
    assert ext[1]["result"]["cache"] == "hit" and ext[1]["forward_passes"]["vl"] == 0  # the first filled the cache
    assert ins["status"] == "done" and set(ins["result"]["layers"]) == {"-2", "-6"}
    assert ins["result"]["layers"]["-6"]["image_influence"] > 0
    assert client.get("/api/components").json()["loaded"]
    released = client.post("/api/components/release").json()
    assert released["loaded"] == [] and released["forward_passes"]["vl"] > 0  # counts survive the release


def test_low_memory_staging_holds_in_the_studio(zoo, tmp_path):
    from llm_dit.studio.app import create_app

    with TestClient(create_app(tiny_config(zoo, **{"models.low_memory": True}), tmp_path), base_url=LOCAL) as c:
        ref = c.post("/api/uploads", files={"file": ("r.png", png((5, 90, 5)), "image/png")}).json()["path"]
        job = generate(c, ref, **{"generation.seed": 7})  # a new reference: both encoders run, then the DiT
        components = c.get("/api/components").json()
    assert job["status"] == "done" and job["forward_passes"]["vl"] >= 1
    assert components["low_memory"] and components["loaded"] == ["pipeline"]  # encoders released before the DiT


def test_sweep_launch_writes_a_report_the_browser_lists(client, reference, workspace):
    body = {"name": "alpha", "prompts": [PROMPT], "images": [reference], "axes": {"vl.alpha": [0.3, 0.6]}}
    job = wait(client, client.post("/api/sweeps", json=body).json()["id"])
    assert job["status"] == "done", job["error"]
    assert job["result"]["summary"]["completed"] == 3  # two alphas and the baseline
    assert job["result"]["report"] in client.get("/api/files", params={"kind": "reports"}).json()["files"]
    assert "<html" in client.get(f"/files/{job['result']['report']}").text.lower()
    again = client.post("/api/sweeps", json=body)
    assert again.status_code == 409 and "exists" in error_of(again) and "'resume'" in error_of(again)
    resumed = wait(client, client.post("/api/sweeps", json=body | {"resume": True}).json()["id"])
    assert resumed["status"] == "done", resumed["error"]
    assert resumed["result"]["summary"]["ran_now"] == 0 and resumed["result"]["summary"]["completed"] == 3
    other = client.post("/api/sweeps", json=body | {"resume": True, "axes": {"vl.alpha": [0.3, 0.9]}})
    assert other.status_code == 400 and "runs differ" in error_of(other)
    negative = body | {"name": "neg", "negative_image": reference, "settings": {"generation.guidance": 2.0}}
    job = wait(client, client.post("/api/sweeps", json=negative).json()["id"])
    assert job["status"] == "done", job["error"]
    lines = [json.loads(x) for x in (workspace / "sweeps/neg/results.jsonl").read_text().splitlines()]
    assert {x.get("negative_image") for x in lines if x["kind"] == "variant"} == {str(workspace / reference)}
    off = client.post("/api/sweeps", json=negative | {"name": "off", "settings": {}})
    assert off.status_code == 400 and "guidance" in error_of(off)
    missing = client.post("/api/sweeps", json=body | {"name": "m", "negative_image": "nope.png"})
    assert missing.status_code == 404 and "'negative_image'" in error_of(missing)
    bad = client.post("/api/sweeps", json=body | {"name": "b", "axes": {"vl.sink_ratio": [2.0]}})
    assert bad.status_code == 400 and "vl.sink_ratio" in error_of(bad)


def test_a_studio_sweep_runs_on_the_warm_models(zoo, tmp_path, monkeypatch):
    """After a generate has loaded everything, a sweep launched from the studio loads no model again: the DiT
    pipeline is loaded once, and the sweep's prompt and reference come from the warm components' cache."""
    import llm_dit.generation.components
    from llm_dit.studio.app import create_app

    loads = []
    real = llm_dit.generation.components.load_pipeline
    monkeypatch.setattr(
        llm_dit.generation.components, "load_pipeline", lambda *a, **k: loads.append(a) or real(*a, **k)
    )
    with TestClient(create_app(tiny_config(zoo), tmp_path), base_url=LOCAL) as c:
        ref = c.post("/api/uploads", files={"file": ("r.png", png((90, 5, 5)), "image/png")}).json()["path"]
        assert generate(c, ref)["status"] == "done"
        body = {"name": "warm", "prompts": [PROMPT], "images": [ref], "axes": {"vl.alpha": [0.3, 0.6]}}
        job = wait(c, c.post("/api/sweeps", json=body).json()["id"])
        assert job["status"] == "done", job["error"]
        summary = job["result"]["summary"]
        assert summary["completed"] == 3 and summary["vl_forward_passes"] == summary["text_forward_passes"] == 0
        assert len(loads) == 1 and c.get("/api/components").json()["loaded"]


# ---------------------------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ({"settings": {"vl.nope": 1}}, 422, "vl.nope"),
        ({"settings": {"vl.alpha": "strong"}}, 422, "vl.alpha"),
        ({"settings": {"vl.blend": "median"}}, 422, "'settings.vl.blend': Input should be 'interpolate'"),
        ({"settings": {"generation.width": 70}}, 400, "'generation.width'"),
        ({"prompt": ""}, 422, "prompt"),
        ({"image": "missing.png"}, 404, "'image' not found"),
        ({"vl_rows": "x"}, 422, "vl_rows"),
    ],
)
def test_bad_generate_requests_get_one_clear_error(client, body, status, says):
    r = client.post("/api/generate", json={"prompt": PROMPT} | body)
    assert r.status_code == status
    assert says in error_of(r)


def test_unknown_jobs_and_routes_are_json_errors(client):
    assert error_of(client.get("/api/jobs/nope")) == "no job 'nope'"
    assert client.get("/api/nothing").status_code == 404 and error_of(client.get("/api/nothing"))
    sweep_job = next(j for j in client.get("/api/jobs").json() if j["kind"] != "generate")
    r = client.get(f"/api/jobs/{sweep_job['id']}/image")
    assert r.status_code == 400 and "not generate" in error_of(r)


@pytest.mark.parametrize(
    "path",
    ["../outside.png", "/etc/passwd", "a/../../outside.png", "..\\outside.png", "C:/x.png", "link/outside.png"],
)
def test_paths_outside_the_workspace_are_refused(client, workspace, path):
    outside = workspace.parent / "outside.png"
    outside.write_bytes(png())
    (workspace / "link").mkdir(exist_ok=True)
    if not (workspace / "link" / "outside.png").is_symlink():
        (workspace / "link" / "outside.png").symlink_to(outside)
    r = client.post("/api/generate", json={"prompt": PROMPT, "image": path})
    assert r.status_code == 403, r.text
    assert "workspace" in error_of(r)


@pytest.mark.parametrize("url", ["/files/%2e%2e/outside.png", "/files/..%2foutside.png", "/files/link/outside.png",
                                 "/files/%2fetc%2fpasswd", "/files/link%2f..%2f..%2foutside.png"])  # fmt: skip
def test_file_urls_outside_the_workspace_are_refused(client, workspace, url):
    (workspace.parent / "outside.png").write_bytes(png())
    (workspace / "link").mkdir(exist_ok=True)
    if not (workspace / "link" / "outside.png").is_symlink():
        (workspace / "link" / "outside.png").symlink_to(workspace.parent / "outside.png")
    r = client.get(url)
    assert r.status_code in (403, 404) and r.content != png()
    assert error_of(r)


def test_setting_paths_must_be_workspace_files(client, reference):
    r = client.post("/api/generate", json={"prompt": PROMPT, "settings": {"vl.adapter": "../a.safetensors"}})
    assert r.status_code == 403 and "'vl.adapter'" in error_of(r)
    sweep = {"name": "adapters", "prompts": [PROMPT], "images": [reference]}
    r = client.post("/api/sweeps", json=sweep | {"axes": {"vl.adapter": [None, "/etc/passwd"]}})
    assert r.status_code == 403 and "'axes.vl.adapter'" in error_of(r)
    r = client.post("/api/sweeps", json=sweep | {"settings": {"vl.reference_stats": "../s.safetensors"}})
    assert r.status_code == 403 and "'vl.reference_stats'" in error_of(r)


def test_lora_paths_are_workspace_files(client, workspace, zoo, tmp_path, monkeypatch):
    """Before: `generation.loras` took any path (absolute, `..`) and resolved a relative one against the studio's
    working directory, not the workspace. Now each LoRA item is a workspace file like every other path setting."""
    from diffusers import ZImageTransformer2DModel

    from ..checkpoints import lora_state, write_peft_lora

    state = lora_state(ZImageTransformer2DModel.from_pretrained(zoo / "zimage", subfolder="transformer"))
    (workspace / "loras").mkdir(exist_ok=True)
    (tmp_path / "loras").mkdir()
    inside = write_peft_lora(state, workspace / "loras" / "in.safetensors")
    outside = write_peft_lora(state, tmp_path / "loras" / "out.safetensors")
    monkeypatch.chdir(tmp_path)  # the working directory holds loras/out.safetensors; the workspace does not
    for item in (str(outside), f"{outside}:0.5", "../loras/out.safetensors", f"loras/{'../' * 3}x.safetensors"):
        r = client.post("/api/generate", json={"prompt": PROMPT, "settings": {"generation.loras": [item]}})
        assert r.status_code == 403 and "'generation.loras'" in error_of(r) and "workspace" in error_of(r), item
    cwd_only = {"generation.loras": ["loras/out.safetensors"]}  # a file of the working directory, not the workspace
    r = client.post("/api/generate", json={"prompt": PROMPT, "settings": cwd_only})
    assert r.status_code == 404 and "'generation.loras' not found in the workspace" in error_of(r)
    sweep = {"name": "loras", "prompts": [PROMPT]}
    r = client.post("/api/sweeps", json=sweep | {"axes": {"generation.loras": [[], [f"{outside}:0.5"]]}})
    assert r.status_code == 403 and "'axes.generation.loras'" in error_of(r)

    job = generate(client, None, **{"generation.loras": ["loras/in.safetensors:0.5"]})
    assert job["status"] == "done", job["error"]
    record = json.loads((workspace / job["result"]["record"]).read_text())
    assert [(x["path"], x["scale"]) for x in record["models"]["loras"]] == [(str(inside), 0.5)]


# ------------------------------------------------------------------------------------------------- uploads


def bomb() -> bytes:
    buf = io.BytesIO()
    Image.new("1", (9000, 9000)).save(buf, "PNG")  # 81 M pixels in a few kB
    return buf.getvalue()


@pytest.mark.parametrize(
    ("data", "status", "says"),
    [
        (b"not an image", 400, "not an image file: x.png"),
        (png()[:60], 400, "truncated or corrupt"),
        (b"", 400, "empty"),
        (png(fmt="GIF"), 400, "send PNG, JPEG or WebP"),
        (bomb(), 400, "too large"),
        (png(size=(800, 800)) + b"\0" * 300_000, 413, "larger than"),
    ],
)
def test_bad_uploads_are_refused_and_leave_nothing(zoo, tmp_path, data, status, says):
    from llm_dit.studio.app import create_app

    with TestClient(create_app(tiny_config(zoo), tmp_path, max_upload_mb=0.25), base_url=LOCAL) as c:
        r = c.post("/api/uploads", files={"file": ("x.png", data, "image/png")})
    assert r.status_code == status and says in error_of(r)
    assert not list((tmp_path / "uploads").glob("*"))  # nor a temp file


def test_an_upload_is_stored_by_content_hash(zoo, tmp_path):
    from llm_dit.studio.app import create_app

    with TestClient(create_app(tiny_config(zoo), tmp_path), base_url=LOCAL) as c:
        a = c.post("/api/uploads", files={"file": ("a.jpg", png(fmt="JPEG"), "image/jpeg")}).json()
        b = c.post("/api/uploads", files={"file": ("b.jpg", png(fmt="JPEG"), "image/jpeg")}).json()
        listed = c.get("/api/files").json()["files"]
    assert a == b and a["path"].startswith("uploads/") and a["path"].endswith(".jpg")
    assert listed == [a["path"]]


# ---------------------------------------------------------------------------------------------------- auth


def test_a_token_is_required_on_every_request(zoo, tmp_path):
    from llm_dit.studio.app import create_app

    with TestClient(create_app(tiny_config(zoo), tmp_path, token="s3cret"), base_url=LOCAL) as c:
        for url in ("/", "/api/options", "/openapi.json", "/api/jobs", "/files/x.png"):
            r = c.get(url)
            assert r.status_code == 401 and error_of(r) == "missing or wrong token", url
        assert c.get("/api/options", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/api/options", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/api/options", headers={"X-Token": "s3cret"}).status_code == 200
        page = c.get("/?token=s3cret")
        assert page.status_code == 200 and "llm_dit_token" in page.headers["set-cookie"]
        assert c.get("/api/options").status_code == 200  # the page's own requests carry the cookie
        c.cookies.clear()
        assert c.get("/api/options").status_code == 401


def test_without_a_token_only_loopback_host_names_are_served(zoo, tmp_path):
    """DNS rebinding: a page on evil.example whose name now resolves to 127.0.0.1 sends `Host: evil.example`. Without
    a token that is refused (400); loopback names pass; with a token (which the page cannot know) any name may."""
    from llm_dit.studio.app import create_app

    with TestClient(create_app(tiny_config(zoo), tmp_path), base_url=LOCAL) as c:
        for host in ("127.0.0.1:7860", "localhost:7860", "[::1]:7860", "localhost"):
            assert c.get("/api/options", headers={"Host": host}).status_code == 200, host
        for host in ("evil.example:7860", "evil.example", "127.0.0.1.evil.example"):
            r = c.get("/api/options", headers={"Host": host})
            assert r.status_code == 400 and "host" in r.text.lower(), host
    with TestClient(create_app(tiny_config(zoo), tmp_path, token="t"), base_url="http://studio.lan") as c:
        assert c.get("/api/options", headers={"X-Token": "t"}).status_code == 200


def test_binding_beyond_the_loopback_needs_a_token(cli):
    from llm_dit.studio.app import check_bind

    check_bind("127.0.0.1", None)
    check_bind("0.0.0.0", "t")
    with pytest.raises(UserError, match="give it a token"):
        check_bind("0.0.0.0", None)
    r = cli("studio", "--host", "0.0.0.0", "--models", "tiny")
    assert r.code == 2 and "give it a token" in r.err and not r.out
