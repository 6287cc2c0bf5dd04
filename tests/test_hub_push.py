"""push_checkpoint (offline: dry run and a recorded upload) and the Trainer hooks that keep pushes complete."""

import os
import shlex
import shutil
import sys
from concurrent.futures import Future

import pytest
import transformers.trainer
from huggingface_hub import ModelCard
from huggingface_hub.errors import LocalTokenNotFoundError
from transformers import Trainer, TrainingArguments

from modeling_vlm2vec import Vlm2VecModel
from modeling_vlm2vec.common.errors import DataError
from modeling_vlm2vec.hub import export as export_module
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
    "backbone_processor_vlm2vec.py",
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


# -- export --push_to_hub: checked before writing, one error line after ----------------------------------------------


def _export_cli(source, out, *extra) -> list[str]:
    return [str(source), str(out), "--push_to_hub", *extra]


@pytest.fixture
def no_export(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the export started before the push target was refused")

    monkeypatch.setattr(export_module, "export_checkpoint", refuse)


@pytest.mark.parametrize(
    ("repo_id", "message"),
    [
        ("bad id", "is not a Hub repo id"),
        ("a/b/c", "is not a Hub repo id"),
        ("a--b/c", "is not a Hub repo id"),
        ("someone/model", "offline mode (HF_HUB_OFFLINE=1)"),  # the tests run offline
    ],
)
def test_export_refuses_a_bad_repo_id_or_an_offline_hub_before_writing(tmp_path, capsys, no_export, repo_id, message):
    out = tmp_path / "out"
    assert export_module.main(_export_cli(tmp_path / "ckpt", out, "--hub_model_id", repo_id)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not out.exists()
    if "offline" not in message:  # the id also goes into the card of an export that is not pushed
        assert export_module.main([str(tmp_path / "ckpt"), str(out), "--hub_model_id", repo_id]) == 2
        assert message in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize(
    ("failure", "message"),
    [
        (LocalTokenNotFoundError("no token"), "not logged in to the Hub"),
        (ConnectionError("Name or service not known"), "cannot be reached or refused the token (ConnectionError"),
    ],
)
def test_export_refuses_when_the_hub_cannot_be_pushed_to(tmp_path, capsys, no_export, monkeypatch, failure, message):
    monkeypatch.setattr(push_module.constants, "HF_HUB_OFFLINE", False)

    def whoami(self, token=None):
        raise failure

    monkeypatch.setattr(push_module.HfApi, "whoami", whoami)
    out = tmp_path / "out"
    assert export_module.main(_export_cli(tmp_path / "ckpt", out, "--hub_model_id", "someone/model")) == 2
    assert message in capsys.readouterr().err and not out.exists()


def test_export_dry_run_lists_the_upload_and_touches_no_network(exported, tmp_path, capsys, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("a dry run touched the Hub")

    monkeypatch.setattr(push_module, "create_repo", no_network)
    monkeypatch.setattr(push_module.HfApi, "whoami", no_network)
    out = tmp_path / "out"
    argv = _export_cli(exported[1], out, "--hub_model_id", "someone/model", "--dry_run")
    assert export_module.main(argv) == 0  # offline mode does not matter to a dry run
    listed = capsys.readouterr().out.strip().splitlines()
    assert listed[-len(files_to_push(out)) :] == files_to_push(out) and "config.json" in listed


def test_a_failed_upload_is_one_error_line_and_the_command_it_gives_pushes(exported, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(push_module, "check_push_target", lambda *a, **kw: None)  # as if the Hub were reachable
    monkeypatch.setattr(export_module, "check_push_target", lambda *a, **kw: None)

    def unreachable(*args, **kwargs):
        raise ConnectionError("Connection reset\nby peer")

    monkeypatch.setattr(push_module, "create_repo", unreachable)
    out = tmp_path / "out"
    assert export_module.main(_export_cli(exported[1], out, "--hub_model_id", "someone/model")) == 2
    stderr = capsys.readouterr().err
    err = [line for line in stderr.splitlines() if line.startswith("error: ")]  # besides progress bars
    assert len(err) == 1 and "is complete, but uploading it to" in err[0] and "Traceback" not in stderr
    assert "Connection reset by peer" in err[0]
    assert {"config.json", "model.safetensors", "README.md"} <= set(files_to_push(out))  # the export is whole
    command = shlex.split(err[0].split("push it with: ", 1)[1])
    assert command[:3] == [sys.executable, "-m", "modeling_vlm2vec.hub.push"]
    calls = {}
    monkeypatch.setattr(push_module, "create_repo", lambda repo_id, **kw: calls.setdefault("create", repo_id))
    monkeypatch.setattr(push_module, "upload_folder", lambda **kw: calls.setdefault("upload", kw["folder_path"]))
    assert push_module.main(command[3:]) == 0
    assert calls == {"create": "someone/model", "upload": str(out)}
