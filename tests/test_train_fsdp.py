"""GradCache under FSDP2 (``fully_shard``, as accelerate's ``fsdp_version: 2`` applies it) on two gloo CPU processes.

accelerate never selects FSDP on CPU, so the model is sharded here the way its TRANSFORMER_BASED_WRAP policy does:
every class of ``_no_split_modules`` (decoder layers and vision blocks) its own unit, then the root. The ranks differ
in chunk count and in which chunks hold images — without dummy chunks and the vision filler this hangs (a gloo
timeout fails the test). Checked: loss, gradients and one SGD step equal one process on the whole batch; both ranks
run equally many forwards, each through the vision tower; reduce-scatters per step are one per unit (deferred) or
one per unit and chunk; deferred with two accumulation micro-batches, one per unit for both; the uncached step with
one rank's batch text-only.
"""

import pytest
import torch
import torch.distributed as dist
from sharded_steps import (
    CHUNKS,
    LEARNING_RATE,
    NEG_COUNTS,
    WORLD,
    chunks_per_step,
    local_groups,
    reference_step,
    run_two_ranks,
    subset,
    uncached_batch,
    vision_filler,
)
from torch.distributed.fsdp import MixedPrecisionPolicy
from train_batches import full_batch_loss, gradients, loss_of, relative_error, single_thread  # noqa: F401  (autouse fixture)

from modeling_vlm2vec import Vlm2VecModel
from modeling_vlm2vec.training.grad_cache import GradCache
from modeling_vlm2vec.training.gradient_sync import Fsdp2Sync, defers_by_default, gradient_sync
from modeling_vlm2vec.training.trainer import embed_groups


def _shard(model, **options):
    """fully_shard every ``_no_split_modules`` class, then the root; returns the number of FSDP units."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (WORLD,))
    units = [m for m in model.modules() if type(m).__name__ in model._no_split_modules]
    assert any("Vision" in type(m).__name__ for m in units)  # vision blocks are units of their own
    for module in units:
        fully_shard(module, mesh=mesh, **options)
    fully_shard(model, mesh=mesh, **options)
    return len(units) + 1


def _few_trainable(model):
    """Freeze all but the norm weights (a LoRA-sized trainable fraction); returns the frozen parameters."""
    frozen = [p for n, p in model.named_parameters() if "norm" not in n]
    for param in frozen:
        param.requires_grad_(False)
    return frozen


def _full_gradients(model):
    grads = {n: p.grad.full_tensor() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return grads


def _worker(rank, backbone_dir):
    model = Vlm2VecModel.from_backbone(backbone_dir).train()
    filler = vision_filler(model)
    results = {"units": torch.tensor([_shard(model)])}
    # the default: per-chunk reduction for full fine-tuning, deferred when few parameters train and FSDP accumulates
    # in fp32 (here), not when it reduces in bf16 (accelerate's mixed_precision: bf16)
    results["defers/full"] = torch.tensor([defers_by_default(model)])
    frozen = _few_trainable(model)
    results["defers/few"] = torch.tensor([defers_by_default(model)])
    for param in frozen:
        param.requires_grad_(True)
    bf16 = Vlm2VecModel.from_backbone(backbone_dir)
    _few_trainable(bf16)
    _shard(bf16, mp_policy=MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.bfloat16))
    results["defers/few_bf16"] = torch.tensor([defers_by_default(bf16)])
    with pytest.warns(UserWarning, match="reduce dtype"):  # asked for all the same
        assert gradient_sync(bf16, defer_fsdp_reduction=True).defer
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

    # gradient accumulation, deferred: the first micro-batch inside the Trainer's no_sync (accelerate's FSDP2 no_sync
    # turns gradient sync off, then on again), the second syncing: one reduce-scatter per unit for both
    counts.update(reduce_scatter=0)
    for case, sync_gradients in ((0, False), (1, True)):
        model.set_requires_gradient_sync(sync_gradients)
        sync = gradient_sync(model, sync_gradients=sync_gradients, defer_fsdp_reduction=True)
        GradCache(model, loss_of, chunk_sizes=CHUNKS, sync=sync, vision_filler=filler).step(
            local_groups(model, case, rank), scale=0.5
        )
    results["accumulated/reduce_scatter"] = torch.tensor([counts["reduce_scatter"]])
    results.update({f"accumulated/grad/{n}": g for n, g in _full_gradients(model).items()})

    # the uncached step (no GradCache): rank 1's batch has no image, the filler row runs the vision tower there
    counts.update(forward=0, vision=0)
    groups = uncached_batch(model, slice(2 * rank, 2 * rank + 2))
    embeddings = embed_groups(model, groups, one_forward=True, vision_filler=filler)
    loss_of(embeddings).loss.backward()
    results.update({f"uncached/{k}": torch.tensor([counts[k]]) for k in ("forward", "vision")})
    results.update({f"uncached/grad/{n}": g for n, g in _full_gradients(model).items()})

    # one optimizer step on the sharded parameters
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE)
    GradCache(model, loss_of, chunk_sizes=CHUNKS, vision_filler=filler).step(local_groups(model, 0, rank))
    optimizer.step()
    results.update({f"stepped/{n}": p.full_tensor() for n, p in model.named_parameters()})
    return results


def test_fsdp2_grad_cache_equals_one_process(tiny_backbone_dir, tmp_path):
    backbone_dir = str(tiny_backbone_dir("qwen2_vl"))
    ranks = run_two_ranks(_worker, tmp_path, backbone_dir)
    model = Vlm2VecModel.from_backbone(backbone_dir).train()
    units = ranks[0]["units"].item()
    assert [r["defers/full"].item() for r in ranks] == [False, False]
    assert [r["defers/few"].item() for r in ranks] == [True, True]
    assert [r["defers/few_bf16"].item() for r in ranks] == [False, False]

    per_case = []
    for case in range(len(NEG_COUNTS)):
        loss, expected = reference_step(model, case)
        per_case.append(expected)
        chunks = chunks_per_step(case)
        for mode, reductions in (("per_chunk", units * chunks), ("deferred", units)):
            tag = f"{case}/{mode}"
            assert abs(sum(r[f"{tag}/loss"].item() for r in ranks) / WORLD - loss) <= 1e-5 * abs(loss), tag
            for r in ranks:
                assert relative_error(subset(r, f"{tag}/grad/"), expected) <= 1e-5, tag
                # phase 1 runs every chunk, phase 3 replays all but the last: 2 * chunks - 1 forwards
                assert r[f"{tag}/forward"].item() == 2 * chunks - 1, tag
                assert r[f"{tag}/vision"].item() == 2 * chunks - 1, tag
                assert r[f"{tag}/reduce_scatter"].item() == reductions, tag

    accumulated = {n: (per_case[0][n] + per_case[1][n]) / 2 for n in per_case[0]}
    for r in ranks:
        assert r["accumulated/reduce_scatter"].item() == units
        assert relative_error(subset(r, "accumulated/grad/"), accumulated) <= 1e-5

    reference = full_batch_loss(model, uncached_batch(model))
    reference.loss.backward()
    expected = gradients(model)
    for r in ranks:
        assert r["uncached/forward"].item() == r["uncached/vision"].item() == 1
        assert relative_error(subset(r, "uncached/grad/"), expected) <= 1e-5

    _, grads = reference_step(model, 0)
    with torch.no_grad():
        expected = {n: p - LEARNING_RATE * grads[n] for n, p in model.named_parameters()}
        moved = {n: expected[n] - p for n, p in model.named_parameters()}
        for r in ranks:
            stepped = subset(r, "stepped/")
            assert relative_error({n: stepped[n] - p for n, p in model.named_parameters()}, moved) <= 1e-5
