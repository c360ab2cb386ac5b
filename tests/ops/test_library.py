"""The operator as torch.library custom ops: schema checks, and torch.compile / torch.export through
them without graph breaks, equal to eager (issue 25)."""

from __future__ import annotations

import pytest
import torch

from restore_rwkv.models.restore_rwkv import RestoreRWKV
from restore_rwkv.ops import library
from restore_rwkv.ops.dispatch import re_wkv


def _inputs(dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    k, v = (torch.randn(2, 6, 5, 8, generator=g, dtype=dtype) for _ in range(2))
    decay, first = (torch.randn(2, 8, generator=g, dtype=dtype) for _ in range(2))
    return k, v, decay, first


@pytest.mark.parametrize("backend", ["chunked", "auto"])
def test_re_wkv_op_passes_torch_library_opcheck(backend):
    dtype = torch.float64 if backend == "chunked" else torch.float32
    result = torch.library.opcheck(library.re_wkv_op, (*_inputs(dtype), backend))
    assert set(result.values()) == {"SUCCESS"}, result


def test_bi_wkv_op_passes_torch_library_opcheck():
    k, v, _, _ = _inputs()
    w, u = torch.linspace(-0.05, 0.1, 8, dtype=torch.float64), torch.linspace(0.2, -0.3, 8, dtype=torch.float64)
    result = torch.library.opcheck(library.bi_wkv_op, (w, u, k.reshape(2, 30, 8), v.reshape(2, 30, 8), "auto"))
    assert set(result.values()) == {"SUCCESS"}, result


def test_the_ops_gradients_are_the_eager_operators_gradients_in_float64():
    inputs = [x.requires_grad_() for x in _inputs()]
    grad = torch.randn(2, 6, 5, 8, dtype=torch.float64)
    expected = torch.autograd.grad(re_wkv(*inputs, backend="reference"), inputs, grad)
    found = torch.autograd.grad(torch.ops.restore_rwkv.re_wkv(*inputs, "chunked"), inputs, grad)
    for a, b in zip(found, expected):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    assert torch.autograd.gradcheck(lambda *x: torch.ops.restore_rwkv.re_wkv(*x, "chunked"), inputs)


def _tiny() -> RestoreRWKV:
    torch.manual_seed(0)
    model = RestoreRWKV(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1)
    with torch.no_grad():  # a non-trivial output (the residual alone would hide the attention)
        model.output.weight.mul_(50)
    return model


def _graph_breaks(model, *args) -> int:
    explanation = torch._dynamo.explain(model)(*args)
    return explanation.graph_break_count


def test_the_model_traces_as_one_graph_in_training_and_inference():
    model, image = _tiny(), torch.rand(1, 1, 16, 16)
    torch._dynamo.reset()
    assert _graph_breaks(model, image) == 0
    with torch.no_grad():
        torch._dynamo.reset()
        assert _graph_breaks(model.eval(), image) == 0


def test_compiled_fullgraph_matches_eager_forward_and_backward():
    model, image = _tiny(), torch.rand(2, 1, 24, 16)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    expected = model(image)
    expected.square().mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    found = compiled(image)
    found.square().mean().backward()
    # float32 rounding of a differently ordered graph: 1e-5 of the output's scale, 1e-4 of each gradient's
    scale = expected.abs().max().item()
    torch.testing.assert_close(found, expected, rtol=0, atol=1e-5 * scale)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[name], rtol=0, atol=1e-4 * grads[name].abs().max().item(), msg=name)
    with torch.no_grad():
        torch.testing.assert_close(compiled(image), model(image), rtol=0, atol=1e-5 * scale)


def test_compiled_with_inductor_matches_eager_on_the_cpu():
    model, image = _tiny().eval(), torch.rand(1, 1, 16, 16)
    torch._dynamo.reset()
    with torch.no_grad():
        expected = model(image)
        found = torch.compile(model, fullgraph=True)(image)
    torch.testing.assert_close(found, expected, rtol=0, atol=1e-5 * expected.abs().max().item())


def test_torch_export_of_the_fused_model_holds_the_op_and_matches_eager():
    model = _tiny().eval().reparameterize()
    image = torch.rand(1, 1, 16, 16)
    exported = torch.export.export(model, (image,))
    assert any("restore_rwkv.re_wkv" in str(node.target) for node in exported.graph.nodes)
    with torch.no_grad():
        expected = model(image)
        torch.testing.assert_close(exported.module()(image), expected, rtol=0, atol=1e-5 * expected.abs().max().item())
