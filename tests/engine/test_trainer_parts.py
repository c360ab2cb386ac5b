"""The trainer's parts one at a time: the learning-rate schedule, the log it keeps, and what a run applies of them.

test_trainer.py runs whole fits; a fault that a fit and its own resumed copy share (a wrong schedule, say) passes
there, so these tests hold each part to values worked out by hand. They were written against the survivors of a
mutation pass over engine/trainer.py (docs/training.md).
"""

from __future__ import annotations

import csv
import json
import math
import time

import numpy as np
import pytest
import torch

from restore_rwkv.cli import main
from restore_rwkv.data.datasets import PairRecord, write_manifest
from restore_rwkv.engine.config import load_config
from restore_rwkv.engine.data import EpochItems
from restore_rwkv.engine.state import load_checkpoint, save_checkpoint
from restore_rwkv.engine.trainer import LOG_FIELDS, CosineWithWarmup, Trainer, run_progress, zero_output_layer
from restore_rwkv.metrics import evaluate_physical
from restore_rwkv.models import create_model
from restore_rwkv.utils.distributed import ProcessInfo
from restore_rwkv.utils.errors import InputError
from tests.engine.test_trainer import TINY_MODEL, _config, _pairs


def test_the_schedule_warms_up_linearly_then_falls_as_a_half_cosine_to_its_floor():
    schedule = CosineWithWarmup(iterations=12, warmup=4, floor=0.1)
    # warm-up: step k of 4 runs at (k + 1) / 4, so the last warm-up step is at the full rate
    assert [schedule(k) for k in range(4)] == [0.25, 0.5, 0.75, 1.0]
    # the cosine starts at 1 on the first step after the warm-up and reaches the floor at `iterations`
    assert schedule(4) == 1.0
    assert schedule(8) == pytest.approx(0.55, abs=1e-15)  # half-way: cos(pi / 2) = 0, so (1 + floor) / 2
    assert schedule(6) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)), abs=1e-15)
    assert schedule(12) == pytest.approx(0.1, abs=1e-15)
    assert schedule(20) == pytest.approx(0.1, abs=1e-15)  # past the end it stays at the floor
    after = [schedule(k) for k in range(4, 13)]
    assert all(a > b for a, b in zip(after, after[1:]))


def test_without_warm_up_the_schedule_starts_at_the_full_rate():
    schedule = CosineWithWarmup(iterations=10, warmup=0, floor=0.0)
    assert schedule(0) == 1.0
    assert schedule(5) == pytest.approx(0.5, abs=1e-15)
    assert schedule(10) == pytest.approx(0.0, abs=1e-15)


def test_a_warm_up_as_long_as_the_run_leaves_a_one_step_cosine_after_it():
    schedule = CosineWithWarmup(iterations=3, warmup=3, floor=0.2)
    assert [schedule(k) for k in range(6)] == pytest.approx([1 / 3, 2 / 3, 1.0, 1.0, 0.2, 0.2], abs=1e-15)


def test_a_run_steps_at_the_configured_rate_and_logs_it(tmp_path):
    """The lr column of log.csv is optim.lr times the schedule at the step just taken (floor min_lr / lr)."""
    data = _pairs(tmp_path / "data")
    config = _config(tmp_path, data, iterations=9, log_every=1, val_every=9)
    assert main(["train", "--config", str(config), "--quiet", "--set", "optim.lr=1e-3",
                 "--set", "schedule.warmup=3", "--set", "schedule.min_lr=1e-4"]) == 0
    with open(tmp_path / "runs" / "tiny" / "log.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["iteration"]) for r in rows] == list(range(1, 10))
    expected = [1e-3 * f for f in (1 / 3, 2 / 3, 1.0)]  # warm-up
    expected += [1e-4 + 9e-4 * 0.5 * (1 + math.cos(math.pi * k / 6)) for k in range(6)]  # cosine over 6 steps
    assert [float(r["lr"]) for r in rows] == pytest.approx(expected, rel=1e-5)  # the log keeps 6 digits


def test_run_progress_of_a_log_without_rows_is_zero(tmp_path):
    with open(tmp_path / "log.csv", "w", newline="") as fh:
        csv.DictWriter(fh, fieldnames=LOG_FIELDS).writeheader()
    assert run_progress(tmp_path) == (0, 0.0)


def test_a_batch_that_does_not_split_over_the_processes_and_fp16_without_cuda_are_refused(tmp_path):
    config = load_config(_config(tmp_path, tmp_path))  # batch 4, fp32
    cpu = torch.device("cpu")
    Trainer(config)._check(ProcessInfo(rank=0, world_size=2), cpu)  # 4 over 2 processes: fine
    with pytest.raises(InputError) as error:
        Trainer(config)._check(ProcessInfo(rank=1, world_size=3), cpu)
    assert str(error.value) == "data.batch_size 4 is not a multiple of the 3 processes"
    fp16 = load_config(_config(tmp_path, tmp_path), ["train.precision=fp16"])
    with pytest.raises(InputError) as error:
        Trainer(fp16)._check(ProcessInfo(), cpu)
    assert str(error.value) == "train.precision fp16 needs CUDA (its grad scaler); use bf16 or fp32"
    for precision in ("fp32", "bf16"):
        Trainer(load_config(_config(tmp_path, tmp_path), [f"train.precision={precision}"]))._check(ProcessInfo(), cpu)
    if torch.cuda.is_available():
        Trainer(fp16)._check(ProcessInfo(), torch.device("cuda"))


def test_trimming_an_older_log_keeps_the_rows_up_to_the_checkpoint_in_todays_columns(tmp_path):
    """A run resumed from an older version's log (without the data_wait and val_* columns): the rows after the
    checkpoint go, the others keep their values, and the missing columns are written empty."""
    trainer = Trainer(load_config(_config(tmp_path, tmp_path)))
    trainer.run_dir.mkdir(parents=True)
    old = ["iteration", "loss", "lr", "seconds"]
    with open(trainer.run_dir / "log.csv", "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(old)
        out.writerows([[k, 0.5 / k, 1e-3, 2.0] for k in range(1, 6)])
        out.writerow(["resumed", "", "", ""])  # a stray line that is not a row of an iteration
    trainer._trim_log(3)
    with open(trainer.run_dir / "log.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == list(LOG_FIELDS)
    assert rows[1:] == [[str(k), str(0.5 / k), "0.001", "2.0", "", "", "", ""] for k in range(1, 4)]


def test_starting_fresh_over_an_earlier_run_is_refused_word_for_word(tmp_path):
    config = load_config(_config(tmp_path, tmp_path))
    last = config.run_dir / "checkpoints" / "last.pt"
    assert Trainer(config, resume=None)._resume_path() is None
    assert Trainer(config, resume="auto")._resume_path() is None
    last.parent.mkdir(parents=True)
    last.write_bytes(b"")
    assert Trainer(config, resume="auto")._resume_path() == last
    with pytest.raises(InputError) as error:
        Trainer(config, resume=None)._resume_path()
    assert str(error.value) == (f"{config.run_dir}: holds a checkpoint of an earlier run: resume it (the default) "
                                "or choose another name or --out")


def _constant_difference_pairs(root, difference_hu: float, n: int = 6, size: int = 24, split: str = "train",
                               hq_range: tuple[float, float] = (-800.0, 800.0), modality: str = "ct"):
    """CT pairs whose LQ differs from the HQ by exactly ``difference_hu`` at every pixel (random sign), inside the
    policy's range: the identity's L1 loss on any patch, flipped or turned, is difference_hu / 4096."""
    rng = np.random.default_rng(0)
    records = []
    for k in range(n):
        hq = rng.uniform(*hq_range, (size, size)).astype(np.float32)
        lq = (hq + difference_hu * rng.choice([-1.0, 1.0], hq.shape)).astype(np.float32)
        folder = root / modality.upper() / split
        for kind, image in (("LQ", lq), ("HQ", hq)):
            (folder / kind).mkdir(parents=True, exist_ok=True)
            np.save(folder / kind / f"p{k}.npy", image)
        records.append(PairRecord(str(folder / "LQ" / f"p{k}.npy"), str(folder / "HQ" / f"p{k}.npy"), modality,
                                  {"ct": "ct_denoise", "mri": "mri_sr"}[modality], split))
    write_manifest(root / f"manifest_{split}.csv", records)
    return root


def test_the_logged_loss_is_the_mean_step_loss_of_its_window_and_data_wait_a_fraction(tmp_path, capsys):
    """An identity model (zeroed output, a learning rate of 1e-12) on pairs 200 HU apart everywhere: every step's
    L1 loss is 200 / 4096 in network units, so every logged window mean is too. A fresh run in a folder with a
    stale log (no checkpoint) starts the log afresh, and --quiet writes nothing to stderr."""
    data = _constant_difference_pairs(tmp_path / "data", 200.0)
    config = _config(tmp_path, data, iterations=6, log_every=2)
    stale = tmp_path / "runs" / "tiny" / "log.csv"
    stale.parent.mkdir(parents=True)
    with open(stale, "w", newline="") as fh:
        out = csv.DictWriter(fh, fieldnames=LOG_FIELDS)
        out.writeheader()
        out.writerows({"iteration": k, "loss": 99.0} for k in (1, 2, 3))
    capsys.readouterr()
    assert main(["train", "--config", str(config), "--quiet", "--set", "data.val=", "--set", "model.zero_init_output=true",
                 "--set", "optim.lr=1e-12", "--set", "schedule.min_lr=1e-12"]) == 0
    assert capsys.readouterr().err == ""
    with open(stale, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["iteration"]) for r in rows] == [2, 4, 6]
    for row in rows:
        assert float(row["loss"]) == pytest.approx(200.0 / 4096.0, rel=1e-5)
        assert 0.0 <= float(row["data_wait"]) <= 1.0 and 0.0 < float(row["seconds"]) < 600.0  # two tiny steps


def test_checkpoints_are_saved_every_save_every_iterations_and_where_the_sitting_stops(tmp_path, monkeypatch):
    saved = []
    original = Trainer._save

    def recording(self, run, info, name):
        saved.append((name, run.iteration))
        original(self, run, info, name)

    monkeypatch.setattr(Trainer, "_save", recording)
    data = _pairs(tmp_path / "data", n_train=4, n_val=1)
    config = load_config(_config(tmp_path, data, iterations=12, save_every=4, val_every=100, log_every=100))
    Trainer(config, quiet=True, until=10).fit()
    assert saved == [("last.pt", 4), ("last.pt", 8), ("last.pt", 10)]
    saved.clear()
    Trainer(config, quiet=True).fit()  # resumed at 10: the end of the schedule is saved, and validated once
    assert saved == [("best.pt", 12), ("last.pt", 12)]


def test_of_equal_validation_scores_the_first_stays_the_best(tmp_path):
    """An identity model (zeroed output, lr 1e-12) scores the same at every validation: best.pt stays that of the
    first validation. Its scores are the input's, computed here from the files: L1 over every image, PSNR and SSIM
    over those with finite scores (a flat reference has none, an exact restoration an infinite PSNR); the picture
    is LQ | restored | HQ."""
    data = _constant_difference_pairs(tmp_path / "data", 200.0)
    _constant_difference_pairs(tmp_path / "data", 200.0, n=2, split="validation")
    flat = tmp_path / "data" / "CT" / "validation"
    np.save(flat / "HQ" / "p9.npy", np.full((24, 24), 40.0, np.float32))  # no data range: NaN PSNR and SSIM
    np.save(flat / "LQ" / "p9.npy", 40.0 + 200.0 * np.sign(np.random.default_rng(1).normal(size=(24, 24))).astype(
        np.float32))
    # the identity restores an LQ equal to its HQ exactly: infinite PSNR beside a finite SSIM (1), left out of both
    np.save(flat / "HQ" / "p8.npy", np.load(flat / "HQ" / "p0.npy"))
    np.save(flat / "LQ" / "p8.npy", np.load(flat / "HQ" / "p0.npy"))
    config = load_config(_config(tmp_path, data, iterations=6, val_every=2),
                         ["model.zero_init_output=true", "optim.lr=1e-12", "schedule.min_lr=1e-12"])
    trainer = Trainer(config, quiet=True)
    result = trainer.fit()
    with open(tmp_path / "runs" / "tiny" / "log.csv", newline="") as fh:
        validated = [r for r in csv.DictReader(fh) if r["val_psnr"]]
    psnrs = [float(r["val_psnr"]) for r in validated]
    assert len(psnrs) == 3 and len(set(psnrs)) == 1  # three validations, one score
    # the validation L1 is the mean over the images of |output - HQ| in network units: 200 HU but in p8
    assert [float(r["val_l1"]) for r in validated] == pytest.approx([3 * 200.0 / 4096.0 / 4] * 3, rel=1e-5)
    scores = [evaluate_physical(np.load(flat / "LQ" / f"p{k}.npy"), np.load(flat / "HQ" / f"p{k}.npy"), "ct")
              for k in (0, 1)]
    assert psnrs[0] == pytest.approx(np.mean([float(s["psnr"]) for s in scores]), rel=1e-5)
    assert float(validated[0]["val_ssim"]) == pytest.approx(np.mean([float(s["ssim"]) for s in scores]), rel=1e-4)
    assert result["best"]["iteration"] == 2 and result["iteration"] == 6
    assert result["weights"] == str(tmp_path / "runs" / "tiny" / "model.safetensors")
    assert load_checkpoint(tmp_path / "runs" / "tiny" / "checkpoints" / "best.pt")["iteration"] == 2
    grid = trainer.sample_grid  # (1, 24, 3 x 24) of the first validation image, in network units
    assert grid.shape == (1, 24, 72)
    torch.testing.assert_close(grid[..., 24:48], grid[..., :24].clamp(0, 1), rtol=0, atol=1e-6)
    assert not torch.equal(grid[..., 48:], grid[..., :24])


def test_validation_tiles_each_image_on_its_own_height_and_width(tmp_path):
    """Validation images of 24 x 12 and 12 x 24 with 16-pixel patches: the trainer scores them in tiles as
    `evaluate` does by default, so the exported card's PSNR is evaluate's."""
    data = _pairs(tmp_path / "data", n_train=4, n_val=0)
    rng = np.random.default_rng(5)
    records = []
    for k, shape in enumerate(((24, 12), (12, 24))):
        hq = np.where(rng.random(shape) > 0.5, 300.0, -900.0).astype(np.float32)
        lq = (hq + rng.normal(0.0, 150.0, shape)).astype(np.float32)
        folder = data / "CT" / "validation"
        for kind, image in (("LQ", lq), ("HQ", hq)):
            (folder / kind).mkdir(parents=True, exist_ok=True)
            np.save(folder / kind / f"v{k}.npy", image)
        records.append(PairRecord(str(folder / "LQ" / f"v{k}.npy"), str(folder / "HQ" / f"v{k}.npy"), "ct",
                                  "ct_denoise", "validation"))
    write_manifest(tmp_path / "validation.csv", records)
    assert main(["train", "--config", str(_config(tmp_path, data, iterations=6, val_every=6)), "--quiet"]) == 0
    card = json.loads((tmp_path / "runs" / "tiny" / "model.json").read_text())
    assert main(["evaluate", "--weights", str(tmp_path / "runs" / "tiny"), "--data", str(tmp_path / "validation.csv"),
                 "--split", "validation", "--out", str(tmp_path / "eval"), "--device", "cpu", "--quiet"]) == 0
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["tile"] == 16 and card["notes"] == "trained with restore-rwkv train, config tiny"
    assert summary["per_task"]["ct_denoise"]["psnr_out"]["mean"] == pytest.approx(card["metrics"]["psnr"], rel=1e-5)


def test_data_wait_is_the_share_of_the_window_spent_waiting_for_batches(tmp_path, monkeypatch):
    """Each item made to take 50 ms, four per batch: the wait for batches is most of a tiny model's step. Only the
    second window is read: the first also holds the first forward pass, which may build the CPU kernels."""
    original = EpochItems.__getitem__

    def slow(self, key):
        time.sleep(0.05)
        return original(self, key)

    monkeypatch.setattr(EpochItems, "__getitem__", slow)
    data = _constant_difference_pairs(tmp_path / "data", 200.0)
    assert main(["train", "--config", str(_config(tmp_path, data, iterations=4, log_every=2)), "--quiet",
                 "--set", "data.val="]) == 0
    with open(tmp_path / "runs" / "tiny" / "log.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(row["iteration"]) for row in rows] == [2, 4]
    seconds, wait = float(rows[1]["seconds"]), float(rows[1]["data_wait"])
    assert seconds >= 2 * 4 * 0.05 and 0.3 < wait <= 1.0, rows[1]


def test_resuming_from_a_checkpoint_that_is_not_there_names_it(tmp_path):
    """One process: a missing --resume file is "no such checkpoint", not the several-nodes storage hint."""
    config = load_config(_config(tmp_path, tmp_path))
    missing = tmp_path / "gone" / "last.pt"
    with pytest.raises(InputError) as error:
        Trainer(config, resume=missing)._agreed_resume_path(ProcessInfo())
    assert str(error.value) == f"{missing}: no such checkpoint"
    assert Trainer(config, resume=None)._agreed_resume_path(ProcessInfo()) is None
    missing.parent.mkdir()
    with pytest.raises(InputError) as error:
        Trainer(config, resume=missing.parent)._agreed_resume_path(ProcessInfo())
    assert str(error.value) == f"{missing.parent}: is not a checkpoint file"
    missing.write_bytes(b"")
    assert Trainer(config, resume=str(missing))._agreed_resume_path(ProcessInfo()) == missing


def test_resume_restores_what_the_checkpoint_holds_and_takes_the_configs_settings(tmp_path, capsys):
    """_resume alone, on a checkpoint saved at iteration 4 of 8: iteration, best (iteration as an int), random
    states, EMA shadow (decay from this config), schedule position and this config's learning rate; a checkpoint
    with or without EMA serves a run without or with it; one line says where it resumed."""
    data = _pairs(tmp_path / "data", n_train=4, n_val=1)
    path = _config(tmp_path, data, iterations=8, ema_decay=0.9, val_every=2)
    Trainer(load_config(path), quiet=True, until=4).fit()
    checkpoint = tmp_path / "runs" / "tiny" / "checkpoints" / "last.pt"
    saved = load_checkpoint(checkpoint)
    best_at = saved["best"]["iteration"]
    assert best_at in (2.0, 4.0) and isinstance(best_at, float)  # the checkpoint keeps best's values as floats

    assert saved["config"] == load_config(path).to_dict() and saved["scaler"] is None  # fp32: no grad scaler
    config = load_config(path, ["optim.lr=1e-4", "train.ema_decay=0.5"])
    trainer = Trainer(config, quiet=True)
    run = trainer._build(torch.device("cpu"), load_init=False)
    torch.manual_seed(12345)  # random states the checkpoint's must replace
    capsys.readouterr()
    trainer._resume(run, checkpoint, torch.device("cpu"), ProcessInfo())
    assert capsys.readouterr().out == f"resuming tiny from {checkpoint} at iteration 4\n"
    assert run.iteration == 4 and run.scheduler.last_epoch == 4
    assert run.best == {**saved["best"], "iteration": int(best_at)} and type(run.best["iteration"]) is int
    assert torch.equal(torch.get_rng_state(), saved["rng"][0]["torch"])
    assert run.ema is not None and run.ema.decay == 0.5
    for name, value in saved["ema"]["shadow"].items():
        assert torch.equal(run.ema.shadow[name], value), name
    factor = CosineWithWarmup(8, 0, 1e-6 / 1e-4)(4)
    assert [group["lr"] for group in run.optimizer.param_groups] == pytest.approx([1e-4 * factor])

    without = Trainer(load_config(path, ["train.ema_decay=null"]), quiet=True)
    run = without._build(torch.device("cpu"), load_init=False)
    without._resume(run, checkpoint, torch.device("cpu"), ProcessInfo())  # the checkpoint's EMA is not needed
    assert run.ema is None and run.iteration == 4
    plain = {**saved, "ema": None, "rng": [], "best": None}
    save_checkpoint(plain, tmp_path / "plain.pt")
    run = trainer._build(torch.device("cpu"), load_init=False)
    before = {name: value.clone() for name, value in run.ema.shadow.items()}
    torch.manual_seed(12345)
    expected_rng = torch.get_rng_state()
    trainer._resume(run, tmp_path / "plain.pt", torch.device("cpu"), ProcessInfo())  # no EMA, no random states
    assert all(torch.equal(run.ema.shadow[name], value) for name, value in before.items())
    assert torch.equal(torch.get_rng_state(), expected_rng) and run.best == {"psnr": -math.inf}


def test_resume_refusals_are_whole_and_a_finished_run_resumes_to_nothing(tmp_path, capsys):
    data = _pairs(tmp_path / "data", n_train=4, n_val=1)
    path = str(_config(tmp_path, data, iterations=4))
    assert main(["train", "--config", path, "--quiet"]) == 0
    assert main(["train", "--config", path, "--quiet"]) == 0  # at its end already: nothing to do, no refusal
    checkpoint = tmp_path / "runs" / "tiny" / "checkpoints" / "last.pt"
    capsys.readouterr()
    assert main(["train", "--config", path, "--quiet", "--set", "schedule.iterations=3"]) == 2
    assert capsys.readouterr().err.strip() == \
        f"restore-rwkv: error: {checkpoint}: is at iteration 4, beyond schedule.iterations 3"
    assert main(["train", "--config", path, "--quiet", "--set", "model.args.dim=16"]) == 2
    err = capsys.readouterr().err.strip()
    prefix = f"restore-rwkv: error: {checkpoint}: its weights do not fit this config's model ("
    assert err.startswith(prefix) and err.endswith(")") and "\n" not in err
    detail = err[len(prefix):-1]
    wider = create_model(TINY_MODEL["name"], **{**TINY_MODEL["args"], "dim": 16})
    with pytest.raises(RuntimeError) as torch_error:
        wider.load_state_dict(load_checkpoint(checkpoint)["model"])
    # torch's own message with its whitespace folded to single spaces, cut at 200 characters
    assert len(str(torch_error.value)) > 200 and detail == " ".join(str(torch_error.value).split())[:200]
    assert main(["train", "--config", path, "--quiet", "--set", "name=bad", "--set", "model.args.nope=1"]) == 2
    assert capsys.readouterr().err.strip().startswith("restore-rwkv: error: model: ")
    assert main(["train", "--config", path, "--quiet", "--set", "name=bad2", "--set", "data.balance_tasks=true",
                 "--set", "data.task_weights={pet: 2.0}"]) == 2
    assert capsys.readouterr().err.strip() == \
        "restore-rwkv: error: data: task weights for tasks the data does not have: pet"


def test_gradient_checkpointing_is_switched_on_in_the_built_model(tmp_path):
    for enabled in (False, True):
        config = load_config(_config(tmp_path, tmp_path, gradient_checkpointing=enabled))
        assert Trainer(config)._build(torch.device("cpu")).model.gradient_checkpointing is enabled


def test_the_window_term_adds_its_weight_times_the_l1_inside_the_window(tmp_path):
    """HQ and LQ both inside CT's [-160, 240] HU window and 50 HU apart everywhere: for the identity model the
    window term equals the plain L1, 50 / 4096, so the loss with weight 5 is 6 x 50 / 4096."""
    data = _constant_difference_pairs(tmp_path / "data", 50.0, hq_range=(-100.0, 180.0))
    assert main(["train", "--config", str(_config(tmp_path, data, iterations=2, log_every=1)), "--quiet",
                 "--set", "data.val=", "--set", "model.zero_init_output=true", "--set", "optim.lr=1e-12",
                 "--set", "schedule.min_lr=1e-12", "--set", "train.window_loss_weight=5"]) == 0
    with open(tmp_path / "runs" / "tiny" / "log.csv", newline="") as fh:
        losses = [float(r["loss"]) for r in csv.DictReader(fh)]
    assert losses == pytest.approx([6 * 50.0 / 4096.0] * 2, rel=1e-5)


def test_a_window_as_wide_as_the_range_adds_nothing_to_the_loss(tmp_path):
    """MRI's evaluation window is its whole range: with any window weight the loss is the plain L1."""
    data = _constant_difference_pairs(tmp_path / "data", 100.0, hq_range=(500.0, 3000.0), modality="mri")
    losses = {}
    for weight in (0.0, 5.0):
        folder = tmp_path / f"w{weight:g}"
        folder.mkdir()
        config = _config(folder, data, iterations=2, log_every=1)
        assert main(["train", "--config", str(config), "--quiet", "--set", "data.val=", "--set", "task=mri_sr",
                     "--set", "model.zero_init_output=true", "--set", "optim.lr=1e-12", "--set", "schedule.min_lr=1e-12",
                     "--set", f"train.window_loss_weight={weight}"]) == 0
        with open(folder / "runs" / "tiny" / "log.csv", newline="") as fh:
            losses[weight] = [float(r["loss"]) for r in csv.DictReader(fh)]
    assert losses[0.0][0] > 0 and losses[5.0] == pytest.approx(losses[0.0], rel=1e-6)


def test_without_quiet_the_progress_bar_shows_the_loss_the_rate_and_the_validation_psnr(tmp_path, capsys):
    data = _pairs(tmp_path / "data", n_train=4, n_val=1)
    assert main(["train", "--config", str(_config(tmp_path, data, iterations=6, val_every=6))]) == 0
    final = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert final.startswith("tiny: 100%") and "6/6" in final
    postfix = dict(part.split("=") for part in final.split("[")[-1].rstrip("]").split(", ")[-3:])
    assert list(postfix) == ["loss", "lr", "val_psnr"], final
    assert len(postfix["loss"].split(".")[1]) == 4 and "e-" in postfix["lr"] and len(postfix["val_psnr"].split(".")[1]) == 2


def test_zeroing_the_output_is_refused_word_for_word_where_it_would_not_give_the_identity():
    with pytest.raises(InputError) as error:
        zero_output_layer(torch.nn.Sequential(torch.nn.Conv2d(1, 1, 3)))
    assert str(error.value) == "model.zero_init_output: Sequential has no output convolution"
    class OutputOnly(torch.nn.Module):  # an output convolution, and nothing that says it has a global residual
        def __init__(self) -> None:
            super().__init__()
            self.output = torch.nn.Conv2d(1, 1, 3)

    with pytest.raises(InputError, match="the model has no global residual"):
        zero_output_layer(OutputOnly())
    two = create_model("restore_rwkv_light", dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, out_channels=2)
    with pytest.raises(InputError) as error:
        zero_output_layer(two)
    assert str(error.value) == ("model.zero_init_output: the model has no global residual (in_channels != "
                                "out_channels), so a zeroed output would be a constant, not the identity")


def test_deterministic_runs_ask_torch_for_deterministic_algorithms(tmp_path):
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.backends.cudnn.benchmark, torch.get_num_threads())
    try:
        torch.backends.cudnn.benchmark = True
        Trainer(load_config(_config(tmp_path, tmp_path, deterministic=True)))._seed()
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
        assert torch.backends.cudnn.benchmark is False
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.benchmark = before[2]
        torch.set_num_threads(before[3])  # _seed set the config's 1 thread


def test_a_run_on_simulated_pairs_exports_a_card_with_their_modality(tmp_path):
    """HQ files degraded on the fly (a dataset with one convention, no records): the card names its modality."""
    hq = tmp_path / "hq"
    hq.mkdir()
    rng = np.random.default_rng(2)
    for k in range(3):
        np.save(hq / f"s{k}.npy", np.where(rng.random((24, 24)) > 0.5, 300.0, -900.0).astype(np.float32))
    config = _config(tmp_path, tmp_path, iterations=2)
    assert main(["train", "--config", str(config), "--quiet", "--set",
                 "data.train={hq: [" + str(hq) + "], simulate: ct_denoise, degradation: {incident_flux: 3000}}",
                 "--set", "data.val=", "--set", "data.batch_size=3"]) == 0
    card = json.loads((tmp_path / "runs" / "tiny" / "model.json").read_text())
    assert list(card["conventions"]) == ["ct"]
