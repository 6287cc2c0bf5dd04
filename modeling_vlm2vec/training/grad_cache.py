"""GradCache: the exact gradient of a large-batch contrastive loss with the activation memory of one chunk.

Gao et al. 2021 ("Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup"). The loss depends on the
parameters only through the embeddings, so ``dL/dtheta = sum_chunks (dL/de_chunk) . (de_chunk/dtheta)``:

1. :meth:`GradCache.embed` — embed every chunk of every group under ``torch.no_grad()``, snapshotting the RNG
   state (CPU + every device the chunk and the model live on, taken after the inputs are on their device) before
   each chunk. The last chunk keeps its graph instead (one chunk's activations, the same peak as a replay), so it
   needs no replay.
2. :meth:`GradCache.cache_gradients` — the loss on the detached embeddings (leaf tensors; the loss gathers them
   across ranks itself) and its backward: ``dL/de`` for every row is cached.
3. :meth:`GradCache.replay` — back-propagate the surrogate ``sum(e_chunk * cached_grad_chunk)`` of the kept
   chunk, then re-embed every other chunk with grad under its recorded RNG state (same dropout masks as in phase 1,
   hence the same embeddings) and back-propagate its surrogate. Under DDP every forward and backward but the very
   last replay's runs in ``no_sync``, so gradients are all-reduced once per step; inside an outer ``no_sync``
   (gradient-accumulation micro-batch) nothing syncs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import _infer_device_type, get_device_states, set_device_states

from .batching import group_rows, model_inputs, split_group
from .losses import ContrastiveLossOutput


class RandomState:
    """RNG snapshot of the CPU and of the given tensors' devices; :meth:`restored` replays it without side effects."""

    def __init__(self, device_tensors: list[torch.Tensor]):
        self.cpu_state = torch.get_rng_state()
        self.device_type = _infer_device_type(*device_tensors)
        self.devices, self.device_states = get_device_states(*device_tensors)

    @contextlib.contextmanager
    def restored(self) -> Iterator[None]:
        # fork_rng: random numbers drawn by the replay do not advance the caller's generators
        with torch.random.fork_rng(devices=self.devices, device_type=self.device_type):
            torch.set_rng_state(self.cpu_state)
            set_device_states(self.devices, self.device_states, device_type=self.device_type)
            yield


@dataclass
class _Chunk:
    group: str
    inputs: dict[str, torch.Tensor]
    random_state: RandomState | None = None  # phase 1, before the forward
    embeddings: torch.Tensor | None = None  # (rows, d), phase 1, no grad
    live_embeddings: torch.Tensor | None = None  # (rows, d), phase 1 of the last chunk, with its graph
    gradient: torch.Tensor | None = None  # (rows, d), phase 2, dL/d embeddings


class GradCache:
    """One cached contrastive step over named groups of a batch.

    Args:
        model: the (possibly DDP- / peft-wrapped) embedding model; ``model(**chunk).embeddings`` is (rows, d).
        loss_fn: maps ``{group name: (rows, d) embeddings}`` to a :class:`ContrastiveLossOutput`.
        chunk_sizes: rows per chunk for every group name.
        padding_side: padding side of the groups (padding columns are trimmed per chunk).
        backward: runs backward on a surrogate scalar; pass ``accelerator.backward`` so fp16 loss scaling applies.

    Each chunk is replayed under the RNG state recorded before its first forward (:meth:`replay_context`), so dropout
    masks are the same in both passes and the gradient is exact.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[dict[str, torch.Tensor]], ContrastiveLossOutput],
        *,
        chunk_sizes: Mapping[str, int],
        padding_side: str = "right",
        backward: Callable[[torch.Tensor], None] = torch.Tensor.backward,
    ):
        self.model, self.loss_fn, self.chunk_sizes = model, loss_fn, dict(chunk_sizes)
        self.padding_side, self.backward = padding_side, backward
        # one tensor per device holding parameters: the RNG of every device the forward runs on is snapshot
        self._model_devices = list({p.device: p for p in model.parameters()}.values())

    def step(self, groups: Mapping[str, dict[str, torch.Tensor]], scale: float = 1.0) -> ContrastiveLossOutput:
        """Accumulate ``scale * dL/dtheta`` into ``.grad`` and return the (detached) loss and accuracy.

        ``groups`` maps names (keys of ``chunk_sizes``) to processed groups already on the model's device.
        """
        chunks = [
            _Chunk(name, model_inputs(inputs))
            for name, group in groups.items()
            for inputs in split_group(group, self.chunk_sizes[name], self.padding_side)
        ]
        self.embed(chunks)
        output = self.cache_gradients(chunks)
        self.replay(chunks, scale)
        return output

    def embed(self, chunks: list[_Chunk]) -> None:
        """Phase 1: embeddings of every chunk, RNG state recorded before each forward.

        All chunks but the last run without a graph. The last keeps its graph (the activation memory of one chunk,
        as during a replay): phase 3 back-propagates it directly, which saves one forward per step.
        """
        with torch.no_grad():
            for chunk in chunks[:-1]:
                chunk.random_state = RandomState(self._device_tensors(chunk.inputs))
                chunk.embeddings = self.model(**chunk.inputs).embeddings  # (rows, d)
        last = chunks[-1]
        with self._no_sync() if len(chunks) > 1 else contextlib.nullcontext():
            last.live_embeddings = self.model(**last.inputs).embeddings  # (rows, d), with graph
        last.embeddings = last.live_embeddings.detach()

    def cache_gradients(self, chunks: list[_Chunk]) -> ContrastiveLossOutput:
        """Phase 2: loss on the detached embeddings, backward, cache ``dL/de`` per chunk."""
        names = list(dict.fromkeys(chunk.group for chunk in chunks))
        leaves = {
            name: torch.cat([c.embeddings for c in chunks if c.group == name]).requires_grad_() for name in names
        }  # (rows, d) per group, leaf tensors
        output = self.loss_fn(leaves)
        output.loss.backward()
        for name in names:
            mine = [c for c in chunks if c.group == name]
            for chunk, grad in zip(mine, leaves[name].grad.split([len(c.embeddings) for c in mine])):
                chunk.gradient = grad
        return ContrastiveLossOutput(loss=output.loss.detach(), accuracy=output.accuracy)

    def replay(self, chunks: list[_Chunk], scale: float = 1.0) -> None:
        """Phase 3: back-propagate ``scale * sum(e * dL/de)`` of every chunk: first the graph kept in phase 1, then
        each other chunk re-embedded with grad under its recorded RNG state."""
        kept, replays = chunks[-1], chunks[:-1]
        # only the very last backward may all-reduce; an outer no_sync keeps even that one local
        with self._no_sync() if replays else contextlib.nullcontext():
            self.backward(self._surrogate(kept.live_embeddings, kept.gradient, scale))
        kept.live_embeddings = None
        for i, chunk in enumerate(replays):
            with self._no_sync() if i < len(replays) - 1 else contextlib.nullcontext():
                with self.replay_context(chunk):
                    embeddings = self.model(**chunk.inputs).embeddings  # (rows, d)
                self.backward(self._surrogate(embeddings, chunk.gradient, scale))

    def replay_context(self, chunk: _Chunk) -> contextlib.AbstractContextManager:
        """The RNG state ``chunk``'s replay runs under: the one recorded before its phase-1 forward."""
        return chunk.random_state.restored()

    @staticmethod
    def _surrogate(embeddings: torch.Tensor, gradient: torch.Tensor, scale: float) -> torch.Tensor:
        # d(surrogate)/d(theta) = scale * sum_rows (dL/de) . (de/dtheta)
        return torch.dot(embeddings.flatten(), gradient.flatten().to(embeddings.dtype)) * scale

    def _no_sync(self) -> contextlib.AbstractContextManager:
        return self.model.no_sync() if hasattr(self.model, "no_sync") else contextlib.nullcontext()

    def _device_tensors(self, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        return list({t.device: t for t in (*inputs.values(), *self._model_devices)}.values())


def needs_grad_cache(groups: Mapping[str, dict[str, torch.Tensor]], chunk_sizes: Mapping[str, int | None]) -> bool:
    """True when some group has more rows than its chunk size (a None chunk size never chunks)."""
    return any(
        chunk_sizes.get(name) is not None and group_rows(group) > chunk_sizes[name] for name, group in groups.items()
    )


__all__ = ["GradCache", "RandomState", "needs_grad_cache"]
