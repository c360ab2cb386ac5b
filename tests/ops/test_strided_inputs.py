"""Every CPU backend on strided inputs (permuted, transposed, sliced, expanded): same values and gradients
as float64 ``reference`` on the same numbers (issue #10: the C kernel read a strided weight array as
contiguous). The Triton backend has the same check in test_triton.py."""

from __future__ import annotations

import pytest

from layouts import LAYOUTS, check_strided
from restore_rwkv.ops import native_available, numba_available

BACKENDS = [
    "reference",
    "chunked",
    pytest.param("native", marks=pytest.mark.skipif(not native_available(), reason="no C compiler")),
    pytest.param("numba", marks=pytest.mark.skipif(not numba_available(), reason="numba is not installed")),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("autograd", [True, False], ids=["autograd", "no_grad"])
@pytest.mark.parametrize("op", ["bi_wkv", "re_wkv"])
def test_strided_inputs_match_float64_reference(op, autograd, layout, backend):
    check_strided(op, layout, backend, autograd, seed=len(layout) + 7 * autograd)


def test_native_kernel_refuses_strided_arrays():
    """The one place where pointers for C are taken checks layout and dtype (no silent misreads)."""
    pytest.importorskip("numpy")
    if not native_available():
        pytest.skip("no C compiler")
    import numpy as np

    from restore_rwkv.ops._native_cpu import _ptr

    a = np.zeros((2, 3, 4), dtype=np.float32)
    assert _ptr(a, np.float32) == a.ctypes.data
    with pytest.raises(ValueError, match="C-contiguous float32"):
        _ptr(a.transpose(0, 2, 1), np.float32)
    with pytest.raises(ValueError, match="C-contiguous float32"):
        _ptr(a[:, :, ::2], np.float32)
    with pytest.raises(ValueError, match="C-contiguous float64"):
        _ptr(a, np.float64)
