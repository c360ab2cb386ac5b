"""CT low-dose simulation by noise insertion in the projection domain.

Physics: a CT number is HU = 1000 (mu - mu_water) / mu_water, so the linear attenuation is
mu = mu_water (1 + HU / 1000) (values below air count as air). A detector bin behind the
path L receives on average n0 * exp(-integral of mu along L) photons, n0 the unattenuated
photons per bin and view at dose fraction d (0.25 = quarter dose). Counts are Poisson, plus
optional Gaussian electronic noise; -log(counts / n0) gives noisy line integrals.

Dose: ``incident_flux`` is the number of photons per view that reach 1 mm of detector width
at full dose in a scan of ``REFERENCE_VIEWS`` views over 180 degrees. A bin one pixel
(``pixel_size_mm``) wide in a simulation with A views therefore receives
n0 = incident_flux * d * pixel_size_mm * REFERENCE_VIEWS / A per view: the total fluence,
hence the dose, depends neither on the number of simulated views nor on the pixel grid.
In filtered back-projection the noise variance then goes as 1 / (d * pixel_size_mm^3) for a
given body (the classic law for in-plane pixel size; slice thickness is not modelled).

LQ is HQ plus the filtered back-projection of (noisy - noiseless line integrals): the input
is taken as the noiseless truth, and LQ differs from it only by the dose's noise (the way
the AAPM/Mayo quarter-dose data were made from the full-dose scans). The simulator's own
geometry (discrete projector, FBP blur and streaks) does not enter LQ, so air (-1000 or
-1024 HU), padding (e.g. -2000 or -3024) and every uniform region keep their HU values on
average. ``reconstruct_noiseless`` shows what FBP of this geometry alone would do.
Geometry: parallel beam, ``n_views`` over 180 degrees (fan beam is not simulated).
"""

from __future__ import annotations

import torch

from restore_rwkv.physics._common import Degradation, Image, apply_batched, as_batch, make_generator
from restore_rwkv.physics.projector import FBP_WINDOWS, FootprintProjector

MU_WATER_PER_MM = 0.0192  # linear attenuation of water at about 70 keV effective energy
REFERENCE_VIEWS = 1000  # views over 180 degrees to which ``incident_flux`` refers


def hu_to_mu(hu: torch.Tensor, mu_water: float = MU_WATER_PER_MM) -> torch.Tensor:
    """HU -> linear attenuation per mm (negative values, below air, clipped to 0)."""
    return (mu_water * (1 + hu / 1000.0)).clamp_min(0.0)


def mu_to_hu(mu: torch.Tensor, mu_water: float = MU_WATER_PER_MM) -> torch.Tensor:
    """Linear attenuation per mm -> HU."""
    return 1000.0 * (mu / mu_water - 1.0)


def _work_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


class LowDoseCT(Degradation):
    """HQ (HU) -> LQ (HU) at a reduced dose (a :class:`Degradation`: ``lq = op(hq, seed)``).

    ``lq = hq + FBP(noisy - noiseless line integrals)``; see the module docstring for the dose
    model. ``docs/data.md`` ("CT noise level") gives the noise the defaults produce.

    Args:
        dose_fraction: dose of LQ relative to the full dose (0.25 = quarter dose, the AAPM task).
        incident_flux: photons per view and per mm of detector width at full dose, for a scan of
            ``REFERENCE_VIEWS`` (1000) views over 180 degrees.
        electronic_noise_std: standard deviation of additive Gaussian detector noise (photons per bin).
        pixel_size_mm: pixel spacing of the images (also the detector bin width).
        n_views: projection angles over 180 degrees (default: pi/2 times the image size); the
            dose is spread over them, so this sets the sampling, not the noise level.
        fbp_window: apodisation of the ramp filter (``ramp``, ``shepp-logan``, ``cosine``, ``hann``);
            it shapes the noise texture of LQ.
        mu_water: attenuation of water per mm.
    """

    def __init__(self, dose_fraction: float = 0.25, incident_flux: float = 3e5, electronic_noise_std: float = 0.0,
                 pixel_size_mm: float = 0.7, n_views: int | None = None, fbp_window: str = "hann",
                 mu_water: float = MU_WATER_PER_MM) -> None:
        if not 0 < dose_fraction <= 1:
            raise ValueError(f"dose_fraction must be in (0, 1], got {dose_fraction}")
        if incident_flux <= 0:
            raise ValueError(f"incident_flux must be positive, got {incident_flux}")
        if pixel_size_mm <= 0:
            raise ValueError(f"pixel_size_mm must be positive, got {pixel_size_mm}")
        if fbp_window not in FBP_WINDOWS:
            raise ValueError(f"unknown FBP window {fbp_window!r}; use one of {FBP_WINDOWS}")
        self.dose_fraction, self.incident_flux = float(dose_fraction), float(incident_flux)
        self.electronic_noise_std, self.pixel_size_mm = float(electronic_noise_std), float(pixel_size_mm)
        self.n_views, self.fbp_window, self.mu_water = n_views, fbp_window, float(mu_water)
        self._projectors: dict[int, FootprintProjector] = {}

    def projector(self, size: int) -> FootprintProjector:
        """The (cached) projector for ``size`` x ``size`` slices."""
        if size not in self._projectors:
            self._projectors[size] = FootprintProjector(size, self.n_views, self.pixel_size_mm)
        return self._projectors[size]

    def photons_per_bin(self, size: int) -> float:
        """Mean unattenuated photons per detector bin and view at ``dose_fraction`` (n0 above)."""
        views = len(self.projector(size).angles)
        return self.incident_flux * self.dose_fraction * self.pixel_size_mm * REFERENCE_VIEWS / views

    def _check(self, x: torch.Tensor) -> FootprintProjector:
        if x.shape[-1] != x.shape[-2]:
            raise ValueError(f"CT simulation needs square slices, got {tuple(x.shape[-2:])}")
        return self.projector(x.shape[-1])

    def line_integrals(self, hq: torch.Tensor) -> torch.Tensor:
        """(B, A, D) noiseless line integrals of mu (dimensionless) of ``hq`` in HU."""
        x, _ = as_batch(hq)
        return self._check(x)(hu_to_mu(x.to(_work_dtype(x)), self.mu_water))

    def _sample(self, line_integrals: torch.Tensor, size: int, seed: int | None) -> torch.Tensor:
        """Noisy -log(counts / n0) (float64) for noiseless ``line_integrals``."""
        generator = make_generator(seed, line_integrals.device)
        flux = self.photons_per_bin(size)
        counts = torch.poisson(flux * torch.exp(-line_integrals.double()), generator=generator)
        if self.electronic_noise_std > 0:
            counts = counts + self.electronic_noise_std * torch.randn(
                counts.shape, generator=generator, device=counts.device, dtype=counts.dtype)
        return -torch.log(counts.clamp_min(0.5) / flux)  # a zero count would give an infinite integral

    def noisy_line_integrals(self, hq: torch.Tensor, seed: int | None = None) -> torch.Tensor:
        """(B, A, D) line integrals -log(counts / n0) of (B, H, W) or (H, W) ``hq`` in HU, with
        Poisson counts of mean n0 exp(-integral of mu) plus Gaussian electronic noise (float64)."""
        x, _ = as_batch(hq)
        return self._sample(self.line_integrals(x), x.shape[-1], seed)

    def reconstruct_noiseless(self, hq: Image) -> Image:
        """FBP of the noiseless projections: what the geometry alone would do to ``hq`` (HU in, HU out).
        Not part of LQ, which keeps ``hq`` and adds only noise."""
        def run(x: torch.Tensor) -> torch.Tensor:
            projector = self._check(x)
            return mu_to_hu(projector.fbp(self.line_integrals(x), self.fbp_window), self.mu_water)

        return apply_batched(hq, run)

    def degrade_batch(self, x: torch.Tensor, seed: int | None) -> torch.Tensor:
        """LQ in HU of (B, H, W) ``x`` in HU: ``x`` + FBP(noisy - noiseless line integrals) in HU."""
        work = _work_dtype(x)
        clean = self.line_integrals(x)
        noise = self._sample(clean, x.shape[-1], seed) - clean.double()
        noise_mu = self._check(x).fbp(noise.to(work), self.fbp_window)
        return x.to(work) + noise_mu * (1000.0 / self.mu_water)
