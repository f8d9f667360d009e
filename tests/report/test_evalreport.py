"""An eval's report.html: the Pareto chart's points and the alpha curves are pure functions of eval.json (tested on
planted numbers and against a real tiny eval), the page is written by `llm-dit eval` and by `llm-dit report
EVAL_DIR`, and it renders in headless Chromium with its plots and images decoded, fitting 1400 px, offline."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from llm_dit.eval.run import load_eval
from llm_dit.report.eval_report import REPORT, alpha_curves, pareto_points

from ..conftest import run_main
from ..eval.test_eval import TINY
from .test_report import page_requests, run_chromium

pytestmark = pytest.mark.usefixtures("one_thread")


def est(mean: float, half: float = 0.01, n: int = 4) -> dict[str, float]:
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": n, "level": 0.95}


def planted(methods: list[tuple[str, str, dict, dict]], primary=("csd", "clip_t"), alpha=0.5) -> dict:
    """eval.json-shaped data: (name, kind, settings, {metric: mean})."""
    return {
        "primary": {"style": primary[0], "adherence": primary[1]},
        "methods": [{"name": n, "kind": k, "settings": s, "steer": None} for n, k, s, _ in methods],
        "stats": {n: {"metrics": {m: est(v) for m, v in vals.items()}} for n, _, _, vals in methods},
        "config": {"vl": {"alpha": alpha}},
    }


def test_pareto_points_are_each_methods_means_and_cis_and_mark_the_front():
    data = planted(
        [
            ("text", "text", {}, {"clip_t": 0.30, "csd": 0.40}),
            ("caption", "caption", {}, {"clip_t": 0.28, "csd": 0.50}),
            ("vl a", "vl", {}, {"clip_t": 0.25, "csd": 0.45}),  # dominated by caption
            ("vl b", "vl", {}, {"clip_t": 0.20, "csd": 0.60}),
            ("vl c", "vl", {}, {"clip_t": 0.20, "csd": 0.60}),  # equal to vl b: neither dominates the other
            ("no csd", "img2img", {}, {"clip_t": 0.99}),  # not on the chart: no style value
        ]
    )
    points = pareto_points(data)
    assert [p.method for p in points] == ["text", "caption", "vl a", "vl b", "vl c"]
    assert {p.method for p in points if p.optimal} == {"text", "caption", "vl b", "vl c"}
    cap = points[1]
    assert (cap.x, cap.x_low, cap.x_high, cap.y, cap.y_low, cap.y_high, cap.n) == pytest.approx(
        (0.28, 0.27, 0.29, 0.50, 0.49, 0.51, 4)
    )
    assert pareto_points(planted([("text", "text", {}, {"clip_t": 0.3})], primary=(None, "clip_t"))) == []


def test_alpha_curves_join_vl_methods_that_differ_only_in_alpha():
    data = planted(
        [
            ("text", "text", {}, {"csd": 0.1}),
            ("vl alpha=0.8", "vl", {"vl.alpha": 0.8}, {"csd": 0.8, "clip_t": 0.2}),
            ("vl", "vl", {}, {"csd": 0.5, "clip_t": 0.25}),  # the config's alpha, 0.5
            ("vl alpha=0.2", "vl", {"vl.alpha": 0.2}, {"csd": 0.2}),  # no clip_t: that metric gets no curve
            ("vl alpha=0.2 blend=adain", "vl", {"vl.alpha": 0.2, "vl.blend": "adain"}, {"csd": 0.3}),  # alone
        ]
    )
    [curve] = alpha_curves(data)
    assert curve.metric == "csd" and curve.fixed == {}
    assert curve.alphas == [0.2, 0.5, 0.8] and curve.methods == ["vl alpha=0.2", "vl", "vl alpha=0.8"]
    assert curve.mean == pytest.approx([0.2, 0.5, 0.8]) and curve.low == pytest.approx([0.19, 0.49, 0.79])


@pytest.fixture(scope="module")
def eval_dir(tmp_path_factory, zoo):
    """A tiny eval with two VL alphas: text, caption, vl alpha=0.3, vl alpha=0.6 on 1 reference x 2 prompts."""
    out = tmp_path_factory.mktemp("evalreport") / "e"
    args = ["eval", "--suite", "builtin", "--references", "1", "--prompts", "2", *TINY]
    args += ["--method", "vl:alpha=0.3,0.6", "-o", str(out)]
    assert run_main(*args) == 0
    return out


def test_eval_writes_the_report_with_the_points_of_its_eval_json(eval_dir):
    data = load_eval(eval_dir).data
    html = (eval_dir / REPORT).read_text()
    points = pareto_points(data)
    assert [p.method for p in points] == ["text", "caption", "vl alpha=0.3", "vl alpha=0.6"]
    for p in points:
        metrics = data["stats"][p.method]["metrics"]
        assert (p.x, p.y) == (metrics["clip_t"]["mean"], metrics["csd"]["mean"]) and p.n == 2
        row = re.search(rf'<tr data-method="{re.escape(p.method)}" data-pareto="(\w+)"><td>[^<]*</td>\s*'
                        r'<td class="num">([-\d.]+) ', html)  # fmt: skip
        assert row and row.group(1) == str(p.optimal).lower() and float(row.group(2)) == pytest.approx(p.x, abs=1e-4)
    assert any(p.optimal for p in points)
    assert {c.metric for c in alpha_curves(data)} >= {"csd", "clip_t", "dino_leak"}
    assert html.count('class="strip"') == 2 and html.count("data:image/png;base64,") >= 2
    for name, v in data["verdicts"].items():
        assert f'data-method="{name}" data-better="{str(v["better"]).lower()}"' in html
    assert f"&minus;{data['settings']['tolerance']}" in html and data["models"]["vl"] in html


def test_report_command_rewrites_an_eval_directorys_report(cli, eval_dir):
    report = eval_dir / REPORT
    before = report.read_text()
    report.unlink()
    r = cli("report", eval_dir)
    assert r.code == 0, r.err
    assert Path(r.out.strip()) == report and report.read_text() == before


PROBE = """<script>window.addEventListener('load', () => {
  const box = e => { const r = e.getBoundingClientRect(); return [r.width, r.height]; };
  const imgs = [...document.images].map(i => ({alt: i.alt, natural: i.naturalWidth, complete: i.complete,
    size: box(i)}));
  const tables = [...document.querySelectorAll('table')].map(t => t.getBoundingClientRect().right);
  document.body.setAttribute('data-probe', JSON.stringify({imgs, tables, view: document.documentElement.clientWidth,
    page: document.documentElement.scrollWidth,
    pareto: box(document.querySelector('#pareto-plot')),
    alpha: [...document.querySelectorAll('img.alpha-plot')].map(box)}));
});</script></body>"""


def test_report_renders_in_headless_chromium_with_its_plots_offline_and_fits_1400_px(eval_dir, tmp_path):
    report = eval_dir / REPORT
    probe = eval_dir / "probe.html"
    probe.write_text(report.read_text().replace("</body>", PROBE))
    netlog = tmp_path / "netlog.json"
    proc = run_chromium(tmp_path, "--window-size=1400,1000", "--virtual-time-budget=10000", f"--log-net-log={netlog}",
                        "--dump-dom", probe.as_uri())  # fmt: skip
    found = re.search(r'data-probe="([^"]+)"', proc.stdout)
    assert found, f"no measurement; chromium said: {proc.stderr[-2000:]}"
    m = json.loads(found.group(1).replace("&quot;", '"'))
    assert m["pareto"][0] > 200 and m["pareto"][1] > 150, m["pareto"]  # the Pareto chart is shown
    assert len(m["alpha"]) == 1 and all(w > 200 and h > 100 for w, h in m["alpha"])
    # every image (plots, reference and run thumbnails) decoded: 2 plots + 2 strips of reference + 4 methods
    assert len(m["imgs"]) == 2 + 2 * 5
    assert all(i["complete"] and i["natural"] > 0 and i["size"][0] > 0 for i in m["imgs"]), m["imgs"]
    assert m["view"] > 1300 and m["page"] <= m["view"] and max(m["tables"]) <= m["view"], m
    assert page_requests(netlog) == []
