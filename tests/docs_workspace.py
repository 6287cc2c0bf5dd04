"""The folder the documentation's ``run`` blocks execute in: what a reader has after ``make demo``, made small.

Contents (docs/contributing.md lists them for page authors):

- ``outputs/demo``: a Vlm2Vec export of a tiny random Qwen2-VL (the layout ``make demo`` leaves, untrained);
  ``outputs/demo-data``: the synthetic data the demo writes beside it (``data_config.yaml``, ``eval/``, images).
- ``outputs/run/checkpoint-2000``: a training checkpoint in the wrapper layout (tiny Qwen2-VL).
- ``VLM2Vec-Qwen2VL-2B``: an official-style release, a DoRA adapter on the raw tiny Qwen2-VL.
- ``photo.jpg``, ``frames/0001.jpg`` ... ``frames/0009.jpg``; ``my_collection`` + ``my_images``: a BEIR collection.
- ``hf-home``: an offline Hub cache in which ``Qwen/Qwen2-VL-2B-Instruct`` is the tiny random Qwen2-VL, so a
  snippet that names that Hub id runs the real loading path.
- The repository's entry scripts, ``configs/`` and ``bench/`` as links, so commands run as from the repository root.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
LINKED = ("train.py", "evaluate_mmeb.py", "mine_hard_negatives.py", "configs", "bench", "Makefile")
#: Hub ids that resolve, offline, to a tiny random backbone of the same architecture.
HUB_STAND_INS = {"Qwen/Qwen2-VL-2B-Instruct": "qwen2_vl"}
_REVISION = "0" * 40


def _cache_model(hf_home: Path, repo_id: str, folder: Path) -> None:
    """Lay `folder` out as the Hub cache's snapshot of `repo_id` (the layout ``hf_hub_download`` reads offline)."""
    entry = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    (entry / "refs").mkdir(parents=True)
    (entry / "refs" / "main").write_text(_REVISION)
    shutil.copytree(folder, entry / "snapshots" / _REVISION)


def _picture(path: Path, colour: str, size: tuple[int, int] = (64, 48)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, "white")
    ImageDraw.Draw(image).ellipse((8, 8, size[0] - 8, size[1] - 8), fill=colour)
    image.save(path)


def _collection(root: Path) -> None:
    """``my_collection`` (BEIR layout, jsonl) with page images under ``my_images``."""
    colours = ["red", "green", "blue", "black"]
    corpus, queries, qrels = [], [], []
    for i, colour in enumerate(colours):
        _picture(root / "my_images" / "pages" / f"{i}.png", colour)
        page = {"_id": f"page{i}", "title": f"Page {i}", "text": f"a {colour} circle", "image": f"pages/{i}.png"}
        corpus.append(page)
        queries.append({"_id": f"q{i}", "text": f"the {colour} circle", "image": None})
        qrels.append({"query-id": f"q{i}", "corpus-id": f"page{i}", "score": 1})
    folder = root / "my_collection"
    folder.mkdir()
    for name, rows in (("corpus", corpus), ("queries", queries), ("qrels", qrels)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))


def _official_release(raw_dir: Path, folder: Path) -> None:
    """A tiny random release in the official layout: a random DoRA adapter saved by peft on the raw backbone."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    torch.manual_seed(0)
    raw = AutoModelForImageTextToText.from_pretrained(raw_dir)
    config = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], use_dora=True, init_lora_weights=False)
    get_peft_model(raw, config).save_pretrained(folder)


def build_workspace(root: Path, tiny_backbone_dir) -> Path:
    """Write the workspace under `root` (see the module docstring) and return `root`."""
    from modeling_vlm2vec import Vlm2VecModel
    from modeling_vlm2vec.demo.synthetic import write_synthetic_mmeb
    from modeling_vlm2vec.hub.export import export_checkpoint

    qwen = tiny_backbone_dir("qwen2_vl")
    for name in LINKED:
        (root / name).symlink_to(REPO / name)
    for repo_id, model_type in HUB_STAND_INS.items():
        _cache_model(root / "hf-home", repo_id, tiny_backbone_dir(model_type))
    export_checkpoint(Vlm2VecModel.from_backbone(qwen), root / "outputs" / "demo")
    write_synthetic_mmeb(root / "outputs" / "demo-data", n_train_per_task=8, n_eval_per_task=4)
    checkpoint = root / "outputs" / "run" / "checkpoint-2000"
    model = Vlm2VecModel.from_backbone(qwen)
    model.save_pretrained(checkpoint)
    model.processor.save_pretrained(checkpoint)
    _official_release(qwen, root / "VLM2Vec-Qwen2VL-2B")
    _picture(root / "photo.jpg", "red")
    for i, colour in enumerate(["red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink", "gray"]):
        _picture(root / "frames" / f"{i + 1:04d}.jpg", colour)
    _collection(root)
    return root
