"""`prepare` on realistic, imperfect inputs (issue 11): honest splits, every unused input reported,
CT pairs that agree, DICOM series grouped by patient, outputs checked first, signals, modes."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from restore_rwkv.cli import main
from restore_rwkv.data.prepare import simulate as prepare_module  # the simulation preparer and its degradations
from restore_rwkv.data.prepare import split_counts
from tests.data.conftest import make_ct_series, make_enhanced_ct, make_pet_series


def _rows(root):
    with open(root / "manifest.csv") as fh:
        return list(csv.DictReader(fh))


def _summary(root):
    return json.loads((root / "summary.json").read_text())


def _one_line_error(capsys, *fragments):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    return err


def _no_output(parent, out):
    assert not out.exists()
    assert not [p.name for p in parent.iterdir() if ".partial" in p.name or ".pending" in p.name]


def _aapm(src, patients, slices=3):
    """full_1mm / quarter_1mm series per patient, same positions; returns {patient: (full, quarter)}."""
    volumes = {}
    for n, patient in enumerate(patients):
        volumes[patient] = (make_ct_series(src / patient / "full_1mm", slices=slices, seed=n, patient=patient),
                            make_ct_series(src / patient / "quarter_1mm", slices=slices, seed=50 + n, patient=patient))
    return volumes


def _truncate_one_file(folder):
    path = sorted(folder.iterdir())[0]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 60])  # pixel data cut short
    return path


# ----------------------------------------------------------------------------- 1. splits after reading
def test_split_counts_honour_zero_ratios_and_refuse_too_few_subjects():
    assert split_counts(3, (8, 1, 1)) == (1, 1, 1)
    assert split_counts(5, (1, 0, 1)) == (3, 0, 2) or split_counts(5, (1, 0, 1)) == (2, 0, 3)
    assert split_counts(4, (0, 0, 1)) == (0, 0, 4)
    assert split_counts(7, (1, 0, 0)) == (7, 0, 0)
    for n in range(3, 40):
        counts = split_counts(n, (405, 59, 114))
        assert sum(counts) == n and min(counts) >= 1
    with pytest.raises(ValueError, match="cannot fill"):
        split_counts(2, (8, 1, 1))
    with pytest.raises(ValueError):
        split_counts(5, (1, -1, 1))


def test_a_truncated_slice_never_empties_a_split(tmp_path, capsys):
    src = tmp_path / "AAPM"
    _aapm(src, [f"L{i:03d}" for i in range(4)])
    bad = _truncate_one_file(src / "L002" / "quarter_1mm")
    out = tmp_path / "ct"
    assert main(["prepare", "aapm", "--src", str(src), "--out", str(out), "--quiet"]) == 3
    rows = _rows(out)
    patients = {split: {Path(r["hq"]).name.split("_")[0] for r in rows if r["split"] == split}
                for split in ("train", "validation", "test")}
    assert all(patients.values()), patients  # 3 usable patients: one per split, none empty
    assert "L002" not in set().union(*patients.values())
    summary = _summary(out)
    assert summary["subjects"] == {"train": 1, "validation": 1, "test": 1}
    assert [f["input"] for f in summary["failures"]] == [str(src / "L002")]
    assert bad.name in summary["failures"][0]["reason"]


def test_a_split_that_would_stay_empty_is_an_error_unless_asked_for(tmp_path, capsys):
    src = tmp_path / "AAPM"
    _aapm(src, ["L001", "L002", "L003"])
    _truncate_one_file(src / "L003" / "full_1mm")
    out = tmp_path / "ct"
    assert main(["prepare", "aapm", "--src", str(src), "--out", str(out), "--quiet"]) == 2
    _one_line_error(capsys, "2 subject(s) cannot fill", "L003", "--split")
    _no_output(tmp_path, out)
    assert main(["prepare", "aapm", "--src", str(src), "--out", str(out), "--quiet", "--split", "1,0,1"]) == 3
    assert _summary(out)["subjects"] == {"train": 1, "validation": 0, "test": 1}
    assert {r["split"] for r in _rows(out)} == {"train", "test"}


def test_bad_split_ratios_are_one_line_errors(tmp_path, capsys):
    src = tmp_path / "AAPM"
    _aapm(src, ["L001"])
    assert main(["prepare", "aapm", "--src", str(src), "--out", str(tmp_path / "o"), "--split", "8,1", "--quiet"]) == 2
    _one_line_error(capsys, "--split")


# ----------------------------------------------------------------------------- 2. nothing vanishes
def _ixi(folder, names, nan_in=()):
    import nibabel as nib

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in names:
        data = np.zeros((20, 20, 8), np.float32)
        data[4:-4, 4:-4, 1:-1] = rng.random((12, 12, 6)) * 900 + 100
        if name in nan_in:
            data[10, 10, 4] = np.nan
        nib.save(nib.Nifti1Image(data, np.eye(4)), folder / f"{name}-T2.nii.gz")


def test_a_nan_volume_is_listed_with_its_reason(tmp_path, capsys):
    src = tmp_path / "IXI"
    names = ["IXI002-Guys-0001", "IXI003-HH-0002", "IXI004-IOP-0003", "IXI005-Guys-0004"]
    _ixi(src, names, nan_in=[names[1]])
    out = tmp_path / "mri"
    assert main(["prepare", "ixi", "--src", str(src), "--out", str(out), "--slices", "3", "--quiet"]) == 3
    summary = _summary(out)
    assert summary["failures"] == [{"input": str(src / f"{names[1]}-T2.nii.gz"),
                                    "reason": "volume holds 1 NaN or infinite value(s)"}]
    assert summary["inputs"] == {"found": 4, "used": 3, "skipped": 1}
    printed = capsys.readouterr()
    assert "skipped 1 input(s)" in printed.out and "NaN" in printed.out and "1 input(s) skipped" in printed.err
    assert not [r for r in _rows(out) if "IXI003" in r["hq"]]


def test_only_nan_volumes_give_an_error_that_says_why(tmp_path, capsys):
    src = tmp_path / "IXI"
    _ixi(src, ["IXI002-Guys-0001"], nan_in=["IXI002-Guys-0001"])
    out = tmp_path / "mri"
    assert main(["prepare", "ixi", "--src", str(src), "--out", str(out), "--quiet"]) == 2
    _one_line_error(capsys, "no usable IXI volumes", "NaN", "IXI002-Guys-0001-T2.nii.gz")
    _no_output(tmp_path, out)


def test_a_patient_without_a_partner_folder_is_a_listed_failure(tmp_path, capsys):
    src = tmp_path / "AAPM"
    _aapm(src, ["L001", "L002", "L003"])
    make_ct_series(src / "L004" / "full_1mm", slices=3, seed=9)  # no quarter_1mm
    (src / "docs").mkdir()
    out = tmp_path / "ct"
    assert main(["prepare", "aapm", "--src", str(src), "--out", str(out), "--quiet"]) == 3
    summary = _summary(out)
    assert summary["failures"] == [{"input": str(src / "L004"), "reason": "no quarter_1mm sub-folder to pair with"}]
    assert [f["input"] for f in summary["ignored"]] == [str(src / "docs")]
    assert summary["inputs"] == {"found": 4, "used": 3, "skipped": 1}
    out_text = capsys.readouterr().out
    assert "from 3 of 4 inputs" in out_text and "L004: no quarter_1mm" in out_text


def test_an_input_that_fails_half_way_leaves_no_pairs(tmp_path, monkeypatch):
    """The third slice of one volume cannot be simulated: its first two pairs must go too."""
    from restore_rwkv.utils.errors import InputError

    original = prepare_module.default_degradation
    calls = {"n": 0}

    def flaky(task, **options):
        op = original(task, **options)

        def degrade(hq, seed=None):
            calls["n"] += 1
            if calls["n"] == 3:
                raise InputError("volume-b", "simulation failed on this slice")
            return op(hq, seed=seed)

        return degrade

    monkeypatch.setattr(prepare_module, "default_degradation", flaky)
    src = tmp_path / "hq"
    src.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c", "d"):
        np.save(src / f"{name}.npy", (rng.random((5, 16, 16)) * 1000).astype(np.float32))
    out = tmp_path / "mri"
    assert main(["prepare", "simulate", "--task", "mri", "--src", str(src), "--out", str(out), "--quiet",
                 "--slices", "3"]) == 3
    assert [f["input"] for f in _summary(out)["failures"]] == [str(src / "a.npy")]
    assert not list(out.rglob("a_*")) and len(_rows(out)) == 9 and not (out / ".pending").exists()
    on_disk = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.npy"))
    assert on_disk == sorted(r[k] for r in _rows(out) for k in ("lq", "hq"))


# ----------------------------------------------------------------------------- 3. CT pairs that agree
def _padded_ct(folder, padding_hu, patient="P1", size=48, **kwargs):
    """A CT series whose scan field is a disk; outside it the scanner stored ``padding_hu``."""
    yy, xx = np.mgrid[:size, :size]
    inside = np.hypot(yy - size / 2 + 0.5, xx - size / 2 + 0.5) < size * 0.42

    def edit(ds, k):
        hu = np.where(inside, 40.0 + 10 * k, -1000.0)
        hu[inside & (xx < size / 2)] = 300.0  # some bone-like structure
        hu = np.where(inside, hu, padding_hu)
        ds.RescaleIntercept = -3072 if padding_hu < -2048 else -1024
        ds.PixelData = (hu - float(ds.RescaleIntercept)).astype(np.int16).tobytes()

    make_ct_series(folder, slices=3, rows=size, cols=size, patient=patient, pixel_spacing=(0.8, 0.8), edit=edit,
                   **kwargs)
    return inside


@pytest.mark.parametrize("padding_hu", [-3024.0, -2000.0])
def test_out_of_field_padding_becomes_air_in_both_images(tmp_path, padding_hu):
    src = tmp_path / "scans"
    inside = _padded_ct(src / "P1", padding_hu)
    out = tmp_path / "sim"
    assert main(["prepare", "simulate", "--task", "ct", "--src", str(src), "--out", str(out), "--quiet",
                 "--split", "0,0,1"]) == 0
    rows = _rows(out)
    assert len(rows) == 3
    for r in rows:
        hq, lq = np.load(out / r["hq"]), np.load(out / r["lq"])
        assert hq.min() == -1024.0 and np.array_equal(hq[~inside], np.full((~inside).sum(), -1024.0, np.float32))
        assert np.array_equal(lq[~inside], hq[~inside])  # no signal there: the pair agrees exactly
        # inside the field LQ is HQ plus noise: unbiased in the soft tissue, nowhere near the padding value
        soft = inside & (hq < 100)
        assert abs(float((lq - hq)[soft].mean())) < 10.0 and lq[inside].min() > -1024 - 600


def test_enhanced_ct_is_read_with_its_functional_group_rescale(tmp_path):
    plain = tmp_path / "plain"
    inside = _padded_ct(plain, -1000.0, patient="ENH")
    src = tmp_path / "scans"
    src.mkdir()
    make_enhanced_ct(plain, src / "enhanced.dcm")
    out = tmp_path / "sim"
    assert main(["prepare", "simulate", "--task", "ct_denoise", "--src", str(src), "--out", str(out), "--quiet",
                 "--split", "1,0,0"]) == 0
    rows = _rows(out)
    assert len(rows) == 3 and all(Path(r["hq"]).name.startswith("ENH_") for r in rows)
    for r in rows:
        hq, lq = np.load(out / r["hq"]), np.load(out / r["lq"])
        assert np.allclose(hq[~inside], -1000.0)  # air at -1000 HU: the rescale was applied (0 without it)
        assert abs(float(lq[~inside].mean()) + 1000.0) < 30.0  # LQ is HQ plus noise, not streaks around 0


# ----------------------------------------------------------------------------- 4. spacing from the metadata
def test_ct_simulation_takes_each_images_pixel_spacing(tmp_path, monkeypatch, capsys):
    seen = []
    original = prepare_module.default_degradation

    def spy(task, **options):
        seen.append(options.get("pixel_size_mm"))
        return original(task, **options)

    monkeypatch.setattr(prepare_module, "default_degradation", spy)
    src = tmp_path / "scans"
    make_ct_series(src / "A", slices=2, rows=16, cols=16, patient="A", pixel_spacing=(0.5, 0.5))
    make_ct_series(src / "B", slices=2, rows=16, cols=16, patient="B", pixel_spacing=(0.9765625, 0.9765625))
    np.save(src / "plain.npy", np.where(np.eye(16) > 0, 40.0, -1000.0).astype(np.float32))
    out = tmp_path / "sim"
    assert main(["prepare", "simulate", "--task", "ct", "--src", str(src), "--out", str(out), "--quiet",
                 "--split", "1,0,0"]) == 0
    assert sorted(v for v in seen if v is not None) == [0.5, 0.976562]  # metadata spacing, rounded to 1e-6 mm
    assert None in seen  # the .npy file has no spacing: the default
    notes = _summary(out)["notes"]
    assert len(notes) == 1 and "plain.npy" in notes[0] and "0.7 mm" in notes[0]
    seen.clear()
    assert main(["prepare", "simulate", "--task", "ct", "--src", str(src), "--out", str(tmp_path / "sim2"), "--quiet",
                 "--split", "1,0,0", "--pixel-size-mm", "1.5"]) == 0
    assert set(seen) == {1.5} and _summary(tmp_path / "sim2")["notes"] == []


def test_non_square_ct_pixels_are_refused(tmp_path, capsys):
    src = tmp_path / "scans"
    make_ct_series(src / "A", slices=2, rows=16, cols=16, patient="A", pixel_spacing=(0.5, 0.8))
    out = tmp_path / "sim"
    assert main(["prepare", "simulate", "--task", "ct", "--src", str(src), "--out", str(out), "--quiet"]) == 2
    _one_line_error(capsys, "not square")


# ----------------------------------------------------------------------------- 5. DICOM series by patient
def test_simulate_groups_dicom_series_and_splits_by_patient(tmp_path):
    src = tmp_path / "scans"
    for n, patient in enumerate(["PAT-A", "PAT-B", "PAT-C", "PAT-D"]):
        for series in (1, 2):  # two series per patient: PAT-A's in one folder, the others' in a folder each
            def number(ds, k, series=series):
                ds.SeriesNumber = series

            folder = src / patient if patient == "PAT-A" else src / patient / f"s{series}"
            make_ct_series(folder, file_prefix=f"IM{series}-", slices=7, rows=12, cols=12, patient=patient, seed=10 * n + series,
                           edit=number, pixel_spacing=(0.7, 0.7))
    np.save(src / "extra.npy", np.where(np.eye(12) > 0, 40.0, -1000.0).astype(np.float32))
    (src / "README.txt").write_text("not an image")
    out = tmp_path / "sim"
    assert main(["prepare", "simulate", "--task", "ct_denoise", "--src", str(src), "--out", str(out), "--quiet",
                 "--slices", "3"]) == 0
    rows = _rows(out)
    names = sorted(Path(r["hq"]).stem for r in rows)
    assert len(rows) == 4 * 2 * 3 + 1  # --slices 3 per series, not one pair per file
    assert "PAT-A_1_002" in names and "PAT-A_2_004" in names and "extra" in names
    split_of_patient: dict = {}
    for r in rows:
        split_of_patient.setdefault(Path(r["hq"]).stem.split("_")[0], set()).add(r["split"])
    assert all(len(splits) == 1 for splits in split_of_patient.values()), split_of_patient
    summary = _summary(out)
    assert summary["inputs"]["found"] == 9 and summary["subjects"]["train"] >= 1
    assert [f["input"] for f in summary["ignored"]] == [str(src / "README.txt")]


def test_series_uid_picks_one_series(tmp_path, capsys):
    src = tmp_path / "scans"
    make_ct_series(src / "P" / "a", slices=3, rows=12, cols=12, patient="P", series_uid="1.2.3.4",
                   pixel_spacing=(0.7, 0.7))
    make_ct_series(src / "P" / "b", slices=3, rows=12, cols=12, patient="P", series_uid="1.2.3.5", seed=2,
                   pixel_spacing=(0.7, 0.7))
    out = tmp_path / "sim"
    assert main(["prepare", "simulate", "--task", "ct", "--src", str(src), "--out", str(out), "--quiet",
                 "--series-uid", "1.2.3.5", "--split", "1,0,0"]) == 0
    assert len(_rows(out)) == 3
    assert sum("not the chosen --series-uid" in f["reason"] for f in _summary(out)["ignored"]) == 3
    assert main(["prepare", "simulate", "--task", "ct", "--src", str(src), "--out", str(tmp_path / "x"), "--quiet",
                 "--series-uid", "9.9"]) == 2
    _one_line_error(capsys, "no DICOM image of series 9.9")


def test_another_modality_is_refused_unless_forced(tmp_path, capsys):
    src = tmp_path / "scans"

    def mr(ds, k):
        ds.Modality = "MR"

    make_ct_series(src / "P", slices=3, rows=12, cols=12, patient="P", edit=mr, pixel_spacing=(0.7, 0.7))
    out = tmp_path / "sim"
    assert main(["prepare", "simulate", "--task", "ct", "--src", str(src), "--out", str(out), "--quiet"]) == 2
    _one_line_error(capsys, "is a MR image, not CT", "--force")
    assert main(["prepare", "simulate", "--task", "ct", "--src", str(src), "--out", str(out), "--quiet", "--force",
                 "--split", "1,0,0"]) == 0


# ----------------------------------------------------------------------------- 6. outputs checked first, signals
@pytest.fixture
def small_source(tmp_path):
    src = tmp_path / "hq"
    src.mkdir()
    rng = np.random.default_rng(7)
    for i in range(3):
        np.save(src / f"s{i}.npy", (rng.random((16, 16)) * 100.0 * (i + 1)).astype(np.float32))
    return src


def _never_read(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("an input was read before --out was checked")

    monkeypatch.setattr(prepare_module, "read_image", fail)


def test_out_that_is_a_file_or_below_a_file_fails_before_any_work(tmp_path, small_source, capsys, monkeypatch):
    _never_read(monkeypatch)
    a_file = tmp_path / "taken.txt"
    a_file.write_text("user data")
    for out, fragment in ((a_file, "is a file, not a folder"), (a_file / "sub" / "out", "taken.txt is a file")):
        assert main(["prepare", "simulate", "--task", "mri", "--src", str(small_source), "--out", str(out),
                     "--quiet"]) == 2
        _one_line_error(capsys, fragment)
    assert a_file.read_text() == "user data"


def test_out_in_a_folder_we_cannot_write_fails_before_any_work(tmp_path, small_source, capsys, monkeypatch):
    _never_read(monkeypatch)
    targets = []
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        targets.append(locked / "out")
    if os.path.isdir("/sys") and not os.access("/sys", os.W_OK) or os.path.isdir("/sys") and os.geteuid() == 0:
        targets.append(Path("/sys/restore-rwkv-out"))  # read-only even for root in containers
    try:
        probe = Path("/sys/restore-rwkv-probe")
        probe.mkdir()
        probe.rmdir()
        targets = [t for t in targets if not str(t).startswith("/sys")]
    except OSError:
        pass
    if not targets:
        pytest.skip("no folder on this machine refuses writes to this user")
    for out in targets:
        assert main(["prepare", "simulate", "--task", "mri", "--src", str(small_source), "--out", str(out),
                     "--quiet"]) == 2
        _one_line_error(capsys, str(out), "cannot be created")


def test_a_permission_error_while_staging_is_one_line(tmp_path, small_source, capsys, monkeypatch):
    """The folder passed the up-front check, then refused the staging folder (e.g. a quota, a race)."""
    import tempfile

    real = tempfile.mkdtemp

    def denied(*args, prefix="", **kwargs):
        if "probe" in prefix:
            return real(*args, prefix=prefix, **kwargs)
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkdtemp", denied)
    assert main(["prepare", "simulate", "--task", "mri", "--src", str(small_source), "--out", str(tmp_path / "o"),
                 "--quiet"]) == 2
    _one_line_error(capsys, "Permission denied")


_SLOW_RUN = """
import sys, time
import restore_rwkv.data.prepare.simulate as p
original = p.default_degradation
def slow(task, **options):
    op = original(task, **options)
    def degrade(hq, seed=None):
        time.sleep(0.3)
        return op(hq, seed=seed)
    return degrade
p.default_degradation = slow
from restore_rwkv.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigterm_removes_the_staged_output_like_ctrl_c(tmp_path):
    src = tmp_path / "hq"
    src.mkdir()
    for i in range(30):
        np.save(src / f"s{i:02d}.npy", np.arange(256, dtype=np.float32).reshape(16, 16) + i)
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(prepare_module.__file__).parents[2])] + sys.path))
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_RUN, "prepare", "simulate", "--task", "mri", "--src",
                             str(src), "--out", str(out), "--quiet"], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not list(tmp_path.glob(".out.partial-*/.pending/MRI/HQ/*.npy")):
        time.sleep(0.05)
    assert list(tmp_path.glob(".out.partial-*/.pending/MRI/HQ/*.npy")), "the run never started writing"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "terminated" in err and "Traceback" not in err
    _no_output(tmp_path, out)


def test_stale_partial_folders_of_dead_runs_are_removed_at_start(tmp_path, small_source):
    import socket

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    stale = tmp_path / f".out.partial-{dead.pid}@{host}-abcd1234"
    other_host = tmp_path / f".out.partial-{dead.pid}@another-machine.example-abcd1234"
    alive = tmp_path / f".out.partial-{os.getpid()}@{host}-wxyz5678"
    for folder in (stale, other_host, alive):
        (folder / "MRI").mkdir(parents=True)
    out = tmp_path / "out"
    assert main(["prepare", "simulate", "--task", "mri", "--src", str(small_source), "--out", str(out), "--quiet",
                 "--split", "1,0,0"]) == 0
    assert not stale.exists() and other_host.exists() and alive.exists() and out.is_dir()


# ----------------------------------------------------------------------------- 7. modes follow the umask
@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_prepared_files_and_folders_follow_the_umask(tmp_path, small_source, umask):
    out = tmp_path / "out"
    old = os.umask(umask)
    try:
        assert main(["prepare", "simulate", "--task", "mri", "--src", str(small_source), "--out", str(out),
                     "--quiet", "--split", "1,0,1"]) == 0
    finally:
        os.umask(old)
    entries = [out, *out.rglob("*")]
    assert len([p for p in entries if p.is_file()]) == 3 * 2 + 2
    for path in entries:
        expected = (0o777 if path.is_dir() else 0o666) & ~umask
        assert path.stat().st_mode & 0o777 == expected, (path, oct(path.stat().st_mode & 0o777))


# ----------------------------------------------------------------------------- 8. smaller
def test_src_that_is_a_file_says_so(tmp_path, small_source, capsys):
    assert main(["prepare", "simulate", "--task", "pet", "--src", str(small_source / "s0.npy"), "--out",
                 str(tmp_path / "o"), "--quiet"]) == 2
    _one_line_error(capsys, "s0.npy", "is a file; --src takes a folder")


def test_task_aliases_name_the_same_task(tmp_path, small_source):
    for alias, folder in (("mri", "MRI"), ("pt", "PET")):
        out = tmp_path / alias
        assert main(["prepare", "simulate", "--task", alias, "--src", str(small_source), "--out", str(out),
                     "--quiet", "--split", "1,0,0"]) == 0
        assert all(r["lq"].startswith(folder + "/") for r in _rows(out))


def test_missing_decoder_message_names_the_package(tmp_path, capsys):
    import importlib.util
    import shutil

    from pydicom.data import get_testdata_file

    if any(importlib.util.find_spec(m) for m in ("libjpeg", "jpeg_ls", "gdcm")):
        pytest.skip("a JPEG-LS decoder is installed here")
    src = tmp_path / "scans"
    src.mkdir()
    shutil.copy(get_testdata_file("MR_small_jpeg_ls_lossless.dcm"), src / "jls.dcm")
    assert main(["prepare", "simulate", "--task", "mri", "--src", str(src), "--out", str(tmp_path / "o"),
                 "--quiet"]) == 2
    _one_line_error(capsys, "jls.dcm", "restore-rwkv[dicom-codecs]", "pylibjpeg-libjpeg")


# ----------------------------------------------------------------------------- review findings
@pytest.mark.parametrize("args", [["--task", "ct", "--dose-fraction", "2"], ["--task", "ct", "--pixel-size-mm", "0"],
                                  ["--task", "ct", "--pixel-size-mm", "-1"], ["--task", "ct", "--pixel-size-mm", "nan"],
                                  ["--task", "mri", "--scale", "0"], ["--task", "mri", "--scale", "nan"],
                                  ["--task", "pet", "--dose-reduction", "0.5"], ["--task", "pet", "--total-counts", "0"],
                                  ["--task", "mri", "--seed", "-1"], ["--task", "mri", "--slices", "0"]])
def test_bad_options_are_refused_before_any_input_is_read(tmp_path, small_source, capsys, monkeypatch, args):
    _never_read(monkeypatch)
    assert main(["prepare", "simulate", "--src", str(small_source), "--out", str(tmp_path / "o"), "--quiet",
                 *args]) == 2
    _one_line_error(capsys)
    _no_output(tmp_path, tmp_path / "o")


def test_ixi_bad_scale_is_refused_before_reading(tmp_path, capsys):
    src = tmp_path / "IXI"
    _ixi(src, ["IXI002-Guys-0001"])
    assert main(["prepare", "ixi", "--src", str(src), "--out", str(tmp_path / "o"), "--scale", "0.5", "--quiet"]) == 2
    _one_line_error(capsys, "scale")


def test_a_huge_seed_works(tmp_path, small_source):
    assert main(["prepare", "simulate", "--task", "mri", "--src", str(small_source), "--out", str(tmp_path / "o"),
                 "--quiet", "--split", "1,0,0", "--seed", str(2**62)]) == 0


def test_out_through_a_symbolic_link_lands_in_its_target(tmp_path, small_source):
    target = tmp_path / "scratch" / "data"
    target.mkdir(parents=True)
    link = tmp_path / "data"
    link.symlink_to(target)
    for extra in ([], ["--overwrite"]):
        assert main(["prepare", "simulate", "--task", "mri", "--src", str(small_source), "--out", str(link),
                     "--quiet", "--split", "1,0,0", *extra]) == 0
        assert link.is_symlink() and (target / "manifest.csv").exists() and len(_rows(target)) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "hq", "scratch"]
    assert sorted(p.name for p in target.parent.iterdir()) == ["data"]


def test_out_dot_in_an_empty_folder(tmp_path, small_source, monkeypatch):
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    assert main(["prepare", "simulate", "--task", "mri", "--src", str(small_source), "--out", ".", "--quiet",
                 "--split", "1,0,0"]) == 0
    assert (here / "manifest.csv").exists() and len(_rows(here)) == 3


def test_overwrite_replaces_only_an_earlier_prepare_output(tmp_path, small_source, capsys):
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    assert main(["prepare", "simulate", "--task", "mri", "--src", str(small_source), "--out", str(mine), "--quiet",
                 "--overwrite"]) == 2
    _one_line_error(capsys, "not a folder written by prepare")
    assert (mine / "thesis.tex").read_text() == "years of work"


def test_a_failed_run_removes_the_parent_folders_it_created(tmp_path, capsys):
    src = tmp_path / "all_bad"
    src.mkdir()
    np.save(src / "nan.npy", np.full((8, 8), np.nan, np.float32))
    out = tmp_path / "a" / "b" / "out"
    assert main(["prepare", "simulate", "--task", "mri", "--src", str(src), "--out", str(out), "--quiet"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["all_bad"]


def test_an_empty_or_complex_array_is_one_failed_input(tmp_path, small_source):
    np.save(small_source / "empty.npy", np.zeros((0, 16), np.float32))
    np.save(small_source / "complex.npy", np.ones((16, 16), np.complex64))
    out = tmp_path / "o"
    assert main(["prepare", "simulate", "--task", "ct", "--src", str(small_source), "--out", str(out), "--quiet",
                 "--split", "1,0,0"]) == 3
    reasons = {Path(f["input"]).name: f["reason"] for f in _summary(out)["failures"]}
    assert set(reasons) == {"empty.npy", "complex.npy"} and "complex" in reasons["complex.npy"]
    assert len(_rows(out)) == 3


def test_files_that_share_a_name_both_become_pairs(tmp_path):
    from PIL import Image

    src = tmp_path / "hq"
    src.mkdir()
    image = (np.arange(256).reshape(16, 16) % 200).astype(np.uint8)
    Image.fromarray(image).save(src / "a.png")
    np.save(src / "a.npy", image.astype(np.float32) * 2)
    out = tmp_path / "o"
    assert main(["prepare", "simulate", "--task", "mri", "--src", str(src), "--out", str(out), "--quiet",
                 "--split", "1,0,0"]) == 0
    assert sorted(Path(r["hq"]).name for r in _rows(out)) == ["a-npy.npy", "a-png.npy"]


def test_a_series_spread_over_folders_is_one_input(tmp_path):
    src = tmp_path / "export"
    whole = tmp_path / "whole"
    make_ct_series(whole, slices=6, rows=12, cols=12, patient="PA", pixel_spacing=(0.7, 0.7), shuffle=False)
    for k, path in enumerate(sorted(whole.iterdir())):  # PACS export: 0001/, 0002/, 0003/
        folder = src / "PA" / f"{k // 2 + 1:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        path.rename(folder / path.name)
    out = tmp_path / "o"
    assert main(["prepare", "simulate", "--task", "ct", "--src", str(src), "--out", str(out), "--quiet",
                 "--split", "1,0,0", "--slices", "6"]) == 0
    summary = _summary(out)
    assert summary["inputs"] == {"found": 1, "used": 1, "skipped": 0} and len(_rows(out)) == 6


def test_split_by_series_for_anonymised_data(tmp_path, capsys):
    src = tmp_path / "anon"
    for k in range(3):
        make_ct_series(src / f"case{k}", slices=2, rows=12, cols=12, patient="ANONYMOUS", seed=k,
                       pixel_spacing=(0.7, 0.7))
    out = tmp_path / "o"
    assert main(["prepare", "simulate", "--task", "ct", "--src", str(src), "--out", str(out), "--quiet"]) == 2
    _one_line_error(capsys, "1 subject(s) cannot fill")
    assert main(["prepare", "simulate", "--task", "ct", "--src", str(src), "--out", str(out), "--quiet",
                 "--split-by", "series"]) == 0
    assert _summary(out)["subjects"] == {"train": 1, "validation": 1, "test": 1}


def test_series_uid_ignores_every_other_file(tmp_path, small_source):
    make_ct_series(small_source / "P", slices=3, rows=12, cols=12, patient="P", series_uid="1.2.3.4",
                   pixel_spacing=(0.7, 0.7))
    out = tmp_path / "o"
    assert main(["prepare", "simulate", "--task", "ct", "--src", str(small_source), "--out", str(out), "--quiet",
                 "--series-uid", "1.2.3.4", "--split", "1,0,0"]) == 0
    assert len(_rows(out)) == 3 and len(_summary(out)["ignored"]) == 3  # the three .npy files


def test_a_prepare_output_is_not_taken_as_hq_unless_forced(tmp_path, small_source, capsys):
    first = tmp_path / "first"
    assert main(["prepare", "simulate", "--task", "mri", "--src", str(small_source), "--out", str(first), "--quiet",
                 "--split", "1,0,0"]) == 0
    assert main(["prepare", "simulate", "--task", "mri", "--src", str(first), "--out", str(tmp_path / "second"),
                 "--quiet"]) == 2
    _one_line_error(capsys, "output of an earlier prepare", "--force")


def test_aapm_notes_unpaired_slices_and_refuses_misaligned_series(tmp_path, capsys):
    src = tmp_path / "AAPM"
    _aapm(src, ["L001", "L002"], slices=3)
    make_ct_series(src / "L003" / "full_1mm", slices=5, seed=1, patient="L003")  # two more slices than quarter
    make_ct_series(src / "L003" / "quarter_1mm", slices=3, seed=2, patient="L003")
    make_ct_series(src / "L004" / "full_1mm", slices=3, seed=3, patient="L004")
    make_ct_series(src / "L004" / "quarter_1mm", slices=3, seed=4, patient="L004", pixel_spacing=(0.9, 0.8))
    (src / "README.txt").write_text("AAPM data")
    out = tmp_path / "ct"
    assert main(["prepare", "aapm", "--src", str(src), "--out", str(out), "--quiet"]) == 3
    summary = _summary(out)
    assert [f["input"] for f in summary["failures"]] == [str(src / "L004")]
    assert "pixel spacing or orientation differs" in summary["failures"][0]["reason"]
    assert summary["notes"] == ["full-dose slices without a quarter-dose partner at the same position were left "
                                "out: L003: 2 of 5 full-dose slices"]
    assert [f["input"] for f in summary["ignored"]] == [str(src / "README.txt")]


def test_ixi_second_volume_of_a_subject_is_listed(tmp_path):
    src = tmp_path / "IXI"
    _ixi(src, ["IXI002-Guys-0001", "IXI003-HH-0002", "IXI004-IOP-0003"])
    (src / "again").mkdir()
    _ixi(src / "again", ["IXI002-HH-0009"])
    (src / "README").write_text("IXI")
    out = tmp_path / "mri"
    assert main(["prepare", "ixi", "--src", str(src), "--out", str(out), "--quiet", "--slices", "2"]) == 3
    summary = _summary(out)
    assert [f["input"] for f in summary["failures"]] == [str(src / "again" / "IXI002-HH-0009-T2.nii.gz")]
    assert "subject IXI002" in summary["failures"][0]["reason"]
    assert [f["input"] for f in summary["ignored"]] == [str(src / "README")]


def test_pet_in_bq_per_ml_becomes_suv(tmp_path, capsys):
    src = tmp_path / "pet"
    make_pet_series(src / "P")
    out = tmp_path / "o"
    assert main(["prepare", "simulate", "--task", "pet", "--src", str(src), "--out", str(out), "--quiet",
                 "--split", "1,0,0", "--slices", "3"]) == 0
    # 5000 Bq/ml in the hottest... slice k holds (500 + 100 k) * 10 Bq/ml; one hour after 370 MBq of F-18, 70 kg
    decayed = 370e6 * 0.5 ** (3600 / 6586.2)
    for r in _rows(out):
        k = int(Path(r["hq"]).stem.rsplit("_", 1)[1])
        hq = np.load(out / r["hq"])
        expected_hot = (500 + 100 * k) * 10 * 70_000 / decayed
        assert hq.max() == pytest.approx(expected_hot, rel=1e-5) and hq.min() == 0.0
    assert "SUVbw" in _summary(out)["notes"][0]
    bad = tmp_path / "pet_bad"
    make_pet_series(bad / "P", weight=0.0)
    assert main(["prepare", "simulate", "--task", "pet", "--src", str(bad), "--out", str(tmp_path / "o2"),
                 "--quiet", "--split", "1,0,0"]) == 2
    _one_line_error(capsys, "cannot express the PET values in SUV", "PatientWeight", "--force")
    assert main(["prepare", "simulate", "--task", "pet", "--src", str(bad), "--out", str(tmp_path / "o2"),
                 "--quiet", "--split", "1,0,0", "--force"]) == 0


def test_nifti_pairs_keep_the_world_position_of_dicom_slices(tmp_path):
    import nibabel as nib
    from pydicom.data import get_testdata_file

    from restore_rwkv.data.io import read_image

    src = tmp_path / "single"
    src.mkdir()
    (src / "ct.dcm").write_bytes(Path(get_testdata_file("CT_small.dcm")).read_bytes())
    out = tmp_path / "o"
    assert main(["prepare", "simulate", "--task", "ct", "--src", str(src), "--out", str(out), "--quiet",
                 "--format", "nifti", "--split", "1,0,0"]) == 0
    _, meta = read_image(src / "ct.dcm")
    for r in _rows(out):
        assert np.allclose(nib.load(str(out / r["hq"])).affine, meta.affine_in("RAS"))
    aapm = tmp_path / "AAPM"
    _aapm(aapm, ["L001"], slices=3)
    out = tmp_path / "a"
    assert main(["prepare", "aapm", "--src", str(aapm), "--out", str(out), "--quiet", "--format", "nifti",
                 "--split", "1,0,0"]) == 0
    volume, meta = read_image(aapm / "L001" / "full_1mm")
    for r in _rows(out):
        index = int(Path(r["hq"]).name.split("_")[1].split(".")[0])
        image = nib.load(str(out / r["hq"]))
        ras = meta.affine_in("RAS")
        for i, j in ((0, 0), (3, 5)):  # pixel (i, j) of the slice is voxel (index, i, j) of the series
            assert np.allclose(image.affine @ [i, j, 0, 1], ras @ [index, i, j, 1])


def test_prepare_ixi_records_each_volumes_mr_scale_and_training_uses_it(tmp_path):
    """The MR policy's scale is fitted once per volume, on all of its LQ slices (what restore fits on the
    whole input volume), written into the manifest and used by the datasets."""
    from restore_rwkv.data.datasets import PairedSliceDataset, reference_layout
    from restore_rwkv.modality import get_convention

    src = tmp_path / "IXI"
    _ixi(src, ["IXI002-Guys-0001", "IXI003-HH-0002"])
    out = tmp_path / "mri"
    assert main(["prepare", "ixi", "--src", str(src), "--out", str(out), "--slices", "4", "--quiet",
                 "--split", "1,0,0"]) == 0
    rows = _rows(out)
    scales = {}
    for subject in ("IXI002", "IXI003"):
        mine = sorted((r for r in rows if subject in r["hq"]), key=lambda r: r["lq"])
        assert len({r["scale"] for r in mine}) == 1  # one scale per volume
        lq = np.stack([np.load(out / r["lq"]) for r in mine])
        scales[subject] = float(mine[0]["scale"])
        assert scales[subject] == pytest.approx(get_convention("mri").scaling.fit(lq), rel=1e-12)
    records = reference_layout(out, "train")
    assert {r.scale for r in records} == set(scales.values())  # the prepared layout lends the manifest's scale
    items = {Path(r.hq).name: item for r, item in zip(records, PairedSliceDataset(records))}
    for name, item in items.items():
        assert item["scale"] == scales[name.split("_")[0]]
    assert scales["IXI002"] != scales["IXI003"]
