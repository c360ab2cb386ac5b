"""scripts/ship_demo_models.py: the reproduce commands it writes into cards and docs/models.md."""

import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import ship_demo_models as ship  # noqa: E402

import restore_rwkv  # noqa: E402
from restore_rwkv.demo.models import DEMO_MODELS, base_config  # noqa: E402
from restore_rwkv.engine.config import load_config  # noqa: E402


def test_a_fine_tune_reproduces_through_its_base_run():
    assert base_config("demo_ct_denoise") is None  # from the identity
    assert base_config("demo_mri_sr_x4_finetune") == "demo_mri_sr_x4"
    assert ship.train_commands("demo_mri_sr_x4_finetune") == (
        "restore-rwkv train --config demo_mri_sr_x4 --out runs && "
        "restore-rwkv train --config demo_mri_sr_x4_finetune --out runs")
    for model in DEMO_MODELS:  # each command trains the run the next one starts from, ending with the model's own
        configs = [c.split("--config ")[1].split()[0] for c in ship.train_commands(model.config).split(" && ")]
        assert configs[-1] == model.config
        for earlier, later in zip(configs, configs[1:]):
            assert load_config(later).model.init_weights == f"runs/{earlier}"


def test_a_config_that_fine_tunes_its_own_run_is_refused(tmp_path):
    config = yaml.safe_load((Path(restore_rwkv.__file__).parent / "configs" / "demo_mri_sr_x4_finetune.yaml").read_text())
    config["name"], config["model"]["init_weights"] = "loop", "runs/loop"
    path = tmp_path / "loop.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError, match="loop fine-tunes its own run"):
        base_config(str(path))


def test_a_fine_tune_of_a_fine_tune_counts_every_earlier_run(tmp_path):
    assert ship.train_commands("demo_all_in_one_finetune") == " && ".join(
        f"restore-rwkv train --config {c} --out runs"
        for c in ("demo_mri_sr_x4", "demo_all_in_one", "demo_all_in_one_finetune"))
    (tmp_path / "demo_all_in_one").mkdir()  # its log: 25 + 35 s of training
    (tmp_path / "demo_all_in_one" / "log.csv").write_text(
        "iteration,loss,lr,seconds,data_wait,val_l1,val_psnr,val_ssim\n25,0.1,1e-4,25.0,0,,,\n50,0.1,1e-4,35.0,0,1,30,0.9\n")
    # demo_mri_sr_x4 has no log here: its time is the base time the MRI model's entry recorded
    shipped = {"mri_sr_x4_light": {"name": "mri_sr_x4_light", "run": "runs/demo_mri_sr_x4_finetune",
                                   "train_seconds": 300.0, "base_train_seconds": 5400.0}}
    seconds = ship.earlier_runs_seconds("demo_all_in_one_finetune", tmp_path, shipped)
    assert seconds == 5400.0 + 60.0
    assert ship.earlier_runs_seconds("demo_all_in_one_finetune", tmp_path, {}) is None  # the MRI run's time unknown
    # no logs at all: what shipping this same run recorded before stands; an entry of a config gone is ignored
    again = {"all_in_one_light": {"name": "all_in_one_light", "run": "runs/demo_all_in_one_finetune",
                                  "train_seconds": 1200.0, "base_train_seconds": 7437.0},
             "old": {"name": "old", "run": "runs/demo_no_longer_shipped", "train_seconds": 1.0}}
    assert ship.earlier_runs_seconds("demo_all_in_one_finetune", tmp_path / "empty", again) == 7437.0
    assert ship.earlier_runs_seconds("demo_ct_denoise", tmp_path, shipped) is None  # from the identity
    assert ship._base_time("demo_all_in_one_finetune", {"base_train_seconds": seconds}) == (
        "; after the 91 min of the demo_mri_sr_x4 and demo_all_in_one runs it fine-tunes")
    assert ship._base_time("demo_mri_sr_x4_finetune", {}) == "; the demo_mri_sr_x4 run it fine-tunes not counted"
