"""`llm-dit models` (the offline random-weight models) and `llm-dit config show`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..config.options import Given, takes
from ..core.errors import UserError
from ..core.modes import ZOO_PRESETS


def new_folder(out: Path) -> None:
    """Refuse an output folder that holds anything; remove an empty one, which the installer creates whole."""
    if out.exists() and any(out.iterdir()):
        raise UserError(f"output folder is not empty: {out}")
    if out.exists():
        out.rmdir()


def models_tiny(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to create.")],
    preset: Annotated[str, typer.Option("--preset", help=f"One of: {', '.join(ZOO_PRESETS)}.")] = "tiny",
) -> None:
    """Build random-weight Z-Image and Qwen3-VL models of the real architectures, offline."""
    from ..models.zoo import install_zoo

    if preset not in ZOO_PRESETS:
        raise UserError(f"unknown preset '{preset}' (valid: {', '.join(ZOO_PRESETS)})")
    new_folder(out)
    install_zoo(out, preset)
    print(out / "zimage")
    print(out / "qwen3-vl")


def models_metrics(out: Annotated[Path, typer.Option("--out", "-o", help="Folder to create.")]) -> None:
    """Build the tiny random-weight metric models, offline: what --metric-models tiny uses.

    CLIP, SigLIP, DINOv2, a CSD checkpoint and its conversion."""
    from ..models.zoo import install_built
    from ..scoring.metriczoo import build_metric_zoo

    new_folder(out)
    install_built(out, build_metric_zoo, {"name": "metrics"})
    print(out)


def models_convert_csd(
    checkpoint: Annotated[Path, typer.Argument(help="CSD checkpoint (pytorch_model.bin / checkpoint.pth).")],
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Folder to create (default: where --metric-models default looks)."),
    ] = None,
) -> None:
    """Convert the published CSD checkpoint to the csd metric model's folder, without running pickle code.

    The folder is a CLIPVisionModelWithProjection."""
    from ..scoring.csd import convert_csd
    from ..scoring.scorer import default_csd_dir

    print(convert_csd(checkpoint, out or default_csd_dir()))


@takes("config")
def config_show(given: Given) -> None:
    """Print the resolved config of a profile as a config file (`--config` reads it back)."""
    from ..config.settings import as_toml

    print(as_toml(given.config(), given.get("profile", "default")), end="")
