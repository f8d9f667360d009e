"""The benchmark runs end to end on the tiny zoo and reports every figure; no timing is asserted (timings belong
in BENCHMARKS.md, not in tests)."""

import json

import pytest

GROUPS = {  # each group of `llm-dit bench --only` and the figures it reports
    "pipeline": ("pipeline_overhead_vs_diffusers",),
    "early_exit": ("extraction_early_exit_speedup",),
    "sweep": (
        "sweep_speedup_vs_naive",
        "sweep_vs_floor",
        "sweep_speedup_vs_naive_no_image_check",
        "sweep_vs_floor_no_image_check",
        "cache_rerun_time_ratio",
    ),
    "eval": ("eval_vs_floor",),
    "batched": ("batched_vs_sequential",),
    "compiled": ("compiled_vs_eager",),
    "memory": ("peak_memory_ratio",),
    "studio": ("studio_rerender_vs_dit", "studio_first_image_vs_generate"),
    "cli": ("cli_help_vs_typer",),
}


def test_bench_measures_every_group_in_order(cli, tmp_path, monkeypatch):
    """`llm-dit bench` with no `--only` measures every group, in order, into one JSON (each group's own figures are
    measured for real below, one test per group, so the suite can spread them)."""
    from llm_dit.bench import figures

    assert tuple(figures.FIGURE_GROUPS) == tuple(GROUPS)
    ran = []
    for name, (label, _) in list(figures.FIGURE_GROUPS.items()):

        def measure(preset, tmp, repeats, name=name):
            ran.append((name, preset, repeats))
            return {
                figure: {"numerator": 2.0, "denominator": 1.0, "ratio": 2.0, "ratio_is": "x"} for figure in GROUPS[name]
            }

        monkeypatch.setitem(figures.FIGURE_GROUPS, name, (label, measure))
    out = tmp_path / "bench.json"
    r = cli("bench", "--preset", "tiny", "--repeats", "1", "--json", out)
    assert r.code == 0, r.err
    assert ran == [(name, "tiny", 1) for name in GROUPS]
    result = json.loads(out.read_text())
    assert all(figure in result and figure in r.out for names in GROUPS.values() for figure in names)


@pytest.mark.parametrize("group", GROUPS)
def test_bench_reports_each_figure_of_a_group(cli, zoo, tmp_path, group):
    out = tmp_path / "bench.json"
    r = cli("bench", "--preset", "tiny", "--repeats", "1", "--only", group, "--json", out)
    assert r.code == 0, r.err
    assert all(line.strip() for line in r.out.splitlines() + r.err.splitlines()), "blank lines (a progress bar)"
    result = json.loads(out.read_text())
    assert {k for k in result if isinstance(result[k], dict) and "ratio" in result[k]} == set(GROUPS[group])
    for name in GROUPS[group]:
        fig = result[name]
        assert fig["numerator"] > 0 and fig["denominator"] > 0 and "ratio_is" in fig
        assert abs(fig["ratio"] - fig["numerator"] / fig["denominator"]) < 1e-3 * max(1.0, fig["ratio"])
        assert name in r.out
    if group == "sweep":
        rerun = result["cache_rerun_forward_passes"]
        # the first run of the checked sweep: the reference's VL pass and the probe's, one text pass
        assert (rerun["vl"], rerun["text"]) == (0, 0) and rerun["first_run"] == {"vl": 2, "text": 1}
    if group == "studio":
        studio = result["studio_rerender_vs_dit"]
        assert studio["rerender_forward_passes"] == {"vl": 0, "text": 0} and studio["zero_passes"]
        assert (studio["request"], result["studio_first_image_vs_generate"]["request"]) == ("draft", "saved")
        assert "studio_rerender_forward_passes     vl 0 text 0" in r.out
    if group == "memory":
        memory = result["peak_memory_ratio"]
        assert set(memory["component_mb"]) == {"text_encoder", "vl", "pipeline"}
        assert memory["largest_component"] == max(memory["component_mb"], key=memory["component_mb"].get)
    if group == "early_exit":
        assert result["extraction_early_exit_speedup"]["decoder_layers_run_fraction"] == 3 / 8  # layer -6 of 8
    if group == "compiled":
        assert result["compiled_vs_eager"]["max_pixel_difference"] <= 2  # compiled DiT = eager up to rounding


def test_bench_rejects_an_unknown_preset(cli):
    r = cli("bench", "--preset", "huge")
    assert r.code == 2 and "valid: tiny, small" in r.err


def test_bench_refuses_an_unknown_figure_group(cli):
    bad = cli("bench", "--preset", "tiny", "--only", "speed")
    assert bad.code == 2 and "unknown figure group 'speed'; valid: pipeline" in bad.err


def test_the_typer_help_floor_is_shaped_like_llm_dit():
    """`cli_help_vs_typer` reports llm-dit's `--help` against a bare typer app of the same shape
    (`bench.typer_floor`): as many commands and groups, so the comparison measures only what llm-dit adds."""
    import typer

    from llm_dit.bench import typer_floor
    from llm_dit.cli.app import app

    ours, floor = typer.main.get_command(app), typer.main.get_command(typer_floor.bare_app())
    groups = [name for name, c in ours.commands.items() if hasattr(c, "commands")]
    assert (len(ours.commands) - len(groups), len(groups)) == (typer_floor.COMMANDS, typer_floor.GROUPS)
    assert len(floor.commands) == len(ours.commands)
