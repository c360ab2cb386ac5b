"""Inference time, page faults and peak memory under one glibc allocator setting (one process per call).

    python benchmarks/allocator.py --size 512 [--mmap-mb 128 --trim-mb 1024] [--model restore_rwkv_light]
    # no --mmap-mb: glibc defaults

Used for the allocator table in docs/performance.md (each setting is a fresh process, since
mallopt changes the whole process).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch

import restore_rwkv


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--mmap-mb", type=int, default=0, help="mmap threshold in MB (0: glibc default)")
    parser.add_argument("--trim-mb", type=int, default=0, help="trim threshold in MB (0: twice --mmap-mb)")
    parser.add_argument("--model", default="restore_rwkv", help="registered model name")
    args = parser.parse_args()
    trim_mb = args.trim_mb or 2 * args.mmap_mb
    if args.mmap_mb:
        print(restore_rwkv.tune_cpu_allocator(mmap_threshold=args.mmap_mb << 20, trim_threshold=trim_mb << 20))
    torch.manual_seed(0)
    model = restore_rwkv.reparameterize_model(restore_rwkv.create_model(args.model)).eval()
    x = torch.rand(1, 1, args.size, args.size)
    with torch.no_grad():
        model(torch.rand(1, 1, 16, 16))
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        times, faults = [], []
        for _ in range(5 if args.size <= 512 else 1):
            start_faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start_faults)
    rise = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024**2
    print(f"{args.model} mmap={args.mmap_mb or 'default'} MB trim={trim_mb or 'default'} MB size={args.size}: "
          f"{statistics.median(times):.2f} s (passes: {', '.join(f'{t:.2f}' for t in times)}), "
          f"minor page faults per pass {faults}, peak rise {rise:.2f} GiB")


if __name__ == "__main__":
    main()
