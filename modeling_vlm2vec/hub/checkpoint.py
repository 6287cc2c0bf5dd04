"""Read a model to export: a `Vlm2VecModel`, a `PeftModel` wrapping one, or a training checkpoint folder.

A checkpoint folder is either
- a full Vlm2Vec checkpoint: ``config.json`` with ``model_type == "vlm2vec"`` and its ``auto_map``, the remote-code
  files it names, and safetensors weights (what ``Vlm2VecModel.save_pretrained`` / the Trainer write); or
- a PEFT adapter checkpoint: ``adapter_config.json`` + ``adapter_model.safetensors`` whose
  ``base_model_name_or_path`` names the base — a Vlm2Vec checkpoint, or a raw VLM that is wrapped with
  ``Vlm2VecModel.from_backbone`` (configured by the folder's own vlm2vec ``config.json`` when there is one).

Nothing is unpickled: ``*.bin`` weights are refused. Every problem raises :class:`DataError` naming the file.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoConfig, PreTrainedConfig

from ..common.errors import DataError
from ..common.files import read_json
from ..configuration_vlm2vec import Vlm2VecConfig
from ..modeling_vlm2vec import Vlm2VecModel
from ..processing_vlm2vec import load_processor

REMOTE_CODE_FILES = ("configuration_vlm2vec.py", "modeling_vlm2vec.py", "processing_vlm2vec.py")
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json")
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# Fields a Vlm2VecConfig adds to PreTrainedConfig, minus the backbone: what a raw VLM needs to become this model.
WRAPPER_FIELDS = tuple(
    f.name
    for f in dataclasses.fields(Vlm2VecConfig)
    if f.name not in {g.name for g in dataclasses.fields(PreTrainedConfig)} and f.name != "backbone_config"
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


def load_source(source: str | os.PathLike | torch.nn.Module, *, base_model: str | None = None) -> ExportSource:
    """Turn what the user handed to export into an :class:`ExportSource`.

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
    if (folder / ADAPTER_CONFIG).is_file():
        return _load_adapter_checkpoint(folder, base_model)
    if (folder / "config.json").is_file():
        return ExportSource(model=_load_full_checkpoint(folder), folder=folder, owned=True)
    raise DataError(
        "not a checkpoint: no config.json (full model) or adapter_config.json (PEFT adapter)", file=str(folder)
    )


def check_remote_code(folder: Path) -> dict:
    """Return the folder's vlm2vec config.json; `DataError` unless its auto_map and remote-code files are complete."""
    config = read_json(folder / "config.json")
    if config.get("model_type") != "vlm2vec":
        raise DataError(
            f"config.json has model_type {config.get('model_type')!r}, not 'vlm2vec'; wrap a raw VLM "
            f"with Vlm2VecModel.from_backbone(...) first",
            file=str(folder / "config.json"),
        )
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


def _load_full_checkpoint(folder: Path) -> Vlm2VecModel:
    check_remote_code(folder)
    if not any(folder.glob("*.safetensors")):
        found = sorted(p.name for p in folder.glob("*.bin"))
        detail = f" (found {', '.join(found)}; pickled weights are not loaded)" if found else ""
        raise DataError(f"no safetensors weights{detail}", file=str(folder))
    try:
        model, info = Vlm2VecModel.from_pretrained(folder, output_loading_info=True)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot load the checkpoint: {exc}", file=str(folder)) from exc
    if info["missing_keys"]:
        raise DataError(f"weights missing from the checkpoint: {sorted(info['missing_keys'])[:5]}", file=str(folder))
    return model


def resolve_base(reference: str, checkpoint: Path | None = None) -> str:
    """Absolute folder (tried as given, then beside the checkpoint and its parents) or a loadable Hub id."""
    path = Path(reference).expanduser()
    candidates = (
        [path]
        if path.is_absolute()
        else [Path.cwd() / path]
        + ([checkpoint / path, checkpoint.parent / path, checkpoint.parent.parent / path] if checkpoint else [])
    )
    for candidate in candidates:
        if (candidate / "config.json").is_file():
            return str(candidate.resolve())
    try:  # a Hub id: reachable online or cached offline
        AutoConfig.from_pretrained(reference)
    except (OSError, ValueError) as exc:
        where = f" (looked in {', '.join(str(c) for c in candidates)} and the Hub cache)"
        raise DataError(
            f"adapter base {reference!r} cannot be found{where}; pass --base_model <folder or Hub id>",
            file=str(checkpoint / ADAPTER_CONFIG) if checkpoint else None,
        ) from exc
    return reference


def is_vlm2vec_base(reference: str) -> bool:
    """True when `reference` (folder or Hub id) holds a Vlm2Vec checkpoint rather than a raw VLM."""
    return AutoConfig.from_pretrained(reference).model_type == "vlm2vec"


def load_base(reference: str, wrapper_config: dict | None = None) -> Vlm2VecModel:
    """Load the base an adapter applies to: a Vlm2Vec checkpoint as is, a raw VLM wrapped with `wrapper_config`."""
    if is_vlm2vec_base(reference):
        return Vlm2VecModel.from_pretrained(reference)
    kwargs = {k: v for k, v in (wrapper_config or {}).items() if k in WRAPPER_FIELDS}
    return Vlm2VecModel.from_backbone(reference, **kwargs)


def attach_adapter(base: Vlm2VecModel, peft_config, weights: dict[str, torch.Tensor], *, file: str):
    """Wrap `base` in a PeftModel with `peft_config` and load `weights` (PEFT-saved key names), checking every key.

    Raises `DataError` when the adapter targets modules the model lacks, or when adapter tensors are left over or
    missing — e.g. an adapter saved on a raw VLM in another layout (see `convert_official_checkpoint`).
    """
    from peft import PeftModel, set_peft_model_state_dict

    try:
        model = PeftModel(base, peft_config)
    except ValueError as exc:  # target modules not found in the model
        raise DataError(f"adapter does not fit the model: {exc}", file=file) from exc
    result = set_peft_model_state_dict(model, weights)
    unexpected = sorted(result.unexpected_keys)
    missing = sorted(k for k in result.missing_keys if "lora_" in k)
    if unexpected or missing:
        example = (unexpected or missing)[0]
        raise DataError(
            f"adapter weights do not match the model ({len(unexpected)} unexpected, {len(missing)} "
            f"missing, e.g. {example!r}); an adapter saved on a raw VLM in another key layout needs "
            f"convert_official_checkpoint",
            file=file,
        )
    model.eval()
    return model


def read_adapter_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The adapter tensors of a PEFT folder; only safetensors (a pickled ``adapter_model.bin`` is refused)."""
    weights = folder / ADAPTER_WEIGHTS
    if not weights.is_file():
        hint = ""
        if (folder / "adapter_model.bin").exists():
            hint = (
                " (adapter_model.bin is a pickle and is not loaded; convert it once with torch.load(..., "
                "weights_only=True) and safetensors.torch.save_file)"
            )
        raise DataError(f"{ADAPTER_WEIGHTS} missing{hint}", file=str(folder))
    return load_file(weights)


def _load_adapter_checkpoint(folder: Path, base_model: str | None) -> ExportSource:
    from peft import PeftConfig

    adapter_config = read_json(folder / ADAPTER_CONFIG)
    reference = base_model or adapter_config.get("base_model_name_or_path")
    if not reference:
        raise DataError(
            "adapter_config.json names no base_model_name_or_path; pass --base_model", file=str(folder / ADAPTER_CONFIG)
        )
    base_ref = resolve_base(reference, folder)
    weights = read_adapter_weights(folder)
    wrapper_config = None
    if (folder / "config.json").is_file():
        config = read_json(folder / "config.json")
        wrapper_config = config if config.get("model_type") == "vlm2vec" else None
    base = load_base(base_ref, wrapper_config)
    model = attach_adapter(base, PeftConfig.from_pretrained(folder), weights, file=str(folder / ADAPTER_WEIGHTS))
    return ExportSource(model=model, folder=folder, base_reference=base_ref, owned=True)


def load_export_processor(source: ExportSource, processor=None):
    """The processor to save: the given one, else the checkpoint folder's, else the base's / model's own."""
    if processor is not None:
        return processor
    inner = unwrap_vlm2vec(source.model)
    candidates = [str(p) for p in (source.folder,) if p is not None and any((p / f).is_file() for f in PROCESSOR_FILES)]
    candidates += [c for c in (source.base_reference, inner.name_or_path) if c]
    errors = []
    for candidate in candidates:
        try:
            return load_processor(candidate)
        except (OSError, ValueError, TypeError) as exc:
            errors.append(f"{candidate}: {exc}")
    raise DataError(
        "no processor found beside the checkpoint or its base; pass processor=... "
        f"({'; '.join(errors) or 'no candidate folder'})",
        file=str(source.folder) if source.folder else None,
    )


__all__ = [
    "ExportSource",
    "REMOTE_CODE_FILES",
    "PROCESSOR_FILES",
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "WRAPPER_FIELDS",
    "attach_adapter",
    "check_remote_code",
    "is_peft_model",
    "is_vlm2vec_base",
    "load_base",
    "load_export_processor",
    "load_source",
    "read_adapter_weights",
    "resolve_base",
    "unwrap_vlm2vec",
]
