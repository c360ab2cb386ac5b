"""`restore-rwkv prepare` on small inputs laid out like the real datasets, and the demo."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from restore_rwkv.cli import main
from restore_rwkv.data.prepare import split_counts
from restore_rwkv.utils.errors import InputError


def _rows(root):
    with open(root / "manifest.csv") as fh:
        return list(csv.DictReader(fh))


def _ixi_like(folder, n_subjects: int, shape=(24, 24, 10)):
    import nibabel as nib

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for s in range(n_subjects):
        data = np.zeros(shape, np.float32)
        data[4:-4, 4:-4, 1:-1] = rng.random((shape[0] - 8, shape[1] - 8, shape[2] - 2)) * 1000 + 200
        nib.save(nib.Nifti1Image(data, np.diag([1.0, 1.0, 1.2, 1.0])),
                 folder / f"IXI{s + 2:03d}-{['Guys', 'HH', 'IOP'][s % 3]}-{800 + s:04d}-T2.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros(shape, np.float32), np.eye(4)), folder / "IXI002-Guys-0800-PD.nii.gz")


def test_split_counts_scale_the_papers_splits():
    assert split_counts(578, (405, 59, 114)) == (405, 59, 114)
    assert split_counts(10, (8, 1, 1)) == (8, 1, 1)
    assert split_counts(6, (405, 59, 114)) == (4, 1, 1)
    assert sum(split_counts(57, (405, 59, 114))) == 57


def test_prepare_ixi_layout_split_and_bad_volume(tmp_path, capsys):
    import nibabel as nib

    src = tmp_path / "IXI-T2"
    _ixi_like(src, 6)
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4, 2), np.float32), np.eye(4)), src / "IXI099-HH-1999-T2.nii.gz")
    out = tmp_path / "prepared"
    assert main(["prepare", "ixi", "--src", str(src), "--out", str(out), "--slices", "4", "--quiet"]) == 3  # 1 skipped
    rows = _rows(out)
    subjects = {split: {r["hq"].split("/")[-1].split("_")[0] for r in rows if r["split"] == split}
                for split in ("train", "validation", "test")}
    assert [len(subjects[s]) for s in ("train", "validation", "test")] == [4, 1, 1]
    assert not (subjects["train"] & subjects["test"]) and not (subjects["train"] & subjects["validation"])
    assert len(rows) == 6 * 4 and all(r["task"] == "mri_sr" for r in rows)
    first = rows[0]
    assert first["lq"].startswith(f"MRI/{first['split']}/LQ/") and first["hq"].startswith(f"MRI/{first['split']}/HQ/")
    lq, hq = np.load(out / first["lq"]), np.load(out / first["hq"])
    assert lq.shape == hq.shape == (24, 24) and lq.dtype == np.float32
    # LQ is the k-space truncation of HQ
    from restore_rwkv.physics import KSpaceTruncation
    import torch

    assert np.allclose(lq, KSpaceTruncation(4)(torch.from_numpy(hq)).numpy(), atol=1e-3)
    summary = json.loads((out / "summary.json").read_text())
    assert [(f["input"], "3-D" in f["reason"]) for f in summary["failures"]] == [(str(src / "IXI099-HH-1999-T2.nii.gz"), True)]
    assert [f["input"] for f in summary["ignored"]] == [str(src / "IXI002-Guys-0800-PD.nii.gz")]
    assert summary["inputs"] == {"found": 7, "used": 6, "skipped": 1}
    assert "skipped 1 input" in capsys.readouterr().out


def test_prepare_aapm_pairs_by_position(tmp_path, series_factory):
    src = tmp_path / "AAPM"
    volumes = {}
    for n, patient in enumerate(("L067", "L096", "L109")):
        volumes[patient] = (series_factory(src / patient / "full_1mm", slices=4, seed=n, description="FD"),
                            series_factory(src / patient / "quarter_1mm", slices=4, seed=10 + n, description="QD"))
    (src / "notes").mkdir()  # not a patient folder: ignored (listed as such), not a failure
    out = tmp_path / "ct"
    assert main(["prepare", "aapm", "--src", str(src), "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failures"] == [] and [f["input"] for f in summary["ignored"]] == [str(src / "notes")]
    rows = _rows(out)
    assert sorted(r["split"] for r in rows).count("train") == 4 and len(rows) == 12
    for r in rows:
        patient, index = r["hq"].split("/")[-1][:-4].split("_")
        full, quarter = volumes[patient]
        assert np.array_equal(np.load(out / r["hq"]), full[int(index)])
        assert np.array_equal(np.load(out / r["lq"]), quarter[int(index)])  # same z position


def test_prepare_simulate_skips_nan_images_and_reports(tmp_path, capsys):
    src = tmp_path / "hq"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        np.save(src / f"slice{i}.npy", (rng.random((32, 32)) * 400 - 200).astype(np.float32))
    bad = np.zeros((32, 32), np.float32)
    bad[3, 3] = np.nan
    np.save(src / "broken.npy", bad)
    out = tmp_path / "sim"
    assert main(["prepare", "simulate", "--task", "ct_denoise", "--src", str(src), "--out", str(out), "--quiet"]) == 3
    rows = _rows(out)
    assert len(rows) == 4 and all(r["lq"].startswith("CT/") for r in rows)
    printed = capsys.readouterr().out
    assert "broken.npy" in printed and "NaN" in printed


def test_prepare_refuses_bad_sources_without_leaving_output(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out"
    assert main(["prepare", "ixi", "--src", str(empty), "--out", str(out), "--quiet"]) == 2
    message = capsys.readouterr().err.strip()
    assert str(empty) in message and len(message.splitlines()) == 1
    src = tmp_path / "all_bad"
    src.mkdir()
    bad = np.full((16, 16), np.nan, np.float32)
    np.save(src / "nan.npy", bad)
    assert main(["prepare", "simulate", "--task", "mri_sr", "--src", str(src), "--out", str(out), "--quiet"]) == 2
    assert not out.exists() and not [p for p in tmp_path.iterdir() if ".partial" in p.name]
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    assert main(["prepare", "demo", "--out", str(out), "--quiet"]) == 2
    assert (out / "keep.txt").read_text() == "user data"


def _noise_hu(image: np.ndarray) -> float:
    """Robust noise estimate (HU) in soft tissue (0-80 HU): MAD of the residual of a 3 x 3 mean."""
    from scipy import ndimage

    image = image.astype(np.float64)
    soft = ndimage.binary_erosion((image > 0) & (image < 80), iterations=3)
    residual = image - ndimage.uniform_filter(image, 3)
    return float(np.median(np.abs(residual[soft])) * 1.4826 / np.sqrt(1 - 1 / 9))


def _same_up_to_dihedral(a: np.ndarray, b: np.ndarray) -> bool:
    for k in range(4):
        for candidate in (np.rot90(b, k), np.rot90(b[::-1], k)):
            if candidate.shape == a.shape and np.allclose(candidate, a, atol=1e-3):
                return True
    return False


def test_prepare_demo_builds_all_tasks_offline(demo_root):
    rows = _rows(demo_root)
    for task, folder in (("mri_sr", "MRI"), ("ct_denoise", "CT"), ("pet", "PET")):
        mine = [r for r in rows if r["task"] == task]
        for split in ("train", "validation", "test"):
            assert any(r["split"] == split for r in mine), (task, split)
        assert all(r["hq"].startswith(folder + "/") for r in mine)
        for r in mine[:3] + mine[-3:]:
            lq, hq = np.load(demo_root / r["lq"]), np.load(demo_root / r["hq"])
            assert lq.shape == hq.shape and np.isfinite(lq).all() and np.isfinite(hq).all()
            assert not np.array_equal(lq, hq)
    ct = [r for r in rows if r["task"] == "ct_denoise"]
    assert {np.load(demo_root / r["hq"]).shape for r in ct} == {(512, 512)}  # CT as scanners write it


def test_demo_test_images_are_real_clean_and_never_seen_in_training(demo_root):
    rows = _rows(demo_root)
    for task in ("mri_sr", "ct_denoise"):
        train = [np.load(demo_root / r["hq"]) for r in rows if r["task"] == task and r["split"] == "train"]
        test = [r for r in rows if r["task"] == task and r["split"] == "test"]
        assert test
        for r in test:
            hq = np.load(demo_root / r["hq"])
            assert not any(_same_up_to_dihedral(hq, t) for t in train), r["hq"]  # not a training image, nor its rotation
    ct_test = [r for r in rows if r["task"] == "ct_denoise" and r["split"] == "test"]
    assert all("jxd191021006_head" in r["hq"] for r in ct_test)  # a third patient, real
    hq, lq = np.load(demo_root / ct_test[0]["hq"]), np.load(demo_root / ct_test[0]["lq"])
    assert hq.min() >= -1024 and hq.max() > 1000  # HU with bone, out-of-field padding floored at air
    assert _noise_hu(hq) < 5.0  # a reference clean enough to be one (pydicom's CT_small: about 15 HU)
    soft = (hq > 0) & (hq < 80)
    assert 15.0 < float(np.std((lq - hq)[soft])) < 80.0  # quarter dose: clearly noisy (about 29 HU), not destroyed
    mri_test = [r for r in rows if r["task"] == "mri_sr" and r["split"] == "test"]
    assert [np.load(demo_root / r["hq"]).shape for r in mri_test] == [(484, 484)]  # a real abdominal MR slice
    notes = json.loads((demo_root / "summary.json").read_text())["notes"]
    for task in ("mri_sr", "ct_denoise"):  # the subjects are recorded, and no test subject is a training subject
        train = next(n for n in notes if n.startswith(f"{task} train subjects: ")).split(": ")[1].split(", ")
        test = next(n for n in notes if n.startswith(f"{task} test subjects: ")).split(": ")[1].split(", ")
        assert test and not set(test) & set(train), (task, train, test)


def test_prepare_never_writes_into_or_over_its_input(tmp_path, capsys):
    src = tmp_path / "IXI"
    _ixi_like(src, 3)
    before = sorted(p.name for p in src.iterdir())
    for out in (src, src / "prepared", tmp_path):
        assert main(["prepare", "ixi", "--src", str(src), "--out", str(out), "--overwrite", "--quiet"]) == 2
        assert "apart from the input" in capsys.readouterr().err
    assert sorted(p.name for p in src.iterdir()) == before


def test_prepare_aapm_pairs_within_a_tolerance_and_never_across_slices(tmp_path, series_factory, capsys):
    src = tmp_path / "AAPM"
    full = series_factory(src / "L001" / "full_1mm", slices=4, seed=1)
    # the scanner wrote the quarter-dose positions 0.1 mm off, and one extra slice beyond the full series
    quarter = series_factory(src / "L001" / "quarter_1mm", slices=5, seed=2, z0=-50.0 + 0.1)
    series_factory(src / "L002" / "full_1mm", slices=4, seed=3)
    series_factory(src / "L002" / "quarter_1mm", slices=4, seed=4, z0=-50.0 + 1.25)  # half a slice off
    series_factory(src / "L003" / "full_1mm", slices=3, seed=5)
    series_factory(src / "L003" / "quarter_1mm", slices=3, seed=6)
    out = tmp_path / "ct"
    assert main(["prepare", "aapm", "--src", str(src), "--out", str(out), "--quiet", "--split", "1,0,1"]) == 3
    rows = _rows(out)
    mine = sorted((r for r in rows if "L001_" in r["hq"]), key=lambda r: r["hq"])
    assert len(mine) == 4
    for k, r in enumerate(mine):
        assert np.array_equal(np.load(out / r["hq"]), full[k]) and np.array_equal(np.load(out / r["lq"]), quarter[k])
    assert not [r for r in rows if "L002_" in r["hq"]]
    summary = json.loads((out / "summary.json").read_text())
    assert [(f["input"], "partner" in f["reason"]) for f in summary["failures"]] == [(str(src / "L002"), True)]


def test_prepare_ixi_reorients_every_storage_order_to_the_same_axial_slices(tmp_path):
    import nibabel as nib
    from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, ornt_transform

    rng = np.random.default_rng(1)
    canonical = np.zeros((16, 18, 8), np.float32)
    canonical[3:-3, 3:-3, 1:-1] = rng.random((10, 12, 6)) * 800 + 200
    affine = np.diag([1.0, 1.0, 1.2, 1.0])
    src = tmp_path / "IXI"
    src.mkdir()
    codes = {"IXI002-Guys-0001-T2": ("R", "A", "S"), "IXI003-HH-0002-T2": ("L", "P", "S"),
             "IXI004-IOP-0003-T2": ("P", "I", "R")}
    for name, target in codes.items():
        transform = ornt_transform(axcodes2ornt(("R", "A", "S")), axcodes2ornt(target))
        data = apply_orientation(canonical, transform)
        nib.save(nib.Nifti1Image(data, affine @ inv_ornt_aff(transform, canonical.shape)), src / f"{name}.nii.gz")
    out = tmp_path / "mri"
    assert main(["prepare", "ixi", "--src", str(src), "--out", str(out), "--slices", "8", "--quiet"]) == 0
    rows = _rows(out)
    by_subject: dict = {}
    for r in rows:
        subject, index = r["hq"].split("/")[-1][:-4].split("_")
        by_subject.setdefault(subject, {})[int(index)] = np.load(out / r["hq"])
    assert set(by_subject) == {"IXI002", "IXI003", "IXI004"}
    for subject, slices in by_subject.items():
        assert sorted(slices) == list(range(1, 7)), subject  # slices 0 and 7 are air
        for index, image in slices.items():
            assert np.array_equal(image, canonical[:, :, index]), (subject, index)


def test_prepare_ixi_nifti_slices_sit_where_they_were_in_the_volume(tmp_path):
    import nibabel as nib

    src = tmp_path / "IXI"
    _ixi_like(src, 3)
    out = tmp_path / "nifti"
    assert main(["prepare", "ixi", "--src", str(src), "--out", str(out), "--slices", "4", "--format", "nifti",
                 "--quiet"]) == 0
    volume = nib.load(str(src / "IXI002-Guys-0800-T2.nii.gz"))
    for r in _rows(out):
        if "IXI002_" not in r["hq"]:
            continue
        index = int(r["hq"].split("_")[-1].split(".")[0])
        image = nib.load(str(out / r["hq"]))
        assert np.array_equal(np.asarray(image.dataobj), np.asarray(volume.dataobj)[:, :, index])
        for i, j in ((0, 0), (5, 7)):  # voxel (i, j) of the slice is voxel (i, j, index) of the volume
            assert np.allclose(image.affine @ [i, j, 0, 1], volume.affine @ [i, j, index, 1])


def test_rician_noise_follows_the_rice_distribution():
    from restore_rwkv.demo.recipe import _rician

    rng = np.random.default_rng(0)
    sigma = 30.0
    background = _rician(np.zeros((400, 400)), sigma, rng)  # no signal: Rayleigh, mean sigma * sqrt(pi / 2)
    assert abs(float(background.mean()) / (sigma * np.sqrt(np.pi / 2)) - 1) < 0.01
    signal = _rician(np.full((400, 400), 3000.0), sigma, rng)  # high SNR: mean sqrt(A^2 + sigma^2), std sigma
    assert abs(float(signal.mean()) - np.sqrt(3000.0**2 + sigma**2)) < 0.5
    assert abs(float(signal.std()) / sigma - 1) < 0.02


def test_demo_template_slices_carry_the_noise_of_one_acquisition(demo_root):
    from restore_rwkv.demo import recipe as demo

    rows = [r for r in _rows(demo_root) if r["task"] == "mri_sr" and "mni152" in r["hq"]]
    assert {r["split"] for r in rows} == {"train", "validation"}
    t1 = demo._mni_volume("t1")
    scale = demo.MRI_SCALE / np.percentile(t1[t1 > 0], 99)
    levels = []
    for r in rows[:: max(1, len(rows) // 8)]:
        hq = np.load(demo_root / r["hq"]).astype(np.float64)
        index = int(r["hq"].split("_z")[1][:3])
        clean = demo._to_square(demo._axial(t1, index) * scale, demo.MRI_SIZE).astype(np.float64)
        inside = (clean > 0.3 * demo.MRI_SCALE) & (clean < 0.9 * demo.MRI_SCALE)  # high SNR, below the clip
        levels.append(float(np.std((hq - clean)[inside])) / demo.MRI_SCALE)  # Rice ~ Gaussian of sigma here
    assert min(levels) > 0.9 * demo.MRI_NOISE[0] and max(levels) < 1.1 * demo.MRI_NOISE[1], levels
    assert max(levels) > 1.5 * min(levels)  # a level drawn per slice, not one for all


def test_demo_data_of_another_version_is_rebuilt_and_a_foreign_folder_refused(demo_root, tmp_path, monkeypatch):
    import shutil

    import restore_rwkv.demo.recipe as demo

    assert demo.demo_data_state(demo_root) == "current"
    assert demo.demo_data_state(tmp_path / "nothing") == "missing"
    old = tmp_path / "old"  # a demo folder of an earlier version: its manifest, no version marker
    old.mkdir()
    shutil.copy(demo_root / "manifest.csv", old / "manifest.csv")
    assert demo.demo_data_state(old) == "stale"
    (old / demo.DEMO_VERSION_FILE).write_text('{"demo_data_version": 1}')
    assert demo.demo_data_state(old) == "stale"
    (old / demo.DEMO_VERSION_FILE).write_text(json.dumps({"demo_data_version": demo.DEMO_DATA_VERSION, "seed": 7}))
    assert demo.demo_data_state(old) == "stale"  # another seed: not the pairs docs/results.md scores
    calls = []
    monkeypatch.setattr(demo, "prepare_demo", lambda root, overwrite=False, quiet=False: calls.append((root, overwrite)))
    demo.ensure_demo_data(old, quiet=True)
    demo.ensure_demo_data(demo_root, quiet=True)  # current: left alone
    demo.ensure_demo_data(tmp_path / "new", quiet=True)
    assert calls == [(old, True), (tmp_path / "new", False)]
    foreign = tmp_path / "mine"  # a user's own prepared data: never overwritten
    foreign.mkdir()
    rows = [r for r in (demo_root / "manifest.csv").read_text().splitlines() if "jxd191021006_head" not in r]
    (foreign / "manifest.csv").write_text("\n".join(rows) + "\n")
    assert demo.demo_data_state(foreign) == "foreign"
    with pytest.raises(InputError, match="did not write"):
        demo.ensure_demo_data(foreign, quiet=True)
    assert calls == [(old, True), (tmp_path / "new", False)]
