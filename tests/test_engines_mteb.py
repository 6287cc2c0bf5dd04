"""mteb evaluates an export through its sentence-transformers wrapper (the model card's one line) on a local
image -> text retrieval task; its similarities and nDCG@10 equal those computed from `encode()`."""

import math
import re

import numpy as np
import pytest
from hub_isolation import emit_json_code, last_json_line, run_isolated
from PIL import Image, ImageDraw

from modeling_vlm2vec import Vlm2VecModel
from modeling_vlm2vec.hub.export import export_checkpoint

COLOURS = ["red", "green", "blue", "yellow", "purple"]
CAPTIONS = [f"a {c} circle on a white background" for c in COLOURS]


def _images(folder):
    paths = []
    for i, colour in enumerate(COLOURS):
        img = Image.new("RGB", (24 + 6 * i, 20 + 4 * i), "white")
        ImageDraw.Draw(img).ellipse([4, 4, 16, 14], fill=colour)
        paths.append(str(folder / f"{colour}.png"))
        img.save(paths[-1])
    return paths


def _mteb_lines(card: str, repo_id: str, folder: str) -> str:
    """The card's mteb snippet up to and including its one line of help, pointed at ``folder``."""
    block = re.search(r"\*\*mteb\*\*.*?```python\n(.*?)```", card, re.S).group(1)
    lines = block.splitlines()
    end = next(i for i, line in enumerate(lines) if "mteb_model_meta.modalities" in line)
    return "\n".join(lines[: end + 1]).replace(repr(repo_id).replace("'", '"'), repr(folder))


@pytest.mark.parametrize("model_type", ["llava_next", "phi3_v"])  # Phi-3-V: the card's snippet trusts the Hub code
def test_mteb_scores_equal_scores_from_encode(model_type, tiny_backbone_dir, tmp_path):
    paths = _images(tmp_path)
    model = Vlm2VecModel.from_backbone(tiny_backbone_dir(model_type))
    folder = export_checkpoint(model, tmp_path / "export", card_context={"repo_id": "someone/tiny"})
    snippet = _mteb_lines((folder / "README.md").read_text(), "someone/tiny", str(folder))
    child = f"""
import json
from datasets import Dataset
from PIL import Image
from mteb.abstasks.retrieval import AbsTaskRetrieval
from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData
from mteb.abstasks.task_metadata import TaskMetadata

class LocalImageToText(AbsTaskRetrieval):
    metadata = TaskMetadata(
        name="Vlm2VecLocalI2T", description="image -> caption retrieval, defined in the test",
        reference=None, dataset={{"path": "local", "revision": "local"}}, type="Any2AnyRetrieval",
        category="i2t", modalities=["image", "text"], eval_splits=["test"], eval_langs=["eng-Latn"],
        main_score="ndcg_at_10", date=None, domains=None, task_subtypes=None, license=None,
        annotations_creators=None, dialect=None, sample_creation=None, bibtex_citation="",
    )

    def load_data(self, **kwargs):
        images = [Image.open(p).convert("RGB") for p in {paths!r}]
        queries = Dataset.from_dict({{"id": [f"q{{i}}" for i in range(len(images))], "image": images}})
        corpus = Dataset.from_dict({{"id": [f"d{{i}}" for i in range({len(CAPTIONS)})], "text": {CAPTIONS!r}}})
        relevant = {{f"q{{i}}": {{f"d{{i}}": 1}} for i in range(len(images))}}
        split = RetrievalSplitData(queries=queries, corpus=corpus, relevant_docs=relevant, top_ranked=None)
        self.dataset = {{"default": {{"test": split}}}}
        self.data_loaded = True

{snippet}
results = mteb.evaluate(model, LocalImageToText(), cache=None, prediction_folder={str(tmp_path / "pred")!r},
                        overwrite_strategy="always")
out = {{"ndcg_at_10": results.task_results[0].scores["test"][0]["ndcg_at_10"],
        "predictions": json.load(open({str(tmp_path / "pred" / "Vlm2VecLocalI2T_predictions.json")!r}))}}
""" + emit_json_code("out")
    theirs = last_json_line(run_isolated(child))

    queries = model.encode([Image.open(p).convert("RGB") for p in paths]).numpy()
    docs = model.encode(CAPTIONS).numpy()
    similarities = queries @ docs.T  # cosine: encode() normalises
    predicted = theirs["predictions"]["default"]["test"]
    for i in range(len(paths)):
        got = np.array([predicted[f"q{i}"][f"d{j}"] for j in range(len(CAPTIONS))])
        np.testing.assert_allclose(got, similarities[i], atol=1e-5, rtol=0)
    # one relevant document per query: nDCG@10 = mean of 1 / log2(1 + its rank)
    ranks = [1 + int((similarities[i] > similarities[i, i]).sum()) for i in range(len(paths))]
    expected = float(np.mean([1 / math.log2(1 + r) if r <= 10 else 0.0 for r in ranks]))
    assert abs(theirs["ndcg_at_10"] - expected) <= 1e-5, (theirs["ndcg_at_10"], expected, ranks)
