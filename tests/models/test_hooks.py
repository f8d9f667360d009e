import re

import pytest
import torch

from llm_dit.core.errors import UserError
from llm_dit.models.hooks import capture_hidden_states, layer_position


@pytest.fixture(scope="module")
def text_model(zoo):
    from transformers import AutoModel

    return AutoModel.from_pretrained(zoo / "zimage" / "text_encoder").eval()


def test_every_index_matches_transformers_hidden_states(text_model):
    ids = torch.tensor([[5, 60, 70, 80, 90, 100]])
    with torch.no_grad():
        ref = text_model(input_ids=ids, output_hidden_states=True).hidden_states
        n = text_model.config.num_hidden_layers
        assert len(ref) == n + 1
        indices = list(range(-(n + 1), n + 1))
        got = capture_hidden_states(text_model, indices, lambda: text_model(input_ids=ids))
    for i in indices:
        torch.testing.assert_close(got[i], ref[i], rtol=0, atol=0)


def test_forward_stops_after_the_deepest_requested_layer(text_model):
    ran: list[int] = []
    handles = [
        layer.register_forward_hook(lambda m, a, o, i=i: ran.append(i)) for i, layer in enumerate(text_model.layers)
    ]
    norm_ran = []
    handles.append(text_model.norm.register_forward_hook(lambda *a: norm_ran.append(1)))
    try:
        with torch.no_grad():
            capture_hidden_states(text_model, [-6, 2], lambda: text_model(input_ids=torch.tensor([[5, 6, 7]])))
    finally:
        for h in handles:
            h.remove()
    n = text_model.config.num_hidden_layers
    assert ran == list(range(n + 1 - 6)) and not norm_ran


def test_out_of_range_layer_names_the_depth():
    assert layer_position(-1, 36) == 36 and layer_position(-37, 36) == 0
    with pytest.raises(UserError, match="36 layers"):
        layer_position(-38, 36)
    with pytest.raises(UserError, match=re.escape("valid: -37..36")):
        layer_position(37, 36)
