"""The benchmark runs end to end on the tiny zoo and reports every figure; no timing is asserted (timings belong
in BENCHMARKS.md, not in tests)."""

import json

FIGURES = (
    "pipeline_overhead_vs_diffusers",
    "extraction_early_exit_speedup",
    "sweep_speedup_vs_naive",
    "sweep_vs_floor",
    "eval_vs_floor",
    "cache_rerun_time_ratio",
    "batched_vs_sequential",
    "compiled_vs_eager",
    "peak_memory_ratio",
    "studio_rerender_vs_dit",
    "studio_first_image_vs_generate",
    "cli_help_vs_typer",
)


def test_bench_reports_every_figure(cli, zoo, tmp_path):
    out = tmp_path / "bench.json"
    r = cli("bench", "--preset", "tiny", "--repeats", "1", "--json", out)
    assert r.code == 0, r.err
    assert all(line.strip() for line in r.out.splitlines() + r.err.splitlines()), "blank lines (a progress bar)"
    result = json.loads(out.read_text())
    for name in FIGURES:
        fig = result[name]
        assert fig["numerator"] > 0 and fig["denominator"] > 0 and "ratio_is" in fig
        assert abs(fig["ratio"] - fig["numerator"] / fig["denominator"]) < 1e-3 * max(1.0, fig["ratio"])
        assert name in r.out
    rerun = result["cache_rerun_forward_passes"]
    assert (rerun["vl"], rerun["text"]) == (0, 0) and rerun["first_run"] == {"vl": 1, "text": 1}
    studio = result["studio_rerender_vs_dit"]
    assert studio["rerender_forward_passes"] == {"vl": 0, "text": 0} and studio["zero_passes"]
    memory = result["peak_memory_ratio"]
    assert set(memory["component_mb"]) == {"text_encoder", "vl", "pipeline"}
    assert memory["largest_component"] == max(memory["component_mb"], key=memory["component_mb"].get)
    assert result["extraction_early_exit_speedup"]["decoder_layers_run_fraction"] == 3 / 8  # layer -6 of 8
    assert result["compiled_vs_eager"]["max_pixel_difference"] <= 2  # compiled DiT = eager up to rounding


def test_bench_rejects_an_unknown_preset(cli):
    r = cli("bench", "--preset", "huge")
    assert r.code == 2 and "valid: tiny, small" in r.err


def test_bench_runs_only_the_figures_asked_for(cli, zoo, tmp_path):
    out = tmp_path / "bench.json"
    r = cli("bench", "--preset", "tiny", "--repeats", "1", "--only", "studio", "--json", out)
    assert r.code == 0, r.err
    result = json.loads(out.read_text())
    assert {k for k in result if isinstance(result[k], dict) and "ratio" in result[k]} == {
        "studio_rerender_vs_dit",
        "studio_first_image_vs_generate",
    }
    assert "studio_rerender_forward_passes     vl 0 text 0" in r.out
    bad = cli("bench", "--preset", "tiny", "--only", "speed")
    assert bad.code == 2 and "unknown figure group 'speed'; valid: pipeline" in bad.err
