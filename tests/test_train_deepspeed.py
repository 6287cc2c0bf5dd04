"""GradCache under DeepSpeed ZeRO-1/2/3 on two gloo CPU processes (``DS_ACCELERATOR=cpu``, fp32, a torch optimizer).

accelerate never selects DeepSpeed on CPU, so ``deepspeed.initialize`` is driven here directly and the engine goes to
GradCache as the Trainer hands it over. The ranks differ in chunk count and in which chunks hold images (ZeRO-3
gathers parameters per module: without dummy chunks and the vision filler this hangs; a gloo timeout fails the test).
Checked for each stage: two optimizer steps (one with coalesced gradient reduction, one reducing per chunk) move the
parameters as two SGD steps of one process on the whole batch; reductions per step: coalesced = one plain
backward + step, per chunk = one per chunk's backward (ZeRO-2/3) or one at the boundary (ZeRO-1). For ZeRO-2/3 with
two accumulation micro-batches: no step after the first, one step on the mean gradient after the second.
"""

import os

import torch
import torch.distributed as dist
from sharded_steps import (
    CHUNKS,
    LEARNING_RATE,
    NEG_COUNTS,
    chunks_per_step,
    local_groups,
    reference_step,
    run_two_ranks,
    subset,
)
from sharded_steps import vision_filler as make_filler
from train_batches import loss_of, relative_error, single_thread  # noqa: F401  (autouse fixture)

from modeling_vlm2vec import Vlm2VecModel
from modeling_vlm2vec.training.batching import concat_groups, model_inputs
from modeling_vlm2vec.training.grad_cache import GradCache
from modeling_vlm2vec.training.gradient_sync import DeepSpeedSync, gradient_sync

STAGES = (1, 2, 3)
ACCUMULATION_STAGES = (2, 3)  # the stages that reduce in every backward, boundary or not
REDUCTIONS = ("all_reduce", "reduce", "reduce_scatter", "reduce_scatter_tensor", "all_reduce_coalesced")


def _count_reductions(counter):
    """Count torch.distributed reduction calls (DeepSpeed's comm backend calls them by module attribute)."""
    for name in REDUCTIONS:
        original = getattr(dist, name)

        def counted(*args, _original=original, **kwargs):
            counter[0] += 1
            return _original(*args, **kwargs)

        setattr(dist, name, counted)


def _parameters(engine, stage):
    """Full copies of the module's parameters (gathered under ZeRO-3)."""
    import deepspeed

    params = list(engine.module.parameters())
    with deepspeed.zero.GatheredParameters(params) if stage == 3 else torch.no_grad():
        return {n: p.detach().clone() for n, p in engine.module.named_parameters()}


def _engine(backbone_dir, stage, accumulation=1):
    """(engine, model, filler): a fresh model under ZeRO ``stage`` in fp32 with torch's SGD."""
    import deepspeed

    model = Vlm2VecModel.from_backbone(backbone_dir).train()
    config = {
        "train_micro_batch_size_per_gpu": 3,
        "gradient_accumulation_steps": accumulation,
        "gradient_clipping": 0.0,
        "zero_optimization": {"stage": stage},
        "zero_allow_untested_optimizer": True,
    }
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    return engine, model, make_filler(model)


def _worker(rank, backbone_dir):
    os.environ.update(DS_ACCELERATOR="cpu", RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2")
    reductions = [0]
    _count_reductions(reductions)
    import deepspeed

    # the CPU accelerator JIT-compiles a shared-memory comm op when its comm backend starts: mark no op as built so
    # gloo carries every collective and nothing compiles (the optimizer is torch's)
    deepspeed.ops.__dict__["__compatible_ops__"] = {}
    results = {}
    for stage in STAGES:
        engine, model, filler = _engine(backbone_dir, stage)
        results.update({f"{stage}/params0/{n}": p for n, p in _parameters(engine, stage).items()})
        for case, coalesce in enumerate((True, False)):
            sync = gradient_sync(engine)
            assert isinstance(sync, DeepSpeedSync) and sync.lockstep and sync.coalesce  # GA 1, ZeRO optimizer
            sync.coalesce = coalesce
            cache = GradCache(engine, loss_of, chunk_sizes=CHUNKS, sync=sync, vision_filler=filler)
            reductions[0] = 0
            out = cache.step(local_groups(model, case, rank))  # the engine steps once, inside
            results[f"{stage}/{case}/reductions"] = torch.tensor([reductions[0]])
            results[f"{stage}/{case}/loss"] = out.loss.reshape(1)
            results.update({f"{stage}/params{case + 1}/{n}": p for n, p in _parameters(engine, stage).items()})
        # a plain step on the same rows: one forward, one backward, one step
        groups = local_groups(model, 0, rank)
        batch = concat_groups(list(groups.values()), model.config.padding_side)
        reductions[0] = 0
        embeddings = engine(**model_inputs(batch)).embeddings.split([len(g["attention_mask"]) for g in groups.values()])
        loss = loss_of(dict(zip(groups, embeddings))).loss
        engine.backward(loss)
        results[f"{stage}/plain/backward_reductions"] = torch.tensor([reductions[0]])
        reductions[0] = 0
        engine.step()
        results[f"{stage}/plain/step_reductions"] = torch.tensor([reductions[0]])
        engine.destroy()

    for stage in ACCUMULATION_STAGES:  # two micro-batches of one optimizer step (no coalescing then)
        engine, model, filler = _engine(backbone_dir, stage, accumulation=2)
        for case in range(len(NEG_COUNTS)):
            sync = gradient_sync(engine, sync_gradients=case == 1)
            assert not sync.coalesce
            cache = GradCache(engine, loss_of, chunk_sizes=CHUNKS, sync=sync, vision_filler=filler)
            cache.step(local_groups(model, case, rank), scale=0.5)  # the trainer's 1 / accumulation steps
            results.update({f"{stage}/accumulated{case}/{n}": p for n, p in _parameters(engine, stage).items()})
        engine.destroy()
    return results


def test_deepspeed_grad_cache_steps_equal_one_process(tiny_backbone_dir, tmp_path):
    backbone_dir = str(tiny_backbone_dir("qwen2_vl"))
    ranks = run_two_ranks(_worker, tmp_path, backbone_dir)

    model = Vlm2VecModel.from_backbone(backbone_dir).train()
    with torch.no_grad():
        start = {n: p.clone() for n, p in model.named_parameters()}
    # one SGD step on the mean gradient of both cases (gradient accumulation) from the start
    at_start = [reference_step(model, case)[1] for case in range(len(NEG_COUNTS))]
    accumulated = {n: -LEARNING_RATE * (at_start[0][n] + at_start[1][n]) / 2 for n in start}
    moves, losses = [], []
    for case in range(len(NEG_COUNTS)):  # two SGD steps of one process on the whole batch
        loss, grads = reference_step(model, case)
        losses.append(loss)
        with torch.no_grad():
            moves.append({n: -LEARNING_RATE * grads[n] for n, p in model.named_parameters()})
            for n, p in model.named_parameters():
                p -= LEARNING_RATE * grads[n]
    for stage in STAGES:
        for r in ranks:
            assert relative_error(subset(r, f"{stage}/params0/"), start) == 0, stage
        for case in range(len(NEG_COUNTS)):
            tag = f"stage {stage}, case {case}"
            rank_loss = sum(r[f"{stage}/{case}/loss"].item() for r in ranks) / len(ranks)
            assert abs(rank_loss - losses[case]) <= 1e-5 * abs(losses[case]), tag
            for r in ranks:
                before, after = subset(r, f"{stage}/params{case}/"), subset(r, f"{stage}/params{case + 1}/")
                assert relative_error({n: after[n] - before[n] for n in after}, moves[case]) <= 1e-5, tag

        for r in ranks:
            backward, step = r[f"{stage}/plain/backward_reductions"].item(), r[f"{stage}/plain/step_reductions"].item()
            # + 1: the all-reduce agreeing on the chunk count
            assert r[f"{stage}/0/reductions"].item() == 1 + backward + step, stage  # coalesced: one reduction pass
            per_chunk_backwards = 1 if stage == 1 else chunks_per_step(1)  # ZeRO-1 reduces at the boundary only
            assert r[f"{stage}/1/reductions"].item() == 1 + per_chunk_backwards * backward + step, stage

    for stage in ACCUMULATION_STAGES:
        for r in ranks:
            assert relative_error(subset(r, f"{stage}/accumulated0/"), start) == 0, stage  # no step yet
            moved = subset(r, f"{stage}/accumulated1/")
            assert relative_error({n: moved[n] - start[n] for n in start}, accumulated) <= 1e-5, stage
