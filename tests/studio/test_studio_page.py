"""The studio page end to end in a real Chromium (Playwright driving Debian's /usr/bin/chromium).

`llm-dit studio --models tiny` runs as a subprocess on a free port (64 px, 2 steps); the test uploads a reference,
generates, moves the alpha slider and sees a new image for which the server reports 0 VL and 0 text forward passes
(a draft), pins two results (their settings diff shows alpha; the server marks both pinned), runs a small sweep from
the page and opens its report.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image
from playwright import sync_api  # the studio extra: `make setup` installs it

TIMEOUT_MS = 240_000


def chromium() -> str:
    path = "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else shutil.which("chromium")
    if not path:
        pytest.fail("the studio page test needs Debian's chromium: run `make browser` to install it")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(zoo, tmp_path_factory):
    """`llm-dit studio --models tiny` on a free port; yields its URL and workspace."""
    workspace = tmp_path_factory.mktemp("studio-page")
    port = free_port()
    cmd = [sys.executable, "-m", "llm_dit", "studio", "--models", "tiny", "--width", "64", "--height", "64",
           "--steps", "2", "--port", str(port), "--workspace", str(workspace)]  # fmt: skip
    log = (workspace.parent / "studio-page.log").open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=os.environ | {"PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}/"
    t0 = time.monotonic()
    while True:
        try:
            urllib.request.urlopen(url + "api/options", timeout=2).read()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() - t0 > 120:
                proc.kill()
                pytest.fail(f"llm-dit studio did not start: {(workspace.parent / 'studio-page.log').read_text()}")
            time.sleep(0.2)
    yield url, workspace
    proc.terminate()
    proc.wait(30)
    log.close()


def test_upload_generate_live_rerender_pin_and_open_a_report(server, tmp_path):
    url, workspace = server
    ref = tmp_path / "reference.png"
    Image.new("RGB", (48, 48), (30, 120, 200)).save(ref)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(url)
            page.wait_for_selector("body[data-ready=true]")

            page.set_input_files("#file", str(ref))
            page.wait_for_selector("#pick option:checked[value^='uploads/']", state="attached")
            page.click("#generate")
            page.wait_for_selector("#result-img[data-job]")
            first = page.get_attribute("#result-img", "data-job")
            assert int(page.get_attribute("#passes", "data-vl")) >= 1  # the first extraction
            page.click("#pin")

            page.fill("[data-key='vl.alpha']", "0.8")  # live re-render after the debounce
            page.wait_for_selector(f"#result-img[data-job]:not([data-job='{first}'])")
            second = page.get_attribute("#result-img", "data-job")
            assert (page.get_attribute("#passes", "data-vl"), page.get_attribute("#passes", "data-text")) == ("0", "0")
            page.click("#pin")
            page.wait_for_selector("#pinned .card:nth-child(2)")  # after the server pinned it
            cards = page.locator("#pinned .card")
            assert cards.count() == 2
            assert cards.nth(0).locator("dt").all_inner_texts() == ["vl.alpha"]  # the settings diff
            assert [c.locator("dd").inner_text() for c in cards.all()] == ["0.3", "0.8"]
            for job in (first, second):  # what the page showed is what the server made
                assert (workspace / "outputs" / f"{job}.png").is_file()
            jobs = {j: json.load(urllib.request.urlopen(f"{url}api/jobs/{j}", timeout=10)) for j in (first, second)}
            assert [jobs[j]["request"].get("draft", False) for j in (first, second)] == [False, True]  # live: a draft
            assert all(jobs[j]["pinned"] for j in (first, second))
            page.wait_for_selector("#history li[data-job]:nth-child(2)")

            page.fill("#sweep-values", "0.3,0.6")
            page.click("#sweep")
            link = page.wait_for_selector("#reports a[data-report]")
            link.click()
            frame = page.frame_locator("#report-frame")
            frame.locator("img").first.wait_for()
            assert "studio-sweep" in page.get_attribute("#report-frame", "src")
            assert not errors, errors
        finally:
            browser.close()
