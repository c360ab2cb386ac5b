"""`restore-rwkv evaluate` and `evaluate_model` on a tiny paired dataset, in one process and under gloo."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from restore_rwkv.cli import main
from restore_rwkv.data.datasets import PairedSliceDataset, reference_layout, write_manifest
from restore_rwkv.modality import get_convention
from restore_rwkv.engine.evaluation import COLUMNS, evaluate_model, format_table, safe_file_name, summarize
from restore_rwkv.metrics import SSIM_BOUNDARIES, evaluate_physical
from restore_rwkv.models import ModelCard, create_model, load_model, save_model_with_card
from restore_rwkv.utils.devices import PRECISIONS

ISSUE_COLUMNS = "name,task,modality,psnr_in,ssim_in,rmse_in,psnr_out,ssim_out,rmse_out".split(",")  # issue 12
ARGS = {"dim": 8, "num_blocks": [1, 1, 1, 1], "num_refinement_blocks": 1}
CONVENTIONS = {"ct": {"unit": "HU", "norm_range": [-1024.0, 3072.0], "eval_window": [-160.0, 240.0]},
               "mri": {"unit": "a.u.", "norm_range": [0.0, 4095.0], "eval_window": [0.0, 4095.0]}}
# (modality folder, file name, shape): two sizes, one not a multiple of 8, so batches split by size
# in the order reference_layout lists them (MRI, CT, PET)
IMAGES = [("MRI", "mri_a.npy", (16, 24)), ("MRI", "mri_b.npy", (16, 24)),
          ("CT", "ct_a.npy", (24, 20)), ("CT", "ct_b.npy", (24, 20)), ("CT", "ct_c.npy", (16, 16))]


def _write_dataset(root: Path) -> None:
    rng = np.random.default_rng(0)
    for folder, name, shape in IMAGES:
        if folder == "CT":  # HU well outside the [-160, 240] window on both sides
            hq = rng.uniform(-1000.0, 1000.0, shape)
            lq = hq + rng.normal(0.0, 40.0, shape)
        else:
            hq = rng.uniform(0.0, 3000.0, shape)
            lq = np.clip(hq + rng.normal(0.0, 150.0, shape), 0, None)
        for kind, image in (("HQ", hq), ("LQ", lq)):
            path = root / folder / "test" / kind / name
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, image.astype(np.float32))
        # one training pair, which a test split must leave out
        for kind in ("HQ", "LQ"):
            path = root / folder / "train" / kind / name
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, hq.astype(np.float32))


def _save_weights(path: Path, task: str, modalities) -> Path:
    torch.manual_seed(0)
    model = create_model("restore_rwkv_light", **ARGS)
    card = ModelCard(model="restore_rwkv_light", task=task, model_args=ARGS,
                     conventions={m: CONVENTIONS[m] for m in modalities})
    return save_model_with_card(model, path, card)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    base = tmp_path_factory.mktemp("tiny")
    _write_dataset(base / "data")
    records = reference_layout(base / "data", "test") + reference_layout(base / "data", "train")
    write_manifest(base / "data" / "manifest.csv", records)
    return {"root": base / "data", "manifest": base / "data" / "manifest.csv",
            "all": _save_weights(base / "w" / "all.safetensors", "all_in_one", ("ct", "mri")),
            "ct": _save_weights(base / "w" / "ct" / "ct.safetensors", "ct_denoise", ("ct",))}


def _read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def test_evaluate_writes_one_row_per_image_with_the_protocols_metrics(tiny, tmp_path, capsys):
    out = tmp_path / "eval"
    status = main(["evaluate", "--weights", str(tiny["all"]), "--data", str(tiny["root"]), "--split", "test",
                   "--out", str(out), "--device", "cpu", "--batch-size", "2", "--save-images", "--quiet"])
    assert status == 0
    header, rows = _read_csv(out / "per_image.csv")
    assert header == ISSUE_COLUMNS and list(COLUMNS) == ISSUE_COLUMNS
    assert [(r["name"], r["task"], r["modality"]) for r in rows] == \
        [(name, "ct_denoise" if folder == "CT" else "mri_sr", folder.lower()) for folder, name, _ in IMAGES]
    for row, (folder, name, _) in zip(rows, IMAGES):
        lq = np.load(tiny["root"] / folder / "test" / "LQ" / name)
        hq = np.load(tiny["root"] / folder / "test" / "HQ" / name)
        expected = evaluate_physical(lq, hq, folder.lower())  # independently, from the files
        for key in ("psnr", "ssim", "rmse"):
            assert float(row[f"{key}_in"]) == pytest.approx(float(expected[key]), rel=1e-5), (name, key)
            assert np.isfinite(float(row[f"{key}_out"])), (name, key)

    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["per_task"]) == ["mri_sr", "ct_denoise"] and summary["images"] == len(IMAGES)
    for task, entry in summary["per_task"].items():
        mine = [r for r in rows if r["task"] == task]
        assert entry["count"] == len(mine)
        for column in COLUMNS[3:]:
            values = np.array([float(r[column]) for r in mine])
            assert entry[column]["mean"] == pytest.approx(values.mean(), rel=1e-12)
            assert entry[column]["std"] == pytest.approx(values.std(), rel=1e-9, abs=1e-12)
            assert entry[column]["n"] == len(mine)
    # what was evaluated, and how: enough to repeat it
    card = load_model(tiny["all"])[1]
    assert {k: summary[k] for k in ("weights", "model", "trained_task", "data", "split", "device", "precision",
                                    "tile")} == \
        {"weights": str(tiny["all"].resolve()), "model": "restore_rwkv_light", "trained_task": "all_in_one",
         "data": str(tiny["root"].resolve()), "split": "test", "device": "cpu", "precision": "fp32",
         "tile": card.patch_size or "whole slices"}
    assert summary["protocol"] == {
        "data_range": "label max - min per image, after windowing",
        "ssim": {"window": 11, "sigma": 1.5, "k1": 0.01, "k2": 0.03, "boundary": "zero"},
        "std": "population (ddof 0), over finite values",
        "conventions": {m: card.convention(m).to_card() for m in ("mri", "ct")}}
    printed = capsys.readouterr().out
    assert "ct_denoise" in printed and "mri_sr" in printed and "±" in printed

    # restored images: physical units, float32, one per item, the model's output
    saved = sorted((out / "images").rglob("*.npy"))
    assert [p.relative_to(out / "images").as_posix() for p in saved] == \
        ["ct_denoise/2_ct_a.npy", "ct_denoise/3_ct_b.npy", "ct_denoise/4_ct_c.npy",
         "mri_sr/0_mri_a.npy", "mri_sr/1_mri_b.npy"]
    model, _ = load_model(tiny["all"])
    for index, (folder, name, shape) in enumerate(IMAGES):
        convention = get_convention(folder)
        lq = np.load(tiny["root"] / folder / "test" / "LQ" / name)
        with torch.no_grad():
            restored = model(torch.from_numpy(convention.normalize(lq))[None, None])[0, 0]
        task = "ct_denoise" if folder == "CT" else "mri_sr"
        image = np.load(out / "images" / task / f"{index}_{name[:-4]}.npy")
        assert image.dtype == np.float32 and image.shape == shape
        # as restore writes it: the input's own values where it lies outside the range (none here: CT noise in
        # air below -1024 HU is restored like air, only values below -1500 HU are kept)
        expected, outside = convention.keep_outside(convention.denormalize(restored.double()).numpy(), lq)
        assert outside == 0 and (lq < -1024).any() if folder == "CT" else outside == 0
        # atol: float32 rounding of a ±1500 HU image (1.2e-3 HU seen between 1 and 2 threads)
        np.testing.assert_allclose(image, expected, rtol=1e-5, atol=1e-2)


class _Identity(torch.nn.Module):
    """Returns its input; records the mode and grad state of each call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[bool, bool]] = []

    def forward(self, x):
        self.calls.append((self.training, torch.is_grad_enabled()))
        return x


def test_identity_model_scores_output_as_input_and_batches_equal_single_items(tiny):
    dataset = PairedSliceDataset(reference_layout(tiny["root"], "test"))
    identity = _Identity().train()
    rows = evaluate_model(identity, dataset, batch_size=3, quiet=True)
    assert len(identity.calls) == 3  # sizes (16, 24) x2, (24, 20) x2, (16, 16)
    assert set(identity.calls) == {(False, False)} and identity.training  # eval mode, no grad; mode restored
    assert len(rows) == len(IMAGES) and all(list(r) == ISSUE_COLUMNS for r in rows)
    for row in rows:
        for key in ("psnr", "ssim", "rmse"):
            assert row[f"{key}_out"] == row[f"{key}_in"]
    model, _ = load_model(tiny["all"])
    single = evaluate_model(model, dataset, batch_size=1, quiet=True)
    batched = evaluate_model(model, dataset, batch_size=4, quiet=True)
    assert [r["name"] for r in batched] == [r["name"] for r in single]
    for a, b in zip(single, batched):
        for column in COLUMNS[3:]:
            assert a[column] == pytest.approx(b[column], rel=1e-5, abs=1e-7), column
    assert len(evaluate_model(model, dataset, max_images=2, quiet=True)) == 2


def test_exact_restorations_and_flat_labels_are_left_out_of_the_means():
    rows = [{"name": "a", "task": "t", "modality": "ct", "psnr_in": 20.0, "ssim_in": 0.5, "rmse_in": 3.0,
             "psnr_out": float("inf"), "ssim_out": 1.0, "rmse_out": 0.0},
            {"name": "b", "task": "t", "modality": "ct", "psnr_in": 30.0, "ssim_in": 0.7, "rmse_in": 1.0,
             "psnr_out": float("nan"), "ssim_out": float("nan"), "rmse_out": 2.0}]
    summary = summarize(rows)
    assert summary["t"]["count"] == 2
    assert summary["t"]["psnr_in"] == {"mean": 25.0, "std": 5.0, "n": 2}
    assert summary["t"]["psnr_out"] == {"mean": None, "std": None, "n": 0}
    assert summary["t"]["ssim_out"] == {"mean": 1.0, "std": 0.0, "n": 1}
    table = format_table(summary)
    assert "25.00 ± 5.00" in table and "t psnr_out: 2 of 2 value(s) not finite" in table


def test_a_manifest_is_filtered_by_split_and_by_what_the_card_knows(tiny, tmp_path, capsys):
    out = tmp_path / "ct"
    status = main(["evaluate", "--weights", str(tiny["ct"].parent), "--data", str(tiny["manifest"]),
                   "--out", str(out), "--device", "cpu", "--quiet"])
    assert status == 0
    _, rows = _read_csv(out / "per_image.csv")
    assert [r["name"] for r in rows] == ["ct_a.npy", "ct_b.npy", "ct_c.npy"]  # test split, CT only
    assert "left out 2 pair(s)" in capsys.readouterr().err
    status = main(["evaluate", "--weights", str(tiny["ct"]), "--data", str(tiny["manifest"]), "--force",
                   "--ssim-boundary", "zero", "--out", str(tmp_path / "forced"), "--device", "cpu", "--quiet"])
    assert status == 0
    _, rows = _read_csv(tmp_path / "forced" / "per_image.csv")
    assert [r["name"] for r in rows] == [name for _, name, _ in IMAGES]  # MRI pairs too
    for row, (folder, name, _) in zip(rows, IMAGES):  # the reference code's zero-padded SSIM
        lq, hq = (np.load(tiny["root"] / folder / "test" / kind / name) for kind in ("LQ", "HQ"))
        expected = evaluate_physical(lq, hq, folder.lower(), ssim_boundary="zero")["ssim"]
        assert float(row["ssim_in"]) == pytest.approx(float(expected), rel=1e-5)
    summary = json.loads((tmp_path / "forced" / "summary.json").read_text())
    assert summary["protocol"]["ssim"]["boundary"] == "zero"
    status = main(["evaluate", "--weights", str(tiny["ct"]), "--data", str(tiny["manifest"]), "--split", "all",
                   "--max-images", "4", "--out", str(tmp_path / "all"), "--device", "cpu", "--quiet"])
    assert status == 0
    _, rows = _read_csv(tmp_path / "all" / "per_image.csv")
    assert [r["name"] for r in rows] == ["ct_a.npy", "ct_b.npy", "ct_c.npy", "ct_a.npy"]  # test, then train


def _one_line_error(capsys, argv, match):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("restore-rwkv: error:") and match in err, err


def test_bad_requests_are_one_line_errors_that_write_nothing(tiny, tmp_path, capsys):
    base = ["--weights", str(tiny["ct"]), "--device", "cpu", "--quiet"]
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("x")
    _one_line_error(capsys, ["evaluate", *base, "--data", str(tiny["root"]), "--out", str(full)], "not empty")
    assert (full / "keep.txt").exists()
    _one_line_error(capsys, ["evaluate", *base, "--data", str(tiny["root"]), "--out", str(tiny["root"]),
                             "--overwrite"], "an input of this evaluation")
    _one_line_error(capsys, ["evaluate", *base, "--data", str(tiny["root"]), "--out", str(tiny["ct"].parent),
                             "--overwrite"], "an input of this evaluation")
    _one_line_error(capsys, ["evaluate", *base, "--data", str(tiny["manifest"]), "--split", "validation",
                             "--out", str(tmp_path / "a")], "no pairs of split 'validation'")
    mri_only = tmp_path / "mri_only"
    _write_dataset(mri_only)
    for folder in ("CT",):
        for path in sorted((mri_only / folder).rglob("*.npy")):
            path.unlink()
    _one_line_error(capsys, ["evaluate", *base, "--data", str(mri_only), "--out", str(tmp_path / "b")],
                    "not trained for (mri_sr/mri (2)")
    _one_line_error(capsys, ["evaluate", *base, "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "c")],
                    "no such folder or manifest")
    if not torch.cuda.is_available():
        _one_line_error(capsys, ["evaluate", "--weights", str(tiny["ct"]), "--device", "cuda", "--data",
                                 str(tiny["root"]), "--out", str(tmp_path / "d")], "not available")
    assert not any((tmp_path / n).exists() for n in "abcd")
    # --overwrite replaces only a folder evaluate wrote (as prepare's --overwrite replaces only its own)
    _one_line_error(capsys, ["evaluate", *base, "--data", str(tiny["root"]), "--out", str(full), "--overwrite"],
                    "is not a folder written by evaluate (no per_image.csv); refusing to replace it")
    assert (full / "keep.txt").exists()
    earlier = tmp_path / "earlier"
    assert main(["evaluate", *base, "--data", str(tiny["root"]), "--out", str(earlier), "--max-images", "1"]) == 0
    (earlier / "notes.txt").write_text("x")
    assert main(["evaluate", *base, "--data", str(tiny["root"]), "--out", str(earlier), "--overwrite"]) == 0
    assert not (earlier / "notes.txt").exists() and (earlier / "per_image.csv").exists()


def test_overwrite_never_replaces_a_folder_holding_a_manifests_pairs(tiny, tmp_path, capsys):
    """A manifest's pairs can lie anywhere: an --out that holds one is refused, even one evaluate wrote."""
    import dataclasses
    import shutil

    base = ["--weights", str(tiny["ct"]), "--device", "cpu", "--quiet"]
    mixed = tmp_path / "mixed"
    assert main(["evaluate", *base, "--data", str(tiny["root"]), "--out", str(mixed), "--max-images", "1"]) == 0
    capsys.readouterr()
    record = next(r for r in reference_layout(tiny["root"], "test") if r.modality == "ct")
    moved = dataclasses.replace(record, lq=str(shutil.copy(record.lq, mixed / "lq.npy")),
                                hq=str(shutil.copy(record.hq, mixed / "hq.npy")))
    write_manifest(tmp_path / "lists" / "manifest.csv", [moved])
    _one_line_error(capsys, ["evaluate", *base, "--data", str(tmp_path / "lists" / "manifest.csv"), "--out",
                             str(mixed), "--overwrite"], f"refusing to write over {mixed / 'lq.npy'}, an image of")
    assert (mixed / "lq.npy").is_file() and (mixed / "hq.npy").is_file() and (mixed / "per_image.csv").is_file()


def _distributed_worker(rank: int, world: int, init_file: str, weights: str, root: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model, _ = load_model(weights)
        dataset = PairedSliceDataset(reference_layout(root, "test"))
        rows = evaluate_model(model, dataset, quiet=True, save_dir=Path(out) / "images")
        Path(out, f"rows{rank}.json").write_text(json.dumps(rows))
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_return_the_rows_of_one_process(tiny, tmp_path):
    mp.spawn(_distributed_worker, args=(2, str(tmp_path / "init"), str(tiny["all"]), str(tiny["root"]), str(tmp_path)),
             nprocs=2, join=True)
    rank0 = json.loads((tmp_path / "rows0.json").read_text())
    rank1 = json.loads((tmp_path / "rows1.json").read_text())
    assert rank0 == rank1  # every rank returns all rows
    model, _ = load_model(tiny["all"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the workers, so that float32 sums are taken in the same order
    try:
        alone = evaluate_model(model, PairedSliceDataset(reference_layout(tiny["root"], "test")), quiet=True)
    finally:
        torch.set_num_threads(threads)
    assert rank0 == alone
    assert len(list((tmp_path / "images").rglob("*.npy"))) == len(IMAGES)  # ranks wrote their own shares


def test_evaluate_restores_in_tiles_of_the_cards_patch_size_as_restore_does(tiny, tmp_path):
    from restore_rwkv.inference import restore_volume

    torch.manual_seed(0)
    model = create_model("restore_rwkv_light", **ARGS).eval()
    card = ModelCard(model="restore_rwkv_light", task="ct_denoise", model_args=ARGS,
                     conventions={"ct": CONVENTIONS["ct"]}, patch_size=16)
    weights = save_model_with_card(model, tmp_path / "w" / "p16.safetensors", card)
    images = {}
    for tile in (None, 0):
        out = tmp_path / f"eval_{tile}"
        argv = ["evaluate", "--weights", str(weights), "--data", str(tiny["manifest"]), "--out", str(out),
                "--device", "cpu", "--save-images", "--quiet"] + ([] if tile is None else ["--tile", str(tile)])
        assert main(argv) == 0
        images[tile] = {p.name: np.load(p) for p in (out / "images").rglob("*.npy")}
        assert json.loads((out / "summary.json").read_text())["tile"] == (16 if tile is None else "whole slices")
    chosen = save_model_with_card(model, tmp_path / "w" / "chosen.safetensors",
                                  dataclasses.replace(card, tile=0))  # a tile chosen on validation: whole slices
    assert main(["evaluate", "--weights", str(chosen), "--data", str(tiny["manifest"]), "--out",
                 str(tmp_path / "eval_chosen"), "--device", "cpu", "--quiet"]) == 0
    assert json.loads((tmp_path / "eval_chosen" / "summary.json").read_text())["tile"] == "whole slices"
    convention = get_convention("ct")
    for index, (folder, name, shape) in enumerate(IMAGES):
        if folder != "CT":
            continue
        lq = np.load(tiny["root"] / folder / "test" / "LQ" / name)
        saved = f"{index - 2}_{name}"  # CT items only: indices 0..2
        tiled = restore_volume(model, lq, convention, tile=16)
        whole = restore_volume(model, lq, convention, tile=None)
        np.testing.assert_allclose(images[None][saved], tiled, rtol=1e-5, atol=1e-2)
        np.testing.assert_allclose(images[0][saved], whole, rtol=1e-5, atol=1e-2)
        if max(shape) > 16:  # larger than a tile: the two ways differ
            assert np.abs(tiled - whole).max() > 1.0, name


def test_evaluate_scores_what_restore_writes_for_an_mr_scan_at_its_own_scale(tmp_path):
    """An MR pair at an arbitrary stored scale with a vessel brighter than the range: evaluate (this version's MR
    policy) saves exactly what restore_array returns, and scores it in the policy's unit."""
    import restore_rwkv
    from restore_rwkv.data.datasets import PairRecord

    rng = np.random.default_rng(5)
    hq = rng.uniform(100.0, 900.0, (32, 40))
    hq[10:12, 10:14] = 3000.0  # a vessel (0.6 % of the image): above 4095 once the foreground's 99th percentile is at 3000
    lq = hq + rng.normal(0.0, 20.0, hq.shape)
    for name, image in (("lq.npy", lq), ("hq.npy", hq)):
        np.save(tmp_path / name, image.astype(np.float32))
    torch.manual_seed(0)
    model = create_model("restore_rwkv_light", **ARGS).eval()
    card = ModelCard(model="restore_rwkv_light", task="mri_sr", model_args=ARGS,
                     conventions={"mri": get_convention("mri").to_card()})
    convention = card.convention("mri")
    dataset = PairedSliceDataset([PairRecord(str(tmp_path / "lq.npy"), str(tmp_path / "hq.npy"), "mri", "mri_sr")],
                                 conventions={"mri": convention}, physical=True)
    (row,) = evaluate_model(model, dataset, conventions={"mri": convention}, save_dir=tmp_path / "out", quiet=True)
    saved = np.load(next((tmp_path / "out").rglob("*.npy")))
    restored = restore_rwkv.restore_array(np.load(tmp_path / "lq.npy"), model=model, card=card, tile=0, device="cpu")
    np.testing.assert_allclose(saved, restored, rtol=1e-5, atol=1e-4)
    assert (np.abs(restored[10:12, 10:14] - np.load(tmp_path / "lq.npy")[10:12, 10:14]) < 1e-3).all()  # kept
    scale = convention.scaling.fit(np.load(tmp_path / "lq.npy"))
    expected = evaluate_physical(restored / scale, hq / scale, convention)
    assert row["psnr_out"] == pytest.approx(float(expected["psnr"]), rel=1e-5)


def test_a_manifest_scale_serves_only_the_policy_it_was_fitted_with(tmp_path):
    """prepare's scale column is the default MR policy's; a card with another MR policy fits its own."""
    from restore_rwkv.data.datasets import PairRecord
    from restore_rwkv.modality import Scaling

    image = np.full((16, 16), 1000.0, np.float32)
    np.save(tmp_path / "x.npy", image)
    record = PairRecord(str(tmp_path / "x.npy"), str(tmp_path / "x.npy"), "mri", "mri_sr", scale=0.25)
    default = PairedSliceDataset([record], conventions={"mri": get_convention("mri")})[0]
    assert default["scale"] == 0.25 and float(default["hq"].max()) == pytest.approx(4000 / 4095)
    fixed = get_convention("mri", scaling=Scaling("fixed"))  # e.g. a format-1 card: MR unscaled
    item = PairedSliceDataset([record], conventions={"mri": fixed})[0]
    assert item["scale"] == 1.0 and float(item["hq"].max()) == pytest.approx(1000 / 4095)
    other = get_convention("mri", scaling=Scaling("foreground_percentile", target=2000.0))
    assert PairedSliceDataset([record], conventions={"mri": other})[0]["scale"] == pytest.approx(0.5)


class _Items:
    """A dataset of ``count`` random CT items of ``size`` x ``width`` pixels (default ``size - size // 4``) named
    like volume slices, with ``scale`` if given."""

    def __init__(self, count: int, scale: float | None = None, size: int = 8, width: int | None = None) -> None:
        self.count, self.scale, self.size = count, scale, size
        self.width = size - size // 4 if width is None else width

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict:
        generator = torch.Generator().manual_seed(index)
        shape = (1, self.size, self.width)
        item = {"lq": torch.rand(shape, generator=generator), "hq": torch.rand(shape, generator=generator),
                "modality": "ct", "task": "ct_denoise", "name": f"scan {index}.nii.gz#3"}
        if self.scale is not None:
            item["scale"] = self.scale
        return item


@pytest.mark.parametrize("scale", [None, 2.0])
def test_saved_images_are_in_stored_units_and_named_in_dataset_order(tmp_path, scale):
    for count, digits in ((10, 1), (11, 2)):  # indices 0-9 need one digit, 0-10 two
        dataset, out = _Items(count, scale), tmp_path / str(count)
        evaluate_model(_Identity(), dataset, save_dir=out, quiet=True)
        names = [f"{i:0{digits}d}_scan_{i}_slice3.npy" for i in range(count)]
        assert sorted(p.name for p in (out / "ct_denoise").iterdir()) == sorted(names)
    convention = get_convention("ct")
    for index in (0, 10):
        expected = convention.denormalize(dataset[index]["lq"][0].double().numpy()) * (scale or 1.0)
        image = np.load(out / "ct_denoise" / names[index])
        np.testing.assert_allclose(image, expected.astype(np.float32), rtol=1e-6)
    assert evaluate_model(_Identity(), dataset, max_images=0, quiet=True) == []


def test_tiles_give_the_rows_of_whole_images_for_a_local_model():
    dataset = _Items(3, size=40)
    whole = evaluate_model(_Identity(), dataset, quiet=True)
    assert evaluate_model(_Identity(), dataset, tile=16, quiet=True) == whole


class _ShiftBySize(torch.nn.Module):
    """Adds 1e-3 times (its input's pixel count / 256): 1e-3 on a 16 x 16 tile, more on a larger image."""

    def forward(self, x):
        return x + 1e-3 * x.shape[-2] * x.shape[-1] / 256


class _Shift(torch.nn.Module):
    def __init__(self, shift: float) -> None:
        super().__init__()
        self.shift = shift

    def forward(self, x):
        return x + self.shift


@pytest.mark.parametrize("height, width", [(40, 30), (12, 40), (40, 12)])
def test_tiles_are_planned_on_each_images_own_height_and_width(height, width):
    """In tiles of 16 every tile of an image min(h, 16) x min(w, 16) or larger has that size, so it is shifted by
    1e-3 min(h, 16) min(w, 16) / 256, and the blend of equal shifts is that shift: the rows equal those of a model
    that adds it to the whole image. An image with one side at most 16 is still tiled along the other; whole, the
    image gets a larger shift (on these random images it moves the RMSE by tenths of a HU)."""
    dataset = _Items(3, size=height, width=width)
    tiled = evaluate_model(_ShiftBySize(), dataset, tile=16, quiet=True)
    expected = evaluate_model(_Shift(1e-3 * min(height, 16) * min(width, 16) / 256), dataset, quiet=True)
    for row, want in zip(tiled, expected, strict=True):
        for column in COLUMNS[3:]:
            assert row[column] == pytest.approx(want[column], rel=1e-5), column
    whole = evaluate_model(_ShiftBySize(), dataset, quiet=True)
    assert all(abs(a["rmse_out"] - b["rmse_out"]) > 0.05 for a, b in zip(whole, expected))  # HU


def test_item_names_become_safe_file_stems():
    assert safe_file_name("scan.nii.gz#12") == "scan_slice12"
    assert safe_file_name("SCAN.NII.GZ") == "SCAN"
    assert safe_file_name("dir/a b:c.dcm") == "dir_a_b_c"
    assert safe_file_name("ct-1.2_x.npy") == "ct-1.2_x"
    assert safe_file_name(".hidden") == "hidden"
    assert safe_file_name("") == "image"


def test_evaluate_model_refuses_bad_arguments_word_for_word():
    dataset = _Items(1)
    with pytest.raises(ValueError) as error:
        evaluate_model(_Identity(), dataset, batch_size=0)
    assert str(error.value) == "batch_size must be at least 1; got 0"
    with pytest.raises(ValueError) as error:
        evaluate_model(_Identity(), dataset, ssim_boundary="mirror")
    assert str(error.value) == f"ssim_boundary must be one of {SSIM_BOUNDARIES}; got 'mirror'"
    with pytest.raises(ValueError) as error:
        evaluate_model(_Identity(), dataset, precision="fp8")
    assert str(error.value) == f"precision must be one of {sorted(PRECISIONS)}; got 'fp8'"


def _stats(mean, std, n):
    return {"mean": mean, "std": std, "n": n}


def test_the_table_gives_each_metric_its_precision_and_aligns_its_columns():
    """PSNR to 2 decimals, SSIM to 4, RMSE to about 4 significant digits of its mean; the task column is
    left-aligned, the others right-aligned to their widest cell; missing means are '-' with a note."""
    summary = {
        "ct_denoise": {"count": 3, "psnr_in": _stats(27.6912, 2.381, 3), "psnr_out": _stats(30.0, 0.0, 3),
                       "ssim_in": _stats(0.79234, 0.08123, 3), "ssim_out": _stats(None, None, 0),
                       "rmse_in": _stats(166.14, 33.04, 3), "rmse_out": _stats(0.00053, 0.0001, 2)},
        # 9.5 dB and an SSIM of 1: where RMSE's rule would give PSNR 3 decimals and SSIM 3
        "pet": {"count": 1, "psnr_in": _stats(9.5, 0.0, 1), "psnr_out": _stats(28.25, 0.0, 1),
                "ssim_in": _stats(1.0, 0.0, 1), "ssim_out": _stats(0.75, 0.0, 1),
                "rmse_in": _stats(12345.6, 10.2, 1), "rmse_out": _stats(-20.0, 1.0, 1)},
    }
    widths = [10, 1, 12, 12, 15, 15, 12, 19]
    rows = [["task", "n", "PSNR in", "PSNR out", "SSIM in", "SSIM out", "RMSE in", "RMSE out"],
            ["ct_denoise", "3", "27.69 ± 2.38", "30.00 ± 0.00", "0.7923 ± 0.0812", "-", "166.1 ± 33.0",
             "0.000530 ± 0.000100"],
            ["pet", "1", "9.50 ± 0.00", "28.25 ± 0.00", "1.0000 ± 0.0000", "0.7500 ± 0.0000", "12346 ± 10",
             "-20.00 ± 1.00"]]
    lines = ["  ".join([row[0].ljust(widths[0])] + [cell.rjust(w) for cell, w in zip(row[1:], widths[1:])])
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines += ["ct_denoise ssim_out: 3 of 3 value(s) not finite, left out",
              "ct_denoise rmse_out: 1 of 3 value(s) not finite, left out"]
    assert format_table(summary) == "\n".join(lines)
    zero = {"t": {"count": 1, **{f"{m}_{s}": _stats(0.0, 0.0, 1) for m in ("psnr", "ssim", "rmse")
                                 for s in ("in", "out")}}}
    assert format_table(zero).splitlines()[2].split()[-3:] == ["0.000", "±", "0.000"]  # RMSE 0: 3 decimals
    tiny = {"t": {"count": 1, **{f"{m}_{s}": _stats(4e-5, 0.0, 1) for m in ("psnr", "ssim", "rmse")
                                 for s in ("in", "out")}}}
    assert format_table(tiny).splitlines()[2].split()[-3:] == ["0.000040", "±", "0.000000"]  # at most 6


def test_split_records_and_trained_pairs_choose_and_refuse_word_for_word(tiny, tmp_path):
    from restore_rwkv.engine.evaluation import split_records, trained_pairs
    from restore_rwkv.utils.errors import InputError

    with pytest.raises(InputError) as error:
        split_records(tiny["root"], "all")
    assert str(error.value).endswith("--split all is for manifests; name a split of the prepared root")
    with pytest.raises(InputError) as error:
        split_records(tmp_path / "nowhere", "test")
    assert str(error.value).endswith("no such folder or manifest")
    records = split_records(tiny["manifest"], "all")
    assert [r.split for r in split_records(tiny["manifest"], "train")] == ["train"] * len(IMAGES)
    blank = tmp_path / "blank.csv"
    write_manifest(blank, [dataclasses.replace(records[0], split="train"), dataclasses.replace(records[0], split="")])
    with pytest.raises(InputError) as error:
        split_records(blank, "test")
    assert str(error.value).endswith("no pairs of split 'test' (splits present: (empty), train; "
                                     "--split all takes every pair)")

    card = ModelCard(model="restore_rwkv_light", task="ct_denoise", conventions={"ct": CONVENTIONS["ct"]})
    mri = [r for r in records if r.modality == "mri"]
    ct = [r for r in records if r.modality == "ct"]
    assert trained_pairs(ct, card) == (ct, "")
    assert trained_pairs(records, card, force=True) == (records, "")
    chosen, note = trained_pairs(records, card)
    assert chosen == ct
    assert note == (f"left out {len(mri)} pair(s) the weights were not trained for: mri_sr/mri ({len(mri)}) "
                    "(--force includes them)")
    with pytest.raises(InputError) as error:
        trained_pairs(mri, card)
    assert str(error.value) == (f"the data holds only pairs the weights were not trained for (mri_sr/mri "
                                f"({len(mri)}); the card says ct_denoise on ct); --force evaluates them anyway")
    pet = dataclasses.replace(mri[0], modality="PET", task="pet")  # modality names are matched case-blind
    chosen, note = trained_pairs([*records, pet], card)
    assert chosen == ct and note.endswith(f"not trained for: mri_sr/mri ({len(mri)}), pet/pet (1) "
                                          "(--force includes them)")
    both = ModelCard(model="restore_rwkv_light", task="all_in_one", conventions=CONVENTIONS)
    with pytest.raises(InputError) as error:
        trained_pairs([pet], both)
    assert str(error.value).endswith("(pet/pet (1); the card says all_in_one on ct, mri); --force evaluates them "
                                     "anyway")
    with pytest.raises(InputError) as error:
        trained_pairs([dataclasses.replace(ct[0], modality="xray")], card)
    assert str(error.value) == "unknown modality 'xray'; expected one of ct, mri, pet"


def test_evaluate_weights_refuses_word_for_word_and_saves_out_of_range_input_as_it_was(tiny, tmp_path):
    """The refusals of evaluate_weights and of its output check, whole; and, as restore writes it, a saved image
    keeps the input's own values where the input lies outside the policy's range (CT padding at -3024 HU)."""
    from restore_rwkv.engine.evaluation import evaluate_weights
    from restore_rwkv.utils.errors import InputError

    def refusal(**kwargs) -> str:
        arguments = {"weights": tiny["ct"], "data": tiny["root"], "out": tmp_path / "never", "device": "cpu",
                     "quiet": True, **kwargs}
        with pytest.raises(InputError) as error:
            evaluate_weights(**arguments)
        assert not (tmp_path / "never").exists()
        return str(error.value)

    assert refusal(batch_size=0) == "--batch-size must be at least 1, got 0"
    assert refusal(max_images=0) == "--max-images must be at least 1, got 0"
    assert refusal(out=tiny["root"].parent) == (f"{tiny['root'].parent}: refusing to write over "
                                                f"{tiny['root'].resolve()}, an input of this evaluation")
    # inside the data folder: --overwrite would have replaced CT/, the input's own pairs
    assert refusal(out=tiny["root"] / "CT", overwrite=True) == (f"{tiny['root'] / 'CT'}: refusing to write inside "
                                                                f"the input folder {tiny['root'].resolve()}")
    assert (tiny["root"] / "CT" / "test" / "LQ" / "ct_a.npy").is_file()
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("x")
    assert refusal(out=full) == f"{full}: output folder exists and is not empty (--overwrite replaces it)"
    assert refusal(out=full, overwrite=True) == (f"{full}: is not a folder written by evaluate (no per_image.csv); "
                                                 "refusing to replace it with --overwrite")
    (full / "summary.json").write_text("{}")  # as prepare leaves in a prepared dataset: not evaluate's
    assert refusal(out=full, overwrite=True).endswith("is not a folder written by evaluate (no per_image.csv); "
                                                      "refusing to replace it with --overwrite")

    root = tmp_path / "padded"
    rng = np.random.default_rng(3)
    hq = rng.uniform(-200.0, 300.0, (24, 20)).astype(np.float32)
    lq = hq + rng.normal(0.0, 20.0, hq.shape).astype(np.float32)
    hq[:4], lq[:4] = -3024.0, -3024.0  # out-of-field padding, below the policy's range
    for kind, image in (("HQ", hq), ("LQ", lq)):
        (root / "CT" / "test" / kind).mkdir(parents=True)
        np.save(root / "CT" / "test" / kind / "pad.npy", image)
    report, note = evaluate_weights(tiny["ct"], root, tmp_path / "out", device="cpu", max_images=1,
                                    save_images=True, quiet=True)
    assert report["images"] == 1 and note == ""
    saved = np.load(tmp_path / "out" / "images" / "ct_denoise" / "0_pad.npy")
    assert (saved[:4] == -3024.0).all()  # the input's padding, not what the network made of its clipped copy
    assert saved[8:].min() > -2000.0  # away from it, the (untrained) model's output
