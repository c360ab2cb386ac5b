"""Weights for inference: a safetensors file and a JSON card beside it that says what they are.

``<name>.safetensors`` holds the state dict (float32, or float16 to halve the download) and
``<name>.json`` the card: the model's registry name and constructor arguments, the task, the
intensity policy of each modality the weights were trained on (``restore_rwkv.modality``: scaling,
normalisation range, windows; so restoring needs no guess), the training patch size and
iterations, and the validation metrics. Training writes both (:func:`save_model_with_card`);
``load_model`` and the restore and evaluate commands read them. Weights are loaded with
safetensors only: no pickle is ever opened.

Card format 2 added each convention's ``scaling``; format-1 cards read with the scalings their
models were trained with (``modality.LEGACY_SCALING``). A card with fields this version does not
know (written by a newer one) loads with a warning, the unknown fields ignored.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from restore_rwkv.modality import ALL_IN_ONE, DICOM_MODALITIES, TASKS, ModalityConvention, get_convention, modality_name
from restore_rwkv.utils.errors import InputError
from restore_rwkv.utils.files import atomic_file

CARD_FORMAT = 2
MIN_TILE = 16  # the smallest tile side a model restores in (restore --tile, a card's tile)
SHIPPED_WEIGHTS = Path(__file__).resolve().parent.parent / "weights"  # package data (the demo issue fills it)


@dataclass
class ModelCard:
    """What a set of weights is: enough to rebuild the model and use it correctly.

    Attributes:
        model: registry name (``create_model``).
        model_args: constructor overrides given to ``create_model``.
        task: ``mri_sr``, ``ct_denoise``, ``pet`` or ``all_in_one``.
        conventions: modality -> its intensity policy in training (``ModalityConvention.to_card``).
        patch_size: training patch side in pixels.
        tile: the tile side to restore with, chosen on validation data (0: whole slices); None: ``patch_size``.
        iterations: optimiser steps taken.
        metrics: validation metrics of these weights (e.g. ``{"psnr": 33.1, "ssim": 0.91}``).
        weights: the weights file name, beside the card.
        storage_dtype: ``float32`` or ``float16`` (loaded into float32 parameters either way).
        created: ISO time; version: restore-rwkv version that wrote it; notes: free text.
    """

    model: str
    task: str
    conventions: dict[str, dict[str, Any]]
    model_args: dict[str, Any] = field(default_factory=dict)
    patch_size: int | None = None
    tile: int | None = None
    iterations: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    weights: str = ""
    storage_dtype: str = "float32"
    created: str = ""
    version: str = ""
    notes: str = ""
    format: int = CARD_FORMAT

    @property
    def modalities(self) -> list[str]:
        """The modalities the weights were trained on (canonical names)."""
        return sorted(modality_name(m) or m for m in self.conventions)

    @property
    def default_tile(self) -> int | None:
        """The tile side ``restore`` and ``evaluate`` use without ``--tile`` (0 or None: whole slices):
        the card's ``tile`` where one was chosen, else the training ``patch_size``."""
        return self.tile if self.tile is not None else self.patch_size

    @property
    def tasks(self) -> list[str]:
        """The tasks the weights were trained for (every task for an all-in-one model)."""
        return list(TASKS) if self.task == ALL_IN_ONE else [self.task]

    def convention(self, modality: str) -> ModalityConvention:
        """The intensity policy the weights were trained with for ``modality`` (KeyError when they were not)."""
        wanted = modality_name(modality)
        for name, entry in self.conventions.items():
            if modality_name(name) == wanted:
                return ModalityConvention.from_card(entry, name)
        raise KeyError(modality)

    def convention_for(self, image_modality: str | None, modality: str | None = None, force: bool = False,
                       source: str | os.PathLike | None = None) -> ModalityConvention:
        """The policy to restore an image with: ``modality`` (override), else the image's DICOM Modality,
        else the card's only one.

        Refused (InputError naming ``source``) unless ``force``: a modality the card lacks, or an image
        whose DICOM Modality is not the chosen one. With ``force`` a modality the card lacks gets its
        default policy.
        """
        known = self.modalities
        label = str(image_modality or "").upper()
        image = DICOM_MODALITIES.get(label) if label not in ("", "OT") else None  # OT: "other", nothing to check
        if modality is not None:
            wanted = modality_name(modality)
            if wanted is None:
                raise InputError(None, f"--modality: unknown modality {modality!r}; expected one of ct, mri, pet")
        elif image is not None:
            wanted = image
        elif len(known) == 1:
            wanted = known[0]
        else:
            raise InputError(source, f"the image does not say its modality and the weights know several "
                                     f"({', '.join(known)}); choose one with --modality")
        if label not in ("", "OT") and image != wanted and not force:
            raise InputError(source, f"DICOM Modality {image_modality} does not match the {wanted} convention "
                                     f"(weights trained on {', '.join(known)}); --force restores it anyway")
        if wanted not in known:
            if not force:
                raise InputError(source, f"the weights were trained on {', '.join(known)}, not {wanted} "
                                         "(--force restores it anyway with the default convention)")
            return get_convention(wanted)
        return self.convention(wanted)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict, source: str | os.PathLike | None = None) -> ModelCard:
        known = {f.name for f in dataclasses.fields(cls)}
        missing = [k for k in ("model", "task", "conventions") if k not in data]
        if missing:
            raise InputError(source, f"model card lacks {', '.join(missing)}")
        unknown = sorted(set(data) - known)
        if unknown:
            warnings.warn(f"{source or 'model card'}: field(s) {unknown} unknown to this version of restore-rwkv "
                          f"(card format {data.get('format', '?')}, this version reads {CARD_FORMAT}); ignored",
                          stacklevel=2)
        if not isinstance(data["conventions"], dict) or not data["conventions"]:
            raise InputError(source, "model card's conventions must map each modality to its policy")
        card = cls(**{k: v for k, v in data.items() if k in known})
        if card.tile is not None and (isinstance(card.tile, bool) or not isinstance(card.tile, int)
                                      or card.tile < 0 or 0 < card.tile < MIN_TILE):
            raise InputError(source, f"model card's tile must be 0 (whole slices) or a whole number of pixels of at least "
                                     f"{MIN_TILE}; got {card.tile!r}")
        for name in card.conventions:
            try:
                card.convention(name)
            except (ValueError, TypeError) as exc:
                raise InputError(source, f"model card's convention {name!r}: {exc}") from None
        return card


def card_path(weights: str | os.PathLike) -> Path:
    """The card beside a weights file: ``x.safetensors`` -> ``x.json``."""
    return Path(weights).with_suffix(".json")


def save_model_with_card(model: nn.Module, path: str | os.PathLike, card: ModelCard,
                         storage_dtype: str = "float32") -> Path:
    """Write ``model``'s weights to ``path`` (``.safetensors``) and ``card`` beside it; returns the weights path."""
    from safetensors.torch import save_file

    from restore_rwkv import __version__

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"weights for inference are saved as .safetensors, got {path.name}")
    if storage_dtype not in ("float32", "float16"):
        raise ValueError(f"storage_dtype must be float32 or float16, got {storage_dtype!r}")
    dtype = torch.float16 if storage_dtype == "float16" else torch.float32
    state = {k: (v.detach().to(dtype) if v.is_floating_point() else v.detach()).contiguous().cpu()
             for k, v in model.state_dict().items()}
    card = dataclasses.replace(card, weights=path.name, storage_dtype=storage_dtype,
                               created=card.created or dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                               version=card.version or __version__)
    with atomic_file(path) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", "model": card.model, "task": card.task})
    with atomic_file(card_path(path)) as tmp:
        tmp.write_text(card.to_json())
    return path


def shipped_models() -> dict[str, Path]:
    """Names of the models that ship inside the package -> their weights files."""
    if not SHIPPED_WEIGHTS.is_dir():
        return {}
    return {p.stem: p for p in sorted(SHIPPED_WEIGHTS.glob("*.safetensors")) if card_path(p).exists()}


def resolve_weights(spec: str | os.PathLike) -> Path:
    """A weights file from ``spec``: a ``.safetensors`` file, its ``.json`` card, a folder holding exactly
    one of them, or the name of a shipped model."""
    path = Path(spec)
    if path.is_dir():
        found = [p for p in sorted(path.glob("*.safetensors")) if card_path(p).exists()]
        if len(found) != 1:
            raise InputError(path, f"expected one .safetensors file with its .json card here, found {len(found)}")
        return found[0]
    if path.suffix == ".json" and path.is_file():
        return path.with_suffix(".safetensors")
    if path.is_file():
        return path
    shipped = shipped_models()
    if str(spec) in shipped:
        return shipped[str(spec)]
    known = ", ".join(sorted(shipped)) or "none yet"
    raise InputError(spec, f"no such weights file or folder, and not a shipped model (shipped: {known})")


def weights_name(weights: str | os.PathLike) -> str:
    """A short name for a weights file: its stem, or its folder's name for a training run's ``model.safetensors``."""
    path = Path(weights)
    if path.stem == "model" and path.parent.name:
        return path.parent.name
    return path.stem


def load_model_card(spec: str | os.PathLike) -> ModelCard:
    """The card of the weights ``spec`` names (see :func:`resolve_weights`)."""
    weights = resolve_weights(spec)
    card_file = card_path(weights)
    if not card_file.is_file():
        raise InputError(weights, f"has no model card {card_file.name} beside it (training writes one)")
    try:
        data = json.loads(card_file.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(card_file, f"not a readable model card ({exc})") from None
    if not isinstance(data, dict):
        raise InputError(card_file, "not a model card (expected a JSON object)")
    return ModelCard.from_dict(data, card_file)


def load_model(spec: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, ModelCard]:
    """Build the model a card describes, load its weights (strict), and return it in eval mode with the card."""
    from restore_rwkv.models.pretrained import load_pretrained
    from restore_rwkv.models.registry import create_model

    weights = resolve_weights(spec)
    card = load_model_card(weights)
    if weights.suffix != ".safetensors":
        raise InputError(weights, "weights with a card are read from .safetensors only")
    try:
        model = create_model(card.model, **card.model_args)
    except (ValueError, TypeError) as exc:
        raise InputError(card_path(weights), f"cannot build the model it names ({exc})") from None
    load_pretrained(model, weights)
    return model.to(device).eval(), card
