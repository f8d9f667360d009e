"""Memory modes (issue 16.3): CPU offload refused without an accelerator and, with one, the right diffusers call;
quantised text encoder and Qwen3-VL through transformers' `quantization_config` (run on CPU where the backend runs,
one-line refusal where it is not installed); `models.compile` reaches diffusers' regional compile."""

import sys

import pytest
import torch

from llm_dit.core.errors import UserError
from llm_dit.generation.components import Components
from llm_dit.generation.generate import Generator

from ..conftest import tiny_config

PROMPT = "a red fox in the snow"
TINY = ("--models", "tiny", "--width", 64, "--height", 64, "--steps", 2)


def test_offload_without_an_accelerator_is_one_line_exit_2_nothing_written(cli, tmp_path):
    assert not torch.accelerator.is_available()  # this machine: the refusal is what runs here
    out = tmp_path / "a.png"
    r = cli("generate", *TINY, "-p", PROMPT, "--offload", "model", "-o", out)
    assert r.code == 2 and "models.offload" in r.err and "--offload" in r.err and "has none" in r.err
    assert len(r.err.strip().splitlines()) == 1 and not out.exists() and not out.with_suffix(".json").exists()


@pytest.mark.parametrize(
    ("mode", "call"), [("model", "enable_model_cpu_offload"), ("sequential", "enable_sequential_cpu_offload")]
)
def test_offload_with_an_accelerator_makes_the_diffusers_call(zoo, monkeypatch, mode, call):
    from diffusers import ZImagePipeline

    calls = []
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: True)
    for name in ("enable_model_cpu_offload", "enable_sequential_cpu_offload", "to"):
        monkeypatch.setattr(ZImagePipeline, name, lambda self, *a, _n=name, **k: calls.append(_n) or self)
    _ = Components(tiny_config(zoo, **{"models.offload": mode})).pipeline
    assert calls == [call]  # and the pipeline is not also placed on a device
    calls.clear()
    _ = Components(tiny_config(zoo)).pipeline
    assert calls == ["to"]


def test_compile_reaches_the_regional_compile_of_the_dit(zoo, monkeypatch):
    """A compiled 64x64 generation costs ~25 s on this machine, so the test checks the call; compiled and eager
    images are compared in the benchmarks."""
    from diffusers import ZImageTransformer2DModel

    compiled = []
    monkeypatch.setattr(ZImageTransformer2DModel, "compile_repeated_blocks", lambda self: compiled.append(self))
    gen = Generator(tiny_config(zoo, **{"models.compile": True}), cache=False)
    result = gen.generate(PROMPT)
    assert compiled == [gen.components.pipeline.transformer]
    assert result.record["settings"]["models.compile"] is True
    _ = Components(tiny_config(zoo)).pipeline
    assert len(compiled) == 1  # off by default


@pytest.mark.parametrize(
    ("kind", "module"), [("8bit", "bitsandbytes"), ("4bit", "bitsandbytes"), ("int8", "torchao.quantization")]
)
def test_a_missing_quantisation_backend_is_one_line_exit_2(cli, tmp_path, monkeypatch, kind, module):
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    out = tmp_path / "a.png"
    r = cli("generate", *TINY, "-p", PROMPT, "--encoder-quantization", kind, "-o", out)
    assert r.code == 2 and f"models.encoder_quantization = {kind} needs" in r.err and "llm-dit[quant]" in r.err
    assert len(r.err.strip().splitlines()) == 1 and not out.exists()


def linear_types(model) -> set[str]:
    return {type(m).__name__ for m in model.modules() if "Linear" in type(m).__name__}


@pytest.mark.parametrize(("kind", "layer"), [("8bit", "Linear8bitLt"), ("4bit", "Linear4bit"), ("int8", "Linear")])
def test_quantised_encoders_load_and_run_on_cpu(zoo, kind, layer):
    """bitsandbytes (>= 0.46 runs on CPU) and torchao int8 weight-only: the encoders' Linear layers are quantised,
    the rows stay close to the float32 ones, the image still renders, and the record says what acted."""
    pytest.importorskip("bitsandbytes" if kind != "int8" else "torchao", reason="the llm-dit[quant] extra")
    plain = Generator(tiny_config(zoo), cache=False)
    keys = {"models.encoder_quantization": kind, "models.vl_quantization": kind}
    quant = Generator(tiny_config(zoo, **keys), cache=False)
    te, vl = quant.components.text_encoder.model, quant.components.vl.model
    assert layer in linear_types(te) and layer in linear_types(vl)
    if kind == "int8":
        assert type(te.layers[0].mlp.up_proj.weight).__name__ == "Int8Tensor"
        assert type(vl.model.visual.blocks[0].attn.qkv.weight).__name__ == "Int8Tensor"
    else:
        assert layer in linear_types(vl.model.visual)  # the vision tower too
    a, b = plain.encode(PROMPT).embeddings, quant.encode(PROMPT).embeddings
    rel = float((a - b).norm() / a.norm())
    assert 0 < rel < (0.5 if kind == "4bit" else 0.1)
    result = quant.generate(PROMPT)
    assert result.record["settings"]["models.encoder_quantization"] == kind


def test_quantised_rows_are_cached_apart_from_float_rows(zoo, tmp_path):
    """The tensor cache key carries the quantisation: a float run's cached rows never serve a quantised run."""
    pytest.importorskip("torchao", reason="the llm-dit[quant] extra")
    from llm_dit.core.cache import TensorCache

    cache = TensorCache(tmp_path / "cache")
    Generator(tiny_config(zoo), cache=cache).encode(PROMPT)
    quant = Generator(tiny_config(zoo, **{"models.encoder_quantization": "int8"}), cache=cache)
    quant.encode(PROMPT)
    assert quant.components.forward_passes()["text"] == 1


def test_bad_values_are_refused_naming_the_key(zoo):
    with pytest.raises(UserError, match=r"models\.offload"):
        tiny_config(zoo, **{"models.offload": "disk"})
