"""Bi-WKV: the linear-time backend against the O(T^2) float64 definition of Eq. 8."""

from __future__ import annotations

import functools
import itertools

import numpy as np
import pytest
import torch

from restore_rwkv.ops import (
    available_backends,
    bi_wkv,
    native_available,
    numba_available,
    re_wkv,
    select_backend,
    triton_available,
)
from restore_rwkv.ops._reference import bi_wkv_reference_grad


def _inputs(batch, length, channels, w_scale, k_scale, seed, dtype=torch.float32, span=None):
    """Random Bi-WKV inputs; ``w_scale`` is the spread of |w| T and |u| T in nats.

    With ``span`` (a compiled backend's range, ``MAX_SPAN``), |w| T and |u| are squeezed smoothly
    into (-span, span) (``span * tanh(x / span)``): about the same spread, values up to the edge of
    the range, and every case inside it.
    """
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(channels, generator=gen) * w_scale / length
    u = torch.randn(channels, generator=gen) * w_scale / length
    if span is not None:
        inside = 0.999 * span
        w = inside * torch.tanh(w * length / inside) / length
        u = inside * torch.tanh(u / inside)
    k = torch.randn(batch, length, channels, generator=gen) * k_scale
    v = torch.randn(batch, length, channels, generator=gen)
    gy = torch.randn(batch, length, channels, generator=gen)
    return [x.to(dtype) for x in (w, u, k, v)], gy.to(dtype)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().double() - b).norm() / b.norm())


def _span(backend: str) -> float | None:
    """The |w| T and |u| range (nats) of ``backend`` for float32 inputs; None where it takes all."""
    if backend not in ("native", "numba"):
        return None
    from restore_rwkv.ops._sweeps import MAX_SPAN, weight_dtype
    from restore_rwkv.ops.dispatch import _sweep_kernels

    return MAX_SPAN[weight_dtype(_sweep_kernels(backend), torch.float32)]


def _seed(batch, length, channels, w_scale, k_scale) -> int:
    return hash((batch, length, channels, w_scale, k_scale)) % (2**31)


@functools.lru_cache(maxsize=None)
def _needed_span(batch, length, channels, w_scale, k_scale, span):
    """``span`` where the case as drawn has |w| T or |u| outside it, else None: a case already inside
    a compiled backend's range is run as drawn, and shares its reference with the other backends."""
    if span is None:
        return None
    (w, u, _, _), _ = _inputs(batch, length, channels, w_scale, k_scale, _seed(batch, length, channels, w_scale, k_scale))
    inside = 0.999 * span
    return None if bool((w.abs() * length <= inside).all() and (u.abs() <= inside).all()) else span


@functools.lru_cache(maxsize=None)
def _reference_case(batch, length, channels, w_scale, k_scale, span=None):
    """Inputs and their float64 reference results, computed once per case (and range) for all backends."""
    seed = _seed(batch, length, channels, w_scale, k_scale)
    inputs, gy = _inputs(batch, length, channels, w_scale, k_scale, seed, span=span)
    with torch.no_grad():
        y_ref, grads_ref, scales = bi_wkv_reference_grad(*[x.double() for x in inputs], gy.double())
    return inputs, gy, y_ref, grads_ref, scales


def _check_against_reference(batch, length, channels, w_scale, k_scale, backend="auto"):
    span = _needed_span(batch, length, channels, w_scale, k_scale, _span(backend))
    inputs, gy, y_ref, grads_ref, scales = _reference_case(batch, length, channels, w_scale, k_scale, span)
    if _span(backend) is not None:  # inside the range: the backend runs it itself (no hand-over to chunked)
        assert _sweeps_fit(backend, inputs[0], inputs[1], length)
    leaves = [x.clone().requires_grad_() for x in inputs]
    y = bi_wkv(*leaves, backend=backend)
    y.backward(gy)
    assert torch.isfinite(y_ref).all()
    assert y.dtype == torch.float32
    assert _rel(y, y_ref) <= 1e-5, f"forward rel. error {_rel(y, y_ref):.2e}"
    for name, leaf, ref, scale in zip("wukv", leaves, grads_ref, scales):
        # Relative L2 error <= 1e-4. Where a gradient is a sum of terms that cancel almost
        # exactly (strongly peaked attention), its float64 reference is itself only accurate
        # to ~1e-16 of the sum of the terms' magnitudes; the 1e-9 floor on that scale keeps
        # those cases meaningful instead of comparing two roundings of zero.
        # Compared with the reference rounded to the gradient's dtype: a value that fp32
        # cannot represent (e.g. 1e-77) is expected to come back as 0.
        ref = ref.to(leaf.grad.dtype).double()
        err = float((leaf.grad.double() - ref).norm())
        bound = 1e-4 * float(ref.norm()) + 1e-9 * float(scale.norm())
        assert err <= bound, f"d{name}: error {err:.3e} > {bound:.3e} (|ref| {float(ref.norm()):.3e})"


GRID_FAST = list(itertools.product([1, 2], [1, 2, 3, 17, 64], [1, 8, 48], [1, 10, 100], [1, 10, 100]))
GRID_SLOW = list(itertools.product([1, 2], [1000, 4096], [1, 8, 48], [1, 10, 100], [1, 10, 100]))


needs_numba = pytest.mark.skipif(not numba_available(), reason="numba is not installed")
needs_native = pytest.mark.skipif(not native_available(), reason="no C compiler built the native kernels")
# The compiled kernels get each case squeezed into their range (|w|*T, |u| <= 15 in float32, see
# _inputs), so none is skipped; "chunked" gets the cases as drawn, far outside that range too.
# test_compiled_kernels_hand_large_decay_to_chunked covers out-of-range inputs on the compiled ones.
FAST_BACKENDS = ["chunked", pytest.param("numba", marks=needs_numba), pytest.param("native", marks=needs_native)]
COMPILED = [pytest.param("numba", marks=needs_numba), pytest.param("native", marks=needs_native)]


def _sweeps_fit(backend, w, u, length):
    from restore_rwkv.ops._sweeps import fits
    from restore_rwkv.ops.dispatch import _sweep_kernels

    kernels = _sweep_kernels(backend)
    if w.dtype == torch.float64 and np.float64 not in kernels.dtypes:
        return False
    return fits(kernels, w, u, length, w.dtype)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("batch,length,channels,w_scale,k_scale", GRID_FAST)
def test_matches_reference_fp32(batch, length, channels, w_scale, k_scale, backend):
    _check_against_reference(batch, length, channels, w_scale, k_scale, backend)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("w_scale,k_scale", [(1, 1), (10, 10), (1, 100)])
def test_matches_reference_fp32_long_quick(w_scale, k_scale, backend):
    _check_against_reference(1, 1000, 8, w_scale, k_scale, backend)


@pytest.mark.slow
@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("batch,length,channels,w_scale,k_scale", GRID_SLOW)
def test_matches_reference_fp32_long(batch, length, channels, w_scale, k_scale, backend):
    _check_against_reference(batch, length, channels, w_scale, k_scale, backend)


@pytest.mark.parametrize("backend", COMPILED)
def test_compiled_kernels_hand_large_decay_to_chunked(backend):
    w = torch.full((4,), 200.0 / 64)  # |w| * T = 200 nats: beyond the kernels' range
    u = torch.zeros(4)
    k, v = torch.randn(2, 1, 64, 4)
    auto = bi_wkv(w, u, k, v)
    torch.testing.assert_close(auto, bi_wkv(w, u, k, v, backend="chunked"), rtol=0, atol=0)
    with pytest.raises(ValueError, match="outside its range"):
        bi_wkv(w, u, k, v, backend=backend)


@needs_native
def test_native_leaves_float64_to_numba_or_chunked():
    inputs, _ = _inputs(1, 30, 4, 1, 1, seed=5, dtype=torch.float64)
    with pytest.raises(ValueError, match="float64 on 'native'"):
        bi_wkv(*inputs, backend="native")
    exact = bi_wkv(*inputs, backend="reference")
    torch.testing.assert_close(bi_wkv(*inputs), exact, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", [(1, 1, 1, 3), (2, 5, 7, 6), (1, 16, 3, 8), (2, 9, 9, 16)])
@pytest.mark.parametrize("steps", [1, 2, 3])
def test_re_wkv_backends_agree(shape, steps):
    """Re-WKV: H-scan and V-scan alternate; every backend gives the same values and gradients."""
    k, v = torch.randn(2, *shape)
    decay, first = torch.randn(2, steps, shape[-1]) * 3
    results = {}
    for backend in available_backends():
        leaves = [x.clone().requires_grad_() for x in (k, v, decay, first)]
        out = re_wkv(*leaves, backend=backend)
        out.backward(torch.ones_like(out) + out.detach())
        results[backend] = [out.detach()] + [leaf.grad for leaf in leaves]
    expected = results.pop("reference")
    for backend, got in results.items():
        for name, a, b in zip(["out", "dk", "dv", "ddecay", "dfirst"], got, expected):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=f"{backend} {name}")


@pytest.mark.parametrize("shape", [(1, 5, 7, 6), (2, 16, 3, 20), (1, 9, 9, 16)])
@pytest.mark.parametrize("steps", [1, 2, 3, 4])
def test_re_wkv_inference_path_matches_reference(shape, steps):
    """Without autograd the scans hand their outputs over in each other's layout: same values."""
    k, v = torch.randn(2, *shape)
    decay, first = torch.randn(2, steps, shape[-1])
    expected = re_wkv(k, v, decay, first, backend="reference")
    for backend in available_backends():
        with torch.no_grad():
            got = re_wkv(k, v, decay, first, backend=backend)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5, msg=backend)


def test_re_wkv_second_step_scans_columns():
    """With one token per column the V-scan sees the columns as sequences: an independent check."""
    k, v = torch.randn(2, 1, 4, 6, 3)
    decay, first = torch.randn(2, 2, 3)
    out = re_wkv(k, v, decay, first)
    length = 24
    step0 = bi_wkv(decay[0] / length, first[0] / length, k.reshape(1, 24, 3), v.reshape(1, 24, 3), "reference")
    k_cols = k.transpose(1, 2).reshape(1, 24, 3)
    v_cols = step0.view(1, 4, 6, 3).transpose(1, 2).reshape(1, 24, 3)
    step1 = bi_wkv(decay[1] / length, first[1] / length, k_cols, v_cols, "reference")
    torch.testing.assert_close(out, step1.view(1, 6, 4, 3).transpose(1, 2), rtol=1e-5, atol=1e-6)


def test_reproduces_reference_fixture(reference_dir):
    data = torch.load(reference_dir / "bi_wkv_small.pt", weights_only=True)
    for backend in ("chunked", "reference"):
        y = bi_wkv(data["w"], data["u"], data["k"], data["v"], backend=backend)
        assert y.dtype == torch.float64
        torch.testing.assert_close(y, data["y"], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", ["chunked", pytest.param("numba", marks=needs_numba)])  # float64 backends
@pytest.mark.parametrize("length,w_scale,k_scale", [(1, 1, 1), (5, 3, 2), (23, 30, 5), (70, 1, 1), (130, 60, 3)])
def test_gradcheck_float64(length, w_scale, k_scale, backend):
    inputs, _ = _inputs(2, length, 3, w_scale, k_scale, seed=length, dtype=torch.float64)
    leaves = tuple(x.clone().requires_grad_() for x in inputs)
    assert torch.autograd.gradcheck(lambda *a: bi_wkv(*a, backend=backend), leaves, eps=1e-6, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("length", [17, 4096])
def test_extreme_inputs_stay_finite(length):
    gen = torch.Generator().manual_seed(length)
    for sign in (1.0, -1.0):
        w = sign * torch.full((8,), 1e3 / length)
        w[::2] = -w[::2]
        u = torch.linspace(-1e3, 1e3, 8) / length
        k = (torch.rand(1, length, 8, generator=gen) * 2 - 1) * 1e4
        v = torch.randn(1, length, 8, generator=gen)
        leaves = [x.clone().requires_grad_() for x in (w, u, k, v)]
        y = bi_wkv(*leaves)
        y.sum().backward()
        assert torch.isfinite(y).all()
        # A weighted average of v stays within v's range.
        assert (y.abs() <= v.abs().amax() * (1 + 1e-5)).all()
        for leaf in leaves:
            assert torch.isfinite(leaf.grad).all()


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_are_computed_in_fp32(dtype, backend):
    inputs, gy = _inputs(2, 40, 8, 5, 2, seed=3, dtype=dtype)
    leaves = [x.clone().requires_grad_() for x in inputs]
    y = bi_wkv(*leaves, backend=backend)
    assert y.dtype == dtype
    y.backward(gy)
    for leaf in leaves:
        assert leaf.grad.dtype == dtype
    # The result equals the float32 computation on the same (half-precision) values, rounded once.
    y32 = bi_wkv(*[x.float() for x in inputs], backend=backend)
    assert torch.equal(y, y32.to(dtype))


def test_backend_selection(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.delenv("RESTORE_RWKV_WKV_BACKEND", raising=False)
    assert select_backend(cpu) == available_backends(cpu)[0]
    # chosen by device; nothing runs on it
    assert select_backend(torch.device("cuda")) == ("triton" if triton_available() else "chunked")
    monkeypatch.setenv("RESTORE_RWKV_WKV_BACKEND", "reference")
    assert select_backend(cpu) == "reference"
    assert select_backend(cpu, "chunked") == "chunked"
    monkeypatch.setenv("RESTORE_RWKV_WKV_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="unknown bi_wkv backend 'nonsense'"):
        select_backend(cpu)


def test_rejects_bad_shapes():
    k = torch.zeros(1, 4, 3)
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        bi_wkv(torch.zeros(2), torch.zeros(3), k, k)
    with pytest.raises(ValueError, match=r"\(B, T, C\)"):
        bi_wkv(torch.zeros(3), torch.zeros(3), k, torch.zeros(1, 5, 3))


@pytest.mark.skipif(not native_available(), reason="no C compiler for the native kernels")
@pytest.mark.parametrize("shape", [(1, 70, 37, 20), (2, 33, 48, 16), (1, 1, 300, 5), (1, 65, 1, 17)])
@pytest.mark.parametrize("steps", [1, 2, 3])
def test_native_fused_inference_matches_float64(shape, steps):
    """The fused inference kernel (weights, row sweeps, column sweeps over several lane blocks and
    row tiles, partial channel blocks, buffers handed between steps) against float64 ``chunked``."""
    from restore_rwkv.ops import dispatch as module

    assert module._sweep_kernels("native").fused_inference
    gen = torch.Generator().manual_seed(sum(shape) + steps)
    k = torch.randn(shape, generator=gen) * 2
    v = torch.randn(shape, generator=gen)
    decay = torch.randn(steps, shape[-1], generator=gen) * 3
    first = torch.randn(steps, shape[-1], generator=gen) * 3
    expected = re_wkv(k.double(), v.double(), decay.double(), first.double(), backend="chunked")
    with torch.no_grad():
        got = re_wkv(k, v, decay, first, backend="native")
        got_1d = bi_wkv(decay[0] / k[0].numel() * shape[-1], first[0] / k[0].numel() * shape[-1],
                        k.reshape(shape[0], -1, shape[-1]), v.reshape(shape[0], -1, shape[-1]), backend="native")
    assert got.dtype == torch.float32 and got.shape == shape
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=2e-6)
    if steps == 1:  # one H-scan is Eq. 8 over the row-major tokens
        torch.testing.assert_close(got_1d.view(shape).double(), expected, rtol=1e-5, atol=2e-6)


@pytest.mark.skipif(not numba_available(), reason="numba is not installed")
def test_re_wkv_inference_in_channel_groups_matches(monkeypatch):
    """Without autograd, large inputs on a backend without fused inference (numba) run in channel
    groups; the result is the same."""
    from restore_rwkv.ops import dispatch as module

    k, v = torch.randn(2, 1, 12, 10, 40)
    decay, first = torch.randn(2, 2, 40)
    with torch.no_grad():
        whole = re_wkv(k, v, decay, first, backend="numba")
        monkeypatch.setattr(module, "_INFERENCE_GROUP_ABOVE", 1000)
        monkeypatch.setattr(module, "_INFERENCE_GROUP_ELEMENTS", 1000)  # forces groups of 8 channels
        grouped = re_wkv(k, v, decay, first, backend="numba")
    torch.testing.assert_close(grouped, whole, rtol=0, atol=0)


@pytest.mark.parametrize("steps", [1, 2, 3])
def test_re_wkv_into_its_values(steps):
    """``out=v`` overwrites the values with the result, on every backend; same result as without."""
    k, v = torch.randn(2, 2, 19, 23, 20)
    decay, first = torch.randn(2, steps, 20)
    expected = re_wkv(k, v, decay, first, backend="reference")
    for backend in available_backends():
        values = v.clone()
        with torch.no_grad():
            got = re_wkv(k, values, decay, first, backend=backend, out=values)
        assert got.data_ptr() == values.data_ptr(), backend
        torch.testing.assert_close(values, expected, rtol=1e-4, atol=1e-5, msg=backend)


def test_re_wkv_out_is_for_inference_only():
    k, v = torch.randn(2, 1, 4, 5, 3)
    decay = torch.randn(2, 3, requires_grad=True)
    with pytest.raises(ValueError, match="inference only"):
        re_wkv(k, v, decay, torch.randn(2, 3), out=v)
    with pytest.raises(ValueError, match="shape"), torch.no_grad():
        re_wkv(k, v, decay, torch.randn(2, 3), out=torch.empty(1, 4, 5, 2))


@pytest.mark.skipif(not native_available(), reason="no C compiler for the native kernels")
def test_native_fused_inference_propagates_nan_and_ignores_minus_inf_keys():
    """A NaN key poisons its channel (as the reference does); a -inf key is a zero weight."""
    k, v = torch.randn(2, 1, 9, 11, 20)
    decay, first = torch.randn(2, 2, 20)
    k_bad = k.clone()
    k_bad[0, 4, 5, 3] = float("nan")
    k_bad[0, 2, 7, 9] = float("-inf")
    with torch.no_grad():
        got = re_wkv(k_bad, v, decay, first, backend="native")
    assert torch.isnan(got[..., 3]).all()
    others = [c for c in range(20) if c != 3]
    k_zero_weight = k_bad.clone()
    k_zero_weight[0, 4, 5, 3] = 0.0
    expected = re_wkv(k_zero_weight.double(), v.double(), decay.double(), first.double(), backend="chunked")
    torch.testing.assert_close(got[..., others].double(), expected[..., others], rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("block,rows", [(1 << 21, 256), (132, 3), (40, 3), (7, 1)])  # (132, 3): 3 of 11 rows, 2 of 5 channels
def test_reference_gradients_match_autograd_of_eq8(monkeypatch, block, rows):
    """The float64 reference every backend is judged by: its closed-form gradients equal autograd through
    Eq. 8 written out densely here, and its scales the sums of |terms|, with blocks of every shape."""
    from restore_rwkv.ops import _reference

    monkeypatch.setattr(_reference, "_BLOCK_ELEMENTS", block)
    monkeypatch.setattr(_reference, "_MAX_ROWS", rows)
    (w, u, k, v), gy = _inputs(2, 11, 5, 30, 5, seed=3, dtype=torch.float64)
    leaves = [x.clone().requires_grad_() for x in (w, u, k, v)]
    lw, lu, lk, lv = leaves
    t = torch.arange(11, dtype=torch.float64)
    dist = (t[:, None] - t[None, :]).abs()
    expo = -(dist[None, :, :, None] - 1) * lw + lk[:, None, :, :]  # (B, t, i, C)
    expo = torch.where((dist == 0)[None, :, :, None], (lu + lk)[:, :, None, :], expo)
    p = torch.softmax(expo, dim=2)
    y = (p * lv[:, None, :, :]).sum(dim=2)
    y.backward(gy)
    y_ref, grads, scales = _reference.bi_wkv_reference_grad(w, u, k, v, gy)
    torch.testing.assert_close(y_ref, y.detach(), rtol=1e-12, atol=1e-12)
    for name, got, leaf in zip("wukv", grads, leaves):
        torch.testing.assert_close(got, leaf.grad, rtol=1e-10, atol=1e-12, msg=f"d{name}")
    with torch.no_grad():
        gp = (gy[:, :, None, :] * p).abs()
        mag = v[:, None, :, :].abs() + y[:, :, None, :].abs()
        off = (dist - 1).clamp_min(0)[None, :, :, None]
        diag = (dist == 0)[None, :, :, None]
        expected = [(gp * mag * off).sum((0, 1, 2)), (gp * mag * diag).sum((0, 1, 2)), (gp * mag).sum(1), gp.sum(1)]
    for name, got, want in zip("wukv", scales, expected):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14, msg=f"scale of d{name}")
    torch.testing.assert_close(_reference.bi_wkv_reference(w, u, k, v), y.detach(), rtol=1e-12, atol=1e-12)
