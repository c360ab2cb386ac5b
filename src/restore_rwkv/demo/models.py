"""The demo's models, in one table: the shipped demonstration weights, the task and demo config each was
trained with. The demo run, the results report (``benchmarks/results.py``) and the script that ships them
(``scripts/ship_demo_models.py``) all read it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from restore_rwkv.modality import ALL_IN_ONE


@dataclass(frozen=True)
class DemoModel:
    """A shipped demonstration model: its name (``--weights NAME``), task and training config."""

    name: str
    task: str
    config: str


DEMO_MODELS: tuple[DemoModel, ...] = (
    DemoModel("ct_denoise_light", "ct_denoise", "demo_ct_denoise"),
    DemoModel("mri_sr_x4_light", "mri_sr", "demo_mri_sr_x4_finetune"),
    DemoModel("pet_synthesis_light", "pet", "demo_pet_synthesis"),
    DemoModel("all_in_one_light", ALL_IN_ONE, "demo_all_in_one_finetune"),
)
# task -> its single-task model; every task is also restored by the all-in-one model
SINGLE_TASK = {m.task: m.name for m in DEMO_MODELS if m.task != ALL_IN_ONE}
ALL_IN_ONE_MODEL = next(m.name for m in DEMO_MODELS if m.task == ALL_IN_ONE)
TASK_TITLES = {"ct_denoise": "CT denoising (quarter dose)", "mri_sr": "MRI super-resolution x4",
               "pet": "PET synthesis (dose / 12)"}


def base_config(config: str) -> str | None:
    """The demo config whose run ``config`` fine-tunes (its ``model.init_weights`` names ``runs/<that config>``),
    else None (from the identity, or from a shipped model)."""
    from restore_rwkv.engine.config import load_config

    loaded = load_config(config)
    init = loaded.model.init_weights
    parts = Path(init).parts if init else ()
    base = parts[1] if len(parts) == 2 and parts[0] == "runs" else None
    if base == loaded.name:
        raise ValueError(f"config {loaded.name} fine-tunes its own run")
    return base


def training_chain(config: str) -> list[str]:
    """The demo configs trained in turn to reproduce the run of ``config``: its base run's chain, then itself."""
    base = base_config(config)
    return [*training_chain(base), config] if base else [config]
