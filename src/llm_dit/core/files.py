"""Files llm-dit reads and writes: atomic writes, images with JSON sidecars, safetensors embedding files.

Every write goes to a temporary file in the target directory and is renamed into place, so a reader never sees a
half-written file; it is fsynced first (and the directory after), so a crash never leaves a half-written output,
except where a caller asks for `durable=False` (cache entries; the studio's drafts, made durable later by
`make_durable`). Tensors are stored only as safetensors (never pickle).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from safetensors import SafetensorError
from safetensors.torch import load, save

from .errors import UserError

Image.MAX_IMAGE_PIXELS = 64 * 1024 * 1024  # decompression-bomb guard: ~8k x 8k is plenty for a reference image


def atomic_write_bytes(path: str | Path, data: bytes, durable: bool = True) -> Path:
    """Write `data` to `path` via temp file + fsync + rename (+ directory fsync), keeping the mode of a file it
    replaces (else 0644); a clear `UserError` if the location is unwritable or full. `durable=False` skips the
    fsyncs (still atomic; for data that is checked on read and can be recomputed, like cache entries)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror}") from None
    try:
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise UserError(f"cannot write {path}: {e.strerror}") from None
        raise
    if durable:
        fsync_directory(path.parent)
    return path


def fsync_directory(folder: Path) -> None:
    """Make the renames in `folder` durable where the platform allows it (not on Windows)."""
    with contextlib.suppress(OSError):
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def make_durable(*paths: str | Path) -> None:
    """fsync files written with `durable=False` (each file, then each of their folders once), so they survive a
    crash from now on: what `atomic_write_bytes` would have done at the write. The studio calls it when a draft is
    pinned."""
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as e:
            raise UserError(f"cannot make {path} durable: {e.strerror}") from None
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    for folder in dict.fromkeys(Path(p).parent for p in paths):
        fsync_directory(folder)


def atomic_write_text(path: str | Path, text: str, durable: bool = True) -> Path:
    return atomic_write_bytes(path, text.encode(), durable)


def write_json(path: str | Path, obj: Any, durable: bool = True) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n", durable)


def image_bytes(image: Image.Image, fast: bool = False) -> bytes:
    """`image` as PNG; `fast`: zlib level 1 instead of PIL's 6 (the same pixels in a somewhat larger file, encoded
    in a fraction of the time; for drafts)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1 if fast else 6)
    return buf.getvalue()


def sidecar_path(image_path: str | Path) -> Path:
    return Path(image_path).with_suffix(".json")


def save_image(image: Image.Image, path: str | Path, record: dict[str, Any], durable: bool = True) -> Path:
    """Write `path` (PNG) and its sidecar `path.json`; the sidecar is written first so an image on disk always
    has its record. `durable=False` (a draft): both atomic but not fsynced (`make_durable` later), and the PNG
    encoded fast (`image_bytes`)."""
    write_json(sidecar_path(path), record, durable)
    return atomic_write_bytes(path, image_bytes(image, fast=not durable), durable)


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_lines(path: str | Path, label: str) -> list[str]:
    """The non-blank lines of the text file `path`, stripped (e.g. one prompt a line); `UserError` naming `label`
    when there is no such file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{label} not found: {path}")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def load_image(path: str | Path, label: str = "image") -> Image.Image:
    """Open an image file as RGB, fully decoded, with a one-line `UserError` for every kind of bad file.

    Greyscale, palette, CMYK, 16-bit and RGBA (composited on white) images are converted; an animated image uses
    its first frame.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{label} not found: {path}")
    if path.stat().st_size == 0:
        raise UserError(f"{label} is empty (0 bytes): {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if im.width == 0 or im.height == 0:
                    raise UserError(f"{label} has zero size: {path}")
                im.seek(0)
                im.load()
                return _to_rgb(im)
    except UserError:
        raise
    except UnidentifiedImageError:
        raise UserError(f"{label} is not an image file: {path}") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UserError(f"{label} is too large ({path}): over {Image.MAX_IMAGE_PIXELS} pixels") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise UserError(f"{label} is truncated or corrupt: {path} ({e})") from None


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        im = im.point(lambda v: v / 256).convert("L")
    if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


def save_tensors(
    path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any], durable: bool = True
) -> Path:
    """safetensors file with `meta` stored as JSON strings in the header metadata."""
    header = {k: v if isinstance(v, str) else json.dumps(v, default=str) for k, v in meta.items()}
    data = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=header)
    return atomic_write_bytes(path, data, durable)


def load_tensors(path: str | Path, label: str = "embeddings file") -> tuple[dict[str, torch.Tensor], dict]:
    """Read a safetensors file written by `save_tensors` (or any safetensors file): tensors and metadata."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{label} not found: {path}")
    raw = path.read_bytes()
    try:
        tensors = load(raw)
        header_len = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8 : 8 + header_len]).get("__metadata__", {})
    except (SafetensorError, ValueError, json.JSONDecodeError):
        raise UserError(f"{label} is not a safetensors file: {path}") from None
    meta = {}
    for k, v in header.items():
        try:
            meta[k] = json.loads(v)
        except json.JSONDecodeError:
            meta[k] = v
    return tensors, meta


def load_embeddings(path: str | Path, label: str = "embeddings file") -> torch.Tensor:
    """The `embeddings` tensor of a file written by `llm-dit extract` or `llm-dit encode` (checked later against
    the DiT's caption width by `numerics.check_rows`)."""
    return load_embeddings_file(path, label)[0]


def load_embeddings_file(path: str | Path, label: str = "embeddings file") -> tuple[torch.Tensor, dict]:
    """`load_embeddings` and the file's metadata (`llm-dit extract`: how the rows were extracted)."""
    tensors, meta = load_tensors(path, label)
    if "embeddings" not in tensors:
        raise UserError(f"{label} {path} has no 'embeddings' tensor (has: {', '.join(tensors) or 'none'})")
    return tensors["embeddings"], meta
