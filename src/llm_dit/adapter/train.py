"""Training an adapter: fine-tuning through the frozen DiT with the flow-matching loss, resumable from checkpoints,
and `train_adapter`, the whole procedure (captions, ridge initialisation, optional fine-tuning) a command runs.

Flow matching as diffusers runs Z-Image (`ZImagePipeline.__call__` + `FlowMatchEulerDiscreteScheduler.step`):
the noisy latents at noise level σ ∈ [0, 1] are `x_σ = σ·ε + (1 − σ)·x₀`; the transformer gets the timestep
`(1000 − 1000σ)/1000 = 1 − σ` (0 = pure noise, 1 = clean); the pipeline negates the model output,
`noise_pred = −out`, and the scheduler steps `x_σ' = x_σ + (σ' − σ)·noise_pred`. The exact ODE velocity of the
straight path is `dx_σ/dσ = ε − x₀`, so `noise_pred` must be `ε − x₀`, and the model output `out = x₀ − ε`.
That is the training target (`velocity_target`): with it, one Euler step from σ to 0 gives
`x_σ + σ·(x₀ − ε) = x₀` exactly.

Checkpoints are safetensors with JSON metadata (`files.save_tensors`); never pickle.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from ..core.errors import UserError
from ..core.files import load_image, load_tensors, save_tensors
from ..core.numerics import check_number, check_rows
from ..models.vl import DEFAULT_CAPTION_PROMPT, caption_image
from .fit import paired_rows, ridge_fit
from .model import Adapter, check_raw_rows, tensor_shapes

__all__ = [
    "CHECKPOINT_NAME",
    "DEFAULT_CAPTION_PROMPT",
    "TrainingSample",
    "caption_image",
    "draw_step",
    "finetune",
    "flow_matching_loss",
    "image_latents",
    "model_timestep",
    "noisy_latents",
    "predict_velocity",
    "read_captions",
    "samples_sha256",
    "shift_sigmas",
    "train_adapter",
    "velocity_target",
]

CHECKPOINT_KIND = "adapter_checkpoint"
CHECKPOINT_NAME = "adapter.ckpt.safetensors"


def shift_sigmas(u: Tensor, shift: float) -> Tensor:
    """The scheduler's static shift of noise levels: `σ = s·u / (1 + (s − 1)·u)` (s = 1: unchanged)."""
    return shift * u / (1 + (shift - 1) * u)


def noisy_latents(x0: Tensor, noise: Tensor, sigma: Tensor | float) -> Tensor:
    """`x_σ = σ·ε + (1 − σ)·x₀` (`FlowMatchEulerDiscreteScheduler.scale_noise`)."""
    return sigma * noise + (1 - sigma) * x0


def velocity_target(x0: Tensor, noise: Tensor) -> Tensor:
    """What the Z-Image transformer should output at any σ: `x₀ − ε`. The pipeline steps with `−out` as
    `x_σ' = x_σ + (σ' − σ)·(−out)`, and the path's velocity is `dx_σ/dσ = ε − x₀`, so `−out = ε − x₀`."""
    return x0 - noise


def model_timestep(sigma: Tensor) -> Tensor:
    """The transformer's timestep for noise level σ, computed as the pipeline does from the scheduler's
    `t = 1000σ`: `(1000 − t)/1000 = 1 − σ`."""
    return (1000 - sigma * 1000) / 1000


def predict_velocity(transformer, latents: list[Tensor], sigmas: Tensor, rows: list[Tensor]) -> list[Tensor]:
    """The transformer's output (float32, `[C, H, W]` each) for latents `[C, H, W]` at noise levels `sigmas [B]`
    with caption rows `[n, D]` each, called exactly as `ZImagePipeline` calls it (gradients flow when enabled)."""
    dtype, device = transformer.dtype, transformer.device
    x = [lat.to(device, dtype).unsqueeze(1) for lat in latents]
    t = model_timestep(sigmas.to(device, torch.float32))
    out = transformer(x, t, [r.to(device, dtype) for r in rows], return_dict=False)[0]
    return [o.float().squeeze(1) for o in out]


@dataclass
class TrainingSample:
    """One training image: its clean latents `[C, H, W]` (`image_latents`) and the Qwen3-VL rows `[n, D]` the
    adapter maps to its caption embeddings."""

    latents: Tensor
    rows: Tensor


@torch.no_grad()
def image_latents(pipe, image: Image.Image | str | Path, height: int, width: int) -> Tensor:
    """Clean latents `[C, h, w]` (float32, CPU) of `image` at the generation size, as Z-Image's img2img encodes an
    init image but with the posterior mean: `x ∈ [−1, 1]`, `(E(x).mean − shift_factor)·scaling_factor`."""
    if isinstance(image, str | Path):
        image = load_image(image, "training image")
    multiple = pipe.vae_scale_factor * 2
    if height % multiple or width % multiple or height < multiple or width < multiple:
        raise UserError(f"training size {width}x{height} must be a positive multiple of {multiple}")
    vae = pipe.vae
    x = pipe.image_processor.preprocess(image, height=height, width=width).to(vae.device, vae.dtype)
    mean = vae.encode(x).latent_dist.mean
    return ((mean - vae.config.shift_factor) * vae.config.scaling_factor)[0].float().cpu()


def flow_matching_loss(
    adapter: Adapter, transformer, samples: Sequence[TrainingSample], sigmas: Tensor, noises: Sequence[Tensor]
) -> Tensor:
    """Mean over samples i of `mean((out_i − (x₀ᵢ − εᵢ))²)`, `out_i` the transformer's output at `x_σᵢ` with the
    caption embeddings `adapter(rows_i)` alone."""
    latents = [noisy_latents(s.latents, e, sig) for s, e, sig in zip(samples, noises, sigmas, strict=True)]
    rows = [adapter(s.rows.float()) for s in samples]
    out = predict_velocity(transformer, latents, sigmas, rows)
    losses = [
        F.mse_loss(o, velocity_target(s.latents, e).to(o.device)) for o, s, e in zip(out, samples, noises, strict=True)
    ]
    return torch.stack(losses).mean()


def step_generator(seed: int, step: int) -> torch.Generator:
    """A CPU generator for one training step, a function of `(seed, step)` only: a resumed run draws exactly the
    noise an uninterrupted one would."""
    digest = hashlib.sha256(f"llm-dit-adapter:{seed}:{step}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


def draw_step(
    samples: Sequence[TrainingSample], seed: int, step: int, shift: float, batch_size: int
) -> tuple[list[int], Tensor, list[Tensor]]:
    """The samples of one step (all, or `batch_size` drawn without replacement), their noise levels
    `σ = shift_sigmas(u, shift)`, `u ~ U(0, 1)`, and their noise `ε ~ N(0, I)`."""
    g = step_generator(seed, step)
    n = len(samples)
    chosen = list(range(n)) if batch_size >= n else torch.randperm(n, generator=g)[:batch_size].tolist()
    sigmas = shift_sigmas(torch.rand(len(chosen), generator=g), shift)
    noises = [torch.randn(samples[i].latents.shape, generator=g) for i in chosen]
    return chosen, sigmas, noises


def samples_sha256(samples: Sequence[TrainingSample]) -> str:
    """Content hash of the training data (every sample's latents and rows, float32)."""
    h = hashlib.sha256()
    for s in samples:
        for t in (s.latents, s.rows):
            t = t.detach().float().contiguous().cpu()
            h.update(str(list(t.shape)).encode())
            h.update(t.numpy().tobytes())
    return h.hexdigest()


def check_samples(samples: Sequence[TrainingSample], dim: int) -> None:
    if not samples:
        raise UserError("fine-tuning needs at least one training sample")
    for i, s in enumerate(samples):
        if s.latents.ndim != 3 or not torch.isfinite(s.latents).all():
            raise UserError(f"training sample {i}: latents must be a finite [C, H, W] tensor")
        check_rows(s.rows, f"training sample {i}: rows", width=dim, width_of="the adapter's width")


def save_checkpoint(
    path: Path, adapter: Adapter, optimizer: torch.optim.Optimizer, step: int, losses: list[float], run: dict
) -> Path:
    """Adapter parameters (`adapter.*`), Adam state (`optimizer.<param>.<key>`), and in the metadata the step
    counter, the loss history and the run settings."""
    tensors = {f"adapter.{k}": v for k, v in adapter.tensors().items()}
    names = {id(p): name for name, p in adapter.named_parameters()}
    for p, state in optimizer.state.items():
        for key, value in state.items():
            tensors[f"optimizer.{names[id(p)]}.{key}"] = torch.as_tensor(value).float().reshape(-1)
    meta = {"kind": CHECKPOINT_KIND, **adapter.describe(), "step": step, "losses": losses, "run": run}
    return save_tensors(path, tensors, meta)


def load_checkpoint(
    path: Path, adapter: Adapter, optimizer: torch.optim.Optimizer, run: dict
) -> tuple[int, list[float]]:
    """Restore `adapter` and `optimizer` from `path`; `(step, losses)`. The checkpoint must come from the same
    adapter shape, data and settings (`run`), else the trajectory would not be the one being resumed."""
    tensors, meta = load_tensors(path, "adapter checkpoint")
    label = f"adapter checkpoint {path}"
    if meta.get("kind") != CHECKPOINT_KIND:
        raise UserError(f"{path} is not an adapter checkpoint (kind: {meta.get('kind', 'none')})")
    if (got := {k: meta.get(k) for k in adapter.describe()}) != adapter.describe():
        raise UserError(f"{label} is for a {got} adapter, this run trains {adapter.describe()}")
    saved = meta.get("run", {})
    if diff := sorted(k for k in set(saved) | set(run) if saved.get(k) != run.get(k)):
        changes = ", ".join(f"{k}: {saved.get(k)!r} -> {run.get(k)!r}" for k in diff)
        raise UserError(f"{label} was made with other settings ({changes}); use resume=False or a new directory")
    params = {k.removeprefix("adapter."): v for k, v in tensors.items() if k.startswith("adapter.")}
    trained = Adapter.from_tensors(params, meta, label)
    adapter.set_tensors(trained.tensors())
    state = optimizer.state_dict()
    index = {name: i for i, (name, _) in enumerate(adapter.named_parameters())}
    restored: dict[int, dict[str, Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            name, field = key.removeprefix("optimizer.").rsplit(".", 1)
            if name not in index:
                raise UserError(f"{label}: optimizer state for unknown parameter '{name}'")
            shape = tensor_shapes(adapter.kind, adapter.dim, adapter.rank)[name]
            restored.setdefault(index[name], {})[field] = value.reshape(() if field == "step" else shape)
    step = meta.get("step")
    if not isinstance(step, int) or step < 0 or (step > 0 and len(restored) != len(index)):
        raise UserError(f"{label}: incomplete (step {step!r}, optimizer state for {len(restored)} parameters)")
    state["state"] = restored
    optimizer.load_state_dict(state)
    losses = meta.get("losses")
    if not isinstance(losses, list) or len(losses) != step:
        raise UserError(f"{label}: the loss history does not match step {step}")
    return step, [float(v) for v in losses]


def finetune(
    adapter: Adapter,
    pipe,
    samples: Sequence[TrainingSample],
    steps: int,
    lr: float,
    checkpoint_dir: str | Path,
    resume: bool = True,
    progress: bool = True,
    *,
    seed: int = 0,
    batch_size: int | None = None,
    shift: float | None = None,
    checkpoint_every: int = 50,
) -> list[float]:
    """Train `adapter` (in place) through the frozen DiT with the flow-matching loss; the loss of every step
    from step 0 (a resumed run includes the steps before the checkpoint).

    Step k (a function of `seed` and k only): draw `batch_size` samples (default all), `u ~ U(0, 1)` and
    `σ = shift·u / (1 + (shift − 1)·u)` (default: the scheduler's `shift`), `ε ~ N(0, I)`; minimise
    `flow_matching_loss` — the transformer at `x_σ = σε + (1−σ)x₀`, timestep `1 − σ`, caption embeddings
    `adapter(rows)` alone, regressed on `x₀ − ε` — with Adam (`lr`). Only the adapter's parameters train: the
    transformer and the VAE are set to `requires_grad_(False)`.

    Every `checkpoint_every` steps and at the end, `checkpoint_dir/adapter.ckpt.safetensors` holds the adapter,
    Adam's state, the step and the loss history; with `resume` an existing checkpoint (same adapter shape, data,
    lr, seed, batch size, shift) is continued, giving the same trajectory as an uninterrupted run.
    """
    from ..core.progress import progress_bar

    check_number(steps, "steps", lambda n: n >= 0, "an integer >= 0", integer=True)
    check_number(lr, "learning rate", lambda x: x > 0, "a finite number > 0")
    if checkpoint_every < 1:
        raise UserError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
    check_samples(samples, adapter.dim)
    n_batch = len(samples) if batch_size is None else batch_size
    if n_batch < 1:
        raise UserError(f"batch size must be >= 1, got {batch_size}")
    shift = float(pipe.scheduler.config.get("shift", 1.0) if shift is None else shift)
    if not math.isfinite(shift) or shift <= 0:
        raise UserError(f"shift must be a finite number > 0, got {shift}")

    transformer = pipe.transformer
    transformer.requires_grad_(False)
    if getattr(pipe, "vae", None) is not None:
        pipe.vae.requires_grad_(False)
    adapter.to(transformer.device)
    optimizer = torch.optim.Adam(adapter.parameters(), lr=lr)
    run = {
        "lr": float(lr),
        "seed": seed,
        "batch_size": min(n_batch, len(samples)),
        "shift": shift,
        "samples": len(samples),
        "data_sha256": samples_sha256(samples),
    }
    path = Path(checkpoint_dir) / CHECKPOINT_NAME
    start, losses = load_checkpoint(path, adapter, optimizer, run) if resume and path.is_file() else (0, [])
    if start > steps:
        raise UserError(f"the checkpoint in {checkpoint_dir} is at step {start}, past steps={steps}")

    last = f"{losses[-1]:.4f}" if losses else "-"
    with progress_bar("loss {task.fields[loss]}", transient=False, disable=not progress) as bar:
        task = bar.add_task("adapter", total=steps, completed=min(start, steps), loss=last)
        for step in range(start, steps):
            chosen, sigmas, noises = draw_step(samples, seed, step, shift, n_batch)
            optimizer.zero_grad(set_to_none=True)
            loss = flow_matching_loss(adapter, transformer, [samples[i] for i in chosen], sigmas, noises)
            if not torch.isfinite(loss):
                raise UserError(f"the fine-tuning loss is {float(loss)} at step {step}; lower the learning rate")
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            done = step + 1
            if done % checkpoint_every == 0 or done == steps:
                save_checkpoint(path, adapter, optimizer, done, losses, run)
            bar.update(task, advance=1, loss=f"{losses[-1]:.4f}")
    return losses


@torch.no_grad()
def read_captions(path: str | Path | None) -> dict[str, str]:
    """Captions by image file name: a JSON object, or lines `NAME<TAB>CAPTION`; none when `path` is None."""
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise UserError(f"captions file not found: {path}")
    text = path.read_text()
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"captions file {path} is not valid JSON: {e}") from None
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise UserError(f"captions file {path} must map image file names to caption strings")
        out = {str(name): caption.strip() for name, caption in data.items()}
    else:
        out = {}
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                name, sep, caption = line.partition("\t")
                if not sep:
                    raise UserError(f"captions file {path}, line {n}: expected NAME<TAB>CAPTION")
                out[name.strip()] = caption.strip()
    if empty := [name for name, caption in out.items() if not caption]:
        raise UserError(f"captions file {path} has an empty caption for training image {', '.join(empty)}: write one")
    return out


def train_adapter(
    gen: Any,
    images: Sequence[Path],
    captions: dict[str, str],
    *,
    kind: str = "linear",
    rank: int | None = None,
    lam: float = 1e-2,
    steps: int = 0,
    lr: float = 1e-3,
    checkpoint_dir: str | Path | None = None,
    resume: bool = True,
    progress: bool = True,
) -> tuple[Adapter, dict[str, Any]]:
    """Ridge-initialise an adapter on (image + caption) pairs, then optionally fine-tune it for `steps` through
    the frozen DiT. `gen` is a `Generator` (its `config` and `components` are used); captions
    missing from `captions` are written by the Qwen3-VL model. Returns the adapter and its metadata.

    The config acts as generation would use the adapter: `vl.hidden_layer` and `vl.system_prompt` on the VL rows,
    `encoder.hidden_layer`, `encoder.system_prompt` and `encoder.think_block` on the text rows, `vl.sink_ratio` on
    both (attention-sink rows are left out of the ridge fit: `paired_rows`; `sinks` in the metadata counts them),
    and for fine-tuning `vl.token_mode` (the rows it trains on), `generation.width`/`height` (latent size),
    `generation.shift` (noise levels) and `generation.seed` (noise and sample draws). Weighted layers, masking and
    normalisation are refused (`check_raw_rows`) before any model loads. `settings` in the metadata holds exactly the
    config keys that acted.
    """
    cfg, components = gen.config, gen.components
    v, enc, g = cfg.vl, cfg.encoder, cfg.generation
    check_raw_rows(v, "an adapter")
    layer = v.hidden_layer
    pictures = {p.name: load_image(p, "training image") for p in images}
    written = {
        name: captions[name] if name in captions else caption_image(components.vl, img)
        for name, img in pictures.items()
    }
    if empty := [name for name, caption in written.items() if not caption.strip()]:
        raise UserError(
            f"the Qwen3-VL model wrote an empty caption for training image {', '.join(empty)}: give its caption in "
            f"a captions file ('captions': JSON {{name: caption}} or NAME<TAB>CAPTION lines)"
        )
    pairs = [
        paired_rows(
            components.vl,
            components.text_encoder,
            img,
            written[name],
            layer,
            enc.hidden_layer,
            system_prompt=v.system_prompt,
            text_system_prompt=enc.system_prompt,
            think_block=enc.think_block,
            sink_ratio=v.sink_ratio,
        )
        for name, img in pictures.items()
    ]
    adapter = ridge_fit(torch.cat([p.x for p in pairs]), torch.cat([p.y for p in pairs]), lam, kind, rank)
    settings: dict[str, Any] = {
        "vl.hidden_layer": layer,
        "vl.system_prompt": v.system_prompt,
        "vl.sink_ratio": v.sink_ratio,
        "encoder.hidden_layer": enc.hidden_layer,
        "encoder.system_prompt": enc.system_prompt,
        "encoder.think_block": enc.think_block,
    }
    meta: dict[str, Any] = {
        "vl_model": components.vl.identity,
        "hidden_layer": layer,
        "text_layer": enc.hidden_layer,
        "adapter_kind": kind,
        "rank": rank,
        "lam": lam,
        "captions": written,
        "images": sorted(pictures),
        "finetune_steps": steps,
        "lr": lr,
        "sinks": {  # what the ridge fit left out (`paired_rows`)
            "ratio": v.sink_ratio,
            "pair_rows": sum(p.sinks["pair_rows"] for p in pairs),
            "dropped": sum(p.sinks["dropped"] for p in pairs),
            "pooled_left_out": {k: sum(p.sinks["pooled_left_out"][k] for p in pairs) for k in ("vl", "text")},
        },
    }
    if steps > 0:
        if checkpoint_dir is None:
            raise UserError("fine-tuning needs a checkpoint directory")
        # only fine-tuning sees whole extractions, so only it depends on the token mode
        vl_rows = {
            name: components.vl.extract(
                img,
                written[name],
                layer,
                token_mode=v.token_mode,
                system_prompt=v.system_prompt,
                sink_ratio=v.sink_ratio,
                sink_rows=v.sink_rows,
            ).embeddings
            for name, img in pictures.items()
        }
        components.release("text_encoder", "vl")
        samples = [
            TrainingSample(image_latents(components.pipeline, img, g.height, g.width), vl_rows[name])
            for name, img in pictures.items()
        ]
        losses = finetune(
            adapter,
            components.pipeline,
            samples,
            steps,
            lr,
            checkpoint_dir,
            resume,
            progress,
            seed=g.seed,
            shift=g.shift,
        )
        settings |= {
            "vl.token_mode": v.token_mode,
            "vl.sink_ratio": v.sink_ratio,
            "vl.sink_rows": v.sink_rows,
            "generation.width": g.width,
            "generation.height": g.height,
            "generation.shift": g.shift,
            "generation.seed": g.seed,
        }
        meta |= {
            "token_mode": v.token_mode,
            "samples_sha256": samples_sha256(samples),
            "loss_first": losses[0],
            "loss_last": losses[-1],
            "size": [g.width, g.height],
            "seed": g.seed,
            "shift": g.shift,
        }
    return adapter, meta | {"settings": settings}
