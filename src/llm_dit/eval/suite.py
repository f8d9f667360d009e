"""The suite of an eval: references x prompts x seeds. Every (reference, prompt, seed) is a cell, identified by the
reference's content hash, the prompt and the seed; every method of an eval runs on every cell.

Sources: `builtin` (the eight packaged style references, `data/style/`, and `BUILTIN_PROMPTS`, content prompts
unrelated to them), a folder of images with a prompts file, or a Hugging Face `datasets` dataset (a folder saved
with `save_to_disk`, or a hub id) whose image column (and optionally prompt column) the user names; its images
are written into the eval directory so every run names a file. Sizes: the first N references, the first N prompts,
seeds 0..N-1; `QUICK` is a first look.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from PIL import Image

from ..core.errors import UserError
from ..core.files import atomic_write_bytes, image_bytes, load_image, read_lines, sha256_file

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
QUICK = {"references": 2, "prompts": 2, "seeds": 1}
"""`--quick`: 2 references x 2 prompts x 1 seed."""

BUILTIN_PROMPTS = (
    # objects
    "a red bicycle leaning against a brick wall",
    "a teapot and two cups on a wooden table",
    "a vintage typewriter on a desk",
    "a bowl of lemons next to a glass jug",
    "an old leather armchair by a window",
    "a pair of running shoes on a doormat",
    "a violin resting on sheet music",
    "a lighthouse on a rocky headland",
    # scenes
    "a quiet village square with a fountain",
    "a farmhouse surrounded by wheat fields",
    "a train station platform in the morning",
    "a mountain lake with a small wooden pier",
    "a busy fruit market stall",
    "a snowy cabin with smoke rising from the chimney",
    "a desert road with a lone gas station",
    "a greenhouse full of potted plants",
    # people and animals
    "an old fisherman mending a net",
    "a chef tossing vegetables in a pan",
    "two children flying a kite on a hill",
    "a cyclist riding along a coastal road",
    "a woman reading a newspaper in a cafe",
    "a grandfather playing chess in a park",
    "a cat sleeping on a windowsill",
    "a horse grazing in a meadow",
)
"""The built-in suite's prompts: content (objects, scenes, people and animals) unrelated to the style references, so
a style that shows up in the image came from the reference, not from the prompt."""


@dataclass(frozen=True)
class SuiteReference:
    """A reference image: its name, its file and the SHA-256 of the file (the cell key's reference part)."""

    name: str
    path: str
    hash: str


@dataclass(frozen=True)
class Cell:
    """One (reference, prompt, seed) of a suite; `key` pairs the runs of every method on it."""

    reference: SuiteReference
    prompt: str
    seed: int

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.reference.hash, self.prompt, self.seed)

    def as_dict(self) -> dict[str, Any]:
        return {"reference": self.reference.hash, "prompt": self.prompt, "seed": self.seed}


@dataclass(frozen=True)
class Suite:
    """References x prompts x seeds, and where they came from (`source`)."""

    name: str
    references: list[SuiteReference]
    prompts: list[str]
    seeds: list[int]
    source: dict[str, Any] = field(default_factory=dict)

    def cells(self) -> list[Cell]:
        """Every cell, reference-major (so a stopped eval has whole references done first)."""
        return [Cell(r, p, s) for r, p, s in itertools.product(self.references, self.prompts, self.seeds)]

    def reference(self, ref_hash: str) -> SuiteReference:
        return next(r for r in self.references if r.hash == ref_hash)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "references": [asdict(r) for r in self.references],
            "prompts": self.prompts,
            "seeds": self.seeds,
            "cells": len(self.references) * len(self.prompts) * len(self.seeds),
        }


def _sized(items: list[Any], n: int | None, what: str, source: str) -> list[Any]:
    if n is not None and n < 1:
        raise UserError(f"'{what}' must be at least 1, got {n}")
    if not items:
        raise UserError(f"suite {source} has no {what}")
    if n is not None and n > len(items):
        raise UserError(f"'{what}' {n} is more than suite {source} has ({len(items)})")
    return items[:n] if n is not None else items


def _references(paths: list[Path]) -> list[SuiteReference]:
    """References of image files (each decoded once, so an unreadable one is refused now), one per distinct
    content: the same image twice would pair a cell with itself."""
    refs: dict[str, SuiteReference] = {}
    for path in paths:
        load_image(path, "suite reference image")
        digest = sha256_file(path)[:16]
        refs.setdefault(digest, SuiteReference(path.stem, str(path.resolve()), digest))
    return list(refs.values())


def builtin_references() -> list[Path]:
    """The packaged style references (`data/style/*.png`), by name."""
    return sorted(Path(str(resources.files("llm_dit") / "data" / "style")).glob("*.png"))


def _prompts(prompts_file: str | Path | None, default: list[str] | None, source: str) -> list[str]:
    if prompts_file is not None:
        return list(dict.fromkeys(read_lines(prompts_file, "prompts file")))
    if default is None:
        raise UserError(f"suite {source} needs a prompts file ('prompts_file')")
    return default


def dataset_images(
    dataset: str, image_column: str | None, prompt_column: str | None, split: str, store: Path
) -> tuple[list[Path], list[str]]:
    """The distinct images of `dataset`'s `image_column`, written as PNG files into `store` (named by content), and
    the distinct non-empty values of its `prompt_column` (none when not named). `dataset`: a folder written by
    `datasets`' `save_to_disk`, else a hub id (`load_dataset`)."""
    try:
        import datasets
    except ImportError:
        raise UserError("a datasets suite needs the 'datasets' package: pip install 'llm-dit[datasets]'") from None
    if not image_column:
        raise UserError("a datasets suite needs 'image_column' (the column holding the reference images)")
    try:
        if Path(dataset).is_dir():
            data = datasets.load_from_disk(dataset)
            if isinstance(data, datasets.DatasetDict):
                if split not in data:
                    raise UserError(f"dataset {dataset} has no split '{split}' (splits: {', '.join(data)})")
                data = data[split]
        else:
            data = datasets.load_dataset(dataset, split=split)
    except UserError:
        raise
    except Exception as e:
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"cannot load dataset {dataset}: {why}") from None
    for col in filter(None, (image_column, prompt_column)):
        if col not in data.column_names:
            raise UserError(f"dataset {dataset} has no column '{col}' (columns: {', '.join(data.column_names)})")
    store.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for value in data[image_column]:
        if isinstance(value, str):
            image = load_image(value, f"image of dataset column '{image_column}'")
        elif isinstance(value, Image.Image):
            image = value.convert("RGB")
        else:
            raise UserError(f"dataset column '{image_column}' holds {type(value).__name__}, not images or image paths")
        data_bytes = image_bytes(image)
        digest = hashlib.sha256(data_bytes).hexdigest()[:16]
        if digest not in paths:
            paths[digest] = store / f"{digest}.png"
            if not paths[digest].exists():
                atomic_write_bytes(paths[digest], data_bytes)
    prompts = [p.strip() for p in data[prompt_column] if isinstance(p, str) and p.strip()] if prompt_column else []
    return list(paths.values()), list(dict.fromkeys(prompts))


def load_suite(
    source: str = "builtin",
    *,
    references: int | None = None,
    prompts: int | None = None,
    seeds: int = 1,
    quick: bool = False,
    prompts_file: str | Path | None = None,
    image_column: str | None = None,
    prompt_column: str | None = None,
    split: str = "train",
    store: str | Path | None = None,
) -> Suite:
    """The suite of `source`: `builtin`, a folder of images (with `prompts_file`: one prompt a line), or
    `hf:DATASET` (a `datasets` folder or hub id; `image_column`, `prompt_column` or `prompts_file`, `split`; its
    images are written into `store`). `references`/`prompts`: how many of each (the first N; default all, or
    `QUICK` with `quick`); `seeds`: seeds 0..N-1."""
    if quick:
        references = references or QUICK["references"]
        prompts = prompts or QUICK["prompts"]
    if seeds < 1:
        raise UserError(f"'seeds' must be at least 1, got {seeds}")
    info: dict[str, Any] = {"kind": "builtin"}
    if source == "builtin":
        if image_column or prompt_column:
            raise UserError("'image_column'/'prompt_column' name columns of a datasets suite (hf:DATASET)")
        paths, default = builtin_references(), list(BUILTIN_PROMPTS)
        name = "builtin"
    elif source.startswith("hf:"):
        if store is None:
            raise UserError("a datasets suite needs a folder to write its images into")
        dataset = source.removeprefix("hf:")
        paths, found = dataset_images(dataset, image_column, prompt_column, split, Path(store))
        default = found or None
        name = Path(dataset).name or dataset
        info = {"kind": "datasets", "dataset": dataset, "split": split, "image_column": image_column}
        info["prompt_column"] = prompt_column
    else:
        folder = Path(source)
        if not folder.is_dir():
            raise UserError(f"'suite' {source}: not builtin, hf:DATASET or a folder of images")
        if image_column or prompt_column:
            raise UserError("'image_column'/'prompt_column' name columns of a datasets suite (hf:DATASET)")
        paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        default, name = None, folder.name
        info = {"kind": "folder", "folder": str(folder.resolve())}
    if prompts_file is not None:
        info["prompts_file"] = str(prompts_file)
    refs = _sized(_references(paths), references, "references", name)
    texts = _sized(_prompts(prompts_file, default, name), prompts, "prompts", name)
    return Suite(name, refs, texts, list(range(seeds)), info)
