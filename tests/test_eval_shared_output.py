"""MMEB-V1 and MMEB-V2 runs into one output folder: each keeps its own results (ImageNet-1K is a task of both, with
different known scores) and each resumes from its own score files."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_eval_runner import NAMES, _known_suite  # noqa: E402

from modeling_vlm2vec.demo.eval_fixtures import KeyedEncoder  # noqa: E402
from modeling_vlm2vec.demo.v2_fixtures import write_v2_suite  # noqa: E402
from modeling_vlm2vec.evaluation import evaluate_mmeb  # noqa: E402
from modeling_vlm2vec.evaluation.mmeb_v2.runner import load_v2_sets, run_v2_evaluation  # noqa: E402

V2_TASKS = ["ImageNet-1K", "OK-VQA", "ViDoRe_arxivqa"]
V1_FILES = [f"{name}_score.json" for name in NAMES] + ["summary.json", "results.md", "results.png"]


def _v1(suite, out, encoder):
    return evaluate_mmeb(
        encoder,
        dataset_name=str(suite["data"]),
        subsets=NAMES,
        image_dir=suite["images"],
        output_dir=out,
        batch_size=2,
        verbose=False,
    )


def _v2(v2suite, out, encoder):
    sets = load_v2_sets(V2_TASKS, v2suite["data"], v2suite["media"])
    return run_v2_evaluation(encoder, sets, output_dir=out, batch_size=2, verbose=False)


def test_v1_and_v2_share_an_output_folder(tmp_path):
    v1suite, v2suite, out = _known_suite(tmp_path / "v1"), write_v2_suite(tmp_path / "v2"), tmp_path / "out"
    assert v1suite["hit@1"]["ImageNet-1K"] != v2suite["expected"]["ImageNet-1K"]  # a mix-up would show
    v1_summary = _v1(v1suite, out, KeyedEncoder())
    v1_bytes = {name: (out / name).read_bytes() for name in V1_FILES}
    v2_summary = _v2(v2suite, out, KeyedEncoder())
    # V2 left every V1 file as it was and wrote its own beside them.
    assert {name: (out / name).read_bytes() for name in V1_FILES} == v1_bytes
    for name in V2_TASKS:
        record = json.loads((out / "mmeb-v2" / f"{name}_score.json").read_text())
        assert (record["benchmark"], record["score"]) == ("mmeb-v2", pytest.approx(v2suite["expected"][name]))
    assert json.loads((out / "mmeb-v2" / "summary.json").read_text()) == v2_summary
    assert list(v2_summary["datasets"]) == V2_TASKS
    assert json.loads((out / "ImageNet-1K_score.json").read_text())["hit@1"] == v1suite["hit@1"]["ImageNet-1K"]
    # Each benchmark resumes from its own files: nothing is encoded again and the summaries are unchanged.
    again_v1, again_v2 = KeyedEncoder(), KeyedEncoder()
    assert _v1(v1suite, out, again_v1) == v1_summary
    assert _v2(v2suite, out, again_v2) == v2_summary
    assert again_v1.calls == again_v2.calls == []
    assert {name: (out / name).read_bytes() for name in V1_FILES} == v1_bytes
    # A V2 score file removed is encoded again (from the cache: no encode call) and V1's stay untouched.
    (out / "mmeb-v2" / "OK-VQA_score.json").unlink()
    third = KeyedEncoder()
    assert _v2(v2suite, out, third) == v2_summary and third.calls == []
    assert (out / "mmeb-v2" / "OK-VQA_score.json").is_file()
