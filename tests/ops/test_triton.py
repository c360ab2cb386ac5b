"""The Triton backend against float64 definitions (on a GPU, or in Triton's CPU interpreter)."""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest
import torch

if importlib.util.find_spec("triton") is None:
    pytest.skip("Triton is not installed (the backend runs on CUDA where it is)", allow_module_level=True)
if not torch.cuda.is_available():
    if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("Triton was imported before its interpreter could be switched on", allow_module_level=True)
    # Without a GPU the kernels run in Triton's interpreter, which must be on before Triton loads.
    os.environ["TRITON_INTERPRET"] = "1"

from layouts import LAYOUTS, check_strided  # noqa: E402
from restore_rwkv.ops import bi_wkv, re_wkv  # noqa: E402
from restore_rwkv.ops import dispatch  # noqa: E402
from restore_rwkv.ops._reference import bi_wkv_reference_grad  # noqa: E402

dispatch._triton_module.cache_clear()
_triton = dispatch._triton_module()
if _triton is None:
    pytest.skip("restore_rwkv.ops._triton does not import with this Triton", allow_module_level=True)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _direct_sums(x: torch.Tensor, w: torch.Tensor, column_major: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """P and S by their O(T^2) definition in float64, returned in the (B, H, W, C) layout of x."""
    batch, height, width, channels = x.shape
    seq = (x.transpose(1, 2) if column_major else x).double().reshape(batch, -1, channels)
    t = torch.arange(seq.shape[1], dtype=torch.float64)
    gap = t[:, None] - t[None, :]  # target minus source
    decay = torch.exp(-(gap.abs()[..., None] - 1) * w.double())
    prefix = torch.einsum("tic,bic->btc", torch.where(gap[..., None] > 0, decay, 0.0), seq)
    suffix = torch.einsum("tic,bic->btc", torch.where(gap[..., None] < 0, decay, 0.0), seq)

    def back(y):
        if column_major:
            return y.view(batch, width, height, channels).transpose(1, 2)
        return y.view(batch, height, width, channels)

    return back(prefix), back(suffix)


@pytest.mark.parametrize("column_major", [False, True])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 7, 19, 5), (1, 9, 23, 40), (1, 16, 8, 33)])
@pytest.mark.parametrize("span", [0.0, 14.9, -14.9])
def test_decayed_sums_match_definition(shape, column_major, span):
    gen = torch.Generator().manual_seed(hash((shape, column_major, span)) % 2**31)
    x = torch.randn(*shape, generator=gen)
    length = shape[1] * shape[2]
    w = torch.rand(shape[3], generator=gen) * span / length  # |w| T up to the 15-nat limit, both signs
    prefix, suffix = _triton.decayed_sums(x.to(DEVICE), w.to(DEVICE), column_major)
    want_p, want_s = _direct_sums(x, w, column_major)
    for got, want in ((prefix, want_p), (suffix, want_s)):
        scale = float(want.abs().max()) + 1.0
        assert float((got.cpu().double() - want).abs().max()) <= 2e-6 * scale


def _leaves(tensors):
    return [t.to(DEVICE).clone().requires_grad_() for t in tensors]


@pytest.mark.parametrize("shape", [(2, 5, 13, 3), (1, 12, 11, 40)])
@pytest.mark.parametrize("steps", [1, 2, 3])
def test_re_wkv_matches_reference_forward_and_backward(shape, steps):
    gen = torch.Generator().manual_seed(hash((shape, steps)) % 2**31)
    channels = shape[-1]
    k = torch.randn(*shape, generator=gen) * 3
    v = torch.randn(*shape, generator=gen)
    # |decay| and |first| (nats over the whole sequence) up to the kernels' 15-nat range
    decay = (torch.randn(steps, channels, generator=gen) * 6).clamp(-14.9, 14.9)
    first = (torch.randn(steps, channels, generator=gen) * 6).clamp(-14.9, 14.9)
    grad = torch.randn(*shape, generator=gen)
    got = _leaves((k, v, decay, first))
    y = re_wkv(*got, backend="triton")
    y.backward(grad.to(DEVICE))
    want = [t.double().clone().requires_grad_() for t in (k, v, decay, first)]
    y_ref = re_wkv(*want, backend="reference")
    y_ref.backward(grad.double())
    assert y.dtype == torch.float32
    assert float((y.detach().cpu().double() - y_ref.detach()).norm() / y_ref.detach().norm()) <= 1e-5
    for name, leaf, ref in zip(("k", "v", "decay", "first"), got, want):
        err = float((leaf.grad.cpu().double() - ref.grad).norm())
        assert err <= 1e-4 * float(ref.grad.norm()) + 1e-9, f"d{name}: {err:.3e} vs |ref| {float(ref.grad.norm()):.3e}"


def test_bi_wkv_matches_reference_gradients():
    gen = torch.Generator().manual_seed(7)
    length, channels = 150, 6
    w = (torch.randn(channels, generator=gen) * 6).clamp(-14.9, 14.9) / length
    u = (torch.randn(channels, generator=gen) * 6).clamp(-14.9, 14.9) / length
    k = torch.randn(2, length, channels, generator=gen) * 2
    v = torch.randn(2, length, channels, generator=gen)
    gy = torch.randn(2, length, channels, generator=gen)
    leaves = _leaves((w, u, k, v))
    y = bi_wkv(*leaves, backend="triton")
    y.backward(gy.to(DEVICE))
    y_ref, grads_ref, _ = bi_wkv_reference_grad(w.double(), u.double(), k.double(), v.double(), gy.double())
    assert float((y.detach().cpu().double() - y_ref).norm() / y_ref.norm()) <= 1e-5
    for leaf, ref in zip(leaves, grads_ref):
        assert float((leaf.grad.cpu().double() - ref).norm()) <= 1e-4 * float(ref.norm())


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("autograd", [True, False], ids=["autograd", "no_grad"])
@pytest.mark.parametrize("op", ["bi_wkv", "re_wkv"])
def test_strided_inputs_match_float64_reference(op, autograd, layout):
    """Permuted, transposed, sliced and expanded inputs: values and gradients as on contiguous ones."""
    check_strided(op, layout, "triton", autograd, device=DEVICE, seed=len(layout) + 7 * autograd)


def test_out_of_range_inputs_are_refused_when_asked_for_and_left_to_chunked_otherwise():
    k = torch.randn(1, 4, 4, 2, device=DEVICE)
    big = torch.full((2, 2), 400.0, device=DEVICE)  # |w| T = 400 nats
    with pytest.raises(ValueError, match="triton"):
        re_wkv(k, k, big, big, backend="triton")
    if DEVICE == "cuda":  # auto picks triton on CUDA and must hand this call on
        y = re_wkv(k.double(), k.double(), big.double(), big.double())
        y_ref = re_wkv(k.double(), k.double(), big.double(), big.double(), backend="reference")
        assert torch.allclose(y.cpu(), y_ref.cpu(), rtol=1e-9, atol=1e-12)


def test_explicit_triton_runs_the_kernels_and_refuses_float64(monkeypatch):
    """backend="triton" runs the Triton kernels (not chunked, which gives the same numbers), and
    refuses float64 inputs with the whole reason."""
    calls = []
    original = _triton.re_wkv_triton
    monkeypatch.setattr(_triton, "re_wkv_triton", lambda *a: (calls.append(a[0].shape), original(*a))[1])
    k, v = torch.randn(2, 1, 4, 5, 3, device=DEVICE)
    decay, first = torch.randn(2, 2, 3, device=DEVICE)
    want = re_wkv(k.double(), v.double(), decay.double(), first.double(), backend="reference")
    assert float((re_wkv(k, v, decay, first, backend="triton").double() - want).abs().max()) <= 1e-5
    w, u = decay[0] / 20, first[0] / 20
    bi_wkv(w, u, k.reshape(1, 20, 3), v.reshape(1, 20, 3), backend="triton")
    assert calls == [(1, 4, 5, 3), (1, 1, 20, 3)]
    message = (r"^bi_wkv backend 'triton': inputs outside its range \(\|w\|\*T or \|u\| above 15 nats, "
               r"or float64\); use 'chunked'$")
    with pytest.raises(ValueError, match=message):
        re_wkv(k.double(), v.double(), decay.double(), first.double(), backend="triton")
    with pytest.raises(ValueError, match=message):
        bi_wkv(w.double(), u.double(), k.reshape(1, 20, 3).double(), v.reshape(1, 20, 3).double(), backend="triton")
    # The range is |w| T over the T = 20 tokens (here 16 nats), not over the 3 channels (2.4).
    with pytest.raises(ValueError, match=message):
        bi_wkv(torch.full((3,), 0.8, device=DEVICE), u, k.reshape(1, 20, 3), v.reshape(1, 20, 3), backend="triton")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_auto_picks_triton_on_cuda():
    assert dispatch.available_backends("cuda")[0] == "triton"
    assert dispatch.select_backend(torch.device("cuda")) == "triton"
