"""Model surgery with forward hooks: read hidden states and stop the forward pass early.

Hidden-layer indices follow transformers' `hidden_states` convention for a decoder of N layers: N + 1 entries,
`[0]` the input of layer 0 (embeddings, with image features already scattered in for Qwen3-VL), `[k]` the output
of layer k-1, `[N]` (= `[-1]`) the final-normed output. For Qwen3-VL `[k]` is read before DeepStack adds the
vision features, exactly as transformers records it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from ..core.errors import UserError


class _StopForward(Exception):
    """Raised by a hook once every requested layer is captured: nothing above it runs."""


def layer_position(index: int, num_layers: int) -> int:
    """Map a `hidden_states` index (negative allowed) to its position 0..num_layers; error if out of range."""
    pos = index + num_layers + 1 if index < 0 else index
    if not 0 <= pos <= num_layers:
        raise UserError(
            f"hidden layer {index} is out of range for a model with {num_layers} layers "
            f"(valid: {-(num_layers + 1)}..{num_layers})"
        )
    return pos


def capture_hidden_states(
    decoder: nn.Module, indices: Iterable[int], forward: Callable[[], Any]
) -> dict[int, torch.Tensor]:
    """Run `forward()` and return `{index: hidden_states[index]}` for a decoder with `.layers` and `.norm`.

    The forward pass stops right after the deepest requested layer: the layers above it, the final norm (unless
    index -1 / N is asked for) and any LM head never run.
    """
    layers: nn.ModuleList = decoder.layers
    n = len(layers)
    wanted = {i: layer_position(i, n) for i in indices}
    deepest = max(wanted.values())
    by_position: dict[int, torch.Tensor] = {}

    def record(pos: int, tensor: torch.Tensor) -> None:
        by_position[pos] = tensor
        if pos == deepest:
            raise _StopForward

    handles = []
    if 0 in wanted.values():

        def pre_hook(_m: nn.Module, args: tuple, kwargs: dict) -> None:
            record(0, args[0] if args else kwargs["hidden_states"])

        handles.append(layers[0].register_forward_pre_hook(pre_hook, with_kwargs=True))
    for pos in sorted(set(wanted.values()) - {0}):
        module = decoder.norm if pos == n else layers[pos - 1]

        def hook(_m: nn.Module, _args: tuple, output: Any, pos: int = pos) -> None:
            record(pos, output[0] if isinstance(output, tuple) else output)

        handles.append(module.register_forward_hook(hook))
    try:
        forward()
    except _StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    return {i: by_position[p] for i, p in wanted.items()}
