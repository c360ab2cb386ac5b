"""Parallel-beam projector for 2-D slices in PyTorch: projection, its exact adjoint, and FBP.

Projection rotates the image to each view angle with bilinear interpolation and sums along
the rays (one sample per pixel along a ray, detector bins one pixel apart), so it runs on
batches and on any device. The adjoint is the exact transpose of that linear map (taken
through autograd), which is what iterative reconstruction (MLEM/OSEM) needs; filtered
back-projection uses the ramp filter of Kak & Slaney (band-limited, correct DC term), with
an optional apodising window, and pixel-driven back-projection with linear interpolation.

The image is zero-padded to a square of side ``ceil(sqrt(2) * N)`` so that every view sees
the whole image (no circle assumption); the detector has that many bins.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from restore_rwkv.physics._common import as_batch

_CHUNK_ELEMENTS = 1 << 24  # grid samples per interpolation call: bounds the projector's temporaries
FBP_WINDOWS = ("ramp", "shepp-logan", "cosine", "hann")


class ParallelBeamProjector:
    """Radon transform of (B, N, N) images over ``angles`` (radians), line integrals in pixel units
    times ``pixel_size`` (e.g. mm, so that attenuation per mm gives dimensionless integrals)."""

    def __init__(self, size: int, angles: torch.Tensor | int | None = None, pixel_size: float = 1.0) -> None:
        if angles is None:
            angles = int(math.ceil(math.pi / 2 * size))
        if isinstance(angles, int):
            angles = torch.arange(angles, dtype=torch.float64) * (math.pi / angles)
        self.size = int(size)
        self.angles = torch.as_tensor(angles, dtype=torch.float64)
        self.pixel_size = float(pixel_size)
        self.pad = int(math.ceil((math.sqrt(2) - 1) * size / 2)) + 1
        self.detectors = self.size + 2 * self.pad

    @property
    def sinogram_shape(self) -> tuple[int, int]:
        return (len(self.angles), self.detectors)

    def _centres(self, device, dtype) -> torch.Tensor:
        """Pixel-centre coordinates of the padded square in grid_sample's normalised units."""
        d = self.detectors
        return ((torch.arange(d, device=device, dtype=torch.float64) + 0.5) / d * 2 - 1).to(dtype)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, N, N) or (N, N) or (B, 1, N, N) -> (B, A, D) line integrals."""
        x, _ = as_batch(images)
        if x.shape[-2:] != (self.size, self.size):
            raise ValueError(f"projector built for {self.size}x{self.size} images, got {tuple(x.shape[-2:])}")
        batch, d = x.shape[0], self.detectors
        padded = F.pad(x, (self.pad,) * 4)[None]  # (1, B, D, D): the batch rides in the channel axis
        c = self._centres(x.device, x.dtype)
        v, u = torch.meshgrid(c, c, indexing="ij")  # v along the ray (rows), u along the detector
        angles = self.angles.to(device=x.device, dtype=x.dtype)
        per_chunk = max(1, _CHUNK_ELEMENTS // (d * d * max(batch, 1)))
        views = []
        for start in range(0, len(angles), per_chunk):
            theta = angles[start : start + per_chunk]
            cos, sin = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
            grid = torch.stack((u * cos - v * sin, u * sin + v * cos), dim=-1)  # (a, D, D, 2): (x, y)
            sampled = F.grid_sample(padded.expand(len(theta), -1, -1, -1), grid, mode="bilinear",
                                    padding_mode="zeros", align_corners=False)
            views.append(sampled.sum(dim=2))  # (a, B, D)
        return torch.cat(views).permute(1, 0, 2) * self.pixel_size

    __call__ = forward

    def adjoint(self, sinograms: torch.Tensor) -> torch.Tensor:
        """Exact transpose of ``forward``: (B, A, D) -> (B, N, N)."""
        s = sinograms if sinograms.dim() == 3 else sinograms[None]
        with torch.enable_grad():
            x = torch.zeros(s.shape[0], self.size, self.size, device=s.device, dtype=s.dtype, requires_grad=True)
            (grad,) = torch.autograd.grad(self.forward(x), x, grad_outputs=s)
        return grad

    def ramp_filter(self, sinograms: torch.Tensor, window: str = "ramp") -> torch.Tensor:
        """Filter each view with the band-limited ramp (times ``window``: ramp, shepp-logan, cosine, hann)."""
        d = sinograms.shape[-1]
        n = 1 << int(math.ceil(math.log2(2 * d)))
        k = torch.arange(n, device=sinograms.device, dtype=torch.float64)
        k = torch.minimum(k, n - k)
        h = torch.zeros(n, device=sinograms.device, dtype=torch.float64)
        h[0] = 0.25
        odd = k % 2 == 1
        h[odd] = -1.0 / (math.pi * k[odd]) ** 2
        response = torch.fft.rfft(h).real  # approximately |f|, f in cycles per bin
        f = torch.fft.rfftfreq(n, device=sinograms.device, dtype=torch.float64)
        if window == "shepp-logan":
            response = response * torch.sinc(f)
        elif window == "cosine":
            response = response * torch.cos(math.pi * f)
        elif window == "hann":
            response = response * 0.5 * (1 + torch.cos(2 * math.pi * f))
        elif window != "ramp":
            raise ValueError(f"unknown FBP window {window!r}")
        spectrum = torch.fft.rfft(sinograms.to(torch.float64), n=n, dim=-1) * response
        return torch.fft.irfft(spectrum, n=n, dim=-1)[..., :d].to(sinograms.dtype)

    def backproject(self, sinograms: torch.Tensor) -> torch.Tensor:
        """Pixel-driven back-projection with linear interpolation: sum over views of p(x cos t + y sin t)."""
        s = sinograms if sinograms.dim() == 3 else sinograms[None]
        batch, views, d = s.shape
        c = self._centres(s.device, s.dtype)[self.pad : self.pad + self.size]
        y, x = torch.meshgrid(c, c, indexing="ij")
        angles = self.angles.to(device=s.device, dtype=s.dtype)
        rows = ((torch.arange(views, device=s.device, dtype=s.dtype) + 0.5) / views * 2 - 1)
        out = torch.zeros(batch, self.size * self.size, device=s.device, dtype=s.dtype)
        per_chunk = max(1, _CHUNK_ELEMENTS // (self.size * self.size * max(batch, 1)))
        for start in range(0, views, per_chunk):
            theta = angles[start : start + per_chunk]
            t = x.reshape(1, -1) * torch.cos(theta)[:, None] + y.reshape(1, -1) * torch.sin(theta)[:, None]
            grid = torch.stack((t, rows[start : start + per_chunk, None].expand_as(t)), dim=-1)[None]
            sampled = F.grid_sample(s[:, None], grid.expand(batch, -1, -1, -1), mode="bilinear",
                                    padding_mode="zeros", align_corners=False)  # (B, 1, a, N*N)
            out += sampled[:, 0].sum(dim=1)
        return out.view(batch, self.size, self.size)

    def fbp(self, sinograms: torch.Tensor, window: str = "ramp") -> torch.Tensor:
        """Filtered back-projection of line integrals: (B, A, D) -> (B, N, N) in 1/``pixel_size`` units."""
        filtered = self.ramp_filter(sinograms, window)
        return self.backproject(filtered) * (math.pi / len(self.angles) / self.pixel_size)
