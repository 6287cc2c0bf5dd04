"""Model card: YAML metadata, evaluation table from evaluate_mmeb outputs, and a usage snippet that really runs."""

import json
import re
from pathlib import Path

import pytest
import yaml
from hub_isolation import run_isolated
from huggingface_hub import ModelCard
from peft import LoraConfig, get_peft_model

from modeling_vlm2vec import Vlm2VecModel
from modeling_vlm2vec.demo.eval_fixtures import KeyedEncoder
from modeling_vlm2vec.demo.v2_fixtures import write_v2_suite
from modeling_vlm2vec.evaluation.mmeb_v2.runner import load_v2_sets, run_v2_evaluation
from modeling_vlm2vec.hub.card import render_model_card
from modeling_vlm2vec.hub.export import export_checkpoint

CONTEXT = {
    "repo_id": "someone/vlm2vec-tiny",
    "base_model": "Qwen/Qwen2-VL-2B-Instruct",
    "datasets": ["TIGER-Lab/MMEB-train"],
    "license": "mit",
    "tags": ["demo"],
    "training": {"learning_rate": 2e-5, "per_device_train_batch_size": 8, "max_steps": 100},
    "data_sources": [{"name": "ImageNet_1K", "count": 1000}, {"name": "N24News", "count": 500}],
    "grad_cache": {"query_chunk_size": 4, "target_chunk_size": 2},
    "world_size": 2,
    "lora": {"r": 8, "alpha": 64, "use_dora": False},
    "hard_negatives": True,
}


def _score(name, hit):
    return {
        "dataset": name,
        "meta_task": "classification",
        "split": "IND",
        "hit@1": hit,
        "recall@5": 1.0,
        "mrr": 0.8,
        "ndcg@10": 0.9,
        "num_queries": 4,
        "fingerprint": "x",
    }


def _write_scores(eval_dir):
    eval_dir.mkdir(parents=True)
    for name, hit in (("ImageNet-1K", 0.5), ("N24News", 0.25)):
        (eval_dir / f"{name}_score.json").write_text(json.dumps(_score(name, hit)))


def _front_matter(text):
    match = re.match(r"^---\n(.*?)\n---\n", text, re.S)
    assert match, "card must start with YAML front matter"
    return yaml.safe_load(match.group(1))


def _python_blocks(text):
    return re.findall(r"```python\n(.*?)```", text, re.S)


@pytest.fixture(scope="module")
def llava_dir(tiny_backbone_dir):
    return tiny_backbone_dir("llava_next")


def test_card_metadata_training_and_scores_from_score_files(llava_dir, tmp_path):
    model = Vlm2VecModel.from_backbone(llava_dir)
    _write_scores(tmp_path / "eval")
    out = export_checkpoint(model, tmp_path / "out", card_context={**CONTEXT, "eval_dir": str(tmp_path / "eval")})
    text = (out / "README.md").read_text()
    meta = _front_matter(text)
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "feature-extraction"
    assert meta["base_model"] == "Qwen/Qwen2-VL-2B-Instruct" and meta["datasets"] == ["TIGER-Lab/MMEB-train"]
    assert meta["license"] == "mit"
    assert {"vlm2vec", "mmeb", "custom_code", "llava_next", "demo"} <= set(meta["tags"])
    results = {r["dataset"]["name"]: r["metrics"][0]["value"] for r in meta["model-index"][0]["results"]}
    # hand-computed: classification / IND / Overall = mean(50, 25)
    assert results == {
        "MMEB Classification": 37.5,
        "MMEB IND": 37.5,
        "MMEB Overall": 37.5,
        "MMEB ImageNet-1K": 50.0,
        "MMEB N24News": 25.0,
    }
    assert "| Overall | 2/36 | 37.5 | 77.4 |" in text  # paper: mean of 74.5 and 80.3 over the same datasets
    assert "| ImageNet-1K | classification | IND | 50.0 | 74.5 |" in text
    assert "| ImageNet_1K | 1000 |" in text and "Data (1500 pairs)" in text
    assert "| learning_rate | 2e-05 |" in text
    assert "query_chunk_size = 4, target_chunk_size = 2" in text and "World size (processes): 2" in text
    assert "LoRA: r = 8, alpha = 64, use_dora = False" in text and "in-batch and hard negatives" in text
    assert "- transformers: " in text and "arXiv:2410.05160" in text
    assert sorted(p.name for p in (out / "eval").iterdir()) == ["ImageNet-1K_score.json", "N24News_score.json"]
    # huggingface_hub parses it back
    card = ModelCard.load(out / "README.md")
    assert card.data.eval_results[0].metric_value == 37.5


def _card_with_summary(llava_dir, tmp_path, *, dataset_name: str, overall: float) -> tuple[str, Path]:
    """Export with an eval folder holding score files and a summary.json that disagrees with them."""
    _write_scores(tmp_path / "eval")
    summary = {
        "metric": "hit@1",
        "model": "m",
        "dataset_name": dataset_name,
        "datasets": {"ImageNet-1K": {**_score("ImageNet-1K", 0.5), "paper_hit@1": 0.745}},
        "aggregates": {
            "Overall": {"hit@1": overall, "n": 1, "N": 36, "datasets": ["ImageNet-1K"], "paper_hit@1": None}
        },
    }
    (tmp_path / "eval" / "summary.json").write_text(json.dumps(summary))
    out = export_checkpoint(
        Vlm2VecModel.from_backbone(llava_dir), tmp_path / "out", card_context={"eval_dir": str(tmp_path / "eval")}
    )
    return (out / "README.md").read_text(), out


def test_summary_json_takes_precedence(llava_dir, tmp_path):
    text, out = _card_with_summary(llava_dir, tmp_path, dataset_name="TIGER-Lab/MMEB-eval", overall=0.123)
    assert "| Overall | 1/36 | 12.3 | – |" in text
    assert "summary.json" in {p.name for p in (out / "eval").iterdir()}


def test_scores_on_a_local_eval_folder_get_a_table_but_no_model_index(llava_dir, tmp_path):
    text, _ = _card_with_summary(llava_dir, tmp_path, dataset_name=str(tmp_path / "local-eval-data"), overall=0.5)
    assert "| Overall | 1/36 | 50.0 | – |" in text
    assert "model-index" not in _front_matter(text)  # local data is not presented as a Hub dataset result


def test_card_without_context_has_no_training_or_eval_sections(llava_dir, tmp_path):
    out = export_checkpoint(Vlm2VecModel.from_backbone(llava_dir), tmp_path / "plain")
    text = (out / "README.md").read_text()
    meta = _front_matter(text)
    assert "## Training" not in text and "## Evaluation" not in text and "model-index" not in meta
    assert "base_model" not in meta  # a local backbone path is not a Hub id
    assert 'AutoModel.from_pretrained("plain", trust_remote_code=True)' in text


def test_card_snippets_run_without_the_package(llava_dir, tmp_path):
    """Execute the merged and the adapter-only cards' snippets where only the checkpoint files exist."""
    base = Vlm2VecModel.from_backbone(llava_dir)
    base_dir = export_checkpoint(base, tmp_path / "base", card_context={"repo_id": "someone/tiny-base"})
    peft_model = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False))
    adapter_dir = export_checkpoint(
        peft_model,
        tmp_path / "adapter",
        adapter_only=True,
        base_model=str(base_dir),
        card_context={"repo_id": "someone/tiny-adapter"},
    )
    # merged: AutoModel, sentence-transformers and mteb snippets (mteb's one line runs in test_engines_mteb.py)
    merged_snippet, st_snippet, mteb_snippet = _python_blocks((base_dir / "README.md").read_text())
    assert "SentenceTransformer(" in st_snippet and "mteb.evaluate" in mteb_snippet
    adapter_card = (adapter_dir / "README.md").read_text()
    assert _front_matter(adapter_card)["library_name"] == "peft"
    [adapter_snippet] = _python_blocks(adapter_card)  # an adapter is not a folder other engines read
    assert f'AutoModel.from_pretrained("{base_dir}"' in adapter_snippet
    code = "\n".join(
        [
            merged_snippet.replace('"someone/tiny-base"', repr(str(base_dir))),
            "assert scores.shape == (1, 2) and pairs.shape == (1, model.config.hidden_size)",
            "vlm2vec_model = model",
            st_snippet.replace('"someone/tiny-base"', repr(str(base_dir))),
            "ours = vlm2vec_model.encode([image, {'text': 'What colour is the shape?', 'image': image}])",
            "assert (torch.as_tensor(images) - ours).abs().max() <= 1e-5",
            adapter_snippet.replace('"someone/tiny-adapter"', repr(str(adapter_dir))),
            "assert scores.shape == (1, 2)",
            "print('snippets ran')",
        ]
    )
    assert "snippets ran" in run_isolated(code)


def test_matryoshka_dimensions_are_advertised_in_config_and_card(llava_dir, tmp_path):
    model = Vlm2VecModel.from_backbone(llava_dir, matryoshka_dimensions=[16, 32])
    out = export_checkpoint(model, tmp_path / "mrl")
    assert json.loads((out / "config.json").read_text())["matryoshka_dimensions"] == [16, 32, 64]
    text = (out / "README.md").read_text()
    assert "for `d` in 16, 32, 64" in text and "truncate_dim=16" in text
    assert (
        "Matryoshka"
        not in (export_checkpoint(Vlm2VecModel.from_backbone(llava_dir), tmp_path / "plain") / "README.md").read_text()
    )
    stdout = run_isolated(
        "from transformers import AutoModel\n"
        f"m = AutoModel.from_pretrained({str(out)!r}, trust_remote_code=True)\n"
        "e = m.encode(['a red circle'], truncate_dim=16)\n"
        "print(tuple(e.shape), round(float(e.norm()), 5))"
    )
    assert "(1, 16) 1.0" in stdout


def test_card_shows_mmeb_v2_tasks_and_aggregates_beside_mmeb_v1(llava_dir, tmp_path):
    """One eval folder holding MMEB-V1 score files and an MMEB-V2 run (V2 fixtures, scores known by construction)."""
    _write_scores(tmp_path / "eval")
    suite = write_v2_suite(tmp_path / "v2")
    sets = load_v2_sets(["ImageNet-1K", "OK-VQA", "ViDoRe_arxivqa"], suite["data"], suite["media"])
    run_v2_evaluation(KeyedEncoder(), sets, output_dir=tmp_path / "eval", verbose=False)
    out = export_checkpoint(
        Vlm2VecModel.from_backbone(llava_dir), tmp_path / "out", card_context={"eval_dir": str(tmp_path / "eval")}
    )
    text = (out / "README.md").read_text()
    ndcg = suite["expected"]["ViDoRe_arxivqa"]
    # hand-computed from the fixtures' known scores and the published VLM2Vec-V2 numbers (80.8, 51.7, 78.9)
    assert "| ImageNet-1K | image | classification | hit@1 | 50.0 | 80.8 |" in text
    assert "| OK-VQA | image | vqa | hit@1 | 100.0 | 51.7 |" in text
    assert f"| ViDoRe_arxivqa | visdoc | ViDoRe-V1 | ndcg@5 | {100 * ndcg:.1f} | 78.9 |" in text
    assert f"| image | 2/36 | 75.0 | {(80.8 + 51.7) / 2:.1f} |" in text
    assert f"| All | 3/78 | {100 * (0.5 + 1.0 + ndcg) / 3:.1f} | {(80.8 + 51.7 + 78.9) / 3:.1f} |" in text
    # MMEB-V1's table and model-index are unchanged: V1's score files only (hand-computed as above)
    assert "| Overall | 2/36 | 37.5 | 77.4 |" in text and "| ImageNet-1K | classification | IND | 50.0 | 74.5 |" in text
    results = {r["dataset"]["name"] for r in _front_matter(text)["model-index"][0]["results"]}
    assert results == {"MMEB Classification", "MMEB IND", "MMEB Overall", "MMEB ImageNet-1K", "MMEB N24News"}
    # Both benchmarks' results travel with the export, each in its place; no embedding cache.
    copied = sorted(p.relative_to(out / "eval").as_posix() for p in (out / "eval").rglob("*") if p.is_file())
    assert copied == sorted(
        ["ImageNet-1K_score.json", "N24News_score.json"]
        + [f"mmeb-v2/{name}" for name in ("summary.json", "results.md", "results.png")]
        + [f"mmeb-v2/{s.name}_score.json" for s in sets]
    )


def test_card_aggregates_mmeb_v2_score_files_without_a_summary(llava_dir, tmp_path):
    suite = write_v2_suite(tmp_path / "v2")
    sets = load_v2_sets(["ImageNet-1K", "OK-VQA"], suite["data"], suite["media"])
    run_v2_evaluation(KeyedEncoder(), sets, output_dir=tmp_path / "eval", verbose=False)
    (tmp_path / "eval" / "mmeb-v2" / "summary.json").unlink()
    config = Vlm2VecModel.from_backbone(llava_dir).config
    card = render_model_card(config, card_context={"eval_dir": str(tmp_path / "eval")})
    assert "| image | 2/36 | 75.0 |" in card.text and "| OK-VQA | image | vqa | hit@1 | 100.0 | 51.7 |" in card.text
    assert "## Evaluation (MMEB, precision@1 %)" not in card.text  # no MMEB-V1 results, no V1 table
