"""``restore-rwkv train --config NAME|PATH [--set key=value ...]``: train on one CPU or many GPUs (torchrun)."""

from __future__ import annotations

import os


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="train a model from a config (paper recipes and demo configs ship with the package)",
        description="Train with a YAML config. Several processes: torchrun --nproc_per_node=N -m restore_rwkv "
                    "train ... (DistributedDataParallel; NCCL on GPUs, gloo on CPU). A run folder holding "
                    "checkpoints/last.pt is resumed automatically.")
    parser.add_argument("--config", help="a shipped config name (see --list) or a .yaml file")
    parser.add_argument("--list", action="store_true",
                        help="list the shipped configs (task, model, iterations) and the shipped models, then exit")
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


def _list() -> int:
    from restore_rwkv.engine.config import load_config, shipped_configs
    from restore_rwkv.models.card import load_model_card, shipped_models

    print("shipped configs (restore-rwkv train --config NAME):")
    for name in shipped_configs():
        config = load_config(name)
        print(f"  {name:<20} {config.task:<11} {config.model.name:<18} {config.schedule.iterations:>7} iterations, "
              f"patches of {config.data.patch_size}")
    print("shipped models (--weights NAME in restore and evaluate; model.init_weights to fine-tune):")
    for name in shipped_models():
        card = load_model_card(name)
        print(f"  {name:<20} {card.task:<11} {card.model:<18} {card.iterations or 0:>7} iterations")
    return 0


def _run(args) -> int:
    from restore_rwkv.engine.config import load_config
    from restore_rwkv.engine.trainer import Trainer
    from restore_rwkv.utils.errors import InputError

    if args.list:
        return _list()
    if not args.config:
        raise InputError(None, "give --config NAME|PATH (restore-rwkv train --list shows the shipped configs)")

    overrides = list(args.overrides) + ([f"out={args.out}"] if args.out else [])
    config = load_config(args.config, overrides)
    resume = None if str(args.resume).lower() == "none" else args.resume
    if args.until is not None and args.until < 1:
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
