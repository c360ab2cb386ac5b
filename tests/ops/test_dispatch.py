"""The dispatcher (ops/dispatch.py): which backend runs a call, the range and dtype checks that hand calls
on, the environment variable, and the errors; each choice is observed by spying on the backends that ran,
and the results are checked against float64 ``reference``."""

from __future__ import annotations

import math

import pytest
import torch

from restore_rwkv.ops import available_backends, bi_wkv, dispatch, native_available, numba_available, re_wkv
from restore_rwkv.ops import select_backend
from restore_rwkv.ops._reference import bi_wkv_reference

CPU = torch.device("cpu")
needs_numba = pytest.mark.skipif(not numba_available(), reason="numba is not installed")
needs_native = pytest.mark.skipif(not native_available(), reason="no C compiler built the native kernels")
_ORIGINAL_KERNELS = dispatch._sweep_kernels


@pytest.fixture
def ran(monkeypatch) -> list[str]:
    """Names of the backends that computed (in call order), with RESTORE_RWKV_WKV_BACKEND unset."""
    calls: list[str] = []

    def spy(name, function):
        def wrapped(*args, **kwargs):
            calls.append(name(args))
            return function(*args, **kwargs)

        return wrapped

    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    monkeypatch.setattr(dispatch, "bi_wkv_sweeps", spy(lambda a: a[0].name, dispatch.bi_wkv_sweeps))
    monkeypatch.setattr(dispatch, "re_wkv_sweeps", spy(lambda a: a[0].name, dispatch.re_wkv_sweeps))
    monkeypatch.setattr(dispatch, "bi_wkv_chunked", spy(lambda a: "chunked", dispatch.bi_wkv_chunked))
    monkeypatch.setattr(dispatch, "bi_wkv_reference", spy(lambda a: "reference", dispatch.bi_wkv_reference))
    return calls


def _without(monkeypatch, *missing: str) -> None:
    """Make the compiled kernels named in ``missing`` unavailable."""
    monkeypatch.setattr(dispatch, "_sweep_kernels", lambda name: None if name in missing else _ORIGINAL_KERNELS(name))


def _case(w_nats: float, u_nats: float, dtype=torch.float32, length: int = 40, seed: int = 0):
    """Bi-WKV inputs with max |w| T = ``w_nats`` and max |u| = ``u_nats`` exactly (other channels smaller)."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.tensor([w_nats, -0.5 * w_nats, 0.1]) / length
    u = torch.tensor([0.3 * u_nats, -u_nats, 0.0])
    k = torch.randn(2, length, 3, generator=gen)
    v = torch.randn(2, length, 3, generator=gen)
    return [x.to(dtype) for x in (w, u, k, v)]


def _exact(inputs):
    return bi_wkv_reference(*[x.double() for x in inputs])


def _close(got, want, tol):
    assert float((got.detach().double() - want).norm() / want.norm()) <= tol


@needs_native
@pytest.mark.parametrize("w_nats,u_nats,expected", [
    (14.5, 0.0, "native"), (15.5, 0.0, "chunked"), (-15.5, 0.0, "chunked"),
    (0.0, 14.5, "native"), (0.0, 15.5, "chunked"), (14.9, 14.9, "native"),
])
def test_auto_float32_range_boundary(ran, w_nats, u_nats, expected):
    """float32: the C kernels take |w| T and |u| up to 15 nats; beyond, chunked (not numba) runs."""
    inputs = _case(w_nats, u_nats)
    got = bi_wkv(*inputs)
    assert ran == [expected]
    _close(got, _exact(inputs), 1e-5)


def test_explicit_backends_run_themselves(ran):
    """backend=<name> runs that backend (bi_wkv once; re_wkv once per step, or once on compiled sweeps)."""
    inputs = _case(5.0, 1.0)
    k, v, decay, first = _image_case([2.0, 3.0, 1.0])
    want = re_wkv(*(x.double() for x in (k, v, decay, first)), backend="reference")
    for name in available_backends(CPU):
        ran.clear()
        _close(bi_wkv(*inputs, backend=name), _exact(inputs), 1e-5)
        assert ran == [name]
        ran.clear()
        _close(re_wkv(k, v, decay, first, backend=name), want, 1e-5)
        assert ran == ([name] if name in ("native", "numba") else [name] * 3)


@needs_native
@needs_numba
@pytest.mark.parametrize("w_nats,expected", [(14.0, "numba"), (60.0, "numba"), (99.0, "numba"), (101.0, "chunked")])
def test_auto_float64_goes_to_numba_within_100_nats(ran, w_nats, expected):
    """float64: native has no float64 kernels, so auto goes on to numba (float64 weights, 100 nats)."""
    inputs = _case(w_nats, 2.0, dtype=torch.float64)
    got = bi_wkv(*inputs)
    assert ran == [expected] and got.dtype == torch.float64
    _close(got, _exact(inputs), 1e-10)


@needs_numba
def test_explicit_numba_float64_range_and_refusal(ran):
    inputs = _case(60.0, 2.0, dtype=torch.float64)
    _close(bi_wkv(*inputs, backend="numba"), _exact(inputs), 1e-10)
    assert ran == ["numba"]
    message = (r"^bi_wkv backend 'numba': inputs outside its range \(\|w\|\*T or \|u\| above 15 nats for float32, "
               r"100 for float64, or float64 on 'native'\); use 'chunked'$")
    with pytest.raises(ValueError, match=message):
        bi_wkv(*_case(101.0, 2.0, dtype=torch.float64), backend="numba")
    with pytest.raises(ValueError, match="'numba': inputs outside its range"):
        bi_wkv(*_case(15.5, 2.0), backend="numba")  # float32 weights: 15 nats


@needs_numba
def test_without_native_auto_takes_numba(ran, monkeypatch):
    _without(monkeypatch, "native")
    assert available_backends(CPU) == ["numba", "chunked", "reference"]
    assert select_backend(CPU) == "numba"
    inputs = _case(3.0, 1.0)
    _close(bi_wkv(*inputs), _exact(inputs), 1e-5)
    assert ran == ["numba"]
    needs = "^bi_wkv backend 'native' is not available here: it needs a working C compiler$"
    with pytest.raises(RuntimeError, match=needs):
        select_backend(CPU, "native")
    assert not dispatch.native_available() and dispatch.numba_available()


def test_without_compiled_kernels_auto_takes_chunked(ran, monkeypatch):
    _without(monkeypatch, "native", "numba")
    assert available_backends(CPU) == ["chunked", "reference"]
    inputs = _case(3.0, 1.0)
    _close(bi_wkv(*inputs), _exact(inputs), 1e-5)
    assert ran == ["chunked"]
    needs = "^bi_wkv backend 'numba' is not available here: it needs the numba package$"
    with pytest.raises(RuntimeError, match=needs):
        select_backend(CPU, "numba")
    assert not dispatch.native_available() and not dispatch.numba_available()


@needs_native
@needs_numba
def test_available_backends_fastest_first(monkeypatch):
    assert available_backends(CPU) == ["native", "numba", "chunked", "reference"]
    assert available_backends("cpu") == available_backends(CPU)
    monkeypatch.setattr(dispatch, "_triton_module", lambda: None)
    assert available_backends("cuda") == ["chunked", "reference"]
    assert not dispatch.triton_available()
    monkeypatch.setattr(dispatch, "_triton_module", lambda: object())
    assert dispatch.triton_available()
    assert available_backends("cuda") == ["triton", "chunked", "reference"]
    assert available_backends("meta") == ["chunked", "reference"]  # Triton is for CUDA only


def test_environment_variable_is_trimmed_and_case_blind(monkeypatch):
    monkeypatch.setenv(dispatch.ENV_VAR, "  Chunked\n")
    assert select_backend(CPU) == "chunked"
    monkeypatch.setenv(dispatch.ENV_VAR, "REFERENCE")
    assert select_backend(CPU) == "reference"
    assert select_backend(CPU, "chunked") == "chunked"  # an explicit backend wins over the variable
    for value in ("", "  ", "Auto"):
        monkeypatch.setenv(dispatch.ENV_VAR, value)
        assert select_backend(CPU) == available_backends(CPU)[0]


def test_backend_errors_name_the_problem(monkeypatch):
    """Each refusal says what was asked and why (whole messages: they are the user's only clue)."""
    for name in ("native", "numba"):
        message = f"^bi_wkv backend '{name}' runs on CPU tensors only; got cuda tensors$"
        with pytest.raises(ValueError, match=message):
            select_backend(torch.device("cuda"), name)
    for value in (None, "0", ""):
        if value is None:
            monkeypatch.delenv("TRITON_INTERPRET", raising=False)
        else:
            monkeypatch.setenv("TRITON_INTERPRET", value)
        with pytest.raises(ValueError, match="^bi_wkv backend 'triton' runs on CUDA tensors only; got cpu tensors$"):
            select_backend(CPU, "triton")
    monkeypatch.setattr(dispatch, "_triton_module", lambda: object())  # Triton importable, no interpreter
    assert select_backend(torch.device("cuda"), "triton") == "triton"
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the interpreter runs CPU tensors (tests)
    assert select_backend(CPU, "triton") == "triton"
    monkeypatch.setattr(dispatch, "_triton_module", lambda: None)
    message = "^bi_wkv backend 'triton' is not available here: it needs the triton package$"
    with pytest.raises(RuntimeError, match=message):
        select_backend(CPU, "triton")
    with pytest.raises(RuntimeError, match=message):
        select_backend(torch.device("cuda"), "triton")
    with pytest.raises(ValueError, match=r"^unknown bi_wkv backend 'fast'; choose one of \['chunked', 'native', "
                                         r"'numba', 'reference', 'triton'\] or 'auto'$"):
        select_backend(CPU, "fast")


def test_bi_wkv_rejects_bad_ranks_and_shapes():
    w = torch.zeros(3)
    with pytest.raises(ValueError, match=r"k and v of one shape \(B, T, C\); got \(4, 3\) and \(4, 3\)"):
        bi_wkv(w, w, torch.zeros(4, 3), torch.zeros(4, 3))
    with pytest.raises(ValueError, match=r"w and u of shape \(3,\); got \(3,\) and \(1, 3\)"):
        bi_wkv(w, w[None], torch.zeros(1, 4, 3), torch.zeros(1, 4, 3))


def _image_case(decay_nats, shape=(1, 6, 7, 3), seed=1):
    gen = torch.Generator().manual_seed(seed)
    k = torch.randn(shape, generator=gen)
    v = torch.randn(shape, generator=gen)
    decay = torch.tensor(decay_nats, dtype=torch.float32)[:, None].expand(-1, shape[-1]).clone()
    decay[:, 1] *= -0.5
    first = torch.randn(decay.shape, generator=gen)
    return k, v, decay, first


@needs_native
@pytest.mark.parametrize("decay_nats,expected", [([5.0, -14.0], "native"), ([5.0, 20.0], "chunked"),
                                                  ([20.0, 5.0], "chunked")])
def test_re_wkv_one_step_out_of_range_sends_all_steps_to_chunked(ran, decay_nats, expected):
    k, v, decay, first = _image_case(decay_nats)
    want = re_wkv(*(x.double() for x in (k, v, decay, first)), backend="reference")
    ran.clear()
    got = re_wkv(k, v, decay, first)
    assert set(ran) == {expected} and len(ran) == (1 if expected == "native" else len(decay_nats))
    _close(got, want, 1e-5)
    with torch.no_grad():
        _close(re_wkv(k, v, decay, first), want, 1e-5)
    if expected == "chunked":
        with pytest.raises(ValueError, match="'native': inputs outside its range"):
            re_wkv(k, v, decay, first, backend="native")


@needs_numba
@pytest.mark.parametrize("elements", [1000, 2000, 2900])
def test_numba_inference_channel_groups(ran, monkeypatch, elements):
    """Large no-grad calls on numba run in channel groups: multiples of 8 channels (at least 8), of at
    most about ``_INFERENCE_GROUP_ELEMENTS`` elements; with autograd, or on native, in one call."""
    k, v, decay, first = _image_case([3.0, 2.0], shape=(2, 6, 10, 44))
    want = re_wkv(*(x.double() for x in (k, v, decay, first)), backend="reference")
    sizes: list[int] = []
    original = dispatch.re_wkv_sweeps
    monkeypatch.setattr(dispatch, "re_wkv_sweeps", lambda kern, k_, *a, **kw: (sizes.append(k_.shape[-1]),
                                                                              original(kern, k_, *a, **kw))[1])
    monkeypatch.setattr(dispatch, "_INFERENCE_GROUP_ABOVE", k.numel() - 1)
    monkeypatch.setattr(dispatch, "_INFERENCE_GROUP_ELEMENTS", elements)
    with torch.no_grad():
        got = re_wkv(k, v, decay, first, backend="numba")
    _close(got, want, 1e-5)
    tokens = 2 * 6 * 10
    group = sizes[0]
    assert group % 8 == 0 and group >= 8 and group * tokens <= max(elements, 8 * tokens)
    assert group + 8 > elements // tokens  # as large as the bound allows
    assert sizes == [group] * (44 // group) + ([44 % group] if 44 % group else [])
    sizes.clear()
    monkeypatch.setattr(dispatch, "_INFERENCE_GROUP_ABOVE", k.numel())  # at the threshold: one call
    with torch.no_grad():
        re_wkv(k, v, decay, first, backend="numba")
    assert sizes == [44]
    sizes.clear()
    monkeypatch.setattr(dispatch, "_INFERENCE_GROUP_ABOVE", 0)
    _close(re_wkv(k, v, decay.requires_grad_(), first, backend="numba"), want, 1e-5)  # autograd: whole
    assert sizes == [44]
    if native_available():
        sizes.clear()
        with torch.no_grad():
            re_wkv(k, v, decay, first, backend="native")  # fused inference needs no groups
        assert sizes == [44]


def test_re_wkv_is_labelled_for_the_profiler():
    k, v, decay, first = _image_case([1.0])
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        re_wkv(k, v, decay, first, backend="chunked")
    assert any(e.name == "restore_rwkv::re_wkv" for e in prof.events())


def test_re_wkv_out_receives_the_result_of_a_copying_backend():
    """Where the backend returns a new tensor (chunked), out= still holds the result and is returned."""
    k, v, decay, first = _image_case([2.0, 3.0, 1.0])
    want = re_wkv(k, v, decay, first, backend="reference")
    out = torch.full_like(v, math.nan)
    with torch.no_grad():
        got = re_wkv(k, v, decay, first, backend="chunked", out=out)
    assert got is out
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)


def test_re_wkv_out_errors_name_the_problem():
    k, v = torch.randn(2, 1, 4, 5, 3)
    decay = torch.randn(2, 3, requires_grad=True)
    with pytest.raises(ValueError, match=r"^re_wkv: out= is for inference only \(inputs require grad\)$"):
        re_wkv(k, v, decay, torch.randn(2, 3), out=v)
    with pytest.raises(ValueError, match=r"^re_wkv: out has shape \(1, 4, 5, 2\), expected \(1, 4, 5, 3\)$"):
        with torch.no_grad():
            re_wkv(k, v, decay, torch.randn(2, 3), out=torch.empty(1, 4, 5, 2))
