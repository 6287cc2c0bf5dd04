"""Deterministic global-batch sampling for contrastive training on any number of processes.

Contrastive loss uses the whole global batch as negatives, so *which examples share a global batch* is part of the
objective. Here the sequence of global batches is a pure function of ``(seed, epoch)`` and the corpus sizes: the
same global batch ``s`` is built whatever the world size, and rank ``r`` takes its contiguous slice
``[r * B, (r + 1) * B)`` with ``B = global_batch_size / world_size``. Incomplete global batches are dropped, so every
rank sees the same number of equally sized batches (no DDP hang, no uneven GradCache chunk counts).

Modes
- ``mixed``: one seeded permutation of the union of all sources per epoch (``weight`` is not used).
- ``homogeneous``: the global batch is cut into sub-batches of ``homogeneous_sub_batch`` examples (default: the
  whole global batch); each sub-batch comes from one source, drawn with probability ``weight / sum(weights)``.
  Sources are shuffled within themselves; a source drawn more often than it has rows starts a fresh permutation, so
  an epoch holds as many sub-batches as the sources have whole sub-batches in total (``sum(n_s // sub_batch)``) and
  small, heavily weighted sources repeat. With ``homogeneous_sub_batch = per_device_batch_size`` every rank's batch
  is single-source.

Wiring (HF Trainer, accelerate, torchrun)
``build_train_dataloader`` returns a plain :class:`TrainDataLoader` that already yields only this rank's shard. It
must **not** go through ``accelerator.prepare`` (which would shard it a second time or dispatch batches from rank 0):
override ``Trainer.get_train_dataloader`` to return it as is; move batches to the device in the training step.
Resume works with the Trainer's own mechanism: ``accelerate.skip_first_batches`` wraps the batch sampler in a
``SkipBatchSampler`` and the Trainer calls ``set_epoch`` on the sampler underneath it (and on the loader), so the
remaining batches are exactly those of the uninterrupted run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from ..common.errors import DataError
from .sources import TrainingCorpus

logger = logging.getLogger(__name__)

MODES = ("mixed", "homogeneous")


class GlobalBatchSampler(Sampler[list[int]]):
    """Batch sampler yielding this rank's flat corpus indices for each global batch (see module docstring).

    ``source_sizes[s]`` is the number of examples of source ``s``; flat indices are laid out source after source in
    that order, as in :class:`~modeling_vlm2vec.data.sources.TrainingCorpus`.
    """

    def __init__(
        self,
        source_sizes: Sequence[int],
        *,
        global_batch_size: int,
        world_size: int = 1,
        rank: int = 0,
        seed: int = 0,
        mode: str = "mixed",
        weights: Sequence[float] | None = None,
        homogeneous_sub_batch: int | None = None,
        source_names: Sequence[str] | None = None,
    ):
        if mode not in MODES:
            raise DataError(f"mode must be one of {MODES}, got {mode!r}")
        if global_batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise DataError(f"invalid global_batch_size={global_batch_size}, world_size={world_size}, rank={rank}")
        if global_batch_size % world_size:
            raise DataError(f"global batch size {global_batch_size} is not divisible by world size {world_size}")
        sub_batch = homogeneous_sub_batch or global_batch_size
        if mode == "homogeneous" and global_batch_size % sub_batch:
            raise DataError(
                f"global batch size {global_batch_size} is not a multiple of homogeneous_sub_batch {sub_batch}"
            )
        self.sizes = [int(n) for n in source_sizes]
        self.names = list(source_names) if source_names is not None else [f"source {i}" for i in range(len(self.sizes))]
        self.weights = np.asarray(weights if weights is not None else [1.0] * len(self.sizes), dtype=np.float64)
        if len(self.weights) != len(self.sizes) or len(self.names) != len(self.sizes) or not self.sizes:
            raise ValueError("source_sizes, weights and source_names must be non-empty and of equal length")
        if mode == "mixed" and len(set(self.weights.tolist())) > 1:
            logger.warning("source weights are ignored in mixed mode (one permutation of all examples)")
        if mode == "homogeneous":
            for name, size in zip(self.names, self.sizes):
                if size < sub_batch:
                    raise DataError(
                        f"has {size} examples, fewer than one homogeneous sub-batch of {sub_batch}", dataset=name
                    )
        self.global_batch_size, self.world_size, self.rank = global_batch_size, world_size, rank
        self.local_batch_size = global_batch_size // world_size
        self.seed, self.mode, self.sub_batch = seed, mode, sub_batch
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
        self.epoch = 0
        if len(self) == 0:  # incomplete global batches are dropped: there would be no training step at all
            raise DataError(
                f"the training data has {sum(self.sizes)} examples"
                f"{f' in whole sub-batches of {sub_batch}' if mode == 'homogeneous' else ''}, fewer than one global "
                f"batch of {global_batch_size} (per-device batch size x {world_size} processes): training would take "
                "no step; use a smaller batch size or more data"
            )

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose batches ``__iter__`` yields next (the Trainer calls this before every epoch)."""
        self.epoch = epoch

    def _rng(self, *stream: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, *stream])

    def _homogeneous_order(self) -> np.ndarray:
        n_sub = sum(n // self.sub_batch for n in self.sizes)
        choices = self._rng(0).choice(len(self.sizes), size=n_sub, p=self.weights / self.weights.sum())
        cursors = [0] * len(self.sizes)  # sub-batches already taken from each source
        streams: list[list[np.ndarray]] = [[] for _ in self.sizes]  # whole sub-batches of one permutation per pass
        order = []
        for s in choices:
            per_pass = self.sizes[s] // self.sub_batch
            n_pass, k = divmod(cursors[s], per_pass)
            if k == 0:  # new pass over the source: fresh permutation, only whole sub-batches (no repeat inside one)
                perm = self._rng(1, int(s), n_pass).permutation(self.sizes[s])[: per_pass * self.sub_batch]
                streams[s] = np.split(perm + self.offsets[s], per_pass)
            order.append(streams[s][k])
            cursors[s] += 1
        return np.concatenate(order)

    def global_batches(self) -> np.ndarray:
        """The current epoch's global batches, (num_batches, global_batch_size) int64 flat indices."""
        if self.mode == "mixed":
            order = self._rng(0).permutation(int(self.offsets[-1]))
        else:
            order = self._homogeneous_order()
        n = len(order) // self.global_batch_size
        return order[: n * self.global_batch_size].reshape(n, self.global_batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        lo = self.rank * self.local_batch_size
        for batch in self.global_batches():
            yield batch[lo : lo + self.local_batch_size].tolist()

    def __len__(self) -> int:
        if self.mode == "mixed":
            n_examples = int(self.offsets[-1])
        else:
            n_examples = sum(n // self.sub_batch for n in self.sizes) * self.sub_batch
        return n_examples // self.global_batch_size


class TrainDataLoader(DataLoader):
    """A DataLoader over a :class:`GlobalBatchSampler` whose ``set_epoch`` reaches the sampler."""

    def set_epoch(self, epoch: int) -> None:
        self.batch_sampler.set_epoch(epoch)


def check_corpus_trainable(
    corpus: TrainingCorpus,
    *,
    per_device_batch_size: int,
    world_size: int = 1,
    mode: str = "mixed",
    homogeneous_sub_batch: int | None = None,
) -> None:
    """Raise `DataError` unless training on `corpus` takes steps with a loss that can learn.

    The corpus must hold one whole global batch (``per_device_batch_size * world_size``; see
    :class:`GlobalBatchSampler`). A global batch of one row has no in-batch negative, so its loss is the constant 0
    unless the row brings hard negatives: then every row must have at least one.
    """
    GlobalBatchSampler(
        corpus.sizes,
        global_batch_size=per_device_batch_size * world_size,
        world_size=world_size,
        mode=mode,
        weights=corpus.weights,
        homogeneous_sub_batch=homogeneous_sub_batch,
        source_names=corpus.names,
    )
    if per_device_batch_size * world_size == 1:
        for source in corpus.sources:
            if source.without_negatives:
                raise DataError(
                    f"a global batch of 1 has no in-batch negative and {source.without_negatives} of {len(source)} "
                    "rows have no hard negative: their loss is constantly 0; use a global batch of 2 or more, or "
                    "give every row a hard negative",
                    dataset=source.name,
                    file=source.file,
                )


def build_train_dataloader(
    corpus: TrainingCorpus,
    collator: Callable[[list[dict]], dict],
    *,
    per_device_batch_size: int,
    world_size: int = 1,
    rank: int = 0,
    seed: int = 0,
    mode: str = "mixed",
    homogeneous_sub_batch: int | None = None,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> TrainDataLoader:
    """This rank's training dataloader: ``per_device_batch_size`` examples per step, already sharded.

    The global batch is ``per_device_batch_size * world_size``. Do not pass the result to ``accelerator.prepare``.
    Raises `DataError` when the corpus cannot train (see :func:`check_corpus_trainable`).
    """
    check_corpus_trainable(
        corpus,
        per_device_batch_size=per_device_batch_size,
        world_size=world_size,
        mode=mode,
        homogeneous_sub_batch=homogeneous_sub_batch,
    )
    sampler = GlobalBatchSampler(
        corpus.sizes,
        global_batch_size=per_device_batch_size * world_size,
        world_size=world_size,
        rank=rank,
        seed=seed,
        mode=mode,
        weights=corpus.weights,
        homogeneous_sub_batch=homogeneous_sub_batch,
        source_names=corpus.names,
    )
    return TrainDataLoader(
        corpus,
        batch_sampler=sampler,
        collate_fn=collator,
        num_workers=num_workers,
        pin_memory=pin_memory and torch.cuda.is_available(),
        persistent_workers=num_workers > 0,
    )
