"""Hard-negative mining end to end: validate, encode unique items (cached, sharded), select, write a training set.

Files written under ``output_dir`` (atomically, by process 0):

- ``<source name>.parquet`` per source, in the MMEB-train schema: ``qry``, ``qry_image_path``, ``pos_text``,
  ``pos_image_path`` as in the input rows, ``neg_text`` / ``neg_image_path`` as lists of the mined negatives (best
  first; image paths relative to the source's ``image_dir``, ``""`` for none), plus ``pos_score`` (float) and
  ``neg_scores`` (list of floats, aligned with the negatives) for auditing;
- ``data_config.yaml`` (last, so its presence means the set is complete): the same source names, weights and image
  folders, each pointing at its parquet file, ready for ``train.py --dataset_config``;
- ``cache/<model fingerprint>/block-*.safetensors``: the embedding cache (see :mod:`.embeddings`).

The rows are those ``train.py`` would use with the same ``seed`` (``num_samples`` already applied), so the written
config carries no ``num_samples``.
"""

from __future__ import annotations

import io
import logging
import re
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import yaml
from transformers.utils.logging import tqdm

from ..common.distributed import barrier, rank_and_world
from ..common.errors import DataError
from ..common.files import write_bytes_atomic, write_text_atomic
from ..common.fingerprint import model_fingerprint
from ..data.data_config import load_data_config
from ..data.images import load_image
from ..data.prompt_checks import check_item_prompts
from ..data.sources import REQUIRED_COLUMNS, load_source
from .embeddings import encode_with_cache
from .pool import CandidatePool, ItemTable, SourcePlan, load_candidate_pool, plan_sources
from .selection import SelectionRule, select_negatives

logger = logging.getLogger(__name__)

_SAFE_NAME = re.compile(r"^[\w][\w.\- ]*$")
HEADER = "# Mined by mine_hard_negatives.py"  # first line of a written data_config.yaml
OUTPUT_SCHEMA = pa.schema(
    [(c, pa.string()) for c in REQUIRED_COLUMNS]
    + [
        ("neg_text", pa.list_(pa.string())),
        ("neg_image_path", pa.list_(pa.string())),
        ("pos_score", pa.float32()),
        ("neg_scores", pa.list_(pa.float32())),
    ]
)


@dataclass
class MiningArguments:
    """Command-line arguments of ``mine_hard_negatives.py``."""

    model_name_or_path: str = field(metadata={"help": "Teacher: a Vlm2Vec checkpoint or a raw VLM (folder or Hub id)."})
    dataset_config: str = field(metadata={"help": "Data-config YAML of the sources to mine (as for train.py)."})
    output_dir: str = field(metadata={"help": "Where the mined parquet files, data_config.yaml and the cache go."})
    num_negatives: int = field(default=8, metadata={"help": "Hard negatives kept per row."})
    max_score_ratio: float | None = field(
        default=0.95,
        metadata={"help": "Drop candidates scoring above this times the positive's score (0 or null: off)."},
    )
    margin: float | None = field(
        default=None,
        metadata={"help": "Drop candidates scoring above the positive's score minus this (default: off)."},
    )
    skip_top: int = field(default=0, metadata={"help": "Skip this many best surviving candidates."})
    batch_size: int = field(default=32, metadata={"help": "Items per forward pass, per process."})
    candidate_pool: str | None = field(
        default=None,
        metadata={
            "help": "Another data config (its unique positives) or a corpus file (.jsonl/.parquet with text, "
            "image_path) as the pool of every source. Default: each source's own unique positives."
        },
    )
    candidate_image_dir: str | None = field(
        default=None, metadata={"help": "Image root of a corpus-file pool (default: the file's folder)."}
    )
    seed: int = field(default=0, metadata={"help": "Sampling seed for num_samples; use train.py's seed."})
    cache_block_size: int = field(default=1024, metadata={"help": "Items per embedding-cache file."})
    dtype: str = field(default="auto", metadata={"help": "auto, float32, bfloat16 or float16."})
    device: str | None = field(default=None, metadata={"help": "Model device (default: this process's device)."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow Hub code of a raw VLM or its processor."})

    @property
    def rule(self) -> SelectionRule:
        return SelectionRule(self.num_negatives, self.max_score_ratio or None, self.margin, self.skip_top)


@dataclass
class MiningPlan:
    """Validated mining inputs: the unique items and one :class:`SourcePlan` per source, in config order."""

    table: ItemTable
    sources: list[SourcePlan]
    pool: CandidatePool | None = None


def _check_arguments(args: MiningArguments) -> None:
    checks = (("num_negatives", 1), ("skip_top", 0), ("batch_size", 1), ("cache_block_size", 1), ("seed", 0))
    for name, low in checks:
        value = getattr(args, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise DataError(f"--{name} must be an integer >= {low}, got {value!r}")
    if args.max_score_ratio is not None and not args.max_score_ratio >= 0:
        raise DataError(f"--max_score_ratio must be >= 0 (0 for off), got {args.max_score_ratio!r}")
    if args.margin is not None and not np.isfinite(args.margin):
        raise DataError(f"--margin must be a finite number (or null for off), got {args.margin!r}")


def _check_outputs(args: MiningArguments, plans: list[SourcePlan], pool: CandidatePool | None) -> None:
    """Output names must be plain file names, and no output may overwrite or land inside an input: the data config,
    the sources' files, the candidate pool and the files a pool data config names."""
    out = Path(args.output_dir).resolve()
    inputs = [Path(args.dataset_config).resolve()] + [Path(p.source.file).resolve() for p in plans]
    inputs += [file.resolve() for file in (pool.files if pool else [])]
    for plan in plans:
        if not _SAFE_NAME.match(plan.name):
            raise DataError(
                "source name cannot be a file name (letters, digits, '.', '-', '_', spaces)",
                dataset=plan.name,
                file=args.dataset_config,
            )
    outputs = [out / f"{p.name}.parquet" for p in plans] + [out / "data_config.yaml"]
    for target in inputs:
        if target in outputs or (target.is_dir() and (out == target or target in out.parents)):
            raise DataError(f"output_dir {str(out)!r} would overwrite or add files to an input", file=str(target))
    config = out / "data_config.yaml"
    if config.is_file() and not config.read_text(encoding="utf-8", errors="replace").startswith(HEADER):
        raise DataError(
            "output_dir holds a data_config.yaml not written by this command; choose another output_dir",
            file=str(config),
        )


def prepare_mining(args: MiningArguments) -> MiningPlan:
    """Load and validate everything (arguments, sources, texts, every image decoded, candidate pool, output names)
    before any work; raises `DataError`. The texts' checks that need the model's processor are
    :func:`check_plan_prompts`."""
    _check_arguments(args)
    sources = [load_source(spec, seed=args.seed) for spec in load_data_config(args.dataset_config)]
    pool = None
    if args.candidate_pool:
        pool = load_candidate_pool(args.candidate_pool, args.candidate_image_dir, seed=args.seed)
    table, plans = plan_sources(sources, pool)
    _check_outputs(args, plans, pool)
    return MiningPlan(table, plans, pool)


def check_plan_prompts(plan: MiningPlan, processor) -> None:
    """Every unique item text against the teacher's prompt rules (:func:`~..data.prompt_checks.check_item_prompts`,
    as training and evaluation check theirs); `DataError` names the item's source, row and file."""
    check_item_prompts(
        (
            (
                text,
                None if image is None else partial(load_image, image, dataset=dataset, row=row),
                {"dataset": dataset, "row": row, "file": file},
                "",
            )
            for (text, image), (dataset, row, file) in zip(plan.table.items, plan.table.origins)
        ),
        processor,
    )


def _relative_image(image: str | None, root: Path) -> str:
    return "" if image is None else Path(image).relative_to(root).as_posix()


def _source_table(plan: SourcePlan, items: list, negatives: np.ndarray, scores: np.ndarray, pos: np.ndarray):
    root = plan.source.image_dir.resolve()
    columns = {c: [v or "" for v in plan.source.table.column(c).to_pylist()] for c in REQUIRED_COLUMNS}
    kept = [[int(i) for i in row if i >= 0] for row in negatives]
    columns["neg_text"] = [[items[i][0] for i in row] for row in kept]
    columns["neg_image_path"] = [[_relative_image(items[i][1], root) for i in row] for row in kept]
    columns["pos_score"] = pos.tolist()
    columns["neg_scores"] = [[float(s) for s in row[: len(k)]] for row, k in zip(scores, kept)]
    return pa.table(columns, schema=OUTPUT_SCHEMA)


def _write_parquet(path: Path, table: pa.Table) -> None:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    write_bytes_atomic(path, buffer.getvalue())


def _data_config(args: MiningArguments, plans: list[SourcePlan], model_fp: str) -> str:
    sources = [
        {
            "name": p.name,
            "path": f"{p.name}.parquet",
            "image_dir": str(p.source.image_dir.resolve()),
            "weight": p.source.weight,
        }
        for p in plans
    ]
    rule = args.rule
    header = (
        f"{HEADER} from {args.dataset_config} with teacher {args.model_name_or_path}\n"
        f"# (fingerprint {model_fp[:16]}): num_negatives={rule.num_negatives}, max_score_ratio={rule.max_score_ratio}, "
        f"margin={rule.margin}, skip_top={rule.skip_top}, candidate_pool={args.candidate_pool or 'own positives'}, "
        f"seed={args.seed}\n"
    )
    return header + yaml.safe_dump({"sources": sources}, sort_keys=False, allow_unicode=True)


def mine_hard_negatives(
    model: torch.nn.Module, plan: MiningPlan, args: MiningArguments, *, show_progress_bar: bool = True
) -> dict[str, dict] | None:
    """Encode ``plan``'s unique items (resuming from the cache), mine every source and write the outputs.

    Call it on every process with the same arguments (the unwrapped model); each encodes a share of the items and
    process 0 scores and writes. Returns (on process 0) ``{source: {"rows", "pool", "mean_negatives"}}``.
    """
    rank, _ = rank_and_world()
    output_dir = Path(args.output_dir)
    model_fp = model_fingerprint(model)
    items = plan.table.items
    logger.info("%d unique items to embed over %d sources", len(items), len(plan.sources))
    embeddings = encode_with_cache(
        model,
        items,
        plan.table.keys,
        cache_dir=output_dir / "cache" / model_fp[:16],
        model_fp=model_fp,
        batch_size=args.batch_size,
        block_size=args.cache_block_size,
        show_progress_bar=show_progress_bar,
    )
    report = None
    if rank == 0:
        report = {}
        # A data config of an earlier run (this command's own output, checked in prepare_mining) goes first: while
        # the parquet files are being replaced, no config may point at a mix of old and new ones.
        (output_dir / "data_config.yaml").unlink(missing_ok=True)
        for source in plan.sources:
            with tqdm(
                total=len(source.query_ids), desc=f"Mining {source.name}", unit="row", disable=not show_progress_bar
            ) as progress:
                negatives, scores, pos = select_negatives(
                    embeddings,
                    source.query_ids,
                    source.positive_ids,
                    source.candidate_ids,
                    args.rule,
                    progress=progress,
                )
            _write_parquet(output_dir / f"{source.name}.parquet", _source_table(source, items, negatives, scores, pos))
            found = (negatives >= 0).sum(axis=1)
            report[source.name] = {
                "rows": len(found),
                "pool": len(source.candidate_ids),
                "mean_negatives": float(found.mean()),
            }
            logger.info("%s: %d rows, pool of %d, %.2f negatives per row", source.name, *report[source.name].values())
        write_text_atomic(output_dir / "data_config.yaml", _data_config(args, plan.sources, model_fp))
    barrier()
    return report


__all__ = [
    "MiningArguments",
    "MiningPlan",
    "OUTPUT_SCHEMA",
    "check_plan_prompts",
    "mine_hard_negatives",
    "prepare_mining",
]
