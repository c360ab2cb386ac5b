"""Datasets, manifests, patches and the task-balanced sampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from restore_rwkv.data.datasets import (
    PairRecord,
    PairedSliceDataset,
    RandomPatchPairs,
    SimulatedPairDataset,
    TaskBalancedSampler,
    central_slices,
    pair_folders,
    read_manifest,
    write_manifest,
)
from restore_rwkv.modality import get_convention
from restore_rwkv.physics import KSpaceTruncation, default_degradation
from restore_rwkv.utils.errors import InputError


def test_conventions_are_the_papers_and_configurable():
    ct = get_convention("CT")
    assert ct.norm_range == (-1024, 3072) and ct.eval_window == (-160, 240)
    assert get_convention("PT").norm_range == (0, 20) and get_convention("mr").norm_range == (0, 4095)
    x = np.array([-2000.0, -1024.0, 1024.0, 3072.0, 5000.0])
    assert np.allclose(ct.normalize(x), [0, 0, 0.5, 1, 1])
    assert np.allclose(ct.denormalize(ct.normalize(x[1:4])), x[1:4])
    assert get_convention("ct", eval_window=(-1000, 1000)).eval_window == (-1000, 1000)
    with pytest.raises(ValueError):
        get_convention("xray")


def _pairs(tmp_path, n=3, shape=(20, 24)):
    rng = np.random.default_rng(0)
    (tmp_path / "lq").mkdir()
    (tmp_path / "hq").mkdir()
    for i in range(n):
        hq = (rng.random(shape) * 2000 - 1000).astype(np.float32)
        np.save(tmp_path / "hq" / f"s{i}.npy", hq)
        np.save(tmp_path / "lq" / f"s{i}.npy", hq + 10)
    return pair_folders(tmp_path / "lq", tmp_path / "hq", "ct", "ct_denoise")


def test_manifest_round_trip_and_normalised_items(tmp_path):
    records = _pairs(tmp_path)
    path = write_manifest(tmp_path / "manifest.csv", records)
    again = read_manifest(path)
    assert [(r.lq, r.hq) for r in again] == [(r.lq, r.hq) for r in records]
    item = PairedSliceDataset(again)[1]
    hq = np.load(records[1].hq)
    assert item["hq"].shape == (1, 20, 24) and item["task"] == "ct_denoise"
    assert torch.allclose(item["hq"][0], torch.from_numpy((hq + 1024) / 4096), atol=1e-6)
    assert torch.allclose(item["lq"] - item["hq"], torch.full_like(item["hq"], 10 / 4096), atol=1e-6)


def test_manifest_errors_name_the_file(tmp_path):
    bad = tmp_path / "m.csv"
    bad.write_text("lq,hq,modality,task\na.npy,b.npy,ct,segmentation\n")
    with pytest.raises(InputError, match="unknown task") as err:
        read_manifest(bad)
    assert str(bad) in str(err.value)
    (tmp_path / "lq").mkdir()
    (tmp_path / "hq").mkdir()
    np.save(tmp_path / "lq" / "x.npy", np.zeros((4, 4)))
    with pytest.raises(InputError, match="no HQ partner"):
        pair_folders(tmp_path / "lq", tmp_path / "hq", "ct", "ct_denoise")


def test_volume_slices_and_air_skipping(tmp_path):
    volume = np.zeros((8, 8, 10), np.float32)
    volume[2:6, 2:6, 2:8] = 100.0
    assert central_slices(volume, 2, 100) == [2, 3, 4, 5, 6, 7]
    assert central_slices(volume, 2, 4) == [3, 4, 5, 6]
    import nibabel as nib

    nib.save(nib.Nifti1Image(volume, np.eye(4)), tmp_path / "v.nii.gz")
    record = PairRecord(str(tmp_path / "v.nii.gz"), str(tmp_path / "v.nii.gz"), "mri", "mri_sr", lq_slice=4, hq_slice=4)
    item = PairedSliceDataset([record])[0]
    # the MR policy puts the volume's foreground 99th percentile (100 here) at 3000 of [0, 4095]
    assert item["hq"].shape == (1, 8, 8) and float(item["hq"].max()) == pytest.approx(3000 / 4095)
    assert item["scale"] == pytest.approx(100 / 3000)
    record4d = PairRecord(str(tmp_path / "v.nii.gz"), str(tmp_path / "v.nii.gz"), "mri", "mri_sr")
    with pytest.raises(InputError, match="2-D slice"):
        PairedSliceDataset([record4d])[0]


def test_nan_image_is_a_clear_error(tmp_path):
    records = _pairs(tmp_path, n=1)
    bad = np.load(records[0].lq)
    bad[0, 0] = np.nan
    np.save(records[0].lq, bad)
    with pytest.raises(InputError, match="NaN") as err:
        PairedSliceDataset(records)[0]
    assert "s0.npy" in str(err.value)


def test_patches_apply_one_transform_to_both(tmp_path):
    records = _pairs(tmp_path, n=2, shape=(150, 140))
    dataset = PairedSliceDataset(records, transform=RandomPatchPairs(128, seed=3))
    seen = set()
    for i in range(2):
        item = dataset[i]
        assert item["lq"].shape == item["hq"].shape == (1, 128, 128)
        assert torch.allclose(item["lq"] - item["hq"], torch.full_like(item["hq"], 10 / 4096), atol=1e-6)
        seen.add(float(item["hq"].sum()))
    assert torch.equal(dataset[0]["hq"], dataset[0]["hq"])  # deterministic per index
    (tmp_path / "small").mkdir()
    small = PairedSliceDataset(_pairs(tmp_path / "small", n=1, shape=(40, 50)), transform=RandomPatchPairs(64))
    assert small[0]["hq"].shape == (1, 64, 64)


def test_simulated_dataset_is_seeded(tmp_path):
    np.save(tmp_path / "a.npy", (np.random.default_rng(0).random((32, 32)) * 3000).astype(np.float32))
    dataset = SimulatedPairDataset([str(tmp_path / "a.npy")], "mri", "mri_sr", KSpaceTruncation(4, noise_std=5.0), seed=1)
    first, again = dataset[0], dataset[0]
    assert torch.equal(first["lq"], again["lq"])
    dataset.set_epoch(1)
    assert not torch.equal(first["lq"], dataset[0]["lq"])
    assert torch.equal(first["hq"], dataset[0]["hq"])


@pytest.mark.parametrize("task, modality", [("pet", "pet"), ("ct_denoise", "ct")])
def test_simulated_dataset_hq_is_the_input_and_lq_the_degradation(tmp_path, task, modality):
    image = np.random.default_rng(0).random((24, 24)).astype(np.float32) * 5.0
    np.save(tmp_path / "a.npy", image)
    degrade = default_degradation(task, total_counts=1e5, iterations=2, subsets=2, pixel_size_mm=1.0)
    item = SimulatedPairDataset([str(tmp_path / "a.npy")], modality, task, degrade, seed=4)[0]
    convention = get_convention(modality)
    assert torch.equal(item["hq"][0], torch.from_numpy(convention.normalize(image)))
    assert torch.equal(item["lq"][0], torch.from_numpy(convention.normalize(degrade(image, seed=4))))


def test_task_balanced_sampler():
    tasks = ["mri_sr"] * 90 + ["ct_denoise"] * 9 + ["pet"] * 1
    sampler = TaskBalancedSampler(tasks, num_samples=3000, seed=0)
    counts = {t: 0 for t in set(tasks)}
    for i in sampler:
        counts[tasks[i]] += 1
    assert all(c == 1000 for c in counts.values())
    shares = [list(TaskBalancedSampler(tasks, 300, seed=0, num_replicas=2, rank=r)) for r in (0, 1)]
    assert len(shares[0]) == len(shares[1]) == 150
    assert sorted(shares[0] + shares[1]) == sorted(TaskBalancedSampler(tasks, 300, seed=0))


def test_task_balanced_sampler_weights_set_each_tasks_share():
    tasks = ["mri_sr"] * 90 + ["ct_denoise"] * 9 + ["pet"] * 1
    sampler = TaskBalancedSampler(tasks, num_samples=1000, seed=3, weights={"pet": 2.0, "ct_denoise": 0.5})
    counts = {t: 0 for t in set(tasks)}
    for i in sampler:
        counts[tasks[i]] += 1
    # shares 2 : 0.5 : 1 (mri_sr defaults to 1) of 1000 draws: 571.4, 142.9, 285.7 -> largest remainders round up
    assert counts == {"pet": 571, "ct_denoise": 143, "mri_sr": 286}
    with pytest.raises(ValueError, match="spect"):
        TaskBalancedSampler(tasks, weights={"spect": 1.0})
    with pytest.raises(ValueError, match="positive"):
        TaskBalancedSampler(tasks, weights={"pet": 0.0})


def test_reference_layout_reads_npy_and_opt_in_pickles(tmp_path):
    import pickle

    from restore_rwkv.data.datasets import reference_layout

    for modality, suffix in (("MRI", ".npy"), ("CT", ".bin")):
        for kind, value in (("LQ", 1.0), ("HQ", 2.0)):
            folder = tmp_path / modality / "train" / kind
            folder.mkdir(parents=True)
            array = np.full((8, 8), value * (100 if modality == "MRI" else -500), np.float32)
            if suffix == ".npy":
                np.save(folder / "a.npy", array)
            else:
                (folder / "a.bin").write_bytes(pickle.dumps(array))
    records = reference_layout(tmp_path, "train")
    assert [(r.modality, r.task) for r in records] == [("mri", "mri_sr"), ("ct", "ct_denoise")]
    with pytest.raises(InputError, match="pickle"):
        PairedSliceDataset(records)[1]
    item = PairedSliceDataset(records, allow_pickle=True)[1]
    assert float(item["hq"][0, 0, 0]) == pytest.approx((-1000 + 1024) / 4096)
    with pytest.raises(InputError, match="no validation"):
        reference_layout(tmp_path, "validation")


def _volume_records(tmp_path, suffix):
    import nibabel as nib

    rng = np.random.default_rng(3)
    hq = (rng.random((12, 14, 5)) * 1000).astype(np.float32)
    paths = {}
    for kind, data in (("lq", hq + 7), ("hq", hq)):
        path = tmp_path / f"{kind}{suffix}"
        if suffix == ".npy":
            np.save(path, np.moveaxis(data, 2, 0))  # (slice, row, column): slice axis 0
        else:
            nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
        paths[kind] = str(path)
    records = [PairRecord(paths["lq"], paths["hq"], "mri", "mri_sr", "train", k, k) for k in range(5)]
    return records, hq


@pytest.mark.parametrize("suffix", [".nii.gz", ".npy"])
def test_slices_of_a_volume_read_the_file_once_and_are_named_by_slice(tmp_path, monkeypatch, suffix):
    import restore_rwkv.data.datasets as datasets

    records, hq = _volume_records(tmp_path, suffix)
    opened = []
    real_read_image, real_read_array = datasets.read_image, getattr(datasets, "read_array", None)
    monkeypatch.setattr(datasets, "read_image", lambda p, **kw: (opened.append(p), real_read_image(p, **kw))[1])
    monkeypatch.setattr(datasets, "read_array", lambda p, **kw: (opened.append(p), real_read_array(p, **kw))[1],
                        raising=False)
    dataset = PairedSliceDataset(records)
    items = [dataset[k] for k in (3, 0, 4, 1, 2, 3)]
    assert sorted(map(str, opened)) == sorted([records[0].lq, records[0].hq])  # each volume once
    name = records[0].hq.split("/")[-1]
    assert [i["name"] for i in items] == [f"{name}#{k}" for k in (3, 0, 4, 1, 2, 3)]
    convention = get_convention("mri")
    scale = convention.scaling.fit(np.moveaxis(hq + 7, 2, 0))  # of the whole LQ volume, in slice order
    for k, item in zip((3, 0, 4, 1, 2, 3), items):
        assert item["scale"] == pytest.approx(scale, rel=1e-12)
        assert torch.allclose(item["hq"][0], torch.from_numpy(convention.normalize(hq[:, :, k], scale)), atol=1e-6)
    # a slice index outside the volume names the file and the index
    bad = PairedSliceDataset([PairRecord(records[0].lq, records[0].hq, "mri", "mri_sr", "train", 9, 9)])
    with pytest.raises(InputError, match="slice 9 out of range"):
        bad[0]


def test_the_volume_cache_keeps_within_its_budget(tmp_path):
    from restore_rwkv.data.datasets import VolumeCache

    for i in range(3):
        np.savez(tmp_path / f"v{i}.npz", image=np.full((4, 8, 8), i, np.float32))  # 1 KiB each
    cache = VolumeCache(max_bytes=2500)
    for i in (0, 1, 2, 0):
        assert cache.slice(str(tmp_path / f"v{i}.npz"), 1)[0, 0] == i
    assert cache.reads == 4  # v0 was dropped when v2 came in (2 KiB fit, 3 do not)
    cache.slice(str(tmp_path / "v2.npz"), 0)
    assert cache.reads == 4


def test_random_patches_redraw_flat_reference_crops():
    """A crop of pure background teaches nothing: with retries, crops of a mostly-air image hold tissue."""
    hq = torch.full((1, 256, 256), 0.0)
    hq[:, 160:, 160:] = torch.rand(1, 96, 96) + 0.5  # a textured corner in a flat field
    item = {"lq": hq + 0.01, "hq": hq}
    flat = lambda patch: float(patch.max() - patch.min()) <= 1e-6  # noqa: E731
    without = [flat(RandomPatchPairs(64, seed=s, flat_retries=0)(item, 0)["hq"]) for s in range(40)]
    with_retries = [flat(RandomPatchPairs(64, seed=s, flat_retries=50)(item, 0)["hq"]) for s in range(40)]
    assert sum(without) > 20  # most plain crops are flat here
    assert sum(with_retries) == 0


def test_a_manifests_scale_column_round_trips_and_a_bad_one_is_refused(tmp_path):
    records = [PairRecord(str(tmp_path / "a.npy"), str(tmp_path / "b.npy"), "mri", "mri_sr", "train", scale=0.123456789),
               PairRecord(str(tmp_path / "c.npy"), str(tmp_path / "d.npy"), "ct", "ct_denoise", "train")]
    write_manifest(tmp_path / "m.csv", records)
    assert read_manifest(tmp_path / "m.csv") == records
    text = (tmp_path / "m.csv").read_text().replace("0.123456789", "-2")
    (tmp_path / "m.csv").write_text(text)
    with pytest.raises(InputError, match="row 1: scale must be a positive number"):
        read_manifest(tmp_path / "m.csv")
