"""Command-line arguments of ``evaluate_mmeb.py`` (``--snake_case`` flags, or one YAML file with the same keys)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..common.locations import MMEB_EVAL_DATASET


@dataclass
class EvalArguments:
    """What to evaluate, on which MMEB datasets, and where to write the results."""

    model_name_or_path: str = field(metadata={"help": "Vlm2Vec checkpoint or raw VLM: local folder or Hub id."})
    output_dir: str = field(metadata={"help": "Where score files, summary.json, results.md/png and the cache go."})
    lora_adapter: str | None = field(
        default=None, metadata={"help": "PEFT LoRA adapter folder applied to the model and merged before evaluation."}
    )
    dataset_name: str = field(
        default=MMEB_EVAL_DATASET,
        metadata={"help": "Hub dataset id, or a local folder holding <Dataset>/*.parquet in the MMEB-eval schema."},
    )
    subset_name: list[str] | None = field(
        default=None,
        metadata={
            "help": "Dataset names (space separated or repeated) or a suite: all, ind, ood, synthetic. Default: all.",
            "action": "extend",
        },
    )
    image_dir: str | None = field(default=None, metadata={"help": "Root folder the rows' image paths are relative to."})
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

    def __post_init__(self):
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")

    @property
    def subsets(self) -> list[str]:
        if isinstance(self.subset_name, str):  # a YAML file may give one string: "all" or "A B"
            return [self.subset_name]
        return self.subset_name or ["all"]
