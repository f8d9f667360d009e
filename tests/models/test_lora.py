"""LoRA on the DiT (issue 16): `generation.loras` / `--lora FILE[:SCALE]` through diffusers' Z-Image LoRA loader.
A tiny LoRA built offline with peft changes the image, scale 0 equals no LoRA, the adapter equals the weights
merged by hand, a trainer's layout converts, and a LoRA of another architecture is one line, exit 2."""

import json

import numpy as np
import pytest

from llm_dit.config.settings import ConfigError, with_overrides
from llm_dit.generation.generate import Generator

from ..checkpoints import hand_merge, lora_state, write_comfy_lora, write_flux_lora, write_peft_lora
from ..conftest import tiny_config

PROMPT = "a red fox in the snow"


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def with_lora(gen: Generator, *items: str) -> Generator:
    return gen.with_config(with_overrides(gen.config, {"generation.loras": list(items)}))


TINY = ("--models", "tiny", "--width", 64, "--height", 64, "--steps", 2)


@pytest.fixture(scope="module")
def lora(zoo, tmp_path_factory):
    """(state dict, peft-layout file, ComfyUI-layout file) of one random LoRA of the tiny DiT."""
    from diffusers import ZImageTransformer2DModel

    state = lora_state(ZImageTransformer2DModel.from_pretrained(zoo / "zimage", subfolder="transformer"))
    out = tmp_path_factory.mktemp("loras")
    return (
        state,
        write_peft_lora(state, out / "tiny peft.safetensors"),
        write_comfy_lora(state, out / "comfy.safetensors"),
    )


@pytest.fixture(scope="module")
def base(zoo):
    return Generator(tiny_config(zoo), cache=False)


def test_lora_changes_the_image_scale_zero_is_none_and_equals_the_hand_merge(zoo, lora, base):
    state, peft_file, _ = lora
    without = base.generate(PROMPT)
    runs = {
        s: base.with_config(with_overrides(base.config, {"generation.loras": [f"{peft_file}:{s}"]}))
        for s in (1, 0, 0.7)
    }
    on, zero, part = (runs[s].generate(PROMPT) for s in (1, 0, 0.7))
    assert np.abs(pixels(on.image) - pixels(without.image)).max() > 20  # the LoRA acts
    assert np.array_equal(pixels(zero.image), pixels(without.image))  # scale 0 is no LoRA, bit for bit
    assert np.array_equal(pixels(base.generate(PROMPT).image), pixels(without.image))  # no LoRA again: disabled

    merged = Generator(tiny_config(zoo), cache=False)
    hand_merge(merged.components.pipeline.transformer, state, 0.7)
    assert np.abs(pixels(part.image) - pixels(merged.generate(PROMPT).image)).max() <= 1  # uint8 rounding only

    # records: each file's sha256 and scale, only what acted
    from llm_dit.core.files import sha256_file

    assert part.record["models"]["loras"] == [{"path": str(peft_file), "sha256": sha256_file(peft_file), "scale": 0.7}]
    assert part.record["settings"]["generation.loras"] == [f"{peft_file}:0.7"]
    assert "loras" not in zero.record["models"]
    assert zero.record["inactive_settings"]["generation.loras"] == "every LoRA scale is 0"
    assert without.record["inactive_settings"]["generation.loras"] == "no LoRA"


def test_a_comfyui_layout_with_alpha_tensors_converts_to_the_same_adapter(lora, base):
    """`diffusion_model.` prefix with `.alpha` keys (ComfyUI, ai-toolkit, musubi): diffusers folds alpha/r into
    the weights, so the image equals the peft-layout file's at the same scale."""
    _, peft_file, comfy_file = lora
    images = [
        base.with_config(with_overrides(base.config, {"generation.loras": [f"{f}:0.5"]})).generate(PROMPT).image
        for f in (peft_file, comfy_file)
    ]
    assert np.abs(pixels(images[0]) - pixels(images[1])).max() <= 1


def test_two_loras_act_together(lora, base, tmp_path, zoo):
    from diffusers import ZImageTransformer2DModel

    _, peft_file, _ = lora
    other = write_peft_lora(
        lora_state(ZImageTransformer2DModel.from_pretrained(zoo / "zimage", subfolder="transformer"), seed=3),
        tmp_path / "other.safetensors",
    )
    one = base.with_config(with_overrides(base.config, {"generation.loras": [f"{peft_file}:0.5"]})).generate(PROMPT)
    two = base.with_config(
        with_overrides(base.config, {"generation.loras": [f"{peft_file}:0.5", f"{other}:0.5"]})
    ).generate(PROMPT)
    assert np.abs(pixels(one.image) - pixels(two.image)).max() > 5
    assert [x["path"] for x in two.record["models"]["loras"]] == [str(peft_file), str(other)]


@pytest.mark.parametrize("bad", [["a.safetensors:nan"], ["a.safetensors:1", "a.safetensors:0.5"]])
def test_bad_lora_settings_are_refused_naming_the_key(zoo, bad):
    with pytest.raises(ConfigError, match=r"generation\.loras"):
        tiny_config(zoo, **{"generation.loras": bad})


def test_a_lora_of_another_architecture_is_one_line_exit_2_nothing_written(cli, zoo, tmp_path):
    flux = write_flux_lora(tmp_path / "flux.safetensors")
    out = tmp_path / "a.png"
    r = cli("generate", *TINY, "-p", PROMPT, "--lora", flux, "-o", out)
    assert r.code == 2
    assert "is not a LoRA of this Z-Image transformer" in r.err and "single_transformer_blocks" in r.err
    assert len(r.err.strip().splitlines()) == 1 and "Traceback" not in r.err
    assert not out.exists() and not out.with_suffix(".json").exists()


def test_a_missing_lora_file_is_one_line(cli, tmp_path):
    r = cli("generate", *TINY, "-p", "x", "--lora", tmp_path / "no.safetensors", "-o", tmp_path / "a.png")
    assert r.code == 2 and "LoRA file not found" in r.err


def test_a_sweep_varies_lora_sets(cli, lora, tmp_path):
    """`--lora-sets` is a sweep axis: one run per set ('none' = no LoRA), each image made with its set."""
    _, peft_file, comfy_file = lora
    out = tmp_path / "sweep"
    sets = f"none;{peft_file}:0.5,{comfy_file}:0.25"
    r = cli("sweep", *TINY, "-p", PROMPT, "--lora-sets", sets, "-o", out, "--json")
    assert r.code == 0, r.err
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    by_loras = {len(x["settings"].get("generation.loras", [])): x for x in results}
    assert set(by_loras) == {0, 2}
    assert [x["scale"] for x in by_loras[2]["record"]["models"]["loras"]] == [0.5, 0.25]
    assert "loras" not in by_loras[0]["record"]["models"]
