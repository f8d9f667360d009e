"""A content-addressed on-disk cache of tensors (VL hidden rows, text encodings, reference statistics).

An entry is one safetensors file named by the SHA-256 of its key (a JSON-able dict that names the model identity,
the input hashes and every setting that changes the tensors). Each file carries a checksum of its tensor bytes;
an entry that fails to parse or to verify is treated as a miss, deleted and recomputed, never trusted.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from .errors import UserError
from .files import load_tensors, save_tensors


def cache_root() -> Path:
    """`$LLM_DIT_CACHE`, else `$XDG_CACHE_HOME/llm-dit`, else `~/.cache/llm-dit`."""
    if env := os.environ.get("LLM_DIT_CACHE"):
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "llm-dit"


def key_digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def tensors_checksum(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"{name}:{t.dtype}:{list(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class TensorCache:
    """`get(kind, key)` / `put(kind, key, tensors, meta)` under `root/kind/`, with hit/miss counters.

    Entries read (and verified) or written in this process are also kept in memory, up to `memory_mb`, so a sweep
    that reads the same rows for every run touches the disk once."""

    def __init__(self, root: str | Path | None = None, memory_mb: float = 1024) -> None:
        self.root = Path(root) if root is not None else cache_root() / "tensors"
        self.hits = 0
        self.misses = 0
        self._memory: OrderedDict[Path, tuple[dict[str, torch.Tensor], dict]] = OrderedDict()
        self._memory_bytes = 0
        self._memory_limit = int(memory_mb * 2**20)

    def _remember(self, path: Path, entry: tuple[dict[str, torch.Tensor], dict]) -> None:
        size = sum(t.numel() * t.element_size() for t in entry[0].values())
        if size > self._memory_limit:
            return
        self._memory[path] = entry
        self._memory_bytes += size
        while self._memory_bytes > self._memory_limit:
            _, (old, _) = self._memory.popitem(last=False)
            self._memory_bytes -= sum(t.numel() * t.element_size() for t in old.values())

    def path(self, kind: str, key: dict[str, Any]) -> Path:
        return self.root / kind / f"{key_digest(key)}.safetensors"

    def get(self, kind: str, key: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict] | None:
        path = self.path(kind, key)
        if path in self._memory and path.exists():
            self._memory.move_to_end(path)
            self.hits += 1
            return self._memory[path]
        if path.exists():
            try:
                tensors, meta = load_tensors(path)
                if meta.get("checksum") == tensors_checksum(tensors):
                    self.hits += 1
                    self._remember(path, (tensors, meta))
                    return tensors, meta
            except UserError:
                pass
            with contextlib.suppress(OSError):
                path.unlink()  # corrupt: recompute rather than trust it
        self.misses += 1
        return None

    def put(self, kind: str, key: dict[str, Any], tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        meta = {**meta, "key": key, "checksum": tensors_checksum(tensors)}
        path = save_tensors(self.path(kind, key), tensors, meta, durable=False)  # checked on read, recomputable
        self._remember(path, ({k: v.detach().cpu() for k, v in tensors.items()}, meta))
