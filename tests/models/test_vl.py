import warnings

import pytest
import torch
from PIL import Image

from llm_dit.core.cache import TensorCache
from llm_dit.core.errors import UserError
from llm_dit.maths.refstats import ReferenceStats, compute_reference_stats
from llm_dit.models.vl import TOKEN_MODES, VLEmbeddingExtractor, find_spans, pick_reference


@pytest.fixture(scope="module")
def extractor(zoo, tmp_path_factory):
    return VLEmbeddingExtractor.from_pretrained(str(zoo / "qwen3-vl"), cache=TensorCache(tmp_path_factory.mktemp("c")))


def picture(size: int, seed: int = 0) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray((torch.rand(size, size, 3, generator=g) * 255).to(torch.uint8).numpy())


@pytest.mark.parametrize(("size", "pads"), [(512, 256), (1024, 1024)])
def test_image_pad_rows_follow_the_32px_token_grid(extractor, size, pads):
    e = extractor.extract(picture(size), "a house", -2, token_mode="image_no_markers")
    assert e.embeddings.shape == (pads, extractor.hidden_size)
    assert extractor.extract(picture(size), "a house", -2, token_mode="image_only").embeddings.shape[0] == pads + 2
    full = extractor.extract(picture(size), "a house", -2, token_mode="full")
    text = extractor.extract(picture(size), "a house", -2, token_mode="text_only")
    assert full.embeddings.shape[0] == full.spans.total
    assert text.embeddings.shape[0] == full.spans.total - (pads + 2)


def test_image_only_rows_equal_transformers_hidden_states(extractor):
    img = picture(512, 1)
    e = extractor.extract(img, "a house", -2, token_mode="image_only")
    inputs, _ = extractor.prepare(img, "a house")
    with torch.no_grad():
        ref = extractor.model(**inputs, output_hidden_states=True).hidden_states[-2][0]
    torch.testing.assert_close(e.embeddings, ref[slice(*e.spans.image)].float(), rtol=1e-5, atol=1e-5)
    assert e.embeddings.dtype == torch.float32 and e.embeddings.device.type == "cpu"


def test_one_forward_pass_for_many_layers_and_early_exit_matches_full_forward(zoo):
    x = VLEmbeddingExtractor.from_pretrained(str(zoo / "qwen3-vl"))  # no cache
    img = picture(256, 2)
    out = x.extract_layers(img, "a fox", [-2, -6, -8, 0])
    assert x.forward_passes == 1
    inputs, _ = x.prepare(img, "a fox")
    with torch.no_grad():
        states = x.model(**inputs, output_hidden_states=True).hidden_states
    for layer, e in out.items():
        torch.testing.assert_close(e.embeddings, states[layer][0].float(), rtol=1e-5, atol=1e-5)


def test_deeper_layers_never_run(zoo):
    x = VLEmbeddingExtractor.from_pretrained(str(zoo / "qwen3-vl"))
    ran = []
    layers = x.model.model.language_model.layers
    handles = [m.register_forward_hook(lambda *a, i=i: ran.append(i)) for i, m in enumerate(layers)]
    head = x.model.lm_head.register_forward_hook(lambda *a: ran.append("lm_head"))
    try:
        x.extract(picture(64), "x", -6)
    finally:
        for h in [*handles, head]:
            h.remove()
    assert ran == list(range(len(layers) + 1 - 6))


def test_out_of_range_layer_names_the_depth(extractor):
    with pytest.raises(UserError, match="8 layers"):
        extractor.extract(picture(64), "x", -10)


def test_spans_with_system_prompt_and_thinking_template(extractor):
    plain = extractor.extract(picture(64), "a fox", -2)
    sys = extractor.extract(picture(64), "a fox", -2, system_prompt="Describe the style.")
    n_img = plain.spans.image[1] - plain.spans.image[0]
    assert sys.spans.image[1] - sys.spans.image[0] == n_img
    assert sys.spans.image[0] > plain.spans.image[0]  # the system turn comes first
    ids = sys.token_ids
    assert ids[sys.spans.image[0]] == extractor.ids["start"] and ids[sys.spans.image[1] - 1] == extractor.ids["end"]
    assert plain.variant == "instruct"

    from llm_dit.models.zoo import QWEN3_VL_THINKING_CHAT_TEMPLATE

    original = extractor.tokenizer.chat_template
    extractor.tokenizer.chat_template = QWEN3_VL_THINKING_CHAT_TEMPLATE
    try:
        think = extractor.extract(picture(64), "a fox", -2)
        assert think.variant == "thinking" and think.prompt.endswith("assistant\n<think>\n")
        assert think.spans.image == plain.spans.image and think.spans.total == plain.spans.total + 2
    finally:
        extractor.tokenizer.chat_template = original


def test_image_modes_need_an_image_block():
    spans = find_spans([1, 2, 3], 10, 11, 12)
    assert spans.rows("text_only").tolist() == [0, 1, 2]
    for mode in ("image_only", "image_no_markers"):
        with pytest.raises(UserError, match="needs an image block"):
            spans.rows(mode)
    with pytest.raises(UserError, match="valid: full, text_only"):
        spans.rows("everything")
    s = find_spans([1, 10, 12, 12, 11, 2], 10, 11, 12)
    assert (s.image, s.image_pad, s.before, s.after) == ((1, 5), (2, 4), (0, 1), (5, 6))
    assert set(TOKEN_MODES) == {"full", "text_only", "image_only", "image_no_markers"}


def test_masking_touches_only_image_pad_rows(extractor):
    img = picture(128, 3)
    raw = extractor.extract(img, "a fox", -2)
    ref_std = raw.embeddings.std(0, correction=0).clone()
    ref_std[5] *= 600.0  # the VL dimension 5 is 600x smaller than this reference
    ref = ReferenceStats(raw.embeddings.mean(0), ref_std, layer=-2, model="test", prompt_count=1, token_count=1)
    masked = extractor.extract(img, "a fox", -2, outlier_masking="zero", reference=ref, outlier_threshold=10.0)
    assert [d for d, _ in masked.masked_dimensions] == [5]
    pad = masked.image_pad_rows
    assert (masked.embeddings[pad, 5] == 0).all()
    torch.testing.assert_close(masked.embeddings[~pad], raw.embeddings[~pad])


def test_normalization_uses_same_layer_reference_and_refuses_another_layer(extractor):
    img = picture(128, 4)
    rows = torch.randn(50, extractor.hidden_size) * 3 + 1
    refs = {-2: compute_reference_stats(rows, -2, "t", 1), -8: compute_reference_stats(rows * 5, -8, "t", 1)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        e = extractor.extract(img, "x", -2, normalization="per_dim", reference=refs)
    torch.testing.assert_close(e.embeddings.std(0, correction=0), refs[-2].per_dim_std, rtol=1e-3, atol=1e-3)
    with pytest.raises(UserError, match=r"no reference statistics for layer -6 .*llm-dit stats --layer -6"):
        pick_reference({-8: refs[-8]}, -6)
    with pytest.raises(UserError, match=r"from layer -8, extracting layer -6.*llm-dit stats --layer -6"):
        pick_reference(refs[-8], -6)
    assert e.stats_before != e.stats_after


def test_cache_hit_skips_the_forward_pass(zoo, tmp_path):
    cache = TensorCache(tmp_path)
    x = VLEmbeddingExtractor.from_pretrained(str(zoo / "qwen3-vl"), cache=cache)
    a = x.extract(picture(64, 5), "a fox", -2)
    b = x.extract(picture(64, 5), "a fox", -2, token_mode="image_only")  # other settings: still a hit
    assert (a.cache, b.cache, x.forward_passes) == ("miss", "hit", 1)
    # a later process finds the entry corrupt on disk: it is recomputed, not trusted
    for f in tmp_path.rglob("*.safetensors"):
        f.write_bytes(f.read_bytes()[:-8] + b"garbage!")
    later = VLEmbeddingExtractor.from_pretrained(str(zoo / "qwen3-vl"), cache=TensorCache(tmp_path))
    c = later.extract(picture(64, 5), "a fox", -2)
    assert c.cache == "miss" and later.forward_passes == 1
    torch.testing.assert_close(c.embeddings, a.embeddings, rtol=0, atol=0)
    assert later.extract(picture(64, 5), "a fox", -2).cache == "hit"  # and the rewritten entry is good again
