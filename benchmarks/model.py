"""Time and peak memory of whole Restore-RWKV models on this machine.

    python benchmarks/model.py [--models restore_rwkv restore_rwkv_light] [--sizes 128 256 512] [--default-allocator]

Inference: batch 1, one channel, fused Omni-Shift, ``torch.no_grad()``, fp32. Training:
one step (forward, L1 loss, backward, Adam) at 128x128, batch 4. Each cell runs in a
fresh process; memory is the rise of the peak resident set size over the size after
the model and inputs were made.
"""

from __future__ import annotations

import argparse

from _common import machine_summary, median_time, peak_rss_mb, run_isolated


def measure(model_name: str, size: int, mode: str, tuned: bool = True) -> dict:
    import torch

    import restore_rwkv

    if tuned:
        restore_rwkv.tune_cpu_allocator()

    torch.manual_seed(0)
    model = restore_rwkv.create_model(model_name)
    if mode == "infer":
        model = restore_rwkv.reparameterize_model(model).eval()
        x = torch.rand(1, 1, size, size)

        def step():
            with torch.no_grad():
                return model(x)

        with torch.no_grad():
            model(torch.rand(1, 1, 32, 32))  # a U-Net needs more than 1 pixel at its bottom level
    else:
        model.train()
        x = torch.rand(4, 1, size, size)
        target = torch.rand(4, 1, size, size)
        optimiser = torch.optim.Adam(model.parameters(), lr=2e-4)

        def step():
            loss = torch.nn.functional.l1_loss(model(x), target)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()

    base = peak_rss_mb()
    step()
    peak = peak_rss_mb() - base
    seconds = median_time(step, repeats=5, warmup=0, budget_s=60)
    return {"seconds": seconds, "peak_mb": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["restore_rwkv", "restore_rwkv_light"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 512])
    parser.add_argument("--default-allocator", action="store_true", help="skip restore_rwkv.tune_cpu_allocator()")
    args = parser.parse_args()
    tuned = not args.default_allocator

    print(f"Machine: {machine_summary()}\n")
    print("| model | job | seconds | peak MB |")
    print("|---|---|---|---|")
    for name in args.models:
        for size in args.sizes:
            res = run_isolated("model", dict(model_name=name, size=size, mode="infer", tuned=tuned))
            print(f"| {name} | inference {size}x{size}, batch 1 | {res['seconds']:.3f} | {res['peak_mb']:.0f} |")
        res = run_isolated("model", dict(model_name=name, size=128, mode="train", tuned=tuned))
        print(f"| {name} | training step 128x128, batch 4 | {res['seconds']:.3f} | {res['peak_mb']:.0f} |")


if __name__ == "__main__":
    main()
