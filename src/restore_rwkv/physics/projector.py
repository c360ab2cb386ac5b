"""Parallel-beam projector for 2-D slices in PyTorch: projection, its exact adjoint, and FBP.

Projection rotates the image to each view angle with bilinear interpolation and sums along
the rays (one sample per pixel along a ray, detector bins one pixel apart), so it runs on
batches and on any device. The adjoint is the exact transpose of that linear map (taken
through autograd), which is what iterative reconstruction (MLEM/OSEM) needs; filtered
back-projection uses the ramp filter of Kak & Slaney (band-limited, correct DC term), with
an optional apodising window, and pixel-driven back-projection with linear interpolation.

The image is zero-padded to a square of side ``ceil(sqrt(2) * N)`` so that every view sees
the whole image (no circle assumption); the detector has that many bins.

:class:`FootprintProjector` is the matched pair the CT simulation uses: pixel-driven, each
square pixel spread over the detector bins by its exact footprint (the strip integrals of
the pixelated image), and the back-projection its exact transpose. On CPU both run as numba
kernels (``_projector_cpu``); on other devices in torch.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from restore_rwkv.physics._common import as_batch

try:  # the compiled CPU kernels; without numba the torch implementation serves every device
    from restore_rwkv.physics import _projector_cpu
except Exception:  # ImportError, or a numba/numpy version mismatch
    _projector_cpu = None

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



_MARGIN = 2  # zero bins on each side of the detector in the footprint kernels (as in _projector_cpu)
FOOTPRINT_STEPS = 256  # sub-pixel positions at which the footprint weights are tabulated


def footprint_weights(angles: torch.Tensor, steps: int = FOOTPRINT_STEPS) -> torch.Tensor:
    """(A, steps, 3) float64: the share of a unit square pixel, centred at k + (m - steps/2) / steps
    on the detector, that falls in bins k - 1, k, k + 1 (bins one pixel wide, centred on integers).

    A square pixel seen at angle theta covers a trapezoid on the detector: it is the
    convolution of boxes of widths |cos theta| and |sin theta|, of unit area (the length of
    each ray inside the pixel). Its integral over a bin is that bin's share; the shares sum to 1
    (the trapezoid is at most sqrt(2) wide, so three bins hold it).
    """
    theta = torch.as_tensor(angles, dtype=torch.float64)[:, None, None]
    a, b = torch.cos(theta).abs(), torch.sin(theta).abs()
    hi, lo = torch.maximum(a, b), torch.minimum(a, b)
    outer, inner, height = (hi + lo) / 2, (hi - lo) / 2, 1.0 / hi
    ramp = lo.clamp_min(1e-300)  # the sloped parts vanish at 0 and 90 degrees
    offset = (torch.arange(steps, dtype=torch.float64)[None, :, None] - steps // 2) / steps
    u = torch.arange(4, dtype=torch.float64)[None, None, :] - 1.5 - offset  # bin edges relative to the centre
    rising = height * (u + outer).clamp_min(0) ** 2 / (2 * ramp)
    falling = 1 - height * (outer - u).clamp_min(0) ** 2 / (2 * ramp)
    flat = height * (lo / 2 + u + inner)
    cdf = torch.where(u < -inner, rising, torch.where(u <= inner, flat, falling))
    cdf = torch.where(u <= -outer, 0.0, torch.where(u >= outer, 1.0, cdf))
    return cdf[..., 1:] - cdf[..., :-1]


class FootprintProjector(ParallelBeamProjector):
    """Pixel-driven projector with exact pixel footprints, and its exact transpose.

    ``forward`` spreads each square pixel over the detector bins it shadows, in proportion to
    the area of the pixel inside each bin's strip (footprint tabulated at ``FOOTPRINT_STEPS``
    sub-pixel positions per view), so a view is the strip integral of the pixelated image: a
    uniform region projects to its exact chord length at every angle. ``backproject`` is the
    transpose (each pixel takes the footprint-weighted mean of the bins), ``adjoint`` is
    ``backproject`` times ``pixel_size``, and FBP uses it. At 0 and 90 degrees the weights are
    those of linear interpolation, as in :class:`ParallelBeamProjector`. Geometry, detector and
    ramp filter are those of :class:`ParallelBeamProjector`.

    CPU float tensors run through the numba kernels of ``_projector_cpu`` (sums in float64);
    others, or all when ``use_numba`` is False or numba is missing, through torch.
    """

    def __init__(self, size: int, angles: torch.Tensor | int | None = None, pixel_size: float = 1.0,
                 use_numba: bool = True) -> None:
        super().__init__(size, angles, pixel_size)
        self.use_numba = bool(use_numba) and _projector_cpu is not None
        self.weights = footprint_weights(self.angles)
        self._trig = (torch.cos(self.angles).numpy(), torch.sin(self.angles).numpy())

    def _compiled(self, x: torch.Tensor) -> bool:
        return (self.use_numba and x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)
                and not x.requires_grad)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, N, N) or (N, N) or (B, 1, N, N) -> (B, A, D) line integrals (strip integrals over bins)."""
        x, _ = as_batch(images)
        if x.shape[-2:] != (self.size, self.size):
            raise ValueError(f"projector built for {self.size}x{self.size} images, got {tuple(x.shape[-2:])}")
        if not x.is_floating_point():
            raise TypeError(f"projector needs floating-point images, got {x.dtype}")
        if self._compiled(x):
            src = x.contiguous().numpy()
            out = np.empty((x.shape[0], *self.sinogram_shape), dtype=src.dtype)
            _projector_cpu.project(src, *self._trig, self.detectors, self.weights.numpy(), out)
            return torch.from_numpy(out) * self.pixel_size
        return self._torch_forward(x) * self.pixel_size

    __call__ = forward

    def backproject(self, sinograms: torch.Tensor) -> torch.Tensor:
        """Footprint-weighted back-projection, the transpose of ``forward`` / ``pixel_size``: (B, A, D) -> (B, N, N)."""
        s = sinograms if sinograms.dim() == 3 else sinograms[None]
        if tuple(s.shape[-2:]) != self.sinogram_shape:
            raise ValueError(f"projector expects (B, {len(self.angles)}, {self.detectors}) sinograms, got {tuple(s.shape)}")
        if not s.is_floating_point():
            raise TypeError(f"projector needs floating-point sinograms, got {s.dtype}")
        if self._compiled(s):
            src = s.contiguous().numpy()
            out = np.empty((s.shape[0], self.size, self.size), dtype=src.dtype)
            _projector_cpu.backproject(src, *self._trig, self.size, self.weights.numpy(), out)
            return torch.from_numpy(out)
        return self._torch_backproject(s)

    def adjoint(self, sinograms: torch.Tensor) -> torch.Tensor:
        """Exact transpose of ``forward``: ``backproject`` times ``pixel_size``."""
        return self.backproject(sinograms) * self.pixel_size

    def _chunks(self, batch: int) -> tuple[range, int]:
        per_chunk = max(1, _CHUNK_ELEMENTS // (3 * self.size * self.size * max(batch, 1)))
        return range(0, len(self.angles), per_chunk), per_chunk

    def _taps(self, start: int, stop: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded-detector bin indices (a, N*N*3) and weights (a, N*N, 3) of views start..stop,
        computed as the numba kernels do (float64 positions, same operations in the same order)."""
        half, centre, steps = (self.size - 1) * 0.5, (self.detectors - 1) * 0.5, self.weights.shape[1]
        cos = torch.from_numpy(self._trig[0][start:stop]).to(device)[:, None, None]
        sin = torch.from_numpy(self._trig[1][start:stop]).to(device)[:, None, None]
        index = torch.arange(self.size, device=device, dtype=torch.float64)
        base = ((index[None, :, None] - half) * sin + centre - half * cos + _MARGIN) * steps + (steps // 2 + 0.5)
        u = (base + index[None, None, :] * (cos * steps)).floor().long().flatten(1)  # (a, N*N), nearest 1/steps
        k, m = u // steps, u % steps
        table = self.weights[start:stop].to(device=device, dtype=dtype)
        taps = table.gather(1, m[..., None].expand(-1, -1, 3))  # (a, N*N, 3)
        bins = (k[..., None] + torch.arange(-1, 2, device=device)).flatten(1)
        return bins, taps

    def _torch_forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, d = x.shape[0], self.detectors
        chunks, per_chunk = self._chunks(batch)
        out = torch.zeros(batch, len(self.angles), d + 2 * _MARGIN, device=x.device, dtype=x.dtype)
        flat = x.reshape(batch, 1, -1, 1)
        for start in chunks:
            stop = min(start + per_chunk, len(self.angles))
            bins, taps = self._taps(start, stop, x.device, x.dtype)
            values = (flat * taps[None]).flatten(2)  # (B, a, N*N*3)
            out[:, start:stop].scatter_add_(2, bins[None].expand(batch, -1, -1), values)
        return out[..., _MARGIN : _MARGIN + d]

    def _torch_backproject(self, s: torch.Tensor) -> torch.Tensor:
        batch = s.shape[0]
        chunks, per_chunk = self._chunks(batch)
        padded = F.pad(s, (_MARGIN, _MARGIN))
        out = torch.zeros(batch, self.size * self.size, device=s.device, dtype=s.dtype)
        for start in chunks:
            stop = min(start + per_chunk, len(self.angles))
            bins, taps = self._taps(start, stop, s.device, s.dtype)
            values = padded[:, start:stop].gather(2, bins[None].expand(batch, -1, -1))
            out += (values.view(batch, stop - start, -1, 3) * taps[None]).sum(dim=(1, 3))
        return out.view(batch, self.size, self.size)
