"""`python -m llm_dit` runs the CLI."""

from .cli import main

main()
