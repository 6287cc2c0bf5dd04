"""Hard-negative mining: selection rules by hand, brute force from encode(), resume after a kill, bad input, the
mined set trains with train.py, and two processes write what one writes."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from launch import TWO_CPU_PROCESSES

import mine_hard_negatives as mine_script
from modeling_vlm2vec.data.sources import load_corpus
from modeling_vlm2vec.demo.synthetic import write_synthetic_mmeb
from modeling_vlm2vec.loading import load_vlm2vec
from modeling_vlm2vec.mining import MiningArguments, SelectionRule, mine_hard_negatives, miner, prepare_mining

REPO = Path(__file__).resolve().parents[1]
TASKS = ("SynCLS", "SynT2I")  # a classification source (mines labels) and a retrieval source (mines images)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    paths = write_synthetic_mmeb(tmp_path_factory.mktemp("syn") / "data", n_train_per_task=12, n_eval_per_task=1)
    config = paths["root"].parent / "mine.yaml"
    sources = [
        {"name": t, "path": str(paths["train"][t]), "image_dir": str(paths["root"]), "weight": w}
        for t, w in zip(TASKS, (2.0, 1.0))
    ]
    config.write_text(yaml.safe_dump({"sources": sources}))
    return {"config": config, "root": paths["root"]}


@pytest.fixture(scope="module")
def backbone(tiny_backbone_dir):
    return tiny_backbone_dir("qwen2_vl")


@pytest.fixture(scope="module")
def teacher(backbone):
    return load_vlm2vec(backbone)  # a raw VLM, wrapped the way the command line wraps it


def _args(data, out, **kw) -> MiningArguments:
    kw.setdefault("num_negatives", 3)
    kw.setdefault("cache_block_size", 7)
    kw.setdefault("batch_size", 4)
    return MiningArguments(model_name_or_path="teacher", dataset_config=str(data["config"]), output_dir=str(out), **kw)


def _read(out: Path, name: str) -> dict:
    return pq.read_table(out / f"{name}.parquet").to_pydict()


# -- selection rules, against hand-computed expectations ------------------------------------------------------------


# -- end to end with the tiny teacher --------------------------------------------------------------------------------


def _brute_force(teacher, source, rule: SelectionRule, pool: list | None = None) -> tuple[list, list, list]:
    """Each row's negatives as (text, image path relative to the source), their scores and the positive score, from
    one plain encode() of the rows' queries and the pool (default: the source's unique positives)."""
    examples = [source.example(i) for i in range(len(source))]
    pool = sorted(set(pool or [(e["pos_text"], e["pos_image"]) for e in examples]), key=str)
    queries = teacher.encode([{"text": e["qry"] or None, "image": e["qry_image"]} for e in examples], batch_size=3)
    cands = teacher.encode([{"text": t or None, "image": i} for t, i in pool], batch_size=5)
    positives = teacher.encode([{"text": e["pos_text"] or None, "image": e["pos_image"]} for e in examples])
    negatives, neg_scores, pos_scores = [], [], []
    root = source.image_dir.resolve()
    for r, e in enumerate(examples):
        pos = float(queries[r] @ positives[r])
        scores = (cands @ queries[r]).tolist()
        kept = sorted(
            (-s, c)
            for s, c in zip(scores, pool)
            if c != (e["pos_text"], e["pos_image"])
            and (rule.max_score_ratio is None or s <= rule.max_score_ratio * pos)
            and (rule.margin is None or s <= pos - rule.margin)
        )[rule.skip_top : rule.skip_top + rule.num_negatives]
        negatives.append([(t, str(Path(i).relative_to(root)) if i else "") for _, (t, i) in kept])
        neg_scores.append([-s for s, _ in kept])
        pos_scores.append(pos)
    return negatives, neg_scores, pos_scores


def _pool(kind: str, data, tmp_path) -> tuple[str | None, list | None]:
    """A ``--candidate_pool`` of the given kind and its items as (text, absolute image path or None)."""
    root = data["root"].resolve()
    if kind == "own":
        return None, None
    if kind == "corpus":  # texts and images, one identical to a SynCLS positive and one to a SynT2I positive
        cls_label = pq.read_table(root / "train" / "SynCLS.parquet").column("pos_text")[0].as_py()
        t2i = pq.read_table(root / "train" / "SynT2I.parquet").to_pylist()[0]
        rows = [
            {"text": cls_label},
            {"text": "a purple square"},
            {"text": "green circle", "image_path": ""},
            {"text": t2i["pos_text"], "image_path": t2i["pos_image_path"]},
            {"image_path": "images/train/SynI2T/00001.png"},
            {"text": "<|image_1|> Represent the given image.", "image_path": "images/train/SynCLS/00002.png"},
        ]
        corpus = tmp_path / "pool.jsonl"
        corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
        items = [(r.get("text", ""), str(root / r["image_path"]) if r.get("image_path") else None) for r in rows]
        return str(corpus), items
    config = tmp_path / "pool.yaml"  # another data config: the unique positives of its sources
    config.write_text(
        yaml.safe_dump(
            {
                "sources": [
                    {
                        "name": "captions",
                        "path": str(root / "train" / "SynI2T.parquet"),
                        "image_dir": str(root),
                        "num_samples": 6,
                    }
                ]
            }
        )
    )
    source = load_corpus(config).sources[0]
    return str(config), [(e["pos_text"], e["pos_image"]) for e in map(source.example, range(len(source)))]


@pytest.mark.parametrize("pool_kind", ["own", "corpus", "config"])
def test_mined_negatives_and_scores_equal_a_brute_force_reference(teacher, data, tmp_path, pool_kind):
    candidate_pool, pool_items = _pool(pool_kind, data, tmp_path)
    args = _args(
        data,
        tmp_path / "out",
        # the filters on the source's own positives; off for the foreign pools, which a random teacher may rank
        # above every positive (the filters do not depend on the pool)
        max_score_ratio=0.999 if pool_kind == "own" else 0.0,
        margin=0.0005 if pool_kind == "own" else None,
        skip_top=1,
        candidate_pool=candidate_pool,
        candidate_image_dir=str(data["root"]) if pool_kind == "corpus" else None,
    )
    plan = prepare_mining(args)
    report = mine_hard_negatives(teacher, plan, args, show_progress_bar=False)
    assert set(report) == set(TASKS)
    for plan_source in plan.sources:
        got = _read(tmp_path / "out", plan_source.name)
        negatives, neg_scores, pos_scores = _brute_force(teacher, plan_source.source, args.rule, pool_items)
        assert [list(zip(t, i)) for t, i in zip(got["neg_text"], got["neg_image_path"])] == negatives
        assert sum(map(len, negatives)) >= 3  # the reference is not trivially empty
        for mined, want in zip(got["neg_scores"], neg_scores):
            np.testing.assert_allclose(mined, want, atol=1e-5)
        np.testing.assert_allclose(got["pos_score"], pos_scores, atol=1e-5)
        source_table = plan_source.source.table.to_pydict()
        for column in ("qry", "qry_image_path", "pos_text", "pos_image_path"):
            assert got[column] == [v or "" for v in source_table[column]]
        # a row never gets its own positive (or an item identical to it) back as a negative
        for row, (texts, images) in enumerate(zip(got["neg_text"], got["neg_image_path"])):
            assert (got["pos_text"][row], got["pos_image_path"][row]) not in set(zip(texts, images))


def test_mined_config_trains_with_train_py(teacher, data, backbone, tmp_path):
    out = tmp_path / "mined"
    args = _args(data, out, num_negatives=2)
    mine_hard_negatives(teacher, prepare_mining(args), args, show_progress_bar=False)
    config = yaml.safe_load((out / "data_config.yaml").read_text())
    assert [(s["name"], s["weight"], s["image_dir"]) for s in config["sources"]] == [
        ("SynCLS", 2.0, str(data["root"].resolve())),
        ("SynT2I", 1.0, str(data["root"].resolve())),
    ]
    corpus = load_corpus(out / "data_config.yaml")
    example = corpus[(1, 0)]  # a retrieval row: negatives are images
    assert 1 <= len(example["neg_images"]) <= 2 and all(os.path.isfile(p) for p in example["neg_images"])
    recipe = {
        "output_dir": str(tmp_path / "trained"),
        "model_name_or_path": str(backbone),
        "dataset_config": str(out / "data_config.yaml"),
        "per_device_train_batch_size": 4,
        "max_steps": 2,
        "use_cpu": True,
        "report_to": [],
        "do_eval": False,
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
    }
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    proc = _run_script("train.py", [str(tmp_path / "recipe.yaml")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "trained" / "model.safetensors").is_file()


class _Teacher(torch.nn.Module):
    """The teacher as seen by the miner, counting the items it encodes and failing on call ``fail_on`` (a kill)."""

    def __init__(self, model, fail_on: int | None = None):
        super().__init__()
        self.model, self.config, self.processor = model, model.config, model.processor
        self.fail_on, self.calls = fail_on, []

    def encode(self, inputs, **kw):
        if len(self.calls) + 1 == self.fail_on:
            raise KeyboardInterrupt("killed")
        self.calls.append(len(inputs))
        return self.model.encode(inputs, **kw)


def test_a_killed_run_resumes_from_its_cache_and_writes_the_same_set(teacher, data, tmp_path, monkeypatch):
    straight = _args(data, tmp_path / "straight")
    plan = prepare_mining(straight)
    full = _Teacher(teacher)
    mine_hard_negatives(full, plan, straight, show_progress_bar=False)
    assert sum(full.calls) == len(plan.table)  # every unique item encoded exactly once
    assert len(plan.table) < sum(2 * len(p.query_ids) for p in plan.sources)  # shared items were deduplicated

    args = _args(data, tmp_path / "resumed")
    with pytest.raises(KeyboardInterrupt):
        mine_hard_negatives(_Teacher(teacher, fail_on=3), plan, args, show_progress_bar=False)
    leftovers = sorted(p.name for p in (tmp_path / "resumed").rglob("*") if p.is_file())
    assert leftovers == ["block-000000.safetensors", "block-000001.safetensors"]  # no output, nothing torn
    resumed = _Teacher(teacher)
    mine_hard_negatives(resumed, plan, args, show_progress_bar=False)
    assert sum(resumed.calls) == len(plan.table) - 2 * args.cache_block_size
    for name in TASKS:
        assert _read(tmp_path / "resumed", name) == _read(tmp_path / "straight", name)
    assert (tmp_path / "resumed" / "data_config.yaml").is_file()

    # killed again while the files of a new run replace those of the finished one: no config points at the mix
    written = []

    def killed_after_one(path, table):
        if written:
            raise KeyboardInterrupt("killed")
        written.append(path)
        original(path, table)

    original = miner._write_parquet
    monkeypatch.setattr(miner, "_write_parquet", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        mine_hard_negatives(_Teacher(teacher), plan, args, show_progress_bar=False)
    assert not (tmp_path / "resumed" / "data_config.yaml").exists()
    assert not list((tmp_path / "resumed").glob(".*.tmp"))


# -- command line -------------------------------------------------------------------------------------------------


def _run_script(script: str, args: list[str], launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1")
    cmd = (launcher or [sys.executable]) + [str(REPO / script)] + args
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--num_negatives", "0"], "num_negatives must be an integer >= 1"),
        (["--max_score_ratio", "-1"], "max_score_ratio must be >= 0"),
        (["--candidate_pool", "missing.jsonl"], "candidate pool file not found"),
    ],
)
def test_bad_arguments_exit_2_before_any_work(data, tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    argv = ["--model_name_or_path", "unused", "--dataset_config", str(data["config"]), "--output_dir", str(out)]
    assert mine_script.main(argv + extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1]
    assert not out.exists()


def test_bad_pool_and_outputs_name_the_place(data, tmp_path, capsys):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    from PIL import Image

    Image.new("RGB", (8, 8)).save(outside / "x.png")
    corpus = outside / "pool.jsonl"
    corpus.write_text('{"text": "a red cross"}\n{"image_path": "x.png"}\n')
    argv = ["--model_name_or_path", "unused", "--dataset_config", str(data["config"])]
    # the pool's image is not under the sources' image_dir: its path could not be written relative to it
    assert mine_script.main(argv + ["--output_dir", str(tmp_path / "o"), "--candidate_pool", str(corpus)]) == 2
    err = capsys.readouterr().err
    assert "outside this source's image_dir" in err and "SynCLS" in err and "x.png" in err
    corpus.write_text('{"text": "a red cross"}\n{"text": ""}\n')
    assert mine_script.main(argv + ["--output_dir", str(tmp_path / "o"), "--candidate_pool", str(corpus)]) == 2
    assert "row 1" in capsys.readouterr().err
    # the output data_config.yaml would replace the input config
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "data_config.yaml").write_bytes(data["config"].read_bytes())
    argv = ["--model_name_or_path", "unused", "--dataset_config", str(inputs / "data_config.yaml")]
    assert mine_script.main(argv + ["--output_dir", str(inputs)]) == 2
    assert "would overwrite or add files to an input" in capsys.readouterr().err
    # a folder holding someone else's data_config.yaml (here the synthetic data's own) is refused too
    before = (data["root"] / "data_config.yaml").read_bytes()
    assert mine_script.main(argv + ["--output_dir", str(data["root"])]) == 2
    assert "not written by this command" in capsys.readouterr().err
    assert (data["root"] / "data_config.yaml").read_bytes() == before and not (tmp_path / "o").exists()
    assert sorted(p.name for p in inputs.iterdir()) == ["data_config.yaml"]


def test_two_processes_write_what_one_process_writes(backbone, data, tmp_path):
    common = [
        "--model_name_or_path",
        str(backbone),
        "--dataset_config",
        str(data["config"]),
        "--num_negatives",
        "2",
        "--cache_block_size",
        "5",
        "--batch_size",
        "4",
    ]
    one = _run_script("mine_hard_negatives.py", common + ["--output_dir", str(tmp_path / "one")])
    assert one.returncode == 0, one.stderr[-3000:]
    two = _run_script("mine_hard_negatives.py", common + ["--output_dir", str(tmp_path / "two")], TWO_CPU_PROCESSES)
    assert two.returncode == 0, two.stderr[-3000:]
    for name in TASKS:
        assert _read(tmp_path / "two", name) == _read(tmp_path / "one", name)
    shares = re.findall(r"process (\d) of 2: (\d+) of \d+ cache blocks to encode", two.stderr)
    assert sorted(rank for rank, _ in shares) == ["0", "1"]  # each process encoded a share of the blocks
    assert all(int(blocks) >= 1 for _, blocks in shares)
    blocks = sorted(p.name for p in (tmp_path / "two").rglob("block-*.safetensors"))
    assert blocks == sorted(p.name for p in (tmp_path / "one").rglob("block-*.safetensors")) and len(blocks) > 1


def test_a_ratio_of_zero_turns_the_ratio_filter_off(data, tmp_path):
    assert _args(data, tmp_path, max_score_ratio=0.0).rule.max_score_ratio is None
    assert _args(data, tmp_path).rule == SelectionRule(num_negatives=3, max_score_ratio=0.95, margin=None, skip_top=0)
