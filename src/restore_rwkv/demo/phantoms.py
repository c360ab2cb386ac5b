"""Synthetic ground-truth slices for the demo dataset: CT phantoms in HU, FDG-like PET activity."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

# Typical CT numbers (HU) of the materials the random phantoms are made of.
HU = {"air": -1000.0, "lung": -800.0, "fat": -100.0, "water": 0.0, "soft_tissue": 40.0, "liver": 60.0,
      "blood_contrast": 150.0, "cancellous_bone": 300.0, "cortical_bone": 1200.0}


def _ellipse(shape: tuple[int, int], cy: float, cx: float, ry: float, rx: float, angle: float) -> np.ndarray:
    y, x = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    y, x = (y - cy) / shape[0] * 2, (x - cx) / shape[1] * 2
    c, s = np.cos(angle), np.sin(angle)
    u, v = c * x + s * y, -s * x + c * y
    return (u / rx) ** 2 + (v / ry) ** 2 <= 1.0


def shepp_logan_hu(size: int = 128) -> np.ndarray:
    """scikit-image's Shepp-Logan phantom resized to ``size`` and mapped to a head-like HU scale."""
    from skimage.data import shepp_logan_phantom
    from skimage.transform import resize

    phantom = resize(shepp_logan_phantom(), (size, size), anti_aliasing=True, order=1)
    # phantom intensities: 0 outside, 1 skull, 0.1-0.4 inside: skull -> bone, interior -> brain-like tissue
    inside = 40.0 + (phantom - 0.2) * 500.0
    hu = np.where(phantom > 0.7, 1000.0 * phantom, np.where(phantom < 0.05, HU["air"], inside))
    return hu.astype(np.float32)


def random_body_phantom(size: int, rng: np.random.Generator) -> np.ndarray:
    """A body-like slice in HU: fat-rimmed soft-tissue ellipse with organs, lungs, bones and vessels."""
    shape = (size, size)
    image = np.full(shape, HU["air"], dtype=np.float64)
    c = size / 2
    ry, rx = rng.uniform(0.55, 0.75), rng.uniform(0.7, 0.9)
    angle = rng.uniform(-0.2, 0.2)
    image[_ellipse(shape, c, c, ry, rx, angle)] = HU["fat"]
    image[_ellipse(shape, c, c, ry - 0.06, rx - 0.06, angle)] = HU["soft_tissue"]
    if rng.random() < 0.6:  # thorax: two lungs
        for side in (-1, 1):
            image[_ellipse(shape, c - rng.uniform(0, 0.1) * size, c + side * rx * 0.45 * size / 2,
                           ry * rng.uniform(0.5, 0.7), rx * rng.uniform(0.25, 0.35), rng.uniform(-0.3, 0.3))] = HU["lung"]
    else:  # abdomen: a liver-like organ
        image[_ellipse(shape, c - 0.05 * size, c - 0.15 * size, ry * 0.5, rx * 0.45, rng.uniform(-0.5, 0.5))] = HU["liver"]
    spine_y = c + ry * size / 2 * 0.6
    image[_ellipse(shape, spine_y, c, 0.12, 0.1, 0.0)] = HU["cortical_bone"]
    image[_ellipse(shape, spine_y, c, 0.08, 0.065, 0.0)] = HU["cancellous_bone"]
    for _ in range(rng.integers(3, 8)):  # vessels and small lesions
        image[_ellipse(shape, c + rng.uniform(-0.25, 0.25) * size, c + rng.uniform(-0.3, 0.3) * size,
                       rng.uniform(0.02, 0.07), rng.uniform(0.02, 0.07), rng.uniform(0, np.pi))] = \
            rng.choice([HU["blood_contrast"], HU["water"], HU["liver"] - 40])
    # tissue texture: smooth (correlated over a few pixels, like parenchyma), 8 HU standard deviation;
    # white noise here would be noise in the reference that no denoiser should keep
    texture = gaussian_filter(rng.normal(0.0, 1.0, shape), sigma=size / 128)
    image += texture * (8.0 / max(float(texture.std()), 1e-12)) * (image > HU["lung"])
    return image.astype(np.float32)


def fdg_activity(grey: np.ndarray, white: np.ndarray, csf: np.ndarray | None = None, grey_suv: float = 8.0,
                 white_suv: float = 2.5, csf_suv: float = 0.5) -> np.ndarray:
    """FDG-like activity (SUV) from tissue probability maps: grey matter takes up about 3x white matter."""
    activity = grey_suv * grey + white_suv * white
    if csf is not None:
        activity = activity + csf_suv * csf
    return np.clip(activity, 0.0, None).astype(np.float32)
