"""The trainer: configs, a short run that learns, exact resume, the data stream, and DDP over gloo."""

from __future__ import annotations

import csv
import json
import os
import socket

import numpy as np
import pytest
import torch
import yaml

from restore_rwkv.cli import main
from restore_rwkv.data.datasets import PairRecord, write_manifest
from restore_rwkv.engine.config import load_config, shipped_configs
from restore_rwkv.engine.data import EndlessEpochSampler, EpochItems, build_dataset
from restore_rwkv.engine.state import load_checkpoint
from restore_rwkv.engine.trainer import LOG_FIELDS, Trainer, run_finished, run_progress
from restore_rwkv.models import create_model, load_model

TINY_MODEL = {"name": "restore_rwkv_light", "args": {"dim": 8, "num_blocks": [1, 1, 1, 1], "num_refinement_blocks": 1}}


def _pairs(root, n_train=12, n_val=3, size=24, seed=0):
    """CT-like pairs: smooth HQ structures, LQ = HQ + noise (HU), written in the prepare layout + manifest."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    records = []
    for split, n in (("train", n_train), ("validation", n_val)):
        for k in range(n):
            hq = (-1000 + 1100 * ((yy - rng.random()) ** 2 + (xx - rng.random()) ** 2 < 0.15)
                  + 300 * (xx > rng.random())).astype(np.float32)
            lq = (hq + rng.normal(0, 150, hq.shape)).astype(np.float32)
            for kind, image in (("LQ", lq), ("HQ", hq)):
                folder = root / "CT" / split / kind
                folder.mkdir(parents=True, exist_ok=True)
                np.save(folder / f"p{k:02d}.npy", image)
            records.append(PairRecord(str(root / "CT" / split / "LQ" / f"p{k:02d}.npy"),
                                      str(root / "CT" / split / "HQ" / f"p{k:02d}.npy"), "ct", "ct_denoise", split))
    write_manifest(root / "manifest.csv", records)
    return root


def _config(tmp_path, data_root, iterations=12, **train):
    text = {
        "name": "tiny", "task": "ct_denoise", "out": str(tmp_path / "runs"), "model": TINY_MODEL,
        "data": {"train": {"root": str(data_root), "split": "train"},
                 "val": {"root": str(data_root), "split": "validation"},
                 "patch_size": 16, "batch_size": 4, "workers": 0},
        "optim": {"lr": 2e-3},
        "schedule": {"iterations": iterations},
        "train": {"val_every": 6, "save_every": 6, "log_every": 3, "threads": 1, **train},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(text))
    return path


# ----------------------------------------------------------------------------- configs
def test_every_shipped_config_validates():
    names = shipped_configs()
    assert {"mri_sr_x4", "ct_denoise", "pet_synthesis", "all_in_one"} <= set(names)
    for name in names:
        config = load_config(name)
        assert config.name and config.data.train
    paper = load_config("ct_denoise")
    assert (paper.model.name, paper.data.patch_size, paper.data.batch_size, paper.optim.lr, paper.optim.betas,
            paper.schedule.iterations, paper.schedule.min_lr, paper.train.val_every) == \
        ("restore_rwkv", 128, 4, 2e-4, (0.9, 0.999), 300_000, 1e-6, 1000)


def test_overrides_land_in_the_saved_config(tmp_path):
    data = _pairs(tmp_path / "data")
    assert main(["train", "--config", str(_config(tmp_path, data, iterations=3)), "--quiet",
                 "--set", "optim.lr=5e-4", "--set", "train.val_every=2", "--set", "data.val.max_images=2"]) == 0
    saved = yaml.safe_load((tmp_path / "runs" / "tiny" / "config.yaml").read_text())
    assert saved["optim"]["lr"] == 5e-4 and saved["train"]["val_every"] == 2 and saved["data"]["val"]["max_images"] == 2
    assert saved["schedule"]["iterations"] == 3
    assert saved["model"] == {**TINY_MODEL, "zero_init_output": False, "init_weights": None}


@pytest.mark.parametrize("override, fragments", [
    ("optim.lrr=1", ["unknown key optim.lrr", "valid keys here: lr, betas, weight_decay, grad_clip"]),
    ("data.batch_size=four", ["data.batch_size", "'four'"]),
    ("train.precision=fp8", ["train.precision", "'fp8'"]),
    ("optim.lr=-1", ["optim.lr", "greater than 0"]),
])
def test_a_wrong_key_or_value_is_one_line(tmp_path, capsys, override, fragments):
    data = _pairs(tmp_path / "data", n_train=2, n_val=1)
    assert main(["train", "--config", str(_config(tmp_path, data)), "--quiet", "--set", override]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    assert not (tmp_path / "runs").exists()


def test_unknown_config_names_the_shipped_ones(capsys):
    assert main(["train", "--config", "no_such_recipe", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "ct_denoise" in err and "mri_sr_x4" in err


# ----------------------------------------------------------------------------- the data stream
def test_the_sample_stream_resumes_mid_epoch_and_shards_by_rank():
    full = EndlessEpochSampler(10, seed=3)
    stream = [x for _, x in zip(range(35), full)]
    assert [x for _, x in zip(range(20), EndlessEpochSampler(10, seed=3, start=15))] == stream[15:35]
    assert sorted(i for e, i in stream[:10]) == list(range(10)) and {e for e, _ in stream[10:20]} == {1}
    ranks = [EndlessEpochSampler(10, seed=3, rank=r, world_size=2) for r in range(2)]
    first = [[i for _, (e, i) in zip(range(5), s)] for s in ranks]
    assert sorted(first[0] + first[1]) == list(range(10))  # one epoch split, nothing twice


def test_each_item_gets_its_epochs_patch_also_in_worker_processes(tmp_path):
    data = _pairs(tmp_path / "data", n_train=6, n_val=1)
    config = load_config(_config(tmp_path, data))
    dataset = build_dataset(config.data.train, 16, seed=0)
    stream = [key for _, key in zip(range(16), EndlessEpochSampler(len(dataset), seed=0))]  # epochs 0, 1, 2
    expected = []
    for epoch, index in stream:
        dataset.transform.set_epoch(epoch)
        expected.append(dataset[index]["lq"])
    first = {i: expected[k] for k, (e, i) in enumerate(stream) if e == 0}
    assert any(not torch.equal(expected[k], first[i]) for k, (e, i) in enumerate(stream) if e == 1)
    for workers in (0, 2):
        loader = torch.utils.data.DataLoader(EpochItems(build_dataset(config.data.train, 16, seed=0)), batch_size=4,
                                             num_workers=workers, sampler=EndlessEpochSampler(len(dataset), seed=0))
        it = iter(loader)
        got = torch.cat([next(it)["lq"] for _ in range(4)])
        assert torch.equal(got, torch.stack(expected)), workers


# ----------------------------------------------------------------------------- training
def _initial_val_l1(config, dataset):
    torch.manual_seed(config.train.seed)
    model = create_model(config.model.name, **config.model.args).eval()
    with torch.no_grad():
        return float(np.mean([float((model(dataset[i]["lq"][None]) - dataset[i]["hq"][None]).abs().mean())
                              for i in range(len(dataset))]))


def test_a_short_run_learns_and_writes_last_best_and_weights(tmp_path):
    data = _pairs(tmp_path / "data")
    config = load_config(_config(tmp_path, data, iterations=36), ["train.val_every=12", "train.save_every=12"])
    before = _initial_val_l1(config, build_dataset(config.data.val, None, 0))
    result = Trainer(config, quiet=True).fit()
    run = tmp_path / "runs" / "tiny"
    assert result["last"]["l1"] < 0.5 * before, (result, before)
    assert (run / "checkpoints" / "last.pt").exists() and (run / "checkpoints" / "best.pt").exists()
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    assert best["best"]["psnr"] == pytest.approx(result["best"]["psnr"]) and best["iteration"] == result["best"]["iteration"]
    model, card = load_model(run / "model.safetensors")
    assert card.task == "ct_denoise" and card.conventions["ct"]["eval_window"] == [-160.0, 240.0]
    assert card.iterations == result["best"]["iteration"] and card.metrics["psnr"] == pytest.approx(result["best"]["psnr"])
    reference = create_model(config.model.name, **config.model.args)
    reference.load_state_dict(best["model"])
    x = build_dataset(config.data.val, None, 0)[0]["lq"][None]
    with torch.no_grad():
        assert torch.equal(model(x), reference.eval()(x))  # the exported weights are the best checkpoint's
    # validation scores as `evaluate` does by default (24² slices in tiles of the 16² training patch)
    assert main(["evaluate", "--weights", str(run / "model.safetensors"), "--data", str(data), "--split", "validation",
                 "--out", str(tmp_path / "eval"), "--device", "cpu", "--quiet"]) == 0
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())["per_task"]["ct_denoise"]
    assert summary["psnr_out"]["mean"] == pytest.approx(card.metrics["psnr"], rel=1e-5)
    with open(run / "log.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["iteration"]) for r in rows] == list(range(3, 37, 3))
    assert [r["val_psnr"] != "" for r in rows] == [int(r["iteration"]) % 12 == 0 for r in rows]


@pytest.mark.parametrize("ema", [None, 0.9])
def test_a_resumed_run_is_bit_identical_to_an_uninterrupted_one(tmp_path, ema):
    data = _pairs(tmp_path / "data")
    extra = {"ema_decay": ema} if ema else {}
    whole = load_config(_config(tmp_path, data, iterations=10, **extra), ["name=whole"])
    Trainer(whole, quiet=True).fit()
    pieces = load_config(_config(tmp_path, data, iterations=10, **extra), ["name=pieces"])
    Trainer(pieces, quiet=True, until=4).fit()
    assert load_checkpoint(tmp_path / "runs" / "pieces" / "checkpoints" / "last.pt")["iteration"] == 4
    Trainer(pieces, quiet=True, until=7).fit()  # a second sitting
    Trainer(pieces, quiet=True).fit()  # the last one, resumed automatically
    a = load_checkpoint(tmp_path / "runs" / "whole" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "runs" / "pieces" / "checkpoints" / "last.pt")
    assert a["iteration"] == b["iteration"] == 10
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    for key, value in a["optimizer"]["state"].items():
        assert torch.equal(value["exp_avg_sq"], b["optimizer"]["state"][key]["exp_avg_sq"])
    if ema:
        for name in a["ema"]["shadow"]:
            assert torch.equal(a["ema"]["shadow"][name], b["ema"]["shadow"][name]), name


def test_starting_fresh_over_an_earlier_run_is_refused(tmp_path, capsys):
    data = _pairs(tmp_path / "data", n_train=4, n_val=1)
    path = _config(tmp_path, data, iterations=2)
    assert main(["train", "--config", str(path), "--quiet"]) == 0
    assert main(["train", "--config", str(path), "--quiet", "--resume", "none"]) == 2
    assert "holds a checkpoint" in capsys.readouterr().err


# ----------------------------------------------------------------------------- DDP over gloo
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, config_path: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    trainer = Trainer(load_config(config_path, ["name=ddp"]), quiet=True)
    trainer.fit()
    torch.save({k: v.detach().clone() for k, v in trainer.model.state_dict().items()}, f"{out}/rank{rank}.pt")


def test_two_gloo_processes_train_like_one_process_and_only_rank_0_writes(tmp_path):
    data = _pairs(tmp_path / "data", n_train=8, n_val=3)
    path = str(_config(tmp_path, data, iterations=6))
    torch.multiprocessing.spawn(_ddp_worker, args=(2, _free_port(), path, str(tmp_path)), nprocs=2, join=True)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name  # identical parameters on every rank
    single = Trainer(load_config(path, ["name=single"]), quiet=True)
    single.fit()
    for name, value in single.model.state_dict().items():  # same samples per step, gradients averaged
        torch.testing.assert_close(rank0[name], value, rtol=1e-4, atol=1e-5)
    run = tmp_path / "runs" / "ddp"
    with open(run / "log.csv") as fh:
        assert [int(r["iteration"]) for r in csv.DictReader(fh)] == [3, 6]  # one writer, no duplicate rows
    assert len(load_checkpoint(run / "checkpoints" / "last.pt")["rng"]) == 2  # every rank's random state
    assert sorted(p.name for p in run.iterdir() if p.name != "tb") == ["checkpoints", "config.yaml", "log.csv",
                                                                       "model.json", "model.safetensors"]
    if (run / "tb").exists():
        assert len(list((run / "tb").iterdir())) == 1  # one event file: rank 0's


def test_ema_follows_its_definition():
    from restore_rwkv.engine.state import ExponentialMovingAverage

    model = torch.nn.Linear(2, 1)
    ema = ExponentialMovingAverage(model, decay=0.5)
    expected = model.weight.detach().clone().double()
    for n in range(4):
        with torch.no_grad():
            model.weight.add_(1.0)
        d = min(0.5, (1 + n) / (10 + n))
        expected = d * expected + (1 - d) * model.weight.detach().double()
        ema.update(model)
    torch.testing.assert_close(ema.shadow["weight"].double(), expected, rtol=0, atol=1e-6)
    copy = torch.nn.Linear(2, 1)
    ema.copy_to(copy)
    assert torch.equal(copy.weight, ema.shadow["weight"]) and ema.state_dict()["updates"] == 4


def test_tensorboard_gets_scalars_and_a_validation_picture(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = _pairs(tmp_path / "data", n_train=4, n_val=2)
    Trainer(load_config(_config(tmp_path, data, iterations=6)), quiet=True).fit()
    events = EventAccumulator(str(tmp_path / "runs" / "tiny" / "tb"), size_guidance={"images": 0})
    events.Reload()
    assert {"loss", "lr", "val_psnr", "val_ssim", "val_l1"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("val_psnr")] == [6]
    (image,) = events.Images("validation/lq_restored_hq")
    assert (image.width, image.height) == (3 * 24, 24)  # LQ | restored | HQ of the first validation slice


def test_gradient_checkpointing_and_bf16_run_the_same_recipe(tmp_path):
    data = _pairs(tmp_path / "data", n_train=4, n_val=1)
    runs = {}
    for name, extra in (("plain", []), ("checkpointed", ["train.gradient_checkpointing=true"]),
                        ("bf16", ["train.precision=bf16"])):
        trainer = Trainer(load_config(_config(tmp_path, data, iterations=3), [f"name={name}", *extra]), quiet=True)
        trainer.fit()
        runs[name] = trainer.model.state_dict()
    for key, value in runs["plain"].items():
        assert torch.equal(value, runs["checkpointed"][key]), key  # recomputation changes nothing on CPU
    moved = [key for key, value in runs["plain"].items() if value.is_floating_point()
             and not torch.equal(value, runs["bf16"][key])]
    assert moved and all(torch.isfinite(runs["bf16"][k]).all() for k in moved)  # bf16 trained, finite
    for key in moved:
        torch.testing.assert_close(runs["bf16"][key], runs["plain"][key], rtol=0.1, atol=2e-2)


def test_hq_files_degraded_on_the_fly_give_fresh_noise_each_epoch(tmp_path):
    hq = tmp_path / "hq"
    hq.mkdir()
    rng = np.random.default_rng(1)
    for k in range(3):
        image = np.full((24, 24), -1000.0, np.float32)
        image[4:20, 4:20] = 40.0 + 300.0 * (rng.random((16, 16)) > 0.7)
        np.save(hq / f"s{k}.npy", image)
    config = load_config(_config(tmp_path, tmp_path, iterations=4),
                         ["data.train={hq: [" + str(hq) + "], simulate: ct_denoise, degradation: {incident_flux: 3000}}",
                          "data.val=", "data.batch_size=3"])
    dataset = build_dataset(config.data.train, None, seed=0)
    first = dataset[0]
    dataset.set_epoch(1)
    again = dataset[0]
    assert torch.equal(first["hq"], again["hq"]) and not torch.equal(first["lq"], again["lq"])
    assert first["task"] == "ct_denoise" and first["modality"] == "ct"
    Trainer(config, quiet=True).fit()
    assert (tmp_path / "runs" / "tiny" / "model.safetensors").exists()


def test_resume_takes_this_configs_optimiser_settings_and_rewrites_the_log(tmp_path):
    data = _pairs(tmp_path / "data", n_train=4, n_val=1)
    path = _config(tmp_path, data, iterations=8)
    Trainer(load_config(path, ["train.log_every=1"]), quiet=True, until=6).fit()
    log = tmp_path / "runs" / "tiny" / "log.csv"
    with open(log) as fh:
        assert [int(r["iteration"]) for r in csv.DictReader(fh)] == list(range(1, 7))
    checkpoint = tmp_path / "runs" / "tiny" / "checkpoints" / "last.pt"
    state = load_checkpoint(checkpoint)
    state["iteration"] = state["scheduler"]["last_epoch"] = 4  # as if killed after saving at 4, logging up to 6
    torch.save(state, checkpoint)
    trainer = Trainer(load_config(path, ["train.log_every=1", "optim.lr=1e-4"]), quiet=True)
    trainer.fit()
    with open(log) as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["iteration"]) for r in rows] == list(range(1, 9))  # no duplicate rows
    from restore_rwkv.engine.trainer import CosineWithWarmup

    factor = CosineWithWarmup(8, 0, 1e-6 / 1e-4)
    for r in rows[4:]:  # the resumed steps ran with this config's learning rate
        assert float(r["lr"]) == pytest.approx(1e-4 * factor(int(r["iteration"]) - 1), rel=1e-4)


def test_stopping_before_any_validation_or_beyond_the_schedule(tmp_path, capsys):
    data = _pairs(tmp_path / "data", n_train=4, n_val=1)
    path = str(_config(tmp_path, data, iterations=8))
    assert main(["train", "--config", path, "--quiet", "--until", "2"]) == 0
    out = capsys.readouterr().out
    assert "2 iterations" in out and "no weights exported yet" in out
    assert main(["train", "--config", path, "--quiet"]) == 0
    assert main(["train", "--config", path, "--quiet", "--set", "schedule.iterations=4"]) == 2
    assert "beyond schedule.iterations 4" in capsys.readouterr().err


def test_schedule_and_config_holes_are_refused(tmp_path, capsys):
    data = _pairs(tmp_path / "data", n_train=2, n_val=1)
    path = str(_config(tmp_path, data))
    for override, fragment in (("schedule.warmup=50", "warmup (50) must be below iterations"),
                               ("schedule.min_lr=1", "above optim.lr"),
                               ("data.task_weights={pet: 2.0}", "task_weights needs balance_tasks")):
        assert main(["train", "--config", path, "--quiet", "--set", override]) == 2
        assert fragment in capsys.readouterr().err
    balanced = ["--set", "data.balance_tasks=true", "--set"]
    for weights, fragment in (("{pet: .inf}", "positive and finite"),
                              ("{pet: 2.0}", "task weights for tasks the data does not have: pet")):  # CT-only data
        assert main(["train", "--config", path, "--quiet", *balanced, f"data.task_weights={weights}"]) == 2
        assert fragment in capsys.readouterr().err
        assert not (tmp_path / "runs" / "tiny" / "checkpoints").exists()  # refused before training began
    config = load_config(path, ["data.val=", "data.val.root=" + str(data), "name=2024"])
    assert config.data.val.root == str(data) and config.name == "2024"


def test_zero_init_output_starts_training_from_the_identity():
    from restore_rwkv.engine.config import load_config
    from restore_rwkv.engine.trainer import zero_output_layer
    from restore_rwkv.models.registry import create_model
    from restore_rwkv.utils.errors import InputError

    model = create_model("restore_rwkv_light", dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1).eval()
    x = torch.rand(2, 1, 24, 20)
    assert not torch.allclose(model(x), x, atol=1e-3)
    zero_output_layer(model)
    torch.testing.assert_close(model(x), x, atol=1e-6, rtol=0)  # the global residual returns the input
    with pytest.raises(InputError, match="no output convolution"):
        zero_output_layer(torch.nn.Sequential(torch.nn.Conv2d(1, 1, 3)))
    two_outputs = create_model("restore_rwkv_light", dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1,
                               out_channels=2)
    with pytest.raises(InputError, match="no global residual"):  # zeroed, it would be a constant, not the identity
        zero_output_layer(two_outputs)
    assert load_config("demo_ct_denoise").model.zero_init_output is True
    assert load_config("ct_denoise").model.zero_init_output is False  # the paper recipe keeps its initialisation


def test_window_bounds_are_each_modalitys_evaluation_window_in_network_units(tmp_path):
    from restore_rwkv.modality import get_convention
    from restore_rwkv.engine.trainer import window_bounds

    low, high = window_bounds(["ct", "pet", "ct"], torch.device("cpu"))
    assert low.shape == high.shape == (3, 1, 1, 1)
    ct = get_convention("ct")
    (n0, n1), (w0, w1) = ct.norm_range, ct.eval_window
    assert float(low[0]) == pytest.approx((w0 - n0) / (n1 - n0)) and float(high[2]) == pytest.approx((w1 - n0) / (n1 - n0))
    assert float(low[0]) == pytest.approx((-160 + 1024) / 4096)  # the paper's CT window [-160, 240] HU
    pet = get_convention("pet")
    assert float(high[1]) == pytest.approx((pet.eval_window[1] - pet.norm_range[0]) / (pet.norm_range[1] - pet.norm_range[0]))
    assert load_config("demo_ct_denoise").train.window_loss_weight > 0
    assert load_config("ct_denoise").train.window_loss_weight == 0  # the paper recipe: plain L1
    data = _pairs(tmp_path / "data")
    first = {}
    for weight in (0.0, 5.0):  # same seed, same first batch: the window term adds to the first step's loss
        folder = tmp_path / f"w{weight:g}"
        folder.mkdir()
        assert main(["train", "--config", str(_config(folder, data, iterations=3, window_loss_weight=weight)),
                     "--quiet"]) == 0
        with open(folder / "runs" / "tiny" / "log.csv") as fh:
            first[weight] = float(next(csv.DictReader(fh))["loss"])
    assert np.isfinite(first[5.0]) and first[5.0] > first[0.0] * 1.05


def test_init_weights_fine_tunes_from_a_weights_file_and_refuses_bad_ones(tmp_path, capsys):
    from restore_rwkv.models import save_state_dict

    data = _pairs(tmp_path / "data", n_train=4, n_val=1)
    torch.manual_seed(123)
    start = create_model(TINY_MODEL["name"], **TINY_MODEL["args"])
    weights = save_state_dict(start, tmp_path / "start.safetensors")
    path = str(_config(tmp_path, data, iterations=1))
    # with lr 1e-12 the one Adam step moves no weight by more than 1e-11: the run's weights are the file's
    assert main(["train", "--config", path, "--quiet", "--set", f"model.init_weights={weights}",
                 "--set", "optim.lr=1e-12", "--set", "schedule.min_lr=1e-12"]) == 0
    trained, _ = load_model(tmp_path / "runs" / "tiny")
    for name, value in start.state_dict().items():
        torch.testing.assert_close(trained.state_dict()[name], value, rtol=0, atol=1e-9, msg=name)
    # a resumed run takes its weights from its checkpoint: the start file is not read again (here: gone)
    weights.unlink()
    assert main(["train", "--config", str(_config(tmp_path, data, iterations=2)), "--quiet", "--set",
                 f"model.init_weights={weights}", "--set", "optim.lr=1e-12", "--set", "schedule.min_lr=1e-12"]) == 0
    assert run_progress(tmp_path / "runs" / "tiny")[0] == 2
    wrong = save_state_dict(create_model("restore_rwkv_light"), tmp_path / "wrong.safetensors")
    assert main(["train", "--config", path, "--quiet", "--set", "name=wrong", "--set",
                 f"model.init_weights={wrong}"]) == 2
    assert "wrong.safetensors: weights do not fit" in capsys.readouterr().err
    assert main(["train", "--config", path, "--quiet", "--set", "name=both", "--set", f"model.init_weights={weights}",
                 "--set", "model.zero_init_output=true"]) == 2
    assert "not both" in capsys.readouterr().err


def test_run_progress_reads_the_last_iteration_and_the_summed_training_seconds(tmp_path):
    assert run_progress(tmp_path) == (0, 0.0)
    rows = [{"iteration": 3, "loss": 0.5, "seconds": 1.5}, {"iteration": 6, "seconds": 2.25, "val_psnr": 30.0},
            {"iteration": 9, "seconds": ""}]
    with open(tmp_path / "log.csv", "w", newline="") as fh:
        out = csv.DictWriter(fh, fieldnames=LOG_FIELDS)
        out.writeheader()
        out.writerows({k: r.get(k, "") for k in LOG_FIELDS} for r in rows)
    assert run_progress(tmp_path) == (9, 3.75)
    assert not run_finished(tmp_path, 9)  # logged to the end, but no weights exported
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert run_finished(tmp_path, 9) and not run_finished(tmp_path, 10)


def test_train_list_names_the_shipped_configs_and_models(capsys):
    from restore_rwkv.cli import main
    from restore_rwkv.engine.config import shipped_configs
    from restore_rwkv.models.card import shipped_models

    assert main(["train", "--list"]) == 0
    printed = capsys.readouterr().out
    listed = {line.split()[0] for line in printed.splitlines() if line.startswith("  ")}
    assert listed == set(shipped_configs()) | set(shipped_models()) and "demo_ct_denoise" in listed
    assert main(["train"]) == 2  # no config and no --list: one line that points to --list
    assert "--list" in capsys.readouterr().err


def test_the_exported_weights_are_the_ema_weights_of_the_best_checkpoint(tmp_path):
    """With EMA on, model.safetensors holds the EMA shadow at the best validation, not the raw weights
    (a trainer that exported the raw weights passed every other test)."""
    data = _pairs(tmp_path / "data")
    config = load_config(_config(tmp_path, data, iterations=12, ema_decay=0.9))
    result = Trainer(config, quiet=True).fit()
    best = load_checkpoint(tmp_path / "runs" / "tiny" / "checkpoints" / "best.pt")
    assert best["iteration"] == result["best"]["iteration"]
    model, _ = load_model(tmp_path / "runs" / "tiny" / "model.safetensors")
    exported = dict(model.named_parameters())  # (derived buffers such as fused kernels are rebuilt on load)
    shadow = best["ema"]["shadow"]
    assert exported and all(torch.equal(value, shadow[name].to(value.dtype)) for name, value in exported.items())
    assert any(not torch.equal(best["model"][name], shadow[name]) for name in exported)  # EMA differs from raw
