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
    (tmp_path / "a.json").write_text(json.dumps({"model": "x", "task": "t", "conventions": {}}))
    with pytest.raises(InputError, match="conventions must map"):
        load_model_card(tmp_path / "a.safetensors")
    (tmp_path / "a.json").write_text(json.dumps({"model": "x", "task": "t", "conventions": {"ct": {"norm_range": [1, 0]}}}))
    with pytest.raises(InputError, match="convention 'ct': .*low < high"):
        load_model_card(tmp_path / "a.safetensors")
    (tmp_path / "a.json").write_text(json.dumps({"model": "no_such_model", "task": "t", "conventions": CT}))
    with pytest.raises(InputError, match="cannot build"):
        load_model(tmp_path / "a.safetensors")
    for tile in (-64, 4, 64.5, True, "64"):
        (tmp_path / "a.json").write_text(json.dumps({"model": "restore_rwkv_light", "task": "t", "conventions": CT,
                                                     "tile": tile}))
        with pytest.raises(InputError, match=r"a\.json: model card's tile must be 0 \(whole slices\) or a whole number of pixels of at least 16"):
            load_model_card(tmp_path / "a.safetensors")
    (tmp_path / "a.json").unlink()
    with pytest.raises(InputError, match="no model card"):
        load_model(tmp_path / "a.safetensors")


def test_a_card_from_a_newer_version_loads_with_a_warning(tmp_path):
    """Fields this version does not know (top level or in a convention) are ignored with a warning, not refused."""
    args = {"dim": 8, "num_blocks": [1, 1, 1, 1], "num_refinement_blocks": 1}
    path = save_model_with_card(_model(), tmp_path / "a.safetensors",
                                ModelCard(model="restore_rwkv_light", task="ct_denoise", conventions=CT, model_args=args))
    data = json.loads((tmp_path / "a.json").read_text())
    data.update(format=99, colour="blue")
    data["conventions"]["ct"]["dose_model"] = "v2"
    (tmp_path / "a.json").write_text(json.dumps(data))
    with pytest.warns(UserWarning, match=r"\['colour'\] unknown") as caught:
        model, card = load_model(path)
    assert any("dose_model" in str(w.message) for w in caught)
    assert card.task == "ct_denoise" and card.convention("ct").norm_range == (-1024.0, 3072.0)
    with torch.no_grad():
        torch.testing.assert_close(model(torch.zeros(1, 1, 16, 16)), _model()(torch.zeros(1, 1, 16, 16)))


def test_format_1_cards_keep_the_scalings_their_models_were_trained_with():
    """A card entry without ``scaling`` (format 1) restores MR unscaled, as those models were trained;
    a new entry round-trips its policy."""
    from restore_rwkv.modality import ModalityConvention, get_convention

    old = ModelCard(model="m", task="mri_sr", conventions={"mri": {"unit": "a.u.", "norm_range": [0, 4095],
                                                                   "eval_window": [0, 4095]}})
    assert old.convention("mri").scaling.kind == "fixed"
    assert old.convention_for("MR").scaling.kind == "fixed"
    new = get_convention("mri")
    assert new.scaling.kind == "foreground_percentile"
    assert ModalityConvention.from_card(new.to_card(), "mri") == new
    card = ModelCard(model="m", task="all_in_one", conventions={c: get_convention(c).to_card() for c in ("ct", "mri", "pet")})
    assert [card.convention_for(label).name for label in ("CT", "MR", "PT")] == ["ct", "mri", "pet"]
    with pytest.raises(InputError, match="choose one with --modality"):
        card.convention_for(None)
    with pytest.raises(InputError, match="does not match"):
        card.convention_for("CT", modality="pet")
