"""Run configurations: YAML files validated against a schema (pydantic), with dotted overrides.

``load_config("ct_denoise")`` reads a config shipped in the package (``restore_rwkv/configs``),
``load_config("my.yaml", ["optim.lr=1e-4"])`` a file with overrides. A wrong key or value is
an :class:`~restore_rwkv.utils.errors.InputError` of one line that names it and lists the
valid keys. The resolved config is what the trainer writes into its run folder.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from restore_rwkv.modality import ALL_IN_ONE, TASKS
from restore_rwkv.utils.errors import InputError

TaskName = Literal[tuple(TASKS)]  # one task (modality.TASKS)
TASK_NAMES = (*TASKS, ALL_IN_ONE)  # what a run trains for


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, coerce_numbers_to_str=True)


class ModelConfig(_Strict):
    """The network: a registry name of ``restore_rwkv.models`` and constructor overrides."""

    name: str = "restore_rwkv"
    args: dict[str, Any] = Field(default_factory=dict)
    # Start from the identity: zero the output convolution, so the global residual returns the input
    # and training learns only the correction (much faster when it is small, e.g. CT noise in [0, 1] units).
    zero_init_output: bool = False
    # Fine-tune: start from these weights (a .safetensors/.pt file, a folder with a card, or a shipped
    # model's name), loaded strictly; a resumed run continues from its checkpoint instead.
    init_weights: Optional[str] = None

    @model_validator(mode="after")
    def _one_start(self) -> ModelConfig:
        if self.init_weights and self.zero_init_output:
            raise ValueError("give init_weights or zero_init_output, not both (the second would erase the first)")
        return self


class DataSource(_Strict):
    """Where pairs come from: a prepared root (``prepare`` layout), a manifest, or HQ files degraded on the fly."""

    root: Optional[str] = None
    manifest: Optional[str] = None
    hq: Optional[list[str]] = None
    split: str = "train"
    tasks: Optional[list[TaskName]] = None
    simulate: Optional[TaskName] = None
    degradation: dict[str, float] = Field(default_factory=dict)
    max_images: Optional[int] = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _one_source(self) -> DataSource:
        given = [k for k in ("root", "manifest", "hq") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(f"give exactly one of root, manifest, hq (got {', '.join(given) or 'none'})")
        if self.hq and not self.simulate:
            raise ValueError("hq files need simulate: the task whose degradation makes their LQ")
        return self


class DataConfig(_Strict):
    """Training and validation data and how they are loaded."""

    train: DataSource
    val: Optional[DataSource] = None
    patch_size: int = Field(default=128, ge=8)
    batch_size: int = Field(default=4, ge=1, description="global batch, split over the processes")
    workers: int = Field(default=2, ge=0)
    balance_tasks: bool = False
    task_weights: Optional[dict[TaskName, float]] = Field(
        default=None, description="with balance_tasks: each task's relative share of the draws (default 1 each)")

    @model_validator(mode="after")
    def _weights_need_balance(self) -> "DataConfig":
        if self.task_weights is not None and not self.balance_tasks:
            raise ValueError("task_weights needs balance_tasks: true")
        if self.task_weights:
            from restore_rwkv.data.datasets import check_task_weights  # the sampler's own rule (import only when used)

            check_task_weights(self.task_weights)
        return self


class OptimConfig(_Strict):
    """Adam with L1 loss (the paper's recipe)."""

    lr: float = Field(default=2e-4, gt=0)
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = Field(default=0.0, ge=0)
    grad_clip: Optional[float] = Field(default=None, gt=0)


class ScheduleConfig(_Strict):
    """Iterations and the cosine learning-rate decay to ``min_lr`` (after ``warmup`` linear steps)."""

    iterations: int = Field(default=300_000, ge=1)
    min_lr: float = Field(default=1e-6, ge=0)
    warmup: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _warmup_within(self) -> ScheduleConfig:
        if self.warmup >= self.iterations:
            raise ValueError(f"warmup ({self.warmup}) must be below iterations ({self.iterations})")
        return self


class TrainConfig(_Strict):
    """How the loop runs."""

    seed: int = Field(default=0, ge=0)
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    gradient_checkpointing: bool = False
    ema_decay: Optional[float] = Field(default=None, gt=0, lt=1)
    # Weight of an extra L1 term on both images clipped to the modality's evaluation window (0: the
    # paper's plain L1); only for modalities whose window is narrower than their normalisation range. Quarter-dose CT noise is about 0.005 of [-1024, 3072] HU, and plain L1 is
    # dominated by bone and air edges; the window term puts the soft tissue the metrics see first.
    window_loss_weight: float = Field(default=0.0, ge=0)
    val_every: int = Field(default=1000, ge=1)
    save_every: int = Field(default=1000, ge=1)
    log_every: int = Field(default=50, ge=1)
    deterministic: bool = True
    threads: Optional[int] = Field(default=None, ge=1)


class RunConfig(_Strict):
    """A whole training run."""

    name: str
    task: Literal[TASK_NAMES]
    out: str = "runs"
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    @model_validator(mode="after")
    def _min_lr_below_lr(self) -> RunConfig:
        if self.schedule.min_lr > self.optim.lr:
            raise ValueError(f"schedule.min_lr ({self.schedule.min_lr}) is above optim.lr ({self.optim.lr})")
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.out) / self.name

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")


def shipped_configs() -> list[str]:
    """Names of the configs shipped in the package."""
    folder = resources.files("restore_rwkv") / "configs"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _read_yaml(name_or_path: str | Path) -> tuple[dict, str]:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise InputError(path, "no such config file")
        text, where = path.read_text(), str(path)
    else:
        entry = resources.files("restore_rwkv") / "configs" / f"{name_or_path}.yaml"
        if not entry.is_file():
            raise InputError(None, f"unknown config {name_or_path!r}; shipped: {', '.join(shipped_configs())} "
                                   "(or give a .yaml path)")
        text, where = entry.read_text(), f"config {name_or_path}"
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        first = " ".join(str(exc).split())
        raise InputError(where, f"not valid YAML ({first[:200]})") from None
    if not isinstance(data, dict):
        raise InputError(where, "a config is a YAML mapping of keys to values")
    return data, where


def _apply_override(data: dict, assignment: str) -> None:
    if "=" not in assignment:
        raise InputError(None, f"--set takes key=value (e.g. optim.lr=1e-4), got {assignment!r}")
    key, raw = assignment.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise InputError(None, f"--set has an empty key in {assignment!r}")
    value = yaml.safe_load(raw) if raw.strip() else None
    node = data
    for i, part in enumerate(parts[:-1]):
        if node.get(part) is None:
            node[part] = {}  # a section that was empty or removed (data.val: null) gets the new key
        if not isinstance(node[part], dict):
            raise InputError(None, f"--set {key}: {'.'.join(parts[: i + 1])} is not a section")
        node = node[part]
    node[parts[-1]] = value


def _model_at(path: tuple) -> type[BaseModel] | None:
    """The schema class of the section at ``path`` (for listing valid keys)."""
    cls: Any = RunConfig
    for part in path:
        if not isinstance(part, str):
            continue
        field = getattr(cls, "model_fields", {}).get(part)
        if field is None:
            return None
        annotation = field.annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        cls = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if cls is None:
            return None
    return cls


def _one_line(exc: ValidationError, where: str) -> InputError:
    error = exc.errors()[0]
    loc = tuple(error["loc"])
    dotted = ".".join(str(p) for p in loc) or "(top level)"
    if error["type"] == "extra_forbidden":
        section = _model_at(loc[:-1])
        valid = ", ".join(section.model_fields) if section else "?"
        return InputError(where, f"unknown key {dotted}; valid keys here: {valid}")
    if error["type"] == "missing":
        return InputError(where, f"missing key {dotted}")
    value = error.get("input")
    shown = f" (got {value!r})" if not isinstance(value, dict) else ""
    return InputError(where, f"{dotted}: {error['msg']}{shown}")


def load_config(name_or_path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """A validated :class:`RunConfig` from a shipped name or a YAML path, with ``key=value`` overrides."""
    data, where = _read_yaml(name_or_path)
    for assignment in overrides:
        _apply_override(data, assignment)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise _one_line(exc, where) from None


def save_config(config: RunConfig, path: str | Path) -> Path:
    """Write the resolved config as YAML (atomically)."""
    from restore_rwkv.utils.files import atomic_file

    path = Path(path)
    with atomic_file(path) as tmp:
        tmp.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    return path
