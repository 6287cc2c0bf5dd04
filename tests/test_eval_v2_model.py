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
from modeling_vlm2vec.evaluation.v2_runner import load_v2_sets
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


def _argv(setup, out, *tasks):
    suite = setup["suite"]
    return [
        "--benchmark", "mmeb-v2", "--model_name_or_path", str(setup["checkpoint"]), "--dataset_name",
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


def test_video_tasks_stop_before_any_work_for_a_model_without_video_input(setup, capsys):
    out = setup["root"] / "video"
    assert evaluate_mmeb.main(_argv(setup, out, "OK-VQA", "MSR-VTT")) == 2
    assert "video tasks (MSR-VTT) need a model that takes videos" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("option", [["--truncate_dim", "8"], ["--cache_dir", "shared-cache"]])
def test_mmeb_v1_only_options_are_refused_before_any_work(setup, capsys, option):
    out = setup["root"] / "v1-only"
    assert evaluate_mmeb.main(_argv(setup, out, "OK-VQA") + option) == 2
    assert "error: --truncate_dim and --cache_dir apply to --benchmark mmeb-v1 only" in capsys.readouterr().err
    assert not out.exists()
