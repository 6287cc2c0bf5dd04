"""Process-group helpers that are the identity in a single process, so training has one code path for 1 and N ranks."""

from __future__ import annotations

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


__all__ = ["is_distributed", "world_size", "rank", "all_gather_with_grad", "all_gather_counts"]
