"""PET low-count simulation: projection, Poisson counts, binomial thinning, MLEM/OSEM.

Physics: the expected coincidences along each line of response are the line integrals of
the activity, times the survival probability exp(-integral of mu) when an attenuation map
is given, scaled so the whole slice yields ``total_counts``. Measured counts are Poisson.
A scan with 1/f of the dose (or of the acquisition time) is random thinning of the list
mode: each count is kept with probability 1/f, i.e. binomial thinning of the sinogram
(f = 12 in the paper). Reconstruction is MLEM (OSEM with ``subsets`` > 1; pixel-driven
back-projection as the transpose, a standard unmatched pair that is much faster than the
exact adjoint on CPU) for a fixed number of iterations with an optional Gaussian
post-filter, rescaled to activity units.

Two uses:

- ``op(hq, seed) -> lq`` (the :class:`Degradation` protocol): ``hq`` is the user's full-dose
  image, taken as the activity; only the thinned data are reconstructed, and ``hq`` is the
  reference as it is. LQ therefore differs from HQ not only by the counts but also by this
  simulator's reconstruction (incomplete resolution recovery after few iterations, the
  post-filter, the discrete projector), and it adds new Poisson noise on top of whatever noise
  ``hq`` already holds. Many iterations and no post-filter keep the reconstruction's share
  small (at high counts LQ then reproduces uniform regions of ``hq``).
- ``op.simulate_pair(activity, seed) -> (hq, lq)``: for a phantom or a noiseless activity map,
  both the full-count and the thinned data are reconstructed the same way, so the pair
  differs only by the count level (the demo's PET task). ``lq`` equals ``op(activity, seed)``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from restore_rwkv.physics._common import (
    Degradation,
    Image,
    Seed,
    apply_batched,
    as_batch,
    check_seed,
    like_input,
    make_rng,
    restore_shape,
)
from restore_rwkv.physics.projector import ParallelBeamProjector


def gaussian_filter(images: torch.Tensor, fwhm: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, H, W) with full width at half maximum ``fwhm`` pixels."""
    if fwhm <= 0:
        return images
    sigma = fwhm / (2 * math.sqrt(2 * math.log(2)))
    radius = max(1, int(math.ceil(3 * sigma)))
    offsets = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    x = images[:, None]
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1))
    return x[:, 0]


class LowCountPET(Degradation):
    """Full-dose PET -> LQ reconstruction from 1/``dose_reduction`` of the counts (a :class:`Degradation`).

    ``op(hq, seed)`` returns LQ only (``hq`` stays the reference); ``op.simulate_pair(activity,
    seed)`` returns (HQ, LQ) reconstructions of the full and the thinned counts.

    Args:
        dose_reduction: thinning factor f (12 in the paper).
        total_counts: expected counts of a full-dose slice.
        iterations: MLEM iterations (full passes over the data).
        subsets: OSEM subsets (1 = MLEM); views are interleaved across subsets.
        n_views: projection angles over 180 degrees (default: pi/2 times the image size).
        post_filter_fwhm: Gaussian post-filter FWHM in pixels (0 = none).
    """

    def __init__(self, dose_reduction: float = 12.0, total_counts: float = 1e6, iterations: int = 10,
                 subsets: int = 1, n_views: int | None = None, post_filter_fwhm: float = 0.0) -> None:
        if dose_reduction < 1:
            raise ValueError(f"dose_reduction must be >= 1, got {dose_reduction}")
        if total_counts <= 0 or iterations < 1 or subsets < 1:
            raise ValueError("total_counts must be positive and iterations, subsets at least 1")
        self.dose_reduction, self.total_counts = float(dose_reduction), float(total_counts)
        self.iterations, self.subsets, self.n_views = int(iterations), int(subsets), n_views
        self.post_filter_fwhm = float(post_filter_fwhm)
        self._projectors: dict[int, list[ParallelBeamProjector]] = {}

    def projectors(self, size: int) -> list[ParallelBeamProjector]:
        """One projector per subset (all views when ``subsets`` is 1)."""
        if size not in self._projectors:
            full = ParallelBeamProjector(size, self.n_views)
            self._projectors[size] = [ParallelBeamProjector(size, full.angles[s :: self.subsets])
                                      for s in range(self.subsets)]
        return self._projectors[size]

    def _survival(self, size: int, mu: torch.Tensor | None) -> list[torch.Tensor | None]:
        if mu is None:
            return [None] * self.subsets
        return [torch.exp(-p(mu)) for p in self.projectors(size)]

    def expected_counts(self, activity: torch.Tensor, mu: torch.Tensor | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Noiseless sinograms per subset, and the per-image scale from activity to counts."""
        x, _ = as_batch(activity)
        work = torch.float64 if x.dtype == torch.float64 else torch.float32
        x = x.to(work).clamp_min(0.0)
        mu_b = None if mu is None else as_batch(mu)[0].to(work)
        size = x.shape[-1]
        survival = self._survival(size, mu_b)
        sinos = [p(x) if s is None else p(x) * s for p, s in zip(self.projectors(size), survival)]
        total = sum(s.sum(dim=(1, 2)) for s in sinos)
        scale = self.total_counts / total.clamp_min(1e-30)
        return [s * scale[:, None, None] for s in sinos], scale

    def reconstruct(self, sinograms: list[torch.Tensor], size: int, mu: torch.Tensor | None = None,
                    iterations: int | None = None) -> torch.Tensor:
        """MLEM/OSEM estimate (counts units) of (B, size, size) images from per-subset count sinograms."""
        projectors = self.projectors(size)
        mu_b = None if mu is None else as_batch(mu)[0].to(sinograms[0].dtype)
        survival = self._survival(size, mu_b)
        batch = sinograms[0].shape[0]
        ones = [torch.ones_like(s) for s in sinograms]
        sens = [p.backproject(o if a is None else o * a) for p, o, a in zip(projectors, ones, survival)]
        x = torch.ones(batch, size, size, dtype=sinograms[0].dtype, device=sinograms[0].device)
        for _ in range(iterations or self.iterations):
            for p, y, a, s in zip(projectors, sinograms, survival, sens):
                forward = p(x) if a is None else p(x) * a
                ratio = y / forward.clamp_min(1e-12)
                back = p.backproject(ratio if a is None else ratio * a)
                x = x * back / s.clamp_min(1e-12)
        return gaussian_filter(x, self.post_filter_fwhm)

    def sample_counts(self, activity: torch.Tensor, seed: Seed = None,
                      mu: torch.Tensor | None = None) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        """Full-count Poisson sinograms, their binomial thinning by 1/``dose_reduction``, and the scale."""
        rng = make_rng(seed)
        expected, scale = self.expected_counts(activity, mu)
        full = [torch.from_numpy(rng.poisson(s.cpu().numpy()).astype(np.float32)).to(s.device) for s in expected]
        thinned = [torch.from_numpy(rng.binomial(c.cpu().numpy().astype(np.int64), 1.0 / self.dose_reduction)
                                    .astype(np.float32)).to(c.device) for c in full]
        return full, thinned, scale.to(torch.float32)

    def _reconstructions(self, x: torch.Tensor, seed: int | None, mu: torch.Tensor | np.ndarray | None,
                         full_dose: bool) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(HQ or None, LQ) reconstructions in activity units of (B, N, N) activity ``x``."""
        if x.shape[-1] != x.shape[-2]:
            raise ValueError(f"PET simulation needs square slices, got {tuple(x.shape[-2:])}")
        size = x.shape[-1]
        full, thinned, scale = self.sample_counts(x, seed, mu)
        lq = self.reconstruct(thinned, size, mu) * (self.dose_reduction / scale[:, None, None])
        hq = self.reconstruct(full, size, mu) / scale[:, None, None] if full_dose else None
        return hq, lq

    def degrade_batch(self, x: torch.Tensor, seed: int | None, mu: torch.Tensor | np.ndarray | None = None
                      ) -> torch.Tensor:
        """LQ reconstruction (activity units) of the thinned counts of (B, N, N) activity ``x``."""
        return self._reconstructions(x, seed, mu, full_dose=False)[1]

    def __call__(self, hq: Image, seed: Seed = None, *, mu: torch.Tensor | np.ndarray | None = None) -> Image:
        """LQ for the full-dose image ``hq`` (activity units, square slices), like ``hq`` in kind,
        shape and dtype; ``mu``: optional attenuation map per pixel, shaped like ``hq``."""
        seed = check_seed(seed)
        return apply_batched(hq, lambda x: self.degrade_batch(x, seed, mu))

    def simulate_pair(self, activity: Image, seed: Seed = None, *, mu: torch.Tensor | np.ndarray | None = None
                      ) -> tuple[Image, Image]:
        """(HQ, LQ): reconstructions of the full and the thinned counts of ``activity``, both in
        activity units and like ``activity`` in kind, shape and dtype; LQ equals ``self(activity, seed)``."""
        seed = check_seed(seed)
        x, shape = as_batch(activity)
        hq, lq = self._reconstructions(x, seed, mu, full_dose=True)
        return like_input(restore_shape(hq, shape), activity), like_input(restore_shape(lq, shape), activity)
