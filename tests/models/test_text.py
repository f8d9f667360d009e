import pytest
import torch

from llm_dit.models.text import TextEncoder, attention_pool, render_prompt, shorten

LONG = " ".join(["a red fox in a snowy forest at sunset, watercolor painting"] * 8)


@pytest.fixture(scope="module")
def encoder(zoo):
    return TextEncoder.from_pretrained(str(zoo / "zimage"))


def test_default_encoding_equals_diffusers_encode_prompt(zoo, encoder):
    from diffusers import ZImagePipeline

    pipe = ZImagePipeline.from_pretrained(zoo / "zimage")
    with torch.no_grad():
        ref, _ = pipe.encode_prompt("a red fox", device="cpu", do_classifier_free_guidance=False)
    ours = encoder.encode("a red fox").embeddings
    assert ours.shape == ref[0].shape
    torch.testing.assert_close(ours, ref[0], rtol=1e-5, atol=1e-5)


def test_hidden_layer_reaches_the_encoder(encoder):
    ids = torch.tensor([encoder.encode("a fox").token_ids])
    with torch.no_grad():
        states = encoder.model(input_ids=ids, output_hidden_states=True).hidden_states
    for layer in (-2, -6, -1, 3):
        got = encoder.encode("a fox", hidden_layer=layer).embeddings
        torch.testing.assert_close(got, states[layer][0], rtol=0, atol=0)


def test_system_prompt_and_think_block_render(encoder):
    tok = encoder.tokenizer
    plain = render_prompt(tok, "a fox")
    assert plain == "<|im_start|>user\na fox<|im_end|>\n<|im_start|>assistant\n"
    assert render_prompt(tok, "a fox", think_block=True) == plain + "<think>\n\n</think>\n\n"
    assert render_prompt(tok, "a fox", system_prompt="Be vivid.").startswith(
        "<|im_start|>system\nBe vivid.<|im_end|>\n<|im_start|>user\na fox"
    )
    with_think = encoder.encode("a fox", think_block=True)
    expected = tok(render_prompt(tok, "a fox", think_block=True), add_special_tokens=False).input_ids
    assert with_think.token_ids == expected and with_think.embeddings.shape[0] == len(expected)
    assert tok.convert_tokens_to_ids("<think>") in expected
    assert with_think.embeddings.shape[0] > encoder.encode("a fox").embeddings.shape[0]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_long_prompt_modes_all_shorten_and_differ(zoo, dtype):
    enc = TextEncoder.from_pretrained(str(zoo / "zimage"), dtype=dtype)
    outs = {}
    for mode in ("truncate", "interpolate", "pool", "attention_pool"):
        e = enc.encode(LONG, max_length=32, long_prompt_mode=mode)
        assert e.embeddings.shape == (32, 64) and e.embeddings.dtype == getattr(torch, dtype)
        assert e.shortened and e.token_count > 32
        assert torch.isfinite(e.embeddings.float()).all()
        outs[mode] = e.embeddings.float()
    names = list(outs)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not torch.allclose(outs[a], outs[b]), (a, b)
    # truncate == encoding the first 32 tokens (causal attention: the tail cannot change them)
    full = enc.encode(LONG, max_length=1504, long_prompt_mode="truncate").embeddings.float()
    torch.testing.assert_close(outs["truncate"], full[:32], rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(
        outs["pool"], torch.nn.functional.adaptive_avg_pool1d(full.T[None], 32)[0].T, rtol=2e-2, atol=2e-2
    )


def test_short_prompt_is_untouched_by_every_mode():
    rows = torch.randn(10, 8)
    for mode in ("truncate", "interpolate", "pool", "attention_pool"):
        assert shorten(rows, 10, mode) is rows


def test_attention_pool_formula_on_known_numbers():
    # one window of three rows; m = mean; weights = softmax(cos(x_j, m) / 0.1)
    rows = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0]])
    m = rows.mean(0)
    cos = torch.nn.functional.cosine_similarity(rows, m[None], dim=-1)
    w = torch.softmax(cos / 0.1, dim=0)
    torch.testing.assert_close(attention_pool(rows, 1)[0], w @ rows)
    # windows follow adaptive_avg_pool1d: 4 rows -> 2 windows of 2
    four = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 2.0], [0.0, 2.0]])
    torch.testing.assert_close(attention_pool(four, 2), torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
