"""Training speed of shipped configs through the real engine, against the bare training step.

For each config: iterations per second of ``Trainer`` (data from worker processes, logging,
checkpoint-free window), the share of that time spent waiting for data, and the same model's
bare step (forward, backward, Adam on tensors already in memory: what benchmarks/targets.py
times), so the engine's overhead is (engine step - bare step) / bare step.

    python benchmarks/training.py --data data/demo                      # demo_* configs and the paper recipe
    python benchmarks/training.py --data data/demo --configs demo_ct_denoise --iterations 40

``--data`` is a prepared root (restore-rwkv prepare demo --out data/demo) used for every config.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from _common import machine_summary  # noqa: E402  (benchmarks run from their folder or with it on the path)
from restore_rwkv.engine.config import load_config
from restore_rwkv.engine.trainer import Trainer
from restore_rwkv.models import create_model


def bare_step_seconds(config, iterations: int, warmup: int = 3) -> float:
    """Median seconds of one forward+backward+Adam step of the config's model, batch and patch, no data loading."""
    torch.manual_seed(0)
    model = create_model(config.model.name, **config.model.args).train()
    size, batch = config.data.patch_size, config.data.batch_size
    x, target = torch.rand(batch, 1, size, size), torch.rand(batch, 1, size, size)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.optim.lr, betas=tuple(config.optim.betas))
    times = []
    for i in range(warmup + iterations):
        t0 = time.perf_counter()
        loss = torch.nn.functional.l1_loss(model(x), target)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def engine_window(config_name: str, data: str, iterations: int) -> tuple[float, float, object]:
    """(seconds per iteration, share waiting for data) over ``iterations`` after as many warm-up iterations."""
    with tempfile.TemporaryDirectory() as out:
        # speed does not depend on the starting weights: a fine-tuning config starts from its initialisation
        config = load_config(config_name, [f"data.train.root={data}", "data.val=", "model.init_weights=", f"out={out}",
                                           f"schedule.iterations={2 * iterations}", f"train.log_every={iterations}",
                                           f"train.save_every={10 * iterations}"])
        trainer = Trainer(config, quiet=True)
        trainer.fit()
        measured = trainer.history[-1]
        return measured["seconds"] / iterations, measured["data_wait"], config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="prepared root (e.g. data/demo)")
    parser.add_argument("--configs", nargs="+",
                        default=["demo_mri_sr_x4", "demo_ct_denoise", "demo_pet_synthesis", "demo_all_in_one",
                                 "ct_denoise"])
    parser.add_argument("--iterations", type=int, default=30, help="measured iterations (after as many warm-up)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="engine and bare windows, alternated; medians are reported (the paper recipe runs once)")
    args = parser.parse_args()
    print(machine_summary())
    print()
    print("| config | model | patch, batch | workers | engine s/it (runs) | it/s | data wait | bare step s (runs) "
          "| engine overhead |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.configs:
        demo = name.startswith("demo")
        iterations = args.iterations if demo else max(4, args.iterations // 6)
        engine, waits, bare = [], [], []
        for _ in range(args.repeats if demo else 1):
            seconds, wait, config = engine_window(name, args.data, iterations)
            engine.append(seconds)
            waits.append(wait)
            bare.append(bare_step_seconds(config, iterations))
        e, b = statistics.median(engine), statistics.median(bare)
        runs = lambda values: ", ".join(f"{v:.3f}" for v in values)  # noqa: E731
        print(f"| {name} | {config.model.name} | {config.data.patch_size}², {config.data.batch_size} | "
              f"{config.data.workers} | {e:.3f} ({runs(engine)}) | {1 / e:.2f} | {100 * statistics.median(waits):.1f} % "
              f"| {b:.3f} ({runs(bare)}) | {100 * (e - b) / b:+.1f} % |", flush=True)


if __name__ == "__main__":
    main()
