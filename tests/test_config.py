import re
import tomllib
from pathlib import Path

import pytest

from llm_dit.config import Config, ConfigError, default_config_path, load_config


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
    assert "[generation]" in r.out
