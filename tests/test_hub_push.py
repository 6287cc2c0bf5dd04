"""push_checkpoint (offline: dry run and a recorded upload) and the Trainer hooks that keep pushes complete."""

import os
import shutil
from concurrent.futures import Future

import pytest
import transformers.trainer
from huggingface_hub import ModelCard
from transformers import Trainer, TrainingArguments

from modeling_vlm2vec import Vlm2VecModel
from modeling_vlm2vec.common.errors import DataError
from modeling_vlm2vec.hub import push as push_module
from modeling_vlm2vec.hub.export import export_checkpoint
from modeling_vlm2vec.hub.push import HubPushMixin, files_to_push, prepare_checkpoint_for_push, push_checkpoint

TRAINING_STATE = [
    "optimizer.pt",
    "scheduler.pt",
    "rng_state.pth",
    "rng_state_1.pth",
    "scaler.pt",
    "trainer_state.json",
    "training_args.bin",
    "checkpoint-5/model.safetensors",
    "eval/cache/abc/SynCLS.safetensors",
    ".partial.tmp",
    "_private.json",
]
HUB_FILES = {
    "README.md",
    "config.json",
    "configuration_vlm2vec.py",
    "modeling_vlm2vec.py",
    "processing_vlm2vec.py",
    "prompting_vlm2vec.py",
    "image_policy_vlm2vec.py",
    "video_vlm2vec.py",
    "encode_items_vlm2vec.py",
    "phi3v_config_vlm2vec.py",
    "phi3v_model_vlm2vec.py",
    "phi3v_processing_vlm2vec.py",
    "model.safetensors",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
}
# what sentence-transformers, mteb and vLLM read, in exports (2_Normalize is an empty folder); intermediate training
# pushes keep the wrapper's own layout
ENGINE_FILES = {
    "modules.json",
    "sentence_bert_config.json",
    "1_Pooling/config.json",
    "config_sentence_transformers.json",
    "chat_template.jinja",
}


@pytest.fixture(scope="module")
def exported(tiny_backbone_dir, tmp_path_factory):
    model = Vlm2VecModel.from_backbone(tiny_backbone_dir("qwen2_vl"))
    return model, export_checkpoint(model, tmp_path_factory.mktemp("push") / "export")


def _with_training_state(folder, target):
    shutil.copytree(folder, target)
    for name in TRAINING_STATE:
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        (target / name).write_bytes(b"state")
    (target / "eval" / "summary.json").write_text("{}")
    return target


def test_dry_run_lists_hub_files_only(exported, tmp_path):
    folder = _with_training_state(exported[1], tmp_path / "out")
    files = push_checkpoint(folder, "someone/model", dry_run=True)
    assert set(files) == HUB_FILES | ENGINE_FILES | {"eval/summary.json"}
    assert files == sorted(files)


def test_push_creates_repo_and_uploads_with_same_filter(exported, tmp_path, monkeypatch):
    folder = _with_training_state(exported[1], tmp_path / "out")
    calls = {}
    monkeypatch.setattr(push_module, "create_repo", lambda repo_id, **kw: calls.setdefault("create", (repo_id, kw)))
    monkeypatch.setattr(push_module, "upload_folder", lambda **kw: calls.setdefault("upload", kw))
    files = push_checkpoint(folder, "someone/model", private=True, commit_message="v1")
    assert calls["create"] == (
        "someone/model",
        {"token": None, "private": True, "repo_type": "model", "exist_ok": True},
    )
    upload = calls["upload"]
    assert upload["repo_id"] == "someone/model" and upload["commit_message"] == "v1"
    assert upload["folder_path"] == str(folder)
    assert files == push_checkpoint(folder, "someone/model", dry_run=True)


def test_push_refuses_a_folder_without_model(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="nothing to push"):
        push_checkpoint(tmp_path, "someone/model", dry_run=True)


def test_prepare_checkpoint_for_push_adds_code_processor_and_card(exported, tmp_path):
    model, _ = exported
    checkpoint = tmp_path / "run" / "checkpoint-10"
    model.save_pretrained(checkpoint)
    model.processor.save_pretrained(checkpoint)
    output_dir = tmp_path / "run"
    # what Trainer._push_from_checkpoint copies by itself
    for name in ("config.json", "model.safetensors"):
        shutil.copy(checkpoint / name, output_dir / name)
    prepare_checkpoint_for_push(checkpoint, output_dir, card_context={"repo_id": "someone/model"})
    assert HUB_FILES <= set(files_to_push(output_dir))
    assert "vlm2vec" in ModelCard.load(output_dir / "README.md").data.tags


class HubTrainer(HubPushMixin, Trainer):
    pass


def test_trainer_mixin_pushes_complete_folders_and_keeps_our_card(exported, tmp_path, monkeypatch):
    model, _ = exported
    output_dir = tmp_path / "run"
    args = TrainingArguments(
        output_dir=str(output_dir), report_to=[], use_cpu=True, learning_rate=3e-5, hub_model_id="someone/model"
    )
    trainer = HubTrainer(model=model, args=args)
    checkpoint = output_dir / "checkpoint-1"
    trainer.save_model(str(checkpoint))
    model.processor.save_pretrained(checkpoint)
    uploaded = []

    class RecordingApi:
        def upload_folder(self, folder_path, ignore_patterns=None, **kwargs):
            uploaded.append(sorted(os.listdir(folder_path)))
            future = Future()
            future.set_result(None)
            return future

    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: RecordingApi())
    trainer.hub_model_id, trainer.push_in_progress = "someone/model", None
    trainer._push_from_checkpoint(str(checkpoint))
    assert HUB_FILES <= set(uploaded[0])  # an intermediate push carries remote code, processor and card
    # the Trainer's generic card is replaced by ours, with the run's hyper-parameters
    trainer.create_model_card(model_name="model")
    card = ModelCard.load(output_dir / "README.md")
    assert card.data.pipeline_tag == "feature-extraction" and "custom_code" in card.data.tags
    assert "| learning_rate | 3e-05 |" in card.text and 'AutoModel.from_pretrained("someone/model"' in card.text
