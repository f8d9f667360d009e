"""A style file applied with a prompt other than the text it was extracted with (issue 22, item 12c).

A style file from an image applied at scale 1 equals conditioning on that image bit for bit only when it was
extracted with the prompt as its text (`style extract -t PROMPT`; token mode `image_only` aside, whose rows come
before the text). Before, another prompt gave no sign of it; now the record says so and a warning line is printed."""

from __future__ import annotations

import json

import pytest

from ..conftest import REPO

pytestmark = pytest.mark.usefixtures("one_thread")

REF = REPO / "examples" / "reference-images" / "house2.png"
TINY = ["--models", "tiny", "--width", "32", "--height", "32", "--steps", "1"]


def extract(cli, out, *args):
    r = cli("style", "extract", "--models", "tiny", "-i", REF, *args, "-o", out)
    assert r.code == 0, r.err
    return out


def styled(cli, tmp_path, style, prompt, name):
    out = tmp_path / f"{name}.png"
    r = cli("generate", *TINY, "-p", prompt, "--style", style, "-o", out)
    assert r.code == 0, r.err
    return r, json.loads(out.with_suffix(".json").read_text())["conditioning"]


def test_a_style_file_applied_with_another_prompt_is_noted_and_warned(cli, zoo, tmp_path, recwarn):
    """The CLI prints each warning as one `warning: ...` line on stderr (`cli.main`); in-process, pytest records
    them instead."""
    style = extract(cli, tmp_path / "fox.safetensors", "-t", "a fox")
    recwarn.clear()
    _, cond = styled(cli, tmp_path, style, "a cat on a roof", "other")
    warned = [str(w.message) for w in recwarn]
    assert len(warned) == 1, warned
    assert f"style file {style} was extracted with the text 'a fox', not this prompt 'a cat on a roof'" in warned[0]
    assert "--text" in warned[0]
    entry = cond["styles"][0]
    assert entry["text"] == "a fox" and entry["text_matches_prompt"] is False
    assert cond["note"] == warned[0]

    recwarn.clear()
    _, cond = styled(cli, tmp_path, style, "a fox", "same")  # the prompt it was made with: bit for bit, no note
    assert not recwarn.list and "note" not in cond
    assert cond["styles"][0]["text"] == "a fox" and cond["styles"][0]["text_matches_prompt"] is True


def test_text_does_not_matter_with_image_only_rows_or_is_unknown_in_older_files(cli, zoo, tmp_path, recwarn):
    from llm_dit.core.files import load_tensors, save_tensors

    style = extract(cli, tmp_path / "img.safetensors", "-t", "a fox", "--token-mode", "image_only")
    recwarn.clear()
    r = cli("generate", *TINY, "--token-mode", "image_only", "-p", "a cat", "--style", style, "-o", tmp_path / "i.png")
    assert r.code == 0 and not recwarn.list, r.err
    cond = json.loads((tmp_path / "i.json").read_text())["conditioning"]
    assert "note" not in cond and cond["styles"][0]["text_matches_prompt"] is None  # image rows precede the text

    # a file written before sources recorded their text: unknown, recorded as such, no warning
    old = tmp_path / "old.safetensors"
    tensors, meta = load_tensors(extract(cli, tmp_path / "new.safetensors", "-t", "a fox"))
    meta["sources"] = [{k: v for k, v in s.items() if k != "text"} for s in meta["sources"]]
    save_tensors(old, tensors, meta)
    recwarn.clear()
    _, cond = styled(cli, tmp_path, old, "a cat", "old")
    assert not recwarn.list and "note" not in cond
    assert cond["styles"][0]["text"] is None and cond["styles"][0]["text_matches_prompt"] is None
