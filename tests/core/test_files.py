"""Durable and draft writes (llm_dit.core.files): a draft is written atomically without fsync, and `make_durable`
fsyncs it later, file then folder."""

from __future__ import annotations

import json
import os

import pytest
from PIL import Image

from llm_dit.core.errors import UserError
from llm_dit.core.files import make_durable, save_image, sidecar_path


def test_a_saved_image_is_fsynced_with_its_record_and_folder(tmp_path, fsynced):
    out = save_image(Image.new("RGB", (8, 8), (1, 2, 3)), tmp_path / "a.png", {"prompt": "p"})
    assert fsynced == [tmp_path / "a.json", tmp_path, tmp_path / "a.png", tmp_path]  # the record first
    assert Image.open(out).getpixel((0, 0)) == (1, 2, 3)


def test_a_draft_is_complete_without_fsync_and_made_durable_later(tmp_path, fsynced):
    image = Image.new("RGB", (8, 8), (9, 8, 7))
    out = save_image(image, tmp_path / "d.png", {"prompt": "p"}, durable=False)
    assert fsynced == []
    assert Image.open(out).tobytes() == image.tobytes() and json.loads(sidecar_path(out).read_text()) == {"prompt": "p"}
    assert {p.name for p in tmp_path.iterdir()} == {"d.json", "d.png"}  # renamed into place: no temporary file
    make_durable(sidecar_path(out), out)
    assert fsynced == [tmp_path / "d.json", tmp_path / "d.png", tmp_path]  # each file, then their folder once


def test_a_draft_png_is_encoded_fast_with_the_same_pixels(tmp_path):
    noise = Image.frombytes("RGB", (64, 64), os.urandom(64 * 64 * 3))
    saved = save_image(noise, tmp_path / "saved.png", {})
    draft = save_image(noise, tmp_path / "draft.png", {}, durable=False)
    assert saved.read_bytes() != draft.read_bytes()  # another zlib level
    assert Image.open(saved).tobytes() == Image.open(draft).tobytes() == noise.tobytes()


def test_making_a_missing_file_durable_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match=r"cannot make .*gone\.png durable"):
        make_durable(tmp_path / "gone.png")
