"""MMEB-V2 through the command line with a real tiny Vlm2Vec checkpoint: embeddings of the real encode path."""

import io
import json

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import load_file

import evaluate_mmeb
from modeling_vlm2vec import Vlm2VecConfig, Vlm2VecModel
from modeling_vlm2vec.demo.v2_fixtures import write_v2_suite
from modeling_vlm2vec.evaluation.mmeb_v2.runner import load_v2_sets
from modeling_vlm2vec.hub.card import render_model_card
from modeling_vlm2vec.loading import load_vlm2vec
from modeling_vlm2vec.processing_vlm2vec import load_backbone_processor


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_backbone_dir):
    root = tmp_path_factory.mktemp("eval-v2-model")
    raw = tiny_backbone_dir("qwen2_vl")
    checkpoint = root / "vlm2vec-tiny"
    Vlm2VecModel.from_backbone(raw).save_pretrained(checkpoint)
    load_backbone_processor(raw).save_pretrained(checkpoint)
    return {"root": root, "checkpoint": checkpoint, "suite": write_v2_suite(root / "suite")}


def _argv(setup, out, *tasks, checkpoint=None):
    suite = setup["suite"]
    return [
        "--benchmark", "mmeb-v2", "--model_name_or_path", str(checkpoint or setup["checkpoint"]), "--dataset_name",
        str(suite["data"]), "--image_dir", str(suite["media"]), "--output_dir", str(out), "--batch_size", "2",
        "--subset_name", *tasks,
    ]  # fmt: skip


def test_cached_embeddings_equal_encoding_items_one_by_one(setup):
    out = setup["root"] / "out"
    assert evaluate_mmeb.main(_argv(setup, out, "OK-VQA", "ViDoRe_arxivqa")) == 0
    summary = json.loads((out / "mmeb-v2" / "summary.json").read_text())
    assert list(summary["datasets"]) == ["OK-VQA", "ViDoRe_arxivqa"]
    # A model card made from this folder lists the scores but claims no results on MMEB-V1's Hub dataset.
    card = render_model_card(Vlm2VecConfig.from_pretrained(setup["checkpoint"]), card_context={"eval_dir": str(out)})
    assert "ViDoRe_arxivqa" in card.text and not card.data.eval_results
    model = load_vlm2vec(setup["checkpoint"])
    suite = setup["suite"]
    for v2set in load_v2_sets(["OK-VQA", "ViDoRe_arxivqa"], suite["data"], suite["media"]):
        (cache,) = out.glob(f"cache/*/v2/{v2set.name}.safetensors")
        cached = load_file(cache)
        for kind, items in (("queries", v2set.queries), ("candidates", v2set.candidates)):
            for row, (text, image, _) in enumerate(items):
                if isinstance(image, bytes):
                    image = Image.open(io.BytesIO(image))
                alone = model.encode([{"text": text, "image": image}], convert_to_numpy=True)[0]
                np.testing.assert_allclose(cached[kind][row], alone, atol=1e-5, err_msg=f"{v2set.name} {kind} {row}")


def _brute_force_metrics(queries: np.ndarray, candidates: np.ndarray, v2set) -> dict[str, float]:
    """hit@1 and MRR@10 by sorting every query's candidates (its own list, or all of them for a global task)."""
    hits, mrrs = [], []
    for i, relevant in enumerate(v2set.relevant):
        own = range(len(candidates)) if v2set.query_candidates is None else v2set.query_candidates[i]
        scores = {int(c): float(candidates[c] @ queries[i]) for c in own}
        assert len(set(scores.values())) == len(scores), "ties: the ranking would not be unique"
        ranked = sorted(scores, key=lambda c: -scores[c])
        rank = 1 + min(ranked.index(c) for c in relevant)
        hits.append(float(rank == 1))
        mrrs.append(1.0 / rank if rank <= 10 else 0.0)
    return {"hit@1": float(np.mean(hits)), "mrr@10": float(np.mean(mrrs))}


def test_video_tasks_run_as_frames_and_rank_as_encode_does(setup):
    _check_video_tasks(setup, setup["checkpoint"], setup["root"] / "video", "frames")


def test_video_tasks_run_through_the_qwen_video_input_and_rank_as_encode_does(setup):
    checkpoint = setup["root"] / "vlm2vec-tiny-video"
    model = load_vlm2vec(setup["checkpoint"], overrides={"video_input": "video"})
    model.save_pretrained(checkpoint)
    model.processor.save_pretrained(checkpoint)
    _check_video_tasks(setup, checkpoint, setup["root"] / "video-input", "video")


def _check_video_tasks(setup, checkpoint, out, mode: str) -> None:
    tasks = ("MSR-VTT", "Video-MME")  # a global retrieval task (text -> video) and a local QA task (video -> text)
    assert evaluate_mmeb.main(_argv(setup, out, *tasks, checkpoint=checkpoint)) == 0
    model = load_vlm2vec(checkpoint)
    assert model.video_input == mode
    suite = setup["suite"]
    for v2set in load_v2_sets(list(tasks), suite["data"], suite["media"]):
        record = json.loads((out / "mmeb-v2" / f"{v2set.name}_score.json").read_text())
        assert record["video_input"] == mode

        def alone(items):
            inputs = [{"text": t, "video": list(f)} if f else {"text": t, "image": i} for t, i, f in items]
            return np.stack([model.encode([x], convert_to_numpy=True)[0] for x in inputs])

        queries, candidates = alone(v2set.queries), alone(v2set.candidates)
        assert any(f for _, _, f in v2set.queries + v2set.candidates)
        (cache,) = out.glob(f"cache/*/v2/{v2set.name}.safetensors")
        np.testing.assert_allclose(load_file(cache)["queries"], queries, atol=1e-5, err_msg=v2set.name)
        np.testing.assert_allclose(load_file(cache)["candidates"], candidates, atol=1e-5, err_msg=v2set.name)
        expected = _brute_force_metrics(queries, candidates, v2set)
        assert record["hit@1"] == pytest.approx(expected["hit@1"]) and record["mrr@10"] == pytest.approx(
            expected["mrr@10"]
        ), v2set.name


@pytest.mark.parametrize("option", [["--truncate_dim", "8"], ["--cache_dir", "shared-cache"]])
def test_mmeb_v1_only_options_are_refused_before_any_work(setup, capsys, option):
    out = setup["root"] / "v1-only"
    assert evaluate_mmeb.main(_argv(setup, out, "OK-VQA") + option) == 2
    assert "error: --truncate_dim and --cache_dir apply to --benchmark mmeb-v1 only" in capsys.readouterr().err
    assert not out.exists()
