"""engine/state.py: the EMA's bounds and saved state, and load_checkpoint's refusals (each test kills
mutants that survived the mutation pass of docs/training.md)."""

from __future__ import annotations

import pickle

import pytest
import torch
from torch import nn

from restore_rwkv.engine.state import ExponentialMovingAverage, load_checkpoint, save_checkpoint
from restore_rwkv.utils.errors import InputError


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.1, 1.5])
def test_ema_decay_outside_the_open_interval_is_refused(decay):
    with pytest.raises(ValueError) as info:
        ExponentialMovingAverage(nn.Linear(2, 2), decay)
    assert str(info.value) == f"EMA decay must be in (0, 1), got {decay}"


@pytest.mark.parametrize("decay", [1e-6, 0.999999])
def test_ema_decay_just_inside_the_interval_is_taken(decay):
    assert ExponentialMovingAverage(nn.Linear(2, 2), decay).decay == decay


def test_an_ema_state_without_an_update_count_starts_counting_at_zero():
    ema = ExponentialMovingAverage(nn.Linear(2, 2), 0.9)
    ema.updates = 7
    state = {k: v for k, v in ema.state_dict().items() if k != "updates"}  # a state saved before the count existed
    ema.load_state_dict(state)
    assert ema.updates == 0


def test_an_ema_state_is_loaded_onto_the_given_device_and_left_in_place_without_one():
    model = nn.Linear(2, 2)
    ema = ExponentialMovingAverage(model, 0.9)
    ema.load_state_dict({"decay": 0.5, "updates": 3, "shadow": {k: v.double() for k, v in ema.shadow.items()}},
                        device="meta")
    assert ema.decay == 0.5 and ema.updates == 3
    assert all(v.device.type == "meta" and v.dtype == torch.float32 for v in ema.shadow.values())
    ema.load_state_dict({"decay": 0.5, "updates": 3, "shadow": {k: v.double() for k, v in model.state_dict().items()}})
    assert all(v.device.type == "cpu" and v.dtype == torch.float32 for v in ema.shadow.values())


class _Payload:
    """Any class: unpickling it would run code, which a weights-only load must refuse."""


def test_a_checkpoint_that_needs_arbitrary_unpickling_is_refused_in_one_line(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "iteration": 1, "extra": _Payload()}, path)
    with pytest.raises(InputError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert message.startswith(f"{path}: not a readable training checkpoint (UnpicklingError: ")
    assert "\n" not in message and message.endswith(")")


def test_a_file_that_is_no_checkpoint_at_all_is_refused_in_one_line(tmp_path):
    path = tmp_path / "text.pt"
    path.write_text("hello\nworld\n")
    with pytest.raises(InputError) as info:
        load_checkpoint(path)
    assert str(info.value).startswith(f"{path}: not a readable training checkpoint (")
    assert "\n" not in str(info.value)


def test_an_empty_error_message_still_gives_one_line(tmp_path, monkeypatch):
    path = tmp_path / "x.pt"
    path.write_bytes(b"")

    def fail(*args, **kwargs):
        raise pickle.UnpicklingError("")

    monkeypatch.setattr(torch, "load", fail)
    with pytest.raises(InputError) as info:
        load_checkpoint(path)
    assert str(info.value) == f"{path}: not a readable training checkpoint (UnpicklingError: )"


def test_a_long_error_message_is_cut_at_200_characters(tmp_path, monkeypatch):
    path = tmp_path / "x.pt"
    path.write_bytes(b"")

    def fail(*args, **kwargs):
        raise RuntimeError("y" * 300 + "\nsecond line")

    monkeypatch.setattr(torch, "load", fail)
    with pytest.raises(InputError) as info:
        load_checkpoint(path)
    assert str(info.value) == f"{path}: not a readable training checkpoint (RuntimeError: {'y' * 200})"


@pytest.mark.parametrize("state", [[1, 2], {"model": {}}, {"iteration": 3}])
def test_a_readable_file_that_is_not_a_training_checkpoint_is_refused(tmp_path, state):
    path = save_checkpoint(state, tmp_path / "other.pt")
    with pytest.raises(InputError) as info:
        load_checkpoint(path)
    assert str(info.value) == f"{path}: not a training checkpoint of restore-rwkv (no model or iteration)"


def test_a_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(InputError) as info:
        load_checkpoint(tmp_path / "none.pt")
    assert str(info.value) == f"{tmp_path / 'none.pt'}: no such checkpoint"


def test_a_checkpoint_round_trips_through_save_and_load(tmp_path):
    state = {"model": {"w": torch.arange(3.0)}, "iteration": 5, "note": "x"}
    loaded = load_checkpoint(save_checkpoint(state, tmp_path / "c.pt"))
    assert loaded["iteration"] == 5 and torch.equal(loaded["model"]["w"], torch.arange(3.0))
