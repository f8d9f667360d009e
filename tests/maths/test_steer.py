import math

import pytest
import torch

from llm_dit.core.errors import UserError
from llm_dit.core.files import save_tensors
from llm_dit.maths.steer import (
    apply_direction,
    direction_mean_difference,
    direction_pca,
    load_direction,
    save_direction,
)


def planted_pairs(seed: int, d: torch.Tensor, pairs: int = 40) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """pos_i = base_i + 3·d + noise, neg_i = base_i + noise, with a large random base per pair."""
    g = torch.Generator().manual_seed(seed)
    pos, neg = [], []
    for _ in range(pairs):
        n = int(torch.randint(3, 9, (1,), generator=g))
        base = 5 * torch.randn(n, d.numel(), generator=g) + 10 * torch.randn(d.numel(), generator=g)
        pos.append(base + 3 * d + 0.5 * torch.randn(n, d.numel(), generator=g))
        neg.append(base + 0.5 * torch.randn(n, d.numel(), generator=g))
    return pos, neg


@pytest.mark.parametrize("method", [direction_mean_difference, direction_pca])
def test_both_methods_recover_a_planted_direction(method):
    d = torch.nn.functional.normalize(torch.randn(64, generator=torch.Generator().manual_seed(9)), dim=0)
    pos, neg = planted_pairs(1, d)
    found = method(pos, neg)
    assert found.shape == (64,) and found.dtype == torch.float32
    assert found.norm().item() == pytest.approx(1.0, abs=1e-6)
    assert torch.dot(found, d).item() > 0.99
    assert torch.dot(method(neg, pos), d).item() < -0.99  # swapping the sets flips the sign


def test_mean_difference_on_known_numbers():
    pos = [torch.tensor([[1.0, 0.0], [3.0, 0.0]]), torch.tensor([[0.0, 1.0]])]  # pooled [2,0] and [0,1]
    neg = [torch.tensor([[0.0, 0.0]])]
    torch.testing.assert_close(direction_mean_difference(pos, neg), torch.tensor([2.0, 1.0]) / math.sqrt(5))


def test_pca_on_known_numbers_and_its_sign():
    pos = [torch.tensor([[3.0, 0.0]]), torch.tensor([[0.0, 1.0]])]
    neg = [torch.zeros(1, 2), torch.zeros(1, 2)]
    torch.testing.assert_close(direction_pca(pos, neg), torch.tensor([1.0, 0.0]))  # not the mean [3,1]/√10
    torch.testing.assert_close(direction_pca(neg, pos), torch.tensor([-1.0, 0.0]))


def test_directions_reject_degenerate_or_bad_input():
    x = [torch.ones(2, 3)]
    with pytest.raises(UserError, match="has no direction"):
        direction_mean_difference(x, x)
    with pytest.raises(UserError, match="no direction"):
        direction_pca(x, x)
    with pytest.raises(UserError, match="paired examples, got 2 positive and 1 negative"):
        direction_pca(x * 2, x)
    with pytest.raises(UserError, match="no negative examples"):
        direction_mean_difference(x, [])
    with pytest.raises(UserError, match=r"positive example 0 must be a 2-D \[rows, D\] tensor"):
        direction_mean_difference([torch.ones(3)], x)
    with pytest.raises(UserError, match="width 4, expected 3"):
        direction_mean_difference([torch.ones(2, 3), torch.ones(2, 4)], x)


def test_apply_direction_on_known_numbers():
    t = torch.tensor([[1.0, 2.0], [3.0, 4.0]])  # population std sqrt(1.25)
    d = torch.tensor([0.0, 2.0])  # normalised to [0, 1]
    s = math.sqrt(1.25)
    torch.testing.assert_close(apply_direction(t, d, 2.0), t + torch.tensor([0.0, 2 * s]))
    torch.testing.assert_close(apply_direction(t, d, -1.0, scale="none"), t - torch.tensor([0.0, 1.0]))


def test_alpha_zero_is_bitwise_identity_and_dtype_is_kept():
    t = torch.randn(5, 8).to(torch.bfloat16)
    d = torch.randn(8)
    out = apply_direction(t, d, 0.0)
    assert out.dtype == torch.bfloat16 and torch.equal(out, t) and out.data_ptr() != t.data_ptr()
    moved = apply_direction(t, d, 1.5)
    assert moved.dtype == torch.bfloat16 and not torch.equal(moved, t)


def test_apply_direction_validates():
    t = torch.randn(5, 8)
    with pytest.raises(UserError, match="width 7, the caption rows have 8"):
        apply_direction(t, torch.randn(7), 1.0)
    with pytest.raises(UserError, match="valid: text_std, none"):
        apply_direction(t, torch.randn(8), 1.0, scale="row")
    with pytest.raises(UserError, match="finite number"):
        apply_direction(t, torch.randn(8), float("inf"))
    with pytest.raises(UserError, match="zero vector"):
        apply_direction(t, torch.zeros(8), 1.0)


def test_direction_file_round_trip(tmp_path):
    d = torch.nn.functional.normalize(torch.randn(16), dim=0)
    path = save_direction(tmp_path / "d.safetensors", d, {"method": "pca", "pairs": 12})
    loaded, meta = load_direction(path)
    assert torch.equal(loaded, d) and meta == {"method": "pca", "pairs": 12}


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        ({"direction": torch.tensor([1.0, float("nan")])}, "NaN/Inf"),
        ({"direction": torch.ones(2, 3)}, "1-D float direction"),
        ({"direction": torch.ones(3, dtype=torch.int64)}, "1-D float direction"),
        ({"other": torch.ones(3)}, "no 'direction' tensor"),
    ],
)
def test_bad_direction_files_raise_user_errors(tmp_path, tensors, message):
    path = save_tensors(tmp_path / "bad.safetensors", tensors, {})
    with pytest.raises(UserError, match=message):
        load_direction(path)


def test_bad_directions_are_not_saved_and_non_files_are_refused(tmp_path):
    with pytest.raises(UserError, match="NaN/Inf"):
        save_direction(tmp_path / "x.safetensors", torch.tensor([float("inf")]), {})
    assert not (tmp_path / "x.safetensors").exists()
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a tensor file")
    with pytest.raises(UserError, match="not a safetensors file"):
        load_direction(junk)


def test_cli_steer_builds_a_direction_that_generate_applies(cli, zoo, tmp_path):
    import json

    import numpy as np
    from PIL import Image

    from ..conftest import REPO

    refs = REPO / "examples" / "reference-images"
    pairs = tmp_path / "pairs.toml"
    pairs.write_text(
        "[[pairs]]\n"
        f'prompt = "a house"\npositive = "{refs / "style_pixel_art.png"}"\nnegative = "{refs / "house2.png"}"\n'
        "[[pairs]]\n"
        f'prompt = "a wave"\npositive = "{refs / "style_ukiyo_wave.png"}"\nnegative = "{refs / "sunset.png"}"\n'
    )
    for method in ("mean_difference", "pca"):
        r = cli("steer", "--models", "tiny", "--pairs", pairs, "--method", method, "-o", tmp_path / f"{method}.st")
        assert r.code == 0, r.err
        d, meta = load_direction(tmp_path / f"{method}.st")
        assert d.shape == (64,) and abs(float(d.norm()) - 1) < 1e-5 and meta["method"] == method
    small = ["--models", "tiny", "-p", "a tower", "--steps", "2", "--width", "32", "--height", "32"]
    assert cli("generate", *small, "-o", tmp_path / "plain.png").code == 0
    r = cli("generate", *small, "--steer", tmp_path / "pca.st", "--alpha", "1.0", "-o", tmp_path / "steered.png")
    assert r.code == 0, r.err
    assert json.loads((tmp_path / "steered.json").read_text())["conditioning"]["source"] == "steer"
    a, b = (np.asarray(Image.open(tmp_path / f"{n}.png")).astype(int) for n in ("plain", "steered"))
    assert np.abs(a - b).max() > 0
    r = cli("steer", "--models", "tiny", "--pairs", pairs, "--method", "nosuch", "-o", tmp_path / "x.st")
    assert r.code == 2 and "valid: mean_difference, pca" in r.err
