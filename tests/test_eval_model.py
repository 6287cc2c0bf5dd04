"""Evaluation with a real tiny Vlm2Vec checkpoint: forward counts, cache contents, LoRA merge, multi-process CLI."""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from launch import TWO_CPU_PROCESSES
from safetensors.numpy import load_file

from modeling_vlm2vec import Vlm2VecModel
from modeling_vlm2vec.common.errors import DataError
from modeling_vlm2vec.common.fingerprint import model_fingerprint
from modeling_vlm2vec.demo.eval_fixtures import write_eval_dataset
from modeling_vlm2vec.demo.synthetic import write_synthetic_mmeb
from modeling_vlm2vec.evaluation import evaluate_mmeb, load_eval_set
from modeling_vlm2vec.loading import load_vlm2vec
from modeling_vlm2vec.processing_vlm2vec import load_backbone_processor

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_backbone_dir):
    root = tmp_path_factory.mktemp("eval-model")
    raw = tiny_backbone_dir("qwen2_vl")
    checkpoint = root / "vlm2vec-tiny"
    Vlm2VecModel.from_backbone(raw).save_pretrained(checkpoint)
    load_backbone_processor(raw).save_pretrained(checkpoint)
    data = write_synthetic_mmeb(root / "syn", n_train_per_task=3, n_eval_per_task=4, n_candidates=3)
    return {"root": root, "raw": raw, "checkpoint": checkpoint, "data": data}


def _evaluate(setup, model, out, subsets=("synthetic",)):
    return evaluate_mmeb(
        model,
        dataset_name=str(setup["data"]["eval_root"]),
        subsets=subsets,
        image_dir=setup["data"]["root"],
        output_dir=out,
        batch_size=3,
        verbose=False,
    )


def test_each_unique_item_goes_through_forward_once(setup):
    model = load_vlm2vec(setup["checkpoint"])
    rows_seen = []
    model.register_forward_pre_hook(
        lambda module, args, kwargs: rows_seen.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    out = setup["root"] / "single"
    summary = _evaluate(setup, model, out)
    records = [json.loads((out / f"{name}_score.json").read_text()) for name in summary["datasets"]]
    unique = sum(r["num_unique_queries"] + r["num_unique_candidates"] for r in records)
    references = sum(r["num_queries"] * (1 + r["max_candidates_per_query"]) for r in records)
    assert sum(rows_seen) == unique < references

    # the cache holds each dataset's items in order: equal to encoding them one by one
    eval_set = load_eval_set(str(setup["data"]["eval_root"]), "SynGround", str(setup["data"]["root"]))
    (cache_file,) = (out / "cache").glob("*/SynGround.safetensors")
    cached = load_file(str(cache_file))
    for key, items in (("queries", eval_set.queries), ("candidates", eval_set.candidates)):
        direct = model.encode([{"text": t, "image": i} for t, i in items], batch_size=1)
        np.testing.assert_allclose(cached[key], direct.numpy(), atol=1e-5)


def test_lora_adapter_on_raw_backbone_is_merged(setup):
    from peft import LoraConfig, get_peft_model

    base = Vlm2VecModel.from_backbone(setup["raw"])
    torch.manual_seed(0)
    peft_model = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    adapter = setup["root"] / "adapter"
    peft_model.save_pretrained(adapter)
    expected_model = peft_model.merge_and_unload()
    items = [
        "a red circle",
        {
            "text": "<|image_1|> Represent the given image.",
            "image": str(setup["data"]["root"] / "images" / "eval" / "SynCLS" / "00000.png"),
        },
    ]
    processor = load_backbone_processor(setup["raw"])
    expected = expected_model.encode(items, processor=processor)

    merged = load_vlm2vec(setup["raw"], lora_adapter=adapter)
    plain = load_vlm2vec(setup["raw"])
    torch.testing.assert_close(merged.encode(items), expected, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(plain.encode(items), expected, atol=1e-3)
    assert model_fingerprint(merged) != model_fingerprint(plain)


def test_cli_with_two_processes_matches_one(setup):
    single = setup["root"] / "single"
    if not (single / "summary.json").exists():
        model = load_vlm2vec(setup["checkpoint"])
        _evaluate(setup, model, single)
    out = setup["root"] / "multi"
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "ACCELERATE_USE_CPU": "1",
        "PYTHONPATH": str(REPO),
    }
    cmd = [
        *TWO_CPU_PROCESSES,
        str(REPO / "evaluate_mmeb.py"),
        "--model_name_or_path",
        str(setup["checkpoint"]),
        "--dataset_name",
        str(setup["data"]["eval_root"]),
        "--image_dir",
        str(setup["data"]["root"]),
        "--subset_name",
        "synthetic",
        "--output_dir",
        str(out),
        "--batch_size",
        "2",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=setup["root"], timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "process 2 of 2" in proc.stderr  # really two processes, each encoding a shard
    for name in ("SynCLS", "SynVQA", "SynT2I", "SynI2T", "SynGround"):
        ours, reference = (json.loads((d / f"{name}_score.json").read_text()) for d in (out, single))
        assert ours.keys() == reference.keys()
        for key, value in reference.items():
            assert ours[key] == (pytest.approx(value, abs=1e-9) if isinstance(value, float) else value), key
    summary = json.loads((out / "summary.json").read_text())
    assert summary["aggregates"]["Overall"]["n"] == 5


def test_truncate_dim_ranks_with_matryoshka_prefixes_and_reuses_the_full_cache(setup):
    model = load_vlm2vec(setup["checkpoint"])
    full_dir, out, cache = (setup["root"] / name for name in ("full", "truncated", "shared-cache"))
    kwargs = dict(
        dataset_name=str(setup["data"]["eval_root"]),
        subsets=["SynT2I", "SynI2T"],
        image_dir=setup["data"]["root"],
        batch_size=3,
        verbose=False,
        cache_dir=cache,
    )
    evaluate_mmeb(model, output_dir=full_dir, **kwargs)
    full = {n: json.loads((full_dir / f"{n}_score.json").read_text()) for n in ("SynT2I", "SynI2T")}
    forwards = []
    model.register_forward_pre_hook(lambda *args: forwards.append(1))
    summary = evaluate_mmeb(model, output_dir=out, truncate_dim=4, **kwargs)
    assert not forwards  # the shared full-size cache served the truncated run
    assert not (out / "cache").exists() and list(cache.glob("*/SynT2I.safetensors"))
    for name in ("SynT2I", "SynI2T"):
        record = json.loads((out / f"{name}_score.json").read_text())
        assert full[name]["embedding_dim"] == model.config.hidden_size
        assert record["embedding_dim"] == 4 and record["fingerprint"] != full[name]["fingerprint"]
        # brute force: every row's own candidates ranked with encode(truncate_dim=4), ties never a hit
        eval_set = load_eval_set(str(setup["data"]["eval_root"]), name, str(setup["data"]["root"]))
        hits = []
        for row in range(eval_set.num_rows):
            query = eval_set.queries[eval_set.query_index[row]]
            ids = [i for i in eval_set.candidate_index[row] if i >= 0]
            items = [{"text": t, "image": i} for t, i in [query] + [eval_set.candidates[i] for i in ids]]
            emb = model.encode(items, truncate_dim=4, batch_size=1)
            scores = (emb[1:] @ emb[0]).tolist()
            hits.append(all(scores[0] > s for i, s in zip(ids[1:], scores[1:]) if i != ids[0]))
        assert record["hit@1"] == pytest.approx(sum(hits) / len(hits)) == summary["datasets"][name]["hit@1"]
    with pytest.raises(DataError, match="truncate_dim"):
        evaluate_mmeb(model, dataset_name="unused", output_dir=out, truncate_dim=model.config.hidden_size + 1)


@pytest.mark.parametrize(
    "text, settings, pattern",
    [
        ("<|image_pad|> a label", {}, r"row 2, .*image token '<\|image_pad\|>'"),
        ("word " * 40000, {}, r"row 2, .*more than the backbone's \d+ positions; set max_length"),
        (None, {"max_length": 3}, r"row 0, .*max_length is too small for the image tokens"),
    ],
)
def test_prompts_are_checked_before_the_first_forward(setup, tmp_path, text, settings, pattern):
    rows = pq.read_table(setup["data"]["eval"]["SynI2T"]).to_pylist()  # image queries, text candidates
    if text is not None:
        rows[2]["tgt_text"][1] = text
    write_eval_dataset(tmp_path / "eval", "SynI2T", rows)
    model = load_vlm2vec(setup["checkpoint"], overrides=settings)
    forwards = []
    model.register_forward_pre_hook(lambda module, args, kwargs: forwards.append(1), with_kwargs=True)
    with pytest.raises(DataError, match=rf"dataset 'SynI2T', {pattern}"):
        evaluate_mmeb(
            model,
            dataset_name=str(tmp_path / "eval"),
            subsets=["SynI2T"],
            image_dir=setup["data"]["root"],
            output_dir=tmp_path / "out",
            verbose=False,
        )
    assert forwards == [] and not any((tmp_path / "out").glob("*.json"))


def test_fingerprint_covers_config_and_processor_settings(setup):
    base = load_vlm2vec(setup["checkpoint"])
    reference = model_fingerprint(base)
    assert model_fingerprint(load_vlm2vec(setup["checkpoint"])) == reference  # same model, same key
    resized = load_vlm2vec(setup["checkpoint"], overrides={"image_max_pixels": 56 * 56})
    assert model_fingerprint(resized) != reference
    other_processor = load_vlm2vec(setup["checkpoint"])
    image_processor = other_processor.processor.backbone_processor.image_processor
    image_processor.image_mean = [0.0, 0.0, 0.0]  # a saved processor setting that changes pixel values
    assert model_fingerprint(other_processor) != reference
