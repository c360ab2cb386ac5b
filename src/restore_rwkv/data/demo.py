"""The offline demo dataset: all three tasks at 128x128 from data that ships with installed packages.

Sources (see docs/data.md for licences):
- MRI: the MNI ICBM152 2009a T1 template inside nilearn's package (``nilearn/datasets/data``).
- CT: training and validation from phantoms (scikit-image's Shepp-Logan and random body
  phantoms in HU); test from the real CT slice ``CT_small.dcm`` in pydicom's test data,
  in its four 90-degree rotations.
- PET: FDG-like activity from the MNI152 grey- and white-matter probability maps in nilearn.
LQ images come from the degradations of ``restore_rwkv.physics`` with fixed seeds.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import numpy as np

from restore_rwkv.data.io import read_nifti_canonical
from restore_rwkv.data.prepare import PairWriter, PreparationReport, staged_output
from restore_rwkv.utils.errors import InputError
from restore_rwkv.utils.progress import progress_bar

SIZE = 128
MNI_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
# Photons per view per mm of detector at full dose for the demo's CT (see LowDoseCT; default 3e5).
DEMO_CT_FLUX = 3e3
# Demo sizes per task and split.
COUNTS = {"train": 40, "validation": 6, "test": 12}


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


def prepare_demo(out: str | Path, overwrite: bool = False, quiet: bool = False, seed: int = 0) -> PreparationReport:
    """Build the demo dataset under ``out`` (about 10 s on 2 CPU cores, no network)."""
    import pydicom

    from restore_rwkv.data.io import read_dicom
    from restore_rwkv.data.phantoms import fdg_activity, random_body_phantom, shepp_logan_hu
    from restore_rwkv.physics import KSpaceTruncation, LowCountPET, LowDoseCT

    started = time.perf_counter()
    total = sum(COUNTS.values())
    t1, grey, white = _mni_volume("t1"), _mni_volume("gm"), _mni_volume("wm")
    grey, white = grey / grey.max(), white / white.max()  # stored 0..255 in nilearn's copies; probabilities here
    ct_test_file = package_file("pydicom", "data", "test_files", "CT_small.dcm")
    del pydicom
    with staged_output(out, overwrite) as stage:
        writer = PairWriter(stage, Path(out))
        bar = progress_bar(None, total=3, desc="demo tasks", quiet=quiet)  # one step per task

        # MRI: template slices, intensities scaled so the brain's 99th percentile sits at 3000 of [0, 4095].
        slices = _split_interleaved(_brain_slices(t1, total + 12))
        scale = 3000.0 / np.percentile(t1[t1 > 0], 99)
        mri = KSpaceTruncation(4)
        for split, indices in slices.items():
            for i in indices[: COUNTS[split]]:
                hq = _to_square(_axial(t1, i) * scale, SIZE)
                writer.write("mri_sr", split, f"mni152_t1_z{i:03d}", mri(hq), hq)

        bar.update()

        # CT: quarter dose from phantoms (train/validation) and from a real slice (test), in HU. The flux is
        # set so these 128² images carry the soft-tissue noise of quarter-dose clinical slices (16-56 HU)
        # although their pixels are large (2.5 mm phantoms, 0.66 mm real slice).
        rng = np.random.default_rng(seed)
        ct = LowDoseCT(dose_fraction=0.25, incident_flux=DEMO_CT_FLUX, pixel_size_mm=320.0 / SIZE)
        phantoms = [shepp_logan_hu(SIZE)] + [random_body_phantom(SIZE, rng) for _ in range(COUNTS["train"] + COUNTS["validation"] - 1)]
        lq = ct(np.stack(phantoms), seed=seed + 1)
        for k, (h, l) in enumerate(zip(phantoms, lq)):
            split = "train" if k < COUNTS["train"] else "validation"
            name = "shepp_logan" if k == 0 else f"body_phantom_{k:03d}"
            writer.write("ct_denoise", split, name, l, h)
        real, meta = read_dicom(ct_test_file)
        real = _to_square(real, SIZE, fill=-1000.0)
        spacing = float(meta.spacing[0]) if meta.spacing else 0.7
        ct_real = LowDoseCT(dose_fraction=0.25, incident_flux=DEMO_CT_FLUX, pixel_size_mm=spacing * real.shape[0] / SIZE)
        rotations = np.stack([np.rot90(real, k).copy() for k in range(4)])
        lq = ct_real(rotations, seed=seed + 2)
        for k in range(4):
            writer.write("ct_denoise", "test", f"pydicom_CT_small_rot{90 * k}", lq[k], rotations[k])

        bar.update()

        # PET: FDG-like activity from tissue maps; HQ and LQ (dose / 12) both reconstructed by OSEM.
        pet = LowCountPET(dose_reduction=12, total_counts=2e6, iterations=3, subsets=6, n_views=96, post_filter_fwhm=1.5)
        slices = _split_interleaved(_brain_slices(grey + white, total + 12))
        for split, indices in slices.items():
            chosen = indices[: COUNTS[split]]
            activity = np.stack([_to_square(fdg_activity(_axial(grey, i), _axial(white, i)), SIZE) for i in chosen])
            hq, lq = pet.simulate_pair(activity, seed=seed + 3 + len(chosen))
            for i, h, l in zip(chosen, hq, lq):
                writer.write("pet", split, f"mni152_fdg_z{i:03d}", l, h)
        bar.update()
        bar.close()
        report = writer.finish(started)
    return report
