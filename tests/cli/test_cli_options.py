"""The command line from one option table (`llm_dit.config.options`): every list option of every command accepts `a,b`
and repeated flags alike, errors name the flags beside the config keys, and docs/cli.md documents exactly the
flags the commands have."""

from __future__ import annotations

import inspect
import json
import re
from typing import Any

import pytest
import typer

from llm_dit.cli.app import app
from llm_dit.config.options import OPTIONS, Param, command_params, split_items, with_flags

from ..conftest import REPO

REF = REPO / "examples" / "reference-images" / "house2.png"
REF2 = REPO / "examples" / "reference-images" / "sunset.png"
TINY = ["--models", "tiny", "--width", "64", "--height", "64", "--steps", "2"]


def commands() -> dict[str, Any]:
    """Every command of `llm-dit` (typer's click commands) by its full name (`sweep`, `models tiny`, ...)."""
    found: dict[str, Any] = {}

    def walk(group: Any, prefix: str) -> None:
        for name, cmd in group.commands.items():
            if hasattr(cmd, "commands"):
                walk(cmd, f"{prefix}{name} ")
            else:
                found[prefix + name] = cmd

    walk(typer.main.get_command(app), "")
    return found


def table_params(cmd: Any) -> list[Param]:
    """The table options a command was built with (`options.takes`), none for a command built without."""
    return list(getattr(inspect.unwrap(cmd.callback, stop=lambda f: hasattr(f, "params")), "params", []))


def list_options() -> list[tuple[str, Param]]:
    """(command, table row) of every list option of every command."""
    out = []
    for name, cmd in commands().items():
        params = {p.name: p for p in table_params(cmd)}
        for opt in cmd.params:
            if getattr(opt, "multiple", False):
                assert opt.name in params, f"{name} {opt.opts}: a list option outside the table"
                out.append((name, params[opt.name]))
    return out


def parsed_by(command: str, *args: str) -> dict[str, Any]:
    """What the real command's parser makes of `args` (its required options and arguments given dummies)."""
    cmd = commands()[command]
    required = [a for p in cmd.params if p.required for a in ([p.opts[0]] if p.opts[0].startswith("-") else []) + ["x"]]
    return cmd.make_context(command, [*required, *args]).params


def test_the_table_gives_the_commands_their_list_options():
    found = {(name, p.flags) for name, p in list_options()}
    assert ("inspect", ("--layers",)) in found and ("sweep", ("--alphas",)) in found
    assert ("sweep", ("-i", "--image")) in found and ("generate", ("--inject-layers",)) in found
    assert ("generate", ("--blend-option",)) in found and ("sweep", ("--blend-option",)) in found
    # every command that takes the conditioning settings takes all of their list options
    assert {n for n, p in list_options() if p.flags == ("--vl-layers",)} == {
        "generate",
        "sweep",
        "style extract",
        "studio",
    }


@pytest.mark.parametrize(("command", "param"), list_options(), ids=lambda v: getattr(v, "name", v))
def test_every_list_option_accepts_commas_and_repeated_flags_alike(command, param):
    """`--x a,b` and `--x a --x b` give the same value, which is not the one item a last-flag-wins parser keeps."""
    a, b = param.option.examples
    assert a and b, f"{command} {param.flags}: give the row two examples"
    flag = param.flags[-1]

    def parsed(*args: str):
        return param.parse(parsed_by(command, *args)[param.name])

    repeated = parsed(flag, a, flag, b)
    if param.sep is None:  # not split: an item may hold the separator
        assert repeated == [a, b] and parsed(flag, f"{a},{b}") == [f"{a},{b}"]
        return
    assert parsed(flag, f"{a}{param.sep}{b}") == repeated
    assert parsed(flag, f"{a}{param.sep}", flag, b) == repeated  # empty items are dropped
    assert repeated != parsed(flag, b)
    assert parsed() is None


def test_split_items_accumulates_in_order():
    assert split_items(["-2,-6", " -8 "], ",") == ["-2", "-6", "-8"]
    assert split_items(["linear:0,0.6", "constant;cosine:0,1"], ";") == ["linear:0,0.6", "constant", "cosine:0,1"]
    assert split_items(["a, b"], None) == ["a, b"]


def test_a_bad_list_item_is_refused_naming_the_flag(cli, tmp_path):
    r = cli("sweep", "-p", "x", "--alphas", "0.3,abc", "--dry-run")
    assert r.code == 2 and "bad --alphas 'abc': expected a number" in r.err
    r = cli("sweep", "-p", "x", "--blend-option", "p=4,eps", "--dry-run")
    assert r.code == 2 and "bad --blend-option 'eps': expected KEY=VALUE" in r.err


def test_inspect_layers_commas_and_repeats_inspect_the_same_layers(cli, zoo):
    # an image and prompt no other test extracts: inspect fills the tensor cache that extract's tests read
    args = ["inspect", "--models", "tiny", "-i", REF2, "-p", "a quiet harbour", "--json"]
    commas, repeated = cli(*args, "--layers", "-2,-6"), cli(*args, "--layers", "-2", "--layers", "-6")
    assert commas.code == repeated.code == 0, commas.err + repeated.err
    assert list(json.loads(commas.out)["layers"]) == list(json.loads(repeated.out)["layers"]) == ["-2", "-6"]


def test_sweep_list_options_commas_and_repeats_plan_the_same_runs(cli, zoo):
    """Images, axes, DiT blocks and blend options: both forms give the same run list (before, a repeated
    --inject-layers or --alphas kept only its last value and a comma list of images was one path)."""
    base = ["sweep", *TINY, "-p", "a fox", "--blend", "gram", "--dry-run", "--json"]
    commas = ["-i", f"{REF},{REF2}", "--alphas", "0.3,0.6", "--inject-layers", "0,1"]
    commas += ["--blend-option", "iterations=4,lr=0.1", "--layers", "-2,-6"]
    repeated = ["-i", REF, "-i", REF2, "--alphas", "0.3", "--alphas", "0.6", "--inject-layers", "0"]
    repeated += ["--inject-layers", "1", "--blend-option", "iterations=4", "--blend-option", "lr=0.1"]
    repeated += ["--layers", "-2", "--layers", "-6"]
    a, b = cli(*base, *commas), cli(*base, *repeated)
    assert a.code == b.code == 0, a.err + b.err
    runs_a, runs_b = json.loads(a.out)["run_list"], json.loads(b.out)["run_list"]
    assert runs_a == runs_b and len({r["image"] for r in runs_a}) == 3  # two images and the baselines' None
    variant = next(r for r in runs_a if r["kind"] == "variant")["settings"]
    assert variant["vl.inject_layers"] == [0, 1] and variant["vl.blend_options"] == {"iterations": 4, "lr": 0.1}
    assert sorted({r["settings"].get("vl.alpha") for r in runs_a if r["kind"] == "variant"}) == [0.3, 0.6]
    assert sorted({r["settings"].get("vl.hidden_layer") for r in runs_a if r["kind"] == "variant"}) == [-6, -2]


# ---------------------------------------------------------------------------------------- errors name flags


def test_with_flags_puts_each_commands_flags_beside_the_keys():
    cmds = commands()

    def named(command: str, message: str) -> str:
        return with_flags(message, table_params(cmds[command]))

    bad = "bad value for 'vl.hidden_layer' in the overrides (command-line settings): must be an integer"
    assert "'vl.hidden_layer' (--vl-layer) in" in named("generate", bad)
    assert "'vl.hidden_layer' (--layer) in" in named("extract", bad)
    assert "'vl.hidden_layer' (--vl-layer, --layers) in" in named("sweep", bad)
    assert named("encode", bad) == bad  # encode has no flag for it
    phrase = "a neutral extraction only acts with vl.blend 'style_delta'"
    assert named("generate", phrase) == f"{phrase} (vl.blend: --blend)"
    resume = "DIR already holds a sweep: finish it with 'resume', or use a new directory"
    assert "with 'resume' (--resume), or" in named("sweep", resume)
    tensor = "embeddings e.safetensors has no 'embeddings' tensor (has: rows)"
    assert named("generate", tensor) == tensor  # a tensor named like an argument is not the argument
    assert named("sweep", "set 'vl.alpha' and 'vl.alpha'") == "set 'vl.alpha' (--alpha, --alphas) and 'vl.alpha'"


def test_cli_errors_name_the_flag_after_the_key(cli, zoo, tmp_path):
    r = cli("generate", *TINY, "-p", "x", "--width", "40", "-o", tmp_path / "x.png")
    assert r.code == 2 and "'generation.width' (--width) in the overrides" in r.err
    r = cli("extract", "--models", "tiny", "-i", REF, "--outlier-threshold", "0.5", "-o", tmp_path / "x.st")
    assert r.code == 2 and "'vl.outlier_threshold' (--outlier-threshold)" in r.err
    args = ["sweep", *TINY, "-p", "a fox", "-o", tmp_path / "sw"]
    assert cli(*args).code == 0
    r = cli(*args)
    assert r.code == 2 and "finish it with 'resume' (--resume)" in r.err


# ------------------------------------------------------------------------------------- docs/cli.md is true

DOCS = (REPO / "docs" / "cli.md").read_text()


def all_flags() -> set[str]:
    flags = {"--debug", "--help"}
    for cmd in commands().values():
        for p in cmd.params:
            flags |= {f for f in [*p.opts, *getattr(p, "secondary_opts", [])] if f.startswith("--")}
    return flags


def test_every_flag_in_the_docs_exists_and_every_flag_is_documented():
    documented = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", DOCS)) | {"--help"}
    assert documented - all_flags() - {"--no-"} == set(), "flags in docs/cli.md that no command has"
    assert all_flags() - documented == set(), "flags no one documented in docs/cli.md"


def test_the_key_table_lists_every_flag_of_every_key():
    """Each config key's row of docs/cli.md's key table names every flag the table gives it (sweep axes too)."""
    rows = {}
    for line in DOCS.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        for key in re.findall(r"`([a-z]+\.[a-z_]+)`", cells[0]) if line.startswith("| `") else []:
            rows[key] = cells[2]
    for option in OPTIONS:
        if option.config_key:
            assert option.key in rows, f"{option.key} has no row in docs/cli.md"
            for flag in [*option.flags, *([option.axis] if option.axis else [])]:
                assert flag.split("/")[0] in rows[option.key], (option.key, flag)


def test_each_command_section_names_its_own_flags():
    """`## \\`cmd\\`` of docs/cli.md names every option of the command (by its long or short flag), except the
    model options every model-loading command shares, documented once."""
    shared = {"--config", "--profile", "--models", "--zimage", "--vl", "--help"}
    sections = dict(re.findall(r"^## `([a-z -]+)`\n(.*?)(?=^## |\Z)", DOCS, re.M | re.S))
    for name, cmd in commands().items():
        if name not in sections:
            continue
        options = [p.opts for p in cmd.params if p.opts[0].startswith("-") and not shared & set(p.opts)]
        missing = [
            o for o in options if not any(re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", sections[name]) for f in o)
        ]
        assert not missing, f"docs/cli.md's `{name}` section does not name {missing}"


def test_sweep_takes_every_settings_flag_of_generate_as_a_fixed_value_or_an_axis():
    generate = {f for p in command_params(["generation", "conditioning"])[0] for f in p.flags}
    sweep = {f for p in command_params(["generation", "conditioning"], axes=True)[0] for f in p.flags}
    assert generate <= sweep


def test_help_of_every_mode_option_lists_the_modules_mode_tuple(cli):
    """The valid values in --help come from the tuples the modes are defined by (and typer renders every help)."""
    from llm_dit.maths.blend import BLEND_MODES, RESAMPLE_MODES
    from llm_dit.maths.normalize import NORMALIZATION_MODES
    from llm_dit.maths.outliers import OUTLIER_MODES
    from llm_dit.models.vl import TOKEN_MODES

    modes = {
        "vl.blend": tuple(BLEND_MODES),
        "vl.resample": RESAMPLE_MODES,
        "vl.normalize": NORMALIZATION_MODES,
        "vl.outlier_masking": OUTLIER_MODES,
        "vl.token_mode": TOKEN_MODES,
    }
    seen = set()
    for name, cmd in commands().items():
        helps = {p.name: p.help for p in cmd.params}
        for p in table_params(cmd):
            if p.option.key in modes:
                assert f"One of: {', '.join(modes[p.option.key])}." in helps[p.name], (name, p.flags)
                seen.add(p.option.key)
        r = cli(*name.split(), "--help")
        assert r.code == 0 and "Usage" in r.out, (name, r.err)
    assert seen == set(modes)
