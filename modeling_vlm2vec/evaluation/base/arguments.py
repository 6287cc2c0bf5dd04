"""Command-line arguments of ``evaluate_mmeb.py`` (``--snake_case`` flags, or one YAML file with the same keys)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...common.locations import MMEB_EVAL_DATASET


@dataclass
class EvalArguments:
    """What to evaluate, on which MMEB datasets, and where to write the results."""

    model_name_or_path: str = field(metadata={"help": "Vlm2Vec checkpoint or raw VLM: local folder or Hub id."})
    output_dir: str = field(
        metadata={
            "help": "Where score files, summary.json, results.md/png and the cache go (mmeb-v2: its results in the "
            "sub-folder mmeb-v2/, so both benchmarks can share one output_dir)."
        }
    )
    lora_adapter: str | None = field(
        default=None, metadata={"help": "PEFT LoRA adapter folder applied to the model and merged before evaluation."}
    )
    benchmark: str = field(
        default="mmeb-v1",
        metadata={
            "help": "mmeb-v1 (36 image datasets, TIGER-Lab/MMEB-eval) or mmeb-v2 (78 tasks: image, video, visdoc).",
            "choices": ["mmeb-v1", "mmeb-v2"],
        },
    )
    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": f"mmeb-v1: Hub dataset id (default {MMEB_EVAL_DATASET}) or a local folder holding "
            "<Dataset>/*.parquet. mmeb-v2: unset (each task's own Hub dataset) or a local mirror folder holding "
            "<owner>/<repo>/[<config>/]<split>*.parquet."
        },
    )
    subset_name: list[str] | None = field(
        default=None,
        metadata={
            "help": "Dataset names (space separated or repeated) or a suite. mmeb-v1: all, ind, ood, synthetic; "
            "mmeb-v2: all, image, video, visdoc. Default: all.",
            "action": "extend",
        },
    )
    image_dir: str | None = field(
        default=None,
        metadata={
            "help": "Media root. mmeb-v1: the folder the rows' image paths are relative to. mmeb-v2: the folder "
            "holding the official media archives extracted (image-tasks/, video-tasks/frames/)."
        },
    )
    batch_size: int = field(default=16, metadata={"help": "Items per forward pass, per process."})
    dtype: str = field(default="auto", metadata={"help": "auto, float32, bfloat16 or float16."})
    device: str | None = field(
        default=None, metadata={"help": "Device for the model (default: this process's accelerator device, else CPU)."}
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Allow Hub code of a raw VLM or its processor (a Vlm2Vec checkpoint never needs it)."},
    )
    overwrite: bool = field(default=False, metadata={"help": "Ignore finished score files and cached embeddings."})
    truncate_dim: int | None = field(
        default=None,
        metadata={
            "help": "Score with the first N coordinates of each embedding, re-normalised (a Matryoshka size; "
            "the cache keeps the full embeddings, so several sizes sharing a --cache_dir encode once)."
        },
    )
    cache_dir: str | None = field(
        default=None, metadata={"help": "Embedding cache folder (default: <output_dir>/cache); may be shared by runs."}
    )
    corpus_dir: str | None = field(
        default=None,
        metadata={
            "help": "Corpus retrieval on your own data instead of MMEB: a folder with corpus, queries and qrels "
            "tables (BEIR layout, parquet or jsonl); writes corpus_score.json and run.trec."
        },
    )
    query_instruction: str | None = field(default=None, metadata={"help": "Put before every query (corpus_dir)."})
    corpus_instruction: str | None = field(
        default=None, metadata={"help": "Put before every corpus item (corpus_dir)."}
    )
    top_k: int = field(default=100, metadata={"help": "Corpus items per query in run.trec (corpus_dir)."})

    def __post_init__(self):
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")

    @property
    def subsets(self) -> list[str]:
        if isinstance(self.subset_name, str):  # a YAML file may give one string: "all" or "A B"
            return [self.subset_name]
        return self.subset_name or ["all"]
