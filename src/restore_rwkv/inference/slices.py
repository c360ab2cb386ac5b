"""Restoring stacks of 2-D slices with a model: batching, precision, the memory estimate and tiling.

A model trained on patches restores in overlapping square tiles (``inference_tile``: the card's
``tile``, chosen on validation data, else its training ``patch_size``, unless the caller gives
another side or 0 for whole slices). Re-WKV divides its decay by the token count and scans rows
end to end, so a whole 512 x 512 slice shows a model trained on 64 x 64 patches a decay 64 times
weaker and vertical neighbours 512 tokens apart instead of 64; which side restores best is
measured on validation data (docs/inference.md, "Tiles"). Whole slices are also cut into tiles
when the estimated memory of one exceeds ``max_memory``. Tile outputs are blended with
raised-cosine weights, so no seam appears.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import torch
from torch import nn

from restore_rwkv.inference.ensemble import inner_model
from restore_rwkv.modality import ModalityConvention
from restore_rwkv.models.card import MIN_TILE
from restore_rwkv.physics.mri import zero_fill
from restore_rwkv.utils.devices import resolve_device
from restore_rwkv.utils.devices import autocast as _autocast
from restore_rwkv.utils.errors import InputError
from restore_rwkv.utils.progress import progress_bar

# Bytes per padded pixel and per channel of the model's first level that one whole-slice forward
# pass (inference mode) needs at its peak: calibrated on the paper model (C = 48) on CPU, whose
# peak rise was 2.66-3.05 GiB at 1024^2 (2.6-3.0 kB per pixel, i.e. 54-63 bytes x C) and
# 10.1-10.6 GiB at 2048^2 (docs/performance.md); 64 keeps the estimate on the safe side.
BYTES_PER_PIXEL_CHANNEL = 64
MEMORY_SHARE = {"cpu": 0.5, "cuda": 0.8, "mps": 0.5}  # of the free memory, the default --max-memory
_MULTIPLE = 8  # RestoreRWKV pads to a multiple of 8
# Tiles run this many to a forward pass (fewer when memory says so): one 64² tile per pass leaves a
# 2-core CPU idle between small operations; 16 at a time restored a 512² CT slice about 1.4x faster.
TILES_PER_PASS = 16


def free_memory(device: torch.device) -> int:
    """Bytes free for new tensors on ``device`` now (CPU: the kernel's MemAvailable)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type == "mps":
        return int(torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory())
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def default_max_memory(device: torch.device) -> int:
    """The default memory budget of one forward pass: a safe share of the free memory (``MEMORY_SHARE``)."""
    return int(free_memory(device) * MEMORY_SHARE.get(device.type, 0.5))


def model_width(model: nn.Module) -> int:
    """Channels of the model's first level (``patch_embed``; inside a self-ensemble), 48 when it has none."""
    embed = getattr(inner_model(model), "patch_embed", None)
    return int(getattr(embed, "out_channels", 48))


def estimate_memory(model: nn.Module, height: int, width: int, batch: int = 1) -> int:
    """Estimated peak bytes of one inference pass of ``batch`` images of ``height`` x ``width``.

    ``batch x padded pixels x C x BYTES_PER_PIXEL_CHANNEL`` (C: the first level's width), a
    CPU measurement of float32 passes; autocast passes are estimated the same (conservative).
    """
    padded = math.ceil(height / _MULTIPLE) * _MULTIPLE * math.ceil(width / _MULTIPLE) * _MULTIPLE
    return int(batch) * padded * model_width(model) * BYTES_PER_PIXEL_CHANNEL


@dataclass(frozen=True)
class SlicePlan:
    """How slices are run: ``batch`` images (or tiles) per pass; ``tile`` side (None: whole slices) and ``overlap``."""

    batch: int
    tile: int | None = None
    overlap: int = 0


def inference_tile(patch_size: int | None, tile: int | None = None) -> int | None:
    """The tile side to restore with: ``tile`` when given (0: whole slices, tiled only to fit memory),
    else ``patch_size`` (the card's ``default_tile``: its chosen tile or training patch size), at least
    ``MIN_TILE`` (0 or None: whole slices). A ``tile`` under ``MIN_TILE`` (other than 0) is an InputError. See the module doc."""
    if tile is not None:
        if isinstance(tile, bool) or int(tile) != tile or tile < 0 or 0 < tile < MIN_TILE:
            raise InputError(None, f"--tile must be 0 (whole slices) or at least {MIN_TILE} pixels; got {tile!r}")
        return int(tile) or None
    return max(int(patch_size), MIN_TILE) if patch_size else None


def plan_slices(model: nn.Module, height: int, width: int, batch_size: int = 1, max_memory: int | None = None,
                tile: int | None = None, overlap: int | None = None) -> SlicePlan:
    """Whole slices when one fits ``max_memory`` (batch cut to what fits), else the largest square
    tile (multiple of 8) that fits; ``tile`` asks for tiles of that side (``overlap`` default:
    tile / 4 rounded down to a multiple of 8, at least 8), and a slice no larger than the tile runs whole."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1; got {batch_size}")
    budget = float("inf") if max_memory is None else float(max_memory)
    if tile is not None and tile >= max(height, width):
        tile = None  # one tile would be the whole slice
    if tile is None:
        one = estimate_memory(model, height, width)
        if one <= budget:
            return SlicePlan(batch=_fitting(batch_size, budget, one))
        per_pixel = estimate_memory(model, _MULTIPLE, _MULTIPLE) / _MULTIPLE ** 2
        tile = int(math.sqrt(budget / per_pixel)) // _MULTIPLE * _MULTIPLE
        if tile < 64:
            raise InputError(None, f"--max-memory {budget / 2**20:.0f} MiB is too small even for 64x64 tiles "
                                   f"(needs about {estimate_memory(model, 64, 64) / 2**20:.0f} MiB)")
    if tile < MIN_TILE:
        raise ValueError(f"tile must be at least {MIN_TILE} pixels; got {tile}")
    overlap = max(_MULTIPLE, tile // 4 // _MULTIPLE * _MULTIPLE) if overlap is None else int(overlap)
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile); got {overlap} for tile {tile}")
    one_tile = estimate_memory(model, min(tile, height), min(tile, width))
    return SlicePlan(batch=_fitting(max(batch_size, TILES_PER_PASS), budget, one_tile), tile=int(tile), overlap=overlap)


def _fitting(batch_size: int, budget: float, one: int) -> int:
    """Images per pass: ``batch_size``, cut to what ``budget`` holds (at least 1)."""
    return batch_size if budget == float("inf") else max(1, min(batch_size, int(budget // max(one, 1))))


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start indices of tiles of ``tile`` pixels stepping by ``tile - overlap``; the last ends at ``size``."""
    if size <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, size - tile, step))
    return starts + [size - tile]


def blend_ramp(length: int, overlap: int, left: bool, right: bool) -> np.ndarray:
    """Weights of one tile along one axis: a raised-cosine ramp over ``overlap`` pixels on each side
    that has a neighbour (``left``/``right``), 1 elsewhere; never 0, so every pixel has weight."""
    weights = np.ones(length, dtype=np.float64)
    ramp_length = min(overlap, length // 2)
    if ramp_length > 0:
        ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(ramp_length) + 0.5) / ramp_length)
        if left:
            weights[:ramp_length] = np.minimum(weights[:ramp_length], ramp)
        if right:
            weights[length - ramp_length:] = np.minimum(weights[length - ramp_length:], ramp[::-1])
    return weights


def forward_slices(model: nn.Module, images: torch.Tensor, plan: SlicePlan, device: str | torch.device,
                   precision: str = "fp32") -> torch.Tensor:
    """The model over normalised (N, H, W) ``images`` as ``plan`` says (whole or tiled), float32 on the CPU."""
    device = torch.device(device)
    if plan.tile is None:
        return _forward(model, images, plan.batch, device, precision)
    return _forward_tiled(model, images, plan, device, precision)


def _forward(model: nn.Module, images: torch.Tensor, batch: int, device: torch.device, precision: str) -> torch.Tensor:
    """The model over (N, H, W) images in chunks of ``batch``, as float32 on the CPU."""
    outputs = []
    for start in range(0, images.shape[0], batch):
        chunk = images[start:start + batch, None].to(device)
        with torch.inference_mode(), _autocast(device, precision):
            out = model(chunk)
        outputs.append(out[:, 0].float().cpu())
    return torch.cat(outputs)


def _forward_tiled(model: nn.Module, images: torch.Tensor, plan: SlicePlan, device: torch.device,
                   precision: str) -> torch.Tensor:
    """Overlapping tiles of (N, H, W) ``images``, each output weighted by its raised-cosine window, then normalised."""
    n, height, width = images.shape
    th, tw = min(plan.tile, height), min(plan.tile, width)
    positions = [(y, x) for y in tile_starts(height, th, plan.overlap) for x in tile_starts(width, tw, plan.overlap)]
    total = torch.zeros((n, height, width), dtype=torch.float64)
    weight = torch.zeros((height, width), dtype=torch.float64)
    # every tile of every image, ``plan.batch`` to a forward pass: (N * P, th, tw) in position-major order
    tiles = torch.stack([images[:, y:y + th, x:x + tw] for y, x in positions]).reshape(-1, th, tw)
    outputs = _forward(model, tiles, plan.batch, device, precision).reshape(len(positions), n, th, tw)
    for (y, x), out in zip(positions, outputs):
        wy = blend_ramp(th, plan.overlap, y > 0, y + th < height)
        wx = blend_ramp(tw, plan.overlap, x > 0, x + tw < width)
        w = torch.from_numpy(np.outer(wy, wx))
        total[:, y:y + th, x:x + tw] += out.double() * w
        weight[y:y + th, x:x + tw] += w
    return (total / weight).float()


@dataclass
class SliceStats:
    """What :func:`restore_slices` met: the voxels outside the policy's kept range, whose input values
    the output keeps (``ModalityConvention.keep_outside``)."""

    outside: int = 0


def model_input(image: np.ndarray, upsample: int = 1) -> np.ndarray:
    """A slice as the model takes it: itself, or zero-filled in k-space to ``upsample`` times its matrix."""
    return image if upsample == 1 else zero_fill(np.asarray(image, dtype=np.float32), upsample)


def restore_slices(model: nn.Module, slices: Iterable[np.ndarray], convention: ModalityConvention,
                   batch_size: int = 4, device: str | torch.device = "cpu", precision: str = "fp32",
                   max_memory: int | None = None, tile: int | None = None, total: int | None = None,
                   quiet: bool = True, scale: float = 1.0, upsample: int = 1,
                   stats: SliceStats | None = None) -> Iterator[np.ndarray]:
    """Yield each 2-D slice of ``slices`` (stored units) restored, float32 in the same units.

    Each slice is zero-filled to ``upsample`` times its matrix when asked (:func:`model_input`),
    normalised with ``convention`` and ``scale`` (stored units per unit of the convention; values
    clipped to its ``norm_range``), run ``batch_size`` at a time (whole, or tiled when
    ``plan_slices`` says so), mapped back and multiplied by ``scale``; where the input lies
    outside the range the output keeps the input's value (``convention.keep_outside``, counted in
    ``stats``). The iterable is consumed lazily, one batch ahead, so a reader and writer around it
    stream. ``total`` sizes the progress bar. The model must already be on ``device`` and in eval mode.
    """
    device = resolve_device(device)
    stats = stats if stats is not None else SliceStats()
    with progress_bar(total=total, desc="restore", quiet=quiet) as bar:
        pending: list[np.ndarray] = []

        def flush() -> Iterator[np.ndarray]:
            inputs = np.stack([model_input(np.asarray(s, dtype=np.float32), upsample) for s in pending])
            stacked = torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32))
            plan = plan_slices(model, stacked.shape[1], stacked.shape[2], batch_size, max_memory, tile)
            out = forward_slices(model, convention.normalize(stacked, scale), plan, device, precision)
            restored = convention.denormalize(out.double(), scale).numpy()
            restored, outside = convention.keep_outside(restored, inputs, scale)
            stats.outside += outside
            bar.update(len(pending))
            pending.clear()
            yield from restored.astype(np.float32)

        for image in slices:
            image = np.asarray(image)
            if image.ndim != 2:
                raise ValueError(f"slices must be 2-D; got shape {image.shape}")
            if pending and (len(pending) == batch_size or image.shape != pending[0].shape):
                yield from flush()
            pending.append(image)
        if pending:
            yield from flush()


def slicing_axis(ndim: int, axis: int | None = None, default: int | None = None) -> int | None:
    """The axis a ``ndim``-D array is cut into slices along: ``axis``, else ``default``, else 0; None for 2-D."""
    if ndim == 2:
        return None
    if ndim != 3:
        raise ValueError(f"expected a 2-D image or 3-D volume; got {ndim}-D data")
    axis = (default if default is not None else 0) if axis is None else int(axis)
    if not -3 <= axis < 3:
        raise ValueError(f"axis must be 0, 1 or 2 for a volume; got {axis}")
    return axis % 3


def as_slices(volume: np.ndarray, axis: int | None) -> np.ndarray:
    """A (N, H, W) view of a 2-D image (N = 1) or of a volume cut along ``axis``."""
    return volume[None] if axis is None else np.moveaxis(volume, axis, 0)


def restore_volume(model: nn.Module, volume: np.ndarray, convention: ModalityConvention, axis: int | None = None,
                   batch_size: int = 4, device: str | torch.device = "cpu", precision: str = "fp32",
                   max_memory: int | None = None, tile: int | None = None, quiet: bool = True,
                   scale: float = 1.0, upsample: int = 1, stats: SliceStats | None = None) -> np.ndarray:
    """A 2-D image or 3-D volume (stored units) restored slice by slice along ``axis``; float32.

    ``axis`` defaults to 0 for a volume. The output has the input's shape, its in-plane axes
    ``upsample`` times longer. See :func:`restore_slices` for the other arguments (``scale``: stored
    units per unit of the convention); ``max_memory`` (bytes) defaults to :func:`default_max_memory`.
    """
    volume = np.asarray(volume)
    device = resolve_device(device)
    if max_memory is None:
        max_memory = default_max_memory(device)
    axis = slicing_axis(volume.ndim, axis)
    slices = as_slices(volume, axis)
    count, height, width = slices.shape
    out = np.empty((count, height * upsample, width * upsample), dtype=np.float32)
    for k, restored in enumerate(restore_slices(model, slices, convention, batch_size, device, precision,
                                                max_memory, tile, total=count, quiet=quiet, scale=scale,
                                                upsample=upsample, stats=stats)):
        out[k] = restored
    return out[0] if axis is None else np.moveaxis(out, 0, axis)
