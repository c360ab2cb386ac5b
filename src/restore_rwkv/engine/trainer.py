"""The iteration-based trainer: one process or many through torch.distributed (torchrun).

``Trainer(load_config("ct_denoise")).fit()`` trains with the paper's recipe: random patches,
L1 loss, Adam, cosine decay, validation every ``val_every`` iterations (in tiles of the
training patch size, as ``restore`` and ``evaluate`` run the exported model) with
the paper's metrics, ``best`` by validation PSNR. The run folder ``<out>/<name>/`` holds:

- ``config.yaml``: the resolved config;
- ``checkpoints/last.pt`` and ``checkpoints/best.pt``: model, optimiser, scheduler, grad
  scaler, EMA, the random states of every rank, iteration and config (``--resume`` and the
  automatic resume read ``last.pt``; a resumed CPU run is bit-identical to one that never stopped);
- ``model.safetensors`` + ``model.json``: the weights for inference (EMA when enabled; best by
  validation PSNR when there is validation data) with their card, for ``restore`` and ``evaluate``;
- ``log.csv`` (and TensorBoard events under ``tb/`` when tensorboard is installed).

Under torchrun every rank trains on its share of each batch (DistributedDataParallel, NCCL on
GPUs, gloo on CPU); only rank 0 writes; validation metrics are averaged over all ranks' images.
"""

from __future__ import annotations

import copy
import csv
import math
import random
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from restore_rwkv.modality import get_convention
from restore_rwkv.engine.config import RunConfig, save_config
from restore_rwkv.engine.data import EndlessEpochSampler, EpochItems, build_dataset, dataset_tasks
from restore_rwkv.utils.distributed import (
    ProcessInfo,
    all_sum,
    barrier,
    broadcast_object,
    gather_objects,
    setup_distributed,
    teardown_distributed,
)
from restore_rwkv.engine.state import (
    ExponentialMovingAverage,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from restore_rwkv.inference.slices import forward_slices, inference_tile, plan_slices
from restore_rwkv.models import ModelCard, create_model, save_model_with_card
from restore_rwkv.models.card import resolve_weights
from restore_rwkv.models.pretrained import load_pretrained
from restore_rwkv.utils.devices import autocast, resolve_device
from restore_rwkv.utils.errors import InputError

LOG_FIELDS = ("iteration", "loss", "lr", "seconds", "data_wait", "val_l1", "val_psnr", "val_ssim")


def run_progress(run_dir: str | Path) -> tuple[int, float]:
    """A run's last logged iteration and its training wall time in seconds (the sum of ``log.csv``'s
    ``seconds``, validation excluded); ``(0, 0.0)`` for a run without a log."""
    path = Path(run_dir) / "log.csv"
    if not path.is_file():
        return 0, 0.0
    with open(path, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("iteration", "").isdigit()]
    return (max((int(r["iteration"]) for r in rows), default=0),
            float(sum(float(r.get("seconds") or 0) for r in rows)))


def run_finished(run_dir: str | Path, iterations: int) -> bool:
    """Whether a run exported its weights (``model.safetensors``) and logged iteration ``iterations``."""
    return (Path(run_dir) / "model.safetensors").is_file() and run_progress(run_dir)[0] >= iterations


def pick_device(choice: str, info: ProcessInfo | None = None) -> torch.device:
    """``train.device``: ``auto`` (CUDA on this process's local GPU, else MPS, else CPU) or an available device."""
    return resolve_device(choice, info.local_rank if info else 0)


class CosineWithWarmup:
    """Learning-rate factor: linear warm-up over ``warmup`` steps, then cosine from 1 to ``floor``."""

    def __init__(self, iterations: int, warmup: int, floor: float) -> None:
        self.iterations, self.warmup, self.floor = int(iterations), int(warmup), float(floor)

    def __call__(self, step: int) -> float:
        if self.warmup and step < self.warmup:
            return (step + 1) / self.warmup
        span = max(1, self.iterations - self.warmup)
        progress = min(1.0, (step - self.warmup) / span)
        return self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass
class _RunState:
    """What a fit carries from step to step: the model and what updates it, the iteration, the best validation."""

    model: nn.Module
    ema: ExponentialMovingAverage | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler | None
    iteration: int = 0
    best: dict = field(default_factory=lambda: {"psnr": -math.inf})


class Trainer:
    """Trains the model a :class:`RunConfig` describes.

    Args:
        config: the validated run config.
        resume: ``"auto"`` (continue from ``<run>/checkpoints/last.pt`` when it exists), a
            checkpoint path, or None (start fresh; refused when the run folder has a checkpoint).
        quiet: no progress bar.
        until: stop this sitting once the run reaches that iteration (``last.pt`` is saved
            there); a later run with ``resume="auto"`` continues exactly where it stopped.
    """

    def __init__(self, config: RunConfig, resume: str | Path | None = "auto", quiet: bool = False,
                 until: int | None = None) -> None:
        self.config, self.resume, self.quiet, self.until = config, resume, quiet, until
        self.model: nn.Module | None = None
        self.sample_grid: torch.Tensor | None = None
        self.run_dir = config.run_dir
        self.history: list[dict] = []

    # ------------------------------------------------------------------ set-up
    def _check(self, info: ProcessInfo, device: torch.device) -> None:
        cfg = self.config
        if cfg.data.batch_size % info.world_size:
            raise InputError(None, f"data.batch_size {cfg.data.batch_size} is not a multiple of the "
                                   f"{info.world_size} processes")
        if cfg.train.precision == "fp16" and device.type != "cuda":
            raise InputError(None, "train.precision fp16 needs CUDA (its grad scaler); use bf16 or fp32")

    def _resume_path(self) -> Path | None:
        last = self.run_dir / "checkpoints" / "last.pt"
        if self.resume == "auto":
            return last if last.exists() else None
        if self.resume is None:
            if last.exists():
                raise InputError(self.run_dir, "holds a checkpoint of an earlier run: resume it (the default) "
                                               "or choose another name or --out")
            return None
        path = Path(self.resume)
        if not path.is_file():
            raise InputError(path, "is not a checkpoint file" if path.exists() else "no such checkpoint")
        return path

    def _agreed_resume_path(self, info: ProcessInfo) -> Path | None:
        """Rank 0's resume decision, checked to be readable by every rank (one run folder on shared storage)."""
        decision = None
        error = None
        if info.is_main:
            try:
                decision = self._resume_path()
            except InputError as exc:
                error = str(exc)
        decision, error = broadcast_object((None if decision is None else str(decision), error), info)
        if error:
            raise InputError(None, error)
        readable = gather_objects(decision is None or Path(decision).is_file(), info)
        if not all(readable):
            raise InputError(decision, "is not readable on every node: with several nodes the run folder (out) "
                                       "must be on storage that all of them share")
        return None if decision is None else Path(decision)

    def _trim_log(self, iteration: int) -> None:
        """Keep only the log rows up to ``iteration`` (a resumed run rewrites the rows after its checkpoint)."""
        path = self.run_dir / "log.csv"
        if not path.exists():
            return
        with open(path, newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if r.get("iteration", "").isdigit() and int(r["iteration"]) <= iteration]
        from restore_rwkv.utils.files import atomic_file

        with atomic_file(path) as tmp, open(tmp, "w", newline="") as fh:
            out = csv.DictWriter(fh, fieldnames=LOG_FIELDS)
            out.writeheader()
            out.writerows({k: r.get(k, "") for k in LOG_FIELDS} for r in rows)

    def _amp(self, device: torch.device):
        return autocast(device, self.config.train.precision)

    # ------------------------------------------------------------------ run
    def fit(self) -> dict:
        """Train to ``schedule.iterations``; returns the final and best validation metrics."""
        cfg = self.config
        info = setup_distributed(pick_device(cfg.train.device).type)
        try:
            return self._fit(info)
        finally:
            teardown_distributed(info)

    def _fit(self, info: ProcessInfo) -> dict:
        cfg = self.config
        device = pick_device(cfg.train.device, info)
        self._check(info, device)
        self._seed()
        resume_from = self._agreed_resume_path(info)
        run = self._build(device, load_init=resume_from is None)
        if resume_from is not None:
            self._resume(run, resume_from, device, info)
        elif info.is_main:
            self._trim_log(0)
        if info.distributed:
            # Depthwise kernels (C, 1, k, k) get channels-last gradients whose strides differ from the bucket's
            # only along the size-1 axis: the same memory layout, so DDP's performance warning does not apply.
            warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        ddp = (DistributedDataParallel(run.model, device_ids=[device.index] if device.type == "cuda" else None)
               if info.distributed else run.model)
        loader, train_set = self._loader(run.iteration, info, device)
        val_set = build_dataset(cfg.data.val, None, cfg.train.seed, physical=True) if cfg.data.val else None
        modalities = sorted({item for item in _modalities(train_set)})

        writer = self._open_logs(info)
        bar = None
        if info.is_main and not self.quiet:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.schedule.iterations, initial=run.iteration, desc=cfg.name, dynamic_ncols=True)
        batches = iter(loader)
        window = {"loss": 0.0, "n": 0, "data": 0.0, "start": time.perf_counter()}
        last_val: dict = {}
        run.model.train()
        stop = min(cfg.schedule.iterations, self.until) if self.until is not None else cfg.schedule.iterations
        self.model = run.model
        while run.iteration < stop:
            t0 = time.perf_counter()
            batch = next(batches)
            window["data"] += time.perf_counter() - t0
            loss, step_lr = self._step(run, ddp, batch, device)
            window["loss"] += loss
            window["n"] += 1
            if bar is not None:
                bar.update(1)

            iteration = run.iteration
            log_now = iteration % cfg.train.log_every == 0 or iteration == cfg.schedule.iterations
            val_now = val_set is not None and (iteration % cfg.train.val_every == 0
                                               or iteration == cfg.schedule.iterations)
            row = None
            if log_now or val_now:
                elapsed = time.perf_counter() - window["start"]
                mean_loss, data_wait = all_sum([float(window["loss"]) / max(1, window["n"]),
                                                window["data"] / max(elapsed, 1e-9)], info, device)
                row = {"iteration": iteration, "loss": mean_loss / info.world_size,
                       "lr": step_lr, "seconds": elapsed,
                       "data_wait": data_wait / info.world_size}
                window = {"loss": 0.0, "n": 0, "data": 0.0, "start": time.perf_counter()}
            if val_now:
                last_val = self._validate(run.model, run.ema, val_set, device, info)
                row.update({f"val_{k}": v for k, v in last_val.items()})
                if last_val["psnr"] > run.best["psnr"]:
                    run.best = {**last_val, "iteration": iteration}
                    self._save(run, info, "best.pt")
                    self._export(run.model, run.ema, iteration, run.best, modalities, info)
                run.model.train()
            if row is not None:
                self._log(row, writer, bar, info)
            if iteration % cfg.train.save_every == 0 or iteration in (cfg.schedule.iterations, stop):
                self._save(run, info, "last.pt")
            if row is not None or val_now:
                window["start"] = time.perf_counter()  # validation and saving are not part of the next window
        if val_set is None and run.iteration == cfg.schedule.iterations:
            self._export(run.model, run.ema, run.iteration, {}, modalities, info)
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()
        barrier(info)
        exported = (self.run_dir / "model.safetensors").exists()
        return {"iteration": run.iteration, "last": last_val, "best": run.best if "iteration" in run.best else {},
                "weights": str(self.run_dir / "model.safetensors") if exported else None}

    # ------------------------------------------------------------------ seams of a fit
    def _seed(self) -> None:
        """Seeds, threads and determinism the config asks for, before anything random is drawn."""
        cfg = self.config
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        if cfg.train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        torch.manual_seed(cfg.train.seed)
        np.random.seed(cfg.train.seed)
        random.seed(cfg.train.seed)

    def _build(self, device: torch.device, load_init: bool = True) -> "_RunState":
        """The model (from ``model.init_weights`` when ``load_init``; output zeroed when asked), its EMA,
        the Adam optimiser, the warm-up and cosine schedule and the fp16 grad scaler, at iteration 0."""
        cfg = self.config
        try:
            model = create_model(cfg.model.name, **cfg.model.args).to(device)
        except (TypeError, ValueError) as exc:
            raise InputError(None, f"model: {exc}") from None
        if cfg.model.init_weights and load_init:  # a resumed run takes its weights from the checkpoint
            load_pretrained(model, resolve_weights(cfg.model.init_weights))
        if cfg.model.zero_init_output:
            zero_output_layer(model)
        if cfg.train.gradient_checkpointing:
            model.set_gradient_checkpointing(True)
        ema = ExponentialMovingAverage(model, cfg.train.ema_decay) if cfg.train.ema_decay else None
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                                     weight_decay=cfg.optim.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self._lr_factor())
        scaler = torch.amp.GradScaler("cuda") if cfg.train.precision == "fp16" else None
        return _RunState(model, ema, optimizer, scheduler, scaler)

    def _lr_factor(self) -> CosineWithWarmup:
        cfg = self.config
        return CosineWithWarmup(cfg.schedule.iterations, cfg.schedule.warmup, cfg.schedule.min_lr / cfg.optim.lr)

    def _resume(self, run: "_RunState", path: Path, device: torch.device, info: ProcessInfo) -> None:
        """Load a checkpoint into ``run`` (weights, optimiser, schedule, scaler, EMA, iteration, best, this
        rank's random states); this config's optimiser settings and schedule win over the checkpoint's."""
        cfg = self.config
        state = load_checkpoint(path)
        if int(state["iteration"]) > cfg.schedule.iterations:
            raise InputError(path, f"is at iteration {state['iteration']}, beyond schedule.iterations "
                                   f"{cfg.schedule.iterations}")
        try:
            run.model.load_state_dict(state["model"])
        except RuntimeError as exc:
            raise InputError(path, "its weights do not fit this config's model "
                                   f"({' '.join(str(exc).split())[:200]})") from None
        run.optimizer.load_state_dict(state["optimizer"])
        run.scheduler.load_state_dict(state["scheduler"])
        factor = self._lr_factor()  # config.yaml says what runs
        run.scheduler.base_lrs = [cfg.optim.lr for _ in run.optimizer.param_groups]
        run.scheduler.lr_lambdas = [factor for _ in run.optimizer.param_groups]
        for group in run.optimizer.param_groups:
            group.update(lr=cfg.optim.lr * factor(run.scheduler.last_epoch), betas=tuple(cfg.optim.betas),
                         weight_decay=cfg.optim.weight_decay, initial_lr=cfg.optim.lr)
        if run.scaler is not None and state.get("scaler"):
            run.scaler.load_state_dict(state["scaler"])
        if run.ema is not None and state.get("ema"):
            run.ema.load_state_dict(state["ema"], device=device)
            run.ema.decay = float(cfg.train.ema_decay)
        run.iteration, run.best = int(state["iteration"]), dict(state.get("best") or run.best)
        if "iteration" in run.best:
            run.best["iteration"] = int(run.best["iteration"])
        states = state.get("rng") or []
        if len(states) == info.world_size:
            set_rng_state(states[info.rank])
        if info.is_main:
            print(f"resuming {self.run_dir.name} from {path} at iteration {run.iteration}")
            self._trim_log(run.iteration)

    def _loader(self, iteration: int, info: ProcessInfo, device: torch.device) -> tuple[DataLoader, object]:
        """The training stream from sample ``iteration x local batch`` on (this rank's share), and its dataset."""
        cfg = self.config
        local_batch = cfg.data.batch_size // info.world_size
        train_set = build_dataset(cfg.data.train, cfg.data.patch_size, cfg.train.seed)
        try:
            sampler = EndlessEpochSampler(len(train_set), cfg.train.seed, info.rank, info.world_size,
                                          start=iteration * local_batch,
                                          tasks=dataset_tasks(train_set) if cfg.data.balance_tasks else None,
                                          task_weights=cfg.data.task_weights)
        except ValueError as exc:  # e.g. task_weights for a task the training data does not hold
            raise InputError(None, f"data: {exc}") from None
        loader = DataLoader(EpochItems(train_set), batch_size=local_batch, sampler=sampler,
                            num_workers=cfg.data.workers, pin_memory=device.type == "cuda",
                            persistent_workers=False, drop_last=True)
        return loader, train_set

    def _step(self, run: "_RunState", ddp: nn.Module, batch: dict, device: torch.device) -> tuple[torch.Tensor, float]:
        """One optimiser step on ``batch``: L1 (plus the window term when asked), backward, clipping, the
        step, the schedule and the EMA; returns the loss (detached) and the learning rate it used."""
        cfg = self.config
        lq = batch["lq"].to(device, non_blocking=True)
        hq = batch["hq"].to(device, non_blocking=True)
        with self._amp(device):
            out = ddp(lq)
        loss = nn.functional.l1_loss(out.float(), hq.float())
        if cfg.train.window_loss_weight:
            low, high = window_bounds(batch["modality"], device)
            narrower = ((low > 0) | (high < 1)).float().flatten()  # a full-range window adds nothing new
            per_sample = (torch.minimum(torch.maximum(out.float(), low), high)
                          - torch.minimum(torch.maximum(hq.float(), low), high)).abs().flatten(1).mean(1)
            loss = loss + cfg.train.window_loss_weight * (narrower * per_sample).mean()
        run.optimizer.zero_grad(set_to_none=True)
        if run.scaler is not None:
            run.scaler.scale(loss).backward()
            run.scaler.unscale_(run.optimizer)
        else:
            loss.backward()
        if cfg.optim.grad_clip:
            nn.utils.clip_grad_norm_(run.model.parameters(), cfg.optim.grad_clip)
        if run.scaler is not None:
            run.scaler.step(run.optimizer)
            run.scaler.update()
        else:
            run.optimizer.step()
        step_lr = run.optimizer.param_groups[0]["lr"]
        run.scheduler.step()
        if run.ema is not None:
            run.ema.update(run.model)
        run.iteration += 1
        return loss.detach(), step_lr

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def _validate(self, model: nn.Module, ema: ExponentialMovingAverage | None, dataset, device: torch.device,
                  info: ProcessInfo) -> dict:
        """Mean L1 (normalised units), PSNR and SSIM (the paper's protocol) over the validation slices,
        restored in tiles of the training patch size and scored as ``restore`` and ``evaluate`` do by default
        (``engine.evaluation.score_restored``)."""
        from restore_rwkv.engine.evaluation import score_restored

        net = model
        if ema is not None:
            net = copy.deepcopy(model)
            ema.copy_to(net)
        net.eval()
        sums = [0.0, 0.0, 0.0, 0.0, 0.0]  # l1, psnr, ssim, images, images with a finite score
        self.sample_grid = None
        for index in range(info.rank, len(dataset), info.world_size):
            item = dataset[index]
            lq, hq = item["lq"][None].to(device), item["hq"][None].to(device)
            # as restore and evaluate run the exported model: in tiles of the training patch size
            plan = plan_slices(net, lq.shape[-2], lq.shape[-1], 1, None, inference_tile(self.config.data.patch_size))
            out = forward_slices(net, lq[:, 0], plan, device, self.config.train.precision)[:, None].to(device)
            scores, _ = score_restored(out[0], item, get_convention(item["modality"]))
            psnr, ssim = float(scores["psnr"].sum()), float(scores["ssim"].sum())
            sums[0] += float((out - hq).abs().mean())
            sums[3] += 1
            if math.isfinite(psnr) and math.isfinite(ssim):  # a flat label has no data range: NaN, left out
                sums[1] += psnr
                sums[2] += ssim
                sums[4] += 1
            if self.sample_grid is None:
                self.sample_grid = torch.cat([lq, out.clamp(0, 1), hq], dim=-1)[0].cpu()  # LQ | restored | HQ
        l1, psnr, ssim, count, scored = all_sum(sums, info, device)
        return {"l1": l1 / count, "psnr": psnr / scored if scored else math.nan,
                "ssim": ssim / scored if scored else math.nan}

    # ------------------------------------------------------------------ outputs
    def _open_logs(self, info: ProcessInfo):
        if not info.is_main:
            return None
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_config(self.config, self.run_dir / "config.yaml")
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is an optional extra
            return None
        return SummaryWriter(str(self.run_dir / "tb"))

    def _log(self, row: dict, writer, bar, info: ProcessInfo) -> None:
        self.history.append(row)
        if not info.is_main:
            return
        path = self.run_dir / "log.csv"
        new = not path.exists()
        with open(path, "a", newline="") as fh:
            out = csv.DictWriter(fh, fieldnames=LOG_FIELDS)
            if new:
                out.writeheader()
            out.writerow({k: (f"{row[k]:.6g}" if isinstance(row.get(k), float) else row.get(k, "")) for k in LOG_FIELDS})
        if bar is not None:
            shown = {"loss": f"{row['loss']:.4f}", "lr": f"{row['lr']:.2e}"}
            if "val_psnr" in row:
                shown["val_psnr"] = f"{row['val_psnr']:.2f}"
            bar.set_postfix(shown, refresh=False)
        if writer is not None:
            for key in ("loss", "lr", "data_wait", "val_l1", "val_psnr", "val_ssim"):
                if key in row:
                    writer.add_scalar(key, row[key], row["iteration"])
            if "val_psnr" in row and getattr(self, "sample_grid", None) is not None:
                writer.add_image("validation/lq_restored_hq", self.sample_grid, row["iteration"])

    def _save(self, run: "_RunState", info: ProcessInfo, name: str) -> None:
        states = gather_objects(rng_state(), info)
        if info.is_main:
            save_checkpoint({
                "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
                "scheduler": run.scheduler.state_dict(),
                "scaler": run.scaler.state_dict() if run.scaler is not None else None,
                "ema": run.ema.state_dict() if run.ema is not None else None, "rng": states,
                "iteration": run.iteration, "best": {k: float(v) for k, v in run.best.items()},
                "config": self.config.to_dict(),
            }, self.run_dir / "checkpoints" / name)
        barrier(info)

    def _export(self, model: nn.Module, ema, iteration: int, metrics: dict, modalities: list[str],
                info: ProcessInfo) -> None:
        """``model.safetensors`` + ``model.json`` in the run folder: the weights for inference."""
        if info.is_main:
            net = model
            if ema is not None:
                net = copy.deepcopy(model)
                ema.copy_to(net)
            cfg = self.config
            conventions = {get_convention(m).name: get_convention(m).to_card() for m in modalities}
            card = ModelCard(model=cfg.model.name, task=cfg.task, conventions=conventions,
                             model_args=dict(cfg.model.args), patch_size=cfg.data.patch_size, iterations=iteration,
                             metrics={k: float(v) for k, v in metrics.items()},
                             notes=f"trained with restore-rwkv train, config {cfg.name}")
            save_model_with_card(net, self.run_dir / "model.safetensors", card)
        broadcast_object(None, info)


def window_bounds(modalities, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample (B, 1, 1, 1) lower and upper bounds of each modality's evaluation window in [0, 1] units."""
    if isinstance(modalities, str):
        modalities = [modalities]
    bounds = []
    for name in modalities:
        convention = get_convention(name)
        lo, hi = convention.norm_range
        bounds.append([(w - lo) / (hi - lo) for w in convention.eval_window])
    values = torch.tensor(bounds, dtype=torch.float32, device=device)[:, :, None, None, None]
    return values[:, 0], values[:, 1]


def zero_output_layer(model: nn.Module) -> None:
    """Zero the weights and bias of the model's output convolution (``model.output``): with the
    global residual the model then returns its input (``model.zero_init_output``)."""
    output = getattr(model, "output", None)
    if not isinstance(output, nn.Conv2d):
        raise InputError(None, f"model.zero_init_output: {type(model).__name__} has no output convolution")
    if not getattr(model, "residual", False):
        raise InputError(None, "model.zero_init_output: the model has no global residual (in_channels != "
                               "out_channels), so a zeroed output would be a constant, not the identity")
    with torch.no_grad():
        output.weight.zero_()
        if output.bias is not None:
            output.bias.zero_()


def _modalities(dataset) -> list[str]:
    if hasattr(dataset, "records"):
        return [r.modality for r in dataset.records]
    if hasattr(dataset, "convention"):
        return [dataset.convention.name]
    return []
