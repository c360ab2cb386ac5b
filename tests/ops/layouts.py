"""Strided inputs for the Bi-WKV / Re-WKV operators, checked against float64 ``reference`` (shared by the
operator test files; the kernels must give the same values and gradients whatever the memory layout)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from restore_rwkv.ops import bi_wkv, re_wkv

# A layout makes, from a generator and a shape, a leaf tensor (what receives the gradient) and
# the function that turns the leaf into an operator input of that shape with that layout.
Layout = Callable[[torch.Generator, tuple[int, ...]], tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]]


def _channels_first(gen: torch.Generator, shape: tuple[int, ...]):
    """Tokens (B, ..., C) as a permuted view of (B, C, ...) memory: channels-last-like in the model."""
    if len(shape) == 1:
        return _sliced(gen, shape)
    if len(shape) == 2:
        return _transposed(gen, shape)
    base = torch.randn((shape[0], shape[-1], *shape[1:-1]), generator=gen)
    return base, lambda x: x.movedim(1, -1)


def _transposed(gen: torch.Generator, shape: tuple[int, ...]):
    """The two middle dims swapped in memory ((B, W, H, C) memory seen as (B, H, W, C)), or the
    (C, steps) transpose of decay/first-shaped (steps, C) inputs."""
    if len(shape) == 4:
        base = torch.randn((shape[0], shape[2], shape[1], shape[3]), generator=gen)
        return base, lambda x: x.transpose(1, 2)
    if len(shape) == 2:
        return torch.randn(shape[::-1], generator=gen), lambda x: x.t()
    return _channels_first(gen, shape)


def _sliced(gen: torch.Generator, shape: tuple[int, ...]):
    """Every other channel of a wider tensor, past an offset along the first token dim."""
    if len(shape) == 1:
        base = torch.randn(2 * shape[0] + 1, generator=gen)
        return base, lambda x: x[1::2]
    if len(shape) == 2:
        base = torch.randn(shape[0], 2 * shape[1], generator=gen)
        return base, lambda x: x[:, ::2]
    wider = (shape[0], shape[1] + 3, *shape[2:-1], 2 * shape[-1])
    base = torch.randn(wider, generator=gen)
    return base, lambda x: x[:, 2 : 2 + shape[1], ..., ::2]


def _expanded(gen: torch.Generator, shape: tuple[int, ...]):
    """One batch element broadcast to all (stride 0 along B); small tensors are sliced instead."""
    if len(shape) <= 2:
        return _sliced(gen, shape)
    base = torch.randn((1, *shape[1:]), generator=gen)
    return base, lambda x: x.expand(shape)


LAYOUTS: dict[str, Layout] = {
    "channels_first": _channels_first,
    "transposed": _transposed,
    "sliced": _sliced,
    "expanded": _expanded,
}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().cpu().double() - b).norm() / b.norm().clamp_min(1e-300))


def check_strided(op: str, layout: str, backend: str, autograd: bool, device: str = "cpu", seed: int = 0) -> None:
    """Run ``op`` ("bi_wkv" or "re_wkv") on ``backend`` with every input in ``layout``; compare the output
    (and, with ``autograd``, the gradients of all four inputs) with float64 ``reference`` on the same values."""
    gen = torch.Generator().manual_seed(seed)
    make = LAYOUTS[layout]
    if op == "bi_wkv":
        batch, length, channels = 2, 37, 6
        shapes = [(channels,), (channels,), (batch, length, channels), (batch, length, channels)]
        # (scale, bound): w and u per token with |w| T, |u| T below the compiled kernels' 15 nats
        ranges = [(6.0 / length, 14.0 / length)] * 2 + [(2.0, None), (1.0, None)]
        fn = bi_wkv
    else:
        batch, height, width, channels, steps = 2, 5, 7, 6, 3
        shapes = [(batch, height, width, channels)] * 2 + [(steps, channels)] * 2
        ranges = [(2.0, None), (1.0, None)] + [(6.0, 14.0)] * 2  # decay, first: nats over the image
        fn = re_wkv
    made = [make(gen, shape) for shape in shapes]
    bases = [base * scale if bound is None else (base * scale).clamp(-bound, bound)
             for (base, _), (scale, bound) in zip(made, ranges)]
    views = [view for _, view in made]
    grad_out = torch.randn(shapes[2] if op == "bi_wkv" else shapes[0], generator=gen)

    ref_leaves = [b.double().requires_grad_() for b in bases]
    ref_inputs = [view(leaf) for view, leaf in zip(views, ref_leaves)]
    expected = fn(*ref_inputs, backend="reference")
    expected.backward(grad_out.double())

    leaves = [b.to(device, copy=True).requires_grad_(autograd) for b in bases]
    inputs = [view(leaf) for view, leaf in zip(views, leaves)]
    assert not any(x.is_contiguous() for x in inputs), "every input must be strided"
    with torch.set_grad_enabled(autograd):
        got = fn(*inputs, backend=backend)
    assert got.shape == expected.shape and got.dtype == torch.float32
    assert _rel(got, expected.detach()) <= 1e-5, f"output: rel. error {_rel(got, expected.detach()):.2e}"
    if not autograd:
        assert not got.requires_grad
        return
    got.backward(grad_out.to(device))
    for name, leaf, ref in zip(("w/decay", "u/first", "k", "v"), leaves, ref_leaves):
        err = float((leaf.grad.cpu().double() - ref.grad).norm())
        assert err <= 1e-4 * float(ref.grad.norm()) + 1e-9, f"d{name}: {err:.3e} vs |ref| {float(ref.grad.norm()):.3e}"
