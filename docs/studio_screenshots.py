"""Take the screenshots of docs/studio.md from the real page: `llm-dit studio --models tiny` in a subprocess, driven
by Playwright in Debian's Chromium (the same setup as tests/studio/test_studio_page.py).

    .venv/bin/python docs/studio_screenshots.py            # writes docs/studio-*.png

The tiny models have random weights, so the images are noise; the page around them is what the shots show.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from importlib import resources
from pathlib import Path

from playwright.sync_api import sync_playwright

DOCS = Path(__file__).resolve().parent
CHROMIUM = "/usr/bin/chromium"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    with tempfile.TemporaryDirectory() as workspace, tempfile.TemporaryDirectory() as cache:
        cmd = [sys.executable, "-m", "llm_dit", "studio", "--models", "tiny", "--width", "128", "--height", "128",
               "--steps", "4", "--port", str(port), "--workspace", workspace]  # fmt: skip
        env = os.environ | {"PYTHONUNBUFFERED": "1", "LLM_DIT_CACHE": cache}  # a fresh session: counts from zero
        server = subprocess.Popen(cmd, env=env)
        try:
            for _ in range(1500):  # the tiny zoo is built into the fresh cache first
                try:
                    urllib.request.urlopen(url + "api/options", timeout=2)
                    break
                except OSError:
                    time.sleep(0.2)
            shoot(url)
        finally:
            server.terminate()
            server.wait(30)


def shoot(url: str) -> None:
    reference = str(resources.files("llm_dit") / "data" / "demo_reference.png")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        page.set_default_timeout(300_000)
        page.goto(url)
        page.wait_for_selector("body[data-ready=true]")
        page.set_input_files("#file", reference)
        page.wait_for_selector("#pick option:checked[value^='uploads/']", state="attached")
        page.click("#generate")
        page.wait_for_selector("#result-img[data-job]")
        page.click("#pin")
        first = page.get_attribute("#result-img", "data-job")
        page.fill("[data-key='vl.alpha']", "0.7")
        page.wait_for_selector(f"#result-img[data-job]:not([data-job='{first}'])")
        page.click("#pin")
        page.click("#show-record")
        page.click("#inspect")
        page.wait_for_selector("#inspector svg")
        page.screenshot(path=str(DOCS / "studio-page.png"), full_page=True)
        page.fill("#sweep-values", "0.3,0.6")
        page.click("#sweep")
        page.wait_for_selector("#reports a[data-report]").click()
        page.frame_locator("#report-frame").locator("img").first.wait_for()
        page.locator("#report-view").screenshot(path=str(DOCS / "studio-report.png"))
        browser.close()
    print(DOCS / "studio-page.png")
    print(DOCS / "studio-report.png")


if __name__ == "__main__":
    main()
