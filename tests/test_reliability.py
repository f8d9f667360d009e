"""Every row of docs/reliability.md: bad input gets exit code 2, one line naming the problem, no traceback, and
no output file left behind."""

import errno
import os
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from llm_dit.core.errors import UserError
from llm_dit.core.files import atomic_write_bytes, load_image, save_tensors

from .conftest import REPO, find_test_file

REF = REPO / "examples" / "reference-images" / "test_scene.png"
SMALL = ["--models", "tiny", "-p", "a house", "--steps", "2", "--width", "32", "--height", "32"]


def fails_cleanly(r, out: Path, *words: str) -> None:
    """Exit 2, one line on stderr naming the problem, no traceback, nothing written."""
    assert r.code == 2, (r.code, r.err)
    lines = r.err.strip().splitlines()
    assert len(lines) == 1, r.err
    assert "Traceback" not in r.err
    for w in words:
        assert w.lower() in lines[0].lower(), (w, lines[0])
    assert not out.exists() and not out.with_suffix(".json").exists()
    assert not list(out.parent.glob(f".{out.name}.*.tmp"))


def png_with_size(width: int, height: int) -> bytes:
    """A minimal PNG whose header declares `width` x `height` (no pixel data beyond one row)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


# ---------------------------------------------------------------------------------------------- image files


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda p: None, ["not found"]),
        (lambda p: p.write_bytes(b""), ["empty"]),
        (lambda p: p.write_text("definitely not a picture"), ["not an image"]),
        (lambda p: p.write_bytes(REF.read_bytes()[:400]), ["truncated or corrupt"]),
        (lambda p: p.write_bytes(png_with_size(0, 16)), ["ref.png"]),
    ],
    ids=["missing", "empty", "text_named_png", "truncated", "zero_size"],
)
def test_bad_reference_image_files(cli, zoo, tmp_path, make, words):
    bad = tmp_path / "ref.png"
    make(bad)
    out = tmp_path / "out.png"
    fails_cleanly(cli("generate", *SMALL, "-i", bad, "-o", out), out, *words)
    fails_cleanly(cli("generate", *SMALL, "--init-image", bad, "-o", out), out, *words)


def test_oversized_image_hits_the_decompression_bomb_guard(monkeypatch, cli, zoo, tmp_path):
    big = tmp_path / "big.png"
    Image.new("L", (300, 300)).save(big)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100 * 100)
    out = tmp_path / "out.png"
    fails_cleanly(cli("generate", *SMALL, "-i", big, "-o", out), out, "too large")


@pytest.mark.parametrize("mode", ["RGBA", "CMYK", "P", "I;16", "L", "LA", "1"])
def test_image_modes_are_converted_to_rgb(tmp_path, mode):
    src = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8))
    path = tmp_path / ("x.tif" if mode == "CMYK" else "x.png")
    grey16 = np.asarray(src.convert("L")).astype("<u2") * 257
    img = src.convert(mode) if mode != "I;16" else Image.fromarray(grey16)
    img.save(path)
    out = load_image(path)
    assert out.mode == "RGB" and out.size == (48, 40)
    if mode == "I;16":  # 16-bit values are scaled to 8 bits, not clipped
        assert np.asarray(out)[..., 0].max() > 200 and np.asarray(out).std() > 20


def test_rgba_is_composited_on_white_and_animation_uses_the_first_frame(tmp_path):
    clear = tmp_path / "clear.png"
    Image.new("RGBA", (8, 8), (255, 0, 0, 0)).save(clear)
    assert load_image(clear).getpixel((0, 0)) == (255, 255, 255)
    gif = tmp_path / "anim.gif"
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(gif, save_all=True, append_images=frames[1:])
    assert load_image(gif).getpixel((0, 0))[0] > 200


def test_mislabelled_image_is_read_by_content(tmp_path):
    jpeg_named_png = tmp_path / "photo.png"
    Image.new("RGB", (16, 16), (10, 200, 10)).save(jpeg_named_png, format="JPEG")
    assert load_image(jpeg_named_png).size == (16, 16)


# --------------------------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--alpha", "1.5"], ["alpha", "[0, 1]"]),
        (["--blend", "nosuch"], ["nosuch", "adain_per_dim"]),
        (["--token-mode", "nosuch"], ["token_mode", "image_only"]),
        (["--normalize", "nosuch"], ["normalize", "per_dim"]),
        (["--outlier-masking", "nosuch"], ["outlier_masking", "clamp"]),
        (["--resample", "nosuch"], ["resample", "area"]),
        (["--alpha-schedule", "nosuch:1"], ["nosuch", "cosine"]),
        (["--vl-layer", "-40"], ["-40", "8 layers"]),
        (["--width", "40"], ["width", "multiple of 16"]),
        (["--steps", "0"], ["steps"]),
        (["--blend-option", "p=abc"], ["blend-option"]),
        (["--vl-layers", "-6:x"], ["layer weights"]),
    ],
    ids=lambda v: v[0] if isinstance(v, list) and v and v[0].startswith("--") else None,
)
def test_bad_settings(cli, zoo, tmp_path, args, words):
    out = tmp_path / "out.png"
    fails_cleanly(cli("generate", *SMALL, "-i", REF, *args, "-o", out), out, *words)


# ------------------------------------------------------------------------------------------------ models


def test_wrong_family_and_missing_models(cli, zoo, tmp_path):
    out = tmp_path / "out.png"
    fails_cleanly(cli("generate", "--zimage", zoo / "qwen3-vl", "-p", "x", "-o", out), out, "z-image")
    fails_cleanly(cli("generate", *SMALL, "-i", REF, "--vl", zoo / "zimage", "-o", out), out, "qwen3-vl")
    fails_cleanly(cli("generate", "--zimage", tmp_path / "nowhere", "-p", "x", "-o", out), out, "not found")


def test_vl_width_that_differs_from_the_dit_caption_width(cli, zoo, tmp_path):
    from dataclasses import replace

    from llm_dit.models.zoo import PRESETS, build_tokenizer, build_vl_model

    spec = replace(PRESETS["tiny"], hidden=32, intermediate=64, head_dim=8, heads=4, mrope_section=(2, 1, 1))
    tok = build_tokenizer(spec.vocab_target)
    narrow = tmp_path / "narrow-vl"
    build_vl_model(spec, tok).save_pretrained(narrow)
    tok.chat_template = (zoo / "qwen3-vl" / "chat_template.jinja").read_text()
    tok.save_pretrained(narrow)
    (narrow / "preprocessor_config.json").write_bytes((zoo / "qwen3-vl" / "preprocessor_config.json").read_bytes())
    out = tmp_path / "out.png"
    fails_cleanly(cli("generate", *SMALL, "-i", REF, "--vl", narrow, "-o", out), out, "32", "64")


# ------------------------------------------------------------------------------------------ embedding files


@pytest.mark.parametrize(
    ("tensor", "words"),
    [
        (torch.full((5, 64), float("nan")), ["nan"]),
        (torch.tensor([[float("inf")] * 64]), ["64 inf"]),
        (torch.zeros(3, 5, 64), ["2-d"]),
        (torch.zeros(5, 32), ["width 32", "64"]),
        (torch.zeros(5, 64, dtype=torch.int32), ["not a float"]),
        (torch.zeros(0, 64), ["no rows"]),
    ],
    ids=["nan", "inf", "rank3", "width", "int", "empty"],
)
@pytest.mark.parametrize("flag", ["--embeddings", "--vl-embeddings"])
def test_bad_embedding_files(cli, zoo, tmp_path, tensor, words, flag):
    path = tmp_path / "e.safetensors"
    save_tensors(path, {"embeddings": tensor}, {})
    out = tmp_path / "out.png"
    fails_cleanly(cli("generate", *SMALL, flag, path, "-o", out), out, *words)


def test_embedding_file_that_is_not_safetensors_or_lacks_the_tensor(cli, zoo, tmp_path):
    out = tmp_path / "out.png"
    junk = tmp_path / "pickle.pt"
    junk.write_bytes(b"\x80\x04\x95 not safetensors")
    fails_cleanly(cli("generate", *SMALL, "--embeddings", junk, "-o", out), out, "not a safetensors")
    other = tmp_path / "other.safetensors"
    save_tensors(other, {"rows": torch.zeros(2, 64)}, {})
    fails_cleanly(cli("generate", *SMALL, "--embeddings", other, "-o", out), out, "no 'embeddings'")


# ------------------------------------------------------------------------------------------------ outputs


def test_unwritable_output_location(cli, zoo, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = blocker / "out.png"  # parent is a file
    r = cli("generate", *SMALL, "-o", out)
    assert r.code == 2 and "cannot write" in r.err and len(r.err.strip().splitlines()) == 1


def test_full_disk_leaves_nothing_behind(monkeypatch, tmp_path):
    def full(fd):  # the data reaches the disk at fsync, which is where a full disk reports ENOSPC
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    target = tmp_path / "x.bin"
    with pytest.raises(UserError, match="No space left"):
        atomic_write_bytes(target, b"data" * 100)
    assert list(tmp_path.iterdir()) == []


def test_output_must_be_png(cli, zoo, tmp_path):
    out = tmp_path / "out.jpg"
    fails_cleanly(cli("generate", *SMALL, "-o", out), out, ".png")


def test_debug_lets_the_exception_and_its_traceback_through(cli, zoo, tmp_path):
    with pytest.raises(UserError, match="not found"):
        cli("--debug", "generate", *SMALL, "-i", tmp_path / "missing.png", "-o", tmp_path / "o.png")


# ------------------------------------------------------------------------------------------------ safety


def test_no_pickle_loading_anywhere_in_the_package():
    """Only csd.py reads a pickle (the published CSD checkpoint, converted once): every torch.load there has
    weights_only=True inside the scoped allow-list, after the static pre-check of its globals."""
    src = REPO / "src" / "llm_dit"
    pattern = re.compile(r"torch\.load\(|pickle\.loads?\(|import pickle|weights_only\s*=\s*False")
    offenders = [p.name for p in src.rglob("*.py") if pattern.search(p.read_text())]
    assert offenders == ["csd.py"]
    text = (src / "scoring" / "csd.py").read_text()
    text = text[text.index("def load_csd_checkpoint(") :]  # the code, not the module docstring
    loads = re.findall(r"torch\.load\(([^)]*)\)", text)
    assert loads and all("weights_only=True" in args for args in loads)
    assert (
        text.index("get_unsafe_globals_in_checkpoint(")
        < text.index("safe_globals(ALLOWED_GLOBALS)")
        < text.index("torch.load(")
    )


def test_trust_remote_code_is_off_by_default():
    from llm_dit.config.settings import Config

    assert Config().models.trust_remote_code is False


def test_sweep_output_names_cannot_escape_the_directory(cli, zoo, tmp_path):
    out = tmp_path / "s"
    r = cli("sweep", *SMALL, "-p", "../../escape", "-i", REF, "--alphas", "0.3", "-o", out)
    assert r.code == 0, r.err
    written = {p.resolve() for p in tmp_path.rglob("*") if p.is_file()}
    assert all(out.resolve() in p.parents for p in written)
    assert {p.name for p in (out / "images").iterdir()} == {f"{x}.png" for x in _ids(out)}


def _ids(out: Path) -> set[str]:
    from llm_dit.sweep.dir import SweepDir

    return {r.id for r in SweepDir(out).lines()}


def test_every_row_of_the_reliability_doc_names_an_existing_test():
    doc = (REPO / "docs" / "reliability.md").read_text()
    rows = [line for line in doc.splitlines() if line.startswith("| ") and not line.startswith("| ---")]
    body = [r for r in rows if not r.startswith(("| input class", "| rule"))]
    assert len(body) >= 35
    for row in body:
        refs = re.findall(r"`(test_\w+\.py)::(test_\w+)", row)
        assert refs, f"row without a test: {row}"
        for file, name in refs:
            assert f"def {name}(" in find_test_file(file).read_text(), (file, name)


@pytest.mark.parametrize("command", ["extract", "inspect"])
def test_a_missing_reference_image_is_named_as_in_the_docs(cli, zoo, tmp_path, command):
    """docs/reliability.md says `reference image not found: PATH` for every command's -i; before, extract and
    inspect said `image not found`."""
    missing = tmp_path / "nothere.png"
    args = ["-o", tmp_path / "v.safetensors"] if command == "extract" else ["-p", "x"]
    r = cli(command, "--models", "tiny", "-i", missing, *args)
    assert r.code == 2 and r.err.strip() == f"error: reference image not found: {missing}", r.err
