"""``restore-rwkv export``: each format runs without this package's operator and equals eager PyTorch."""

from __future__ import annotations

import pytest
import torch

from restore_rwkv.cli import main
from restore_rwkv.models import ModelCard, create_model, load_model, save_model_with_card
from restore_rwkv.models.export import FORMATS, export_model, load_exported
from restore_rwkv.ops import decay_bound, lowered, re_wkv
from restore_rwkv.utils.errors import InputError

CT = {"ct": {"unit": "HU", "norm_range": [-1024.0, 3072.0], "eval_window": [-160.0, 240.0]}}
ARGS = {"dim": 8, "num_blocks": [1, 1, 1, 1], "num_refinement_blocks": 1}


def _weights(tmp_path, decay_scale: float = 1.0):
    torch.manual_seed(0)
    model = create_model("restore_rwkv_light", **ARGS)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("spatial_decay"):
                p.mul_(decay_scale)
    card = ModelCard(model="restore_rwkv_light", task="ct_denoise", conventions=CT, model_args=ARGS, patch_size=16)
    return save_model_with_card(model, tmp_path / "w" / "tiny.safetensors", card)


@pytest.mark.parametrize("size,decay_scale", [((1, 5, 7, 3), 1.0), ((2, 32, 24, 4), 30.0), ((1, 64, 64, 2), 3.0),
                                              ((1, 8, 8, 2), 1000.0),  # too steep to chunk: scanned densely
                                              ((1, 130, 130, 1), 3.0)])  # > 256 chunks: a second chunked level
def test_lowered_re_wkv_equals_eager(size, decay_scale):
    """The traceable scans (chunk lengths fixed in advance from a bound on |w|) give the eager result:
    chunks with a dense carry, a decay too steep to chunk (dense), and a second chunked level."""
    k, v = torch.randn(2, *size)
    decay, first = torch.randn(2, 2, size[-1]) * decay_scale
    with decay_bound() as decays:
        expected = re_wkv(k, v, decay, first)
    assert decays == [float(decay.abs().max()) / (size[1] * size[2])]
    with lowered(decays):
        got = re_wkv(k, v, decay, first)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "exported-program"])
def test_exported_file_equals_eager_and_carries_the_card(tmp_path, fmt):
    pytest.importorskip("onnxruntime") if fmt == "onnx" else None
    model, card = load_model(_weights(tmp_path))
    path = tmp_path / f"tiny{FORMATS[fmt]}"
    check = fmt != "exported-program"  # its own check is the slowest (a second load): checked below instead
    result = export_model(model, card, path, fmt, tile=16, check=check)
    assert path.is_file() and (result.max_error <= 1e-4 if check else result.max_error is None)
    run, embedded = load_exported(path)
    assert embedded["conventions"] == CT and embedded["patch_size"] == 16 and embedded["model_args"] == ARGS
    assert embedded["export"]["tile"] == 16 and embedded["export"]["batch"] == "dynamic"
    for batch in (1, 4):  # the batch is dynamic
        x = torch.rand(batch, 1, 16, 16) * 1.5 - 0.25
        with torch.no_grad():
            expected = model(x)
        got = run(x)
        assert got.shape == expected.shape
        assert float((got - expected).abs().max()) <= 1e-4 * float(expected.abs().max())


def test_onnx_graph_has_standard_operators_only(tmp_path):
    onnx = pytest.importorskip("onnx")
    model, card = load_model(_weights(tmp_path))
    export_model(model, card, tmp_path / "tiny.onnx", "onnx", tile=16, batch=2, check=False)
    graph = onnx.load(str(tmp_path / "tiny.onnx")).graph
    assert {node.domain for node in graph.node} <= {"", "ai.onnx"}
    assert {"Exp", "CumSum", "Conv"} <= {node.op_type for node in graph.node}  # the scans and the convolutions
    assert [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim] == [2, 1, 16, 16]


def test_export_refuses_a_decay_it_cannot_lower_and_leaves_nothing(tmp_path):
    model, card = load_model(_weights(tmp_path, decay_scale=1e5))
    with pytest.raises(InputError, match="cannot export: an attention decay of .* nats per step .* a larger tile") as info:
        export_model(model, card, tmp_path / "out" / "tiny.pt2", "exported-program", tile=32)  # 1024 tokens
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()


def test_export_command(tmp_path, capsys):
    weights = _weights(tmp_path)
    out = tmp_path / "tiny.pt"
    assert main(["export", "--weights", str(weights), "--format", "torchscript", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out} (torchscript, 16x16 tiles, dynamic batch); matches eager PyTorch within" in printed
    _, embedded = load_exported(out)
    assert embedded["export"]["format"] == "torchscript"
    before = out.read_bytes()
    assert main(["export", "--weights", str(weights), "--format", "torchscript", "-o", str(out)]) == 2
    assert "exists; choose another --output or add --overwrite" in capsys.readouterr().err
    assert out.read_bytes() == before
    assert main(["export", "--weights", str(weights), "--format", "onnx", "--tile", "8", "-o", str(tmp_path / "t.onnx")]) == 2
    assert "--tile: 8 is below the smallest tile" in capsys.readouterr().err
