"""GradCache under FSDP2 (``fully_shard``, as accelerate's ``fsdp_version: 2`` applies it) on two gloo CPU processes.

accelerate never selects FSDP on CPU, so the model is sharded here the way its TRANSFORMER_BASED_WRAP policy does:
every class of ``_no_split_modules`` (decoder layers and vision blocks) its own unit, then the root. The ranks differ
in chunk count and in which chunks hold images — without dummy chunks and the vision filler this hangs (a gloo
timeout fails the test). Checked: loss, gradients and one SGD step equal one process on the whole batch; both ranks
run equally many forwards, each through the vision tower; reduce-scatters per step are one per unit (deferred) or
one per unit and chunk.
"""

from math import ceil

import torch
import torch.distributed as dist
from sharded_steps import (
    CHUNKS,
    LEARNING_RATE,
    NEG_COUNTS,
    WORLD,
    local_groups,
    reference_step,
    run_two_ranks,
    subset,
    vision_filler,
)
from train_batches import loss_of, relative_error, single_thread  # noqa: F401  (autouse fixture)

from modeling_vlm2vec import Vlm2VecModel
from modeling_vlm2vec.training.grad_cache import GradCache
from modeling_vlm2vec.training.gradient_sync import Fsdp2Sync, gradient_sync


def _shard(model):
    """fully_shard every ``_no_split_modules`` class, then the root; returns the number of FSDP units."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (WORLD,))
    units = [m for m in model.modules() if type(m).__name__ in model._no_split_modules]
    assert any("Vision" in type(m).__name__ for m in units)  # vision blocks are units of their own
    for module in units:
        fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return len(units) + 1


def _full_gradients(model):
    grads = {n: p.grad.full_tensor() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return grads


def _worker(rank, backbone_dir):
    model = Vlm2VecModel.from_backbone(backbone_dir).train()
    filler = vision_filler(model)
    results = {"units": torch.tensor([_shard(model)])}
    counts = {"reduce_scatter": 0, "forward": 0, "vision": 0}
    reduce_scatter = dist.reduce_scatter_single

    def counting_reduce_scatter(*args, **kwargs):
        counts["reduce_scatter"] += 1
        return reduce_scatter(*args, **kwargs)

    dist.reduce_scatter_single = counting_reduce_scatter  # what FSDP2's default reduce-scatter calls
    model.register_forward_pre_hook(lambda *_: counts.__setitem__("forward", counts["forward"] + 1))
    model.backbone.visual.register_forward_pre_hook(lambda *_: counts.__setitem__("vision", counts["vision"] + 1))

    for defer in (False, True):
        for case in range(len(NEG_COUNTS)):
            sync = gradient_sync(model, defer_fsdp_reduction=defer)
            assert isinstance(sync, Fsdp2Sync) and sync.lockstep
            cache = GradCache(model, loss_of, chunk_sizes=CHUNKS, sync=sync, vision_filler=filler)
            groups = local_groups(model, case, rank)
            counts.update(reduce_scatter=0, forward=0, vision=0)
            out = cache.step(groups)
            tag = f"{case}/{'deferred' if defer else 'per_chunk'}"
            results.update({f"{tag}/{k}": torch.tensor([v]) for k, v in counts.items()})
            results[f"{tag}/loss"] = out.loss.reshape(1)
            results.update({f"{tag}/grad/{n}": g for n, g in _full_gradients(model).items()})

    # one optimizer step on the sharded parameters
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE)
    GradCache(model, loss_of, chunk_sizes=CHUNKS, vision_filler=filler).step(local_groups(model, 0, rank))
    optimizer.step()
    results.update({f"stepped/{n}": p.full_tensor() for n, p in model.named_parameters()})
    return results


def _chunks(rows):
    return sum(ceil(n / CHUNKS["query"]) for n in rows if n)


def test_fsdp2_grad_cache_equals_one_process(tiny_backbone_dir, tmp_path):
    backbone_dir = str(tiny_backbone_dir("qwen2_vl"))
    ranks = run_two_ranks(_worker, tmp_path, backbone_dir)
    model = Vlm2VecModel.from_backbone(backbone_dir).train()
    units = ranks[0]["units"].item()

    for case, counts in enumerate(NEG_COUNTS):
        loss, expected = reference_step(model, case)
        # chunks of each rank: 3 query rows, 3 positive rows, its negatives; every rank runs the most of any rank
        half = len(counts) // WORLD
        chunks = max(_chunks([half, half, sum(counts[r * half : (r + 1) * half])]) for r in range(WORLD))
        assert _chunks([half, half, sum(counts[:half])]) != _chunks([half, half, sum(counts[half:])])
        for mode, reductions in (("per_chunk", units * chunks), ("deferred", units)):
            tag = f"{case}/{mode}"
            assert abs(sum(r[f"{tag}/loss"].item() for r in ranks) / WORLD - loss) <= 1e-5 * abs(loss), tag
            for r in ranks:
                assert relative_error(subset(r, f"{tag}/grad/"), expected) <= 1e-5, tag
                # phase 1 runs every chunk, phase 3 replays all but the last: 2 * chunks - 1 forwards
                assert r[f"{tag}/forward"].item() == 2 * chunks - 1, tag
                assert r[f"{tag}/vision"].item() == 2 * chunks - 1, tag
                assert r[f"{tag}/reduce_scatter"].item() == reductions, tag

    _, grads = reference_step(model, 0)
    with torch.no_grad():
        expected = {n: p - LEARNING_RATE * grads[n] for n, p in model.named_parameters()}
        moved = {n: expected[n] - p for n, p in model.named_parameters()}
        for r in ranks:
            stepped = subset(r, "stepped/")
            assert relative_error({n: stepped[n] - p for n, p in model.named_parameters()}, moved) <= 1e-5
