"""Process-group helpers, the identity in a single process, so training and evaluation have one code path for 1 and
N ranks (``accelerate launch`` / ``torchrun``; gloo on CPU, NCCL on GPUs).

Training uses the autograd-aware gathers (:func:`all_gather_with_grad`); evaluation shards items by
:func:`shard_bounds` and reassembles them with :func:`gather_rows` (tensor collectives only, nothing is pickled).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed import _functional_collectives as funcol


def is_distributed() -> bool:
    """True when a default process group with more than one rank is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of ranks (1 when not distributed)."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """This process's rank (0 when not distributed)."""
    return dist.get_rank() if is_distributed() else 0


def rank_and_world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without a process group."""
    return rank(), world_size()


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if is_distributed():
        dist.barrier()


def _collective_device() -> torch.device:
    # NCCL only moves CUDA tensors; gloo works on CPU tensors.
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` (n, ...) from every rank along dim 0 -> (world_size * n, ...), rank order.

    Autograd-aware: the backward pass sums the gathered gradients across ranks (reduce-scatter), so rank ``r``
    receives ``sum_s dL_s / d tensor_r``. Every rank must pass the same shape. Identity when not distributed.
    """
    if not is_distributed():
        return tensor
    # all_gather_single carries autograd since torch 2.13; the result may be an async tensor that waits on first use
    return funcol.all_gather_single(tensor.contiguous(), 0, dist.group.WORLD)


def all_gather_counts(count: int, device: torch.device | str = "cpu") -> list[int]:
    """Every rank's ``count``, in rank order (``[count]`` when not distributed). No gradient.

    ``device`` must be one the process group's backend can communicate on (the embeddings' device).
    """
    if not is_distributed():
        return [int(count)]
    local = torch.tensor([int(count)], dtype=torch.long, device=device)
    return [int(c) for c in funcol.all_gather_single(local, 0, dist.group.WORLD).tolist()]


def shard_bounds(num_items: int, rank: int, world_size: int) -> tuple[int, int]:
    """[start, stop) of ``rank``'s contiguous shard of ``num_items``; shard sizes differ by at most one."""
    base, extra = divmod(num_items, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def gather_rows(local: np.ndarray, num_items: int) -> np.ndarray:
    """Concatenate every rank's (shard_size, dim) float32 rows in rank order -> (num_items, dim).

    Shards are those of :func:`shard_bounds`; a rank with an empty shard may pass a (0, 0) array (the dimension is
    agreed on collectively).
    """
    this_rank, ranks = rank_and_world()
    if ranks == 1:
        return local
    device = _collective_device()
    dim = torch.tensor([local.shape[1] if local.size else 0], device=device)
    dist.all_reduce(dim, op=dist.ReduceOp.MAX)
    sizes = [shard_bounds(num_items, r, ranks) for r in range(ranks)]
    longest = max(stop - start for start, stop in sizes)
    padded = torch.zeros(longest, int(dim.item()), dtype=torch.float32, device=device)  # (longest_shard, dim)
    padded[: len(local)] = torch.from_numpy(np.ascontiguousarray(local, dtype=np.float32)).reshape(len(local), -1)
    parts = [torch.empty_like(padded) for _ in range(ranks)]
    dist.all_gather(parts, padded)
    return np.concatenate([part[: stop - start].cpu().numpy() for part, (start, stop) in zip(parts, sizes)])


def process_device() -> str:
    """This process's device: under ``accelerate launch`` / ``torchrun`` it joins the process group (gloo on
    CPU-only machines) and gets its own accelerator; in a plain single process it is ``cuda:0`` when available,
    else ``cpu``."""
    from accelerate import PartialState  # imported here: only command lines need it

    return str(PartialState(cpu=not torch.cuda.is_available()).device)


def all_true(flag: bool) -> bool:
    """True on every rank iff ``flag`` is True on every rank (so all ranks take the same branch)."""
    if not is_distributed():
        return flag
    value = torch.tensor([1 if flag else 0], device=_collective_device())
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def all_max(value: int) -> int:
    """The largest ``value`` over all ranks (``value`` when not distributed)."""
    if not is_distributed():
        return int(value)
    tensor = torch.tensor([int(value)], dtype=torch.long, device=_collective_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())


__all__ = [
    "all_gather_counts",
    "all_gather_with_grad",
    "all_max",
    "all_true",
    "barrier",
    "gather_rows",
    "is_distributed",
    "process_device",
    "rank",
    "rank_and_world",
    "shard_bounds",
    "world_size",
]
