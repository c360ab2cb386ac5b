"""``restore-rwkv export``: weights and their card as one ONNX, TorchScript or ``torch.export`` file."""

from __future__ import annotations

from pathlib import Path

from restore_rwkv.cli import WEIGHTS_HELP


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "export", help="write weights as an ONNX, TorchScript or torch.export file that runs without this package",
        description="Fuse the Omni-Shifts, record the attention operator as standard tensor operations and write "
                    "one file for (B, C, TILE, TILE) float32 inputs in the card's normalised units, with the card "
                    "embedded. The file is then run on a fresh batch and compared with eager PyTorch (ONNX: with "
                    "onnxruntime, when installed); one that differs by more than 1e-4 of the output's scale is "
                    "not kept (docs/export.md).")
    parser.add_argument("--weights", required=True, help=WEIGHTS_HELP)
    parser.add_argument("--format", required=True, choices=("onnx", "torchscript", "exported-program"),
                        help="onnx (.onnx), torchscript (.pt) or exported-program (torch.export, .pt2)")
    parser.add_argument("--tile", type=int, default=None,
                        help="the image side the file takes (default: the card's tile, else its training patch size)")
    parser.add_argument("--batch", type=int, default=None, help="a fixed batch size (default: dynamic)")
    parser.add_argument("-o", "--output", default=None,
                        help="the file to write (default: <weights name>_<tile>.<onnx|pt|pt2> in the current folder)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.add_argument("--no-check", action="store_true", help="do not run the written file against eager PyTorch")
    parser.set_defaults(run=run)


def run(args) -> int:
    from restore_rwkv.models import load_model
    from restore_rwkv.models.card import weights_name, resolve_weights
    from restore_rwkv.models.export import FORMATS, export_model
    from restore_rwkv.utils.errors import InputError

    weights = resolve_weights(args.weights)
    model, card = load_model(weights)
    tile = args.tile if args.tile is not None else card.default_tile
    if not tile:
        raise InputError(None, "--tile: the card restores whole slices; give the image side the file should take")
    output = Path(args.output or f"{weights_name(weights)}_{tile}{FORMATS[args.format]}")
    if output.exists() and not args.overwrite:
        raise InputError(output, "exists; choose another --output or add --overwrite")
    result = export_model(model, card, output, args.format, tile, args.batch, check=not args.no_check)
    batch = "dynamic batch" if result.batch is None else f"batch {result.batch}"
    if result.max_error is not None:
        check = f"matches eager PyTorch within {result.max_error:.1e} of the output's scale ({result.checked_with})"
    elif args.no_check:
        check = "not checked (--no-check)"
    else:
        check = "not checked: install onnxruntime (pip install restore-rwkv[onnx]) to run it"
    print(f"wrote {result.path} ({args.format}, {tile}x{tile} tiles, {batch}); {check}")
    return 0
