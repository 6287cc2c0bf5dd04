"""Phi-3-V through `train.py` and `evaluate_mmeb.py`: the official recipe (DoRA on the language model and the CLIP
attention) on a tiny Phi-3-V, the demo with `tiny_backbone: phi3_v`, and MMEB evaluation of the result."""

import json
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import yaml

import evaluate_mmeb
import train
from modeling_vlm2vec import Vlm2VecModel
from modeling_vlm2vec.demo.synthetic import write_synthetic_mmeb

REPO = Path(__file__).resolve().parents[1]
CLIP_ATTENTION = re.compile(r"vision_model\.encoder\.layers\.\d+\.self_attn\.(q|k|v|out)_proj\.weight$")
LM_PROJECTION = re.compile(r"^backbone\.layers\.\d+\.(self_attn\.(qkv|o)_proj|mlp\.(gate_up|down)_proj)\.weight$")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return write_synthetic_mmeb(tmp_path_factory.mktemp("syn") / "data", n_train_per_task=8, n_eval_per_task=4)


def _write(tmp_path: Path, recipe: dict) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


SMALL = {  # the recipe's hardware settings for one CPU process
    "per_device_train_batch_size": 4,
    "gc_q_chunk_size": 2,
    "gc_p_chunk_size": 2,
    "warmup_steps": 0,
    "save_steps": 100,
    "logging_steps": 1,
    "bf16": False,
    "use_cpu": True,
    "model_dtype": "float32",
    "dataloader_num_workers": 0,
    "report_to": [],
    "do_eval": False,
    "disable_tqdm": True,
}


def test_the_official_recipe_adapts_the_language_model_and_the_clip_attention(tmp_path, tiny_backbone_dir, synthetic):
    recipe = yaml.safe_load((REPO / "configs" / "phi35v_lora.yaml").read_text())
    assert "trust_remote_code" not in recipe and recipe["lora_use_dora"] and recipe["max_length"] == 256
    backbone = tiny_backbone_dir("phi3_v")
    recipe.update(
        SMALL,
        output_dir=str(tmp_path / "out"),
        model_name_or_path=str(backbone),
        dataset_config=str(synthetic["data_config"]),
        learning_rate=1e-2,  # large enough that every adapted weight visibly moves in two steps
        max_steps=2,
    )
    assert train.main([str(_write(tmp_path, recipe))]) == 0
    trained = Vlm2VecModel.from_pretrained(tmp_path / "out").state_dict()
    base = Vlm2VecModel.from_backbone(backbone).state_dict()
    changed = {name for name, tensor in base.items() if not torch.equal(trained[name], tensor)}
    clip_layers = {n for n in base if CLIP_ATTENTION.search(n)}
    lm_projections = {n for n in base if LM_PROJECTION.search(n)}
    assert clip_layers and lm_projections
    # the feature layer is the penultimate one: the last CLIP layer's adapters get no gradient (as officially)
    last = max(int(n.split("encoder.layers.")[1].split(".")[0]) for n in clip_layers)
    feeding = {n for n in clip_layers if f"encoder.layers.{last}." not in n}
    assert feeding <= changed and lm_projections <= changed
    assert changed <= clip_layers | lm_projections  # nothing else: only the adapted modules merged into new weights
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    settings = saved.get("vlm2vec", saved)
    assert settings["max_length"] == 256 and settings["truncation_policy"] == "text_only_rows"


def test_the_demo_learns_with_a_tiny_phi3v_and_evaluate_mmeb_scores_it(tmp_path):
    recipe = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    recipe.update(
        SMALL,
        output_dir=str(tmp_path / "out"),
        model_name_or_path=str(tmp_path / "backbone"),  # built here by the demo hook
        tiny_backbone="phi3_v",
        synthetic_dir=str(tmp_path / "data"),  # written here by the demo hook
        synthetic_train_per_task=16,
        synthetic_eval_per_task=4,
        per_device_train_batch_size=8,
        gc_q_chunk_size=4,
        gc_p_chunk_size=4,
        learning_rate=2e-3,
        max_steps=12,
    )
    assert train.main([str(_write(tmp_path, recipe))]) == 0
    assert json.loads((tmp_path / "backbone" / "config.json").read_text())["model_type"] == "phi3_v"
    state = json.loads(next((tmp_path / "out").rglob("trainer_state.json")).read_text())
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert len(losses) == 12
    assert sum(losses[-3:]) < 0.7 * sum(losses[:3]), losses

    out = tmp_path / "eval"
    args = ["--model_name_or_path", str(tmp_path / "out"), "--dataset_name", str(tmp_path / "data" / "eval")]
    args += ["--image_dir", str(tmp_path / "data"), "--output_dir", str(out), "--subset_name", "SynCLS"]
    assert evaluate_mmeb.main(args) == 0
    assert set(json.loads((out / "summary.json").read_text())["datasets"]) == {"SynCLS"}
    # the score equals a brute-force ranking with encode(): each query against its own candidates, positive first
    model = Vlm2VecModel.from_pretrained(tmp_path / "out")
    rows = pq.read_table(tmp_path / "data" / "eval" / "SynCLS" / "test.parquet").to_pylist()

    def item(text, image):
        return {"text": text, "image": str(tmp_path / "data" / image) if image else None}

    hits = []
    for row in rows:
        query = model.encode([item(row["qry_text"], row["qry_img_path"])])
        candidates = model.encode([item(t, i) for t, i in zip(row["tgt_text"], row["tgt_img_path"])])
        hits.append(float((candidates @ query[0]).argmax() == 0))
    assert json.loads((out / "SynCLS_score.json").read_text())["hit@1"] == pytest.approx(sum(hits) / len(hits))
