"""Export weights and their card to ONNX, TorchScript or a ``torch.export`` program.

The exported file runs without this package: the attention operator is recorded as standard tensor
operations (``restore_rwkv.ops.lowered``: the linear-time chunked scans, forward only), the
Omni-Shifts are fused, and the card travels inside the file (ONNX ``metadata_props``, TorchScript and
``.pt2`` extra file ``card.json``) with an ``export`` section that says what the graph takes: a
(B, C, tile, tile) float32 image normalised by the card's intensity policy, B dynamic unless fixed.

H and W are fixed at the tile side: the chunk lengths of the scans, the decay per token (the decay is
divided by the token count) and the padding to a multiple of 8 all depend on them, so a graph traced at
one size would be wrong at another. ``restore``'s tiling already runs every model in tiles of one size.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from restore_rwkv.models.card import MIN_TILE, ModelCard
from restore_rwkv.models.restore_rwkv import reparameterize_model
from restore_rwkv.ops import SteepDecayError, decay_bound, lowered
from restore_rwkv.utils.errors import InputError
from restore_rwkv.utils.files import atomic_file

FORMATS = {"onnx": ".onnx", "torchscript": ".pt", "exported-program": ".pt2"}
CARD_KEY = "restore_rwkv.card"  # ONNX metadata key; TorchScript / .pt2 extra file "card.json"
CHECK_TOLERANCE = 1e-4  # largest |exported - eager| accepted, relative to the eager output's largest value
_ONNX_OPSET = 18


@dataclass
class ExportResult:
    """What ``export_model`` wrote and how well the written file reproduces eager PyTorch.

    Attributes:
        path: the exported file. format: ``onnx``, ``torchscript`` or ``exported-program``.
        tile: the image side the graph takes. batch: the fixed batch size, or None (dynamic).
        max_error: max |file - eager| over a check batch, relative to the eager output's largest
            value; None where the runtime to check with is not installed (``onnxruntime``).
        checked_with: the runtime that ran the file for the check.
    """

    path: Path
    format: str
    tile: int
    batch: int | None
    max_error: float | None
    checked_with: str | None


def _input_channels(model: nn.Module) -> int:
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return module.in_channels
    raise InputError(None, "cannot export: the model has no convolution to tell its input channels")


def _embedded_card(card: ModelCard, fmt: str, tile: int, batch: int | None, channels: int) -> str:
    from restore_rwkv import __version__

    data = dataclasses.asdict(card)
    data["export"] = {
        "format": fmt,
        "input": f"(B, {channels}, {tile}, {tile}) float32, normalised as the card's conventions say",
        "output": f"(B, {channels}, {tile}, {tile}) float32, in the same normalised units",
        "tile": tile,
        "batch": "dynamic" if batch is None else batch,
        "restore_rwkv": __version__,
        "torch": torch.__version__,
    }
    return json.dumps(data, indent=2, sort_keys=True)


def _write(program_or_module: Any, fmt: str, tmp: Path, card_json: str) -> None:
    if fmt == "exported-program":
        torch.export.save(program_or_module, tmp, extra_files={"card.json": card_json})
    elif fmt == "torchscript":
        torch.jit.save(program_or_module, str(tmp), _extra_files={"card.json": card_json})
    else:
        import onnx

        proto = onnx.load(str(tmp))  # torch wrote it there; add the card and write it back
        entry = proto.metadata_props.add()
        entry.key, entry.value = CARD_KEY, card_json
        onnx.save(proto, str(tmp))


def _trace(model: nn.Module, fmt: str, example: torch.Tensor, batch: int | None, tmp: Path) -> Any:
    dims = None if batch is not None else ({0: torch.export.Dim("batch", min=1, max=1024)},)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python control flow on fixed shapes
        if fmt == "exported-program":
            return torch.export.export(model, (example,), dynamic_shapes=dims)
        if fmt == "torchscript":
            return torch.jit.trace(model, example, check_trace=False)
        torch.onnx.export(model, (example,), str(tmp), input_names=["image"], output_names=["restored"],
                          dynamic_axes=None if batch is not None else {"image": {0: "batch"}, "restored": {0: "batch"}},
                          opset_version=_ONNX_OPSET, dynamo=False, do_constant_folding=False)
        return None


def load_exported(path: str | os.PathLike) -> tuple[Any, dict]:
    """A callable (numpy or torch in, same out) for an exported file, and its embedded card (a dict).

    ONNX files run with onnxruntime (``pip install restore-rwkv[onnx]``), the others with torch.
    """
    path = Path(path)
    if path.suffix == ".onnx":
        try:
            import onnxruntime
        except ImportError:
            raise InputError(path, "running an ONNX file needs onnxruntime (pip install restore-rwkv[onnx])") from None
        import onnx

        meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

        def run_onnx(x):
            array = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x
            out = session.run(None, {session.get_inputs()[0].name: array})[0]
            return torch.from_numpy(out) if isinstance(x, torch.Tensor) else out

        return run_onnx, json.loads(meta.get(CARD_KEY, "{}"))
    extra = {"card.json": ""}
    if path.suffix == ".pt2":
        program = torch.export.load(path, extra_files=extra)
        module = program.module()
    else:
        module = torch.jit.load(str(path), _extra_files=extra)

    def run_torch(x):
        with torch.no_grad():
            return module(x)

    return run_torch, json.loads(extra["card.json"] or "{}")


def export_model(model: nn.Module, card: ModelCard, path: str | os.PathLike, fmt: str, tile: int,
                 batch: int | None = None, check: bool = True) -> ExportResult:
    """Write ``model`` (with ``card`` embedded) as ``fmt`` for (B, C, tile, tile) inputs and check the file.

    Args:
        model: the model, in eval mode (``load_model``); its Omni-Shifts are fused in a copy.
        card: its card.
        path: the file to write (written whole or not at all).
        fmt: ``onnx``, ``torchscript`` or ``exported-program``.
        tile: the image side the graph takes (H = W = tile).
        batch: a fixed batch size, or None for a dynamic one.
        check: run the written file on a fresh batch and compare it with eager PyTorch.

    Raises:
        InputError: an unknown format, a tile or batch out of range, a model whose attention decays too
            steeply to lower at this tile, or a written file that does not reproduce eager PyTorch
            within ``CHECK_TOLERANCE``.
    """
    path = Path(path)
    if fmt not in FORMATS:
        raise InputError(None, f"--format: unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if path.suffix != FORMATS[fmt]:
        raise InputError(path, f"an {fmt} file is named *{FORMATS[fmt]} (that is how it is told apart when loaded)")
    if tile < MIN_TILE:
        raise InputError(None, f"--tile: {tile} is below the smallest tile, {MIN_TILE}")
    if batch is not None and batch < 1:
        raise InputError(None, f"--batch: {batch} is not a batch size (1 or more; omit it for a dynamic batch)")
    if fmt == "onnx":
        try:
            import onnx  # noqa: F401  (writes the card into the file)
        except ImportError:
            raise InputError(None, "--format onnx needs the onnx package (pip install restore-rwkv[onnx])") from None
    fused = reparameterize_model(model).float()
    channels = _input_channels(fused)
    generator = torch.Generator().manual_seed(0)
    example = torch.rand(batch or 2, channels, tile, tile, generator=generator)
    with torch.no_grad(), decay_bound() as bounds:
        fused(example)
    result = ExportResult(path, fmt, tile, batch, None, None)
    try:
        with atomic_file(path) as tmp:  # checked before it replaces anything at path
            with torch.no_grad(), lowered(bounds):
                traced = _trace(fused, fmt, example, batch, tmp)
            _write(traced, fmt, tmp, _embedded_card(card, fmt, tile, batch, channels))
            if check:
                result = _check(result, tmp, fused, channels, generator)
    except SteepDecayError as exc:
        raise InputError(path, f"cannot export: {exc}; a larger tile divides the decay by more tokens") from None
    return result


def _check(result: ExportResult, written: Path, model: nn.Module, channels: int,
           generator: torch.Generator) -> ExportResult:
    """Run the written file on a fresh batch (another size where the batch is dynamic) against eager."""
    try:
        run, _ = load_exported(written)
    except InputError:
        return result  # onnxruntime not installed: written, not checked
    x = torch.rand(result.batch or 3, channels, result.tile, result.tile, generator=generator)
    with torch.no_grad():
        expected = model(x)
    try:
        got = run(x)
        error = float((got - expected).abs().max() / expected.abs().max().clamp_min(1e-12))
    except Exception as exc:  # the runtime could not run the file: not kept
        raise InputError(result.path, f"the exported file does not run ({type(exc).__name__}: "
                                      f"{str(exc).splitlines()[0] if str(exc) else ''}); not kept") from None
    if not error <= CHECK_TOLERANCE:
        raise InputError(result.path, f"the exported file differs from eager PyTorch by {error:.2e} of the output's "
                                      f"scale (limit {CHECK_TOLERANCE:g}); not kept")
    runtime = "onnxruntime" if result.format == "onnx" else "torch"
    return dataclasses.replace(result, max_error=error, checked_with=runtime)
