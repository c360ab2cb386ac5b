"""The demo dataset: real anatomy in every split, held-out slabs 20 mm from training, noise where it should be,
one intensity scale per subject's split, and a data folder rebuilt when another version wrote it."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest

from restore_rwkv.demo import recipe as demo
from restore_rwkv.utils.errors import InputError


def _rows(root):
    with open(root / "manifest.csv") as fh:
        return list(csv.DictReader(fh))


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


def _slab_index(path: str) -> tuple[str, int] | None:
    """(volume, slice index) of a pair cut from a real volume."""
    match = re.search(r"/((?:pycortex_s1|colin27|invesalius_cranium))_z(\d{3})\.npy$", path)
    return (match.group(1), int(match.group(2))) if match else None


def test_prepare_demo_builds_all_tasks_with_real_anatomy_in_every_split(demo_root):
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
    for task in ("mri_sr", "ct_denoise"):  # real volumes in training, validation (nothing else) and test
        for split in ("train", "validation", "test"):
            real = [r for r in rows if r["task"] == task and r["split"] == split and _slab_index(r["hq"])]
            assert real, (task, split)
        validation = [r for r in rows if r["task"] == task and r["split"] == "validation"]
        assert all(_slab_index(r["hq"]) for r in validation)  # no phantom-only or template validation
    ct_test = [r for r in rows if r["task"] == "ct_denoise" and r["split"] == "test"]
    assert sum(1 for r in ct_test if _slab_index(r["hq"])) >= 20  # a held-out slab of at least 20 slices
    assert {np.load(demo_root / r["hq"]).shape for r in ct_test} == {(256, 256), (512, 512)}


def test_held_out_slices_are_20_mm_from_every_training_slice_and_never_seen(demo_root):
    rows = _rows(demo_root)
    spacing = {"pycortex_s1": 1.0, "colin27": 1.0, "invesalius_cranium": 1.5}
    for volume, step in spacing.items():
        by_split = {split: [_slab_index(r["hq"])[1] for r in rows if r["split"] == split
                            and (_slab_index(r["hq"]) or ("", 0))[0] == volume]
                    for split in ("train", "validation", "test")}
        assert by_split["train"] and by_split["test"] and by_split["validation"], volume
        for split in ("validation", "test"):
            gap = min(abs(t - h) for t in by_split["train"] for h in by_split[split]) * step
            assert gap > demo.HELD_OUT_GAP_MM, (volume, split, gap)
            assert sorted(by_split[split]) == list(range(min(by_split[split]), max(by_split[split]) + 1))  # a slab
    for task in ("mri_sr", "ct_denoise"):
        train = [np.load(demo_root / r["hq"]) for r in rows if r["task"] == task and r["split"] == "train"]
        for r in (r for r in rows if r["task"] == task and r["split"] == "test"):
            hq = np.load(demo_root / r["hq"])
            assert not any(_same_up_to_dihedral(hq, t) for t in train), r["hq"]  # not a training image, nor its rotation
    ct_test = [r for r in rows if r["task"] == "ct_denoise" and r["split"] == "test" and "jxd191021006" in r["hq"]]
    hq, lq = np.load(demo_root / ct_test[0]["hq"]), np.load(demo_root / ct_test[0]["lq"])
    assert hq.min() >= -1024 and hq.max() > 1000  # HU with bone, out-of-field padding floored at air
    assert _noise_hu(hq) < 5.0  # a reference clean enough to be one (pydicom's CT_small: about 15 HU)
    soft = (hq > 0) & (hq < 80)
    assert 15.0 < float(np.std((lq - hq)[soft])) < 80.0  # quarter dose: clearly noisy (about 29 HU), not destroyed
    mri_test = [r for r in rows if r["task"] == "mri_sr" and r["split"] == "test"]
    shapes = sorted({np.load(demo_root / r["hq"]).shape for r in mri_test})
    assert shapes == [(256, 256), (484, 484)]  # two real heads' slabs and a real abdominal slice
    notes = json.loads((demo_root / "summary.json").read_text())["notes"]
    for task in ("mri_sr", "ct_denoise"):  # the other test subjects are in no split but the test
        train = next(n for n in notes if n.startswith(f"{task} train subjects: ")).split(": ")[1].split(", ")
        test = next(n for n in notes if n.startswith(f"{task} test subjects: ")).split(": ")[1].split(", ")
        assert set(test) & set(train) <= set(demo.MR_VOLUMES) | {demo.CT_VOLUME}, (task, train, test)


def test_each_subjects_split_is_one_volume_to_the_mr_policy(demo_root):
    """The manifest's scale of a real head's split is the MR policy's fit on that split's LQ slices together:
    what restore fits when the demo writes that slab as one volume."""
    from restore_rwkv.modality import get_convention

    rows = [r for r in _rows(demo_root) if r["task"] == "mri_sr" and _slab_index(r["hq"])]
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((_slab_index(r["hq"])[0], r["split"]), []).append(r)
    assert len(groups) == 6
    for (volume, split), mine in groups.items():
        mine.sort(key=lambda r: r["lq"])
        assert len({r["scale"] for r in mine}) == 1, (volume, split)
        lq = np.stack([np.load(demo_root / r["lq"]) for r in mine])
        assert float(mine[0]["scale"]) == pytest.approx(get_convention("mri").scaling.fit(lq), rel=1e-12)


def test_test_sets_group_a_volumes_slab(demo_root):
    from restore_rwkv.data.datasets import read_manifest

    records = [r for r in read_manifest(demo_root / "manifest.csv") if r.split == "test"]
    sets = {task: dict(demo.test_sets([r for r in records if r.task == task])) for task in ("mri_sr", "ct_denoise", "pet")}
    assert sorted(sets["mri_sr"]) == ["abdomen_t1_vibe", "colin27", "pycortex_s1"]
    assert sorted(sets["ct_denoise"]) == ["invesalius_cranium", "jxd191021006_head"]
    assert list(sets["pet"]) == ["mni152_fdg"] and len(sets["pet"]["mni152_fdg"]) == 12
    assert demo.test_geometry("ct_denoise", "invesalius_cranium") == pytest.approx((0.957, 1.5), abs=1e-3)
    assert demo.test_geometry("mri_sr", "pycortex_s1") == (1.0, 1.0)


def test_rician_noise_follows_the_rice_distribution():
    rng = np.random.default_rng(0)
    sigma = 30.0
    background = demo._rician(np.zeros((400, 400)), sigma, rng)  # no signal: Rayleigh, mean sigma * sqrt(pi / 2)
    assert abs(float(background.mean()) / (sigma * np.sqrt(np.pi / 2)) - 1) < 0.01
    signal = demo._rician(np.full((400, 400), 3000.0), sigma, rng)  # high SNR: mean sqrt(A^2 + sigma^2), std sigma
    assert abs(float(signal.mean()) - np.sqrt(3000.0**2 + sigma**2)) < 0.5
    assert abs(float(signal.std()) / sigma - 1) < 0.02


def test_demo_template_slices_carry_the_noise_of_one_acquisition(demo_root):
    rows = [r for r in _rows(demo_root) if r["task"] == "mri_sr" and "mni152" in r["hq"]]
    assert {r["split"] for r in rows} == {"train"}
    t1 = demo._mni_volume("t1")
    scale = demo.MRI_SCALE / np.percentile(t1[t1 > 0], 99)
    levels = []
    for r in rows[:: max(1, len(rows) // 8)]:
        hq = np.load(demo_root / r["hq"]).astype(np.float64)
        index = int(r["hq"].split("_z")[1][:3])
        clean = demo._to_square(demo._axial(t1, index) * scale, demo.MRI_SIZE).astype(np.float64)
        inside = (clean > 0.3 * demo.MRI_SCALE) & (clean < 0.9 * demo.MRI_SCALE)  # high SNR
        levels.append(float(np.std((hq - clean)[inside])) / demo.MRI_SCALE)  # Rice ~ Gaussian of sigma here
    assert min(levels) > 0.9 * demo.MRI_NOISE[0] and max(levels) < 1.1 * demo.MRI_NOISE[1], levels
    assert max(levels) > 1.5 * min(levels)  # a level drawn per slice, not one for all


def test_slab_splits_keep_the_gap_and_stay_inside_the_tissue():
    tissue = np.zeros(120, bool)
    tissue[10:110] = True
    splits = demo.slab_splits(tissue, 1.5, {"test": (20, 0.45), "validation": (8, 0.75)}, gap_mm=20.0, step=2)
    assert len(splits["test"]) == 20 and len(splits["validation"]) == 8
    held = splits["test"] + splits["validation"]
    assert all(10 <= i < 110 for i in held + splits["train"])
    assert min(abs(t - h) for t in splits["train"] for h in held) * 1.5 > 20.0
    steps = np.diff(splits["train"])  # every second slice, but for the jumps over the held-out slabs and their gaps
    assert splits["train"] == sorted(splits["train"]) and np.all((steps == 2) | (steps * 1.5 > 2 * 20.0))


def test_demo_data_of_another_version_is_rebuilt_and_a_foreign_folder_refused(demo_root, tmp_path, monkeypatch):
    import shutil

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
