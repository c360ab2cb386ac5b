"""Restoring a synthetic CT series from disk to disk: wall time, peak memory, and the bare model's time.

Each cell runs in a fresh process (clean peak memory): it writes a synthetic 512x512 CT
series (int16 HU), then times ``restore_file`` (streamed read, restore, derived-series write)
and the bare model over the same slices (normalised tensors already in memory, same batch),
so restore / bare shows what I/O and conversion add.

    python benchmarks/restore.py                       # light model 64 slices whole/tiled, I/O only; 64 vs 256 slices
    python benchmarks/restore.py --slices 8 --skip-long  # quicker
    python benchmarks/restore.py --paper-slices 8      # add the paper model on 8 slices (extrapolated to 64)
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _common import current_rss_mb, machine_summary, peak_rss_mb, reset_peak_rss, run_isolated  # noqa: E402


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


class _Identity(torch.nn.Module):
    """A model that returns its input: restoring with it costs only reading, conversion and writing."""

    def forward(self, x):
        return x.clone()


class _RssTrace:
    """Resident memory of this process sampled every 20 ms in a thread (MB), with the time of each sample."""

    def __init__(self) -> None:
        import threading

        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        start = time.perf_counter()
        while not self._stop.is_set():
            self.samples.append((time.perf_counter() - start, current_rss_mb()))
            self._stop.wait(0.02)

    def __enter__(self) -> "_RssTrace":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def after(self, fraction: float) -> float:
        """The highest sample from ``fraction`` of the run's duration on."""
        end = self.samples[-1][0]
        return max(rss for t, rss in self.samples if t >= fraction * end)

    def before(self, fraction: float) -> float:
        """The highest sample up to ``fraction`` of the run's duration."""
        end = self.samples[-1][0]
        return max(rss for t, rss in self.samples if t <= fraction * end)


def measure_bare(model: str, slices: int, size: int = 512, batch_size: int = 4, allocator: str = "speed") -> dict:
    """The bare model alone in a fresh process (cold, like a restore): normalised slices in memory, same batches."""
    from restore_rwkv.data.io import read_image
    from restore_rwkv.modality import get_convention
    from restore_rwkv.models.registry import create_model
    from restore_rwkv.utils.runtime import release_free_memory, tune_cpu_allocator

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        _series(Path(tmp) / "in", slices, size)
        volume, _ = read_image(Path(tmp) / "in")
    images = get_convention("ct").normalize(torch.from_numpy(volume))[:, None]
    del volume
    gc.collect()
    release_free_memory()
    if allocator != "default":
        tune_cpu_allocator(allocator)
    net = create_model(model).eval()
    start = time.perf_counter()
    with torch.inference_mode():
        for k in range(0, slices, batch_size):
            net(images[k:k + batch_size])
    return {"model": model, "slices": slices, "size": size, "batch": batch_size, "bare_cold_s": time.perf_counter() - start}


def measure(model: str, slices: int, size: int = 512, tile: int | None = None, batch_size: int = 4,
            bare: bool = True, tiny: bool = False, allocator: str = "speed", cold_bare: bool = False) -> dict:
    """One cell: restore time and peak memory rise, and the bare model's time on the same slices.

    ``cold_bare``: this cell times the bare model alone in its fresh process (:func:`measure_bare`).
    ``model="identity"``: a model that returns its input (what reading, converting and writing
    cost). ``tiny``: a width-8 model with one block per level (fast; for memory against length).
    The restore time is split into loading the weights (``load_s``) and the rest (``run_s``);
    the memory trace gives the peak rise over the first and the last three quarters of the run.
    """
    if cold_bare:
        return measure_bare(model, slices, size, batch_size, allocator)
    from restore_rwkv.data.io import read_image
    from restore_rwkv.modality import get_convention
    from restore_rwkv.inference import restore_file
    from restore_rwkv.models.card import ModelCard, load_model, save_model_with_card
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
        card = ModelCard(model=model, task="ct_denoise", conventions={"ct": {"unit": "HU"}}, model_args=dict(args))
        if model == "identity":
            net, weights = _Identity(), None
        else:
            net = create_model(model, **args).eval()
            weights = save_model_with_card(net, tmp / f"{model}.safetensors", card)
        reset_peak_rss()
        base = current_rss_mb()
        start = time.perf_counter()
        with _RssTrace() as trace:
            if weights is not None:
                net, card = load_model(weights, "cpu")
            loaded = time.perf_counter()
            restore_file(tmp / "in", tmp / "out", model=net, card=card, device="cpu", batch_size=batch_size,
                         tile=tile)
        seconds = time.perf_counter() - start
        peak = peak_rss_mb() - base
        result = {"model": model + (" (tiny)" if tiny else ""), "slices": slices, "size": size, "tile": tile,
                  "batch": batch_size, "restore_s": seconds, "load_s": loaded - start,
                  "run_s": seconds - (loaded - start), "peak_rise_mb": peak,
                  "rise_first_quarter_mb": trace.before(0.25) - base, "rise_last_3_quarters_mb": trace.after(0.25) - base}
        if bare and tile is None and model != "identity":
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
    parser.add_argument("--repeats", type=int, default=2, help="runs of each memory-against-length cell")
    parser.add_argument("--only-speed", action="store_true", help="only the whole-slice restore and cold bare cells")
    args = parser.parse_args()
    print(machine_summary())
    cells = [dict(model="restore_rwkv_light", slices=args.slices),
             dict(model="restore_rwkv_light", slices=args.slices, cold_bare=True),
             dict(model="restore_rwkv_light", slices=args.slices, tile=args.tile),
             dict(model="identity", slices=args.slices)]
    if not args.skip_long:  # peak memory against series length, with a tiny model to keep it short
        cells += [dict(model="restore_rwkv_light", slices=n, bare=False, tiny=True)
                  for _ in range(args.repeats) for n in (args.slices, args.long_slices)]
    if args.paper_slices:
        cells += [dict(model="restore_rwkv", slices=args.paper_slices),
                  dict(model="restore_rwkv", slices=args.paper_slices, cold_bare=True),
                  dict(model="restore_rwkv", slices=args.paper_slices, tile=args.tile)]
    if args.only_speed:
        cells = [c for c in cells if c["model"] != "identity" and not c.get("tiny") and not c.get("tile")]
    for cell in cells:
        result = run_isolated("restore", cell)
        if "restore_s" in result:
            result["s_per_slice"] = result["restore_s"] / result["slices"]
            result["extrapolated_64_s"] = result["s_per_slice"] * 64
            if "bare_s" in result:
                result["restore_over_bare"] = result["restore_s"] / result["bare_s"]
                result["run_over_bare"] = result["run_s"] / result["bare_s"]
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
