"""The `llm-dit` command: a thin layer that parses options, resolves the config and calls the Python API.

Every failure caused by input (a file, a value, a model) is a `UserError`: one line on stderr, exit code 2, no
traceback (`--debug` shows it).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from .config import Config, load_config
from .errors import UserError

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    help="Condition Z-Image on a reference image through Qwen3-VL hidden states.",
)  # fmt: skip
models_app = typer.Typer(no_args_is_help=True, help="Build or inspect models.")
config_app = typer.Typer(no_args_is_help=True, help="Show the resolved configuration.")
app.add_typer(models_app, name="models")
app.add_typer(config_app, name="config")

console = Console(stderr=True)
_state = {"debug": False}

# Options shared by every command that loads models, with the same names everywhere.
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="Config TOML (default: packaged config.toml).")]
ProfileOpt = Annotated[str, typer.Option("--profile", help="Profile in the config file.")]
ModelsOpt = Annotated[
    str | None, typer.Option("--models", help="Use a built-in zoo preset ('tiny' or 'small') for both models.")
]
ZImageOpt = Annotated[str | None, typer.Option("--zimage", help="Z-Image folder or hub id (models.zimage).")]
VLOpt = Annotated[str | None, typer.Option("--vl", help="Qwen3-VL folder or hub id (models.vl).")]
LowMemOpt = Annotated[
    bool | None, typer.Option("--low-memory/--no-low-memory", help="Release components after use (models.low_memory).")
]


@app.callback()
def _root(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False) -> None:
    _state["debug"] = debug


def resolve(
    config: Path | None, profile: str, models: str | None, zimage: str | None, vl: str | None, **flags: Any
) -> Config:
    """Config from file + profile, then `--models`, then explicit flags (`section__key=value`)."""
    overrides = {k.replace("__", "."): v for k, v in flags.items()}
    if models is not None:
        from .zoo import PRESETS, zoo_dir

        if models not in PRESETS:
            raise UserError(f"unknown --models preset '{models}' (valid: {', '.join(PRESETS)})")
        root = zoo_dir(models)
        overrides |= {"models.zimage": str(root / "zimage"), "models.vl": str(root / "qwen3-vl")}
    overrides |= {"models.zimage": zimage or overrides.get("models.zimage"),
                  "models.vl": vl or overrides.get("models.vl")}  # fmt: skip
    return load_config(config, profile, overrides)


@models_app.command("tiny")
def models_tiny(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to create.")],
    preset: Annotated[str, typer.Option("--preset", help="tiny or small.")] = "tiny",
) -> None:
    """Build random-weight Z-Image and Qwen3-VL models of the real architectures, offline."""
    from .zoo import PRESETS, install_zoo

    if preset not in PRESETS:
        raise UserError(f"unknown preset '{preset}' (valid: {', '.join(PRESETS)})")
    if out.exists() and any(out.iterdir()):
        raise UserError(f"output folder is not empty: {out}")
    if out.exists():
        out.rmdir()
    install_zoo(out, preset)
    print(out / "zimage")
    print(out / "qwen3-vl")


@config_app.command("show")
def config_show(config: ConfigOpt = None, profile: ProfileOpt = "default") -> None:
    """Print the resolved config of a profile as TOML-like sections."""
    cfg = load_config(config, profile)
    for section, values in cfg.model_dump().items():
        print(f"[{section}]")
        for key, value in values.items():
            print(f"{key} = {json.dumps(value)}")
        print()


@app.command()
def generate(
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="What to draw.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="PNG to write (a .json sidecar goes next to it).")],
    init_image: Annotated[Path | None, typer.Option("--init-image", help="Image-to-image from this image.")] = None,
    strength: Annotated[float | None, typer.Option(help="Img2img strength (generation.strength).")] = None,
    steps: Annotated[int | None, typer.Option(help="Denoising steps (generation.steps).")] = None,
    width: Annotated[int | None, typer.Option(help="Width, multiple of 16 (generation.width).")] = None,
    height: Annotated[int | None, typer.Option(help="Height, multiple of 16 (generation.height).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the CPU generator (generation.seed).")] = None,
    guidance: Annotated[float | None, typer.Option(help="CFG scale, 0 = off (generation.guidance).")] = None,
    shift: Annotated[float | None, typer.Option(help="Scheduler shift (generation.shift).")] = None,
    config: ConfigOpt = None,
    profile: ProfileOpt = "default",
    models: ModelsOpt = None,
    zimage: ZImageOpt = None,
    vl: VLOpt = None,
    low_memory: LowMemOpt = None,
) -> None:
    """Generate one image; writes OUTPUT and OUTPUT.json with every setting that made it."""
    from .files import load_image, save_image
    from .generate import Generator

    if output.suffix.lower() != ".png":
        raise UserError(f"output must be a .png file: {output}")
    cfg = resolve(
        config, profile, models, zimage, vl, generation__strength=strength, generation__steps=steps,
        generation__width=width, generation__height=height, generation__seed=seed,
        generation__guidance=guidance, generation__shift=shift, models__low_memory=low_memory,
    )  # fmt: skip
    init = load_image(init_image, "init image") if init_image else None
    result = Generator(cfg).generate(prompt, init_image=init)
    save_image(result.image, output, result.record | {"output": str(output)})
    print(output)


def _quiet_libraries() -> None:
    """Keep the terminal for llm-dit's own output: no per-file progress bars or info logs from HF libraries."""
    import diffusers
    import transformers

    for lib in (transformers, diffusers):
        lib.utils.logging.set_verbosity_error()
        lib.utils.logging.disable_progress_bar()


def main() -> None:
    """Console entry point: runs the app and turns `UserError` into one line and exit code 2."""
    _quiet_libraries()
    try:
        app()
    except UserError as e:
        if _state["debug"]:
            raise
        console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)
