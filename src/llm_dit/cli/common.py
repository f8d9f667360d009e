"""What the commands of `llm-dit` share: the stderr console, the option tags of the commands that load models, and
the options several commands take."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from ..config.options import FLAG

console = Console(stderr=True, soft_wrap=True)  # a message is one line, whatever the width (logs, pipes)

# Option tags (`llm_dit.config.options`) of every command that loads models: config file, profile, zoo, model paths.
MODELS = ("config", "zoo", "zimage", "vl-model")
TEXT_MODEL = ("config", "zoo", "zimage")  # commands that run only the text encoder

Output = Annotated[Path, typer.Option("--output", "-o", help="safetensors file to write.")]
RefImage = Annotated[Path, typer.Option("--image", "-i", help="Reference image.")]
Json = Annotated[bool, typer.Option("--json", help="Print a JSON summary on stdout.", metavar=FLAG)]
SweepDirArg = Annotated[Path, typer.Argument(help="A sweep directory.")]
