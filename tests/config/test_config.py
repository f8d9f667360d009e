import re
import tomllib
from pathlib import Path

import pytest

from llm_dit.config.settings import Config, ConfigError, default_config_path, load_config, with_overrides


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_unknown_key_names_key_profile_and_file(tmp_path):
    path = write(tmp_path, "[default.generation]\nstepz = 4\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert "stepz" in msg and "'default'" in msg and str(path) in msg
    assert "\n" not in msg


def test_unknown_key_in_user_profile(tmp_path):
    path = write(tmp_path, "[default.vl]\nalpha = 0.5\n[mine.vl]\nalpah = 0.2\n")
    with pytest.raises(ConfigError, match=r"unknown key 'vl.alpah' in profile 'mine'"):
        load_config(path, "mine")


def test_bad_value_and_unknown_section(tmp_path):
    with pytest.raises(ConfigError, match=re.escape("generation.width")):
        load_config(write(tmp_path, "[default.generation]\nwidth = 100\n"))
    with pytest.raises(ConfigError, match="unknown key 'sampler'"):
        load_config(write(tmp_path, "[default.sampler]\nsteps = 4\n"))
    with pytest.raises(ConfigError, match=re.escape("vl.token_mode")):
        load_config(write(tmp_path, '[default.vl]\ntoken_mode = "everything"\n'))


def test_missing_profile_and_file(tmp_path):
    with pytest.raises(ConfigError, match="profile 'nope'"):
        load_config(write(tmp_path, "[default]\n"), "nope")
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.toml")


def test_precedence_defaults_then_default_then_profile_then_flags(tmp_path):
    path = write(
        tmp_path,
        "[default.generation]\nsteps = 5\nseed = 11\n[fast.generation]\nsteps = 3\n",
    )
    base = load_config(path)
    assert (base.generation.steps, base.generation.seed, base.generation.width) == (5, 11, 1024)
    fast = load_config(path, "fast")
    assert (fast.generation.steps, fast.generation.seed) == (3, 11)  # profile over [default]
    flagged = load_config(path, "fast", {"generation.steps": 2, "generation.seed": None})
    assert (flagged.generation.steps, flagged.generation.seed) == (2, 11)  # flags over profile; None = unset


def test_override_is_validated(tmp_path):
    with pytest.raises(ConfigError, match=re.escape("generation.height")):
        load_config(write(tmp_path, ""), overrides={"generation.height": 70})


def test_packaged_profiles_carry_their_documented_difference():
    assert load_config().encoder.long_prompt_mode == "interpolate"
    rtx = load_config(profile="rtx4090")
    assert rtx.encoder.long_prompt_mode == "interpolate"  # a memory profile does not change the result
    assert rtx.models.low_memory is True and rtx.vl.device == "cuda"


def test_packaged_default_profile_equals_field_defaults():
    """The documented config.toml and the code defaults must not drift apart."""
    data = tomllib.loads(default_config_path().read_text())["default"]
    defaults = Config().model_dump()
    for section, values in data.items():
        for key, value in values.items():
            assert defaults[section][key] == value, f"{section}.{key}"


def test_flat_names_every_setting():
    flat = Config().flat()
    assert flat["encoder.hidden_layer"] == -2 and flat["vl.hidden_layer"] == -6
    assert flat["generation.steps"] == 9 and flat["generation.shift"] == 3.0
    assert flat["vl.blend"] == "adain_per_dim" and flat["vl.alpha"] == 0.3


def test_cli_unknown_key_exits_2_with_one_line(cli, tmp_path):
    path = write(tmp_path, "[default.generation]\nstepz = 4\n")
    for args in (
        ["config", "show", "--config", path],
        ["generate", "-p", "x", "-o", tmp_path / "x.png", "--config", path],
    ):
        r = cli(*args)
        assert r.code == 2
        lines = r.err.strip().splitlines()
        assert len(lines) == 1 and "stepz" in lines[0]
        assert "Traceback" not in r.err
    assert not (tmp_path / "x.png").exists()


def test_cli_config_show_profile(cli):
    r = cli("config", "show", "--profile", "rtx4090")
    assert r.code == 0
    assert "low_memory = true" in r.out and 'device = "cuda"' in r.out
    assert "[rtx4090.generation]" in r.out


@pytest.mark.parametrize(
    "profile_toml",
    [
        "",
        '[mine.vl]\nlayers = "-6:0.7,-2:0.3"\nblend_options = {p = 4, eps = 0.1}\nsystem_prompt = "say \\"hi\\""\n'
        "inject_layers = [0, 1]\n[mine.generation]\nsteps = 3\n",
    ],
)
def test_config_show_output_reads_back_as_the_same_config(cli, tmp_path, profile_toml):
    """Before: `config show` printed `null`s and bare `[section]` tables, which no profile reads back."""
    source = tmp_path / "in.toml"
    source.write_text(profile_toml)
    profile = "mine" if profile_toml else "default"
    args = ["--profile", profile, *(["--config", source] if profile_toml else [])]
    shown = cli("config", "show", *args)
    assert shown.code == 0, shown.err
    (tmp_path / "shown.toml").write_text(shown.out)
    tomllib.loads(shown.out)
    again = cli("config", "show", "--config", tmp_path / "shown.toml", "--profile", profile)
    assert again.code == 0, again.err
    expected = load_config(source if profile_toml else None, profile)
    assert load_config(tmp_path / "shown.toml", profile) == expected
    assert again.out == shown.out


# ------------------------------------------------------------------------------------------- one vocabulary


def test_with_overrides_applies_dotted_settings_validated_naming_key_and_level():
    base = Config()
    cfg = with_overrides(base, {"generation.steps": 4, "vl.blend": "slerp", "vl.clip_sigma": 3.0})
    assert (cfg.generation.steps, cfg.vl.blend, cfg.vl.clip_sigma) == (4, "slerp", 3.0)
    assert base.generation.steps == 9 and base.vl.blend == "adain_per_dim"  # the input is not modified
    assert with_overrides(cfg, {"vl.clip_sigma": None}).vl.clip_sigma is None  # None is a value here
    with pytest.raises(ConfigError, match=r"^unknown key 'generation.stepz' in my level$"):
        with_overrides(base, {"generation.stepz": 4}, "my level")
    with pytest.raises(ConfigError, match=r"^unknown key 'sampler' in the overrides$"):
        with_overrides(base, {"sampler.steps": 4})
    with pytest.raises(ConfigError, match=r"^bad value for 'generation.steps' in my level: "):
        with_overrides(base, {"generation.steps": 0}, "my level")
    with pytest.raises(ConfigError, match=r"^bad value for 'vl.sink_rows' in the overrides: "):
        with_overrides(base, {"vl.sink_rows": "drop"})


def test_with_overrides_keeps_the_layer_choice_rule_at_every_level():
    weighted = with_overrides(Config(), {"vl.layers": "-6:0.7,-16:0.3"})
    assert weighted.vl.layers == "-6:0.7,-16:0.3"
    single = with_overrides(weighted, {"vl.hidden_layer": -2})  # an explicit layer clears the lower level's layers
    assert (single.vl.hidden_layer, single.vl.layers) == (-2, None)
    assert with_overrides(weighted, {"vl.layers": None}).vl.layers == "-6:0.7,-16:0.3"  # None: unset
    with pytest.raises(ConfigError, match="both set in run r1"):
        with_overrides(Config(), {"vl.hidden_layer": -2, "vl.layers": "-4:1"}, "run r1")


def test_mode_fields_are_built_from_the_modules_mode_lists():
    """Each mode list and limit is defined once, in the module that implements it; config's types come from it."""
    from typing import get_args

    from llm_dit.config.settings import EncoderConfig, VLConfig
    from llm_dit.maths.blend import BLEND_MODES, CAPTION_LIMIT, RESAMPLE_MODES
    from llm_dit.maths.normalize import NORMALIZATION_MODES
    from llm_dit.maths.outliers import OUTLIER_MODES
    from llm_dit.maths.sinks import SINK_RATIO, SINK_ROW_MODES
    from llm_dit.models.text import LONG_PROMPT_MODES
    from llm_dit.models.vl import TOKEN_MODES

    fields = {**VLConfig.model_fields, **{f"encoder.{k}": v for k, v in EncoderConfig.model_fields.items()}}
    for key, modes in {
        "blend": tuple(BLEND_MODES),
        "resample": RESAMPLE_MODES,
        "normalize": NORMALIZATION_MODES,
        "outlier_masking": OUTLIER_MODES,
        "sink_rows": SINK_ROW_MODES,
        "token_mode": TOKEN_MODES,
        "encoder.long_prompt_mode": LONG_PROMPT_MODES,
    }.items():
        assert get_args(fields[key].annotation) == modes, key
    assert Config().vl.sink_ratio == SINK_RATIO
    assert with_overrides(Config(), {"encoder.max_length": CAPTION_LIMIT}).encoder.max_length == CAPTION_LIMIT
    with pytest.raises(ConfigError, match=re.escape("encoder.max_length")):
        with_overrides(Config(), {"encoder.max_length": CAPTION_LIMIT + 1})


def test_text_encode_takes_the_encoder_settings_with_the_config_defaults():
    """`TextEncoder.encode` takes explicit settings (text.py sits below config.py), defaulting as config does."""
    import inspect

    from llm_dit.config.settings import EncoderConfig
    from llm_dit.models.text import TextEncoder

    params = inspect.signature(TextEncoder.encode).parameters
    defaults = EncoderConfig().model_dump(exclude={"device", "dtype"})
    assert {k: params[k].default for k in defaults} == defaults


def test_modules_below_config_never_import_it():
    """config builds its types from the mode names in core.modes: no module of the packages below it (core, maths,
    models) imports config, at module level or inside a function, or the package would have an import cycle."""
    from ..test_architecture import imports, modules

    below = {n: p for n, p in modules().items() if n.split(".")[0] in ("core", "maths", "models")}
    assert below and not {n: d for n, p in below.items() if (d := {i for i in imports(n, p) if i.startswith("config")})}


def test_models_env_locates_the_default_hub_ids_in_the_zoo_and_leaves_given_paths_alone(zoo, monkeypatch, tmp_path):
    monkeypatch.setenv("LLM_DIT_MODELS", "tiny")
    cfg = load_config()
    assert (cfg.models.zimage, cfg.models.vl) == (str(zoo / "zimage"), str(zoo / "qwen3-vl"))
    mine = str(tmp_path / "my-zimage")
    assert load_config(overrides={"models.zimage": mine}).models.zimage == mine
    assert load_config(overrides={"models.zimage": mine}).models.vl == str(zoo / "qwen3-vl")
    monkeypatch.setenv("LLM_DIT_MODELS", "huge")
    with pytest.raises(ConfigError, match=r"unknown \$LLM_DIT_MODELS 'huge' \(valid: tiny, small, or unset\)"):
        load_config()
    monkeypatch.setenv("LLM_DIT_MODELS", "")
    assert load_config().models.zimage == "Tongyi-MAI/Z-Image-Turbo"


def test_models_env_is_recorded_as_the_folder_that_was_used(zoo, cli, monkeypatch, tmp_path):
    import json

    monkeypatch.setenv("LLM_DIT_MODELS", "tiny")
    r = cli("generate", "-p", "x", "-o", tmp_path / "x.png", "--width", "32", "--height", "32", "--steps", "1")
    assert r.code == 0, r.err
    record = json.loads((tmp_path / "x.json").read_text())
    assert record["settings"]["models.zimage"] == str(zoo / "zimage")
    assert record["models"]["zimage"]["path"] == str((zoo / "zimage").resolve())
