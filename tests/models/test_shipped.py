"""The pretrained demo models that ship inside the package: they load, their cards validate, they reproduce."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from restore_rwkv.models.card import ModelCard, card_path, load_model, shipped_models
from restore_rwkv.models.pretrained import load_pretrained
from restore_rwkv.models.registry import create_model

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "shipped"
EXPECTED = {"ct_denoise_light": "ct_denoise", "mri_sr_x4_light": "mri_sr", "pet_synthesis_light": "pet",
            "all_in_one_light": "all_in_one"}


SHIPPED = sorted(shipped_models())


def test_the_four_demo_models_ship():
    assert set(SHIPPED) == set(EXPECTED)  # make demo needs every one of them


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_loads_validates_and_reproduces_its_fixture(name):
    weights = shipped_models()[name]
    data = json.loads(card_path(weights).read_text())
    card = ModelCard.from_dict(data, card_path(weights))  # the card validates
    assert card.task == EXPECTED[name] and card.model == "restore_rwkv_light"
    assert card.weights == weights.name and card.storage_dtype == "float16"
    assert card.iterations and card.iterations >= 1000
    assert "not for clinical use" in card.notes
    assert all(np.isfinite(v) for v in card.metrics.values()) and card.metrics
    model = load_pretrained(create_model(card.model, **card.model_args), weights).eval()
    fixture = np.load(FIXTURES / f"{name}.npz")
    with torch.inference_mode():
        output = model(torch.from_numpy(fixture["input"])[None, None])[0, 0].numpy()
    np.testing.assert_allclose(output, fixture["output"], atol=1e-4, rtol=0)
    same, _ = load_model(name)  # the shipped name resolves (as in --weights NAME)
    assert sum(p.numel() for p in same.parameters()) == sum(p.numel() for p in model.parameters())
