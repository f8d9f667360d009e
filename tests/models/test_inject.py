import numpy as np
import pytest
import torch

from llm_dit.config.settings import GenerationConfig
from llm_dit.core.errors import UserError
from llm_dit.generation.render import denoise
from llm_dit.maths.blend import align
from llm_dit.models.inject import block_indices, inject_conditioning, second_stream_blocks

GEN = GenerationConfig(width=64, height=64, steps=4, guidance=0.0)
CFG = GenerationConfig(width=64, height=64, steps=3, guidance=2.0)
# 64x64 -> 8x8 latents -> 16 image tokens, padded to 32; a 20-row caption is padded to 32.
IMAGE, CAPTION = slice(0, 32), slice(32, 64)


@pytest.fixture(scope="module")
def pipe(zoo):
    from llm_dit.models.loading import load_pipeline

    return load_pipeline(str(zoo / "zimage"), "cpu", "float32")


@pytest.fixture(scope="module")
def rows():
    g = torch.Generator().manual_seed(1)
    return torch.randn(20, 64, generator=g), torch.randn(20, 64, generator=g), torch.randn(7, 64, generator=g)


def image(pipe, embeds, gen=GEN, negative=None) -> np.ndarray:
    return np.asarray(denoise(pipe, embeds, gen, [3], negative_prompt_embeds=negative)[0])


def block_inputs(pipe, run) -> list[torch.Tensor]:
    """The unified sequence entering each main block during the first denoiser call (step 0) of `run()`."""
    seen: list[torch.Tensor] = []
    n = len(pipe.transformer.layers)

    def record(_m, args):
        if len(seen) < n:
            seen.append(args[0][0].clone())

    handles = [layer.register_forward_pre_hook(record) for layer in pipe.transformer.layers]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return seen


def hook_count(module: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


# ------------------------------------------------------------------------------------------------ pure parts


def test_block_indices_are_validated_and_normalised():
    assert block_indices([1, 0, 1], 2) == (0, 1)
    assert block_indices([-1], 30) == (29,)
    for bad in (2, -3, True, 0.5):
        with pytest.raises(UserError, match="the DiT has 2 main blocks"):
            block_indices([bad], 2)


def test_second_stream_covers_the_blocks_before_the_last_switch():
    assert second_stream_blocks(range(10), 30) == 10
    assert second_stream_blocks([29], 30) == 29
    assert second_stream_blocks([5, 6], 30) == 7
    assert second_stream_blocks([0, 29], 30) == 29
    assert second_stream_blocks(range(30), 30) == 0
    assert second_stream_blocks([], 30) == 0


def test_bad_conditioning_is_a_user_error(pipe, rows):
    t, c, _ = rows
    with pytest.raises(UserError, match=r"conditioning 0 has width 32, expected 64 \(the DiT caption width\)"):
        inject_conditioning(pipe.transformer, [0], [torch.zeros(5, 32)])
    with pytest.raises(UserError, match="conditioning 0: 320 NaN and 0 Inf values"):
        inject_conditioning(pipe.transformer, [0], [torch.full((5, 64), float("nan"))])
    with pytest.raises(UserError, match="2 conditioning tensor"), inject_conditioning(pipe.transformer, [0], [c, c]):
        image(pipe, [t])
    assert hook_count(pipe.transformer) == 0


# -------------------------------------------------------------------------------------- through diffusers


def test_no_blocks_is_plain_text_and_all_blocks_is_plain_conditioning(pipe, rows):
    t, c, _ = rows
    plain_t, plain_c = image(pipe, [t]), image(pipe, [c])
    assert not np.array_equal(plain_t, plain_c)
    with inject_conditioning(pipe.transformer, [], [c]):
        assert np.array_equal(image(pipe, [t]), plain_t)
    with inject_conditioning(pipe.transformer, [0, 1], [c]) as inj:
        assert np.array_equal(image(pipe, [t]), plain_c)
    assert inj.calls == GEN.steps


def test_with_guidance_only_the_positive_captions_are_replaced(pipe, rows):
    t, c, neg = rows
    with inject_conditioning(pipe.transformer, [0, 1], [c]):
        injected = image(pipe, [t], CFG, [neg])
    assert np.array_equal(injected, image(pipe, [c], CFG, [neg]))


@pytest.mark.parametrize("blocks", [[0], [1]])
def test_only_the_chosen_blocks_see_the_conditioning(pipe, rows, blocks):
    """At step 0 every run starts from the same latents, so block inputs can be compared across runs: block ℓ's
    caption positions hold C's stream (as in a plain C run) if ℓ is chosen, else T's stream (as in a plain T
    run); its image positions come from the previous block, which saw C only if it was chosen."""
    t, c, _ = rows
    plain_t = block_inputs(pipe, lambda: image(pipe, [t]))
    plain_c = block_inputs(pipe, lambda: image(pipe, [c]))
    with inject_conditioning(pipe.transformer, blocks, [c]):
        injected = block_inputs(pipe, lambda: image(pipe, [t]))
    for b in range(2):
        assert not torch.equal(plain_t[b][CAPTION], plain_c[b][CAPTION])
        want = plain_c if b in blocks else plain_t
        assert torch.equal(injected[b][CAPTION], want[b][CAPTION]), f"block {b} caption"
    assert not torch.equal(plain_t[1][IMAGE], plain_c[1][IMAGE])
    previous = plain_c if 0 in blocks else plain_t
    assert torch.equal(injected[1][IMAGE], previous[1][IMAGE])


def test_injection_changes_the_image_and_leaves_no_hooks(pipe, rows):
    t, c, _ = rows
    before = image(pipe, [t])
    with inject_conditioning(pipe.transformer, [1], [c]) as inj:
        assert hook_count(pipe.transformer) > 0
        injected = image(pipe, [t])
    assert hook_count(pipe.transformer) == 0
    assert not np.array_equal(injected, before)
    assert not np.array_equal(injected, image(pipe, [c]))
    assert np.array_equal(image(pipe, [t]), before)
    assert inj.resampled == {}


@pytest.mark.parametrize(("blocks", "extra"), [([0], 1), ([1], 1), ([0, 1], 0)])
def test_cost_is_one_extra_block_call_per_block_before_the_last_switch(pipe, rows, monkeypatch, blocks, extra):
    t, c, _ = rows
    calls = []
    for i, layer in enumerate(pipe.transformer.layers):
        monkeypatch.setattr(layer, "forward", lambda *a, f=layer.forward, i=i, **k: calls.append(i) or f(*a, **k))
    with inject_conditioning(pipe.transformer, blocks, [c]):
        image(pipe, [t])
    assert len(calls) == GEN.steps * (2 + extra)


def test_a_conditioning_of_another_length_is_area_resampled_to_the_text(pipe, rows):
    t, c, _ = rows
    longer = torch.cat([c, c[:13] * 0.5])
    with inject_conditioning(pipe.transformer, [0, 1], [longer]) as inj:
        injected = image(pipe, [t])
    assert inj.resampled == {0: (33, 20)}
    assert np.array_equal(injected, image(pipe, [align(longer, 20, "area")]))
