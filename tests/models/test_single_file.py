"""Single-file and GGUF transformers (issue 16.2): `models.transformer = FILE` loads the DiT with
`from_single_file` and the configuration of `models.zimage`; files are written offline in the ORIGINAL
(non-diffusers, ComfyUI) key layout; another model's file is one line, exit 2, nothing written."""

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from llm_dit.config.settings import with_overrides
from llm_dit.generation.generate import Generator
from llm_dit.models.loading import ModelError, check_transformer_file

from ..checkpoints import to_original, write_gguf
from ..conftest import tiny_config

PROMPT = "a red fox in the snow"


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


@pytest.fixture(scope="module")
def files(zoo, tmp_path_factory):
    """The tiny DiT in the original layout: bf16 safetensors, `model.diffusion_model.`-prefixed fp32 safetensors
    with ComfyUI's extra `norm_final`, Q8_0 GGUF; and a file of another (wider) DiT."""
    from diffusers import ZImageTransformer2DModel

    base = ZImageTransformer2DModel.from_pretrained(zoo / "zimage", subfolder="transformer")
    orig = to_original(base.state_dict())
    out = tmp_path_factory.mktemp("single")
    save_file({k: v.to(torch.bfloat16) for k, v in orig.items()}, out / "zimage_bf16.safetensors")
    prefixed = {"model.diffusion_model." + k: v for k, v in orig.items()}
    prefixed["model.diffusion_model.norm_final.weight"] = torch.ones(64)
    save_file(prefixed, out / "zimage_comfy.safetensors")
    write_gguf(orig, out / "zimage_Q8_0.gguf")
    write_gguf(orig, out / "zimage_Q4_0.gguf", "Q4_0")
    save_file(dequantized(out / "zimage_Q4_0.gguf"), out / "zimage_Q4_0_dequantized.safetensors")
    wider = ZImageTransformer2DModel.from_config({**base.config, "dim": 128, "cap_feat_dim": 64, "n_heads": 4})
    save_file(to_original(wider.state_dict()), out / "wider.safetensors")
    write_gguf({"double_blocks.0.img_attn.qkv.weight": torch.randn(96, 32)}, out / "flux.gguf")
    return out


@pytest.fixture(scope="module")
def reference(zoo):
    return Generator(tiny_config(zoo), cache=False).generate(PROMPT)


@pytest.mark.parametrize(
    ("name", "tolerance"), [("zimage_comfy.safetensors", 0), ("zimage_bf16.safetensors", 3), ("zimage_Q8_0.gguf", 3)]
)
def test_a_single_file_transformer_in_the_original_layout_gives_the_folders_image(
    zoo, files, reference, name, tolerance
):
    """Same weights, same image: exactly for the fp32 file, up to bf16 / Q8_0 rounding for the others (the
    research measured 0.0046 and 0.0058 of the [0, 1] range, ~1.5 levels of 255)."""
    result = Generator(tiny_config(zoo, **{"models.transformer": str(files / name)}), cache=False).generate(PROMPT)
    assert np.abs(pixels(result.image) - pixels(reference.image)).max() <= tolerance
    record = result.record
    assert record["settings"]["models.transformer"] == str(files / name)
    assert (
        record["models"]["transformer"]["path"] == str(files / name) and record["models"]["transformer"]["fingerprint"]
    )
    assert reference.record["inactive_settings"]["models.transformer"] == "unset: the DiT of models.zimage"


def dequantized(path) -> dict[str, torch.Tensor]:
    """The tensors of a GGUF file dequantized by gguf-py itself (float32, the original layout)."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    return {
        t.name: torch.from_numpy(np.array(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32))
        for t in reader.tensors
    }


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0"])
def test_a_gguf_transformer_stays_quantised(zoo, files, qtype):
    gen = Generator(tiny_config(zoo, **{"models.transformer": str(files / f"zimage_{qtype}.gguf")}), cache=False)
    to_q = gen.components.pipeline.transformer.layers[0].attention.to_q
    assert type(to_q).__name__ == "GGUFLinear" and to_q.weight.quant_type.name == qtype


def test_a_4_bit_gguf_gives_the_image_of_its_weights_dequantized_by_gguf(zoo, files):
    """Q4_0 moves the weights far from the folder's (4 bits), so the image is compared with the one the same
    weights give dequantized by gguf-py and loaded as a float file: what diffusers computes from the 4-bit blocks."""

    def image(name):
        cfg = tiny_config(zoo, **{"models.transformer": str(files / name)})
        return pixels(Generator(cfg, cache=False).generate(PROMPT).image)

    assert np.abs(image("zimage_Q4_0.gguf") - image("zimage_Q4_0_dequantized.safetensors")).max() <= 1


@pytest.mark.parametrize(("name", "why"), [("wider.safetensors", "of another shape"), ("flux.gguf", "missing")])
def test_another_models_file_is_refused_from_its_header(zoo, files, name, why):
    with pytest.raises(ModelError, match=f"not a transformer of .*{why}"):
        check_transformer_file(str(files / name), str(zoo / "zimage"))


def test_another_models_file_is_one_line_exit_2_nothing_written(cli, files, tmp_path):
    out = tmp_path / "a.png"
    r = cli("generate", "--models", "tiny", "--steps", 2, "--width", 64, "--height", 64, "-p", PROMPT,
            "--transformer", files / "wider.safetensors", "-o", out)  # fmt: skip
    assert r.code == 2 and "is not a transformer of" in r.err and len(r.err.strip().splitlines()) == 1
    assert not out.exists() and not out.with_suffix(".json").exists()


def test_the_transformer_file_is_fixed_per_components(zoo, files):
    """A different transformer file needs other components: `with_config` refuses it (`COMPONENT_KEYS`)."""
    gen = Generator(tiny_config(zoo), cache=False)
    other = with_overrides(gen.config, {"models.transformer": str(files / "zimage_bf16.safetensors")})
    with pytest.raises(Exception, match=r"models\.transformer"):
        gen.with_config(other)
