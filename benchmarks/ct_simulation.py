"""Time and noise level of the CT low-dose simulation (``LowDoseCT``).

    python benchmarks/ct_simulation.py [--sizes 256 512 768] [--threads 2] [--repeats 5]
    python benchmarks/ct_simulation.py --noise [--pixels 1.0 0.7] [--realisations 4]
    python benchmarks/ct_simulation.py --compare-src /path/to/other/checkout/src   # time another version

Timing: ``LowDoseCT()(hq, seed=0)`` (the defaults) on a float32 numpy slice and on the same
slice as a torch CPU tensor: median, min and max of ``--repeats`` calls after one warm-up call
(the warm-up also loads or compiles the numba kernels). The slice is the noise phantom below
at 0.7 mm.

Noise: a water ellipse of 350 mm (left-right) x 250 mm (front-back) at 0 HU in air (-1000 HU),
holding a 40 HU disk of 100 mm diameter at its centre, sampled on a 512 x 512 grid at each
``--pixels`` spacing. For each dose fraction, the standard deviation of LQ - HQ within 40 mm
of the centre (inside the 40 HU disk), pooled over ``--realisations`` noise draws, with the
defaults of ``default_degradation("ct_denoise", pixel_size_mm=...)`` otherwise.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

from _common import machine_summary

DOSES = (1.0, 0.5, 0.25, 0.1)


def ellipse_phantom(size: int, pixel_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """(HU slice float32, region mask): the noise phantom on a size x size grid of ``pixel_mm`` pixels."""
    c = (np.arange(size) - (size - 1) / 2) * pixel_mm
    y, x = c[:, None], c[None, :]
    hq = np.where((x / 175.0) ** 2 + (y / 125.0) ** 2 <= 1.0, 0.0, -1000.0)
    r = np.hypot(x, y)
    hq[r <= 50.0] = 40.0
    return hq.astype(np.float32), r <= 40.0


def noise_std(pixel_mm: float, dose: float, realisations: int, size: int = 512, **options: float) -> tuple[float, float]:
    """(std, mean) of LQ - HQ in HU in the phantom's central region, over ``realisations`` draws."""
    from restore_rwkv.physics import default_degradation

    hq, region = ellipse_phantom(size, pixel_mm)
    op = default_degradation("ct_denoise", dose_fraction=dose, pixel_size_mm=pixel_mm, **options)
    diffs = np.concatenate([(op(hq, seed=seed) - hq)[region] for seed in range(realisations)])
    return float(diffs.std()), float(diffs.mean())


def _times(fn, repeats: int) -> list[float]:
    fn()  # warm-up: loads (or compiles) the kernels, builds the projector
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def time_slices(sizes: list[int], repeats: int) -> list[dict]:
    """Per size: the wall times of ``repeats`` calls on numpy and on torch CPU float32 slices."""
    import torch

    from restore_rwkv.physics import LowDoseCT

    rows = []
    for size in sizes:
        hq, _ = ellipse_phantom(size, 0.7)
        op = LowDoseCT()
        tensor = torch.from_numpy(hq)
        projector = op.projector(size)
        rows.append({"size": size, "numpy": _times(lambda: op(hq, seed=0), repeats),
                     "torch": _times(lambda: op(tensor, seed=0), repeats), "views": len(projector.angles),
                     "detectors": projector.detectors})
    return rows


def time_other_source(src: str, size: int, repeats: int, threads: int) -> float:
    """Median seconds of ``LowDoseCT()(hq, seed=0)`` with the package imported from ``src`` (fresh process)."""
    code = (
        "import sys, json, statistics, time, numpy as np, torch\n"
        f"sys.path.insert(0, {src!r}); sys.path.insert(1, {os.path.dirname(os.path.abspath(__file__))!r})\n"
        f"torch.set_num_threads({threads})\n"
        "from ct_simulation import ellipse_phantom\n"
        "from restore_rwkv.physics import LowDoseCT\n"
        f"hq, _ = ellipse_phantom({size}, 0.7); op = LowDoseCT(); op(hq, seed=0)\n"
        "times = []\n"
        f"for _ in range({repeats}):\n"
        "    t = time.perf_counter(); op(hq, seed=0); times.append(time.perf_counter() - t)\n"
        "print(json.dumps(statistics.median(times)))\n"
    )
    env = {**os.environ, "NUMBA_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 768])
    parser.add_argument("--threads", type=int, default=2, help="torch and numba threads (default 2)")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--noise", action="store_true", help="print the noise table instead of timing")
    parser.add_argument("--pixels", type=float, nargs="+", default=[1.0, 0.7], help="pixel spacings (mm) for --noise")
    parser.add_argument("--realisations", type=int, default=4, help="noise draws per cell for --noise")
    parser.add_argument("--compare-src", help="also time LowDoseCT from this source folder at 512x512")
    args = parser.parse_args()

    import numba
    import torch

    torch.set_num_threads(args.threads)
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    print(f"{datetime.date.today().isoformat()}; {machine_summary()}; numba {numba.__version__} "
          f"({numba.get_num_threads()} threads)\n")
    if args.noise:
        from restore_rwkv.physics import DEGRADATION_OPTIONS

        defaults = DEGRADATION_OPTIONS["ct_denoise"]
        print(f"std of LQ - HQ (HU) in the 40 HU disk, 512 x 512, defaults {defaults}, "
              f"{args.realisations} draws per cell\n")
        print("| dose fraction | " + " | ".join(f"{p:g} mm pixels" for p in args.pixels) + " |")
        print("|---|" + "---|" * len(args.pixels))
        for dose in DOSES:
            cells = []
            for pixel in args.pixels:
                std, mean = noise_std(pixel, dose, args.realisations)
                cells.append(f"{std:.1f} (mean {mean:+.2f})")
            print(f"| {dose:g} | " + " | ".join(cells) + " |")
        return
    rows = time_slices(args.sizes, args.repeats)
    def cell(times: list[float]) -> str:
        return f"{statistics.median(times):.2f} ({min(times):.2f}-{max(times):.2f})"

    print(f"median (min-max) of {args.repeats} calls, seconds\n")
    print("| slice | numpy float32 | torch CPU float32 | views | detector bins |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['size']}² | {cell(row['numpy'])} | {cell(row['torch'])} | {row['views']} | {row['detectors']} |")
    if args.compare_src:
        other = time_other_source(args.compare_src, 512, max(1, min(args.repeats, 3)), args.threads)
        print(f"\n512² with the package from {args.compare_src}: {other:.2f} s (median)")


if __name__ == "__main__":
    main()
