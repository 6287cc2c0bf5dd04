"""Process-group helpers for multi-process evaluation (``accelerate launch`` / ``torchrun``).

Each process encodes a contiguous shard of the items; :func:`gather_rows` reassembles the full (num_items, dim)
array on every process with tensor collectives only (nothing is pickled). With no initialised process group every
helper is the single-process identity.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the default process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard_bounds(num_items: int, rank: int, world_size: int) -> tuple[int, int]:
    """[start, stop) of this rank's contiguous shard; shard sizes differ by at most one."""
    base, extra = divmod(num_items, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def _device() -> torch.device:
    # NCCL only moves CUDA tensors; gloo works on CPU tensors.
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def gather_rows(local: np.ndarray, num_items: int) -> np.ndarray:
    """Concatenate every rank's (shard_size, dim) float32 rows in rank order -> (num_items, dim).

    A rank with an empty shard may pass a (0, 0) array; the dimension is agreed on collectively.
    """
    rank, world_size = rank_and_world()
    if world_size == 1:
        return local
    device = _device()
    dim = torch.tensor([local.shape[1] if local.size else 0], device=device)
    dist.all_reduce(dim, op=dist.ReduceOp.MAX)
    sizes = [shard_bounds(num_items, r, world_size) for r in range(world_size)]
    longest = max(stop - start for start, stop in sizes)
    padded = torch.zeros(longest, int(dim.item()), dtype=torch.float32, device=device)  # (longest_shard, dim)
    padded[: len(local)] = torch.from_numpy(np.ascontiguousarray(local, dtype=np.float32)).reshape(len(local), -1)
    parts = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(parts, padded)
    return np.concatenate([part[: stop - start].cpu().numpy() for part, (start, stop) in zip(parts, sizes)])


def all_true(flag: bool) -> bool:
    """True on every rank iff ``flag`` is True on every rank (so all ranks take the same branch)."""
    _, world_size = rank_and_world()
    if world_size == 1:
        return flag
    value = torch.tensor([1 if flag else 0], device=_device())
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if rank_and_world()[1] > 1:
        dist.barrier()
