"""BENCHMARKS.md's tables are rendered from the JSON of the runs they report (`bench.tables`): a number in a table is
the number its run wrote."""

import json

import pytest

from llm_dit.bench.tables import BLOCK, render, render_blocks

from ..conftest import REPO

RESULT = {
    "preset": "small", "repeats": 5, "date": "2026-12-08", "wall_time_s": 99.5,
    "machine": {"platform": "Linux", "cpus": 2, "torch_threads": 2, "load_average_1m": 0.12},
    "versions": {"torch": "2.13.0+cpu", "diffusers": "0.42.1", "transformers": "5.25.0"},
    "sweep_vs_floor": {"numerator": 2.1, "denominator": 2.0, "ratio": 1.05, "ratio_is": "sweep / floor",
                       "unit": "s for 12 runs", "target": "<=1.03", "met": False},
    "batched_vs_sequential": {"numerator": 0.4, "denominator": 0.6, "ratio": 0.6667, "ratio_is": "one call / N calls"},
    "cache_rerun_forward_passes": {"vl": 0, "text": 0, "met": True},
}  # fmt: skip


def test_every_table_of_benchmarks_md_is_its_json_rendered():
    text = (REPO / "BENCHMARKS.md").read_text()
    blocks = list(BLOCK.finditer(text))
    assert blocks, "BENCHMARKS.md has no rendered tables"
    assert render_blocks(text, REPO) == text, (
        "a table differs from its JSON: python -m llm_dit.bench.tables BENCHMARKS.md"
    )
    assert {m["kind"] for m in blocks} >= {"run", "figures"}


def test_a_figure_row_shows_the_run_s_numbers_and_a_missed_target_says_so():
    table = render("figures", RESULT, "x.json").splitlines()
    assert (
        table[2] == "| `sweep_vs_floor` (sweep / floor, s for 12 runs) | 2.1 | 2.0 | **1.05** | <=1.03 | **missed** |"
    )
    assert table[3] == "| `batched_vs_sequential` (one call / N calls) | 0.4 | 0.6 | **0.6667** | — | — |"
    assert table[4] == "| `cache_rerun_forward_passes` (rerun into a new directory) | 0 VL, 0 text | — | — | 0 | yes |"
    line = render("run", RESULT, "docs/x.json")
    assert "2026-12-08" in line and "load average 0.12" in line and "medians of 5" in line and "`docs/x.json`" in line


def test_a_block_is_rerendered_from_its_file(tmp_path):
    (tmp_path / "r.json").write_text(json.dumps(RESULT))
    stale = "intro\n<!-- table figures r.json -->\n| old |\n<!-- /table -->\nafter\n"
    fresh = render_blocks(stale, tmp_path)
    assert fresh.startswith("intro\n<!-- table figures r.json -->\n| figure |") and fresh.endswith(
        "<!-- /table -->\nafter\n"
    )
    assert render_blocks(fresh, tmp_path) == fresh
    with pytest.raises(ValueError, match="unknown table kind 'nope'"):
        render_blocks("<!-- table nope r.json -->\nx\n<!-- /table -->", tmp_path)


def test_a_table_that_cannot_be_rendered_is_one_line_exit_2_and_the_file_is_left_alone(tmp_path, capsys):
    from llm_dit.bench.tables import main

    doc = tmp_path / "B.md"
    text = "<!-- table figures missing.json -->\n| old |\n<!-- /table -->\n"
    doc.write_text(text)
    with pytest.raises(SystemExit) as e:
        main([str(doc)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith(f"error: {doc}: cannot render") and err.count("\n") == 1
    assert doc.read_text() == text
