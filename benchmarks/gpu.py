"""Restore-RWKV on a CUDA GPU: the Triton operator against the pure-PyTorch one, the model, training.

    python benchmarks/gpu.py [--quick] [--json results.json]

Prints the card and one markdown table: Re-WKV forward and forward+backward (Triton vs
``chunked``), whole-model inference of the paper model (fp32 and bf16 autocast, both
operators, up to 2048² without tiling) with peak GPU memory and the ratio to the fp32
floor (FLOPs over the fp32 ``torch.mm`` rate on this card, TF32 off), and training steps.
Times are medians of CUDA-synchronised wall times after warm-up. Also checks, before
timing, that the Triton path reproduces the float64 reference on a small case and the
CPU model on a 64² image.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
import restore_rwkv  # noqa: E402
from restore_rwkv.ops import re_wkv  # noqa: E402


def cuda_time(fn, repeats: int = 10, warmup: int = 2) -> float:
    """Median seconds of ``fn()`` with the device synchronised around each call."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def mm_rate() -> float:
    a, b = (torch.randn(8192, 8192, device="cuda") for _ in range(2))
    return 2 * 8192**3 / cuda_time(lambda: torch.mm(a, b), repeats=10, warmup=3)


def check_correctness() -> dict:
    """Relative errors of the Triton path: Re-WKV against float64, the model against the CPU model."""
    gen = torch.Generator().manual_seed(0)
    k = torch.randn(2, 24, 40, 16, generator=gen) * 3
    v = torch.randn(2, 24, 40, 16, generator=gen)
    decay = (torch.randn(2, 16, generator=gen) * 6).clamp(-14.9, 14.9)
    first = (torch.randn(2, 16, generator=gen) * 6).clamp(-14.9, 14.9)
    g = torch.randn(2, 24, 40, 16, generator=gen)
    leaves = [t.cuda().requires_grad_() for t in (k, v, decay, first)]
    y = re_wkv(*leaves, backend="triton")
    y.backward(g.cuda())
    ref = [t.double().requires_grad_() for t in (k, v, decay, first)]
    y_ref = re_wkv(*ref, backend="reference")
    y_ref.backward(g.double())
    out = {"re_wkv forward": float((y.detach().cpu().double() - y_ref.detach()).norm() / y_ref.detach().norm())}
    for name, a, b in zip(("dk", "dv", "d decay", "d first"), leaves, ref):
        out[f"re_wkv {name}"] = float((a.grad.cpu().double() - b.grad).norm() / b.grad.norm())
    torch.manual_seed(0)
    model = restore_rwkv.reparameterize_model(restore_rwkv.create_model("restore_rwkv")).eval()
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        cpu = model(x)
        gpu = model.cuda()(x.cuda()).cpu()
    out["model 64² vs CPU"] = float((gpu - cpu).norm() / cpu.norm())
    return out


def operator_rows(quick: bool) -> list[dict]:
    rows = []
    shapes = [(1, 256, 256, 96), (1, 512, 512, 48)] + ([] if quick else [(4, 128, 128, 48), (1, 1024, 1024, 48)])
    for shape in shapes:
        k = torch.randn(*shape, device="cuda")
        v = torch.randn(*shape, device="cuda")
        decay, first = torch.rand(2, shape[-1], device="cuda") * 5, torch.rand(2, shape[-1], device="cuda")
        row = {"what": f"Re-WKV (2 steps) {tuple(shape)}"}
        for backend in ("triton", "chunked"):
            with torch.no_grad():
                row[f"{backend} forward ms"] = 1e3 * cuda_time(lambda: re_wkv(k, v, decay, first, backend=backend))
            leaves = [t.clone().requires_grad_() for t in (k, v, decay, first)]
            grad = torch.randn_like(k)

            def step():
                for leaf in leaves:
                    leaf.grad = None
                re_wkv(*leaves, backend=backend).backward(grad)

            row[f"{backend} fwd+bwd ms"] = 1e3 * cuda_time(step, repeats=5)
        rows.append(row)
    return rows


def model_rows(rate: float, quick: bool) -> list[dict]:
    torch.manual_seed(0)
    model = restore_rwkv.reparameterize_model(restore_rwkv.create_model("restore_rwkv")).cuda().eval()
    rows = []
    sizes = [256, 512, 1024] + ([] if quick else [2048])
    for size in sizes:
        x = torch.rand(1, 1, size, size, device="cuda")
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
        floor = counter.get_total_flops() / rate
        for backend in ("triton", "chunked"):
            if backend == "chunked" and size > 1024:
                continue
            for precision in ("fp32", "bf16"):
                os.environ["RESTORE_RWKV_WKV_BACKEND"] = backend

                def run():
                    with torch.no_grad(), torch.autocast("cuda", torch.bfloat16, enabled=precision == "bf16"):
                        model(x)

                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
                seconds = cuda_time(run, repeats=5 if size >= 1024 else 10)
                rows.append({
                    "what": f"paper model inference {size}², {precision}, {backend}",
                    "ms": 1e3 * seconds,
                    "ratio to fp32 floor": seconds / floor,
                    "peak GiB": torch.cuda.max_memory_allocated() / 2**30,
                })
        os.environ.pop("RESTORE_RWKV_WKV_BACKEND", None)
    return rows


def training_rows(quick: bool) -> list[dict]:
    rows = []
    cases = [("restore_rwkv", 128, 4), ("restore_rwkv_light", 128, 4)] + ([] if quick else [("restore_rwkv", 256, 8)])
    for name, size, batch in cases:
        torch.manual_seed(0)
        model = restore_rwkv.create_model(name).cuda().train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        x = torch.rand(batch, 1, size, size, device="cuda")
        target = torch.rand(batch, 1, size, size, device="cuda")
        for precision in ("fp32", "bf16"):

            def step():
                opt.zero_grad(set_to_none=True)
                with torch.autocast("cuda", torch.bfloat16, enabled=precision == "bf16"):
                    loss = torch.nn.functional.l1_loss(model(x), target)
                loss.backward()
                opt.step()

            torch.cuda.reset_peak_memory_stats()
            seconds = cuda_time(step, repeats=5)
            rows.append({
                "what": f"{name} training step {size}², batch {batch}, {precision}",
                "ms": 1e3 * seconds,
                "peak GiB": torch.cuda.max_memory_allocated() / 2**30,
            })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer sizes (a short device lease)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu.py: no CUDA device here")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    props = torch.cuda.get_device_properties(0)
    print(f"Card: {props.name}, {props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs; "
          f"torch {torch.__version__}, CUDA {torch.version.cuda}")
    import triton

    print(f"Triton {triton.__version__}; Bi-WKV backend on CUDA: {restore_rwkv.ops.select_backend(torch.device('cuda'))}")
    results: dict = {"card": props.name, "torch": torch.__version__, "triton": triton.__version__}
    results["checks"] = check_correctness()
    for name, value in results["checks"].items():
        print(f"check {name}: relative error {value:.2e}")
    rate = mm_rate()
    results["mm_fp32_tflops"] = rate / 1e12
    print(f"torch.mm fp32 rate (8192², TF32 off): {rate / 1e12:.1f} TFLOP/s", flush=True)
    sections = (("operator", operator_rows), ("model", lambda q: model_rows(rate, q)), ("training", training_rows))
    for key, fn in sections:
        try:
            results[key] = fn(args.quick)
        except Exception as exc:  # keep what the other sections measure
            print(f"{key}: failed: {type(exc).__name__}: {exc}", flush=True)
            results[key] = [{"what": key, "error": f"{type(exc).__name__}: {exc}"}]
            torch.cuda.empty_cache()
        for row in results[key]:
            print(" | ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in row.values()), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
