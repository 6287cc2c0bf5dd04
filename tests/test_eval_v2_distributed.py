"""MMEB-V2 with two processes (gloo on CPU) gives exactly the single-process scores, each encoding only its shard."""

import json
from pathlib import Path

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from modeling_vlm2vec.demo.eval_fixtures import KeyedEncoder
from modeling_vlm2vec.demo.v2_fixtures import write_v2_suite
from modeling_vlm2vec.evaluation.mmeb_v2.runner import load_v2_sets, run_v2_evaluation

# One local image task, one global visdoc task with embedded pages, one global and one local video task.
TASKS = ["VisDial", "ViDoRe_arxivqa", "MSR-VTT", "QVHighlight"]


def _run(suite: dict, out: str) -> tuple[dict, list[int]]:
    encoder = KeyedEncoder(noise=0.5)
    sets = load_v2_sets(TASKS, suite["data"], suite["media"])
    summary = run_v2_evaluation(encoder, sets, output_dir=out, batch_size=2, verbose=False)
    return summary, [len(call) for call in encoder.calls]


def _worker(rank: int, world_size: int, root: str, suite: dict, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{root}/init", rank=rank, world_size=world_size)
    try:
        summary, encoded = _run(suite, out)
        Path(root, f"rank{rank}.json").write_text(json.dumps({"summary": summary, "encoded": encoded}))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available")
def test_two_processes_match_one(tmp_path):
    suite = write_v2_suite(tmp_path / "suite")
    single, single_encoded = _run(suite, str(tmp_path / "single"))
    # The noisy encoder gives every item its own embedding, so shards gathered out of order would change scores.
    mp.spawn(_worker, args=(2, str(tmp_path), suite, str(tmp_path / "multi")), nprocs=2, join=True)
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert reports[0]["summary"] == reports[1]["summary"] == single
    for i, total in enumerate(single_encoded):  # one encode call per task per process: shards split the items
        shards = [reports[r]["encoded"][i] for r in range(2)]
        assert sum(shards) == total and abs(shards[0] - shards[1]) <= 1
    for name in TASKS:
        multi = (tmp_path / "multi" / "mmeb-v2" / f"{name}_score.json").read_text()
        assert multi == (tmp_path / "single" / "mmeb-v2" / f"{name}_score.json").read_text()
