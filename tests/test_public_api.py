"""The package root's public names: each exported one exists and is the function it names."""

from __future__ import annotations

import torch

import restore_rwkv
from restore_rwkv.ops import dispatch
from restore_rwkv.ops._reference import bi_wkv_reference


def test_root_exports_both_operators():
    assert {"bi_wkv", "re_wkv"} <= set(restore_rwkv.__all__)
    assert restore_rwkv.bi_wkv is dispatch.bi_wkv and restore_rwkv.re_wkv is dispatch.re_wkv
    for name in restore_rwkv.__all__:
        assert hasattr(restore_rwkv, name), name


def test_root_re_wkv_is_the_row_then_column_scan():
    """One H-scan then one V-scan, against the float64 O(T^2) definition of Eq. 8 applied twice."""
    gen = torch.Generator().manual_seed(4)
    k, v = torch.randn(2, 1, 3, 5, 4, generator=gen)
    decay, first = torch.randn(2, 2, 4, generator=gen)
    got = restore_rwkv.re_wkv(k, v, decay, first)
    kd, vd, dd, fd = (x.double() for x in (k, v, decay, first))
    rows = bi_wkv_reference(dd[0] / 15, fd[0] / 15, kd.reshape(1, 15, 4), vd.reshape(1, 15, 4)).view(1, 3, 5, 4)
    cols = bi_wkv_reference(dd[1] / 15, fd[1] / 15, kd.transpose(1, 2).reshape(1, 15, 4),
                            rows.transpose(1, 2).reshape(1, 15, 4))
    torch.testing.assert_close(got.double(), cols.view(1, 5, 3, 4).transpose(1, 2), rtol=1e-5, atol=1e-6)
