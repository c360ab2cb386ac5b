"""The self-ensemble: against a symmetrised kernel, equivariance, and its use by restore and evaluate."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import ndimage

import restore_rwkv
import restore_rwkv.data.io as io
from restore_rwkv.cli import main
from restore_rwkv.inference import SelfEnsemble, estimate_memory, with_self_ensemble
from restore_rwkv.utils.errors import InputError
from tests.data.conftest import make_ct_series
from tests.inference.test_restore import tiny_model, weights  # noqa: F401  (a fixture)


def conv_model(kernel: np.ndarray) -> torch.nn.Module:
    conv = torch.nn.Conv2d(1, 1, kernel.shape[0], padding=kernel.shape[0] // 2, bias=False, dtype=torch.float64)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(kernel)[None, None])
    return conv


def dihedral_mean(kernel: np.ndarray, size: int) -> np.ndarray:
    """The kernel averaged over the group the ensemble of ``size`` averages over (numpy's own rotations)."""
    turns = {1: [0], 2: [0, 2], 4: [0, 1, 2, 3], 8: [0, 1, 2, 3]}[size]
    copies = [np.rot90(kernel, k) for k in turns]
    if size == 8:
        copies += [np.fliplr(c) for c in copies]
    return np.mean(copies, axis=0)


@pytest.mark.parametrize("size", [1, 2, 4, 8])
def test_ensemble_of_a_convolution_is_the_convolution_with_the_symmetrised_kernel(size):
    rng = np.random.default_rng(size)
    kernel = rng.normal(size=(5, 5))  # no symmetry at all
    image = rng.normal(size=(13, 17))  # not square: the turned copies are 17 x 13
    with torch.no_grad():
        out = SelfEnsemble(conv_model(kernel), size)(torch.from_numpy(image)[None, None])[0, 0].numpy()
    expected = ndimage.correlate(image, dihedral_mean(kernel, size), mode="constant")
    np.testing.assert_allclose(out, expected, atol=1e-12)
    if size > 1:
        assert not np.allclose(out, ndimage.correlate(image, kernel, mode="constant"), atol=1e-3)


def test_the_full_ensemble_of_a_restore_rwkv_is_equivariant_to_every_turn_and_flip():
    model = tiny_model(identity=False)
    image = torch.rand(1, 1, 24, 24)
    with torch.no_grad():
        whole = SelfEnsemble(model, 8)(image)
        quarter = SelfEnsemble(model, 4)(image)
        single = model(image)
        for turn in (1, 2, 3):
            turned = torch.rot90(image, turn, (-2, -1))
            torch.testing.assert_close(SelfEnsemble(model, 8)(turned), torch.rot90(whole, turn, (-2, -1)))
            torch.testing.assert_close(SelfEnsemble(model, 4)(turned), torch.rot90(quarter, turn, (-2, -1)))
        torch.testing.assert_close(SelfEnsemble(model, 8)(image.flip(-1)), whole.flip(-1))
        # the network alone is not equivariant, so the check above has something to find
        assert not torch.allclose(model(torch.rot90(image, 1, (-2, -1))), torch.rot90(single, 1, (-2, -1)), atol=1e-4)


def test_restore_array_averages_the_restorations_of_the_turned_and_flipped_slices(weights):  # noqa: F811
    rng = np.random.default_rng(3)
    volume = rng.uniform(-900.0, 1500.0, (2, 24, 24)).astype(np.float32)
    w = weights(False)
    averaged = restore_rwkv.restore_array(volume, w, axis=0, tile=0, device="cpu", self_ensemble=8)
    copies = []
    for turns in range(4):
        for mirrored in (False, True):
            view = np.rot90(volume, turns, (1, 2))
            view = view[:, :, ::-1] if mirrored else view
            out = restore_rwkv.restore_array(np.ascontiguousarray(view), w, axis=0, tile=0, device="cpu")
            out = out[:, :, ::-1] if mirrored else out
            copies.append(np.rot90(out, -turns, (1, 2)))
    np.testing.assert_allclose(averaged, np.mean(copies, axis=0), atol=0.05)  # HU; float32 passes
    assert np.abs(averaged - restore_rwkv.restore_array(volume, w, axis=0, tile=0, device="cpu")).max() > 1.0
    with pytest.raises(InputError, match="--self-ensemble must be one of 1, 2, 4, 8; got 3"):
        restore_rwkv.restore_array(volume, w, axis=0, device="cpu", self_ensemble=3)


def test_non_square_slices_and_tiles_keep_the_ensembles_equivariance(weights):  # noqa: F811
    model = tiny_model(identity=False)
    image = torch.rand(1, 1, 24, 32)  # the quarter turns see 32 x 24
    with torch.no_grad():
        torch.testing.assert_close(SelfEnsemble(model, 8)(torch.rot90(image, 1, (-2, -1))),
                                   torch.rot90(SelfEnsemble(model, 8)(image), 1, (-2, -1)))
    # tiled (16-pixel tiles on 24 x 40 slices): the identity network stays exact, a random one changes
    rng = np.random.default_rng(6)
    volume = rng.uniform(-900.0, 1500.0, (2, 24, 40)).astype(np.float32)
    same = restore_rwkv.restore_array(volume, weights(True), axis=0, tile=16, device="cpu", self_ensemble=4)
    np.testing.assert_allclose(same, volume, atol=0.05)
    random = weights(False)
    tiled = {n: restore_rwkv.restore_array(volume, random, axis=0, tile=16, device="cpu", self_ensemble=n)
             for n in (1, 2)}
    assert tiled[2].shape == volume.shape and np.abs(tiled[2] - tiled[1]).max() > 1.0


def test_an_ensemble_of_an_ensemble_and_a_bad_size_in_a_batch_are_refused_once(tmp_path, weights):  # noqa: F811
    from restore_rwkv.inference import restore_files

    with pytest.raises(InputError, match="already averages 8 copies"):
        with_self_ensemble(SelfEnsemble(tiny_model(identity=True), 8), 2)
    with pytest.raises(InputError, match="--self-ensemble must be one of"):
        list(restore_files([tmp_path / "a.npy", tmp_path / "b.npy"], [tmp_path / "x.npy", tmp_path / "y.npy"],
                           weights(True), device="cpu", self_ensemble=5))


def test_the_memory_estimate_sees_through_the_ensemble():
    model = tiny_model(identity=False)
    assert with_self_ensemble(model, 1) is model
    assert estimate_memory(with_self_ensemble(model, 8), 64, 64) == estimate_memory(model, 64, 64)


def test_restore_takes_self_ensemble_and_says_so(tmp_path, weights, capsys, monkeypatch):  # noqa: F811
    import restore_rwkv.inference.batch as batch

    titles = []
    monkeypatch.setattr(batch, "write_restore_preview", lambda *args, **kwargs: titles.append(kwargs["title"]))
    make_ct_series(tmp_path / "ct", slices=3, rows=24, cols=24)
    w = str(weights(False))
    assert main(["restore", str(tmp_path / "ct"), "--weights", w, "-o", str(tmp_path / "out"), "--quiet",
                 "--device", "cpu", "--self-ensemble", "8", "--preview", str(tmp_path / "p.png")]) == 0
    assert "self-ensemble x8" in capsys.readouterr().out
    assert len(titles) == 1 and "(ct, self-ensemble x8)" in titles[0]
    _, meta = io.read_image(tmp_path / "out")
    assert "averaged over 8 rotations/flips of each slice" in meta.datasets[0].DerivationDescription
    one = restore_rwkv.restore_array(io.read_image(tmp_path / "ct")[0], w, axis=0, device="cpu", self_ensemble=8)
    np.testing.assert_allclose(io.read_image(tmp_path / "out")[0], one, atol=1.0)  # the series stores whole HU

    with pytest.raises(SystemExit) as exc:
        main(["restore", str(tmp_path / "ct"), "--weights", w, "-o", str(tmp_path / "bad"), "--self-ensemble", "3"])
    assert exc.value.code == 2 and not (tmp_path / "bad").exists()
    assert "--self-ensemble" in capsys.readouterr().err


def test_evaluate_applies_and_records_the_ensemble(tmp_path, weights):  # noqa: F811
    from restore_rwkv.engine.evaluation import evaluate_weights

    rng = np.random.default_rng(5)
    root = tmp_path / "data"
    for kind in ("LQ", "HQ"):
        (root / "CT" / "test" / kind).mkdir(parents=True)
    for k in range(2):
        hq = ndimage.gaussian_filter(rng.uniform(-200.0, 200.0, (24, 24)), 2.0).astype(np.float32)
        np.save(root / "CT" / "test" / "HQ" / f"s{k}.npy", hq)
        np.save(root / "CT" / "test" / "LQ" / f"s{k}.npy", (hq + rng.normal(0.0, 40.0, hq.shape)).astype(np.float32))
    assert main(["evaluate", "--weights", str(weights(False)), "--data", str(root), "--out", str(tmp_path / "cli"),
                 "--device", "cpu", "--quiet", "--self-ensemble", "4"]) == 0
    assert json.loads((tmp_path / "cli" / "summary.json").read_text())["self_ensemble"] == 4
    scores = {}
    for identity in (True, False):
        for n in (1, 8):
            out = tmp_path / f"{identity}_x{n}"
            report, _ = evaluate_weights(weights(identity), root, out, device="cpu", quiet=True, self_ensemble=n)
            assert json.loads((out / "summary.json").read_text())["self_ensemble"] == n
            scores[identity, n] = report["per_task"]["ct_denoise"]["psnr_out"]["mean"]
    assert scores[True, 8] == pytest.approx(scores[True, 1], abs=1e-4)  # the identity is exactly equivariant
    assert abs(scores[False, 8] - scores[False, 1]) > 0.01  # a random network is not
