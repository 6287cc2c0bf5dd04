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
   hence the same embeddings) and back-propagate its surrogate. How the backward passes synchronise gradients
   across ranks (DDP ``no_sync``, FSDP2 deferred or per-chunk reduce-scatter, DeepSpeed's boundary and single
   ``engine.step()``) is the business of a :class:`~.gradient_sync.GradientSync` policy. On CPU the free heap the
   replays leave resident is bounded (:mod:`.cpu_heap`), so the peak follows one chunk's activations.

Under engines that shard parameters (FSDP, DeepSpeed; the policy's ``lockstep``) every rank must run the same
sequence of forwards and backwards through the same sharded units, or the per-unit collectives hang. The step then
makes it so: ranks run equally many chunks (a rank with fewer prepends *dummy* chunks, a copy of its first chunk
whose cached gradient is zero), and a chunk without images carries one extra *filler* row with a small image
(``vision_filler``), so the vision tower runs in every forward; filler rows and dummy chunks stay out of the loss
and back-propagate a zero gradient. Cached embeddings, the loss and the surrogates are fp32 whatever the engine's
compute dtype.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import _infer_device_type, get_device_states, set_device_states

from ..common.distributed import all_max, is_distributed
from .batching import group_rows, model_inputs, split_group, with_vision_filler
from .cpu_heap import HeapTrimmer
from .gradient_sync import GradientSync, gradient_sync
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
    group: str | None  # None for a dummy chunk (no row in the loss)
    inputs: dict[str, torch.Tensor]
    rows: int  # leading rows of ``inputs`` that enter the loss; the rest (filler, dummy) get a zero gradient
    random_state: RandomState | None = None  # phase 1, before the forward
    embeddings: torch.Tensor | None = None  # (rows, d), phase 1, no grad
    live_embeddings: torch.Tensor | None = None  # (rows, d), phase 1 of the last chunk, with its graph
    gradient: torch.Tensor | None = None  # (all rows, d), phase 2, dL/d embeddings, zero past ``rows``


class GradCache:
    """One cached contrastive step over named groups of a batch.

    Args:
        model: the (possibly DDP- / peft-wrapped) embedding model; ``model(**chunk).embeddings`` is (rows, d).
        loss_fn: maps ``{group name: (rows, d) embeddings}`` to a :class:`ContrastiveLossOutput`.
        chunk_sizes: rows per chunk for every group name.
        padding_side: padding side of the groups (padding columns are trimmed per chunk).
        sync: how backward passes synchronise gradients; default :func:`~.gradient_sync.gradient_sync` of
            ``model`` (the trainer passes one built with ``accelerator.backward`` and the accumulation state).
        vision_filler: a processed one-row group holding one image (``collate_group`` output), appended to every
            chunk without images when ``sync.lockstep``; required then only if some chunk has no image.
        pad_token_id: pads ``input_ids`` when a filler row is appended.

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
        sync: GradientSync | None = None,
        vision_filler: dict[str, torch.Tensor] | None = None,
        pad_token_id: int = 0,
    ):
        self.model, self.loss_fn, self.chunk_sizes = model, loss_fn, dict(chunk_sizes)
        self.padding_side, self.pad_token_id = padding_side, pad_token_id
        self.sync = sync if sync is not None else gradient_sync(model)
        self.vision_filler = vision_filler
        # one tensor per device holding parameters: the RNG of every device the forward runs on is snapshot
        self._model_devices = list({p.device: p for p in model.parameters()}.values())
        # on CPU the free heap the replays leave resident is bounded (:mod:`.cpu_heap`)
        self.heap = HeapTrimmer() if all(t.device.type == "cpu" for t in self._model_devices) else None

    def step(self, groups: Mapping[str, dict[str, torch.Tensor]], scale: float = 1.0) -> ContrastiveLossOutput:
        """Accumulate ``scale * dL/dtheta`` into ``.grad`` and return the (detached) loss and accuracy.

        ``groups`` maps names (keys of ``chunk_sizes``) to processed groups already on the model's device.
        """
        parts = [
            (name, part)
            for name, group in groups.items()
            for part in split_group(group, self.chunk_sizes[name], self.padding_side)
        ]
        if self.sync.lockstep and is_distributed():
            # every rank runs as many chunks as the rank with the most; dummies go first so the last chunk is real
            parts = [(None, parts[0][1])] * (all_max(len(parts)) - len(parts)) + parts
        chunks = [self._chunk(name, part) for name, part in parts]
        if self.heap is not None:
            self.heap.start()
        with self.sync.step():
            self.embed(chunks)
            output = self.cache_gradients(chunks)
            self.replay(chunks, scale)
        return output

    def _chunk(self, name: str | None, part: dict[str, torch.Tensor]) -> _Chunk:
        rows = 0 if name is None else group_rows(part)
        if self.sync.lockstep and "pixel_values" not in part:
            if self.vision_filler is None:
                raise ValueError("a chunk without images needs a vision_filler under an engine that shards parameters")
            part = with_vision_filler(part, self.vision_filler, self.padding_side, self.pad_token_id)
        return _Chunk(name, model_inputs(part), rows)

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
        with self.sync.chunk(last=len(chunks) == 1):
            last.live_embeddings = self.model(**last.inputs).embeddings  # (rows, d), with graph
        last.embeddings = last.live_embeddings.detach()

    def cache_gradients(self, chunks: list[_Chunk]) -> ContrastiveLossOutput:
        """Phase 2: loss on the detached embeddings, backward, cache ``dL/de`` per chunk."""
        names = list(dict.fromkeys(chunk.group for chunk in chunks if chunk.group is not None))
        leaves = {
            name: torch.cat([c.embeddings[: c.rows] for c in chunks if c.group == name]).float().requires_grad_()
            for name in names
        }  # (rows, d) per group, fp32 leaf tensors
        output = self.loss_fn(leaves)
        output.loss.backward()
        for chunk in chunks:
            chunk.gradient = torch.zeros_like(chunk.embeddings, dtype=torch.float32)  # (all rows, d)
        for name in names:
            mine = [c for c in chunks if c.group == name]
            for chunk, grad in zip(mine, leaves[name].grad.split([c.rows for c in mine])):
                chunk.gradient[: chunk.rows] = grad
        return ContrastiveLossOutput(loss=output.loss.detach(), accuracy=output.accuracy)

    def replay(self, chunks: list[_Chunk], scale: float = 1.0) -> None:
        """Phase 3: back-propagate ``scale * sum(e * dL/de)`` of every chunk: first the graph kept in phase 1, then
        each other chunk re-embedded with grad under its recorded RNG state."""
        kept, replays = chunks[-1], chunks[:-1]
        # only the very last backward may reduce (the policy decides how); an outer no_sync keeps even that one local
        with self.sync.chunk(last=not replays):
            self.sync.backward(self._surrogate(kept.live_embeddings, kept.gradient, scale), last=not replays)
        kept.live_embeddings = None
        if self.heap is not None:
            self.heap.after_chunk()
        for i, chunk in enumerate(replays):
            last = i == len(replays) - 1
            with self.sync.chunk(last):
                with self.replay_context(chunk):
                    embeddings = self.model(**chunk.inputs).embeddings  # (rows, d)
                self.sync.backward(self._surrogate(embeddings, chunk.gradient, scale), last)
            if self.heap is not None:
                self.heap.after_chunk()

    def replay_context(self, chunk: _Chunk) -> contextlib.AbstractContextManager:
        """The RNG state ``chunk``'s replay runs under: the one recorded before its phase-1 forward."""
        return chunk.random_state.restored()

    @staticmethod
    def _surrogate(embeddings: torch.Tensor, gradient: torch.Tensor, scale: float) -> torch.Tensor:
        # d(surrogate)/d(theta) = scale * sum_rows (dL/de) . (de/dtheta), in fp32 whatever the compute dtype
        return torch.dot(embeddings.float().flatten(), gradient.flatten()) * scale

    def _device_tensors(self, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        return list({t.device: t for t in (*inputs.values(), *self._model_devices)}.values())


def needs_grad_cache(groups: Mapping[str, dict[str, torch.Tensor]], chunk_sizes: Mapping[str, int | None]) -> bool:
    """True when some group has more rows than its chunk size (a None chunk size never chunks)."""
    return any(
        chunk_sizes.get(name) is not None and group_rows(group) > chunk_sizes[name] for name, group in groups.items()
    )


__all__ = ["GradCache", "RandomState", "needs_grad_cache"]
