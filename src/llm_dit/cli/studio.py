"""`llm-dit studio`: the web page and HTTP API over warm models (`llm_dit.studio`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..config.options import Given, takes
from .common import MODELS, console


@takes(*MODELS, "low-memory", "generation", "conditioning")
def studio(
    given: Given,
    host: Annotated[str, typer.Option("--host", help="Address to bind; another than the loopback needs --token.")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option("--port", help="Port to listen on.", min=0, max=65535)] = 7860,
    workspace: Annotated[
        Path, typer.Option("--workspace", help="Folder of inputs, uploads, outputs and sweeps; nothing outside it.")
    ] = Path("studio"),
    token: Annotated[
        str | None,
        typer.Option("--token", envvar="LLM_DIT_STUDIO_TOKEN", help="Every request must carry it (header or ?token=)."),
    ] = None,
) -> None:
    """Serve the studio: a local web page and HTTP API over warm models.

    The settings given here are the page's defaults. Stops with Ctrl-C."""
    from ..studio.app import check_bind, serve

    check_bind(host, token)
    serve(given.config(), workspace, host, port, token, say=lambda m: console.print(m, highlight=False))
