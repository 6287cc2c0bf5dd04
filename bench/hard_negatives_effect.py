"""Effect of mined hard negatives, hardness weighting and Matryoshka training on the demo model (held-out hit@1).

Everything runs through the public command lines, each in its own process, from the repository root:

1. data: the bundled synthetic MMEB-style data (``write_synthetic_mmeb``, the demo's 512 training rows per task) and
   the opt-in near-duplicate held-out split (``write_near_duplicate_eval``: every candidate differs from the positive
   in one attribute). The training rows are copied without their negative columns, so run (a) sees in-batch
   negatives only and the mined runs see only what the teacher mined.
2. ``train.py <work>/recipes/<run>.yaml``: the demo recipe ``configs/demo.yaml`` (tiny random Qwen2-VL, hidden size
   128, GradCache) with ``max_steps`` and ``per_device_train_batch_size`` from the flags, the same for every run, no
   evaluation inside, and:

   * (a) ``inbatch``: in-batch negatives only;
   * (b) ``mined``: ``mine_hard_negatives.py`` with model (a) as the teacher, ``--num_negatives`` per row;
   * (c) ``mined_alpha``: (b) + ``--hardness_alpha``;
   * (d) ``mined_alpha_mrl``: (c) + ``--matryoshka_dims``.

3. ``evaluate_mmeb.py --subset_name synthetic`` of each exported model on both held-out splits (standard: 10
   candidates per query; near-duplicate: 3-8), and for (d) at every Matryoshka size (``--truncate_dim``, one shared
   embedding cache per split).

Prints one JSON object (last line): hit@1 per run, split, size and task, wall times (the mining command's whole run,
start-up and model loading included, over its unique items), the recipes' changed keys and the commands.
Mining throughput against plain ``encode()`` is ``bench/mining_throughput.py`` (section 7 of BENCHMARKS.md);
``--mining-throughput`` runs it once more at the end and adds its result.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import yaml
from common import CACHE_DIR, machine, report, run_json

from modeling_vlm2vec.demo.synthetic import TASKS, write_near_duplicate_eval, write_synthetic_mmeb  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RUNS = ("inbatch", "mined", "mined_alpha", "mined_alpha_mrl")


def run(command: list[str], log: Path) -> float:
    """Run ``python <command>`` from the repository root (output into ``log``); return its wall seconds."""
    print("$ python " + " ".join(command), file=sys.stderr, flush=True)
    start = time.perf_counter()
    with log.open("w") as out:
        completed = subprocess.run([sys.executable, *command], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    if completed.returncode != 0:
        raise RuntimeError(f"{command[0]} failed ({completed.returncode}); see {log}")
    return time.perf_counter() - start


def without_negatives(data: dict, folder: Path) -> Path:
    """Copy the synthetic training sources without ``neg_*`` columns; return the new data config."""
    folder.mkdir(parents=True, exist_ok=True)
    sources = []
    for task, path in data["train"].items():
        table = pq.read_table(path)
        pq.write_table(table.drop_columns([c for c in table.column_names if c.startswith("neg_")]), folder / path.name)
        sources.append({"name": task, "path": path.name, "image_dir": str(data["root"].resolve())})
    config = folder / "data_config.yaml"
    config.write_text(yaml.safe_dump({"sources": sources}, sort_keys=False))
    return config


def hit_at_1(summary_file: Path) -> dict:
    summary = json.loads(summary_file.read_text())
    scores = {name: round(d["hit@1"], 4) for name, d in summary["datasets"].items()}
    return {"overall": round(summary["aggregates"]["Overall"]["hit@1"], 4), **scores}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200, help="training steps of every run")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-negatives", type=int, default=1, help="mined negatives per row")
    parser.add_argument("--hardness-alpha", type=float, default=9.0)
    parser.add_argument("--matryoshka-dims", type=int, nargs="+", default=[32, 64], help="sizes below the full 128")
    parser.add_argument("--train-per-task", type=int, default=512)
    parser.add_argument("--eval-per-task", type=int, default=100)
    parser.add_argument("--work-dir", type=Path, default=CACHE_DIR / "hard-negatives-effect")
    parser.add_argument("--mining-throughput", action="store_true", help="also run bench/mining_throughput.py")
    args = parser.parse_args()

    work = args.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    data = write_synthetic_mmeb(work / "data", n_train_per_task=args.train_per_task, n_eval_per_task=args.eval_per_task)
    near = write_near_duplicate_eval(work / "near", n_eval_per_task=args.eval_per_task)
    inbatch_config = without_negatives(data, work / "inbatch-data")
    splits = {"standard": (data["eval_root"], data["root"]), "near_duplicate": (near["eval_root"], near["root"])}
    demo = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    common = {"model_name_or_path": str(work / "backbone"), "max_steps": args.steps, "do_eval": False,
              "per_device_train_batch_size": args.batch_size, "save_steps": args.steps,
              "logging_steps": 50}  # fmt: skip
    mined_config = work / "mined" / "data_config.yaml"
    alpha = {"dataset_config": str(mined_config), "hardness_alpha": args.hardness_alpha}
    overrides = {
        "inbatch": {"dataset_config": str(inbatch_config)},
        "mined": {"dataset_config": str(mined_config)},
        "mined_alpha": alpha,
        "mined_alpha_mrl": {**alpha, "matryoshka_dims": args.matryoshka_dims},
    }
    (work / "recipes").mkdir(exist_ok=True)
    commands, seconds, results = [], {}, {}
    for name in RUNS:
        if name == "mined":  # the teacher is model (a)
            mine = ["mine_hard_negatives.py", "--model_name_or_path", str(work / "inbatch"), "--dataset_config",
                    str(inbatch_config), "--output_dir", str(work / "mined"), "--num_negatives",
                    str(args.num_negatives), "--batch_size", "32"]  # fmt: skip
            commands.append(mine)
            seconds["mining"] = round(run(mine, work / "mine.log"), 1)
        recipe = work / "recipes" / f"{name}.yaml"  # the demo recipe with these keys changed
        recipe.write_text(yaml.safe_dump({**demo, **common, "output_dir": str(work / name), **overrides[name]}))
        train = ["train.py", str(recipe)]
        commands.append(train)
        seconds[f"train_{name}"] = round(run(train, work / f"train_{name}.log"), 1)
        results[name] = {}
        sizes = [*args.matryoshka_dims, None] if name == "mined_alpha_mrl" else [None]
        for split, (eval_root, image_dir) in splits.items():
            for size in sizes:
                out = work / "eval" / name / split / (f"dim{size}" if size else "full")
                evaluate = ["evaluate_mmeb.py", "--model_name_or_path", str(work / name), "--dataset_name",
                            str(eval_root), "--subset_name", "synthetic", "--image_dir", str(image_dir),
                            "--output_dir", str(out), "--cache_dir", str(out.parent / "cache")]  # fmt: skip
                if size:
                    evaluate += ["--truncate_dim", str(size)]
                commands.append(evaluate)
                out.parent.mkdir(parents=True, exist_ok=True)
                run(evaluate, out.parent / f"{out.name}.log")
                results[name].setdefault(split, {})[f"dim{size}" if size else "full"] = hit_at_1(out / "summary.json")
    mined_rows = {s["name"]: pq.read_metadata(mined_config.parent / s["path"]).num_rows for s in
                  yaml.safe_load(mined_config.read_text())["sources"]}  # fmt: skip
    log = (work / "mine.log").read_text()
    unique = int(re.search(r"(\d+) unique items to embed", log).group(1))
    per_row = dict(re.findall(r"miner: (\w+): \d+ rows, pool of \d+, ([\d.]+) negatives per row", log))
    result = {
        "benchmark": "hard_negatives_effect",
        "steps": args.steps,
        "batch_size": args.batch_size,
        "num_negatives": args.num_negatives,
        "hardness_alpha": args.hardness_alpha,
        "matryoshka_dims": args.matryoshka_dims,
        "train_per_task": args.train_per_task,
        "eval_per_task": args.eval_per_task,
        "tasks": list(TASKS),
        "mined_rows": mined_rows,
        "mined_negatives_per_row": {k: float(v) for k, v in per_row.items()},
        "mining_unique_items": unique,
        "mining_cli_items_per_second": round(unique / seconds["mining"], 1),  # wall time: start-up and loading too
        "hit@1": results,
        "seconds": seconds,
        "recipe_overrides": {"all": common, **overrides},
        "commands": [" ".join(["python", *c]) for c in commands],
    }
    if args.mining_throughput:
        result["mining_throughput"] = run_json(
            [str(ROOT / "bench" / "mining_throughput.py"), "--per-task", "32", "--repeats", "3"]
        )
    report({**result, "machine": machine()})


if __name__ == "__main__":
    main()
