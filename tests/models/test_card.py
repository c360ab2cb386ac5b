"""Weights with a JSON card: written, found by file, card, folder or shipped name, and loaded exactly."""

from __future__ import annotations

import json

import pytest
import torch

from restore_rwkv.models import ModelCard, create_model, load_model, load_model_card, save_model_with_card
from restore_rwkv.utils.errors import InputError

CT = {"ct": {"unit": "HU", "norm_range": [-1024.0, 3072.0], "eval_window": [-160.0, 240.0]}}


def _model():
    torch.manual_seed(0)
    return create_model("restore_rwkv_light", dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1).eval()


@pytest.mark.parametrize("storage", ["float32", "float16"])
def test_weights_and_card_round_trip(tmp_path, storage):
    model = _model()
    card = ModelCard(model="restore_rwkv_light", task="ct_denoise", conventions=CT,
                     model_args={"dim": 8, "num_blocks": [1, 1, 1, 1], "num_refinement_blocks": 1},
                     patch_size=64, iterations=10, metrics={"psnr": 30.0})
    path = save_model_with_card(model, tmp_path / "w" / "ct.safetensors", card, storage_dtype=storage)
    written = json.loads((tmp_path / "w" / "ct.json").read_text())
    assert written["weights"] == "ct.safetensors" and written["storage_dtype"] == storage and written["version"]
    x = torch.rand(1, 1, 16, 16)
    for spec in (path, tmp_path / "w" / "ct.json", tmp_path / "w"):
        loaded, got = load_model(spec)
        assert got.task == "ct_denoise" and got.conventions == CT and got.metrics == {"psnr": 30.0}
        with torch.no_grad():
            expected, out = model(x), loaded(x)
        if storage == "float32":
            assert torch.equal(out, expected)
        else:
            original = dict(model.named_parameters())  # derived buffers (fused kernels) are rebuilt on load
            for name, value in loaded.named_parameters():  # each weight is the float16 rounding of the original
                assert torch.equal(value, original[name].half().float()), name
            torch.testing.assert_close(out, expected, rtol=0, atol=2e-2)


def test_missing_or_foreign_cards_are_one_line_errors(tmp_path):
    with pytest.raises(InputError, match="not a shipped model"):
        load_model_card(tmp_path / "nothing.safetensors")
    save_model_with_card(_model(), tmp_path / "a.safetensors",
                         ModelCard(model="restore_rwkv_light", task="ct_denoise", conventions=CT,
                                   model_args={"dim": 8, "num_blocks": [1, 1, 1, 1], "num_refinement_blocks": 1}))
    (tmp_path / "a.json").write_text(json.dumps({"model": "x", "task": "t", "conventions": {}, "colour": 1}))
    with pytest.raises(InputError, match="unknown field"):
        load_model_card(tmp_path / "a.safetensors")
    (tmp_path / "a.json").write_text(json.dumps({"model": "no_such_model", "task": "t", "conventions": {}}))
    with pytest.raises(InputError, match="cannot build"):
        load_model(tmp_path / "a.safetensors")
    (tmp_path / "a.json").unlink()
    with pytest.raises(InputError, match="no model card"):
        load_model(tmp_path / "a.safetensors")
