"""build_dataset's choices of records and slices, and its refusals (written against the mutation
pass of engine/data.py)."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from restore_rwkv.engine.config import DataSource
from restore_rwkv.engine.data import EndlessEpochSampler, _spread, build_dataset
from restore_rwkv.utils.errors import InputError


def test_spread_picks_evenly_from_first_to_last():
    assert _spread(list(range(10)), 4) == [0, 3, 6, 9]
    assert _spread(list(range(10)), 2) == [0, 9]
    assert _spread(list(range(5)), None) == list(range(5))
    assert _spread(list(range(5)), 7) == list(range(5))


@pytest.fixture
def manifest(tmp_path):
    """Five CT training pairs, two MRI training pairs and one CT validation pair (files need not exist to list them)."""
    path = tmp_path / "pairs.csv"
    rows = [("ct", "ct_denoise", "train")] * 5 + [("mri", "mri_sr", "train")] * 2 + [("ct", "ct_denoise", "val")]
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["lq", "hq", "modality", "task", "split"])
        writer.writeheader()
        for number, (modality, task, split) in enumerate(rows):
            writer.writerow(dict(lq=f"lq{number}.npy", hq=f"hq{number}.npy", modality=modality, task=task, split=split))
    return path


def _names(dataset) -> list[str]:
    return [Path(record.lq).name for record in dataset.records]


def test_manifest_records_are_chosen_by_split_task_and_count(manifest):
    assert _names(build_dataset(DataSource(manifest=str(manifest), split="val"), None, seed=0)) == ["lq7.npy"]
    assert _names(build_dataset(DataSource(manifest=str(manifest), tasks=["mri_sr"]), None, seed=0)) == \
        ["lq5.npy", "lq6.npy"]
    assert _names(build_dataset(DataSource(manifest=str(manifest), tasks=["ct_denoise"], max_images=3), None, seed=0)) \
        == ["lq0.npy", "lq2.npy", "lq4.npy"]


def test_manifest_without_the_split_or_the_tasks_is_refused_naming_it(manifest):
    with pytest.raises(InputError) as error:
        build_dataset(DataSource(manifest=str(manifest), split="test"), None, seed=0)
    assert str(error.value) == f"{manifest}: no pairs of split 'test'"
    with pytest.raises(InputError) as error:
        build_dataset(DataSource(manifest=str(manifest), split="val", tasks=["mri_sr"]), None, seed=0)
    assert str(error.value) == f"{manifest}: no pairs of the tasks ['mri_sr'] in val"


def test_hq_folders_give_one_item_per_image_and_per_slice_of_a_volume(tmp_path):
    hq = tmp_path / "hq"
    (hq / "sub").mkdir(parents=True)
    np.save(hq / "a.npy", np.zeros((16, 16), np.float32))
    # a NIfTI volume of 3 slices along its third axis (the reader's slice axis: 2, not 0)
    volume = hq / "sub" / "volume.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((16, 12, 3), np.float32), np.diag([1.0, 1.0, 2.5, 1.0])), volume)
    (hq / "README.txt").write_text("not an image")
    dataset = build_dataset(DataSource(hq=[str(hq)], simulate="ct_denoise"), None, seed=0)
    assert dataset.items == [(str(hq / "a.npy"), None)] + [(str(volume), i) for i in range(3)]
    picked = build_dataset(DataSource(hq=[str(hq)], simulate="ct_denoise", max_images=2), None, seed=0)
    assert picked.items == [(str(hq / "a.npy"), None), (str(volume), 2)]


def test_hq_sources_that_give_nothing_or_cannot_be_degraded_are_refused(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(InputError) as error:
        build_dataset(DataSource(hq=[str(missing)], simulate="ct_denoise"), None, seed=0)
    assert str(error.value) == f"{missing}: no such HQ file or folder"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError) as error:
        build_dataset(DataSource(hq=[str(empty)], simulate="ct_denoise"), None, seed=0)
    assert str(error.value) == f"{empty}: no HQ images"
    np.save(empty / "a.npy", np.zeros((16, 16), np.float32))
    with pytest.raises(InputError) as error:
        build_dataset(DataSource(hq=[str(empty)], simulate="ct_denoise", degradation={"no_such_setting": 1.0}),
                      None, seed=0)
    assert str(error.value).startswith("data degradation: ") and "no_such_setting" in str(error.value)


def test_the_endless_sampler_takes_a_single_item_and_refuses_none():
    stream = EndlessEpochSampler(1, seed=5)
    assert [key for _, key in zip(range(3), stream)] == [(0, 0), (1, 0), (2, 0)]
    with pytest.raises(ValueError) as error:
        EndlessEpochSampler(0)
    assert str(error.value) == "the dataset is empty"
