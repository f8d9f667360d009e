"""`llm-dit bench --preset real-size` (issue 16.4) is opt-in and never runs at real size in the test suite: its
refusal when disk or RAM is short, and its whole path (config update, shard-by-shard bf16 writing, staged probes) on
the tiny zoo's own configurations. Numbers are not asserted (they belong in BENCHMARKS.md)."""

import json

import pytest
import torch

import llm_dit.bench.real_size as bench
from llm_dit.bench.harness import touch_weights


@pytest.mark.parametrize(("disk_gb", "ram_gib"), [(5.0, 20.0), (100.0, 4.0)])
def test_real_size_refuses_without_disk_or_ram_one_line_nothing_written(cli, tmp_path, monkeypatch, disk_gb, ram_gib):
    monkeypatch.setattr(bench.shutil, "disk_usage", lambda _: type("U", (), {"free": disk_gb * 1e9})())
    monkeypatch.setattr(bench, "_meminfo_gib", lambda field: ram_gib)
    work = tmp_path / "real"
    r = cli("bench", "--preset", "real-size", "--work", work, "--json", tmp_path / "r.json")
    assert r.code == 2 and len(r.err.strip().splitlines()) == 1 and "Traceback" not in r.err
    assert "needs 32 GB free disk" in r.err and "13 GiB available RAM" in r.err
    assert list(work.iterdir()) == [] and not (tmp_path / "r.json").exists()


def test_the_real_configurations_have_the_published_parameter_counts(zoo):
    """The configs the bench writes, built on the meta device: FACTS.md's 4.02 B text encoder, 4.44 B Qwen3-VL
    (0.415 B vision tower), 6.15 B DiT and 84 M VAE."""
    counts = {}
    for component in bench.REAL_CONFIGS:
        config = bench.real_config(component, json.loads((zoo / component / "config.json").read_text()))
        model = bench.meta_model(component, config)
        counts[component] = sum(torch.Size(s).numel() for s in bench._unique_tensors(model).values())
    assert round(counts["zimage/text_encoder"] / 1e9, 2) == 4.02
    assert round(counts["qwen3-vl"] / 1e9, 2) == 4.44
    assert round(counts["zimage/transformer"] / 1e9, 2) == 6.15
    assert round(counts["zimage/vae"] / 1e6) == 84


def test_the_real_size_path_runs_end_to_end_at_the_tiny_configurations(zoo, tmp_path):
    """Folders built shard by shard with random bf16 weights load through the real loaders; each stage and the
    staged generation are probed in fresh processes; a second call reuses the build."""
    result = bench.run_real_size(tmp_path / "real", scale="tiny")
    assert set(result["stages"]) == {"text_encoder", "vl", "pipeline", "staged"}
    assert all(s["peak_above_base_gib"] > 0 for s in result["stages"].values())
    for stage in bench.STAGES:  # each stage also probed with every weight read first
        assert result["stages"][stage]["all_weights_peak_above_base_gib"] > 0
    assert result["all_weights_staged_peak_gib"] == max(
        result["stages"][s]["all_weights_peak_above_base_gib"] for s in bench.STAGES
    )
    fig = result["staged_vs_sum"]
    assert fig["denominator"] == pytest.approx(sum(result["stages"][s]["peak_above_base_gib"] for s in bench.STAGES))
    index = json.loads(
        (tmp_path / "real/zimage/transformer/diffusion_pytorch_model.safetensors.index.json").read_text()
    )
    assert index["weight_map"] and result["build"]["components"]["qwen3-vl"]["gb"] > 0
    assert bench.build_real_size(tmp_path / "real", "tiny") == result["build"]  # reused, not rewritten


def test_touch_weights_makes_memory_mapped_weights_resident_and_counts_each_tensor_once(tmp_path):
    """A 64 MiB bf16 weight loaded from safetensors is memory-mapped: not resident until read. `touch_weights` reads
    it (RSS grows by about its size) and reports its size once, though two modules share it (tied weights)."""
    from safetensors.torch import load_file, save_file

    def rss_mib() -> float:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024

    save_file({"weight": torch.full((8192, 4096), 0.5, dtype=torch.bfloat16)}, tmp_path / "w.safetensors")
    a, b = torch.nn.Linear(4096, 8192, bias=False), torch.nn.Linear(4096, 8192, bias=False)
    a.load_state_dict(load_file(tmp_path / "w.safetensors"), assign=True)
    b.weight = a.weight
    before = rss_mib()
    size = touch_weights([a, b])
    assert size == 64.0
    assert rss_mib() - before > 56  # the pages were read in (the mapping was not resident before)
