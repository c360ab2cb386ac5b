"""``restore-rwkv train --config NAME|PATH [--set key=value ...]``: train on one CPU or many GPUs (torchrun)."""

from __future__ import annotations

import os


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="train a model from a config (paper recipes and demo configs ship with the package)",
        description="Train with a YAML config. Several processes: torchrun --nproc_per_node=N -m restore_rwkv "
                    "train ... (DistributedDataParallel; NCCL on GPUs, gloo on CPU). A run folder holding "
                    "checkpoints/last.pt is resumed automatically.")
    parser.add_argument("--config", required=True, help="a shipped config name (see --list) or a .yaml file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set optim.lr=1e-4 --set data.train.root=data/ct")
    parser.add_argument("--out", help="parent folder of the run folder (sets the config's out)")
    parser.add_argument("--resume", default="auto",
                        help="auto (default: continue <out>/<name>/checkpoints/last.pt if present), a checkpoint "
                             "path, or none (start fresh; refused if the run folder holds a checkpoint)")
    parser.add_argument("--until", type=int, metavar="ITERATION",
                        help="stop this sitting at that iteration (checkpoint saved; run again to continue)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=_run)


def _run(args) -> int:
    from restore_rwkv.engine.config import load_config
    from restore_rwkv.engine.trainer import Trainer

    overrides = list(args.overrides) + ([f"out={args.out}"] if args.out else [])
    config = load_config(args.config, overrides)
    resume = None if str(args.resume).lower() == "none" else args.resume
    if args.until is not None and args.until < 1:
        from restore_rwkv.utils.errors import InputError

        raise InputError(None, f"--until must be >= 1, got {args.until}")
    result = Trainer(config, resume=resume, quiet=args.quiet, until=args.until).fit()
    best = result.get("best") or {}
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    weights = f"; weights {result['weights']}" if result.get("weights") else "; no weights exported yet (run again to go on)"
    scores = (f"; best validation PSNR {best['psnr']:.2f} dB, SSIM {best['ssim']:.4f} at iteration {best['iteration']}"
              if best else "")
    print(f"{config.name}: {result['iteration']} iterations{scores}{weights}")
    return 0
