"""The training run behind ``train.py``: model, data, trainer, MMEB evaluation before and after, Hub-ready export.

``run(model_args, data_args, lora_args, training_args)``:

1. builds a tiny offline backbone when ``tiny_backbone`` asks for one, and the synthetic data when
   ``dataset_config: synthetic`` (process 0 writes, the others wait);
2. validates every input before the model's first forward: the output folder (writable), the training data and
   its size against the global batch (:func:`~.data.sampler.check_corpus_trainable`), the evaluation data, the
   checkpoint to resume (weights and every training state file), then — once the model and its processor are
   loaded — every prompt (:func:`~.data.sources.check_prompts`); a fresh run moves an earlier run's ``eval/`` to
   ``eval.previous-<n>/``;
3. wraps the backbone (a raw VLM, or continues from a Vlm2Vec checkpoint) and adds LoRA / DoRA when asked;
4. evaluates the untrained model on the held-out MMEB sets (``do_eval``; ``eval_benchmark`` MMEB-V1 or MMEB-V2,
   whose results go one folder down, into ``mmeb-v2/``) into ``<output_dir>/eval/baseline``;
5. trains with :class:`~modeling_vlm2vec.training.trainer.ContrastiveTrainer` (resumable checkpoints);
6. exports the final model into ``output_dir`` (merged weights, remote code, processor, card) — the folder is the
   Hub-ready checkpoint — then evaluates *that export*, loaded the way users load it, into ``<output_dir>/eval``,
   re-renders the card with the scores and prints a before/after table (with Matryoshka sizes, the exported model
   is also scored at each smaller size, from the same cached embeddings, into ``<output_dir>/eval/dim<d>``; MMEB-V1
   only).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from transformers.integrations import get_reporting_integration_callbacks
from transformers.trainer_utils import get_last_checkpoint

from .common.distributed import barrier
from .common.errors import DataError
from .common.file_digests import SIDECAR_NAME, FileDigests
from .common.files import check_writable_folder, read_json
from .common.locations import MMEB_EVAL_DATASET, MMEB_TRAIN_DATASET
from .data.collator import Vlm2VecCollator
from .data.sampler import check_corpus_trainable
from .data.sources import check_prompts, load_corpus
from .demo.hook import SYNTHETIC, DemoArguments, prepare_demo, synthetic_locations
from .evaluation import load_eval_sets, run_evaluation
from .evaluation.base.report import format_percent
from .evaluation.mmeb_v2.runner import check_video_input, load_v2_sets, run_v2_evaluation
from .hub.card import write_model_card
from .hub.export import export_checkpoint
from .loading import check_safetensors, load_vlm2vec
from .modeling_vlm2vec import Vlm2VecModel
from .pipeline_arguments import DataArguments, ModelArguments
from .training.arguments import ContrastiveTrainingArguments, LoraArguments
from .training.lora import check_lora_targets, prepare_trainable_model
from .training.resume_state import check_resume_state
from .training.trainer import ContrastiveTrainer

logger = logging.getLogger(__name__)


#: The argument dataclasses of ``train.py``, in the order :func:`run` takes them.
TRAIN_ARGUMENTS = (ModelArguments, DataArguments, LoraArguments, ContrastiveTrainingArguments, DemoArguments)


def run(
    model_args: ModelArguments,
    data_args: DataArguments,
    lora_args: LoraArguments,
    training_args: ContrastiveTrainingArguments,
    demo_args: DemoArguments | None = None,
) -> dict:
    """Train, export and evaluate; return ``{"baseline": summary | None, "final": summary | None}``, plus
    ``"final_dim<d>"`` summaries at every smaller Matryoshka size ``d`` (in ``<output_dir>/eval/dim<d>``)."""
    check_reporting(training_args.report_to)
    demo_args = demo_args or DemoArguments()
    output_dir = Path(training_args.output_dir)
    check_writable_folder(output_dir)
    with training_args.main_process_first(desc="preparing backbone and data"):
        if training_args.process_index == 0:
            prepare_demo(
                demo_args,
                model_name_or_path=model_args.model_name_or_path,
                dataset_config=data_args.dataset_config,
                output_dir=output_dir,
            )
    data_config, eval_kwargs = _data_locations(data_args, demo_args, output_dir)

    # Every input is validated before any heavy work: training data, evaluation data, the checkpoint to resume.
    corpus = load_corpus(data_config, seed=training_args.seed)
    check_corpus_trainable(
        corpus,
        per_device_batch_size=training_args.per_device_train_batch_size,
        world_size=training_args.world_size,
        mode=training_args.sampler_mode,
        homogeneous_sub_batch=training_args.homogeneous_sub_batch,
    )
    benchmark = data_args.eval_benchmark
    # Evaluation images checked by an earlier run into this output_dir and unchanged since are not decoded again.
    digests = FileDigests(output_dir / "eval" / "cache" / SIDECAR_NAME)
    with digests.active():
        eval_sets = _load_eval_sets(benchmark, eval_kwargs) if training_args.do_eval else []
    resume = resolve_resume_checkpoint(training_args.resume_from_checkpoint, output_dir)
    if resume is not None:
        check_resume_state(Path(resume), training_args, allow_missing=training_args.resume_with_missing_state)
    model = build_model(model_args)
    check_lora_targets(model, lora_args)
    check_prompts(corpus, model.processor)
    if benchmark == "mmeb-v2":
        check_video_input(model, eval_sets)
    if training_args.process_index == 0:
        if resume is None:
            set_aside_previous_results(output_dir)
        digests.save()
    barrier()
    results = {"baseline": None, "final": None}
    if training_args.do_eval:
        results["baseline"] = _evaluate(
            benchmark, model, eval_sets, output_dir / "eval" / "baseline", "before training", eval_kwargs
        )
    trainable = prepare_trainable_model(model, lora_args)
    trainer = ContrastiveTrainer(
        model=trainable,
        args=training_args,
        train_dataset=corpus,
        data_collator=Vlm2VecCollator(model.processor),
        processing_class=model.processor,
    )
    trainer.train(resume_from_checkpoint=resume)

    card_context = _card_context(trainer, corpus, model_args, data_args)
    if trainer.is_world_process_zero():
        _export_into(trainer.model, model.processor, output_dir, card_context)
    barrier()
    if training_args.do_eval:
        exported = load_vlm2vec(output_dir, device=training_args.device)  # the export, as users load it
        results["final"] = _evaluate(benchmark, exported, eval_sets, output_dir / "eval", "after training", eval_kwargs)
        sizes = (exported.config.matryoshka_dimensions or [])[:-1] if benchmark == "mmeb-v1" else []
        for size in sizes:  # scored from the cached embeddings
            results[f"final_dim{size}"] = run_evaluation(
                exported,
                eval_sets,
                output_dir=output_dir / "eval" / f"dim{size}",
                cache_dir=output_dir / "eval" / "cache",
                truncate_dim=size,
                model_name=f"after training, {size} dimensions",
                verbose=False,
                **eval_kwargs,
            )
        if trainer.is_world_process_zero():
            write_model_card(output_dir, card_context={**card_context, "eval_dir": str(output_dir / "eval")})
            print(before_after_table(results["baseline"], results["final"]))
            print(matryoshka_table(results))
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


def resolve_resume_checkpoint(resume: str | bool | None, output_dir: Path) -> str | None:
    """The checkpoint folder training resumes from, checked before any work; None for a fresh run.

    ``resume`` is a checkpoint folder, or true (``"true"`` from a YAML file or a flag) for the last ``checkpoint-*``
    of ``output_dir``. `DataError` when it is missing, lacks ``trainer_state.json`` or weights, or a file is corrupt
    (the optimizer, scheduler and RNG state are checked by :func:`~.training.resume_state.check_resume_state`).
    """
    if resume in (None, False, "", "false", "False"):
        return None
    if resume in (True, "true", "True"):
        last = get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None
        if last is None:
            raise DataError(
                "resume_from_checkpoint: true, but the output folder holds no checkpoint-*", file=str(output_dir)
            )
        resume = last
    folder = Path(resume)
    if not folder.is_dir():
        raise DataError("resume_from_checkpoint is not a folder", file=str(folder))
    read_json(folder / "trainer_state.json")  # missing or corrupt -> DataError naming it
    check_safetensors(folder)
    return str(folder)


def set_aside_previous_results(output_dir: Path) -> None:
    """Move a previous run's ``eval/`` to ``eval.previous-<n>/`` so its results never describe the new model."""
    previous = output_dir / "eval"
    if not previous.exists():
        return
    n = 1
    while (output_dir / f"eval.previous-{n}").exists():
        n += 1
    os.replace(previous, output_dir / f"eval.previous-{n}")
    logger.warning("%s holds results of an earlier run: moved to %s", previous, output_dir / f"eval.previous-{n}")


def build_model(model_args: ModelArguments) -> Vlm2VecModel:
    """The model to train, with its processor: a Vlm2Vec checkpoint as saved (only the settings the recipe names
    change, validated), or a raw VLM wrapped with them."""
    try:
        processor_kwargs = json.loads(model_args.processor_kwargs) if model_args.processor_kwargs else {}
    except ValueError as exc:
        raise DataError(f"processor_kwargs is not a JSON object: {exc}") from exc
    if not isinstance(processor_kwargs, dict):
        raise DataError(f"processor_kwargs must be a JSON object, got {model_args.processor_kwargs!r}")
    model = load_vlm2vec(
        model_args.model_name_or_path,
        dtype=model_args.model_dtype,
        trust_remote_code=model_args.trust_remote_code,
        overrides=model_args.settings(),
        attn_implementation=model_args.attn_implementation,
        processor_kwargs=processor_kwargs,
    )
    model.train()
    return model


def before_after_table(baseline: dict | None, final: dict | None) -> str:
    """A Markdown table of the summaries' metric (%) per dataset and aggregate, before and after training (MMEB-V1:
    hit@1; MMEB-V2: each task's headline score)."""
    if final is None:
        return ""
    key = final.get("metric", "hit@1")
    rows = ["| | before | after |", "|---|---:|---:|"]
    for group in ("datasets", "aggregates"):
        for name, after in final.get(group, {}).items():
            before = (baseline or {}).get(group, {}).get(name, {}).get(key)
            rows.append(f"| {name} | {format_percent(before)} | {format_percent(after.get(key))} |")
    return "\n".join(rows)


def matryoshka_table(results: dict) -> str:
    """A Markdown table of the Overall hit@1 (%) at each evaluated Matryoshka size (empty without any)."""
    sizes = sorted(int(key.removeprefix("final_dim")) for key in results if key.startswith("final_dim"))
    if not sizes or results.get("final") is None:
        return ""
    rows = ["| dimensions | Overall hit@1 |", "|---:|---:|"]
    for size in sizes:
        rows.append(f"| {size} | {format_percent(results[f'final_dim{size}']['aggregates']['Overall']['hit@1'])} |")
    rows.append(f"| full | {format_percent(results['final']['aggregates']['Overall']['hit@1'])} |")
    return "\n".join(rows)


def _data_locations(data_args: DataArguments, demo_args: DemoArguments, output_dir: Path) -> tuple[Path, dict]:
    """(training data config, evaluate_mmeb keyword arguments)."""
    if data_args.dataset_config == SYNTHETIC:
        data_config, default_eval, default_subsets, default_images = synthetic_locations(demo_args, output_dir)
    else:
        data_config, default_eval, default_subsets, default_images = (
            Path(data_args.dataset_config),
            MMEB_EVAL_DATASET,
            ["all"],
            None,
        )
    eval_kwargs = {
        "dataset_name": str(data_args.eval_dataset_name or default_eval),
        "subsets": data_args.eval_subset_name or default_subsets,
        "image_dir": data_args.eval_image_dir or (str(default_images) if default_images else None),
        "batch_size": data_args.eval_batch_size,
    }
    if data_args.eval_benchmark == "mmeb-v2":  # no synthetic MMEB-V2: only what the recipe names, else the Hub's
        eval_kwargs.update(
            dataset_name=data_args.eval_dataset_name,
            subsets=data_args.eval_subset_name or ["all"],
            image_dir=data_args.eval_image_dir,
        )
    return data_config, eval_kwargs


def _load_eval_sets(benchmark: str, eval_kwargs: dict) -> list:
    """Load and validate the evaluation data of ``benchmark`` (pops its locations from ``eval_kwargs``)."""
    subsets, image_dir = eval_kwargs.pop("subsets"), eval_kwargs.pop("image_dir")
    if benchmark == "mmeb-v2":
        return load_v2_sets(subsets, eval_kwargs.pop("dataset_name"), image_dir)
    return load_eval_sets(eval_kwargs["dataset_name"], subsets, image_dir)


def _evaluate(benchmark: str, model, eval_sets: list, output_dir: Path, label: str, eval_kwargs: dict) -> dict:
    """Score ``model`` on the loaded sets into ``output_dir`` (MMEB-V2: its ``mmeb-v2/`` sub-folder)."""
    run = run_v2_evaluation if benchmark == "mmeb-v2" else run_evaluation
    return run(model, eval_sets, output_dir=output_dir, model_name=label, **eval_kwargs)


def _card_context(trainer: ContrastiveTrainer, corpus, model_args: ModelArguments, data_args: DataArguments) -> dict:
    context = trainer.hub_card_context()
    context["data_sources"] = [{"name": s.name, "count": len(s)} for s in corpus.sources]
    if not Path(model_args.model_name_or_path).exists():
        context["base_model"] = model_args.model_name_or_path
    if data_args.dataset_config != SYNTHETIC:
        context["datasets"] = [MMEB_TRAIN_DATASET]
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


__all__ = [
    "TRAIN_ARGUMENTS",
    "DataArguments",
    "DemoArguments",
    "ModelArguments",
    "before_after_table",
    "build_model",
    "run",
]
