"""Shared fixtures: paths to the reference fixtures and deterministic seeding."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

# Without a GPU, tests/ops/test_triton.py runs the Triton kernels in Triton's CPU interpreter, which
# must be switched on before anything imports Triton: here, before any test module is collected.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _reference_dir() -> Path:
    env = os.environ.get("RESTORE_RWKV_REFERENCE_DIR")
    return Path(env) if env else REPO.parent / "shared" / "reference"


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    path = _reference_dir()
    if not path.is_dir():
        pytest.fail(f"reference fixtures not found at {path} (set RESTORE_RWKV_REFERENCE_DIR)")
    return path


@pytest.fixture(autouse=True)
def _seed():
    """Torch seeded alike for every test; Python's and numpy's global generators, which a training run seeds,
    restored after each test, so no test's draws depend on the tests before it."""
    import random

    import numpy as np

    python_state, numpy_state = random.getstate(), np.random.get_state()
    torch.manual_seed(0)
    yield
    random.setstate(python_state)
    np.random.set_state(numpy_state)


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """The demo dataset, built once per session (about 2 min), with network connections refused: its real
    volumes come from the registries once (``demo.sources``, cached in ~/.cache/restore_rwkv), nothing else
    may reach the network."""
    import socket

    from restore_rwkv.cli import main
    from restore_rwkv.demo.sources import SOURCES, source_file

    for name in SOURCES:
        source_file(name, quiet=True)
    out = tmp_path_factory.mktemp("demo") / "demo"
    with pytest.MonkeyPatch.context() as patch:
        def no_network(*args, **kwargs):
            raise AssertionError("prepare demo tried to open a network connection")

        patch.setattr(socket.socket, "connect", no_network)
        assert main(["prepare", "demo", "--out", str(out), "--quiet"]) == 0
    return out
