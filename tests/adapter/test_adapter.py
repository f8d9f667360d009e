import itertools
import json

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from llm_dit.adapter.fit import common_block, paired_rows, ridge_fit
from llm_dit.adapter.model import Adapter
from llm_dit.adapter.train import (
    CHECKPOINT_NAME,
    TrainingSample,
    draw_step,
    finetune,
    flow_matching_loss,
    image_latents,
    model_timestep,
    noisy_latents,
    predict_velocity,
    shift_sigmas,
    velocity_target,
)
from llm_dit.core.cache import TensorCache
from llm_dit.core.errors import UserError
from llm_dit.models.text import TextEncoder
from llm_dit.models.vl import VLEmbeddingExtractor, caption_image

D = 64  # the tiny zoo's hidden size = DiT caption width


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm() / b.detach().norm())


def picture(size: int, seed: int) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray((torch.rand(size, size, 3, generator=g) * 255).to(torch.uint8).numpy())


@pytest.fixture(scope="module")
def pipe(zoo):
    from diffusers import ZImagePipeline

    p = ZImagePipeline.from_pretrained(zoo / "zimage", text_encoder=None)
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="module")
def samples(pipe):
    """4 random 32x32 images (latents [16, 4, 4]) with random VL-like rows [8, D]."""
    g = torch.Generator().manual_seed(0)
    return [
        TrainingSample(image_latents(pipe, picture(32, i), 32, 32), torch.randn(8, D, generator=g)) for i in range(4)
    ]


@pytest.fixture(scope="module")
def extractor(zoo, tmp_path_factory):
    return VLEmbeddingExtractor.from_pretrained(str(zoo / "qwen3-vl"), cache=TensorCache(tmp_path_factory.mktemp("c")))


# ------------------------------------------------------------------------------------------ closed-form fitting


def planted(n: int = 3000, seed: int = 0) -> tuple[torch.Tensor, torch.Generator]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, D, generator=g) * 2 + 0.5, g


def test_ridge_linear_recovers_a_planted_map():
    x, g = planted()
    a, b = torch.randn(D, D, generator=g) / 8, torch.randn(D, generator=g)
    y = x @ a + b + 1e-4 * torch.randn(x.shape, generator=g)
    fit = ridge_fit(x, y, 1e-6, "linear")
    assert fit.kind == "linear" and fit.weight.dtype == torch.float32
    assert rel(fit.matrix(), a) < 1e-3
    assert rel(fit.offset(), b) < 1e-3
    assert rel(fit(x), y) < 1e-3


def test_ridge_affine_recovers_per_dimension_scales_and_shifts():
    x, g = planted(seed=1)
    s, t = torch.randn(D, generator=g), torch.randn(D, generator=g)
    y = x * s + t + 1e-4 * torch.randn(x.shape, generator=g)
    fit = ridge_fit(x, y, 1e-6, "affine")
    assert rel(fit.scale.detach(), s) < 1e-3
    assert rel(fit.shift.detach(), t) < 1e-3
    # a full linear map is not representable: the affine fit of it is far off
    a = torch.randn(D, D, generator=g) / 8
    assert rel(ridge_fit(x, x @ a, 1e-6, "affine").matrix(), a) > 0.5


def test_ridge_low_rank_recovers_a_rank_r_perturbation_of_the_identity():
    x, g = planted(seed=2)
    p, q = torch.randn(D, 3, generator=g) / 3, torch.randn(D, 3, generator=g) / 3
    w, b = torch.eye(D) + p @ q.T, torch.randn(D, generator=g)
    y = x @ w + b + 1e-4 * torch.randn(x.shape, generator=g)
    fit = ridge_fit(x, y, 1e-6, "low_rank", rank=3)
    assert fit.u.shape == (D, 3) and fit.v.shape == (D, 3)
    assert rel(fit.matrix() - torch.eye(D), p @ q.T) < 1e-3
    assert rel(fit.offset(), b) < 1e-3
    # rank 1 cannot hold the rank-3 perturbation: truncation really happens
    assert rel(ridge_fit(x, y, 1e-6, "low_rank", rank=1).matrix() - torch.eye(D), p @ q.T) > 0.3


def test_ridge_lambda_shrinks_toward_zero_or_the_identity():
    x, g = planted(n=200, seed=3)
    y = x @ (torch.randn(D, D, generator=g) / 8)
    assert ridge_fit(x, y, 1e12, "linear").matrix().abs().max() < 1e-4
    assert ridge_fit(x, y, 1e12, "affine").scale.abs().max() < 1e-4
    assert (ridge_fit(x, y, 1e12, "low_rank", rank=4).matrix() - torch.eye(D)).abs().max() < 1e-4


def test_ridge_rejects_bad_input():
    x = torch.randn(10, 4)
    for args in [
        (x, torch.randn(10, 5), 1.0, "linear"),
        (x, torch.randn(9, 4), 1.0, "linear"),
        (x[:1], x[:1], 1.0, "linear"),
        (x, x.clone().index_put_((torch.tensor([0]), torch.tensor([0])), torch.tensor(float("nan"))), 1.0, "linear"),
        (x, x, -1.0, "linear"),
        (x, x, 1.0, "quadratic"),
    ]:
        with pytest.raises(UserError):
            ridge_fit(*args)
    with pytest.raises(UserError, match="rank"):
        ridge_fit(x, x, 1.0, "low_rank", rank=5)
    with pytest.raises(UserError, match="singular"):
        ridge_fit(torch.randn(3, 4), torch.randn(3, 4), 0.0, "linear")


# ------------------------------------------------------------------------------------------------ the module


@pytest.mark.parametrize("kind", ["linear", "low_rank", "affine"])
def test_new_adapter_is_the_identity_keeps_dtype_and_trains(kind):
    a = Adapter(D, kind)
    x = torch.randn(5, D)
    torch.testing.assert_close(a(x), x, rtol=0, atol=1e-6)
    assert a(x.bfloat16()).dtype == torch.bfloat16
    a(x).pow(2).sum().backward()
    first = {"linear": "weight", "low_rank": "u", "affine": "scale"}[kind]
    assert getattr(a, first).grad.abs().sum() > 0
    with pytest.raises(UserError, match=rf"adapter input has width {D + 1}, expected {D}"):
        a(torch.randn(5, D + 1))


@pytest.mark.parametrize("kind", ["linear", "low_rank", "affine"])
def test_save_load_round_trip(tmp_path, kind):
    x, g = planted(n=300, seed=4)
    fit = ridge_fit(x, x @ torch.randn(D, D, generator=g) + 1, 0.1, kind, rank=5 if kind == "low_rank" else None)
    meta = {"vl_model": "tiny", "hidden_layer": -6, "token_mode": "full", "training": {"lr": 0.1}, "kind": "x"}
    path = fit.save(tmp_path / "a.safetensors", meta)
    loaded, got = Adapter.load(path)
    assert (loaded.kind, loaded.rank, loaded.dim) == (kind, 5 if kind == "low_rank" else 0, D)
    assert got["kind"] == "adapter" and got["adapter_kind"] == kind and got["dim"] == D
    assert got["training"] == {"lr": 0.1} and got["token_mode"] == "full"
    torch.testing.assert_close(loaded(x), fit(x), rtol=0, atol=0)


def test_load_rejects_bad_files(tmp_path):
    good = Adapter(D, "low_rank", rank=4)
    path = good.save(tmp_path / "good.safetensors", {})
    tensors = load_file(path)
    meta = {"kind": "adapter", "adapter_kind": "low_rank", "rank": "4", "dim": str(D)}

    def bad(name, tensors, meta, match):
        p = tmp_path / f"{name}.safetensors"
        save_file(tensors, p, metadata=meta)
        with pytest.raises(UserError, match=match):
            Adapter.load(p)

    bad("missing", {k: v for k, v in tensors.items() if k != "v"}, meta, "missing tensors v")
    bad("shape", {**tensors, "u": torch.zeros(D, 5)}, meta, "'u' has shape")
    bad("nan", {**tensors, "bias": torch.full((D,), float("nan"))}, meta, "NaN")
    bad("int", {**tensors, "bias": torch.zeros(D, dtype=torch.int64)}, meta, "dtype")
    bad("extra", {**tensors, "weight": torch.zeros(D, D)}, meta, "unexpected")
    bad("kind", tensors, {**meta, "kind": "vl_embeddings"}, "not an adapter file")
    bad("adapter_kind", tensors, {**meta, "adapter_kind": "cubic"}, "unknown adapter kind")
    bad("rank", tensors, {**meta, "rank": str(D + 1)}, "rank")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="not a safetensors"):
        Adapter.load(tmp_path / "junk.safetensors")
    with pytest.raises(UserError, match="not found"):
        Adapter.load(tmp_path / "nope.safetensors")


# ----------------------------------------------------------------------------------------------- flow matching


def test_velocity_target_is_what_diffusers_euler_steps_need(pipe):
    """With out = x0 − ε as the transformer's output, the pipeline's update (noise_pred = −out, scheduler Euler
    step) follows the straight path exactly: every step lands on x_σ', the last on x0. The flipped sign does
    not."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(1, 16, 4, 4, generator=g), torch.randn(1, 16, 4, 4, generator=g)
    results = {}
    for sign in (1, -1):
        sched = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
        sched.set_timesteps(sigmas=[0.8, 0.3], mu=0.5)
        sigmas = sched.sigmas
        torch.testing.assert_close(sigmas[:2], shift_sigmas(torch.tensor([0.8, 0.3]), 3.0))
        x = noisy_latents(x0, eps, sigmas[0])
        for i, t in enumerate(sched.timesteps):
            torch.testing.assert_close(model_timestep(sigmas[i]), (1000 - t) / 1000)
            out = sign * velocity_target(x0, eps)
            x = sched.step(-out, t, x, return_dict=False)[0]
            if sign == 1:
                torch.testing.assert_close(x, noisy_latents(x0, eps, sigmas[i + 1]), rtol=1e-5, atol=1e-5)
        results[sign] = x
    torch.testing.assert_close(results[1], x0, rtol=1e-5, atol=1e-5)
    assert rel(results[-1], x0) > 0.5


def test_predict_velocity_calls_the_transformer_as_the_pipeline_does(pipe):
    g = torch.Generator().manual_seed(1)
    noise, rows = torch.randn(1, 16, 4, 4, generator=g), torch.randn(7, D, generator=g)
    ref = pipe(
        prompt_embeds=[rows],
        latents=noise,
        height=32,
        width=32,
        num_inference_steps=2,
        guidance_scale=0.0,
        output_type="latent",
    ).images[0]
    sigmas = [*shift_sigmas(torch.tensor([1.0, 0.5]), pipe.scheduler.config.shift).tolist(), 0.0]
    x = noise[0]
    with torch.no_grad():
        for s, s_next in itertools.pairwise(sigmas):
            out = predict_velocity(pipe.transformer, [x], torch.tensor([s]), [rows])[0]
            x = x + (s_next - s) * -out
    torch.testing.assert_close(x, ref, rtol=1e-5, atol=1e-5)
    assert rel(x, noise[0]) > 0.1  # the transformer really moved the latents


def test_image_latents_shape_determinism_and_size_check(pipe):
    a = image_latents(pipe, picture(48, 5), 32, 32)
    assert a.shape == (16, 4, 4) and a.dtype == torch.float32
    torch.testing.assert_close(image_latents(pipe, picture(48, 5), 32, 32), a, rtol=0, atol=0)
    assert rel(image_latents(pipe, picture(48, 6), 32, 32), a) > 0.01
    with pytest.raises(UserError, match="multiple of 16"):
        image_latents(pipe, picture(48, 5), 40, 32)


def test_finetune_lowers_the_loss_and_trains_only_the_adapter(pipe, samples, tmp_path):
    frozen = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    adapter = Adapter(D, "affine")

    def held_out(a: Adapter) -> float:  # fixed draws never used in training
        with torch.no_grad():
            return sum(
                flow_matching_loss(a, pipe.transformer, samples, *draw_step(samples, 999, k, 3.0, 4)[1:]).item()
                for k in range(3)
            )

    before = held_out(adapter)
    losses = finetune(adapter, pipe, samples, 20, 0.1, tmp_path, progress=False)
    assert len(losses) == 20
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
    # the same draws with the untrained (identity) adapter: the trained one does better on them
    with torch.no_grad():
        control = [
            flow_matching_loss(
                Adapter(D, "affine"), pipe.transformer, samples, *draw_step(samples, 0, k, 3.0, 4)[1:]
            ).item()
            for k in range(15, 20)
        ]
    assert sum(losses[-5:]) < sum(control)
    assert held_out(adapter) < before
    assert not torch.equal(adapter.scale.detach(), torch.ones(D))
    assert not any(p.requires_grad for p in pipe.transformer.parameters())
    assert all(torch.equal(v, frozen[k]) for k, v in pipe.transformer.state_dict().items())


def test_resume_continues_the_uninterrupted_trajectory(pipe, samples, tmp_path):
    kw = {"lr": 0.05, "progress": False, "batch_size": 2, "seed": 3, "checkpoint_every": 2}
    straight = Adapter(D, "low_rank", rank=4)
    full = finetune(straight, pipe, samples, 6, checkpoint_dir=tmp_path / "a", **kw)
    first = finetune(Adapter(D, "low_rank", rank=4), pipe, samples, 3, checkpoint_dir=tmp_path / "b", **kw)
    resumed = Adapter(D, "low_rank", rank=4)  # fresh weights: everything comes from the checkpoint
    second = finetune(resumed, pipe, samples, 6, checkpoint_dir=tmp_path / "b", **kw)
    assert first == full[:3] and len(second) == 6
    assert max(abs(a - b) for a, b in zip(second, full, strict=True)) < 1e-6
    for name, p in straight.named_parameters():
        torch.testing.assert_close(getattr(resumed, name), p, rtol=0, atol=1e-6)
    assert not torch.equal(straight.u.detach(), torch.zeros(D, 4))

    ckpt = tmp_path / "b" / CHECKPOINT_NAME
    raw = load_file(ckpt)  # plain safetensors, no pickle
    assert {"adapter.u", "optimizer.u.exp_avg", "optimizer.u.exp_avg_sq", "optimizer.u.step"} <= raw.keys()
    header = json.loads(ckpt.read_bytes()[8 : 8 + int.from_bytes(ckpt.read_bytes()[:8], "little")])
    assert json.loads(header["__metadata__"]["step"]) == 6

    with pytest.raises(UserError, match="past steps"):
        finetune(Adapter(D, "low_rank", rank=4), pipe, samples, 4, checkpoint_dir=tmp_path / "b", **kw)
    with pytest.raises(UserError, match="lr"):
        finetune(Adapter(D, "low_rank", rank=4), pipe, samples, 8, checkpoint_dir=tmp_path / "b", **{**kw, "lr": 0.1})
    with pytest.raises(UserError, match="adapter"):
        finetune(Adapter(D, "linear"), pipe, samples, 8, checkpoint_dir=tmp_path / "b", **kw)
    restarted = finetune(
        Adapter(D, "low_rank", rank=4), pipe, samples, 2, checkpoint_dir=tmp_path / "b", **kw, resume=False
    )
    assert restarted == full[:2]


def test_finetune_rejects_bad_settings(pipe, samples, tmp_path):
    a = Adapter(D, "affine")
    with pytest.raises(UserError, match="learning rate"):
        finetune(a, pipe, samples, 2, 0.0, tmp_path, progress=False)
    with pytest.raises(UserError, match="at least one"):
        finetune(a, pipe, [], 2, 0.1, tmp_path, progress=False)
    with pytest.raises(UserError, match="rows"):
        finetune(a, pipe, [TrainingSample(samples[0].latents, torch.randn(3, D + 1))], 2, 0.1, tmp_path, progress=False)


# ------------------------------------------------------------------------------------------- data and captions


def test_common_block_is_the_shared_tail_or_what_a_longer_template_leaves_of_it():
    caption, close = [11, 12, 13], [7, 8, 9]
    assert common_block([4, *caption, *close], [1, 2, *caption, *close]) == (1, 2, 6)
    assert common_block([*caption, *close, 50, 51], [1, *caption, *close]) == (0, 1, 6)  # a <think> after it
    assert common_block([1, 2], [3]) == (2, 1, 0)
    assert common_block([5, 6, 0, 5, 6], [5, 6])[:1] == (3,)  # ties: the latest


def test_paired_rows_align_caption_positions_and_pool_the_image(zoo, extractor):
    te = TextEncoder.from_pretrained(str(zoo / "zimage"), "cpu", "float32")
    img, caption = picture(64, 7), "a red fox in the snow"
    x, y, sinks = paired_rows(extractor, te, img, caption, hidden_layer=-3, text_layer=-2)
    vl = extractor.extract(img, caption, -3, token_mode="full")
    text = te.encode(caption, hidden_layer=-2)
    after = vl.token_ids[vl.spans.after[0] :]
    n = x.shape[0] - 1
    tail = next(k for k in range(len(after) + 1) if k == len(after) or after[-1 - k] != text.token_ids[-1 - k])
    assert n == tail > 0  # the whole shared tail, as diagnostics aligns it
    assert n >= len(te.tokenizer(caption, add_special_tokens=False).input_ids)  # the whole caption is in
    assert x.shape == y.shape == (n + 1, D) and x.dtype == y.dtype == torch.float32
    assert sinks == {"pair_rows": n + 1, "dropped": 0, "pooled_left_out": {"vl": 0, "text": 0}}  # random weights
    torch.testing.assert_close(x[:n], vl.embeddings[-n:], rtol=0, atol=0)
    torch.testing.assert_close(y[:n], text.embeddings[-n:].float(), rtol=0, atol=0)
    pad = vl.embeddings[slice(*vl.spans.image_pad)].mean(0)
    torch.testing.assert_close(x[n], pad, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(y[n], text.embeddings[-n:].float().mean(0), rtol=1e-6, atol=1e-6)


def test_caption_image_is_greedy_and_deterministic(extractor):
    img = picture(64, 8)
    a = caption_image(extractor, img, max_new_tokens=6)
    assert isinstance(a, str)
    assert caption_image(extractor, img, max_new_tokens=6) == a
    inputs, _ = extractor.prepare(img, "Describe this image in one sentence.")
    with torch.no_grad():
        out = extractor.model.generate(**inputs, max_new_tokens=6, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1] :]
    assert len(new) <= 6
    assert a == " ".join(extractor.tokenizer.decode(new, skip_special_tokens=True).split())
    with pytest.raises(UserError, match="max_new_tokens"):
        caption_image(extractor, img, max_new_tokens=0)


def test_train_adapter_cli_then_generate_and_sweep_with_it(cli, zoo, tmp_path):
    import json

    import numpy as np
    from PIL import Image

    from llm_dit.sweep.dir import SweepDir

    from ..conftest import REPO

    refs = REPO / "examples" / "reference-images"
    data = tmp_path / "images"
    data.mkdir()
    for name in ("house2.png", "sunset.png", "purple_hexagon.png"):
        Image.open(refs / name).resize((64, 64)).save(data / name)
    (tmp_path / "captions.txt").write_text("house2.png\ta cartoon house\nsunset.png\ta desert at sunset\n")
    out = tmp_path / "a.safetensors"
    r = cli(
        "train-adapter",
        "--models",
        "tiny",
        "--images",
        data,
        "--captions",
        tmp_path / "captions.txt",
        "--kind",
        "affine",
        "--finetune-steps",
        "3",
        "--lr",
        "0.01",
        "--width",
        "32",
        "--height",
        "32",
        "-o",
        out,
    )
    assert r.code == 0, r.err
    adapter, meta = Adapter.load(out)
    assert adapter.dim == 64
    assert meta["adapter_kind"] == "affine" and meta["hidden_layer"] == -6 and meta["finetune_steps"] == 3
    assert meta["captions"]["house2.png"] == "a cartoon house" and isinstance(
        meta["captions"]["purple_hexagon.png"], str
    )
    assert (tmp_path / "a.ckpt" / "adapter.ckpt.safetensors").is_file()

    house = refs / "house2.png"
    small = ["--models", "tiny", "-p", "a barn", "-i", house, "--steps", "2", "--width", "32", "--height", "32"]
    assert cli("generate", *small, "-o", tmp_path / "plain.png").code == 0
    r = cli("generate", *small, "--adapter", out, "-o", tmp_path / "adapted.png")
    assert r.code == 0, r.err
    rec = json.loads((tmp_path / "adapted.json").read_text())
    assert (
        rec["conditioning"]["adapter"]["adapter_kind"] == "affine"
        and len(rec["conditioning"]["adapter"]["sha256"]) == 64
    )
    a, b = (np.asarray(Image.open(tmp_path / f"{n}.png")).astype(int) for n in ("plain", "adapted"))
    assert np.abs(a - b).max() > 0
    r = cli("generate", *small, "--adapter", out, "--vl-layer", "-2", "-o", tmp_path / "bad.png")
    assert r.code == 2 and "trained with vl.hidden_layer = -6" in r.err

    sweep = tmp_path / "s"
    r = cli(
        "sweep",
        *small,
        "--adapters",
        f"none,{out}",
        "--alpha",
        "0.5",
        "-o",
        sweep,
    )
    assert r.code == 0, r.err
    rows = [x for x in SweepDir(sweep).lines() if x.kind == "variant"]
    assert sorted(str(x.settings["vl.adapter"]) for x in rows) == sorted(["None", str(out)])
    assert sum("adapter" in x.record["conditioning"] for x in rows) == 1


def test_an_empty_caption_names_the_image_and_the_fix(cli, zoo, tmp_path, monkeypatch):
    """Before: `paired_rows needs a non-empty caption` (no image, no fix) when the VL model wrote an empty caption,
    and an empty caption in a captions file was silently replaced by the VL model's."""
    from llm_dit.adapter import train as adapter_train

    from ..conftest import REPO

    data = tmp_path / "images"
    data.mkdir()
    for name in ("house2.png", "sunset.png"):
        Image.open(REPO / "examples" / "reference-images" / name).resize((64, 64)).save(data / name)
    args = ["train-adapter", "--models", "tiny", "--images", data, "-o", tmp_path / "a.safetensors"]
    monkeypatch.setattr(adapter_train, "caption_image", lambda extractor, image: " ")
    r = cli(*args)
    assert r.code == 2 and len(r.err.strip().splitlines()) == 1, r.err
    assert "empty caption for training image house2.png, sunset.png" in r.err and "--captions" in r.err
    for name, text in (("c.txt", "house2.png\ta house\nsunset.png\t  \n"), ("c.json", '{"sunset.png": ""}')):
        (tmp_path / name).write_text(text)
        r = cli(*args, "--captions", tmp_path / name)
        assert r.code == 2 and "empty caption for training image sunset.png" in r.err and name in r.err, r.err
    assert not (tmp_path / "a.safetensors").exists()
