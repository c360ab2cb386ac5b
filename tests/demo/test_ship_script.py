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
