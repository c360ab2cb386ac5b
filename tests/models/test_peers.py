"""The MONAI peer networks as trainable restorers: shape, size, identity start and a training step."""

from __future__ import annotations

import pytest
import torch

from restore_rwkv.engine.trainer import zero_output_layer
from restore_rwkv.models import create_model

pytest.importorskip("monai")
pytest.importorskip("einops")

PEERS = ["restormer_light_monai", "unet_light_monai"]


@pytest.mark.parametrize("name", PEERS)
def test_peer_keeps_any_shape_and_is_about_the_light_models_size(name):
    torch.manual_seed(0)
    model = create_model(name).eval()
    light = sum(p.numel() for p in create_model("restore_rwkv_light").parameters())
    size = sum(p.numel() for p in model.parameters())
    assert 0.85 * light < size < 1.05 * light
    with torch.no_grad():
        out = model(torch.rand(2, 1, 37, 70))  # not a multiple of the body's downsampling
    assert out.shape == (2, 1, 37, 70)


@pytest.mark.parametrize("name", PEERS)
def test_zeroed_output_makes_the_peer_the_identity_and_it_still_learns(name):
    torch.manual_seed(0)
    model = create_model(name)
    zero_output_layer(model)
    image = torch.rand(2, 1, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(model(image), image, rtol=0, atol=0)
    # one Adam step on a denoising pair changes the output: gradients reach the body through the output conv
    target = image.clone()
    noisy = image + 0.1 * torch.randn_like(image)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(2):
        optimizer.zero_grad()
        loss = torch.nn.functional.l1_loss(model(noisy), target)
        loss.backward()
        optimizer.step()
    body_grads = [p.grad for n, p in model.named_parameters() if n.startswith("body.") and p.grad is not None]
    assert body_grads and any(float(g.abs().max()) > 0 for g in body_grads)
    with torch.no_grad():
        assert not torch.equal(model(noisy), noisy)
