"""torch.distributed helpers: set up from torchrun's environment, rank queries, reductions."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class ProcessInfo:
    """Where this process sits in a run (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owned: bool = True  # whether setup_distributed created the group (teardown leaves others' alone)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def group_position() -> tuple[int, int]:
    """(rank, world size) in the initialised default process group, whoever created it; else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def setup_distributed(device_kind: str, timeout: datetime.timedelta | None = None) -> ProcessInfo:
    """Join the process group torchrun describes (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_*``).

    NCCL for CUDA devices, gloo otherwise. Without those variables (or with a world of 1)
    nothing is initialised. An already initialised group is reused (and left to its owner).
    ``timeout`` bounds each collective (torch's default where None): a rank that waits for
    slower ones longer than this fails.
    """
    if dist.is_available() and dist.is_initialized():
        return ProcessInfo(*group_position(), int(os.environ.get("LOCAL_RANK", 0)), owned=False)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return ProcessInfo()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0))
    backend = "nccl" if device_kind == "cuda" else "gloo"
    if device_kind == "cuda":
        torch.cuda.set_device(local)
    dist.init_process_group(backend=backend, rank=rank, world_size=world, timeout=timeout)
    return ProcessInfo(rank, world, local)


def teardown_distributed(info: ProcessInfo) -> None:
    """Leave the process group this module created."""
    if info.distributed and info.owned and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: ProcessInfo) -> None:
    if info.distributed:
        dist.barrier()


def all_sum(values: list[float], info: ProcessInfo, device: torch.device) -> list[float]:
    """Element-wise sum of ``values`` over all processes (float64)."""
    if not info.distributed:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def gather_objects(obj, info: ProcessInfo) -> list:
    """``obj`` of every rank, in rank order (a list of one when not distributed)."""
    if not info.distributed:
        return [obj]
    out: list = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, info: ProcessInfo):
    """Rank 0's ``obj`` on every rank."""
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
