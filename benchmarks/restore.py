"""Restoring a synthetic CT series from disk to disk: wall time, peak memory, and the bare model's time.

Each cell runs in a fresh process (clean peak memory): it writes a synthetic 512x512 CT
series (int16 HU), then times ``restore_file`` (streamed read, restore, derived-series write)
and the bare model over the same slices (normalised tensors already in memory, same batch),
so restore / bare shows what I/O and conversion add.

    python benchmarks/restore.py                       # light model: 64 slices whole and tiled; 64 vs 256 slices
    python benchmarks/restore.py --slices 8 --skip-long  # quicker
    python benchmarks/restore.py --paper-slices 4      # add the paper model on 4 slices (extrapolated to 64)
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import machine_summary, peak_rss_mb, reset_peak_rss, run_isolated  # noqa: E402


def _series(folder: Path, slices: int, size: int) -> None:
    """A synthetic axial CT series: soft tissue disc with noise, air around, int16 HU."""
    from restore_rwkv.data.io import ImageMeta, write_dicom_series

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:size, 0:size]
    body = ((y - size / 2) ** 2 + (x - size / 2) ** 2) < (0.4 * size) ** 2
    volume = np.empty((slices, size, size), np.float32)
    for k in range(slices):
        volume[k] = np.where(body, 40.0, -1000.0) + rng.normal(0, 30, (size, size))
    # (slice, row, column) -> LPS: 1 mm slices along z, 0.7 mm pixels
    affine = np.array([[0, 0, 0.7, -180], [0, 0.7, 0, -180], [1.0, 0, 0, -100], [0, 0, 0, 1]])
    meta = ImageMeta(affine=affine, space="LPS", slice_axis=0, modality="CT")
    write_dicom_series(folder, np.rint(volume), meta, modality="CT")


TINY = {"dim": 8, "num_blocks": [1, 1, 1, 1], "num_refinement_blocks": 1}


def measure(model: str, slices: int, size: int = 512, tile: int | None = None, batch_size: int = 4,
            bare: bool = True, tiny: bool = False, allocator: str = "speed") -> dict:
    """One cell: restore time and peak memory rise, and the bare model's time on the same slices.

    ``tiny``: a width-8 model with one block per level (fast; for the memory-versus-length cells).
    """
    import torch

    from restore_rwkv.data.io import read_image
    from restore_rwkv.data.modality import get_convention
    from restore_rwkv.inference import restore_file
    from restore_rwkv.models.card import ModelCard, save_model_with_card
    from restore_rwkv.models.registry import create_model
    from restore_rwkv.utils.runtime import release_free_memory, tune_cpu_allocator

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _series(tmp / "in", slices, size)
        gc.collect()
        release_free_memory()  # the synthetic volume's pages leave before the measurement starts
        if allocator != "default":
            tune_cpu_allocator(allocator)  # what the restore command sets (speed)
        args = TINY if tiny else {}
        net = create_model(model, **args).eval()
        card = ModelCard(model=model, task="ct_denoise", conventions={"ct": {"unit": "HU"}}, model_args=dict(args))
        weights = save_model_with_card(net, tmp / f"{model}.safetensors", card)
        reset_peak_rss()
        base = peak_rss_mb()
        start = time.perf_counter()
        restore_file(tmp / "in", tmp / "out", weights, device="cpu", batch_size=batch_size, tile=tile)
        seconds = time.perf_counter() - start
        peak = peak_rss_mb() - base
        result = {"model": model + (" (tiny)" if tiny else ""), "slices": slices, "size": size, "tile": tile, "batch": batch_size,
                  "restore_s": seconds, "peak_rise_mb": peak}
        if bare and tile is None:
            volume, _ = read_image(tmp / "in")
            images = get_convention("ct").normalize(torch.from_numpy(volume))[:, None]
            start = time.perf_counter()
            with torch.inference_mode():
                for k in range(0, slices, batch_size):
                    net(images[k:k + batch_size])
            result["bare_s"] = time.perf_counter() - start
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=64)
    parser.add_argument("--long-slices", type=int, default=256, help="the second series length for peak memory")
    parser.add_argument("--tile", type=int, default=256, help="tile side of the tiled cells")
    parser.add_argument("--paper-slices", type=int, default=0, help="paper-model slices (0: skip; time is extrapolated)")
    parser.add_argument("--skip-long", action="store_true")
    args = parser.parse_args()
    print(machine_summary())
    cells = [dict(model="restore_rwkv_light", slices=args.slices),
             dict(model="restore_rwkv_light", slices=args.slices, tile=args.tile)]
    if not args.skip_long:  # peak memory against series length, with a tiny model to keep it short
        cells += [dict(model="restore_rwkv_light", slices=n, bare=False, tiny=True)
                  for n in (args.slices, args.long_slices)]
    if args.paper_slices:
        cells += [dict(model="restore_rwkv", slices=args.paper_slices),
                  dict(model="restore_rwkv", slices=args.paper_slices, tile=args.tile)]
    for cell in cells:
        result = run_isolated("restore", cell)
        if "restore_s" in result:
            result["s_per_slice"] = result["restore_s"] / result["slices"]
            result["extrapolated_64_s"] = result["s_per_slice"] * 64
            if "bare_s" in result:
                result["restore_over_bare"] = result["restore_s"] / result["bare_s"]
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
