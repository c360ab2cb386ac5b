"""benchmarks/self_ensemble.py: rescoring some models keeps the other rows of an earlier file, in their order."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import self_ensemble  # noqa: E402


def row(task: str, model: str, split: str, psnr: float) -> dict:
    return {"task": task, "model": model, "split": split, "scores": [{"size": 1, "psnr": [psnr, 0.0]}]}


def test_a_rescored_model_takes_its_old_rows_places_and_new_ones_go_last():
    kept = [row("mri_sr", m, s, 1.0) for m in ("single", "joint", "peer") for s in ("validation", "test")]
    new = [row("mri_sr", "joint", s, 2.0) for s in ("validation", "test")] + [row("pet", "joint", "test", 3.0)]
    merged = self_ensemble.merge_rows(kept, new)
    assert [(r["model"], r["split"], r["scores"][0]["psnr"][0]) for r in merged] == [
        ("single", "validation", 1.0), ("single", "test", 1.0), ("joint", "validation", 2.0), ("joint", "test", 2.0),
        ("peer", "validation", 1.0), ("peer", "test", 1.0), ("joint", "test", 3.0)]
    assert self_ensemble.merge_rows([], new) == new
