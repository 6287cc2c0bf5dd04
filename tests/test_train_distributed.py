"""Two gloo processes with B/2 rows each == one process with B rows: same loss and gradients, one all-reduce per
step; also with every loss option on (Matryoshka, hardness weighting, false-negative masking)."""

import os
import warnings
from functools import partial

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file
from train_batches import (
    contrastive_batch,
    full_batch_loss,
    gradients,
    groups_of,
    loss_of,
    margin_masking_half,
    relative_error,
    single_thread,  # noqa: F401  (autouse fixture)
)

from modeling_vlm2vec import Vlm2VecModel
from modeling_vlm2vec.training.grad_cache import GradCache

WORLD = 2
# global batch of 6 rows; rank 0 gets rows 0-2, rank 1 rows 3-5
NEG_COUNTS = [
    [2, 0, 1, 0, 1, 0],  # rank 0 holds 3 negatives, rank 1 one (padded and masked in the loss)
    [1, 1, 0, 0, 0, 0],  # rank 1 has no negative group at all
]
CHUNKS = {"query": 2, "positive": 2, "negative": 2}


def _local_batch(model, case, rank):
    half = len(NEG_COUNTS[case]) // WORLD
    return contrastive_batch(model, NEG_COUNTS[case], seed=case, rows=slice(rank * half, (rank + 1) * half))


def _loss_options(model, case):
    """Each loss option alone, then all together; the margin masks about half of the case's candidates."""
    margin = margin_masking_half(model, contrastive_batch(model, NEG_COUNTS[case], seed=case))
    return {
        "matryoshka": {"matryoshka_dims": [8, 32, 64], "matryoshka_weights": [1.0, 2.0, 1.0]},
        "hardness": {"hardness_alpha": 9.0},
        "margin": {"false_negative_margin": margin},
        "all": {"matryoshka_dims": [8, 32, 64], "hardness_alpha": 9.0, "false_negative_margin": margin},
    }


def _worker(rank, init_file, backbone_dir, out_dir, case_options):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
        from torch.nn.parallel import DistributedDataParallel

        model = Vlm2VecModel.from_backbone(backbone_dir).train()
        # no buffer broadcast per forward: ranks may run different numbers of chunk forwards (torch 2.13 calls the
        # argument deprecated in favour of forward_sync_buffers, which has the same effect after init)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            ddp = DistributedDataParallel(model, find_unused_parameters=True, broadcast_buffers=False)
        allreduces = [0]

        def counting_hook(state, bucket):
            allreduces[0] += 1
            return allreduce_hook(None, bucket)

        ddp.register_comm_hook(None, counting_hook)
        cache = GradCache(ddp, loss_of, chunk_sizes=CHUNKS)
        results = {}
        for case in range(len(NEG_COUNTS)):
            allreduces[0] = 0
            out = cache.step(groups_of(_local_batch(model, case, rank)))
            results[f"{case}/loss"] = out.loss.reshape(1)
            results[f"{case}/allreduces"] = torch.tensor([allreduces[0]])
            results.update({f"{case}/grad/{n}": g for n, g in gradients(model).items()})
            for name, options in case_options[case].items():
                with_options = GradCache(ddp, partial(loss_of, **options), chunk_sizes=CHUNKS)
                out = with_options.step(groups_of(_local_batch(model, case, rank)))
                results[f"{case}+{name}/loss"] = out.loss.reshape(1)
                results.update({f"{case}+{name}/grad/{n}": g for n, g in gradients(model).items()})
        # gradient accumulation: the first micro-batch inside an outer no_sync stays local, the second syncs both
        allreduces[0] = 0
        with ddp.no_sync():
            cache.step(groups_of(_local_batch(model, 0, rank)))
        results["accumulated/allreduces_in_no_sync"] = torch.tensor([allreduces[0]])
        cache.step(groups_of(_local_batch(model, 1, rank)))
        results["accumulated/allreduces"] = torch.tensor([allreduces[0]])
        results.update({f"accumulated/grad/{n}": g for n, g in gradients(model).items()})
        save_file({k: v.contiguous() for k, v in results.items()}, os.path.join(out_dir, f"rank{rank}.safetensors"))
    finally:
        dist.destroy_process_group()


def _subset(results, prefix):
    return {k[len(prefix) :]: v for k, v in results.items() if k.startswith(prefix)}


@pytest.mark.parametrize("model_type", ["qwen2_vl", "phi3_v"])
def test_two_processes_equal_one_process(tiny_backbone_dir, tmp_path, model_type):
    backbone_dir = str(tiny_backbone_dir(model_type))
    model = Vlm2VecModel.from_backbone(backbone_dir).train()
    # the loss options do not depend on the backbone: checked on one
    with_options = model_type == "qwen2_vl"
    case_options = [_loss_options(model, case) if with_options else {} for case in range(len(NEG_COUNTS))]
    mp.spawn(_worker, args=(str(tmp_path / "init"), backbone_dir, str(tmp_path), case_options), nprocs=WORLD, join=True)
    ranks = [load_file(tmp_path / f"rank{r}.safetensors") for r in range(WORLD)]

    for case, named_options in enumerate(case_options):
        for name, options in named_options.items():
            reference = full_batch_loss(model, contrastive_batch(model, NEG_COUNTS[case], seed=case), **options)
            reference.loss.backward()
            grads = gradients(model)
            rank_losses = [r[f"{case}+{name}/loss"].item() for r in ranks]
            assert abs(sum(rank_losses) / WORLD - reference.loss.item()) <= 1e-5 * abs(reference.loss.item()), name
            for r in ranks:
                assert relative_error(_subset(r, f"{case}+{name}/grad/"), grads) <= 1e-5, name

    expected = []
    for case in range(len(NEG_COUNTS)):
        reference = full_batch_loss(model, contrastive_batch(model, NEG_COUNTS[case], seed=case))
        reference.loss.backward()
        expected.append(gradients(model))
        # equal rows per rank: the global loss is the mean of the ranks' local losses
        rank_losses = [r[f"{case}/loss"].item() for r in ranks]
        assert abs(sum(rank_losses) / WORLD - reference.loss.item()) <= 1e-5 * abs(reference.loss.item())
        for r in ranks:
            assert relative_error(_subset(r, f"{case}/grad/"), expected[case]) <= 1e-5
            assert r[f"{case}/allreduces"].item() == 1  # every replay but the last ran in no_sync

    accumulated = {n: expected[0][n] + expected[1][n] for n in expected[0]}
    for r in ranks:
        assert r["accumulated/allreduces_in_no_sync"].item() == 0
        assert r["accumulated/allreduces"].item() == 1
        assert relative_error(_subset(r, "accumulated/grad/"), accumulated) <= 1e-5
