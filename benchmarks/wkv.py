"""Time and peak memory of the Bi-WKV operator: O(T^2) reference vs the linear-time default.

    python benchmarks/wkv.py [--lengths 1024 4096 ...] [--channels 48]

Each cell runs in a fresh process; memory is the rise of the peak resident set size over
the process's size once the inputs (k, v, w, u and the output gradient) exist, so it counts
the output, the input gradients and every temporary (B = 1, fp32, C = 48 by default). The
reference's forward+backward is its pairwise formula (``bi_wkv_reference_grad``)
evaluated in row blocks, since autograd through it would need O(T^2) memory.
"""

from __future__ import annotations

import argparse

from _common import machine_summary, median_time, peak_rss_mb, run_isolated

REFERENCE_MAX_T = 4096  # beyond this the O(T^2) reference takes minutes


def measure(backend: str, length: int, channels: int, mode: str) -> dict:
    import torch

    from restore_rwkv.ops import bi_wkv
    from restore_rwkv.ops._reference import bi_wkv_reference_grad

    gen = torch.Generator().manual_seed(0)
    w = torch.randn(channels, generator=gen) / length
    u = torch.randn(channels, generator=gen) / length
    k = torch.randn(1, length, channels, generator=gen)
    v = torch.randn(1, length, channels, generator=gen)
    gy = torch.randn(1, length, channels, generator=gen)

    def forward():
        with torch.no_grad():
            return bi_wkv(w, u, k, v, backend=backend)

    leaves = [x.clone().requires_grad_() for x in (w, u, k, v)]

    def forward_backward():
        if backend == "reference":
            return bi_wkv_reference_grad(w, u, k, v, gy)
        for leaf in leaves:
            leaf.grad = None
        bi_wkv(*leaves, backend=backend).backward(gy)

    fn = forward if mode == "fwd" else forward_backward
    # Warm up on a tiny problem so one-off start-up allocations are not counted.
    small = [x[..., :64, :] if x.dim() == 3 else x for x in (k, v, gy)]
    with torch.no_grad():
        bi_wkv(w, u, small[0], small[1], backend=backend)
    if backend != "reference":
        tiny = [x.clone().requires_grad_() for x in (w, u, small[0], small[1])]
        bi_wkv(*tiny, backend=backend).backward(small[2])
    base = peak_rss_mb()
    fn()
    peak = peak_rss_mb() - base
    seconds = median_time(fn, repeats=5, warmup=0, budget_s=30)
    return {"seconds": seconds, "peak_mb": peak, "k_mb": k.numel() * 4 / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384, 65536, 262144])
    parser.add_argument("--channels", type=int, default=48)
    args = parser.parse_args()

    print(f"Machine: {machine_summary()}\n")
    print("| T | mode | reference s | chunked s | speed-up | chunked peak MB | peak / size(k) | native s | native peak MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    results: dict = {}
    for length in args.lengths:
        for mode in ("fwd", "fwd+bwd"):
            fast = run_isolated("wkv", dict(backend="chunked", length=length, channels=args.channels, mode=mode))
            ref = (
                run_isolated("wkv", dict(backend="reference", length=length, channels=args.channels, mode=mode))
                if length <= REFERENCE_MAX_T
                else None
            )
            native = run_isolated("wkv", dict(backend="native", length=length, channels=args.channels, mode=mode))
            results[(length, mode)] = fast
            ref_s = f"{ref['seconds']:.4f}" if ref else "-"
            speed = f"{ref['seconds'] / fast['seconds']:.0f}x" if ref else "-"
            nat = f"{native['seconds']:.4f} | {native['peak_mb']:.1f}" if "seconds" in native else "- | -"
            print(
                f"| {length} | {mode} | {ref_s} | {fast['seconds']:.4f} | {speed} | "
                f"{fast['peak_mb']:.1f} | {fast['peak_mb'] / fast['k_mb']:.1f} | {nat} |",
                flush=True,
            )
    lengths = args.lengths
    if 65536 in lengths and 262144 in lengths:
        ratio = results[(262144, "fwd+bwd")]["seconds"] / results[(65536, "fwd+bwd")]["seconds"]
        print(f"\nfwd+bwd time ratio T=262144 / T=65536: {ratio:.2f} (linear: 4.00, target <= 5)")


if __name__ == "__main__":
    main()
