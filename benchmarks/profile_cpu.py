"""Where a model's CPU inference time goes, per kind of operation, at each image size.

    python benchmarks/profile_cpu.py [--models restore_rwkv restore_rwkv_light] [--sizes 256 512] [--passes 3]

For each model and size: one plain and one profiled untimed pass, one plain timed pass, then
``passes`` passes under ``torch.profiler`` (tuned allocator, ``no_grad``, fused Omni-Shift, batch 1,
one channel). Each operation's self time is put in one group (matrix products split by the
width of their inner dimension, Re-WKV, depth-wise and dense convolutions, layer norm,
element-wise, copies, the rest); the table gives each group's share of the profiled time (median
over the passes) and, for the products, the rate they ran at, against the ``torch.mm`` 2048² rate
measured in the same process. The profiler (recording shapes) costs up to about a quarter of a
pass, so the line above each table also gives one plain pass; compare shares, not profiled seconds.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

import restore_rwkv
from restore_rwkv.ops.dispatch import PROFILER_LABEL
from _common import machine_summary
from targets import inference_model, mm_rate

ELEMENTWISE = {"aten::sigmoid_", "aten::mul_", "aten::addcmul_", "aten::clamp_min_", "aten::pow_", "aten::relu_",
               "aten::square_", "aten::add_", "aten::mul", "aten::add", "aten::sigmoid", "aten::fill_", "aten::zero_"}
COPIES = {"aten::copy_", "aten::clone", "aten::cat", "aten::pixel_shuffle", "aten::pixel_unshuffle",
          "aten::contiguous", "aten::constant_pad_nd"}


def group_of(event) -> str:
    """The group of one profiler event (``record_shapes`` must be on)."""
    key, shapes = event.key, event.input_shapes
    if key == PROFILER_LABEL:
        return "Re-WKV operator"
    if key in ("aten::mm", "aten::addmm", "aten::bmm"):
        first = _product_operands(event)[0]
        inner = first[-1] if first else 0
        return f"matrix products, inner width {'≤ 32' if inner <= 32 else '> 32'}"
    if key == "aten::mkldnn_convolution" or key == "aten::_convolution" or key == "aten::thnn_conv2d":
        image, weight = (shapes[0], shapes[1]) if len(shapes) > 1 else ([], [])
        # (C, 1, 5, 5) on C channels: the Omni-Shift (the one-channel embedding's (C, 1, 3, 3) is not)
        depthwise = len(weight) == 4 and weight[1:] == [1, 5, 5] and len(image) == 4 and image[1] == weight[0]
        return "depth-wise 5×5 convolutions (Omni-Shift)" if depthwise else "other convolutions"
    if key == "aten::native_layer_norm":
        return "layer norm"
    if key in ELEMENTWISE:
        return "element-wise"
    if key in COPIES:
        return "copies and reshuffles"
    return "the rest (framework overhead, views)"


def _product_operands(event) -> tuple[list[int], list[int]]:
    """The shapes of the two matrices of an ``mm`` / ``addmm`` (after its bias) / ``bmm`` event."""
    shapes = event.input_shapes
    return (shapes[1], shapes[2]) if event.key == "aten::addmm" else (shapes[0], shapes[1])


def product_flops(event) -> int:
    """FLOPs of all calls of a matrix-product event group: 2 M K N per product (times the batch for bmm)."""
    a, b = _product_operands(event)
    batch = a[0] if event.key == "aten::bmm" else 1
    return 2 * batch * a[-2] * a[-1] * b[-1] * event.count


def profile_model(name: str, size: int, passes: int) -> tuple[dict[str, list[float]], dict[str, float], float, float]:
    """Shares per group (one entry per pass), product rates per group (GFLOP/s), profiled and plain seconds."""
    model = inference_model(name)
    x = torch.rand(1, 1, size, size)
    shares: dict[str, list[float]] = collections.defaultdict(list)
    flops: dict[str, int] = collections.Counter()
    busy: dict[str, float] = collections.Counter()
    totals = []
    with torch.no_grad():
        model(x)
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True):  # the profiler's own warm-up
            model(x)
        start = time.perf_counter()
        model(x)
        plain = time.perf_counter() - start
        for _ in range(passes):
            with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
                model(x)
            groups: dict[str, float] = collections.Counter()
            for event in prof.key_averages(group_by_input_shape=True):
                group = group_of(event)
                # Self times only: Re-WKV's label holds its C call (the label's self time); the few
                # PyTorch calls inside it (allocations, casts) count in their own groups.
                groups[group] += event.self_cpu_time_total
                if group.startswith("matrix products"):
                    flops[group] += product_flops(event)
                    busy[group] += event.self_cpu_time_total
            total = sum(groups.values())  # every event's self time, in exactly one group
            totals.append(total / 1e6)
            for group, micros in groups.items():
                shares[group].append(micros / total)
    rates = {g: flops[g] / (busy[g] / 1e6) / 1e9 for g in flops if busy[g] > 0}
    return shares, rates, statistics.median(totals), plain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["restore_rwkv", "restore_rwkv_light"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[256, 512])
    parser.add_argument("--passes", type=int, default=3)
    args = parser.parse_args()
    restore_rwkv.tune_cpu_allocator()
    print(f"Machine: {machine_summary()}")
    print(f"torch.mm fp32 rate (2048x2048): {mm_rate() / 1e9:.1f} GFLOP/s\n")
    for name in args.models:
        for size in args.sizes:
            shares, rates, seconds, plain = profile_model(name, size, args.passes)
            print(f"### {name}, {size}²: {seconds:.2f} s per profiled pass (median of {args.passes}), "
                  f"{plain:.2f} s for one plain pass\n")
            print("| operations | share of time | products' rate |")
            print("|---|---|---|")
            for group, values in sorted(shares.items(), key=lambda kv: -statistics.median(kv[1])):
                rate = f"{rates[group]:.0f} GFLOP/s" if group in rates else ""
                print(f"| {group} | {100 * statistics.median(values):.1f} % | {rate} |")
            print(flush=True)


if __name__ == "__main__":
    main()
