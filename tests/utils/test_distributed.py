"""utils.distributed: joining torchrun's group, the rank queries and the three collectives, alone and over gloo.

The two-process test forks its workers (not spawn), so they run the code of the parent process as it is,
which is what lets tools/mutate.py's mutants reach them.
"""

from __future__ import annotations

import datetime
import json
import os

import pytest
import torch
import torch.distributed as dist

from restore_rwkv.utils.distributed import (
    ProcessInfo,
    all_sum,
    barrier,
    broadcast_object,
    gather_objects,
    group_position,
    setup_distributed,
    teardown_distributed,
)
from tests.engine.test_trainer import _free_port

_TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def test_outside_torchrun_nothing_is_initialised_and_the_collectives_return_this_process_value(monkeypatch):
    for name in _TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert not dist.is_initialized()
    info = setup_distributed("cpu")
    assert info == ProcessInfo(rank=0, world_size=1, local_rank=0, owned=True)
    assert info.is_main and not info.distributed
    assert group_position() == (0, 1)
    values = [1.5, -2.0]
    summed = all_sum(values, info, torch.device("cpu"))
    assert summed == values and summed is not values  # a copy: the caller's list is not the result
    assert gather_objects({"a": 1}, info) == [{"a": 1}]
    box = object()
    assert broadcast_object(box, info) is box
    barrier(info)
    teardown_distributed(info)
    assert not dist.is_initialized()


def test_a_world_of_one_joins_no_group(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    assert setup_distributed("cpu") == ProcessInfo()
    assert not dist.is_initialized()


def test_process_info_rank_rules():
    assert ProcessInfo(rank=1, world_size=2).distributed and not ProcessInfo(rank=1, world_size=2).is_main
    assert ProcessInfo(rank=0, world_size=2).is_main


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if rank:  # rank 0 goes without LOCAL_RANK, which then defaults to 0
        os.environ["LOCAL_RANK"] = str(rank)
    else:
        os.environ.pop("LOCAL_RANK", None)
    seen: dict = {}
    info = setup_distributed("cpu", timeout=datetime.timedelta(seconds=60))
    seen["info"] = [info.rank, info.world_size, info.local_rank, info.owned, info.is_main, info.distributed]
    seen["position"] = list(group_position())
    again = setup_distributed("cpu")  # an initialised group is reused and not owned
    seen["again"] = [again.rank, again.world_size, again.local_rank, again.owned]
    # 2**25 + a quarter per rank: float32 would round the sum to a multiple of 8
    seen["sum"] = all_sum([2.0 ** 25 + 0.25 * (rank + 1), float(rank)], info, torch.device("cpu"))
    seen["gathered"] = gather_objects({"rank": rank, "text": "r" * (rank + 1)}, info)
    seen["broadcast"] = broadcast_object(f"from rank {rank}", info)
    barrier(info)
    teardown_distributed(again)
    seen["kept_by_owner"] = dist.is_initialized()
    teardown_distributed(info)
    seen["left"] = not dist.is_initialized()
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as handle:
        json.dump(seen, handle)


def test_two_forked_gloo_processes_join_sum_gather_broadcast_and_leave(tmp_path):
    if not dist.is_available():
        pytest.skip("torch.distributed is not built in")
    world = 2
    torch.multiprocessing.start_processes(_worker, args=(world, _free_port(), str(tmp_path)), nprocs=world,
                                          join=True, start_method="fork")
    for rank in range(world):
        seen = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert seen["info"] == [rank, world, rank, True, rank == 0, True]
        assert seen["position"] == [rank, world]
        assert seen["again"] == [rank, world, rank, False]
        assert seen["sum"] == [2.0 ** 26 + 0.75, 1.0]
        assert seen["gathered"] == [{"rank": 0, "text": "r"}, {"rank": 1, "text": "rr"}]
        assert seen["broadcast"] == "from rank 0"
        assert seen["kept_by_owner"] is True
        assert seen["left"] is True
