"""Timestep-dependent blend strength: one alpha per denoising step, applied through diffusers' step callback.

A schedule maps step i of N to an alpha. With t_i = i/(N−1) (t = 0 when N = 1):

    constant              α_i = base alpha (the configured `alpha`)
    linear:A,B            α_i = A + (B − A)·t_i                      ramp from A at the first step to B at the last
    cosine:A,B            α_i = B + (A − B)·(1 + cos(π·t_i))/2       A to B, flat at both ends
    step:F,BEFORE,AFTER   α_i = BEFORE if i < F·N else AFTER          the first fraction F of the steps use BEFORE
    list:A1,...,AN        α_i = A_{i+1}                              explicit; needs exactly N values

Values must be finite and ≥ 0 (the blend mode checks its own upper bound), F ∈ [0, 1]. Endpoints are exact:
linear and cosine give exactly A at the first step and exactly B at the last.

`schedule_callback` applies the alphas without a custom loop: diffusers' Z-Image pipelines call
`callback_on_step_end` after every step and take the `prompt_embeds` it returns as the conditioning of the steps
that follow (`prompt_embeds = callback_outputs.pop("prompt_embeds", prompt_embeds)` in the denoising loop).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..core.errors import UserError, check_choice
from ..core.modes import SCHEDULES

if TYPE_CHECKING:
    from torch import Tensor
from ..core.numerics import check_number

_ARITY = {
    "constant": (0, "no values"),
    "linear": (2, "START,END"),
    "cosine": (2, "START,END"),
    "step": (3, "FRACTION,BEFORE,AFTER"),
}


def _spell(x: object) -> str:
    """A number as typed on the CLI, without loss: 0.0 -> "0", 0.125 -> "0.125"."""
    return repr(float(x)).removesuffix(".0") if isinstance(x, int | float) else repr(x)


def _times(steps: int) -> list[float]:
    """t_i = i/(N−1) for i in 0..N−1; [0.0] for N = 1."""
    return [i / (steps - 1) if steps > 1 else 0.0 for i in range(steps)]


@dataclass(frozen=True)
class Schedule:
    """A parsed alpha schedule: `kind` (one of SCHEDULES) and its numbers, validated on construction."""

    kind: str
    params: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        check_choice(self.kind, SCHEDULES, "alpha schedule")
        n = len(self.params)
        expected, names = _ARITY.get(self.kind, (n, ""))
        if n != expected:
            raise UserError(f"alpha schedule {self.kind!r} takes {names}, got {n} value(s): {self}")
        if self.kind == "list" and n == 0:
            raise UserError("alpha schedule 'list' needs one value per step, e.g. list:0.5,0.4,0.3")
        for x in self.params:
            check_number(x, f"alpha schedule {self}: values", lambda v: v >= 0, "finite numbers >= 0")
        if self.kind == "step" and not self.params[0] <= 1:
            raise UserError(f"alpha schedule {self}: the step fraction must be in [0, 1], got {self.params[0]:g}")

    def __str__(self) -> str:
        """The CLI spelling, e.g. `linear:0,0.6` (what a sidecar records)."""
        return self.kind + (":" + ",".join(map(_spell, self.params)) if self.params else "")

    def alphas(self, steps: int, base_alpha: float) -> list[float]:
        """The alpha of each of `steps` denoising steps (formulas in the module docstring)."""
        check_number(steps, f"alpha schedule {self}: steps", lambda n: n >= 1, "a positive int", integer=True)
        if self.kind == "constant":
            return [check_number(base_alpha, "alpha", lambda _: True, "a finite number")] * steps
        p = [float(x) for x in self.params]
        if self.kind == "linear":
            a, b = p
            return [(1 - t) * a + t * b for t in _times(steps)]
        if self.kind == "cosine":
            a, b = p
            weights = [(1 + math.cos(math.pi * t)) / 2 for t in _times(steps)]
            return [w * a + (1 - w) * b for w in weights]
        if self.kind == "step":
            f, before, after = p
            return [before if i < f * steps else after for i in range(steps)]
        if len(p) != steps:
            raise UserError(f"alpha schedule {self} has {len(p)} values but the run has {steps} steps")
        return p


def parse_schedule(spec: str) -> Schedule:
    """`KIND[:V1,V2,...]` → Schedule, e.g. `constant`, `linear:0,0.6`, `step:0.5,0.3,0`, `list:0.5,0.4`."""
    if not isinstance(spec, str) or not spec.strip():
        raise UserError(f"empty alpha schedule; valid: {', '.join(SCHEDULES)}")
    kind, sep, rest = spec.strip().partition(":")
    kind = check_choice(kind.strip().lower(), SCHEDULES, "alpha schedule")
    params: list[float] = []
    if sep:
        for part in rest.split(","):
            try:
                params.append(float(part))
            except ValueError:
                raise UserError(f"bad number {part.strip()!r} in alpha schedule {spec!r}") from None
    return Schedule(kind, tuple(params))


class ScheduleCallback:
    """diffusers `callback_on_step_end` that switches the conditioning to `embeds_for_alpha(alphas[i + 1])`
    after step i whenever the alpha changes (and returns nothing otherwise); `used[i]` is the alpha step i
    actually ran with.

    Every distinct alpha is evaluated once, when the callback is built, so a bad alpha fails before denoising
    and the loop itself only hands out cached tensors (cast to the DiT's device and dtype). Step 0 of a new run
    resets `used`, so one callback can serve several runs with the same steps.
    """

    def __init__(self, embeds_for_alpha: Callable[[float], list[Tensor]], alphas: list[float]) -> None:
        if not alphas:
            raise UserError("an alpha schedule needs at least one step")
        self.alphas = [float(a) for a in alphas]
        self._embeds = {a: list(embeds_for_alpha(a)) for a in dict.fromkeys(self.alphas)}
        self._cast: dict[float, list[Tensor]] = {}
        self._in_force = self.alphas[0]
        self.used: list[float] = []

    @property
    def initial(self) -> list[Tensor]:
        """The conditioning for step 0 (pass it as `prompt_embeds`)."""
        return self._embeds[self.alphas[0]]

    def __call__(self, pipe, i: int, t, kwargs: dict) -> dict:
        if i >= len(self.alphas):
            raise RuntimeError(f"alpha schedule has {len(self.alphas)} steps but the pipeline ran step {i}")
        if i == 0:
            self._in_force, self.used = self.alphas[0], []
        self.used.append(self._in_force)
        nxt = self.alphas[i + 1] if i + 1 < len(self.alphas) else self._in_force
        if nxt == self._in_force:
            return {}
        if nxt not in self._cast:
            dev, dtype = pipe.transformer.device, pipe.transformer.dtype
            self._cast[nxt] = [e.to(dev, dtype) for e in self._embeds[nxt]]
        self._in_force = nxt
        return {"prompt_embeds": self._cast[nxt]}


def schedule_callback(embeds_for_alpha: Callable[[float], list[Tensor]], alphas: list[float]) -> ScheduleCallback:
    """The step callback for `alphas` (one per step); the caller passes `embeds_for_alpha(alphas[0])` (or
    `callback.initial`) as the starting `prompt_embeds`."""
    return ScheduleCallback(embeds_for_alpha, alphas)
