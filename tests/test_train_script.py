"""`train.py` end to end on the tiny backbone and synthetic data: export, 2 processes == 1, resume, bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from hub_isolation import emit_json_code, last_json_line, run_isolated
from launch import TWO_CPU_PROCESSES
from PIL import Image
from safetensors.torch import load_file
from train_recipes import write_recipe
from transformers import HfArgumentParser
from transformers.integrations import integration_utils

import train
from modeling_vlm2vec import Vlm2VecConfig, Vlm2VecModel
from modeling_vlm2vec.demo.synthetic import write_synthetic_mmeb
from modeling_vlm2vec.hub.native import native_state_dict
from modeling_vlm2vec.pipeline import TRAIN_ARGUMENTS, check_reporting

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return write_synthetic_mmeb(tmp_path_factory.mktemp("syn") / "data", n_train_per_task=24, n_eval_per_task=4)


@pytest.fixture(scope="module")
def backbone(tiny_backbone_dir):
    return tiny_backbone_dir("qwen2_vl")


def _recipe(tmp_path, backbone, synthetic, **overrides) -> Path:
    return write_recipe(tmp_path, backbone, synthetic["data_config"], **overrides)


def _run(args: list[str], *, launcher: list[str] | None = None, cwd=REPO) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1")
    cmd = (launcher or [sys.executable]) + [str(REPO / "train.py")] + args
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def _assert_same_weights(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst <= atol, f"parameters differ by {worst}"


def test_demo_style_run_exports_evaluates_and_loads_without_the_package(tmp_path, backbone, synthetic):
    recipe = _recipe(
        tmp_path,
        backbone,
        synthetic,
        do_eval=True,
        eval_dataset_name=str(synthetic["eval_root"]),
        eval_image_dir=str(synthetic["root"]),
        eval_subset_name=["SynCLS", "SynT2I"],
        matryoshka_dims=[16, 32],
        hardness_alpha=2.0,
    )
    proc = _run([str(recipe)])
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = tmp_path / "out"
    saved = json.loads((out / "config.json").read_text())
    assert (saved["matryoshka_dimensions"], saved["vlm2vec"]["hardness_alpha"]) == ([16, 32, 64], 2.0)
    for size in (16, 32):  # the export scored at each smaller size too, from the one cache
        assert json.loads((out / "eval" / f"dim{size}" / "SynCLS_score.json").read_text())["embedding_dim"] == size
        assert f"| {size} |" in proc.stdout
    assert not (out / "eval" / "dim16" / "cache").exists()
    for name in (
        "config.json",
        "configuration_vlm2vec.py",
        "modeling_vlm2vec.py",
        "processing_vlm2vec.py",
        "prompting_vlm2vec.py",
        "image_policy_vlm2vec.py",
        "video_vlm2vec.py",
        "encode_items_vlm2vec.py",
        "model.safetensors",
        "README.md",
        "eval/summary.json",
        "eval/SynCLS_score.json",
        "eval/baseline/summary.json",
    ):
        assert (out / name).is_file(), name
    assert "| SynCLS |" in proc.stdout and "before" in proc.stdout  # the before/after table
    assert json.loads((out / "config.json").read_text())["auto_map"]["AutoModel"] == "modeling_vlm2vec.Vlm2VecModel"
    # trained weights differ from the backbone's
    trained = Vlm2VecModel.from_pretrained(out)
    untrained = Vlm2VecModel.from_backbone(backbone)
    name = next(n for n, _ in trained.named_parameters() if "language_model.layers.0" in n)
    assert not torch.equal(trained.state_dict()[name], untrained.state_dict()[name])

    image = str(synthetic["root"] / pq_first_image(synthetic))
    items = [
        {"text": "Find me an everyday image that matches the given caption: a red circle"},
        {"text": "<|image_1|> Represent the given image.", "image": image},
    ]
    local = trained.encode(items).numpy()
    stdout = run_isolated(
        "import json\nfrom transformers import AutoModel\n"
        f"m = AutoModel.from_pretrained({str(out)!r}, trust_remote_code=True)\n"
        f"e = m.encode({items!r})\n" + emit_json_code("e.tolist()")
    )
    np.testing.assert_allclose(np.array(last_json_line(stdout)), local, atol=1e-6, rtol=0)


def pq_first_image(synthetic) -> str:
    import pyarrow.parquet as pq

    return pq.read_table(synthetic["eval"]["SynT2I"]).column("tgt_img_path")[0].as_py()[0]


@pytest.mark.parametrize("cached", [True, False])
def test_two_processes_equal_one_process_with_the_same_global_batch(tmp_path, backbone, synthetic, cached):
    # uncached: one forward per group in one process, one forward of the concatenated groups under DDP
    chunks = {} if cached else dict(gc_q_chunk_size=None, gc_p_chunk_size=None)
    common = dict(
        optim="sgd", learning_rate=0.05, max_steps=3, max_grad_norm=0.0, lr_scheduler_type="constant", **chunks
    )
    one = _recipe(tmp_path / "one", backbone, synthetic, per_device_train_batch_size=8, **common)
    two = _recipe(tmp_path / "two", backbone, synthetic, per_device_train_batch_size=4, **common)
    proc = _run([str(one)])
    assert proc.returncode == 0, proc.stderr[-4000:]
    proc = _run([str(two)], launcher=TWO_CPU_PROCESSES)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "World size (processes): 2" in (tmp_path / "two" / "out" / "README.md").read_text()
    _assert_same_weights(_weights(tmp_path / "one" / "out"), _weights(tmp_path / "two" / "out"), atol=1e-5)
    # and training did move the weights
    moved = _weights(tmp_path / "one" / "out")
    base = native_state_dict(Vlm2VecModel.from_backbone(backbone))  # the output folder has the export layout
    assert moved.keys() == base.keys()
    assert any(not torch.allclose(moved[k], base[k]) for k in moved)


def test_resume_gives_the_same_parameters_as_an_uninterrupted_run(tmp_path, backbone, synthetic):
    common = dict(max_steps=4, save_steps=2, learning_rate=1e-3, warmup_steps=1)
    straight = _recipe(tmp_path / "a", backbone, synthetic, **common)
    assert _run([str(straight)]).returncode == 0
    interrupted = _recipe(tmp_path / "b", backbone, synthetic, **common)
    assert _run([str(interrupted)]).returncode == 0
    out_b = tmp_path / "b" / "out"
    # keep only what existed after step 2: checkpoint-2 (drop the later checkpoint and the final export)
    for item in out_b.iterdir():
        if item.name != "checkpoint-2":
            subprocess.run(["rm", "-rf", str(item)], check=True)
    resumed = _recipe(tmp_path / "b", backbone, synthetic, resume_from_checkpoint=str(out_b / "checkpoint-2"), **common)
    proc = _run([str(resumed)])
    assert proc.returncode == 0, proc.stderr[-4000:]
    _assert_same_weights(_weights(tmp_path / "a" / "out"), _weights(out_b), atol=1e-6)


def _bad_source(tmp_path, rows: list[dict], image_dir: Path, name: str = "Bad") -> Path:
    data = tmp_path / f"{name}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = tmp_path / f"{name}.yaml"
    config.write_text(yaml.safe_dump({"sources": [{"name": name, "path": str(data), "image_dir": str(image_dir)}]}))
    return config


def _row(**kw):
    row = {
        "qry": "<|image_1|> Represent the given image.",
        "qry_image_path": "img.png",
        "pos_text": "a red circle",
        "pos_image_path": "",
    }
    row.update(kw)
    return row


@pytest.fixture()
def image_dir(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (32, 32), (200, 0, 0)).save(folder / "img.png")
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    return folder


@pytest.mark.parametrize(
    "case, rows, message",
    [
        ("missing column", [{"qry": "q", "qry_image_path": "", "pos_text": "p"}], "pos_image_path"),
        ("missing image", [_row(qry_image_path="nope.png")], "not found"),
        ("escaping path", [_row(qry_image_path="../outside.png")], "escapes"),
        ("only empty query rows", [_row(qry="", qry_image_path="")], "no usable row"),
    ],
)
def test_bad_training_data_fails_fast_naming_source_row_and_file(
    tmp_path, image_dir, backbone, synthetic, capsys, case, rows, message
):
    config = _bad_source(tmp_path, rows, image_dir)
    recipe = _recipe(tmp_path, backbone, synthetic, dataset_config=str(config))
    assert train.main([str(recipe)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "'Bad'" in err, err
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_missing_logging_package_fails_before_any_work(tmp_path, backbone, synthetic, capsys, monkeypatch):
    monkeypatch.setattr(integration_utils, "is_tensorboard_available", lambda: False)  # a machine without it
    recipe = _recipe(tmp_path, backbone, synthetic, report_to=["tensorboard"], do_eval=True)
    assert train.main([str(recipe)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: report_to TensorBoardCallback") and "tensorboard" in err, err
    assert not (tmp_path / "out" / "eval").exists() and not (tmp_path / "out" / "model.safetensors").exists()


def test_demo_recipe_parses_and_needs_no_logging_package(monkeypatch):
    monkeypatch.setattr(integration_utils, "is_tensorboard_available", lambda: False)
    parser = HfArgumentParser(TRAIN_ARGUMENTS)
    _, data_args, _, training_args, demo_args = parser.parse_yaml_file(str(REPO / "configs" / "demo.yaml"))
    assert demo_args.tiny_backbone and data_args.dataset_config == "synthetic" and training_args.use_cpu
    check_reporting(training_args.report_to)  # raises DataError for any integration whose package is missing


RECIPE_BACKBONES = {  # backbone type of each recipe whose backbone is stock transformers (Phi-3.5-V is Hub code)
    "llava_next_lora_highres.yaml": "llava_next",
    "qwen2vl_2b_lora.yaml": "qwen2_vl",
    "qwen3vl_2b_lora.yaml": "qwen3_vl",
    "gemma3_4b_lora.yaml": "gemma3",
}


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_every_recipe_parses_and_its_settings_validate(name):
    recipe = {**yaml.safe_load((REPO / "configs" / name).read_text()), "bf16": False, "use_cpu": True}  # GPU recipes
    model_args, *_ = HfArgumentParser(TRAIN_ARGUMENTS).parse_dict(recipe)  # an unknown key raises
    if name in RECIPE_BACKBONES:
        config = Vlm2VecConfig(backbone_config={"model_type": RECIPE_BACKBONES[name]}, **model_args.settings())
        expected_token = {"llava_next": "<image>", "gemma3": "<start_of_image>"}.get(
            config.backbone_type, "<|image_pad|>"
        )
        assert config.image_token == expected_token


def test_unknown_source_and_corrupt_image_exit_non_zero(tmp_path, image_dir, backbone, synthetic):
    missing = tmp_path / "missing.yaml"
    missing.write_text(
        yaml.safe_dump(
            {"sources": [{"name": "Ghost", "path": str(tmp_path / "ghost.parquet"), "image_dir": str(image_dir)}]}
        )
    )
    proc = _run([str(_recipe(tmp_path, backbone, synthetic, dataset_config=str(missing)))])
    assert proc.returncode == 2 and "Ghost" in proc.stderr and "error:" in proc.stderr, proc.stderr[-2000:]

    corrupt = _bad_source(tmp_path, [_row(qry_image_path="corrupt.png")] * 8, image_dir, name="Corrupt")
    proc = _run([str(_recipe(tmp_path, backbone, synthetic, dataset_config=str(corrupt)))])
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Corrupt" in proc.stderr and "corrupt.png" in proc.stderr and "row" in proc.stderr


def _truncated_copy(folder: Path, target: Path) -> Path:
    """A copy of ``folder`` whose safetensors file lost its second half (an interrupted download or copy)."""
    subprocess.run(["cp", "-r", str(folder), str(target)], check=True)
    weights = next(target.glob("*.safetensors"))
    os.truncate(weights, weights.stat().st_size // 2)
    return target


def _bad_recipe(case: str, tmp_path: Path, backbone: Path, image_dir: Path) -> dict:
    """Recipe overrides of one careless-user case (see the parametrisation below)."""
    if case == "output_dir is a file":
        (tmp_path / "notes.txt").write_text("mine")
        return {"output_dir": str(tmp_path / "notes.txt")}
    if case == "resume from a missing folder":
        return {"resume_from_checkpoint": str(tmp_path / "out" / "checkpoint-9")}
    if case == "resume: true without checkpoints":
        return {"resume_from_checkpoint": "true"}
    if case == "resume from a truncated checkpoint":
        checkpoint = _truncated_copy(backbone, tmp_path / "checkpoint-2")
        (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": 2}))
        return {"resume_from_checkpoint": str(checkpoint)}
    if case == "truncated backbone weights":
        return {"model_name_or_path": str(_truncated_copy(backbone, tmp_path / "truncated-backbone"))}
    if case in ("two placeholders", "literal image token", "100k-character row", "lone surrogate"):
        text = {
            "two placeholders": "<|image_1|> left <|image_1|> right",
            "literal image token": "<|image_pad|> Represent the given image.",
            "100k-character row": "word " * 20000,
            "lone surrogate": "caf\ud800",
        }[case]
        rows = [_row(pos_text=f"label {i}") for i in range(8)]
        rows[5]["qry"] = text
        return {"dataset_config": str(_bad_source(tmp_path, rows, image_dir))}
    return {
        "unknown key": {"per_device_batch_size": 8},
        "chunk size 0": {"gc_q_chunk_size": 0},
        "non-finite learning rate": {"learning_rate": float("inf")},
        "eval batch size 0": {"eval_batch_size": 0, "do_eval": True},
        "corpus smaller than one global batch": {"per_device_train_batch_size": 512},
        "batch of 1 without hard negatives": {"per_device_train_batch_size": 1},
        "max_length below the image tokens": {"max_length": 3},
        "sub-batch 0": {"sampler_mode": "homogeneous", "homogeneous_sub_batch": 0},
        "sub-batch not dividing the batch": {"sampler_mode": "homogeneous", "homogeneous_sub_batch": 3},
        "LoRA rank 0": {"lora": True, "lora_r": 0},
        "LoRA targets nothing": {"lora": True, "lora_target_modules": "no_such_proj"},
        "negative learning rate": {"learning_rate": -1.0},
        "no training step": {"max_steps": 0, "num_train_epochs": 0},
        "margin that masks everything": {"false_negative_margin": 2.0},
        "NaN margin": {"false_negative_margin": float("nan")},
    }[case]


@pytest.mark.parametrize(
    "case, message",
    [
        ("unknown key", "per_device_batch_size"),
        ("chunk size 0", "gc_q_chunk_size must be >= 1"),
        ("non-finite learning rate", "learning_rate must be a finite number"),
        ("eval batch size 0", "eval_batch_size must be a positive integer"),
        ("output_dir is a file", "notes.txt': output path exists and is not a folder"),
        ("resume from a missing folder", "checkpoint-9': resume_from_checkpoint is not a folder"),
        ("resume: true without checkpoints", "holds no checkpoint"),
        ("resume from a truncated checkpoint", "model.safetensors': corrupt or truncated safetensors"),
        ("truncated backbone weights", "truncated-backbone': cannot load the model"),
        ("corpus smaller than one global batch", "fewer than one global batch of 512"),
        ("batch of 1 without hard negatives", "loss is constantly 0"),
        ("max_length below the image tokens", "row 0, file '"),  # the source's first image row, named
        ("sub-batch 0", "homogeneous_sub_batch must be >= 1"),
        ("sub-batch not dividing the batch", "not a multiple of homogeneous_sub_batch 3"),
        ("LoRA rank 0", "lora_r must be >= 1"),
        ("LoRA targets nothing", "lora_target_modules 'no_such_proj' selects no module"),
        ("negative learning rate", "learning_rate must be >= 0"),
        ("no training step", "leave no training step"),
        ("margin that masks everything", "false_negative_margin must be below 2"),
        ("NaN margin", "false_negative_margin must be a finite number"),
        ("two placeholders", "'Bad', row 5, file '"),
        ("two placeholders", "one image placeholder <|image_1|>, found 2"),
        ("literal image token", "row 5, file '"),
        ("literal image token", "column qry: text holds the backbone's image token '<|image_pad|>'"),
        ("100k-character row", "row 5, file '"),
        ("100k-character row", "set max_length to truncate"),
        ("lone surrogate", "row 5, file '"),
        ("lone surrogate", "line 6 is not valid UTF-8 text"),
    ],
)
def test_bad_input_is_one_error_line_and_exit_2_before_any_work(
    tmp_path, image_dir, backbone, synthetic, capsys, case, message
):
    recipe = _recipe(tmp_path, backbone, synthetic, **_bad_recipe(case, tmp_path, backbone, image_dir))
    capsys.readouterr()
    assert train.main([str(recipe)]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in err, err
    assert not (tmp_path / "out" / "model.safetensors").exists() and not (tmp_path / "out" / "eval").exists()


def test_a_new_run_sets_the_previous_results_aside_and_logs_dropped_rows(tmp_path, backbone, synthetic):
    rows = pq.read_table(synthetic["train"]["SynCLS"]).to_pylist()
    rows[3]["qry"], rows[3]["qry_image_path"] = "", ""  # an empty query: dropped and counted in the log
    data = tmp_path / "cls.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = tmp_path / "data.yaml"
    config.write_text(
        yaml.safe_dump({"sources": [{"name": "Cls", "path": str(data), "image_dir": str(synthetic["root"])}]})
    )
    stale = tmp_path / "out" / "eval"
    stale.mkdir(parents=True)
    (stale / "summary.json").write_text(json.dumps({"model": "an earlier model"}))
    proc = _run([str(_recipe(tmp_path, backbone, synthetic, dataset_config=str(config), max_steps=1))])
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"source 'Cls': {len(rows) - 1} of {len(rows)} rows kept (1 dropped" in proc.stderr
    assert not stale.exists()  # the card of the new model cannot pick it up
    assert json.loads((tmp_path / "out" / "eval.previous-1" / "summary.json").read_text()) == {
        "model": "an earlier model"
    }
    assert "an earlier model" not in (tmp_path / "out" / "README.md").read_text()
