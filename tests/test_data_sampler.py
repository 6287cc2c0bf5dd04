"""The global-batch sampler: world-size invariance, determinism, homogeneous sub-batches, resume by skipping."""

import numpy as np
import pytest
from accelerate import skip_first_batches

from modeling_vlm2vec.common.errors import DataError
from modeling_vlm2vec.data.sampler import GlobalBatchSampler, build_train_dataloader

SIZES = [37, 50, 13]
OFFSETS = np.cumsum([0] + SIZES)


def _source_of(index):
    return int(np.searchsorted(OFFSETS, index, side="right")) - 1


def _epoch(sampler, epoch):
    sampler.set_epoch(epoch)
    return list(sampler)


@pytest.mark.parametrize("mode, sub_batch", [("mixed", None), ("homogeneous", None), ("homogeneous", 2)])
def test_global_batches_do_not_depend_on_world_size(mode, sub_batch):
    kwargs = dict(global_batch_size=8, seed=3, mode=mode, homogeneous_sub_batch=sub_batch, weights=[1, 2, 1])
    reference = _epoch(GlobalBatchSampler(SIZES, world_size=1, rank=0, **kwargs), epoch=2)
    assert len(reference) == len(GlobalBatchSampler(SIZES, **kwargs)) > 0
    assert all(len(b) == 8 for b in reference)
    for world_size in (2, 4):
        shards = [
            _epoch(GlobalBatchSampler(SIZES, world_size=world_size, rank=r, **kwargs), epoch=2)
            for r in range(world_size)
        ]
        assert all(len(s) == len(reference) for s in shards)
        for step, batch in enumerate(reference):
            assert all(len(s[step]) == 8 // world_size for s in shards)
            assert sum((s[step] for s in shards), []) == batch  # rank r holds the r-th contiguous slice


def test_mixed_mode_is_a_seeded_permutation_per_epoch():
    n = sum(SIZES)
    sampler = GlobalBatchSampler(SIZES, global_batch_size=8, seed=0)
    epoch0 = _epoch(sampler, 0)
    flat = sum(epoch0, [])
    assert len(epoch0) == n // 8 and len(flat) == len(set(flat)) == (n // 8) * 8  # drop_last, no repeats
    assert set(flat) <= set(range(n))
    assert epoch0 == _epoch(GlobalBatchSampler(SIZES, global_batch_size=8, seed=0), 0)
    assert epoch0 != _epoch(sampler, 1)
    assert epoch0 != _epoch(GlobalBatchSampler(SIZES, global_batch_size=8, seed=1), 0)
    assert _epoch(sampler, 0) == epoch0  # going back to an epoch replays it


def test_homogeneous_sub_batches_are_single_source_and_follow_weights():
    sizes, weights, sub = [400, 400, 400], [1.0, 2.0, 5.0], 4
    sampler = GlobalBatchSampler(
        sizes, global_batch_size=8, mode="homogeneous", homogeneous_sub_batch=sub, weights=weights, seed=0
    )
    offsets = np.cumsum([0] + sizes)
    counts = np.zeros(3)
    n_sub = 0
    for batch in _epoch(sampler, 0):
        for k in range(0, len(batch), sub):
            part = batch[k : k + sub]
            sources = {int(np.searchsorted(offsets, i, side="right")) - 1 for i in part}
            assert len(sources) == 1 and len(set(part)) == sub  # one source, no repeated example
            counts[sources.pop()] += 1
            n_sub += 1
    assert n_sub == sum(s // sub for s in sizes)  # 300 sub-batches, as many as the sources hold
    p = np.asarray(weights) / sum(weights)
    # each count is Binomial(n_sub, p_s); 5 standard deviations is a safe bound
    assert np.all(np.abs(counts - n_sub * p) < 5 * np.sqrt(n_sub * p * (1 - p)))


def test_homogeneous_whole_global_batch_and_repeat_passes():
    # source 2 (13 rows, weight 10) is drawn far more often than it has rows: each pass is a fresh permutation
    sampler = GlobalBatchSampler(SIZES, global_batch_size=4, mode="homogeneous", weights=[1, 1, 10], seed=5)
    batches = _epoch(sampler, 0)
    assert len(batches) == sum(s // 4 for s in SIZES)
    from_small = [b for b in batches if {_source_of(i) for i in b} == {2}]
    assert all(len({_source_of(i) for i in b}) == 1 for b in batches)
    assert len(from_small) > 13 // 4  # more sub-batches than one pass holds
    per_pass = 13 // 4
    for p in range(len(from_small) // per_pass):  # within one pass no example repeats
        chunk = sum(from_small[p * per_pass : (p + 1) * per_pass], [])
        assert len(chunk) == len(set(chunk))


def test_invalid_settings_are_rejected():
    with pytest.raises(ValueError, match="not divisible by world size"):
        GlobalBatchSampler(SIZES, global_batch_size=6, world_size=4)
    with pytest.raises(ValueError, match="not a multiple of homogeneous_sub_batch"):
        GlobalBatchSampler(SIZES, global_batch_size=8, mode="homogeneous", homogeneous_sub_batch=3)
    with pytest.raises(DataError, match="dataset 'tiny'.*fewer than one homogeneous sub-batch of 16"):
        GlobalBatchSampler(SIZES, global_batch_size=16, mode="homogeneous", source_names=["a", "b", "tiny"])
    with pytest.raises(ValueError, match="mode"):
        GlobalBatchSampler(SIZES, global_batch_size=8, mode="random")


class _IndexCorpus:
    """Stands in for TrainingCorpus: item k is k itself."""

    sizes, weights, names = SIZES, [1.0, 1.0, 1.0], ["a", "b", "c"]

    def __len__(self):
        return sum(SIZES)

    def __getitem__(self, k):
        return k


def _as_lists(batches):
    return [list(b) for b in batches]


@pytest.mark.parametrize("mode", ["mixed", "homogeneous"])
def test_resume_by_skipping_batches_gives_the_same_remaining_order(mode):
    def loader():
        return build_train_dataloader(
            _IndexCorpus(),
            list,
            per_device_batch_size=2,
            world_size=2,
            rank=1,
            seed=7,
            mode=mode,
            homogeneous_sub_batch=2,
        )

    full = loader()
    full.set_epoch(1)
    uninterrupted = _as_lists(full)
    assert uninterrupted == _epoch(full.batch_sampler, 1) and len(uninterrupted) == len(full)
    assert uninterrupted != _epoch(full.batch_sampler, 0)  # set_epoch on the loader reached the sampler

    # What transformers' Trainer does on resume: skip_first_batches, then set_epoch on the sampler underneath.
    k = 5
    resumed = skip_first_batches(loader(), k)
    resumed.batch_sampler.batch_sampler.set_epoch(1)
    assert len(resumed) == len(uninterrupted) - k
    assert _as_lists(resumed) == uninterrupted[k:]
