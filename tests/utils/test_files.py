"""Atomic writes: all or nothing, never over the input, modes that follow the umask."""

from __future__ import annotations

import os

import pytest

from restore_rwkv.utils.errors import InputError
from restore_rwkv.utils.files import atomic_file, atomic_folder, refuse_input_target


def test_atomic_file_appears_whole_or_not_at_all(tmp_path):
    target = tmp_path / "sub" / "out.nii.gz"
    with pytest.raises(RuntimeError):
        with atomic_file(target) as tmp:
            assert tmp.name.endswith(".nii.gz") and tmp.parent == target.parent
            tmp.write_bytes(b"half")
            raise RuntimeError("writer failed")
    assert not target.parent.exists()  # the folder this call made for it is gone with it
    target.parent.mkdir()
    target.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_file(target) as tmp:
            tmp.write_bytes(b"new")
            raise KeyboardInterrupt
    assert target.read_bytes() == b"old" and len(list(target.parent.iterdir())) == 1
    with atomic_file(target) as tmp:
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new" and len(list(target.parent.iterdir())) == 1


def test_atomic_folder_replaces_only_when_complete(tmp_path):
    target = tmp_path / "series"
    target.mkdir()
    (target / "keep.dcm").write_bytes(b"user data")
    with pytest.raises(InputError, match="not empty"):
        with atomic_folder(target):
            pass
    with pytest.raises(ValueError):
        with atomic_folder(target, replace=True) as stage:
            (stage / "a.dcm").write_bytes(b"x")
            raise ValueError("failed half-way")
    assert [p.name for p in tmp_path.iterdir()] == ["series"] and (target / "keep.dcm").exists()
    with atomic_folder(target, replace=True) as stage:
        (stage / "a.dcm").write_bytes(b"x")
    assert sorted(p.name for p in target.iterdir()) == ["a.dcm"] and [p.name for p in tmp_path.iterdir()] == ["series"]


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_and_folders_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        with atomic_file(tmp_path / "f.npy") as tmp:
            tmp.write_bytes(b"x")
        with atomic_folder(tmp_path / "d") as stage:
            (stage / "x").write_bytes(b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "f.npy").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o777 & ~umask


def test_refuse_input_target(tmp_path):
    src = tmp_path / "series"
    src.mkdir()
    (tmp_path / "in.nii").write_bytes(b"x")
    with pytest.raises(InputError, match="overwrite the input"):
        refuse_input_target(tmp_path / "in.nii", tmp_path / "in.nii")
    with pytest.raises(InputError, match="inside the input folder"):
        refuse_input_target(src / "out.dcm", src)
    refuse_input_target(tmp_path / "out.nii", tmp_path / "in.nii")
