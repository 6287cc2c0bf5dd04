"""The one door between the training pipeline and the demo scaffolding.

``train.py`` parses :class:`DemoArguments` beside the model, data, LoRA and training arguments. Before any model is
loaded, :func:`prepare_demo` builds what they ask for — a tiny random backbone at ``model_name_or_path`` and/or the
bundled synthetic MMEB-style data — and :func:`synthetic_locations` tells the pipeline where that data lives.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .synthetic import write_synthetic_mmeb
from .tiny_backbones import TINY_MODEL_TYPES, save_tiny_backbone

#: ``dataset_config`` value that selects the bundled synthetic data.
SYNTHETIC = "synthetic"


@dataclass
class DemoArguments:
    """A tiny random backbone and the synthetic data, for the offline demo and tests."""

    tiny_backbone: str | None = field(
        default=None,
        metadata={
            "help": f"Build a tiny random backbone of this type ({', '.join(TINY_MODEL_TYPES)}) at model_name_or_path "
            "first, unless that folder already holds one (offline demo and tests)."
        },
    )
    tiny_backbone_hidden_size: int = field(default=64, metadata={"help": "Hidden size of the tiny backbone."})
    tiny_backbone_layers: int = field(default=2, metadata={"help": "Layers of the tiny backbone's language model."})
    tiny_backbone_vision_hidden_size: int = field(default=32, metadata={"help": "Width of the tiny vision tower."})
    tiny_backbone_image_size: int | None = field(
        default=None, metadata={"help": "Vision input side of the tiny backbone, pixels."}
    )
    synthetic_dir: str | None = field(
        default=None, metadata={"help": "Where the synthetic data is written (default: <output_dir>/synthetic-data)."}
    )
    synthetic_train_per_task: int = field(default=512, metadata={"help": "Synthetic training rows per task."})
    synthetic_eval_per_task: int = field(default=64, metadata={"help": "Synthetic eval queries per task."})


def synthetic_root(demo_args: DemoArguments, output_dir: Path) -> Path:
    """Folder of the synthetic data: ``synthetic_dir`` or ``<output_dir>/synthetic-data``."""
    return Path(demo_args.synthetic_dir) if demo_args.synthetic_dir else output_dir / "synthetic-data"


def prepare_demo(demo_args: DemoArguments, *, model_name_or_path: str, dataset_config: str, output_dir: Path) -> None:
    """Write the tiny backbone (unless ``model_name_or_path`` already holds a model) and, for
    ``dataset_config == "synthetic"``, the synthetic data (training split, eval split, ``data_config.yaml``).
    Call it on one process only."""
    if demo_args.tiny_backbone and not (Path(model_name_or_path) / "config.json").is_file():
        save_tiny_backbone(
            demo_args.tiny_backbone,
            model_name_or_path,
            hidden_size=demo_args.tiny_backbone_hidden_size,
            num_layers=demo_args.tiny_backbone_layers,
            image_size=demo_args.tiny_backbone_image_size,
            vision_hidden_size=demo_args.tiny_backbone_vision_hidden_size,
        )
    if dataset_config == SYNTHETIC:
        write_synthetic_mmeb(
            synthetic_root(demo_args, output_dir),
            n_train_per_task=demo_args.synthetic_train_per_task,
            n_eval_per_task=demo_args.synthetic_eval_per_task,
        )


def synthetic_locations(demo_args: DemoArguments, output_dir: Path) -> tuple[Path, Path, list[str], Path]:
    """(training data config, eval dataset root, eval subsets, eval image root) of the synthetic data."""
    root = synthetic_root(demo_args, output_dir)
    return root / "data_config.yaml", root / "eval", [SYNTHETIC], root


__all__ = ["SYNTHETIC", "DemoArguments", "prepare_demo", "synthetic_locations", "synthetic_root"]
