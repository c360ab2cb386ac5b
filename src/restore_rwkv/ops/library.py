"""Re-WKV and Bi-WKV registered with ``torch.library`` (``torch.ops.restore_rwkv.re_wkv`` / ``.bi_wkv``).

To ``torch.compile`` and ``torch.export`` each operator is one opaque node: a fake kernel gives the
output's shape and dtype, and the backend choice (which reads tensor values and calls C, numba or
Triton) happens inside the op, so nothing value-dependent is traced. The backward is a second op
that runs the chosen backend's own forward and backward (the forward is recomputed, as gradient
checkpointing would: the backends keep their intermediates in Python objects that a graph cannot
hold). Eager code does not go through these ops: ``re_wkv``/``bi_wkv`` call them only while
``torch.compiler.is_compiling()``; the numbers are the same.
"""

from __future__ import annotations

import torch

from restore_rwkv.ops.dispatch import _re_wkv, bi_wkv as _bi_wkv_eager

_NAMESPACE = "restore_rwkv"


def _with_autograd():
    """A guard under which autograd records again inside an op's kernel (the dispatcher excludes the
    autograd keys there; the backward ops differentiate the backends' own autograd functions)."""
    exclude = torch._C._dispatch_tls_local_exclude_set()
    for key in ("AutogradCPU", "AutogradCUDA", "AutogradOther", "ADInplaceOrView", "AutogradFunctionality"):
        if hasattr(torch._C.DispatchKey, key):
            exclude = exclude.remove(getattr(torch._C.DispatchKey, key))
    return torch._C._ForceDispatchKeyGuard(torch._C._dispatch_tls_local_include_set(), exclude)


def _fresh(result: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
    """``result`` as a new contiguous tensor: a custom op's output may not alias its inputs, and its
    strides must match the fake kernel's."""
    if not result.is_contiguous() or any(result.untyped_storage().data_ptr() == x.untyped_storage().data_ptr()
                                         for x in inputs):
        return result.clone(memory_format=torch.contiguous_format)
    return result


def _gradients(forward, tensors: tuple[torch.Tensor, ...], grad: torch.Tensor, backend: str) -> tuple[torch.Tensor, ...]:
    """Gradients of ``forward(*tensors, backend)`` with respect to each tensor, by the backend's own
    autograd (zeros where a tensor does not take part), as new contiguous tensors."""
    inputs = [x.detach().requires_grad_() for x in tensors]
    with _with_autograd(), torch.enable_grad():
        grads = torch.autograd.grad(forward(*inputs, backend), inputs, grad, allow_unused=True)
    return tuple(torch.zeros_like(x) if g is None else _fresh(g, grad, x) for g, x in zip(grads, tensors))


def _empty_like_each(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return tuple(torch.empty_like(x, memory_format=torch.contiguous_format) for x in tensors)


def _register_autograd(op, backward_op) -> None:
    """Differentiate ``op`` (tensors, then ``backend``) by ``backward_op(grad, *tensors, backend)``."""

    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(*inputs[:-1])
        ctx.backend = inputs[-1]

    def backward(ctx, grad):
        return (*backward_op(grad.contiguous(), *ctx.saved_tensors, ctx.backend), None)

    op.register_autograd(backward, setup_context=setup_context)


@torch.library.custom_op(f"{_NAMESPACE}::re_wkv", mutates_args=())
def re_wkv_op(k: torch.Tensor, v: torch.Tensor, decay: torch.Tensor, first: torch.Tensor,
              backend: str = "auto") -> torch.Tensor:
    """Re-WKV of (B, H, W, C) ``k`` and ``v`` (see :func:`restore_rwkv.ops.re_wkv`), as a new tensor."""
    with torch.no_grad():
        return _fresh(_re_wkv(k, v, decay, first, backend), k, v)


@re_wkv_op.register_fake
def _re_wkv_fake(k, v, decay, first, backend="auto"):
    return torch.empty_like(v, memory_format=torch.contiguous_format)


@torch.library.custom_op(f"{_NAMESPACE}::re_wkv_backward", mutates_args=())
def re_wkv_backward_op(grad: torch.Tensor, k: torch.Tensor, v: torch.Tensor, decay: torch.Tensor,
                       first: torch.Tensor, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                            torch.Tensor]:
    """Gradients of ``re_wkv_op`` with respect to k, v, decay and first."""
    return _gradients(_re_wkv, (k, v, decay, first), grad, backend)


@re_wkv_backward_op.register_fake
def _re_wkv_backward_fake(grad, k, v, decay, first, backend="auto"):
    return _empty_like_each(k, v, decay, first)


_register_autograd(re_wkv_op, re_wkv_backward_op)


@torch.library.custom_op(f"{_NAMESPACE}::bi_wkv", mutates_args=())
def bi_wkv_op(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              backend: str = "auto") -> torch.Tensor:
    """Bi-WKV (Eq. 8) of (B, T, C) ``k`` and ``v`` (see :func:`restore_rwkv.ops.bi_wkv`), as a new tensor."""
    with torch.no_grad():
        return _fresh(_bi_wkv_eager(w, u, k, v, backend), k, v)


@bi_wkv_op.register_fake
def _bi_wkv_fake(w, u, k, v, backend="auto"):
    return torch.empty_like(v, memory_format=torch.contiguous_format)


@torch.library.custom_op(f"{_NAMESPACE}::bi_wkv_backward", mutates_args=())
def bi_wkv_backward_op(grad: torch.Tensor, w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of ``bi_wkv_op`` with respect to w, u, k and v."""
    return _gradients(_bi_wkv_eager, (w, u, k, v), grad, backend)


@bi_wkv_backward_op.register_fake
def _bi_wkv_backward_fake(grad, w, u, k, v, backend="auto"):
    return _empty_like_each(w, u, k, v)


_register_autograd(bi_wkv_op, bi_wkv_backward_op)
