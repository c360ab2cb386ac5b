"""CT low-dose simulation in the projection domain.

Physics: a CT number is HU = 1000 (mu - mu_water) / mu_water, so the linear attenuation is
mu = mu_water (1 + HU / 1000). A detector bin behind the path L receives on average
I0 * d * exp(-integral of mu along L) photons, for incident flux I0 per bin at full dose and
dose fraction d (0.25 = quarter dose). Counts are Poisson, plus optional Gaussian electronic
noise; the log of the normalised counts gives noisy line integrals, which filtered
back-projection turns back into mu and then HU. The input image is taken as noiseless
ground truth (HQ); LQ carries the noise of dose fraction d (its standard deviation grows as
1/sqrt(d)) and the reconstruction error of FBP for the chosen number of views.
Geometry: parallel beam, ``n_views`` over 180 degrees (fan beam is not simulated).
"""

from __future__ import annotations

import torch

from restore_rwkv.physics._common import Degradation, Image, apply_batched, as_batch, make_generator
from restore_rwkv.physics.projector import FBP_WINDOWS, ParallelBeamProjector

MU_WATER_PER_MM = 0.0192  # linear attenuation of water at about 70 keV effective energy


def hu_to_mu(hu: torch.Tensor, mu_water: float = MU_WATER_PER_MM) -> torch.Tensor:
    """HU -> linear attenuation per mm (negative values, below air, clipped to 0)."""
    return (mu_water * (1 + hu / 1000.0)).clamp_min(0.0)


def mu_to_hu(mu: torch.Tensor, mu_water: float = MU_WATER_PER_MM) -> torch.Tensor:
    return 1000.0 * (mu / mu_water - 1.0)


class LowDoseCT(Degradation):
    """HQ (HU) -> LQ (HU) at a reduced dose (a :class:`Degradation`: ``lq = op(hq, seed)``).

    Args:
        dose_fraction: dose of LQ relative to the full dose (0.25 = quarter dose, the AAPM task).
        incident_flux: photons per detector bin and view at full dose (I0).
        electronic_noise_std: standard deviation of additive Gaussian detector noise (photons).
        pixel_size_mm: pixel spacing of the images.
        n_views: projection angles over 180 degrees (default: pi/2 times the image size).
        fbp_window: apodisation of the ramp filter (``ramp``, ``shepp-logan``, ``cosine``, ``hann``).
        mu_water: attenuation of water per mm.
    """

    def __init__(self, dose_fraction: float = 0.25, incident_flux: float = 1e5, electronic_noise_std: float = 0.0,
                 pixel_size_mm: float = 0.7, n_views: int | None = None, fbp_window: str = "ramp",
                 mu_water: float = MU_WATER_PER_MM) -> None:
        if not 0 < dose_fraction <= 1:
            raise ValueError(f"dose_fraction must be in (0, 1], got {dose_fraction}")
        if incident_flux <= 0:
            raise ValueError(f"incident_flux must be positive, got {incident_flux}")
        if fbp_window not in FBP_WINDOWS:
            raise ValueError(f"unknown FBP window {fbp_window!r}; use one of {FBP_WINDOWS}")
        self.dose_fraction, self.incident_flux = float(dose_fraction), float(incident_flux)
        self.electronic_noise_std, self.pixel_size_mm = float(electronic_noise_std), float(pixel_size_mm)
        self.n_views, self.fbp_window, self.mu_water = n_views, fbp_window, float(mu_water)
        self._projectors: dict[int, ParallelBeamProjector] = {}

    def projector(self, size: int) -> ParallelBeamProjector:
        if size not in self._projectors:
            self._projectors[size] = ParallelBeamProjector(size, self.n_views, self.pixel_size_mm)
        return self._projectors[size]

    def _check(self, x: torch.Tensor) -> ParallelBeamProjector:
        if x.shape[-1] != x.shape[-2]:
            raise ValueError(f"CT simulation needs square slices, got {tuple(x.shape[-2:])}")
        return self.projector(x.shape[-1])

    def reconstruct_noiseless(self, hq: Image) -> Image:
        """FBP of the noiseless projections: what the geometry alone does to ``hq`` (HU in, HU out)."""
        def run(x: torch.Tensor) -> torch.Tensor:
            projector = self._check(x)
            mu = hu_to_mu(x.to(torch.float32), self.mu_water)
            return mu_to_hu(projector.fbp(projector(mu), self.fbp_window), self.mu_water)

        return apply_batched(hq, run)

    def noisy_line_integrals(self, hq: torch.Tensor, seed: int | None = None) -> torch.Tensor:
        """(B, A, D) line integrals -log(counts / (I0 d)) of (B, H, W) or (H, W) ``hq`` in HU, with
        Poisson counts of mean I0 d exp(-integral of mu) plus Gaussian electronic noise (float64)."""
        x, _ = as_batch(hq)
        projector = self._check(x)
        generator = make_generator(seed, x.device)
        line_integrals = projector(hu_to_mu(x.to(torch.float32), self.mu_water))
        flux = self.incident_flux * self.dose_fraction
        expected = flux * torch.exp(-line_integrals.double())
        counts = torch.poisson(expected, generator=generator)
        if self.electronic_noise_std > 0:
            counts = counts + self.electronic_noise_std * torch.randn(
                counts.shape, generator=generator, device=counts.device, dtype=counts.dtype)
        return -torch.log(counts.clamp_min(0.5) / flux)  # a zero count would give an infinite integral

    def degrade_batch(self, x: torch.Tensor, seed: int | None) -> torch.Tensor:
        """LQ in HU of (B, H, W) ``x`` in HU: FBP of ``noisy_line_integrals``."""
        noisy = self.noisy_line_integrals(x, seed)
        recon = self._check(x).fbp(noisy.to(torch.float32), self.fbp_window)
        return mu_to_hu(recon, self.mu_water)
