"""The offline demo dataset: real anatomy and phantoms that ship inside installed packages.

Sources (see docs/data.md for licences):
- CT (512 x 512, in HU): real head, brain and abdomen slices from pydicom's and pydicom-data's
  test files (training: three patients; test: a fourth patient), plus random body phantoms and
  scikit-image's Shepp-Logan phantom (training and validation).
- MRI: axial slices of the MNI ICBM152 2009a T1 template inside nilearn's package, given Rician
  thermal noise like one acquisition's (training and validation), and crops of a real shoulder MR
  slice at two pixel sizes (training); test: a real abdominal MR slice (another subject and series).
- PET: FDG-like activity from the MNI152 grey- and white-matter probability maps in nilearn
  (separate stretches of the brain for the three splits; no real PET ships offline).
LQ images come from the degradations of ``restore_rwkv.physics`` with fixed seeds; each
real CT training slice is degraded several times (independent noise) for more pairs.
"""

from __future__ import annotations

import importlib.util
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from restore_rwkv.data.io import read_nifti_canonical
from restore_rwkv.data.prepare import PairWriter, PreparationReport, ct_air_floor, staged_output
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

CT_SIZE = 512  # CT slices as scanners write them
MRI_SIZE = 256  # MNI slices (1 mm) on a 256 x 256 grid; real MR slices keep their own size
PET_SIZE = 128  # PET reconstructions are small (2-4 mm pixels)
CT_FOV_MM = 320.0  # field of view of the phantoms (0.625 mm pixels at 512)
# Photons per view per mm of detector at full dose (LowDoseCT's unit; its default, 3e5, is clinical dose).
DEMO_CT_FLUX = 3e5
# Bump whenever prepare_demo's output changes: a data folder written by another version is rebuilt by
# ensure_demo_data (the demo and the results report would otherwise score stale pairs).
DEMO_DATA_VERSION = 5
DEMO_VERSION_FILE = "demo_version.json"
CT_REALIZATIONS = 4  # independent quarter-dose noise draws per real CT training slice
CT_PHANTOMS = {"train": 12, "validation": 3}
# MNI slices per split (separate stretches of the brain) and the PET slices.
COUNTS = {"train": 40, "validation": 6, "test": 12}
MRI_COUNTS = {"train": 40, "validation": 6}
MRI_SCALE = 3000.0  # an MR image's foreground 99th percentile is put here (of the 0..4095 range)
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


def _mr_scaled(image: np.ndarray) -> np.ndarray:
    """An MR image scaled so its foreground's 99th percentile is ``MRI_SCALE``, clipped to [0, 4095]."""
    image = np.maximum(np.asarray(image, np.float64), 0.0)
    foreground = image[image > 0.1 * image.max()]
    return np.clip(image * (MRI_SCALE / np.percentile(foreground, 99)), 0.0, 4095.0).astype(np.float32)


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
    """Build the demo dataset under ``out`` (about 50 s on 2 CPU cores, no network)."""
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

        # MRI x4: MNI template slices (1 mm, on 256 x 256) with simulated thermal noise for training and
        # validation; crops of a real shoulder slice binned 2 x 2 and 3 x 3 (0.39 and 0.59 mm) for training;
        # a real abdominal slice of another subject for the test.
        mri = KSpaceTruncation(4)
        mr_rng = np.random.default_rng([seed, 7])
        slices = _split_interleaved(_brain_slices(t1, sum(COUNTS.values()) + 12))
        scale = MRI_SCALE / np.percentile(t1[t1 > 0], 99)
        for split in ("train", "validation"):
            for i in slices[split][: MRI_COUNTS[split]]:
                clean = _to_square(_axial(t1, i) * scale, MRI_SIZE)
                hq = np.clip(_rician(clean, mr_rng.uniform(*MRI_NOISE) * MRI_SCALE, mr_rng), 0.0, 4095.0)
                writer.write("mri_sr", split, f"mni152_t1_z{i:03d}", mri(hq), hq, subject="MNI152")
        for source, image, _ in (real_mr[s.name] for s in MRI_TRAIN):
            for factor in MRI_REAL_BINNING:
                binned = _binned(image, factor)
                for y, x, crop in _crops(_mr_scaled(binned), MRI_SIZE, MRI_SIZE // 4):
                    name = f"{source.name}_bin{factor}_y{y:03d}_x{x:03d}"
                    writer.write("mri_sr", "train", name, mri(crop), crop, subject=source.subject)
        for source, image, _ in (real_mr[s.name] for s in MRI_TEST):
            hq = _mr_scaled(image)
            writer.write("mri_sr", "test", source.name, mri(hq), hq, subject=source.subject)
        bar.update()

        # CT quarter dose at 512 x 512 with the clinical flux: phantoms (0.625 mm) for training and validation,
        # real slices of three patients (several noise draws each) for training, a fourth patient for the test.
        rng = np.random.default_rng(seed)
        phantom_ct = LowDoseCT(dose_fraction=0.25, incident_flux=DEMO_CT_FLUX, pixel_size_mm=CT_FOV_MM / CT_SIZE)
        count = sum(CT_PHANTOMS.values())
        phantoms = [shepp_logan_hu(CT_SIZE)] + [random_body_phantom(CT_SIZE, rng) for _ in range(count - 1)]
        lq = phantom_ct(np.stack(phantoms), seed=seed + 1)
        for k, (h, l) in enumerate(zip(phantoms, lq)):
            split = "train" if k < CT_PHANTOMS["train"] else "validation"
            name = "shepp_logan" if k == 0 else f"body_phantom_{k:03d}"
            writer.write("ct_denoise", split, name, l, h, subject=name)
        for k, source in enumerate(CT_TRAIN + CT_TEST):
            _, image, spacing = real_ct[source.name]
            (hq,) = ct_air_floor(_to_square(image, CT_SIZE, fill=-1024.0) if image.shape != (CT_SIZE, CT_SIZE) else image)
            ct = LowDoseCT(dose_fraction=0.25, incident_flux=DEMO_CT_FLUX, pixel_size_mm=_ct_pixel_size(image, spacing))
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


def demo_pixel_spacing(task: str, name: str) -> float:
    """In-plane pixel size (mm) of a demo test image, for writing it in a format with geometry."""
    for source in CT_TEST + MRI_TEST:
        if source.name == name:
            image, spacing = _real_slice(source)
            return _ct_pixel_size(image, spacing) if task == "ct_denoise" else spacing
    extent = 233.0  # the MNI 2009a grid's largest in-plane side (1 mm voxels), put on a square of the task's size
    return extent / (PET_SIZE if task == "pet" else MRI_SIZE)
