"""`python -m llm_dit` runs the CLI."""

from .cli.app import main

main()
