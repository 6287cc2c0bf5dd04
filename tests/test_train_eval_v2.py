"""`train.py` with MMEB-V2 as its evaluation (`eval_benchmark`): scores of the export, its card, checks before work."""

import json

import pytest
from train_recipes import write_recipe

import train
from modeling_vlm2vec import Vlm2VecModel
from modeling_vlm2vec.common.fingerprint import model_fingerprint
from modeling_vlm2vec.demo.synthetic import write_synthetic_mmeb
from modeling_vlm2vec.demo.v2_fixtures import write_v2_suite
from modeling_vlm2vec.loading import load_vlm2vec


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return write_synthetic_mmeb(tmp_path_factory.mktemp("syn") / "data", n_train_per_task=24, n_eval_per_task=4)


@pytest.fixture(scope="module")
def backbone(tiny_backbone_dir):
    return tiny_backbone_dir("qwen2_vl")


def _v2_recipe(tmp_path, backbone, synthetic, tasks: list[str]):
    """A one-step recipe evaluated on the MMEB-V2 fixture tasks ``tasks``."""
    suite = write_v2_suite(tmp_path / "v2")
    return write_recipe(
        tmp_path,
        backbone,
        synthetic["data_config"],
        max_steps=1,
        do_eval=True,
        eval_benchmark="mmeb-v2",
        eval_dataset_name=str(suite["data"]),
        eval_image_dir=str(suite["media"]),
        eval_subset_name=tasks,
        eval_batch_size=4,
    )


def test_eval_benchmark_mmeb_v2_scores_the_export_into_eval_mmeb_v2_and_its_card(tmp_path, backbone, synthetic, capsys):
    tasks = ["OK-VQA", "ViDoRe_arxivqa"]
    recipe = _v2_recipe(tmp_path, backbone, synthetic, tasks)
    assert train.main([str(recipe)]) == 0
    out = tmp_path / "out"
    final = json.loads((out / "eval" / "mmeb-v2" / "summary.json").read_text())
    baseline = json.loads((out / "eval" / "baseline" / "mmeb-v2" / "summary.json").read_text())
    assert list(final["datasets"]) == list(baseline["datasets"]) == tasks
    assert not (out / "eval" / "summary.json").exists()  # no MMEB-V1 run
    # The scores are those of the exported folder as users load it, not of the model in memory.
    assert final["model_fingerprint"] == model_fingerprint(load_vlm2vec(out))
    assert baseline["model_fingerprint"] != final["model_fingerprint"]
    card = (out / "README.md").read_text()
    for name in tasks:
        record = json.loads((out / "eval" / "mmeb-v2" / f"{name}_score.json").read_text())
        row = f"| {name} | {record['modality']} | {record['meta_task']} | {record['metric']} | "
        assert row + f"{100 * record['score']:.1f} |" in card, name
    mean = sum(final["datasets"][name]["score"] for name in tasks) / 2
    assert f"| All | 2/78 | {100 * mean:.1f} |" in card
    table = capsys.readouterr().out
    assert "| OK-VQA |" in table and "| All |" in table  # the before/after table


def test_eval_benchmark_is_validated_when_the_recipe_loads(tmp_path, backbone, synthetic, capsys):
    recipe = write_recipe(tmp_path, backbone, synthetic["data_config"], do_eval=True, eval_benchmark="mmeb-v3")
    assert train.main([str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "error: " in err and "eval_benchmark must be one of mmeb-v1, mmeb-v2, got 'mmeb-v3'" in err
    assert not (tmp_path / "out").exists()


def test_video_tasks_for_a_model_without_video_input_stop_before_anything_moves(
    tmp_path, backbone, synthetic, capsys, monkeypatch
):
    monkeypatch.setattr(Vlm2VecModel, "video_input", property(lambda self: None))  # a backbone without frames input
    earlier = tmp_path / "out" / "eval" / "summary.json"
    earlier.parent.mkdir(parents=True)
    earlier.write_text('{"model": "an earlier model"}')
    recipe = _v2_recipe(tmp_path, backbone, synthetic, ["MSR-VTT"])
    assert train.main([str(recipe)]) == 2
    assert "error: " in capsys.readouterr().err
    assert earlier.read_text() == '{"model": "an earlier model"}'  # not set aside: nothing was started
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["eval"]
