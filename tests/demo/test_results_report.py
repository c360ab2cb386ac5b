"""benchmarks/results.py: how it trains the peer networks of each task and carries an earlier report's peers."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import results  # noqa: E402

from restore_rwkv.engine import trainer  # noqa: E402


def row(method: str, psnr: float, n: int = 3) -> dict:
    return {"method": method, "parameter": "", "psnr": psnr, "ssim": 0.9, "rmse": 1.0,
            "psnr_std": 0.1, "ssim_std": 0.01, "rmse_std": 0.1, "n": n}


def report(tmp_path: Path, with_mri_peers: bool) -> Path:
    """A results.json as results.py writes it: CT peers always; MRI peers and per-task fields when asked,
    else the format of reports before MRI peers (training rows without a task, one date)."""
    def table(task: str, peers: bool) -> list[dict]:
        rows = [row("input (LQ)", 30.0), row(f"Restore-RWKV light, single task (`{results.SINGLE[task]}`)", 32.0)]
        return rows + ([row("peer: U-Net (MONAI BasicUNet), same data and recipe", 31.0)] if peers else [])

    training = [{"model": "unet_light_monai", "parameters": 1, "seconds": 60.0}]
    if with_mri_peers:
        training = [{"task": "ct_denoise", **training[0]}, {"task": "mri_sr", **training[0], "seconds": 120.0}]
    path = tmp_path / "results.json"
    path.write_text(json.dumps({
        "results": {"ct_denoise": table("ct_denoise", True), "mri_sr": table("mri_sr", with_mri_peers)},
        "checks": [], "peers": {"training": training, "efficiency": []}, "restormer_erf_radius_px": 14.0,
        "erf_radius_90_px": {},
        **({"sets": {"mri_sr": {name: {"input (LQ)": row("input", 30.0), "`mri_sr_x4_light`": row("ours", 32.0),
                                       "`unet_light_monai`": row("peer", psnr)}
                                for name, psnr in (("colin27", 31.5), ("pycortex_s1", 30.5))}}}
           if with_mri_peers else {}),
        "peers_measured": {"ct_denoise": "2026-12-04", "mri_sr": "2026-12-07"} if with_mri_peers else "2026-12-04"}))
    return path


def test_a_report_from_before_mri_peers_carries_its_ct_peers_only(tmp_path):
    carried = results.carried_peers(report(tmp_path, with_mri_peers=False))
    assert list(carried["tasks"]) == ["ct_denoise"]
    assert carried["tasks"]["ct_denoise"]["measured"] == "2026-12-04"
    assert carried["tasks"]["ct_denoise"]["single"]["psnr"] == 32.0
    assert [r["task"] for r in carried["training"]] == ["ct_denoise"]
    assert carried["tasks"]["ct_denoise"]["sets"] == {}  # that report has no per-set scores of its peers


def test_a_report_with_mri_peers_carries_both_tasks_and_checks_each(tmp_path, capsys):
    path = report(tmp_path, with_mri_peers=True)
    carried = results.carried_peers(path)
    assert carried["tasks"]["mri_sr"]["rows"][0]["psnr"] == 31.0
    assert carried["tasks"]["mri_sr"]["measured"] == "2026-12-07"
    # per test set, only the peers' columns are carried (this run scores the others itself)
    assert {name: {c: e["psnr"] for c, e in entry.items()} for name, entry in carried["tasks"]["mri_sr"]["sets"].items()} \
        == {"colin27": {"`unet_light_monai`": 31.5}, "pycortex_s1": {"`unet_light_monai`": 30.5}}
    assert [(r["task"], r["seconds"]) for r in carried["training"]] == [("ct_denoise", 60.0), ("mri_sr", 120.0)]
    single = f"Restore-RWKV light, single task (`{results.SINGLE['mri_sr']}`)"
    assert results.carried_still_holds(carried, "mri_sr", [row("input", 30.0), row(single, 32.0)], str(path))
    assert "mri_sr" in carried["tasks"] and capsys.readouterr().out == ""
    # another MRI model: its peers are dropped (to be trained again), the CT peers stay
    assert not results.carried_still_holds(carried, "mri_sr", [row("input", 30.0), row(single, 32.1)], str(path))
    assert "its mri_sr single-task model row (32.0000 dB, 3 slices) differs" in capsys.readouterr().out
    assert list(carried["tasks"]) == ["ct_denoise"] and [r["task"] for r in carried["training"]] == ["ct_denoise"]
    assert not results.carried_still_holds(carried, "ct_denoise", [row("input", 30.0, n=4), row(
        f"Restore-RWKV light, single task (`{results.SINGLE['ct_denoise']}`)", 32.0)], str(path))  # other test data
    assert carried["tasks"] == {} and carried["training"] == []


SHIPPED = {"ct_denoise_light": {"train_seconds": 600.0}, "mri_sr_x4_light": {"train_seconds": 60.0, "base_train_seconds": 120.0}}


def test_peer_training_rows_and_dates_for_carried_and_trained_tasks(tmp_path):
    carried = results.carried_peers(report(tmp_path, with_mri_peers=False))  # CT peers of 2026-12-04
    mri = {("mri_sr", "restormer_light_monai"): 300.0, ("mri_sr", "unet_light_monai"): 240.0}
    rows, dates = results.peer_training(carried, mri, SHIPPED, lambda name: 7, "2026-12-07")
    assert [(r["task"], r["model"], r["seconds"]) for r in rows] == [
        ("ct_denoise", "unet_light_monai", 60.0),  # carried as it was
        ("mri_sr", "restore_rwkv_light", 180.0), ("mri_sr", "restormer_light_monai", 300.0),
        ("mri_sr", "unet_light_monai", 240.0)]  # ours: both stages of the shipped MRI model
    assert dates == {"ct_denoise": "2026-12-04", "mri_sr": "2026-12-07"}
    assert all(r["parameters"] == 7 for r in rows[1:])

    # nothing carried, both tasks trained; --skip-peers with or without a carried report
    ct = {("ct_denoise", "unet_light_monai"): 30.0}
    rows, dates = results.peer_training(None, {**ct, **mri}, SHIPPED, lambda name: 7, "2026-12-07")
    assert [(r["task"], r["seconds"]) for r in rows if r["model"] == "restore_rwkv_light"] == [
        ("ct_denoise", 600.0), ("mri_sr", 180.0)]
    assert dates == {"ct_denoise": "2026-12-07", "mri_sr": "2026-12-07"}
    assert results.peer_training(carried, {}, SHIPPED, lambda name: 7, "2026-12-07") == (
        carried["training"], {"ct_denoise": "2026-12-04"})
    assert results.peer_training(None, {}, SHIPPED, lambda name: 7, "2026-12-07") == ([], {})


def test_a_report_without_peers_is_refused(tmp_path):
    path = report(tmp_path, with_mri_peers=False)
    old = json.loads(path.read_text())
    old["results"]["ct_denoise"].pop()
    path.write_text(json.dumps(old))
    with pytest.raises(SystemExit, match="has no peer networks"):
        results.carried_peers(path)


@pytest.mark.parametrize("task", ["ct_denoise", "mri_sr"])
def test_a_peer_is_trained_through_the_shipped_models_chain(tmp_path, monkeypatch, task):
    trained = []

    def fake_train(command, check):  # what `restore-rwkv train` leaves: exported weights and a log
        name = command[command.index("--set") + 1].split("=", 1)[1]
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_bytes(b"")
        trained.append(command)

    monkeypatch.setattr("subprocess.run", fake_train)
    for where in (results, trainer):  # results.py's own use (seconds) and run_finished's
        monkeypatch.setattr(where, "run_progress", lambda run: (10**6, 100.0))
    run, seconds = results.peer_run(tmp_path, "unet_light_monai", task, tmp_path / "data")

    expected = {"ct_denoise": ["demo_ct_denoise"], "mri_sr": ["demo_mri_sr_x4", "demo_mri_sr_x4_finetune"]}[task]
    assert [c[c.index("--config") + 1] for c in trained] == expected
    assert run == tmp_path / f"{expected[-1]}_unet_light_monai"
    assert seconds == 100.0 * len(expected)
    for earlier, later in zip(expected, trained[1:]):  # each later stage starts from the peer's own earlier run
        assert f"model.init_weights={tmp_path / f'{earlier}_unet_light_monai'}" in later
    assert all("model.name=unet_light_monai" in c for c in trained)
    assert not any("model.init_weights" in arg for arg in trained[0])  # the first stage starts as its config says

    trained.clear()  # finished runs are not trained again
    assert results.peer_run(tmp_path, "unet_light_monai", task, tmp_path / "data")[0] == run
    assert trained == []


def test_a_peer_resumes_where_its_runs_stopped(tmp_path, monkeypatch):
    """The base run half trained: it is resumed, then the fine-tune starts from it; a finished base is not
    trained again and only the unfinished fine-tune is."""
    progress = {"demo_mri_sr_x4_unet_light_monai": 4000}
    trained = []

    def fake_train(command, check):
        name = command[command.index("--set") + 1].split("=", 1)[1]
        (tmp_path / name).mkdir(exist_ok=True)
        (tmp_path / name / "model.safetensors").write_bytes(b"")
        progress[name] = 10**6
        trained.append(command)

    (tmp_path / "demo_mri_sr_x4_unet_light_monai").mkdir()
    (tmp_path / "demo_mri_sr_x4_unet_light_monai" / "model.safetensors").write_bytes(b"")
    monkeypatch.setattr("subprocess.run", fake_train)
    for where in (results, trainer):
        monkeypatch.setattr(where, "run_progress", lambda run: (progress.get(Path(run).name, 0), 50.0))
    results.peer_run(tmp_path, "unet_light_monai", "mri_sr", tmp_path / "data")
    assert [c[c.index("--config") + 1] for c in trained] == ["demo_mri_sr_x4", "demo_mri_sr_x4_finetune"]
    assert f"data.train.root={tmp_path / 'data'}" in trained[0] and f"data.val.root={tmp_path / 'data'}" in trained[1]

    trained.clear()
    progress["demo_mri_sr_x4_finetune_unet_light_monai"] = 10  # the fine-tune stopped early
    results.peer_run(tmp_path, "unet_light_monai", "mri_sr", tmp_path / "data")
    assert len(trained) == 1 and trained[0][trained[0].index("--config") + 1] == "demo_mri_sr_x4_finetune"
    assert f"model.init_weights={tmp_path / 'demo_mri_sr_x4_unet_light_monai'}" in trained[0]


def test_the_peer_table_names_each_task_and_its_recipe(tmp_path):
    training = [{"task": task, "model": model, "parameters": 10**6, "seconds": 600.0}
                for task in ("ct_denoise", "mri_sr") for model in results.PEERS]
    efficiency = [{"model": m, "size": n, "seconds": 0.1, "peak_mb": 1.0, "error": None}
                  for m in results.PEERS for n in results.EFFICIENCY_SIZES]
    text = results.render({}, [], {"efficiency": tmp_path / "figures" / "e.png"},
                          {"training": training, "efficiency": efficiency}, {}, tmp_path / "results.md", 60.0, "cpu",
                          {}, {}, {"ct_denoise": "2026-12-04"})
    assert "| MRI super-resolution ×4 | U-Net (MONAI BasicUNet) (`unet_light_monai`) | 1.00 M | 10 min |" in text
    assert "`demo_mri_sr_x4` then `demo_mri_sr_x4_finetune`" in text
    assert "the CT denoising peers, measured in the report of 2026-12-04" in text
    assert "CT ERF radii and figure" in text and "--skip-peers" not in text

    ct_only = [r for r in training if r["task"] == "ct_denoise"]  # --peers-from an old report, --skip-peers
    text = results.render({}, [], {"efficiency": tmp_path / "figures" / "e.png"},
                          {"training": ct_only, "efficiency": efficiency}, {}, tmp_path / "results.md", 60.0, "cpu",
                          {}, {}, {"ct_denoise": "2026-12-04"})
    assert "Not in this report (`--skip-peers`): the MRI super-resolution ×4 peers." in text
    assert "| MRI super-resolution ×4 |" not in text

    text = results.render({}, [], {"efficiency": tmp_path / "figures" / "e.png"},  # the CT peers trained again
                          {"training": training, "efficiency": efficiency}, {}, tmp_path / "results.md", 60.0, "cpu",
                          {}, {}, {"mri_sr": "2026-12-07"})
    assert "the MRI super-resolution ×4 peers, measured in the report of 2026-12-07" in text
    assert "CT ERF" not in text

    text = results.render({}, [], {}, {}, {}, tmp_path / "results.md", 60.0, "cpu", {}, {}, {})  # --skip-peers
    assert "compared with our CT and MRI single-task models" in text and "| task | model |" not in text


def test_per_set_columns_follow_each_method_not_the_first_set():
    def score(psnr):
        return {"n": 3, "psnr": psnr, "psnr_std": 0.1, "ssim": 0.9, "ssim_std": 0.01}

    # a carried peer scored only the second set: its column must not shift the other sets' cells
    lines = results.per_set_table({"a": {"input (LQ)": score(30.0), "`ours`": score(31.0)},
                                   "b": {"input (LQ)": score(20.0), "`ours`": score(21.0), "`peer`": score(22.0)}})
    assert lines[2] == "| test set | slices | input (LQ) | `ours` | `peer` |"
    assert lines[4] == "| a | 3 | 30.00 ± 0.10 / 0.9000 | 31.00 ± 0.10 / 0.9000 | – |"
    assert lines[5] == "| b | 3 | 20.00 ± 0.10 / 0.9000 | 21.00 ± 0.10 / 0.9000 | 22.00 ± 0.10 / 0.9000 |"
    lines = results.per_set_table({"a": {"`ours`": score(31.0), "input (LQ)": score(30.0)},  # another order
                                   "b": {"input (LQ)": score(20.0), "`ours`": score(21.0)}})
    assert lines[5] == "| b | 3 | 21.00 ± 0.10 / 0.9000 | 20.00 ± 0.10 / 0.9000 |"
