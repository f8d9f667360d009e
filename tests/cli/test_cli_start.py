"""`llm-dit` starts at once: help, flag and choice errors, `config show` and refusals that need no model import no
torch, diffusers or transformers (the mode names they show live in `core.modes`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from llm_dit.core import modes

HEAVY = ("torch", "diffusers", "transformers", "accelerate", "safetensors", "numpy", "PIL", "scipy")

# Each command in one fresh interpreter, in turn; the modules loaded after all of them are printed as JSON.
PROGRAM = """
import json, sys
from llm_dit.cli.app import main
commands, heavy, codes = json.loads(sys.argv[1]), json.loads(sys.argv[2]), []
for args in commands:
    sys.argv = ["llm-dit", *args]
    try:
        main()
        codes.append(0)
    except SystemExit as e:
        codes.append(e.code)
print(json.dumps({"codes": codes, "heavy": [m for m in heavy if m in sys.modules]}), file=sys.stderr)
"""
COMMANDS = [
    ["--help"],
    *([command, "--help"] for command in ("generate", "sweep", "eval", "studio", "bench", "style", "config")),
    ["config", "show"],
    ["generate", "--blnd", "x"],  # a typo in a flag
    ["generate", "-p", "x", "-o", "x.png", "--blend", "nope"],  # a choice error
    ["generate", "-p", "x", "-o", "x.png", "--steps", "0"],  # a setting out of range
    ["stats", "--layer", "-2"],  # a refusal that needs no model
]


def test_help_errors_and_config_show_import_no_model_library(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "LLM_DIT_MODELS"}
    r = subprocess.run(
        [sys.executable, "-c", PROGRAM, json.dumps(COMMANDS), json.dumps(HEAVY)],
        capture_output=True, text=True, cwd=tmp_path, env=env, check=False,
    )  # fmt: skip
    result = json.loads(r.stderr.strip().splitlines()[-1])
    assert result["codes"] == [0] * 9 + [2, 2, 2, 2], r.stderr
    assert result["heavy"] == [], f"imported by help, errors or config show: {result['heavy']}"


@pytest.mark.parametrize(
    "table, names",
    [
        ("llm_dit.maths.blend:BLEND_MODES", modes.BLEND_MODE_NAMES),
        ("llm_dit.maths.steer:DIRECTIONS", modes.DIRECTION_METHODS),
        ("llm_dit.models.zoo:PRESETS", modes.ZOO_PRESETS),
        ("llm_dit.experiment.run:EXECUTORS", modes.EXECUTOR_NAMES),
    ],
)
def test_every_table_keyed_by_mode_is_keyed_by_the_names_the_cli_shows(table, names):
    import importlib

    module, name = table.split(":")
    assert tuple(getattr(importlib.import_module(module), name)) == names
