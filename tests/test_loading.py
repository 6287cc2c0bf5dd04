"""The one loader: continued training keeps a checkpoint's saved settings, and no command runs code shipped in a
checkpoint folder unless the user asked for it."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from modeling_vlm2vec import Vlm2VecModel
from modeling_vlm2vec.common.errors import DataError
from modeling_vlm2vec.demo.synthetic import write_synthetic_mmeb
from modeling_vlm2vec.loading import load_vlm2vec, wrapper_settings
from modeling_vlm2vec.pipeline import ModelArguments, build_model

REPO = Path(__file__).resolve().parents[1]
SAVED = {"padding_side": "left", "max_length": 40, "image_max_pixels": 3136}


@pytest.fixture(scope="module")
def checkpoint(tiny_backbone_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("saved") / "ckpt"
    model = Vlm2VecModel.from_backbone(tiny_backbone_dir("qwen2_vl"), **SAVED)
    model.save_pretrained(folder)
    model.processor.save_pretrained(folder)
    return folder


def test_continuing_keeps_saved_settings_and_applies_only_named_ones(checkpoint):
    model = build_model(ModelArguments(model_name_or_path=str(checkpoint)))
    assert {k: getattr(model.config, k) for k in SAVED} == SAVED
    assert model.processor.padding_side == "left" and model.processor.max_length == 40

    changed = build_model(ModelArguments(model_name_or_path=str(checkpoint), max_length=64))
    assert changed.config.max_length == 64
    assert changed.config.padding_side == "left" and changed.config.image_max_pixels == 3136
    assert model.video_input == "frames"  # a recipe may choose the Qwen video input instead
    assert build_model(ModelArguments(model_name_or_path=str(checkpoint), video_input="video")).video_input == "video"


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("contrastive_temperature", 0.0),
        ("contrastive_temperature", float("nan")),
        ("padding_side", "middle"),
        ("max_length", -3),
        ("image_min_pixels", 10**9),
        ("video_input", "clip"),
    ],
)
def test_settings_given_when_continuing_are_validated(checkpoint, setting, value):
    with pytest.raises(DataError, match=setting):
        build_model(ModelArguments(model_name_or_path=str(checkpoint), **{setting: value}))


def test_raw_backbone_gets_the_named_settings_and_defaults(tiny_backbone_dir):
    model = load_vlm2vec(tiny_backbone_dir("llava_next"), overrides={"max_length": 77})
    assert model.config.max_length == 77 and model.config.padding_side == "right"
    assert model.config.contrastive_temperature == 0.02
    with pytest.raises(DataError, match="unknown Vlm2Vec setting"):
        load_vlm2vec(tiny_backbone_dir("llava_next"), overrides={"temperature": 0.1})


def test_loss_option_recipe_keys_are_recorded_in_the_saved_config(tiny_backbone_dir, tmp_path):
    recipe = ModelArguments(
        model_name_or_path=str(tiny_backbone_dir("qwen2_vl")),
        matryoshka_dims=[32, 16],
        matryoshka_weights=[1.0, 1.0, 2.0],
        hardness_alpha=9.0,
        false_negative_margin=0.1,
    )
    model = build_model(recipe)
    model.save_pretrained(tmp_path / "saved")
    model.processor.save_pretrained(tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert saved["matryoshka_dimensions"] == [16, 32, 64]  # the field vLLM reads, full size included
    assert (saved["matryoshka_weights"], saved["hardness_alpha"], saved["false_negative_margin"]) == ([1, 1, 2], 9, 0.1)
    continued = build_model(ModelArguments(model_name_or_path=str(tmp_path / "saved"), hardness_alpha=2.0))
    assert continued.config.hardness_alpha == 2.0 and continued.config.matryoshka_dimensions == [16, 32, 64]
    with pytest.raises(DataError, match="matryoshka_weights"):
        build_model(ModelArguments(model_name_or_path=str(tmp_path / "saved"), matryoshka_dims=[8]))

    reset = ["false_negative_margin", "matryoshka_dims", "matryoshka_weights"]
    off = build_model(ModelArguments(model_name_or_path=str(tmp_path / "saved"), reset_settings=reset))
    assert (off.config.false_negative_margin, off.config.matryoshka_dimensions, off.config.matryoshka_weights) == (
        None,
        None,
        None,
    )
    assert off.config.hardness_alpha == 9.0  # what is not reset keeps its saved value
    with pytest.raises(DataError, match="'temperature' is not a setting"):
        ModelArguments(model_name_or_path="x", reset_settings=["temperature"])
    with pytest.raises(DataError, match="'hardness_alpha' is also set"):
        ModelArguments(model_name_or_path="x", hardness_alpha=1.0, reset_settings=["hardness_alpha"])


def _plant_marker(folder: Path, marker: Path) -> None:
    """Append a line writing `marker` to every Python file of a checkpoint folder (as a hostile upload would)."""
    for py in folder.glob("*.py"):
        with py.open("a", encoding="utf-8") as f:
            f.write(f"\nopen({str(marker)!r}, 'a').write('ran {py.name}\\n')\n")


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL
    )


def test_no_command_runs_code_shipped_in_a_checkpoint(checkpoint, tmp_path):
    planted = shutil.copytree(checkpoint, tmp_path / "planted")
    marker = tmp_path / "MARKER"
    _plant_marker(planted, marker)
    data = write_synthetic_mmeb(tmp_path / "syn", n_train_per_task=8, n_eval_per_task=3, n_candidates=3)

    evaluation = _run(
        [
            "evaluate_mmeb.py",
            "--model_name_or_path",
            str(planted),
            "--dataset_name",
            str(data["eval_root"]),
            "--subset_name",
            "SynCLS",
            "--image_dir",
            str(data["root"]),
            "--output_dir",
            str(tmp_path / "eval"),
            "--device",
            "cpu",
        ],
        REPO,
    )
    assert evaluation.returncode == 0, evaluation.stderr[-3000:]
    assert (tmp_path / "eval" / "SynCLS_score.json").is_file()

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "output_dir": str(tmp_path / "continued"),
                "model_name_or_path": str(planted),
                "dataset_config": str(data["data_config"]),
                "per_device_train_batch_size": 4,
                "max_steps": 1,
                "use_cpu": True,
                "report_to": [],
                "do_eval": False,
                "dataloader_num_workers": 0,
                "disable_tqdm": True,
            }
        )
    )
    training = _run(["train.py", str(recipe)], REPO)
    assert training.returncode == 0, training.stderr[-3000:]
    continued = wrapper_settings(json.loads((tmp_path / "continued" / "config.json").read_text()))
    assert {k: continued[k] for k in SAVED} == SAVED

    export = _run(["-m", "modeling_vlm2vec.hub.export", str(planted), str(tmp_path / "exported")], REPO)
    assert export.returncode == 0, export.stderr[-3000:]
    assert (tmp_path / "exported" / "model.safetensors").is_file()

    assert not marker.exists(), marker.read_text()
    # the planted files are still what a loader with trust_remote_code=True would run: the check above can fail
    code = f"from transformers import AutoConfig; AutoConfig.from_pretrained({str(planted)!r}, trust_remote_code=True)"
    assert _run(["-c", code], tmp_path).returncode == 0 and marker.exists()
