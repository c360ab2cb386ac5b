"""Restoring files: geometry and metadata kept, identity reproduced, tiles seamless, bad input refused."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch

import restore_rwkv.data.io as io
from restore_rwkv.cli import main
from restore_rwkv.modality import get_convention
from restore_rwkv.inference import blend_ramp, plan_slices, restore_file, restore_volume, tile_starts
from restore_rwkv.models.card import ModelCard, save_model_with_card
from restore_rwkv.models.registry import create_model
from restore_rwkv.utils.errors import InputError
from tests.data.conftest import make_ct_series, make_enhanced_ct

TINY = dict(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1)
CT = {"unit": "HU", "norm_range": [-1024.0, 3072.0], "eval_window": [-160.0, 240.0]}
PATIENT_TAGS = ("PatientName", "PatientID", "PatientBirthDate", "StudyInstanceUID", "FrameOfReferenceUID")


def tiny_model(identity: bool) -> torch.nn.Module:
    model = create_model("restore_rwkv_light", **TINY).eval()
    if identity:  # the global residual then returns the (normalised) input itself
        with torch.no_grad():
            model.output.weight.zero_()
            model.output.bias.zero_()
    return model


def card() -> ModelCard:
    return ModelCard(model="restore_rwkv_light", task="ct_denoise", conventions={"ct": dict(CT)},
                     model_args={**TINY, "num_blocks": list(TINY["num_blocks"])})


@pytest.fixture
def weights(tmp_path):
    def make(identity: bool = True):
        name = "identity" if identity else "random"
        return save_model_with_card(tiny_model(identity), tmp_path / "weights" / f"{name}.safetensors", card())
    return make


def test_dicom_series_keeps_geometry_patient_and_gets_new_uids(tmp_path, weights):
    hu = make_ct_series(tmp_path / "ct", slices=5, rows=24, cols=20)
    volume, meta = io.read_image(tmp_path / "ct")
    assert main(["restore", str(tmp_path / "ct"), "--weights", str(weights(True)), "-o", str(tmp_path / "out"),
                 "--quiet", "--device", "cpu"]) == 0
    restored, out_meta = io.read_image(tmp_path / "out")
    assert restored.shape == volume.shape
    np.testing.assert_array_equal(restored, hu)  # identity: exact in int16 HU
    np.testing.assert_allclose(io.voxel_centres(out_meta.affine_in("LPS"), restored.shape),
                               io.voxel_centres(meta.affine_in("LPS"), volume.shape), atol=1e-4)
    before, after = meta.datasets[0], out_meta.datasets[0]
    for tag in PATIENT_TAGS:
        if tag in before:
            assert after[tag].value == before[tag].value, tag
    assert after.SeriesInstanceUID != before.SeriesInstanceUID
    assert {ds.SOPInstanceUID for ds in out_meta.datasets}.isdisjoint({ds.SOPInstanceUID for ds in meta.datasets})
    assert "DERIVED" in list(after.ImageType) and "identity" in after.SeriesDescription
    assert out_meta.dtype == np.int16


def test_nifti_volume_keeps_shape_affine_header_and_dtype(tmp_path, weights):
    rng = np.random.default_rng(1)
    data = rng.integers(-1000, 1500, size=(19, 17, 4)).astype(np.int16)
    affine = np.array([[0.0, 0.0, 2.5, -30], [-0.8, 0.0, 0.0, 40], [0.0, 0.7, 0.0, -12], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(data, affine), str(tmp_path / "in.nii.gz"))
    result = restore_file(tmp_path / "in.nii.gz", tmp_path / "out.nii.gz", weights(True), device="cpu")
    restored, meta = io.read_image(tmp_path / "out.nii.gz")
    assert restored.dtype == np.int16 and restored.shape == data.shape
    np.testing.assert_array_equal(restored, data)
    np.testing.assert_allclose(io.voxel_centres(meta.affine, restored.shape), io.voxel_centres(affine, data.shape),
                               atol=1e-4)  # NIfTI stores the affine in float32
    assert result.axis == io.read_image(tmp_path / "in.nii.gz")[1].slice_axis


def test_random_model_keeps_geometry_and_writes_other_format(tmp_path, weights):
    make_ct_series(tmp_path / "ct", slices=3, rows=16, cols=24)
    volume, meta = io.read_image(tmp_path / "ct")
    restore_file(tmp_path / "ct", tmp_path / "out.nii.gz", weights(False), device="cpu")
    restored, out_meta = io.read_image(tmp_path / "out.nii.gz")
    assert restored.shape == volume.shape and restored.dtype == np.int16
    np.testing.assert_allclose(io.voxel_centres(out_meta.affine_in("LPS"), restored.shape),
                               io.voxel_centres(meta.affine_in("LPS"), volume.shape), atol=1e-4)
    assert not np.array_equal(restored, volume)


def test_tiled_identity_is_exact_and_random_tiles_leave_no_seam():
    rng = np.random.default_rng(2)
    ct = get_convention("ct")
    volume = rng.integers(-1000, 1500, size=(2, 80, 72)).astype(np.float32)
    plan = plan_slices(tiny_model(True), 80, 72, 2, tile=32)
    assert plan.tile == 32 and len(tile_starts(80, 32, plan.overlap)) > 1
    same = restore_volume(tiny_model(True), volume, ct, tile=32, batch_size=2)
    np.testing.assert_array_equal(np.rint(same), volume)
    np.testing.assert_allclose(same, volume, atol=1e-3)

    # two tiles side by side (columns 0-63 and 48-111, overlap 48-63) with random models
    for seed in range(3):
        image = np.random.default_rng(seed).integers(-1000, 1500, size=(1, 64, 112)).astype(np.float32)
        torch.manual_seed(seed)
        model = tiny_model(False)
        assert tile_starts(112, 64, plan_slices(model, 64, 112, 1, tile=64).overlap) == [0, 48]
        tiled = restore_volume(model, image, ct, tile=64)[0].astype(np.float64)
        whole = restore_volume(model, image, ct)[0].astype(np.float64)
        steps = np.abs(np.diff(tiled, axis=1)).mean(axis=0)  # mean |difference| of columns j and j + 1
        band, outside = steps[47:64], np.r_[steps[:47], steps[64:]]
        assert band.max() <= outside.max()
        # the tiling's own contribution (tiled - whole) changes smoothly across the overlap: its largest
        # step there is well under the image's typical neighbour difference (a hard cut reaches 0.4-1.7 x)
        seam = np.abs(np.diff(tiled - whole, axis=1)).mean(axis=0)[47:64].max()
        assert seam < 0.25 * steps.mean()


def test_tiles_batched_per_pass_give_the_output_of_one_tile_per_pass():
    from restore_rwkv.inference.slices import SlicePlan, forward_slices

    torch.manual_seed(5)
    model = tiny_model(False)
    images = torch.rand(2, 56, 72)
    plan = plan_slices(model, 56, 72, 1, tile=16)
    assert plan.batch > 1 and plan.overlap == 8  # small tiles still overlap
    batched = forward_slices(model, images, plan, "cpu")
    single = forward_slices(model, images, SlicePlan(batch=1, tile=plan.tile, overlap=plan.overlap), "cpu")
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)
    # and each slice's tiles are its own: restoring the slices one at a time gives the same
    torch.testing.assert_close(forward_slices(model, images[1:], plan, "cpu")[0], single[1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("command", ["restore", "evaluate"])
def test_a_tile_under_16_pixels_is_refused_before_any_file_is_read(tmp_path, capsys, command):
    missing = str(tmp_path / "nowhere.nii.gz")  # never read: the option is checked first
    where = ["-o", str(tmp_path / "out")] if command == "restore" else ["--data", missing, "--out", str(tmp_path / "out")]
    argv = [command] + ([missing] if command == "restore" else []) + ["--weights", "ct_denoise_light", *where,
                                                                      "--tile", "8", "--quiet"]
    assert main(argv) == 2
    assert "--tile must be 0 (whole slices) or at least 16 pixels; got 8" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_blend_ramp_is_smooth_and_positive():
    ramp = blend_ramp(32, 8, True, True)
    assert ramp.min() > 0 and ramp.max() == 1.0
    assert np.all(np.diff(ramp[:8]) > 0) and np.all(np.diff(ramp[-8:]) < 0)
    np.testing.assert_allclose(ramp[:8] + ramp[:8][::-1], 1.0)


def test_max_memory_switches_to_tiles():
    model = tiny_model(True)
    assert plan_slices(model, 512, 512, 4).tile is None
    tiled = plan_slices(model, 512, 512, 4, max_memory=64 << 20)
    assert tiled.tile is not None and tiled.tile % 8 == 0 and tiled.tile < 512


def test_batch_with_a_corrupt_file(tmp_path, weights, capsys):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    rng = np.random.default_rng(4)
    for name in ("a", "c"):
        nib.save(nib.Nifti1Image(rng.integers(-900, 900, (12, 10, 3)).astype(np.int16), np.eye(4)),
                 str(inputs / f"{name}.nii.gz"))
    (inputs / "b.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    code = main(["restore", str(inputs), "--weights", str(weights(True)), "-o", str(tmp_path / "out"), "--quiet",
                 "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 3
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.nii.gz", "c.nii.gz"]
    assert "b.nii.gz" in err and "Traceback" not in err


def test_all_bad_inputs_exit_2_and_write_nothing(tmp_path, weights, capsys):
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00")
    assert main(["restore", str(bad), "--weights", str(weights(True)), "-o", str(tmp_path / "out.dcm"), "--quiet",
                 "--device", "cpu"]) == 2
    assert not (tmp_path / "out.dcm").exists()
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_nan_and_4d_nifti_are_refused(tmp_path, weights):
    nan = np.zeros((8, 8, 2), np.float32)
    nan[1, 1, 1] = np.nan
    nib.save(nib.Nifti1Image(nan, np.eye(4)), str(tmp_path / "nan.nii"))
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 2, 3), np.float32), np.eye(4)), str(tmp_path / "t.nii"))
    for name in ("nan.nii", "t.nii"):
        with pytest.raises(InputError, match=name):
            restore_file(tmp_path / name, tmp_path / f"out_{name}", weights(True), device="cpu")
        assert not (tmp_path / f"out_{name}").exists()


def test_refuses_input_target_existing_output_and_wrong_modality(tmp_path, weights, capsys):
    make_ct_series(tmp_path / "ct", slices=2, rows=8, cols=8)
    w = str(weights(True))
    assert main(["restore", str(tmp_path / "ct"), "--weights", w, "-o", str(tmp_path / "ct" / "x"), "--quiet"]) == 2
    (tmp_path / "exists.nii.gz").write_bytes(b"x")
    assert main(["restore", str(tmp_path / "ct"), "--weights", w, "-o", str(tmp_path / "exists.nii.gz"), "--quiet"]) == 2
    make_ct_series(tmp_path / "mr", slices=2, rows=8, cols=8, edit=lambda ds, k: setattr(ds, "Modality", "MR"))
    assert main(["restore", str(tmp_path / "mr"), "--weights", w, "-o", str(tmp_path / "mr_out"), "--quiet"]) == 2
    assert "trained on ct, not mri" in capsys.readouterr().err
    assert not (tmp_path / "mr_out").exists()
    assert main(["restore", str(tmp_path / "mr"), "--weights", w, "-o", str(tmp_path / "mr_out"), "--quiet",
                 "--force"]) == 0


def test_odd_size_single_slice_and_preview(tmp_path, weights):
    make_ct_series(tmp_path / "odd", slices=1, rows=511, cols=497)
    volume, _ = io.read_image(tmp_path / "odd")
    assert main(["restore", str(tmp_path / "odd"), "--weights", str(weights(True)), "-o", str(tmp_path / "out"),
                 "--quiet", "--device", "cpu", "--preview", str(tmp_path / "p.png"),
                 "--reference", str(tmp_path / "odd")]) == 0
    restored, _ = io.read_image(tmp_path / "out")
    assert restored.shape == (1, 511, 497)
    np.testing.assert_array_equal(restored, volume)
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_multiframe_dicom(tmp_path, weights):
    make_ct_series(tmp_path / "series", slices=3, rows=12, cols=10, shuffle=False)
    make_enhanced_ct(tmp_path / "series", tmp_path / "multi.dcm")
    volume, meta = io.read_image(tmp_path / "multi.dcm")
    restore_file(tmp_path / "multi.dcm", tmp_path / "out.dcm", weights(True), device="cpu")
    restored, out_meta = io.read_image(tmp_path / "out.dcm")
    np.testing.assert_array_equal(restored, volume)
    ds = pydicom.dcmread(tmp_path / "out.dcm")
    assert ds.SeriesInstanceUID != meta.datasets[0].SeriesInstanceUID and ds.PatientID == meta.datasets[0].PatientID
    np.testing.assert_allclose(out_meta.affine, meta.affine, atol=1e-5)


def test_a_training_runs_model_file_is_named_after_its_run(tmp_path):
    """A run folder's ``model.safetensors`` names the run (not "model") in the derived series and the preview title."""
    from restore_rwkv.models.card import weights_name

    run_weights = save_model_with_card(tiny_model(True), tmp_path / "runs" / "ct_demo" / "model.safetensors", card())
    assert weights_name(run_weights) == "ct_demo"
    assert weights_name(tmp_path / "ct_denoise_light.safetensors") == "ct_denoise_light"
    make_ct_series(tmp_path / "ct", slices=2, rows=16, cols=16)
    assert main(["restore", str(tmp_path / "ct"), "--weights", str(tmp_path / "runs" / "ct_demo"), "-o",
                 str(tmp_path / "out"), "--quiet", "--device", "cpu"]) == 0
    _, out_meta = io.read_image(tmp_path / "out")
    assert out_meta.datasets[0].SeriesDescription.endswith("(restored by restore-rwkv ct_demo)")


def test_restore_runs_in_tiles_of_the_cards_patch_size_unless_told_otherwise(tmp_path):
    import dataclasses

    from restore_rwkv.inference import inference_tile

    assert inference_tile(64) == 64 and inference_tile(64, 0) is None and inference_tile(None) is None
    assert inference_tile(64, 128) == 128 and inference_tile(None, 32) == 32
    assert inference_tile(8) == 16  # a card trained on smaller patches restores in the smallest tiles
    with pytest.raises(ValueError):
        inference_tile(64, -8)
    with pytest.raises(InputError, match="at least 16 pixels; got 8"):
        inference_tile(64, 8)
    assert plan_slices(tiny_model(True), 48, 40, 1, tile=64).tile is None  # one tile would be the whole slice
    torch.manual_seed(3)
    model = tiny_model(False)
    weights = save_model_with_card(model, tmp_path / "w.safetensors", dataclasses.replace(card(), patch_size=32))
    rng = np.random.default_rng(0)
    image = np.cumsum(rng.normal(0, 30, (2, 72, 80)), axis=2).astype(np.float32) - 200
    nib.save(nib.Nifti1Image(image, np.eye(4)), tmp_path / "in.nii.gz")
    ct = get_convention("ct")
    results = {tile: restore_file(tmp_path / "in.nii.gz", tmp_path / f"out_{tile}.nii.gz", weights, device="cpu",
                                  tile=tile, axis=0) for tile in (None, 0, 48)}
    assert (results[None].tile, results[0].tile, results[48].tile) == (32, None, 48)
    for tile, expected_tile in ((None, 32), (0, None), (48, 48)):
        restored = np.asarray(nib.load(tmp_path / f"out_{tile}.nii.gz").dataobj)
        expected = restore_volume(model, image, ct, axis=0, tile=expected_tile)
        np.testing.assert_allclose(restored, expected, rtol=1e-5, atol=1e-2)
    default = np.asarray(nib.load(tmp_path / "out_None.nii.gz").dataobj)
    whole = np.asarray(nib.load(tmp_path / "out_0.nii.gz").dataobj)
    assert np.abs(default - whole).max() > 1.0  # tiles of 32 are not the whole slice for a Re-WKV model
    # a card that chose its tile on validation data restores in that tile by default (0: whole slices)
    for chosen, expected_tile in ((48, 48), (0, None)):
        chosen_weights = save_model_with_card(model, tmp_path / f"chosen{chosen}.safetensors",
                                              dataclasses.replace(card(), patch_size=32, tile=chosen))
        result = restore_file(tmp_path / "in.nii.gz", tmp_path / f"chosen_{chosen}.nii.gz", chosen_weights,
                              device="cpu", axis=0)
        assert result.tile == expected_tile
        np.testing.assert_array_equal(np.asarray(nib.load(tmp_path / f"chosen_{chosen}.nii.gz").dataobj),
                                      np.asarray(nib.load(tmp_path / f"out_{chosen}.nii.gz").dataobj))


def test_restore_array_slices_along_the_coarsest_axis_and_keeps_the_units(weights):
    import restore_rwkv

    rng = np.random.default_rng(4)
    volume = rng.uniform(-900.0, 1500.0, (24, 20, 5)).astype(np.float32)  # 5 thick slices along axis 2
    w = weights(False)
    by_spacing = restore_rwkv.restore_array(volume, w, spacing=(0.7, 0.7, 5.0), device="cpu")
    assert by_spacing.shape == volume.shape and by_spacing.dtype == np.float32
    np.testing.assert_array_equal(by_spacing, restore_rwkv.restore_array(volume, w, axis=2, device="cpu"))
    assert not np.allclose(by_spacing, restore_rwkv.restore_array(volume, w, axis=0, device="cpu"))
    iso = restore_rwkv.restore_array(volume, w, spacing=(1.0, 1.0, 1.0), device="cpu")  # no coarsest axis: axis 0
    np.testing.assert_array_equal(iso, restore_rwkv.restore_array(volume, w, axis=0, device="cpu"))
    with pytest.raises(InputError, match="CT values must be in HU"):
        restore_rwkv.restore_array(volume, w, units="mm", device="cpu")
    with pytest.raises(InputError, match="expected a 2-D image or 3-D volume"):
        restore_rwkv.restore_array(volume[None], w, device="cpu")


def test_a_streamed_mr_series_gets_the_scale_of_the_whole_volume(tmp_path, monkeypatch):
    """An MR series restored into a series (streamed: the scale fitted in a first pass over the files) and
    into NIfTI (read whole) gives the output restore_array gives the volume, above FIT_SAMPLE too."""
    import restore_rwkv
    import restore_rwkv.modality as modality
    from restore_rwkv.modality import get_convention

    monkeypatch.setattr(modality, "FIT_SAMPLE", 1000)  # 2,400 voxels: every third enters the fit

    def mr(ds, k):
        ds.Modality, ds.SOPClassUID = "MR", "1.2.840.10008.5.1.4.1.1.4"
        ds.RescaleSlope, ds.RescaleIntercept = 1, 0

    make_ct_series(tmp_path / "mr", slices=5, rows=24, cols=20, edit=mr)
    for path in (tmp_path / "mr").iterdir():  # magnitude values, as MR files store them
        ds = pydicom.dcmread(path)
        ds.PixelData = np.abs(ds.pixel_array).astype(np.int16).tobytes()
        ds.save_as(path)
    volume, _ = io.read_image(tmp_path / "mr")
    torch.manual_seed(1)
    card = ModelCard(model="restore_rwkv_light", task="mri_sr", conventions={"mri": get_convention("mri").to_card()},
                     model_args={**TINY, "num_blocks": list(TINY["num_blocks"])})
    weights = save_model_with_card(tiny_model(False), tmp_path / "w" / "mr.safetensors", card)
    expected = restore_rwkv.restore_array(volume, weights, device="cpu")
    for target in ("series", "whole.nii.gz"):
        assert main(["restore", str(tmp_path / "mr"), "--weights", str(weights), "-o", str(tmp_path / target),
                     "--quiet", "--device", "cpu"]) == 0
        restored = io.read_image(tmp_path / target)[0]
        np.testing.assert_allclose(restored, expected, rtol=0, atol=1e-3 * float(np.abs(expected).max()))
    sample = volume.reshape(-1)[::3].astype(np.float64)
    scale = get_convention("mri").scaling.scale_of_sample(sample)
    assert scale != pytest.approx(get_convention("mri").scaling.scale_of_sample(volume.reshape(-1).astype(float)))
    unscaled = restore_rwkv.restore_array(volume / scale, weights, scale=1.0, device="cpu") * scale
    np.testing.assert_allclose(expected, unscaled, rtol=1e-4, atol=1e-3)


def test_torchrun_shards_the_inputs_and_reports_every_ranks_failures_once(tmp_path, weights):
    """Two gloo processes: each input restored by exactly one of them, outputs equal to one process's,
    the broken file reported once in rank 0's summary, and both ranks exit with the same status."""
    import os
    import subprocess
    import sys

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    rng = np.random.default_rng(7)
    names = ["a", "b", "c", "d"]
    for name in names:
        nib.save(nib.Nifti1Image(rng.integers(-900, 900, (12, 10, 3)).astype(np.int16), np.eye(4)),
                 str(inputs / f"{name}.nii.gz"))
    (inputs / "broken.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    w = str(weights(False))
    assert main(["restore", str(inputs), "--weights", w, "-o", str(tmp_path / "one"), "--quiet", "--device", "cpu"]) == 3
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "restore_rwkv", "restore", str(inputs), "--weights", w, "-o", str(tmp_path / "two"),
                           "--quiet", "--device", "cpu"], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 1, done.stderr[-2000:]  # torchrun's status for a failed worker
    # rank 0 carries PARTIAL; rank 1 exits 0 after the final barrier (torchrun may still SIGTERM it while it
    # shuts down, when rank 0's exit is seen first: its work is done by then, as the outputs below show)
    assert "exitcode  : 3" in done.stderr and "(exitcode: 3) local_rank: 0" in done.stderr
    restored = [line.split(" -> ")[0] for line in done.stdout.splitlines() if " -> " in line]
    assert sorted(restored) == sorted(str(inputs / f"{name}.nii.gz") for name in names), done.stdout  # each once
    assert done.stderr.count("1 of 5 input(s) not restored") == 1
    assert done.stderr.count(f"  {inputs / 'broken.nii.gz'}") == 1
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == [f"{name}.nii.gz" for name in names]
    for name in names:
        one = nib.load(str(tmp_path / "one" / f"{name}.nii.gz"))
        two = nib.load(str(tmp_path / "two" / f"{name}.nii.gz"))
        np.testing.assert_array_equal(np.asarray(two.dataobj), np.asarray(one.dataobj))
        np.testing.assert_array_equal(two.affine, one.affine)
