"""Exported shipped models against eager PyTorch: agreement, and speed at 512² on this CPU.

    python benchmarks/export.py [--skip-compile] [--out results/export_cpu.json]

1. Each shipped model is exported to ONNX at its card's tile (``restore-rwkv export``'s code, dynamic
   batch) and run by onnxruntime on a real CT slice (pydicom's CT_small, 128², in 4 orientations,
   normalised with the CT model's card) and on 4 uniform-noise images; the largest |onnxruntime - eager| is
   reported relative to the eager output's largest value.
2. The light CT model on one 512² image: eager (this package's fastest CPU path), ``torch.compile``
   (inductor, after its compilation, whose time is reported) and onnxruntime (the file exported at tile
   512), median of up to 5 runs after one warm-up, all in this one process.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from _common import machine_summary, median_time


def _real_ct_tiles(card) -> torch.Tensor:
    """pydicom's CT_small (a real 128² CT slice) in 4 orientations, normalised by ``card``'s CT policy."""
    import numpy as np
    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    low, high = card.convention("ct").norm_range
    image = torch.from_numpy((hu - low) / (high - low)).float()
    return torch.stack([torch.rot90(image, k) for k in range(4)])[:, None]


def agreement(folder: Path) -> list[dict]:
    from restore_rwkv.models import load_model, shipped_models
    from restore_rwkv.models.export import export_model, load_exported

    rows = []
    ct_card = load_model("ct_denoise_light")[1]
    real = _real_ct_tiles(ct_card)
    for name in shipped_models():
        model, card = load_model(name)
        tile = card.default_tile or 128
        path = folder / f"{name}.onnx"
        t0 = time.perf_counter()
        export_model(model, card, path, "onnx", tile, check=False)
        seconds = time.perf_counter() - t0
        run, _ = load_exported(path)
        noise = torch.rand(4, 1, tile, tile, generator=torch.Generator().manual_seed(0))
        errors = {}
        for label, x in (("real CT", real), ("uniform", noise)):
            if x.shape[-1] != tile:  # the real slice is 128²
                continue
            with torch.no_grad():
                expected = model(x)
            errors[label] = float((run(x) - expected).abs().max() / expected.abs().max())
        rows.append({"model": name, "tile": tile, "export_s": round(seconds, 1),
                     "size_mb": round(path.stat().st_size / 2**20, 2), "max_rel_error": errors})
        print(rows[-1], flush=True)
    return rows


def speed(folder: Path, compile_model: bool) -> dict:
    from restore_rwkv.models import load_model, reparameterize_model
    from restore_rwkv.models.export import export_model, load_exported

    model, card = load_model("ct_denoise_light")
    fused = reparameterize_model(model)
    x = torch.rand(1, 1, 512, 512, generator=torch.Generator().manual_seed(1))
    result = {"model": "ct_denoise_light", "size": 512, "threads": torch.get_num_threads()}

    def eager():
        with torch.no_grad():
            return fused(x)

    expected = eager()
    result["eager_s"] = median_time(eager)
    path = folder / "ct_512.onnx"
    t0 = time.perf_counter()
    export_model(model, card, path, "onnx", 512, batch=1, check=False)
    result["onnx_export_s"] = time.perf_counter() - t0
    run, _ = load_exported(path)
    result["onnxruntime_error"] = float((run(x) - expected).abs().max() / expected.abs().max())
    result["onnxruntime_s"] = median_time(lambda: run(x))
    if compile_model:
        compiled = torch.compile(fused, fullgraph=True)
        t0 = time.perf_counter()
        with torch.no_grad():
            got = compiled(x)
        result["compile_s"] = time.perf_counter() - t0
        result["compiled_error"] = float((got - expected).abs().max() / expected.abs().max())

        def run_compiled():
            with torch.no_grad():
                return compiled(x)

        result["compiled_s"] = median_time(run_compiled)
    print(result, flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-compile", action="store_true", help="leave out torch.compile (minutes to compile)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "export_cpu.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        report = {"machine": machine_summary(), "agreement": agreement(Path(tmp)),
                  "speed_512": speed(Path(tmp), not args.skip_compile)}
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
