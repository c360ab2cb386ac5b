"""The demo runner: inputs written in clinical formats, restored in the same formats, scored, shown on a page."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

import restore_rwkv.data.io as io
from restore_rwkv.cli import main
from restore_rwkv.data.datasets import read_manifest
from restore_rwkv.modality import TASKS, get_convention
from restore_rwkv.demo.models import ALL_IN_ONE_MODEL as ALL_IN_ONE
from restore_rwkv.demo.models import SINGLE_TASK as DEMO_MODELS
from restore_rwkv.demo.run import run_demo
from restore_rwkv.metrics import evaluate_physical
from restore_rwkv.models.card import ModelCard, save_model_with_card
from restore_rwkv.models.registry import create_model

TINY = dict(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1)
CONVENTIONS = {name: get_convention(name).to_card() for name in ("ct", "mri", "pet")}  # this version's policies


def _weights(folder, name: str, identity: bool, task: str):
    torch.manual_seed(0)
    model = create_model("restore_rwkv_light", **TINY).eval()
    if identity:  # zero output convolution: the global residual returns the normalised input
        with torch.no_grad():
            model.output.weight.zero_()
            model.output.bias.zero_()
    card = ModelCard(model="restore_rwkv_light", task=task, model_args=dict(TINY),
                     conventions=CONVENTIONS if task == "all_in_one" else {TASKS[task].modality: CONVENTIONS[TASKS[task].modality]})
    return save_model_with_card(model, folder / f"{name}.safetensors", card)


@pytest.fixture(scope="module")
def demo_run(demo_root, tmp_path_factory):
    """The demo with identity single-task models and a random all-in-one model."""
    folder = tmp_path_factory.mktemp("weights")
    weights = {name: _weights(folder, name, True, task) for task, name in DEMO_MODELS.items()}
    weights[ALL_IN_ONE] = _weights(folder, ALL_IN_ONE, False, "all_in_one")
    out = tmp_path_factory.mktemp("demo_run") / "demo_output"
    report = run_demo(out, demo_root, device="cpu", weights=weights, quiet=True)
    return report, demo_root


def test_outputs_keep_the_inputs_format_and_geometry(demo_run):
    report, _ = demo_run
    for name in ("invesalius_cranium", "jxd191021006_head"):
        ct_in, ct_meta = io.read_image(report.outputs["ct_denoise"][f"{name}: input"])
        ct_out, ct_out_meta = io.read_image(report.outputs["ct_denoise"][f"{name}: {DEMO_MODELS['ct_denoise']}"])
        assert ct_meta.format == ct_out_meta.format == "dicom-series" and ct_out_meta.modality == "CT"
        assert ct_out.shape == ct_in.shape
        assert ct_out_meta.datasets[0].StudyInstanceUID == ct_meta.datasets[0].StudyInstanceUID
        np.testing.assert_allclose(ct_out_meta.affine_in("LPS"), ct_meta.affine_in("LPS"), atol=1e-4)
    assert ct_in.shape[0] == 1 and io.read_image(report.outputs["ct_denoise"]["invesalius_cranium: input"])[0].shape[0] >= 20
    for task, name in (("mri_sr", "pycortex_s1"), ("pet", "mni152_fdg")):
        values, meta = io.read_image(report.outputs[task][f"{name}: {DEMO_MODELS[task]}"])
        source, source_meta = io.read_image(report.outputs[task][f"{name}: input"])
        assert meta.format == "nifti" and values.shape == source.shape
        np.testing.assert_allclose(meta.affine_in("RAS"), source_meta.affine_in("RAS"), atol=1e-5)


def test_scores_match_an_independent_computation_and_identity_equals_input(demo_run):
    from restore_rwkv.demo.recipe import test_sets

    report, root = demo_run
    records = read_manifest(root / "manifest.csv")
    for task, name in DEMO_MODELS.items():
        sets = test_sets([r for r in records if r.task == task and r.split == "test"])
        psnr_all = []
        for set_name, tests in sets:
            lq = np.stack([np.load(r.lq) for r in tests]).astype(np.float64)
            hq = np.stack([np.load(r.hq) for r in tests]).astype(np.float64)
            if task == "ct_denoise":  # a DICOM series stores whole HU
                lq, hq = np.rint(lq), np.rint(hq)
            scale = get_convention(TASKS[task].modality).scaling.fit(lq) if task == "mri_sr" else 1.0
            expected = evaluate_physical(lq / scale, hq / scale, TASKS[task].modality)
            psnr_all += list(np.atleast_1d(expected["psnr"]))
            scores = {s.method: s for s in report.scores if s.task == task and s.test_set == set_name}
            assert scores["input"].images == len(tests)
            assert scores["input"].psnr == pytest.approx(float(np.mean(expected["psnr"])), abs=0.02)
            assert scores["input"].ssim == pytest.approx(float(np.mean(expected["ssim"])), abs=2e-4)
            # identity weights give the input back (within the stored dtype's rounding)
            assert scores[name].psnr == pytest.approx(scores["input"].psnr, abs=0.05)
            assert scores[name].ssim == pytest.approx(scores["input"].ssim, abs=1e-3)
            assert abs(scores["all-in-one (light)"].psnr - scores["input"].psnr) > 0.05  # the random model changes it
        overall = {s.method: s for s in report.scores if s.task == task and s.test_set == "all"}
        assert overall["input"].images == len(psnr_all)
        assert overall["input"].psnr == pytest.approx(float(np.mean(psnr_all)), abs=0.02)  # a mean over every slice


def test_page_shows_every_test_set_figure_and_one_table_per_task(demo_run):
    report, _ = demo_run
    page = (report.out / "index.html").read_text()
    for task in DEMO_MODELS:
        assert report.figures[task]
        for name, figure in report.figures[task].items():
            assert figure.is_file() and figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            assert f'src="figures/{task}_{name}.png"' in page
    assert len(re.findall(r"<table>", page)) == 3
    results = json.loads((report.out / "results.json").read_text())
    assert {s["task"] for s in results["scores"]} == set(DEMO_MODELS)
    sets = sum(len(figures) for figures in report.figures.values())
    assert len(results["scores"]) == 3 * (3 + sets)  # input, single-task, all-in-one: over all slices and per set
    assert "colin27" in page and "invesalius_cranium" in page


def test_demo_command_names_missing_models_in_one_line(tmp_path, capsys, demo_root):
    code = main(["demo", "--out", str(tmp_path / "out"), "--data", str(demo_root), "--quiet",
                 "--model", "not_a_model=x"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not_a_model" in err
