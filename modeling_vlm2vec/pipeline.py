"""The training run behind ``train.py``: model, data, trainer, MMEB evaluation before and after, Hub-ready export.

``run(model_args, data_args, lora_args, training_args)``:

1. builds a tiny offline backbone when ``tiny_backbone`` asks for one, and the synthetic data when
   ``dataset_config: synthetic`` (process 0 writes, the others wait);
2. wraps the backbone (a raw VLM, or continues from a Vlm2Vec checkpoint) and adds LoRA / DoRA when asked;
3. evaluates the untrained model on the held-out MMEB sets (``do_eval``) into ``<output_dir>/eval/baseline``;
4. trains with :class:`~modeling_vlm2vec.training.trainer.ContrastiveTrainer` (resumable checkpoints);
5. exports the final model into ``output_dir`` (merged weights, remote code, processor, card) — the folder is the
   Hub-ready checkpoint — then evaluates *that export*, loaded the way users load it, into ``<output_dir>/eval``,
   re-renders the card with the scores and prints a before/after table.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from transformers import AutoConfig
from transformers.integrations import get_reporting_integration_callbacks

from .common.distributed import barrier
from .common.dtypes import parse_dtype
from .common.errors import DataError
from .data.collator import Vlm2VecCollator
from .data.sources import load_corpus
from .demo import TINY_MODEL_TYPES, save_tiny_backbone
from .demo.synthetic import write_synthetic_mmeb
from .evaluation import evaluate_mmeb, load_model_for_eval
from .evaluation.report import format_percent
from .hub.card import write_model_card
from .hub.export import export_checkpoint
from .modeling_vlm2vec import Vlm2VecModel
from .processing_vlm2vec import load_processor
from .training.arguments import ContrastiveTrainingArguments, LoraArguments
from .training.lora import prepare_trainable_model
from .training.trainer import ContrastiveTrainer

logger = logging.getLogger(__name__)

SYNTHETIC = "synthetic"


@dataclass
class ModelArguments:
    """The backbone and how inputs become embeddings (saved in the checkpoint's config)."""

    model_name_or_path: str = field(
        metadata={"help": "Hub id or folder of a VLM, or of a Vlm2Vec checkpoint to continue training."}
    )
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
    model_dtype: str = field(
        default="float32",
        metadata={
            "help": "Dtype the weights are loaded in (auto = the checkpoint's): float32 (master weights; use bf16 "
            "autocast via --bf16) or bfloat16 / float16 (frozen base for LoRA on large backbones; LoRA weights stay "
            "float32)."
        },
    )
    attn_implementation: str | None = field(default=None, metadata={"help": "sdpa, eager, flash_attention_2..."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow backbones with Hub remote code."})
    processor_kwargs: str | None = field(
        default=None,
        metadata={"help": "JSON object passed to the processor loader, e.g. '{\"num_crops\": 4}' for Phi-3.5-V."},
    )
    pooling: str = field(default="last", metadata={"help": "last (last real token) or mean."})
    normalize: bool = field(default=True, metadata={"help": "L2-normalise embeddings."})
    contrastive_temperature: float = field(default=0.02, metadata={"help": "InfoNCE temperature."})
    padding_side: str = field(default="right", metadata={"help": "Batch padding side."})
    max_length: int | None = field(
        default=None, metadata={"help": "Token budget per input (text is truncated, image tokens never)."}
    )
    image_max_pixels: int | None = field(
        default=None, metadata={"help": "Downscale larger images to this many pixels (aspect kept)."}
    )
    image_min_pixels: int | None = field(
        default=None, metadata={"help": "Upscale smaller images to this many pixels (aspect kept)."}
    )
    image_fixed_size: list[int] | None = field(default=None, metadata={"help": "Resize every image to W H."})

    def wrapper_config(self) -> dict:
        """The `Vlm2VecConfig` fields given on the command line."""
        names = (
            "pooling",
            "normalize",
            "contrastive_temperature",
            "padding_side",
            "max_length",
            "image_max_pixels",
            "image_min_pixels",
            "image_fixed_size",
        )
        return {name: getattr(self, name) for name in names}


@dataclass
class DataArguments:
    """Training data (MMEB-train schema) and the held-out MMEB evaluation."""

    dataset_config: str = field(
        default=SYNTHETIC,
        metadata={
            "help": "Data-config YAML listing the training sources, or 'synthetic' for the bundled synthetic data."
        },
    )
    synthetic_dir: str | None = field(
        default=None, metadata={"help": "Where the synthetic data is written (default: <output_dir>/synthetic-data)."}
    )
    synthetic_train_per_task: int = field(default=512, metadata={"help": "Synthetic training rows per task."})
    synthetic_eval_per_task: int = field(default=64, metadata={"help": "Synthetic eval queries per task."})
    eval_dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "MMEB-eval Hub id or local folder (default: the synthetic eval split, or TIGER-Lab/MMEB-eval)."
        },
    )
    eval_subset_name: list[str] | None = field(
        default=None,
        metadata={"help": "Datasets to evaluate: names or all / ind / ood / synthetic (default: synthetic or all)."},
    )
    eval_image_dir: str | None = field(default=None, metadata={"help": "Image root of the evaluation data."})
    eval_batch_size: int = field(default=32, metadata={"help": "Items per forward when encoding for evaluation."})


def run(
    model_args: ModelArguments,
    data_args: DataArguments,
    lora_args: LoraArguments,
    training_args: ContrastiveTrainingArguments,
) -> dict:
    """Train, export and evaluate; return ``{"baseline": summary | None, "final": summary | None}``."""
    check_reporting(training_args.report_to)
    output_dir = Path(training_args.output_dir)
    with training_args.main_process_first(desc="preparing backbone and data"):
        if training_args.process_index == 0:
            _prepare_inputs(model_args, data_args, output_dir)
    data_config, eval_kwargs = _data_locations(data_args, output_dir)

    corpus = load_corpus(data_config, seed=training_args.seed)  # validates every source before any heavy work
    model, processor = build_model(model_args)
    results = {"baseline": None, "final": None}
    if training_args.do_eval:
        results["baseline"] = evaluate_mmeb(
            model, processor, output_dir=output_dir / "eval" / "baseline", model_name="before training", **eval_kwargs
        )
    trainable = prepare_trainable_model(model, lora_args)
    trainer = ContrastiveTrainer(
        model=trainable,
        args=training_args,
        train_dataset=corpus,
        data_collator=Vlm2VecCollator(processor, model.config),
        processing_class=processor,
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)

    card_context = _card_context(trainer, corpus, model_args, data_args)
    if trainer.is_world_process_zero():
        _export_into(trainer.model, processor, output_dir, card_context)
    barrier()
    if training_args.do_eval:
        exported, exported_processor = load_model_for_eval(output_dir, device=training_args.device)
        results["final"] = evaluate_mmeb(
            exported, exported_processor, output_dir=output_dir / "eval", model_name="after training", **eval_kwargs
        )
        if trainer.is_world_process_zero():
            write_model_card(output_dir, card_context={**card_context, "eval_dir": str(output_dir / "eval")})
            print(before_after_table(results["baseline"], results["final"]))
    if training_args.push_to_hub and trainer.is_world_process_zero():
        from .hub.push import push_checkpoint

        push_checkpoint(
            output_dir,
            training_args.hub_model_id,
            private=training_args.hub_private_repo,
            token=training_args.hub_token,
        )
    return results


def check_reporting(report_to: list[str]) -> None:
    """Raise `DataError` when a ``report_to`` integration cannot start (its package is missing): the Trainer would
    find out only after the model is loaded and the baseline evaluation has run."""
    for callback in get_reporting_integration_callbacks(report_to):
        try:
            callback()
        except (ImportError, RuntimeError) as exc:
            raise DataError(
                f"report_to {callback.__name__}: {exc} Install the package or drop it from report_to "
                f"(report_to: [] logs to the console only)."
            ) from exc


def build_model(model_args: ModelArguments) -> tuple[Vlm2VecModel, object]:
    """Load the model to train and its processor: a Vlm2Vec checkpoint as is, or a raw VLM wrapped."""
    path = model_args.model_name_or_path
    dtype = parse_dtype(model_args.model_dtype)
    load_kwargs = {"dtype": dtype, "trust_remote_code": model_args.trust_remote_code}
    if model_args.attn_implementation:
        load_kwargs["attn_implementation"] = model_args.attn_implementation
    config = AutoConfig.from_pretrained(path, trust_remote_code=model_args.trust_remote_code)
    if config.model_type == "vlm2vec":
        model = Vlm2VecModel.from_pretrained(path, **load_kwargs)
        for name, value in model_args.wrapper_config().items():
            setattr(model.config, name, value)
    else:
        model = Vlm2VecModel.from_backbone(path, **load_kwargs, **model_args.wrapper_config())
    processor_kwargs = json.loads(model_args.processor_kwargs) if model_args.processor_kwargs else {}
    if model_args.trust_remote_code:
        processor_kwargs["trust_remote_code"] = True
    processor = load_processor(path, **processor_kwargs)
    model.processor = processor
    return model, processor


def before_after_table(baseline: dict | None, final: dict | None) -> str:
    """A Markdown table of hit@1 (%) per dataset and aggregate, before and after training."""
    if final is None:
        return ""
    rows = ["| | before | after |", "|---|---:|---:|"]
    for group, key in (("datasets", "hit@1"), ("aggregates", "hit@1")):
        for name, after in final.get(group, {}).items():
            before = (baseline or {}).get(group, {}).get(name, {}).get(key)
            rows.append(f"| {name} | {format_percent(before)} | {format_percent(after.get(key))} |")
    return "\n".join(rows)


def _prepare_inputs(model_args: ModelArguments, data_args: DataArguments, output_dir: Path) -> None:
    if model_args.tiny_backbone and not (Path(model_args.model_name_or_path) / "config.json").is_file():
        save_tiny_backbone(
            model_args.tiny_backbone,
            model_args.model_name_or_path,
            hidden_size=model_args.tiny_backbone_hidden_size,
            num_layers=model_args.tiny_backbone_layers,
            image_size=model_args.tiny_backbone_image_size,
            vision_hidden_size=model_args.tiny_backbone_vision_hidden_size,
        )
    if data_args.dataset_config == SYNTHETIC:
        write_synthetic_mmeb(
            _synthetic_dir(data_args, output_dir),
            n_train_per_task=data_args.synthetic_train_per_task,
            n_eval_per_task=data_args.synthetic_eval_per_task,
        )


def _synthetic_dir(data_args: DataArguments, output_dir: Path) -> Path:
    return Path(data_args.synthetic_dir) if data_args.synthetic_dir else output_dir / "synthetic-data"


def _data_locations(data_args: DataArguments, output_dir: Path) -> tuple[Path, dict]:
    """(training data config, evaluate_mmeb keyword arguments)."""
    if data_args.dataset_config == SYNTHETIC:
        root = _synthetic_dir(data_args, output_dir)
        data_config, default_eval, default_subsets, default_images = (
            root / "data_config.yaml",
            root / "eval",
            [SYNTHETIC],
            root,
        )
    else:
        data_config, default_eval, default_subsets, default_images = (
            Path(data_args.dataset_config),
            "TIGER-Lab/MMEB-eval",
            ["all"],
            None,
        )
    eval_kwargs = {
        "dataset_name": str(data_args.eval_dataset_name or default_eval),
        "subsets": data_args.eval_subset_name or default_subsets,
        "image_dir": data_args.eval_image_dir or (str(default_images) if default_images else None),
        "batch_size": data_args.eval_batch_size,
    }
    return data_config, eval_kwargs


def _card_context(trainer: ContrastiveTrainer, corpus, model_args: ModelArguments, data_args: DataArguments) -> dict:
    context = trainer.hub_card_context()
    context["data_sources"] = [{"name": s.name, "count": len(s)} for s in corpus.sources]
    if not Path(model_args.model_name_or_path).exists():
        context["base_model"] = model_args.model_name_or_path
    if data_args.dataset_config != SYNTHETIC:
        context["datasets"] = ["TIGER-Lab/MMEB-train"]
    return {k: v for k, v in context.items() if v is not None}


def _export_into(model, processor, output_dir: Path, card_context: dict) -> None:
    """Export the Hub-ready checkpoint into ``output_dir`` itself, beside the training checkpoints and logs.

    The export is assembled in a sibling temp folder (complete or not at all), then its files replace any of the
    same name in ``output_dir``; ``checkpoint-*``, logs and evaluation folders stay.
    """
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.export-", dir=output_dir.parent))
    try:
        export_checkpoint(model, staging / "model", processor=processor, card_context=card_context)
        for item in (staging / "model").iterdir():
            target = output_dir / item.name
            if item.is_dir():
                shutil.rmtree(target, ignore_errors=True)
            os.replace(item, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


__all__ = ["DataArguments", "ModelArguments", "before_after_table", "build_model", "run"]
