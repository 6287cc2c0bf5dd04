"""Read a model to export: a `Vlm2VecModel`, a `PeftModel` wrapping one, or a training checkpoint folder.

A checkpoint folder is either
- a full Vlm2Vec checkpoint: ``config.json`` in the wrapper's layout (``model_type == "vlm2vec"``) or the export
  layout (the backbone's native config with Vlm2Vec settings, see :mod:`.native`) with its ``auto_map``, the remote-code
  files it names, and safetensors weights (what ``Vlm2VecModel.save_pretrained`` / the Trainer write); or
- a PEFT adapter checkpoint: ``adapter_config.json`` + ``adapter_model.safetensors`` whose
  ``base_model_name_or_path`` names the base — a Vlm2Vec checkpoint, or a raw VLM that is wrapped with
  ``Vlm2VecModel.from_backbone`` (configured by the folder's own vlm2vec ``config.json`` when there is one).

Nothing is unpickled: ``*.bin`` weights are refused. Every problem raises :class:`DataError` naming the file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..common.errors import DataError
from ..common.files import read_json
from ..loading import (
    ADAPTER_CONFIG,
    has_processor_files,
    is_vlm2vec_checkpoint,
    load_adapter_checkpoint,
    load_processor,
    load_vlm2vec,
)
from ..modeling_vlm2vec import Vlm2VecModel
from ..processing_vlm2vec import Vlm2VecProcessor

#: The Hub files every checkpoint carries (the modeling file and the sibling files it imports).
REMOTE_CODE_FILES = (
    "configuration_vlm2vec.py",
    "modeling_vlm2vec.py",
    "processing_vlm2vec.py",
    "backbone_processor_vlm2vec.py",
    "prompting_vlm2vec.py",
    "image_policy_vlm2vec.py",
    "encode_items_vlm2vec.py",
    "video_vlm2vec.py",
    "phi3v_config_vlm2vec.py",
    "phi3v_model_vlm2vec.py",
    "phi3v_processing_vlm2vec.py",
)


@dataclass
class ExportSource:
    """What export works from.

    model: the `Vlm2VecModel`, or a `PeftModel` whose base model is one.
    folder: the checkpoint folder it was read from (None for an in-memory model).
    base_reference: for adapters, where the base lives (absolute path or Hub id), as resolved.
    owned: True when the model was loaded here, so export may merge it in place instead of on a copy.
    """

    model: torch.nn.Module
    folder: Path | None = None
    base_reference: str | None = None
    owned: bool = False


def is_peft_model(model: object) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # peft not installed: nothing can be a PeftModel
        return False
    return isinstance(model, PeftModel)


def unwrap_vlm2vec(model: torch.nn.Module) -> Vlm2VecModel:
    """The `Vlm2VecModel` inside `model` (itself, or the base of a PeftModel); `DataError` for anything else."""
    inner = model.get_base_model() if is_peft_model(model) else model
    if not isinstance(inner, Vlm2VecModel) and getattr(getattr(inner, "config", None), "model_type", None) != "vlm2vec":
        raise DataError(f"expected a Vlm2VecModel (or a PeftModel wrapping one), got {type(inner).__name__}")
    return inner


def load_source(
    source: str | os.PathLike | torch.nn.Module, *, base_model: str | None = None, trust_remote_code: bool = False
) -> ExportSource:
    """Turn what the user handed to export into an :class:`ExportSource` (folders load through
    :mod:`modeling_vlm2vec.loading`; `trust_remote_code` reaches only a raw base VLM's Hub code).

    `base_model` overrides an adapter checkpoint's ``base_model_name_or_path`` (a Hub id or a folder).
    """
    if isinstance(source, torch.nn.Module):
        unwrap_vlm2vec(source)
        reference = None
        if is_peft_model(source):
            reference = base_model or source.peft_config[source.active_adapter].base_model_name_or_path
        return ExportSource(model=source, base_reference=reference)
    folder = Path(source)
    if not folder.is_dir():
        raise DataError("checkpoint folder does not exist", file=str(folder))
    load_kwargs = {"dtype": "auto", "trust_remote_code": trust_remote_code}
    if (folder / ADAPTER_CONFIG).is_file():
        model, base_ref = load_adapter_checkpoint(folder, base_model, load_kwargs=load_kwargs)
        return ExportSource(model=model, folder=folder, base_reference=base_ref, owned=True)
    if (folder / "config.json").is_file():
        read_vlm2vec_config(folder)
        model = load_vlm2vec(folder, trust_remote_code=trust_remote_code)
        return ExportSource(model=model, folder=folder, owned=True)
    raise DataError(
        "not a checkpoint: no config.json (full model) or adapter_config.json (PEFT adapter)", file=str(folder)
    )


def read_vlm2vec_config(folder: Path) -> dict:
    """The folder's config.json as a dict; `DataError` when it describes a raw VLM rather than a Vlm2Vec checkpoint."""
    config = read_json(folder / "config.json")
    if not is_vlm2vec_checkpoint(config):
        raise DataError(
            f"config.json has model_type {config.get('model_type')!r} and no Vlm2Vec settings; wrap a raw VLM "
            f"with Vlm2VecModel.from_backbone(...) first",
            file=str(folder / "config.json"),
        )
    return config


def check_remote_code(folder: Path) -> dict:
    """Return the folder's vlm2vec config.json; `DataError` unless its auto_map and remote-code files are complete."""
    config = read_vlm2vec_config(folder)
    auto_map = config.get("auto_map") or {}
    missing = [name for name in ("AutoConfig", "AutoModel") if name not in auto_map]
    if missing:
        raise DataError(
            f"config.json auto_map lacks {missing}; the checkpoint cannot load with trust_remote_code=True",
            file=str(folder / "config.json"),
        )
    modules = {f"{ref.split('.')[0]}.py" for ref in auto_map.values()} | set(REMOTE_CODE_FILES)
    absent = sorted(name for name in modules if not (folder / name).is_file())
    if absent:
        raise DataError(f"remote-code files missing: {', '.join(absent)}", file=str(folder))
    return config


def load_export_processor(source: ExportSource, processor=None) -> Vlm2VecProcessor:
    """The processor to save, always with the model's input contract (the model itself is left as it is): the given
    one, else the one saved in the checkpoint folder, else the model's own, else the adapter base's."""
    inner = unwrap_vlm2vec(source.model)
    if processor is not None:
        return processor if hasattr(processor, "backbone_processor") else Vlm2VecProcessor(processor, inner.config)
    errors = []
    if has_processor_files(source.folder):
        try:
            return load_processor(source.folder, inner)
        except DataError as exc:
            errors.append(str(exc))
    try:
        return inner.processor
    except (OSError, ValueError, TypeError) as exc:
        errors.append(str(exc))
    if source.base_reference is not None:
        try:
            return load_processor(source.base_reference, inner)
        except DataError as exc:
            errors.append(str(exc))
    raise DataError(
        f"no processor found beside the checkpoint or its base; pass processor=... ({'; '.join(errors)})",
        file=str(source.folder) if source.folder else None,
    )


__all__ = [
    "REMOTE_CODE_FILES",
    "ExportSource",
    "check_remote_code",
    "is_peft_model",
    "load_export_processor",
    "load_source",
    "unwrap_vlm2vec",
]
