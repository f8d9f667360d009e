import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from llm_dit.config.settings import GenerationConfig
from llm_dit.core.errors import UserError
from llm_dit.generation.render import denoise
from llm_dit.maths.blend import interpolate
from llm_dit.maths.schedule import SCHEDULES, Schedule, parse_schedule, schedule_callback

GEN = GenerationConfig(width=64, height=64, steps=4, guidance=0.0)


@pytest.fixture(scope="module")
def pipe(zoo):
    from llm_dit.models.loading import load_pipeline

    return load_pipeline(str(zoo / "zimage"), "cpu", "float32")


@pytest.fixture(scope="module")
def rows():
    g = torch.Generator().manual_seed(0)
    return torch.randn(20, 64, generator=g), torch.randn(33, 64, generator=g)


def alphas(spec: str, steps: int, base: float = 0.3) -> list[float]:
    return parse_schedule(spec).alphas(steps, base)


# ------------------------------------------------------------------------------------------------ formulas


def test_constant_is_the_base_alpha_every_step():
    assert alphas("constant", 3, 0.3) == [0.3, 0.3, 0.3]
    assert alphas(" Constant ", 1, 0.7) == [0.7]


def test_linear_ramps_with_exact_endpoints():
    assert alphas("linear:0,0.6", 4) == pytest.approx([0.0, 0.2, 0.4, 0.6])
    got = alphas("linear:0.1,0.7", 7)
    assert got[0] == 0.1 and got[-1] == 0.7  # exact, not 0.6999...
    assert alphas("linear:0.2,0.8", 1) == [0.2]  # t = 0 when N = 1


def test_cosine_follows_half_a_cosine():
    assert alphas("cosine:0.6,0", 3) == pytest.approx([0.6, 0.3, 0.0])
    got = alphas("cosine:0.6,0.1", 5)
    t = 0.25
    assert got[1] == pytest.approx(0.1 + 0.5 * (1 + math.cos(math.pi * t)) / 2)
    assert got[0] == 0.6 and got[-1] == 0.1


def test_step_switches_after_the_first_fraction_of_steps():
    assert alphas("step:0.5,0.3,0", 4) == [0.3, 0.3, 0.0, 0.0]
    assert alphas("step:0.5,0.3,0", 5) == [0.3, 0.3, 0.3, 0.0, 0.0]  # i < 2.5
    assert alphas("step:0,0.3,0.1", 3) == [0.1, 0.1, 0.1]
    assert alphas("step:1,0.3,0.1", 3) == [0.3, 0.3, 0.3]


def test_list_is_used_verbatim_and_must_match_the_steps():
    assert alphas("list:0.5,0.4,0.3,0.2", 4) == [0.5, 0.4, 0.3, 0.2]
    with pytest.raises(UserError, match="4 values but the run has 3 steps"):
        alphas("list:0.5,0.4,0.3,0.2", 3)


def test_schedule_prints_its_cli_spelling():
    assert str(parse_schedule("linear:0.0,0.6")) == "linear:0,0.6"
    assert str(parse_schedule("constant")) == "constant"
    assert parse_schedule("step:0.5, 0.3, 0") == Schedule("step", (0.5, 0.3, 0.0))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty"),
        ("ramp:0,1", "valid: constant, linear, cosine, step, list"),
        ("linear:0.5", "takes START,END, got 1"),
        ("cosine:0,0.1,0.2", "takes START,END, got 3"),
        ("step:0.5,0.3", "takes FRACTION,BEFORE,AFTER"),
        ("constant:0.3", "takes no values"),
        ("linear:a,1", "bad number 'a'"),
        ("list:", "bad number ''"),
        ("linear:-0.1,0.5", "finite numbers >= 0"),
        ("linear:nan,0.5", "finite numbers >= 0"),
        ("list:0.1,inf", "finite numbers >= 0"),
        ("step:1.5,0.3,0", r"fraction must be in \[0, 1\]"),
    ],
)
def test_bad_specs_raise_user_errors(spec, message):
    with pytest.raises(UserError, match=message):
        parse_schedule(spec)


def test_bad_steps_and_alpha_raise():
    with pytest.raises(UserError, match="steps must be a positive int"):
        parse_schedule("linear:0,1").alphas(0, 0.3)
    with pytest.raises(UserError, match="alpha must be a finite number"):
        parse_schedule("constant").alphas(3, float("nan"))
    with pytest.raises(UserError, match="valid: constant"):
        Schedule("nope")
    assert SCHEDULES == ("constant", "linear", "cosine", "step", "list")


# ------------------------------------------------------------------------------------------------ callback


_PIPE = SimpleNamespace(transformer=SimpleNamespace(device=torch.device("cpu"), dtype=torch.float16))


def test_callback_returns_embeds_only_when_alpha_changes_and_caches_them():
    calls: list[float] = []

    def embeds(a: float) -> list[torch.Tensor]:
        calls.append(a)
        return [torch.full((2, 3), a)]

    cb = schedule_callback(embeds, [0.5, 0.5, 0.2, 0.5])
    assert calls == [0.5, 0.2]  # one evaluation per distinct alpha, up front
    assert cb.initial[0].eq(0.5).all()
    out = [cb(_PIPE, i, None, {}) for i in range(4)]
    assert out[0] == {} and out[3] == {}
    assert out[1]["prompt_embeds"][0].dtype == torch.float16 and out[1]["prompt_embeds"][0].eq(0.2).all()
    assert out[2]["prompt_embeds"][0].eq(0.5).all()
    assert cb.used == [0.5, 0.5, 0.2, 0.5]
    cb(_PIPE, 0, None, {})  # a new run starts afresh
    assert cb.used == [0.5]
    with pytest.raises(RuntimeError, match="4 steps but the pipeline ran step 4"):
        cb(_PIPE, 4, None, {})


def test_a_bad_alpha_fails_when_the_callback_is_built(rows):
    t, v = rows
    with pytest.raises(UserError, match="alpha must be in"):
        schedule_callback(lambda a: [interpolate(t, v, a)], [0.5, 1.5])


# --------------------------------------------------------------------------------------- through diffusers


def captured_captions(pipe, embeds, callback=None) -> tuple[list[torch.Tensor], np.ndarray]:
    """Run `denoise` and return the caption rows the transformer received at each step, and the image."""
    seen: list[torch.Tensor] = []

    def record(_m, args, kwargs):
        captions = args[2] if len(args) > 2 else kwargs["cap_feats"]
        seen.append(captions[0].clone())

    handle = pipe.transformer.register_forward_pre_hook(record, with_kwargs=True)
    try:
        image = denoise(pipe, embeds, GEN, [5], callback=callback)[0]
    finally:
        handle.remove()
    return seen, np.asarray(image)


@pytest.mark.parametrize("spec", ["linear:0,0.9", "step:0.5,0.8,0.1", "list:0.2,0.2,0.6,0.2"])
def test_each_step_sees_exactly_the_scheduled_conditioning(pipe, rows, spec):
    t, v = rows
    sched = parse_schedule(spec).alphas(GEN.steps, 0.3)
    cb = schedule_callback(lambda a: [interpolate(t, v, a)], sched)
    seen, _ = captured_captions(pipe, cb.initial, cb)
    assert len(seen) == GEN.steps
    for step, (got, a) in enumerate(zip(seen, sched, strict=True)):
        expected = interpolate(t, v, a)
        assert torch.equal(got, expected), f"step {step} did not use alpha {a}"
        others = {b for b in sched if b != a}
        assert not any(torch.equal(got, interpolate(t, v, b)) for b in others)
    assert cb.used == sched


def test_a_constant_schedule_equals_no_callback(pipe, rows):
    t, v = rows
    cb = schedule_callback(lambda a: [interpolate(t, v, a)], [0.4] * GEN.steps)
    _, plain = captured_captions(pipe, [interpolate(t, v, 0.4)])
    _, scheduled = captured_captions(pipe, cb.initial, cb)
    assert np.array_equal(plain, scheduled)
    assert cb.used == [0.4] * GEN.steps
    _, ramped = captured_captions(pipe, cb.initial, schedule_callback(lambda a: [interpolate(t, v, a)], [0.4, 1, 1, 1]))
    assert not np.array_equal(plain, ramped)  # the callback does reach the model


def test_the_printed_spelling_loses_no_digits():
    assert str(parse_schedule("list:0.1234567,1e-05,2")) == "list:0.1234567,1e-05,2"
