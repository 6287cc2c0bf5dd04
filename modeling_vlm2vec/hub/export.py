"""Export a Hub-ready checkpoint folder, from a model in memory or a training checkpoint.

A merged export holds everything ``AutoModel.from_pretrained(folder, trust_remote_code=True)`` needs and nothing
else: ``config.json`` (with ``auto_map`` and the resolution policy), the remote-code files, safetensors weights (LoRA
merged in), the processor and tokenizer files, ``README.md`` (the model card) and, when the source had MMEB results,
``eval/`` (scores and report, no embedding cache). An adapter-only export holds the PEFT adapter, whose
``base_model_name_or_path`` names a Vlm2Vec base checkpoint loadable from anywhere, plus processor files and card.

The folder is assembled in a temporary sibling directory and renamed into place, so a failed export leaves nothing.

Command line::

    python -m modeling_vlm2vec.hub.export <checkpoint_dir> <output_dir> [--adapter_only] [--base_model ID_OR_DIR]
        [--card_context context.json] [--overwrite] [--push_to_hub --hub_model_id USER/NAME [--private] [--dry_run]]

With ``--push_to_hub`` the repo id (and, unless ``--dry_run``, that the Hub can be reached with a token) is checked
before anything is written; a failed upload is one ``error:`` line saying the export is complete and how to push it.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from ..common.cli import run_cli
from ..common.errors import DataError
from ..common.files import check_writable_folder, read_json
from ..evaluation.mmeb_v2.runner import V2_RESULTS_FOLDER
from ..loading import ADAPTER_CONFIG, ADAPTER_WEIGHTS, PROCESSOR_FILES, is_vlm2vec_base
from .card import load_eval_summaries, write_model_card
from .checkpoint import (
    REMOTE_CODE_FILES,
    check_remote_code,
    is_peft_model,
    load_export_processor,
    load_source,
    unwrap_vlm2vec,
)
from .native import save_native
from .push import check_push_target, push_checkpoint

EVAL_FILE_PATTERNS = ("summary.json", "*_score.json", "results.md", "results.png")


def export_checkpoint(
    model_or_dir: str | os.PathLike | torch.nn.Module,
    output_dir: str | os.PathLike,
    *,
    processor=None,
    merge_lora: bool = True,
    adapter_only: bool = False,
    card_context: dict | None = None,
    base_model: str | None = None,
    overwrite: bool = False,
    trust_remote_code: bool = False,
    protect: tuple = (),
) -> Path:
    """Write a Hub-ready checkpoint of `model_or_dir` to `output_dir` and return its path.

    Args:
        model_or_dir: a `Vlm2VecModel`, a `PeftModel` wrapping one, or a checkpoint folder (full weights, or a PEFT
            adapter whose ``base_model_name_or_path`` — or `base_model` — names a Vlm2Vec checkpoint or a raw VLM).
        output_dir: the folder to create; must not exist or be empty unless `overwrite`.
        processor: saved with the weights; defaults to the checkpoint's, else the base's / the model's own.
        merge_lora: merge LoRA weights into the exported full model (a copy is merged; an in-memory model is left
            untouched). A PEFT model with ``merge_lora=False`` must be exported ``adapter_only``.
        adapter_only: export only the adapter, with ``base_model_name_or_path`` rewritten to `base_model` (a Hub id
            or a folder, made absolute), which must be a Vlm2Vec checkpoint (see `export_checkpoint` of the base).
        card_context: training details and metadata for the model card (see `modeling_vlm2vec.hub.card`);
            ``eval_dir`` defaults to ``<checkpoint>/eval``.
        base_model: the adapter's base; overrides the reference stored in the adapter config.
        overwrite: replace a previous export in `output_dir` (see `check_output_folder`; inputs are never replaced).
        trust_remote_code: allow Hub code of a raw base VLM an adapter applies to (our checkpoints never need it).
        protect: more folders the model was read from (e.g. a converted adapter and its base), never to be replaced;
            `model_or_dir` and a local `base_model` are protected always.

    Raises:
        DataError: not a checkpoint, not a vlm2vec config, remote code or weights missing, adapter base not found,
            adapter not matching its base, output folder not empty.
    """
    output_dir = Path(output_dir).absolute()
    inputs = list(protect) + ([model_or_dir] if isinstance(model_or_dir, (str, os.PathLike)) else [])
    inputs += [base_model] if base_model and Path(base_model).expanduser().exists() else []
    check_output_folder(output_dir, inputs=inputs, overwrite=overwrite)
    source = load_source(model_or_dir, base_model=base_model, trust_remote_code=trust_remote_code)
    is_adapter = is_peft_model(source.model)
    if adapter_only and not is_adapter:
        raise DataError(
            "adapter_only export needs a PEFT model or an adapter checkpoint; this model has no adapter",
            file=str(source.folder) if source.folder else None,
        )
    if is_adapter and not adapter_only and not merge_lora:
        raise DataError("a LoRA model is exported merged (merge_lora=True) or as an adapter (adapter_only=True)")
    processor = load_export_processor(source, processor)
    context = dict(card_context or {})
    context.setdefault("repo_id", output_dir.name)
    if "eval_dir" not in context and source.folder is not None:
        context["eval_dir"] = str(source.folder / "eval")

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.tmp-", dir=output_dir.parent))
    try:
        if adapter_only:
            reference = _adapter_base_reference(base_model or source.base_reference)
            _save_adapter(source.model, staging, reference)
            processor.save_pretrained(staging)
            write_model_card(
                staging,
                unwrap_vlm2vec(source.model).config,
                card_context=context,
                adapter_only=True,
                base_reference=reference,
            )
        else:
            model = source.model
            if is_adapter:
                model = (model if source.owned else copy.deepcopy(model)).merge_and_unload()
            save_native(model, staging, processor, prompts=context.get("prompts"))
            write_model_card(staging, card_context=context)
        _copy_eval(context.get("eval_dir"), staging / "eval")
        verify_export(staging, adapter_only=adapter_only)
        _move_into_place(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output_dir


#: Sub-folders an export writes: the MMEB scores and the sentence-transformers modules.
EXPORT_SUBFOLDERS = ("eval", "1_Pooling", "2_Normalize")


def check_output_folder(output_dir: Path, *, inputs: list, overwrite: bool) -> None:
    """Refuse an output folder whose replacement would lose data, with a `DataError` naming it.

    The output may not be an existing file, its parent must be a writable folder, and it may not equal or contain
    any of `inputs` (the source checkpoint, a local adapter base). An existing non-empty folder is replaced only with
    `overwrite`, and only when it is a previous export: a ``README.md`` beside a ``config.json`` or
    ``adapter_config.json``, no sub-folder but those an export writes (``EXPORT_SUBFOLDERS``).
    """
    if output_dir.exists() and not output_dir.is_dir():
        raise DataError("output path exists and is not a folder", file=str(output_dir))
    check_writable_folder(output_dir.parent)  # the export is assembled beside the output folder
    real = output_dir.resolve()
    for item in inputs:
        item = Path(item).expanduser().resolve()
        if item == real or real in item.parents:
            raise DataError(
                f"the output folder would replace an input of the export ({str(item)!r}); choose another output folder",
                file=str(output_dir),
            )
    if not output_dir.is_dir() or not any(output_dir.iterdir()):
        return
    if not overwrite:
        raise DataError(
            "output folder exists and is not empty (pass overwrite=True / --overwrite)", file=str(output_dir)
        )
    names = {p.name for p in output_dir.iterdir()}
    subfolders = sorted(p.name for p in output_dir.iterdir() if p.is_dir() and p.name not in EXPORT_SUBFOLDERS)
    if "README.md" not in names or not names & {"config.json", ADAPTER_CONFIG} or subfolders:
        allowed = ", ".join(f"{name}/" for name in EXPORT_SUBFOLDERS)
        found = f" ({subfolders[0]}/)" if subfolders else ""
        raise DataError(
            "overwrite replaces only a previous export (README.md with config.json or adapter_config.json, no "
            f"sub-folder but {allowed}); this folder holds other data{found}; remove it yourself or choose another "
            "output folder",
            file=str(output_dir),
        )


def verify_export(folder: str | os.PathLike, *, adapter_only: bool = False) -> None:
    """Check an export is complete (`DataError` naming what is missing)."""
    folder = Path(folder)
    required = [ADAPTER_CONFIG, ADAPTER_WEIGHTS] if adapter_only else ["config.json", *REMOTE_CODE_FILES]
    missing = [name for name in required + ["README.md"] if not (folder / name).is_file()]
    if not any((folder / name).is_file() for name in PROCESSOR_FILES):
        missing.append("processor files")
    if not adapter_only and not any(folder.glob("*.safetensors")):
        missing.append("safetensors weights")
    if missing:
        raise DataError(f"export incomplete, missing: {', '.join(missing)}", file=str(folder))
    if not adapter_only:
        check_remote_code(folder)


def _adapter_base_reference(reference: str | None) -> str:
    """Where an exported adapter's base lives, usable from any cwd: an absolute folder or a Hub id."""
    if not reference:
        raise DataError("adapter-only export needs the base checkpoint: pass base_model=<Hub id or folder>")
    path = Path(reference).expanduser()
    if path.is_dir():
        reference = str(path.resolve())
    elif path.is_absolute() or reference.startswith("."):
        raise DataError("adapter base folder does not exist", file=reference)
    else:
        return reference  # a Hub id: written as given (it may not be reachable from here)
    if not is_vlm2vec_base(reference):
        raise DataError(
            "the adapter's base is a raw VLM, not a Vlm2Vec checkpoint; export the base once "
            "(export_checkpoint(Vlm2VecModel.from_backbone(<raw>, ...), <base_dir>)), publish it and "
            "pass base_model=<its Hub id or folder>",
            file=reference,
        )
    return reference


def _save_adapter(model, folder: Path, reference: str) -> None:
    model.save_pretrained(folder, safe_serialization=True)
    (folder / "README.md").unlink(missing_ok=True)  # PEFT's stub card; ours is written next
    config = read_json(folder / ADAPTER_CONFIG)
    config["base_model_name_or_path"] = reference
    (folder / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _copy_eval(eval_dir: str | os.PathLike | None, target: Path) -> None:
    """Copy the MMEB-V1 and MMEB-V2 scores and reports (not the embedding cache) beside the weights, each benchmark's
    in its own place (MMEB-V2's in ``mmeb-v2/``)."""
    if not load_eval_summaries(eval_dir):
        return
    for folder in (Path(eval_dir), Path(eval_dir) / V2_RESULTS_FOLDER):
        files = [path for pattern in EVAL_FILE_PATTERNS for path in folder.glob(pattern)]
        if files:
            destination = target / folder.relative_to(eval_dir)
            destination.mkdir(parents=True, exist_ok=True)
            for path in files:
                shutil.copy2(path, destination / path.name)


def _move_into_place(staging: Path, output_dir: Path) -> None:
    if not output_dir.exists():
        os.replace(staging, output_dir)
        return
    # An existing folder cannot be replaced by rename: move it aside first, then drop it.
    old = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.old-", dir=output_dir.parent))
    os.replace(output_dir, old / output_dir.name)
    os.replace(staging, output_dir)
    shutil.rmtree(old, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m modeling_vlm2vec.hub.export", description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint_dir", help="training checkpoint folder (full weights or a PEFT adapter)")
    parser.add_argument("output_dir", help="folder to create")
    parser.add_argument("--adapter_only", action="store_true", help="export the adapter only (no merge)")
    parser.add_argument("--base_model", help="the adapter's base (Hub id or folder); overrides adapter_config.json")
    parser.add_argument("--card_context", help="JSON file with model-card details (training, data, license...)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output_dir")
    parser.add_argument(
        "--trust_remote_code", action="store_true", help="allow Hub code of a raw base VLM (never needed for ours)"
    )
    parser.add_argument("--push_to_hub", action="store_true", help="upload the export to --hub_model_id")
    parser.add_argument("--hub_model_id", help="Hub repo id (user/name) to push to")
    parser.add_argument("--private", action="store_true", help="create the Hub repo private")
    parser.add_argument(
        "--dry_run", action="store_true", help="with --push_to_hub: export, list what would be uploaded, upload nothing"
    )
    args = parser.parse_args(argv)
    if args.push_to_hub and not args.hub_model_id:
        parser.error("--push_to_hub needs --hub_model_id")
    if args.dry_run and not args.push_to_hub:
        parser.error("--dry_run applies to --push_to_hub")

    def body():
        if args.hub_model_id:  # a bad repo id (it goes into the card) or an unreachable Hub, before writing
            check_push_target(args.hub_model_id, dry_run=args.dry_run or not args.push_to_hub)
        context = read_json(args.card_context) if args.card_context else {}
        if args.hub_model_id:
            context.setdefault("repo_id", args.hub_model_id)
        folder = export_checkpoint(
            args.checkpoint_dir,
            args.output_dir,
            adapter_only=args.adapter_only,
            base_model=args.base_model,
            card_context=context,
            overwrite=args.overwrite,
            trust_remote_code=args.trust_remote_code,
        )
        print(f"exported {folder}")
        if args.push_to_hub:
            files = push_checkpoint(folder, args.hub_model_id, dry_run=args.dry_run, private=args.private or None)
            if args.dry_run:
                print(f"would push {len(files)} files to {args.hub_model_id}:\n" + "\n".join(files))
            else:
                print(f"pushed {len(files)} files to {args.hub_model_id}")

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
