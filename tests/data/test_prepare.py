"""`restore-rwkv prepare` on small inputs laid out like the real datasets, and the demo."""

from __future__ import annotations

import csv
import json

import numpy as np

from restore_rwkv.cli import main
from restore_rwkv.data.prepare import split_counts


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
