"""How each distributed engine synchronises gradients over a step made of several backward passes — the one place
that knows DDP, FSDP2 and DeepSpeed. :class:`~.grad_cache.GradCache` runs one backward per chunk and asks the policy
of :func:`gradient_sync` around each; it never calls an engine itself.

A step is::

    with sync.step():                       # every gradient forward and backward of the step
        for i, chunk in enumerate(chunks):  # last = (i == len(chunks) - 1)
            with sync.chunk(last):          # around the chunk's forward with grad, and again around its backward
                ...
            sync.backward(surrogate, last)

``sync_gradients`` is the outer gradient-accumulation state (``accelerator.sync_gradients``): False on a micro-batch
whose gradients must stay local (the Trainer's ``no_sync`` micro-batches), True on the last micro-batch of an
optimizer step. Gradients are the same under every policy; the policies differ in when and how often they reduce:

==================  =======================================================================================
engine              reductions per step (N = chunks)
==================  =======================================================================================
none / DDP / FSDP1  one all-reduce: every chunk but the last runs in the wrapper's ``no_sync``
FSDP2, per chunk    N reduce-scatters; gradients stay sharded (1/W of the trainable gradients per rank)
FSDP2, deferred     one reduce-scatter: ``set_requires_gradient_sync(False)`` on all chunks but the last, which
                    keeps every rank's *unsharded* trainable gradients in memory until then (in FSDP's
                    ``reduce_dtype``: keep it fp32) — the default for LoRA, not for full fine-tuning
DeepSpeed ZeRO-1    one reduction, at the boundary (the last chunk's backward)
DeepSpeed ZeRO-2/3  N reductions, or one with ``coalesce_grad_reduction`` (DeepSpeed >= 0.19.2, no gradient
                    accumulation, no BF16/FP16 optimizer wrapper); one ``engine.step()`` after the last chunk
==================  =======================================================================================

``lockstep`` (:func:`needs_lockstep`) tells the caller whether every rank must run the same sequence of forwards and
backwards through the same sharded units (FSDP gathers parameters per unit in every forward and backward, ZeRO-3
per module, ZeRO-2 reduces in every backward): then ranks run equally many chunks, and every forward runs the
vision tower.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel

# defer FSDP2 reduction by default when at most this fraction of the parameters trains (LoRA): the unsharded
# gradients held until the last chunk are then small next to the sharded weights
DEFER_TRAINABLE_FRACTION = 0.1


class GradientSync:
    """Plain backward with ``no_sync`` on every chunk but the last when the model has one (DDP, FSDP1); a single
    process or an unwrapped model just runs backward.

    Args:
        model: the model GradCache runs (the engine's wrapper when there is one).
        backward: runs backward on a scalar (``accelerator.backward``, so fp16 loss scaling applies).
        sync_gradients: the outer accumulation state (see the module docstring).
    """

    def __init__(
        self, model: nn.Module, backward: Callable[[torch.Tensor], None] = torch.Tensor.backward, sync_gradients=True
    ):
        self.model, self._backward, self.sync_gradients = model, backward, sync_gradients
        self.lockstep = needs_lockstep(model)

    @contextlib.contextmanager
    def step(self) -> Iterator[None]:
        """Around every gradient forward and backward of one step."""
        yield

    def chunk(self, last: bool) -> contextlib.AbstractContextManager:
        """Around one chunk's forward with grad and, entered again, around its backward; ``last``: the step's last
        backward (the only one that may reduce; an outer ``no_sync`` keeps even that one local)."""
        if last or not hasattr(self.model, "no_sync"):
            return contextlib.nullcontext()
        return self.model.no_sync()

    def backward(self, loss: torch.Tensor, last: bool) -> None:
        """Back-propagate one chunk's scalar ``loss`` (already scaled for gradient accumulation)."""
        self._backward(loss)


class Fsdp2Sync(GradientSync):
    """FSDP2 (``fully_shard``; what accelerate's ``fsdp_version: 2`` applies), which has no ``no_sync``.

    ``defer=False``: every chunk's backward reduce-scatters into the sharded gradients (exact, N reductions).
    ``defer=True``: all chunks but the last run with gradient sync off, the last with the outer state, which is
    restored on every exit (accelerate's own FSDP2 ``no_sync`` resets the flag to True instead, so it must never be
    nested in here). Unused parameters contribute zero gradients so a unit whose parameters a rank did not use
    still joins the reduce-scatter.
    """

    def __init__(self, model: nn.Module, backward=torch.Tensor.backward, sync_gradients=True, *, defer: bool):
        super().__init__(model, backward, sync_gradients)
        self.defer = defer
        model.set_reduce_scatter_unused_params(True)

    @contextlib.contextmanager
    def chunk(self, last: bool) -> Iterator[None]:
        if not self.defer:
            yield
            return
        self.model.set_requires_gradient_sync(self.sync_gradients and last)
        try:
            yield
        finally:
            self.model.set_requires_gradient_sync(self.sync_gradients)


class DeepSpeedSync(GradientSync):
    """A DeepSpeed engine (ZeRO-0/1/2/3), driven directly rather than through ``accelerator.backward`` (which would
    step the optimizer inside every chunk's backward on the boundary micro-batch).

    Each chunk runs ``engine.backward(loss, scale_wrt_gas=False)`` (the loss already carries the accumulation scale)
    with the accumulation boundary set only for the last chunk of a syncing step; ``engine.step()`` runs once after
    the last chunk when ``sync_gradients`` (the Trainer's ``optimizer.step()`` is a no-op under DeepSpeed). With
    ``coalesce`` (see :func:`can_coalesce`) all chunk backwards reduce once, when the step's block closes.
    ``engine.no_sync()`` is never used (it refuses ZeRO-2/3).
    """

    def __init__(self, engine: nn.Module, sync_gradients=True, *, coalesce: bool | None = None):
        super().__init__(engine, sync_gradients=sync_gradients)
        self.coalesce = can_coalesce(engine, sync_gradients) if coalesce is None else coalesce

    @contextlib.contextmanager
    def step(self) -> Iterator[None]:
        with self.model.coalesce_grad_reduction() if self.coalesce else contextlib.nullcontext():
            yield
        if self.sync_gradients:
            self.model.step()

    def chunk(self, last: bool) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor, last: bool) -> None:
        self.model.set_gradient_accumulation_boundary(last and self.sync_gradients)
        self.model.backward(loss, scale_wrt_gas=False)


def can_coalesce(engine: nn.Module, sync_gradients: bool) -> bool:
    """Whether ``engine.coalesce_grad_reduction()`` may cover one step: the engine has it (DeepSpeed >= 0.19.2), ZeRO
    stage 1-3, DeepSpeed manages the accumulation, the optimizer is DeepSpeed's ZeRO optimizer itself (not a
    BF16/FP16 wrapper), and the step is a whole accumulation window (the block flushes once; a second block in the
    same window would overwrite the first one's reduced gradients)."""
    return (
        sync_gradients
        and hasattr(engine, "coalesce_grad_reduction")
        and engine.zero_optimization_stage() in (1, 2, 3)
        and engine.managed_gradient_accumulation()
        and engine.gradient_accumulation_steps() == 1
        and hasattr(engine.optimizer, "_coalesce_grad_reduction")
    )


def is_deepspeed_engine(model: nn.Module) -> bool:
    """True for a ``deepspeed.DeepSpeedEngine`` (without importing DeepSpeed when nothing else has)."""
    deepspeed = sys.modules.get("deepspeed")
    return deepspeed is not None and isinstance(model, deepspeed.DeepSpeedEngine)


def needs_lockstep(model: nn.Module) -> bool:
    """True when the engine shards parameters or reduces in every backward (FSDP1/2, DeepSpeed), so all ranks must
    run the same forwards and backwards through the same modules; False for DDP and a plain module."""
    return is_deepspeed_engine(model) or isinstance(model, (FSDPModule, FullyShardedDataParallel))


def defers_by_default(model: nn.Module) -> bool:
    """FSDP2's default: defer the reduction when at most ``DEFER_TRAINABLE_FRACTION`` of the parameters train (LoRA)
    and deferred gradients would accumulate in fp32 (FSDP accumulates them in its ``reduce_dtype``, else in the
    compute dtype: accelerate's ``mixed_precision: bf16`` sets both to bf16, so its FSDP2 runs reduce per chunk)."""
    total = trainable = 0
    for param in model.parameters():
        total += param.numel()
        trainable += param.numel() if param.requires_grad else 0
    return trainable <= DEFER_TRAINABLE_FRACTION * total and _accumulates_in_fp32(model)


def _accumulates_in_fp32(model: nn.Module) -> bool:
    # FSDP2 keeps each unit's MixedPrecisionPolicy only on its internal state (torch 2.6-2.13: FSDPParamGroup.
    # mp_policy); a None dtype means "as the parameter's"
    for module in model.modules():
        if not isinstance(module, FSDPModule):
            continue
        for group in module._get_fsdp_state()._fsdp_param_groups:
            for param in group.fsdp_params:
                policy = group.mp_policy
                dtype = policy.reduce_dtype or policy.param_dtype or param.sharded_param.dtype
                if param.sharded_param.requires_grad and dtype != torch.float32:
                    return False
    return True


def gradient_sync(
    model: nn.Module,
    backward: Callable[[torch.Tensor], None] = torch.Tensor.backward,
    *,
    sync_gradients: bool = True,
    defer_fsdp_reduction: bool | None = None,
) -> GradientSync:
    """The policy for ``model``: a DeepSpeed engine, an FSDP2 module (``defer_fsdp_reduction`` None = defer for LoRA,
    see :func:`defers_by_default`), or anything else (DDP, FSDP1, a plain module)."""
    if is_deepspeed_engine(model):
        return DeepSpeedSync(model, sync_gradients)
    if isinstance(model, FSDPModule):
        defer = defers_by_default(model) if defer_fsdp_reduction is None else defer_fsdp_reduction
        if defer and not _accumulates_in_fp32(model):
            warnings.warn(
                "fsdp_defer_reduction: FSDP accumulates the deferred gradients in its reduce dtype, not fp32 here "
                "(set reduce_dtype=torch.float32 in its MixedPrecisionPolicy, or reduce per chunk)",
                stacklevel=2,
            )
        return Fsdp2Sync(model, backward, sync_gradients, defer=defer)
    return GradientSync(model, backward, sync_gradients)


__all__ = [
    "DeepSpeedSync",
    "Fsdp2Sync",
    "GradientSync",
    "can_coalesce",
    "defers_by_default",
    "gradient_sync",
    "needs_lockstep",
]
