"""`train.py` resuming from a checkpoint that lacks training state: refused before any work, or continued with that
state fresh only when the recipe asks (``resume_with_missing_state``), with a warning naming each missing file."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_recipes import write_recipe

from modeling_vlm2vec.demo.synthetic import write_synthetic_mmeb

REPO = Path(__file__).resolve().parents[1]
# SGD without momentum keeps no optimizer state and a constant rate makes the scheduler's state irrelevant: a run
# resumed without those files must then end exactly where the uninterrupted run ends (it continues at step 2).
STATELESS = dict(optim="sgd", learning_rate=0.05, lr_scheduler_type="constant", max_steps=4, save_steps=2)


def _run(recipe: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, str(REPO / "train.py"), str(recipe)]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def straight(tmp_path_factory, tiny_backbone_dir):
    """An uninterrupted 4-step run that saved ``checkpoint-2`` on the way."""
    root = tmp_path_factory.mktemp("resume")
    synthetic = write_synthetic_mmeb(root / "data", n_train_per_task=24, n_eval_per_task=4)
    backbone = tiny_backbone_dir("qwen2_vl")
    proc = _run(write_recipe(root / "straight", backbone, synthetic["data_config"], **STATELESS))
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = root / "straight" / "out"
    return {"root": root, "backbone": backbone, "data_config": synthetic["data_config"], "out": out}


def _checkpoint_without(straight, name: str, *missing: str) -> Path:
    copy = straight["root"] / name / "checkpoint-2"
    shutil.copytree(straight["out"] / "checkpoint-2", copy)
    for file in missing:
        (copy / file).unlink()
    return copy


def _listing(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def test_a_complete_checkpoint_holds_every_file_the_trainer_restores(straight):
    names = {p.name for p in (straight["out"] / "checkpoint-2").iterdir()}
    assert {"optimizer.pt", "scheduler.pt", "rng_state.pth"} <= names  # what the check expects in one process


@pytest.mark.parametrize("missing", ["optimizer.pt", "scheduler.pt", "rng_state.pth"])
def test_a_missing_state_file_is_refused_before_any_work(straight, missing):
    checkpoint = _checkpoint_without(straight, f"no-{missing}", missing)
    out = checkpoint.parent / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    before = _listing(checkpoint.parent)
    recipe = write_recipe(
        checkpoint.parent / "recipe",
        straight["backbone"],
        straight["data_config"],
        output_dir=str(out),
        resume_from_checkpoint=str(checkpoint),
        **STATELESS,
    )
    proc = _run(recipe)
    assert proc.returncode == 2, proc.stderr[-4000:]
    assert f"error: file '{checkpoint / missing}': the checkpoint has no {missing}" in proc.stderr
    assert "resume_with_missing_state" in proc.stderr
    assert "Traceback" not in proc.stderr
    after = _listing(checkpoint.parent)
    del after["recipe"], after[f"recipe/{recipe.name}"]
    assert after == before  # nothing written, nothing moved, the checkpoint untouched


@pytest.mark.parametrize("allow", [False, True])
def test_a_truncated_state_file_is_refused_even_with_the_option(straight, allow):
    checkpoint = _checkpoint_without(straight, f"truncated-{allow}")
    optimizer = checkpoint / "optimizer.pt"
    os.truncate(optimizer, optimizer.stat().st_size // 2)  # an interrupted copy
    recipe = write_recipe(
        checkpoint.parent,
        straight["backbone"],
        straight["data_config"],
        resume_from_checkpoint=str(checkpoint),
        resume_with_missing_state=allow,
    )
    proc = _run(recipe)
    assert proc.returncode == 2, proc.stderr[-4000:]
    assert f"error: file '{optimizer}': corrupt or truncated" in proc.stderr and "Traceback" not in proc.stderr
    assert not (checkpoint.parent / "out").exists()


def test_missing_files_are_all_named_in_the_error(straight):
    checkpoint = _checkpoint_without(straight, "no-two", "optimizer.pt", "rng_state.pth")
    recipe = write_recipe(
        checkpoint.parent, straight["backbone"], straight["data_config"], resume_from_checkpoint=str(checkpoint)
    )
    proc = _run(recipe)
    assert proc.returncode == 2, proc.stderr[-4000:]
    assert "has no optimizer.pt (missing too: rng_state.pth)" in proc.stderr


def test_the_explicit_option_continues_with_fresh_state_and_warns(straight):
    checkpoint = _checkpoint_without(straight, "fresh", "optimizer.pt", "scheduler.pt")
    recipe = write_recipe(
        checkpoint.parent,
        straight["backbone"],
        straight["data_config"],
        resume_from_checkpoint=str(checkpoint),
        resume_with_missing_state=True,
        **STATELESS,
    )
    proc = _run(recipe)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"resuming from {checkpoint} without optimizer.pt, scheduler.pt" in proc.stderr
    # it continued from step 2 (not from scratch): with stateless SGD the weights equal the uninterrupted run's
    _assert_same(checkpoint.parent / "out", straight["out"], "model.safetensors")
    _assert_same(checkpoint.parent / "out", straight["out"], "checkpoint-4/model.safetensors")
    start = load_file(str(checkpoint / "model.safetensors"))
    final = load_file(str(checkpoint.parent / "out" / "checkpoint-4" / "model.safetensors"))
    assert any(not torch.equal(start[k], final[k]) for k in start)  # and steps 3-4 did move the weights


def _assert_same(a: Path, b: Path, file: str) -> None:
    left, right = load_file(str(a / file)), load_file(str(b / file))
    assert left.keys() == right.keys()
    worst = max((left[k].float() - right[k].float()).abs().max().item() for k in left)
    assert worst <= 1e-6, f"{file}: parameters differ by {worst}"
