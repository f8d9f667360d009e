"""Settings that act, records that tell the truth (docs/validity.md §4): every setting a command is given reaches
the call it names or is refused with one line, and the files it writes say what acted."""

from __future__ import annotations

import json
import re
import tomllib

import pytest
import torch
from PIL import Image

from llm_dit.adapter.model import Adapter
from llm_dit.adapter.train import train_adapter
from llm_dit.conditioning.source import Reference, parse_layer_weights, source_of
from llm_dit.config.settings import PLACEMENT_KEYS, ConfigError, default_config_path, load_config
from llm_dit.core.cache import TensorCache
from llm_dit.core.errors import UserError
from llm_dit.core.files import load_tensors
from llm_dit.generation.generate import Generator
from llm_dit.maths.steer import direction_mean_difference, load_direction
from llm_dit.sweep.dir import SweepDir
from llm_dit.sweep.run import Run
from llm_dit.sweep.spec import plan, run_config

from .conftest import REPO

REFS = REPO / "examples" / "reference-images"
REF = REFS / "purple_hexagon.png"
SMALL = ["--models", "tiny", "--steps", "2", "--width", "32", "--height", "32"]
SYSTEM = "Describe only the colours."


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return TensorCache(tmp_path_factory.mktemp("settings-cache"))


def tiny(zoo, **overrides):
    return load_config(
        overrides={"models.zimage": str(zoo / "zimage"), "models.vl": str(zoo / "qwen3-vl"), **overrides}
    )


def config_file(tmp_path, text: str):
    path = tmp_path / "profile.toml"
    path.write_text(text)
    return path


def reference() -> Image.Image:
    return Image.open(REF).convert("RGB")


def one_line_refusal(r) -> str:
    assert r.code == 2, r.err
    assert "Traceback" not in r.err and len(r.err.strip().splitlines()) == 1
    return r.err


# ------------------------------------------------------------------------------------------- neutral extraction


def test_neutral_input_is_refused_unless_the_blend_is_style_delta_before_any_model_loads(zoo):
    neutral = Image.new("RGB", (64, 64), (128, 128, 128))
    gen = Generator(tiny(zoo), cache=False)  # default blend adain_per_dim
    with pytest.raises(UserError, match=re.escape("only acts with vl.blend 'style_delta'")) as e:
        gen.prepare("a fox", Reference(reference(), neutral))
    assert "--" not in str(e.value)  # API errors name config keys, not CLI flags
    with pytest.raises(UserError, match="reference image or VL embeddings"):
        source_of(neutral=neutral)  # text-only: nothing for it to act on
    delta = Generator(tiny(zoo, **{"vl.blend": "style_delta"}), cache=False)
    with pytest.raises(UserError, match="needs a neutral extraction"):
        delta.prepare("a fox", reference())
    for g in (gen, delta):
        assert not g.components.loaded()


def test_cli_neutral_image_without_style_delta_exits_2_and_writes_nothing(cli, zoo, tmp_path):
    out = tmp_path / "x.png"
    base = ["generate", *SMALL, "-p", "a fox", "-i", REF, "-o", out]
    err = one_line_refusal(cli(*base, "--neutral-image", REFS / "house2.png"))
    assert "vl.blend 'style_delta'" in err
    both = ["--neutral-image", REFS / "house2.png", "--neutral-embeddings", tmp_path / "n.safetensors"]
    assert "give one of --neutral-image, --neutral-embeddings" in one_line_refusal(
        cli(*base, "--blend", "style_delta", *both)
    )
    assert not out.exists() and not out.with_suffix(".json").exists()


# ------------------------------------------------------------------------------------ adapter checked on every use


def test_adapter_is_loaded_once_but_checked_against_every_config_it_is_used_with(zoo, tmp_path, monkeypatch):
    path = Adapter(64, "affine").save(
        tmp_path / "a.safetensors",
        {"hidden_layer": -6, "settings": {"vl.hidden_layer": -6, "vl.token_mode": "full", "vl.system_prompt": None}},
    )
    loads = []
    original = Adapter.load
    monkeypatch.setattr(Adapter, "load", lambda p: loads.append(p) or original(p))
    gen = Generator(tiny(zoo), cache=False)
    assert gen.components.adapter(str(path), gen.config)[1]["sha256"]
    for change, key in (
        ({"vl.hidden_layer": -2}, "vl.hidden_layer"),  # what a sweep's --layers axis does between runs
        ({"vl.token_mode": "image_only"}, "vl.token_mode"),
        ({"vl.system_prompt": SYSTEM}, "vl.system_prompt"),
        ({"vl.layers": "-6:0.5,-2:0.5"}, "vl.layers"),
        ({"vl.normalize": "global"}, "vl.normalize"),
    ):
        with pytest.raises(UserError, match=key) as e:
            gen.components.adapter(str(path), tiny(zoo, **change))
        assert "--" not in str(e.value)
    gen.components.adapter(str(path), tiny(zoo))
    assert len(loads) == 1


def test_sweep_layer_axis_cannot_reuse_an_adapter_trained_on_another_layer(cli, zoo, tmp_path):
    adapter = Adapter(64, "affine").save(tmp_path / "a.safetensors", {"hidden_layer": -6, "token_mode": "full"})
    out = tmp_path / "s"
    r = cli("sweep", *SMALL, "-p", "a barn", "-i", REF, "--adapters", str(adapter), "--layers", "-6,-2", "-o", out)
    # refused before any work (the run naming the layer the adapter was not trained on), nothing written
    assert r.code == 2 and "sweep run 'hidden_layer=-2'" in r.err and "vl.hidden_layer = -6" in r.err, r.err
    assert not out.exists()
    r = cli("sweep", *SMALL, "-p", "a barn", "-i", REF, "--adapters", str(adapter), "--layers", "-6,-4", "-o", out)
    assert r.code == 2 and "sweep run 'hidden_layer=-4'" in r.err, r.err
    r = cli("sweep", *SMALL, "-p", "a barn", "-i", REF, "--adapter", str(adapter), "--vl-layer", "-6", "-o", out)
    assert r.code == 0, r.err
    runs = [x for x in SweepDir(out).lines() if x.kind != "baseline"]
    assert runs[0].status == "ok" and runs[0].record["conditioning"]["adapter"]["path"] == str(adapter)


# --------------------------------------------------------------------------------------- steer, inspect, adapter


def test_steer_honours_the_vl_system_prompt_and_weighted_layers_and_records_them(cli, zoo, tmp_path):
    pairs = tmp_path / "pairs.toml"
    pairs.write_text(
        f'prompt = "a house"\npositive = ["{REFS / "style_pixel_art.png"}"]\nnegative = ["{REFS / "house2.png"}"]\n'
    )

    def steer(name: str, profile: str):
        out = tmp_path / f"{name}.st"
        r = cli("steer", "--models", "tiny", "--pairs", pairs, "--config", config_file(tmp_path, profile), "-o", out)
        assert r.code == 0, r.err
        return load_direction(out)

    plain, plain_meta = steer("plain", "")
    prompted, meta = steer("system", f'[default.vl]\nsystem_prompt = "{SYSTEM}"\n')
    assert not torch.allclose(plain, prompted)
    assert plain_meta["settings"]["vl.system_prompt"] is None and meta["settings"]["vl.system_prompt"] == SYSTEM

    weighted, meta = steer("weighted", '[default.vl]\nlayers = "-6:0.5,-2:0.5"\n')
    assert meta["hidden_layer"] is None and meta["layer_weights"] == {"-6": 0.5, "-2": 0.5}
    assert meta["settings"]["vl.layers"] == "-6:0.5,-2:0.5" and "vl.hidden_layer" not in meta["settings"]
    vl = Generator(tiny(zoo), cache=False).components.vl

    def rows(image):  # the weighted rows, built here from single-layer extractions
        img = Image.open(image).convert("RGB")
        return sum(w * vl.extract(img, "a house", layer).embeddings for layer, w in {-6: 0.5, -2: 0.5}.items())

    expected = direction_mean_difference([rows(REFS / "style_pixel_art.png")], [rows(REFS / "house2.png")])
    torch.testing.assert_close(weighted, expected, rtol=1e-5, atol=1e-6)


def test_inspect_honours_the_system_prompts_and_the_configured_layers(cli, zoo, tmp_path):
    profile = config_file(
        tmp_path,
        f'[default.vl]\nsystem_prompt = "{SYSTEM}"\nlayers = "-6:0.5,-3:0.5"\n'
        '[default.encoder]\nsystem_prompt = "Be vivid."\n',
    )
    r = cli("inspect", "--models", "tiny", "--config", profile, "-i", REF, "-p", "a house", "--json")
    assert r.code == 0, r.err
    report = json.loads(r.out)
    assert SYSTEM in report["prompt"]
    assert list(report["layers"]) == ["-2", "-3", "-6", "-8"]  # the survey plus the configured layers
    assert report["settings"] == {
        "vl.layers": "-6:0.5,-3:0.5",
        "vl.system_prompt": SYSTEM,
        "encoder.system_prompt": "Be vivid.",
        "encoder.think_block": False,
        "vl.reference_stats": None,
        "vl.sink_ratio": 20.0,
    }
    plain = json.loads(cli("inspect", "--models", "tiny", "-i", REF, "-p", "a house", "--json", "--layers", "-3").out)
    assert SYSTEM not in plain["prompt"] and list(plain["layers"]) == ["-3"]
    assert "vl.hidden_layer" not in plain["settings"] and "vl.layers" not in plain["settings"]
    # the system prompts change what is measured
    assert report["layers"]["-3"]["image_influence"] != plain["layers"]["-3"]["image_influence"]


@pytest.fixture(scope="module")
def training_images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("adapter-images")
    for name in ("house2.png", "sunset.png"):
        Image.open(REFS / name).convert("RGB").resize((32, 32)).save(folder / name)
    return sorted(folder.iterdir())


CAPTIONS = {"house2.png": "a cartoon house", "sunset.png": "a desert at sunset"}


def test_train_adapter_honours_shift_seed_and_system_prompts_and_records_them(zoo, cache, training_images, tmp_path):
    def train(name: str, steps: int = 0, **overrides):
        cfg = tiny(zoo, **{"generation.width": 32, "generation.height": 32, **overrides})
        return train_adapter(
            Generator(cfg, cache), training_images, CAPTIONS, kind="affine", steps=steps, lr=0.01,
            checkpoint_dir=tmp_path / name, progress=False,
        )  # fmt: skip

    plain, plain_meta = train("plain")
    prompted, meta = train("system", **{"vl.system_prompt": SYSTEM, "encoder.system_prompt": "Be vivid."})
    assert not torch.allclose(plain.scale, prompted.scale)
    assert meta["settings"]["vl.system_prompt"] == SYSTEM and meta["settings"]["encoder.system_prompt"] == "Be vivid."
    assert plain_meta["settings"]["vl.system_prompt"] is None and "generation.seed" not in plain_meta["settings"]
    assert "vl.token_mode" not in plain_meta["settings"]  # ridge alone never sees whole extractions

    runs = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        _, meta = train(name, steps=2, **{"generation.shift": 7.0, "generation.seed": seed})
        _, ckpt = load_tensors(tmp_path / name / "adapter.ckpt.safetensors", "checkpoint")
        assert (ckpt["run"]["shift"], ckpt["run"]["seed"]) == (7.0, seed)  # what fine-tuning actually drew with
        assert meta["settings"]["generation.shift"] == 7.0 and meta["settings"]["generation.seed"] == seed
        runs[name] = ckpt["losses"]
    assert runs["a"] == runs["b"] and runs["a"] != runs["c"]


def test_train_adapter_refuses_weighted_layers_and_processed_rows_before_loading_a_model(zoo, training_images):
    for change, key in (({"vl.layers": "-6:0.5,-2:0.5"}, "vl.layers"), ({"vl.normalize": "global"}, "vl.normalize")):
        gen = Generator(tiny(zoo, **change), cache=False)
        with pytest.raises(UserError, match=key):
            train_adapter(gen, training_images, CAPTIONS)
        assert not gen.components.loaded()


def test_adapter_trained_with_a_system_prompt_is_refused_without_it(zoo, cache, training_images, tmp_path):
    cfg = tiny(zoo, **{"vl.system_prompt": SYSTEM})
    adapter, meta = train_adapter(Generator(cfg, cache), training_images, CAPTIONS, kind="affine")
    path = adapter.save(tmp_path / "a.safetensors", meta)
    Generator(cfg, cache).components.adapter(str(path), cfg)  # the same settings: accepted
    with pytest.raises(UserError, match=re.escape(f"vl.system_prompt = {SYSTEM!r}")):
        Generator(tiny(zoo), cache).components.adapter(str(path), tiny(zoo))


# ------------------------------------------------------------------------------------- vl.layers vs vl.hidden_layer


def test_layer_choice_follows_precedence_in_load_config(tmp_path):
    path = config_file(
        tmp_path,
        '[default.vl]\nlayers = "-6:0.7,-16:0.3"\n[single.vl]\nhidden_layer = -8\n[both.vl]\nhidden_layer = -8\n',
    )
    assert load_config(path).vl.layers == "-6:0.7,-16:0.3"
    explicit = load_config(path, overrides={"vl.hidden_layer": -2})  # --vl-layer beats the profile's vl.layers
    assert (explicit.vl.hidden_layer, explicit.vl.layers) == (-2, None)
    profile = load_config(path, "single")  # a profile's layer beats [default]'s weighted layers
    assert (profile.vl.hidden_layer, profile.vl.layers) == (-8, None)
    weighted = load_config(path, "single", {"vl.layers": "-4:1"})  # and weighted flags beat the profile's layer
    assert weighted.vl.layers == "-4:1"
    with pytest.raises(ConfigError, match="both set in the overrides"):
        load_config(path, overrides={"vl.hidden_layer": -2, "vl.layers": "-4:1"})
    bad = config_file(tmp_path, '[default.vl]\nhidden_layer = -8\nlayers = "-4:1"\n')
    with pytest.raises(ConfigError, match=r"both set in profile 'default'"):
        load_config(bad)


def test_layer_choice_follows_precedence_in_sweep_run_configs(zoo):
    base = tiny(zoo, **{"vl.layers": "-6:0.7,-3:0.3"})
    run = Run(image=str(REF), prompt="p", settings={"vl.hidden_layer": -2})
    cfg = run_config(base, run)
    assert (cfg.vl.hidden_layer, cfg.vl.layers) == (-2, None)
    assert plan(base, [run]).unique_extractions[0]["layers"] == [-2]
    assert list(parse_layer_weights(run_config(base, Run(image=str(REF), prompt="p")).vl.layers)) == [-6, -3]
    both = Run(image=str(REF), prompt="p", settings={"vl.hidden_layer": -2, "vl.layers": "-4:1"})
    with pytest.raises(ConfigError, match=f"both set in the settings of sweep run {both.id}"):
        run_config(base, both)


def test_cli_vl_layer_and_sweep_layers_axis_beat_a_profile_vl_layers(cli, zoo, tmp_path):
    profile = config_file(tmp_path, '[default.vl]\nlayers = "-6:0.7,-3:0.3"\n')
    r = cli(
        "sweep",
        "--models",
        "tiny",
        "--config",
        profile,
        "-p",
        "p",
        "-i",
        REF,
        "--layers",
        "-2,-8",
        "--dry-run",
        "--json",
    )
    assert r.code == 0, r.err
    assert [e["layers"] for e in json.loads(r.out)["unique_extractions"]] == [[-8, -2]]
    out = tmp_path / "g.png"
    r = cli("generate", *SMALL, "--config", profile, "-p", "a fox", "-i", REF, "--vl-layer", "-2", "-o", out)
    assert r.code == 0, r.err
    record = json.loads(out.with_suffix(".json").read_text())
    assert list(record["conditioning"]["vl"]) == ["-2"]
    err = one_line_refusal(cli("generate", *SMALL, "-p", "a fox", "--vl-layer", "-2", "--vl-layers", "-4:1", "-o", out))
    assert "vl.hidden_layer" in err and "vl.layers" in err


def test_extract_records_weighted_layers_as_such_and_layer_beats_them(cli, zoo, tmp_path):
    from llm_dit.maths.stats import describe

    profile = config_file(tmp_path, '[default.vl]\nlayers = "-6:0.7,-3:0.3"\n')
    base = ["extract", "--models", "tiny", "--config", profile, "-i", REF, "-t", "a house"]
    r = cli(*base, "-o", tmp_path / "w.safetensors", "--json")
    assert r.code == 0, r.err
    tensors, meta = load_tensors(tmp_path / "w.safetensors")
    assert json.loads(r.out)["hidden_layer"] is None and meta["hidden_layer"] is None
    assert meta["layer_weights"] == {"-6": 0.7, "-3": 0.3} and set(meta["layers"]) == {"-6", "-3"}
    assert meta["stats_after"] == describe(tensors["embeddings"])  # of the weighted rows, not of layer -6
    assert cli(*base, "--layer", "-2", "-o", tmp_path / "one.safetensors").code == 0
    tensors, meta = load_tensors(tmp_path / "one.safetensors")
    single = Generator(tiny(zoo), cache=False).components.vl.extract(reference(), "a house", -2).embeddings
    torch.testing.assert_close(tensors["embeddings"], single)
    assert meta["hidden_layer"] == -2 and meta["layer_weights"] == {"-2": 1.0} and "layers" not in meta


# ------------------------------------------------------------------------------------------------- doc truths


def test_packaged_profiles_other_than_default_change_only_placement():
    """A hardware profile may change where and when things run, never the result (config.PLACEMENT_KEYS)."""
    data = tomllib.loads(default_config_path().read_text())
    others = {name: tables for name, tables in data.items() if name != "default"}
    assert others, "no packaged profile besides default"
    for name, tables in others.items():
        keys = {f"{section}.{key}" for section, values in tables.items() for key in values}
        assert keys <= PLACEMENT_KEYS, f"profile '{name}' changes {sorted(keys - PLACEMENT_KEYS)}"
    assert load_config(profile="rtx4090").encoder == load_config().encoder


def test_default_long_prompt_is_interpolated_not_cut(zoo):
    """text.py's docstring: over max_length tokens, every token is encoded and the rows resampled (diffusers cuts)."""
    from llm_dit.models.text import TextEncoder, shorten

    enc = TextEncoder.from_pretrained(str(zoo / "zimage"))
    long = " ".join(["a red fox in a snowy forest at sunset, watercolor painting"] * 50)
    e = enc.encode(long)
    assert e.token_count > 512 and len(e.token_ids) == e.token_count and e.embeddings.shape[0] == 512
    full = enc.hidden_rows(e.token_ids, [-2])[-2]
    torch.testing.assert_close(e.embeddings, shorten(full, 512, "interpolate"))
    assert not torch.allclose(e.embeddings, full[:512])


def test_trust_remote_code_reaches_every_load_of_the_configured_models(zoo, monkeypatch):
    import diffusers
    import transformers

    seen: list[tuple[str, object]] = []
    classes = [
        transformers.AutoTokenizer,
        transformers.AutoConfig,
        transformers.AutoModel,
        transformers.AutoImageProcessor,
        transformers.Qwen3VLForConditionalGeneration,
        diffusers.ZImagePipeline,
    ]
    for cls in classes:
        original = cls.from_pretrained

        def spy(*args, _name=cls.__name__, _original=original, **kwargs):
            seen.append((_name, kwargs.get("trust_remote_code")))
            return _original(*args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", spy)
    gen = Generator(tiny(zoo, **{"models.trust_remote_code": True}), cache=False)
    parts = gen.components
    assert parts.text_encoder.model is not None and parts.vl.model is not None and parts.pipeline is not None
    assert {name for name, _ in seen} == {cls.__name__ for cls in classes}
    assert all(value is True for _, value in seen), seen
