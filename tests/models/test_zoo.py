import json

import torch
from safetensors.torch import load_file

from llm_dit.models.zoo import SPECIAL_TOKENS, build_zoo, zoo_dir


def test_diffusers_loads_and_runs_the_zimage_folder(zoo):
    from diffusers import ZImagePipeline

    index = json.loads((zoo / "zimage" / "model_index.json").read_text())
    assert index["_class_name"] == "ZImagePipeline"
    assert index["text_encoder"] == ["transformers", "Qwen3Model"]
    assert index["tokenizer"][1] == "Qwen2Tokenizer"
    pipe = ZImagePipeline.from_pretrained(zoo / "zimage")
    pipe.set_progress_bar_config(disable=True)
    assert pipe.vae.config.scaling_factor == 0.3611 and pipe.vae.config.shift_factor == 0.1159
    assert pipe.vae.config.latent_channels == 16 and pipe.vae_scale_factor == 8
    assert pipe.scheduler.config.shift == 3.0 and not pipe.scheduler.config.use_dynamic_shifting
    image = pipe(
        prompt="a red fox",
        height=64,
        width=64,
        num_inference_steps=2,
        guidance_scale=0.0,
        generator=torch.Generator("cpu").manual_seed(0),
    ).images[0]
    assert image.size == (64, 64)


def test_vl_folder_shares_the_tokenizer_and_the_caption_width(zoo):
    from transformers import AutoConfig, AutoTokenizer, Qwen3VLForConditionalGeneration

    vl_tok = AutoTokenizer.from_pretrained(zoo / "qwen3-vl")
    te_tok = AutoTokenizer.from_pretrained(zoo / "zimage" / "tokenizer")
    assert vl_tok.get_vocab() == te_tok.get_vocab()
    tokens = (*SPECIAL_TOKENS, "<think>", "</think>")
    ids = [vl_tok.convert_tokens_to_ids(t) for t in tokens]
    assert ids == [te_tok.convert_tokens_to_ids(t) for t in tokens]
    assert len(set(ids)) == len(tokens) and vl_tok.convert_ids_to_tokens(ids) == list(tokens)
    model = Qwen3VLForConditionalGeneration.from_pretrained(zoo / "qwen3-vl")
    dit = json.loads((zoo / "zimage" / "transformer" / "config.json").read_text())
    assert model.config.text_config.hidden_size == dit["cap_feat_dim"]
    assert model.config.image_token_id == vl_tok.convert_tokens_to_ids("<|image_pad|>")
    assert model.config.vision_config.patch_size == 16 and model.config.vision_config.spatial_merge_size == 2
    assert model.config.vision_config.deepstack_visual_indexes
    te = AutoConfig.from_pretrained(zoo / "zimage" / "text_encoder")
    assert te.num_hidden_layers >= 8 and model.config.text_config.num_hidden_layers >= 8
    processor = json.loads((zoo / "qwen3-vl" / "preprocessor_config.json").read_text())
    assert processor["image_mean"] == [0.5] * 3 and processor["temporal_patch_size"] == 2


def test_chat_templates_render_like_the_real_ones(zoo):
    from transformers import AutoTokenizer

    te = AutoTokenizer.from_pretrained(zoo / "zimage" / "tokenizer")
    msgs = [{"role": "user", "content": "a fox"}]
    assert te.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True, enable_thinking=True) == (
        "<|im_start|>user\na fox<|im_end|>\n<|im_start|>assistant\n"
    )
    assert te.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True, enable_thinking=False).endswith(
        "assistant\n<think>\n\n</think>\n\n"
    )
    vl = AutoTokenizer.from_pretrained(zoo / "qwen3-vl")
    parts = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "a fox"}]}]
    assert vl.apply_chat_template(parts, tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>a fox<|im_end|>\n<|im_start|>assistant\n"
    )


def test_build_is_deterministic(zoo, tmp_path):
    build_zoo(tmp_path, "tiny")
    for rel in (
        "zimage/transformer/diffusion_pytorch_model.safetensors",
        "qwen3-vl/model.safetensors",
        "zimage/text_encoder/model.safetensors",
    ):
        a, b = load_file(zoo / rel), load_file(tmp_path / rel)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_zoo_dir_is_cached(zoo):
    assert zoo_dir("tiny") == zoo
    assert json.loads((zoo / "zoo.json").read_text())["preset"] == "tiny"


def test_cli_models_tiny_refuses_non_empty_folder(cli, tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    r = cli("models", "tiny", "--out", tmp_path)
    assert r.code == 2 and "not empty" in r.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
