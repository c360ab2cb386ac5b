"""The Restore-RWKV model against the reference implementation's fixtures and its own invariants."""

from __future__ import annotations

import io
import json

import pytest
import torch

from restore_rwkv import RestoreRWKV, create_model, list_models, load_pretrained, reparameterize_model, save_state_dict
from restore_rwkv.layers import OmniShift
from restore_rwkv.models import load_state_dict_file, pad_to_multiple
from restore_rwkv.utils.errors import InputError


def _trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.fixture(scope="module")
def golden(reference_dir):
    data = torch.load(reference_dir / "golden_tiny.pt", weights_only=True)
    config = dict(data["config"])
    config["in_channels"] = config.pop("inp_channels")
    return data, config


def _golden_model(golden) -> RestoreRWKV:
    data, config = golden
    model = RestoreRWKV(**config).double()
    model.load_state_dict(data["state_dict"], strict=True)
    return model


def test_golden_train_mode(golden):
    data, _ = golden
    model = _golden_model(golden).train()
    out = model(data["input"])
    torch.testing.assert_close(out, data["output_train_mode"], rtol=0, atol=1e-10)


def test_golden_eval_mode_after_reparameterization(golden):
    data, _ = golden
    model = _golden_model(golden)
    fused = reparameterize_model(model)
    assert not fused.training and all(m.fused for m in fused.modules() if isinstance(m, OmniShift))
    assert not any(m.fused for m in model.modules() if isinstance(m, OmniShift)), "the original must stay unfused"
    with torch.no_grad():
        out = fused(data["input"])
    torch.testing.assert_close(out, data["output_eval_mode"], rtol=0, atol=1e-10)


def test_golden_without_fused_kernels_loads_strictly(golden):
    data, config = golden
    state = {k: v for k, v in data["state_dict"].items() if "conv5x5_reparam" not in k}
    model = RestoreRWKV(**config).double()
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        out = reparameterize_model(model)(data["input"])
    torch.testing.assert_close(out, data["output_eval_mode"], rtol=0, atol=1e-10)


@pytest.mark.parametrize("mode", ["train_autograd", "eval_fused_no_grad"])
def test_golden_float32_on_the_default_cpu_backend(golden, mode, monkeypatch):
    """The fixture in float32 with the default CPU operator (auto: the C kernels where they build):
    training mode with autograd (the sweeps' autograd function) and, after re-parameterisation,
    inference without autograd (the fused inference kernel).

    Tolerance: weights and input are rounded to float32 (unit roundoff 2^-24 = 6e-8) and every layer
    rounds again; allowing ~32 roundoffs of relative L2 error (2e-6) and 1e-5 absolute (~40 ulps of
    the output's largest value, 2) is tight for float32 (measured: 2.2e-7 and 1e-6 on every backend)
    yet fails for any real defect (a wrong scan order or layout gives errors of order 1).
    """
    from restore_rwkv.ops import available_backends, dispatch, native_available

    monkeypatch.delenv("RESTORE_RWKV_WKV_BACKEND", raising=False)
    default = available_backends("cpu")[0]
    if native_available():
        assert default == "native"
    kernels = dispatch._sweep_kernels(default) if default in ("native", "numba") else None
    calls = []
    if kernels is not None:  # count the calls into the default backend's kernels
        for name in ("forward", "infer"):
            if hasattr(kernels, name):
                original = getattr(kernels, name)
                monkeypatch.setattr(kernels, name, lambda *a, _f=original, _n=name: (calls.append(_n), _f(*a))[1])
    data, config = golden
    model = RestoreRWKV(**config)
    model.load_state_dict(data["state_dict"], strict=True)
    x = data["input"].float()
    if mode == "train_autograd":
        out = model.train()(x.requires_grad_())
        expected = data["output_train_mode"]
        assert out.requires_grad
    else:
        with torch.no_grad():
            out = reparameterize_model(model)(x)
        expected = data["output_eval_mode"]
    assert out.dtype == torch.float32
    if kernels is not None:
        wanted = "forward" if mode == "train_autograd" or not kernels.fused_inference else "infer"
        assert calls and set(calls) == {wanted}, calls
    err = out.detach().double() - expected
    assert float(err.norm() / expected.norm()) <= 2e-6
    assert float(err.abs().max()) <= 1e-5


def test_paper_model_state_dict_matches_reference(reference_dir):
    spec = json.loads((reference_dir / "state_dict_keys_default.json").read_text())
    model = create_model("restore_rwkv")
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert len(shapes) == spec["num_tensors"] == 1114
    assert shapes == spec["state_dict"]
    assert _trainable(model) == spec["trainable_params_excluding_conv5x5_reparam"] == 27_996_737


def test_light_model_size():
    model = create_model("restore_rwkv_light")
    assert _trainable(model) == 1_238_305
    assert set(list_models()) >= {"restore_rwkv", "restore_rwkv_light"}
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        create_model("nope")


def test_fused_kernel_is_not_a_parameter():
    model = create_model("restore_rwkv_light")
    names = {n for n, _ in model.named_parameters()}
    assert not any("conv5x5_reparam" in n for n in names)
    # Every parameter receives a gradient in training mode (DDP without find_unused_parameters).
    model.train()
    model(torch.rand(1, 1, 16, 16)).abs().mean().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("shape", [(1, 1, 37, 53), (2, 1, 8, 8), (1, 1, 5, 3), (1, 1, 64, 40)])
def test_fused_and_unfused_agree_on_any_size(shape):
    model = RestoreRWKV(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1).eval()
    # Give every parameter a non-trivial value so that every path matters.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = torch.rand(shape)
    with torch.no_grad():
        unfused = model(x)
        fused = reparameterize_model(model)(x)
    assert unfused.shape == x.shape
    torch.testing.assert_close(fused, unfused, rtol=0, atol=1e-5)


def _random_small_model(seed: int) -> RestoreRWKV:
    torch.manual_seed(seed)
    model = RestoreRWKV(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("fused_keys", ["current", "absent", "stale"])
def test_fused_model_loading_weights_uses_their_branches(tmp_path, fused_keys):
    """A fused model that loads another model's weights computes that model's function, whether the
    state dict carries the fused 5x5 kernels (current or stale, as the reference saves them in
    training mode) or not (issue #10: the old fused kernels were kept)."""
    other = _random_small_model(2)
    state = other.state_dict()
    if fused_keys == "absent":
        state = {k: v for k, v in state.items() if "conv5x5_reparam" not in k}
    elif fused_keys == "stale":
        state = {k: torch.randn_like(v) if "conv5x5_reparam" in k else v for k, v in state.items()}
    x = torch.rand(1, 1, 24, 16)
    with torch.no_grad():
        expected = other(x)  # unfused: the four branches
        fused = reparameterize_model(_random_small_model(1))
        before = fused(x)
        fused.load_state_dict(state, strict=True)
        got = fused(x)
        assert all(m.fused for m in fused.modules() if isinstance(m, OmniShift))
        assert float((before - expected).abs().max()) > 0.1  # the two models differ: the test can fail
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
        # The same through a checkpoint file.
        path = tmp_path / "other.pt"
        torch.save(state, path)
        reloaded = load_pretrained(reparameterize_model(_random_small_model(3)), path)
        torch.testing.assert_close(reloaded(x), expected, rtol=0, atol=1e-5)


def test_fused_kernel_alone_loads_as_stored():
    """A state dict with only the fused kernel (no branches, strict=False) sets that kernel as given."""
    shift = OmniShift(4).reparameterize()
    kernel = torch.randn(4, 1, 5, 5)
    result = shift.load_state_dict({"conv5x5_reparam.weight": kernel}, strict=False)
    assert set(result.missing_keys) == {"alpha", "conv1x1.weight", "conv3x3.weight", "conv5x5.weight"}
    assert torch.equal(shift.conv5x5_reparam.weight, kernel)
    x = torch.randn(1, 4, 7, 9, dtype=torch.float64)
    expected = torch.nn.functional.conv2d(x, kernel.double(), padding=2, groups=4)
    torch.testing.assert_close(shift(x), expected)


def test_padding_is_reflect_and_cropped():
    x = torch.arange(5 * 6, dtype=torch.float32).view(1, 1, 5, 6)
    padded = pad_to_multiple(x, 8)
    assert padded.shape == (1, 1, 8, 8)
    torch.testing.assert_close(padded[..., :5, :6], x)
    torch.testing.assert_close(padded[..., 5, :6], x[..., 3, :])  # reflect: row 5 mirrors row 3
    tiny = pad_to_multiple(torch.ones(1, 1, 1, 2), 8)
    assert tiny.shape == (1, 1, 8, 8) and torch.all(tiny == 1)


def test_channel_mismatch_input_is_rejected():
    model = RestoreRWKV(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1)
    with pytest.raises(ValueError, match=r"expects \(B, 1, H, W\) input; got shape \(1, 3, 8, 8\)"):
        model(torch.zeros(1, 3, 8, 8))


def test_checkpoint_round_trip_both_formats(tmp_path, golden):
    data, config = golden
    model = _golden_model(golden)
    for name in ("weights.safetensors", "weights.pt"):
        path = save_state_dict(model, tmp_path / name)
        loaded = load_pretrained(RestoreRWKV(**config).double(), path)
        for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
            assert torch.equal(a, b), k
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights.pt", "weights.safetensors"]


def test_saved_checkpoint_carries_the_current_fused_kernel(golden):
    model = _golden_model(golden)
    state = model.state_dict()
    shift = model.encoder_level1[0].att.omni_shift
    torch.testing.assert_close(state["encoder_level1.0.att.omni_shift.conv5x5_reparam.weight"], shift.combined_kernel())


def test_nested_and_ddp_checkpoints_load(tmp_path, golden):
    data, config = golden
    wrapped = {"state_dict": {"module." + k: v for k, v in data["state_dict"].items()}, "epoch": 3}
    torch.save(wrapped, tmp_path / "ddp.pth")
    model = load_pretrained(RestoreRWKV(**config).double(), tmp_path / "ddp.pth")
    torch.testing.assert_close(model.patch_embed.weight, data["state_dict"]["patch_embed.weight"])


def test_bad_checkpoints_give_clear_errors(tmp_path):
    """Every checkpoint problem is an InputError "<path>: <one-line problem>" (the CLI reports those)."""
    model = create_model("restore_rwkv_light")

    def refused(path, problem, load=load_pretrained):
        with pytest.raises(InputError, match=problem) as info:
            load(model, path) if load is load_pretrained else load(path)
        err = info.value
        assert err.path == str(path) and str(err).startswith(f"{path}: ") and "\n" not in str(err)
        return err

    assert not isinstance(refused(tmp_path / "missing.pt", "checkpoint file not found"), FileNotFoundError)
    refused(tmp_path / "missing.pt", "checkpoint file not found", load_state_dict_file)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    refused(tmp_path / "junk.pt", "not a readable checkpoint")
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint either")
    refused(tmp_path / "junk.safetensors", "not a readable checkpoint", load_state_dict_file)
    # A pickle that needs arbitrary code is refused by weights_only loading.
    buffer = io.BytesIO()
    torch.save({"state_dict": {"x": torch.zeros(1)}, "obj": io.StringIO}, buffer)
    (tmp_path / "code.pt").write_bytes(buffer.getvalue())
    refused(tmp_path / "code.pt", "not a readable checkpoint")
    torch.save({"weights": [1, 2]}, tmp_path / "list.pt")
    refused(tmp_path / "list.pt", "does not hold a state dict of tensors", load_state_dict_file)
    torch.save({"patch_embed.weight": torch.zeros(3)}, tmp_path / "wrong.pt")
    refused(tmp_path / "wrong.pt", "weights do not fit RestoreRWKV")


def test_a_few_training_steps_reduce_l1_loss():
    torch.manual_seed(1)
    model = create_model("restore_rwkv_light").train()
    clean = torch.rand(4, 1, 32, 32)
    noisy = clean + 0.1 * torch.randn_like(clean)
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-4, betas=(0.9, 0.999))
    losses = []
    for _ in range(8):
        loss = torch.nn.functional.l1_loss(model(noisy), clean)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


def test_inference_path_matches_training_path(monkeypatch):
    """The no-grad path (Re-WKV written over its values, chunked mixes adding into the residual,
    in-place updates) computes the same function."""
    from restore_rwkv.layers.mixing import ChannelMix, SpatialMix

    model = RestoreRWKV(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1).eval()
    x = torch.rand(1, 1, 24, 40)
    with torch.enable_grad():
        expected = model(x.clone().requires_grad_()).detach()
    monkeypatch.setattr(ChannelMix, "inference_chunk", 100)  # several chunks, one of them partial
    monkeypatch.setattr(SpatialMix, "inference_chunk", 70)
    x_before = x.clone()
    with torch.no_grad():
        got = model(x)
    assert torch.equal(x, x_before), "inference must not modify its input"
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(3)
    model = RestoreRWKV(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1).train()
    x = torch.rand(2, 1, 16, 24)
    grads = []
    for enabled in (False, True):
        model.zero_grad()
        model.set_gradient_checkpointing(enabled)
        model(x).square().mean().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
