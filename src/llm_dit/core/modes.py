"""Names and limits that the option table (`config.options`) shows and the features below it act on, kept here so
that building the CLI's options imports no feature (and no torch). Each feature imports its own from here."""

EXECUTOR_NAMES = ("local", "ray")
"""Where a sweep's runs execute: `sweep.runner.run_local` or `sweep.distributed.run_on_ray` (`experiment.run`)."""

ADHERENCE_TOLERANCE = 0.01
"""How much prompt adherence (the CLIP-T cosine, or SigLIP-T's) a method may lose against caption and still be
called better: the lower bound of the paired difference's CI must be >= -0.01 (a cosine difference; CLIP ViT-L/14
scores of matching prompts sit around 0.25-0.30, so 0.01 is a few percent of the score)."""

INSPECT_LAYERS = (-2, -6, -8)
"""`llm-dit inspect`'s survey of hidden layers, to which it adds the configured VL layers."""
