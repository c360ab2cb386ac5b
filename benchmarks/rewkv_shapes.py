"""Re-WKV inference at every shape a model calls it with, weighted by the number of calls.

    python benchmarks/rewkv_shapes.py [--model restore_rwkv] [--size 256] [--repeats 15]

Runs the model once on a ``size``² image to record the (B, H, W, C) shapes of its Re-WKV calls,
then times ``re_wkv`` without autograd on random tokens of each shape (median of ``repeats``
after two warm-up calls, in this process, tuned allocator) and prints, per shape, the time per
call, the time per element and the total over one model pass; the last line is the operator's
time per model pass. Compare two versions of the package by running this with each on the
``PYTHONPATH``, alternately (the machine's speed drifts by ±10-20 % over minutes).
"""

from __future__ import annotations

import argparse
import collections

import torch

import restore_rwkv
from restore_rwkv.layers import mixing
from restore_rwkv.ops import dispatch
from _common import machine_summary, median_time


def call_shapes(model_name: str, size: int) -> collections.Counter:
    """(B, H, W, C) shapes and steps of the Re-WKV calls in one inference pass, with their counts."""
    torch.manual_seed(0)
    model = restore_rwkv.reparameterize_model(restore_rwkv.create_model(model_name)).eval()
    shapes: collections.Counter = collections.Counter()
    original = mixing.re_wkv

    def recording(k, v, decay, first, *args, **kwargs):
        shapes[(tuple(k.shape), decay.shape[0])] += 1
        return original(k, v, decay, first, *args, **kwargs)

    mixing.re_wkv = recording  # the name the spatial mix calls
    try:
        with torch.no_grad():
            model(torch.rand(1, 1, size, size))
    finally:
        mixing.re_wkv = original
    return shapes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="restore_rwkv")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    restore_rwkv.tune_cpu_allocator()
    print(machine_summary())
    print(f"package: {restore_rwkv.__file__}")
    print("| (B, H, W, C), steps | calls per pass | ms per call | ns per element | ms per pass |")
    print("|---|---|---|---|---|")
    total = 0.0
    for (shape, steps), calls in sorted(call_shapes(args.model, args.size).items(), key=lambda i: -i[0][0][1]):
        gen = torch.Generator().manual_seed(0)
        k, v = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
        decay, first = torch.rand(steps, shape[-1], generator=gen) * 3, torch.randn(steps, shape[-1], generator=gen)

        def call():
            with torch.no_grad():
                dispatch.re_wkv(k, v, decay, first)

        seconds = median_time(call, repeats=args.repeats, warmup=2, budget_s=60)
        total += seconds * calls
        print(f"| {shape}, {steps} | {calls} | {1e3 * seconds:.2f} | {1e9 * seconds / k.numel():.2f} | "
              f"{1e3 * seconds * calls:.0f} |", flush=True)
    print(f"Re-WKV per {args.model} pass at {args.size}²: {1e3 * total:.0f} ms")


if __name__ == "__main__":
    main()
