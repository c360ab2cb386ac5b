"""Re-WKV and Bi-WKV registered with ``torch.library`` (``torch.ops.restore_rwkv.re_wkv`` / ``.bi_wkv``).

To ``torch.compile`` and ``torch.export`` each operator is one opaque node: a fake kernel gives the
output's shape and dtype, and the backend choice (which reads tensor values and calls C, numba or
Triton) happens inside the op, so nothing value-dependent is traced. The backward is a second op
that runs the chosen backend's own forward and backward (the forward is recomputed, as gradient
checkpointing would: the backends keep their intermediates in Python objects that a graph cannot
hold). Eager code does not go through these ops (see :func:`compiling`); the numbers are the same.
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


def compiling() -> bool:
    """Whether this call is being traced by ``torch.compile``/``torch.export`` (the ops are used then)."""
    return torch.compiler.is_compiling()


def _fresh(result: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
    """``result`` as a new contiguous tensor: a custom op's output may not alias its inputs, and its
    strides must match the fake kernel's."""
    if not result.is_contiguous() or any(result.untyped_storage().data_ptr() == x.untyped_storage().data_ptr()
                                         for x in inputs):
        return result.clone(memory_format=torch.contiguous_format)
    return result


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
    inputs = [x.detach().requires_grad_() for x in (k, v, decay, first)]
    with _with_autograd(), torch.enable_grad():
        out = _re_wkv(*inputs, backend)
        grads = torch.autograd.grad(out, inputs, grad, allow_unused=True)
    return tuple(torch.zeros_like(x) if g is None else _fresh(g, grad, x) for g, x in zip(grads, (k, v, decay, first)))


@re_wkv_backward_op.register_fake
def _re_wkv_backward_fake(grad, k, v, decay, first, backend="auto"):
    return tuple(torch.empty_like(x, memory_format=torch.contiguous_format) for x in (k, v, decay, first))


def _re_wkv_setup(ctx, inputs, output) -> None:
    k, v, decay, first, backend = inputs
    ctx.save_for_backward(k, v, decay, first)
    ctx.backend = backend


def _re_wkv_backward(ctx, grad):
    k, v, decay, first = ctx.saved_tensors
    return (*re_wkv_backward_op(grad.contiguous(), k, v, decay, first, ctx.backend), None)


re_wkv_op.register_autograd(_re_wkv_backward, setup_context=_re_wkv_setup)


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
    inputs = [x.detach().requires_grad_() for x in (w, u, k, v)]
    with _with_autograd(), torch.enable_grad():
        out = _bi_wkv_eager(*inputs, backend)
        grads = torch.autograd.grad(out, inputs, grad, allow_unused=True)
    return tuple(torch.zeros_like(x) if g is None else _fresh(g, grad, x) for g, x in zip(grads, (w, u, k, v)))


@bi_wkv_backward_op.register_fake
def _bi_wkv_backward_fake(grad, w, u, k, v, backend="auto"):
    return tuple(torch.empty_like(x, memory_format=torch.contiguous_format) for x in (w, u, k, v))


def _bi_wkv_setup(ctx, inputs, output) -> None:
    w, u, k, v, backend = inputs
    ctx.save_for_backward(w, u, k, v)
    ctx.backend = backend


def _bi_wkv_backward(ctx, grad):
    w, u, k, v = ctx.saved_tensors
    return (*bi_wkv_backward_op(grad.contiguous(), w, u, k, v, ctx.backend), None)


bi_wkv_op.register_autograd(_bi_wkv_backward, setup_context=_bi_wkv_setup)
