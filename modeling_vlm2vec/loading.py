"""The one model loader: training, evaluation, export and conversion all load models here, under one trust policy.

``load_vlm2vec(path)`` accepts

- a Vlm2Vec checkpoint (:func:`is_vlm2vec_checkpoint`), local folder or Hub id: loaded through the *installed*
  classes of this package, never through the Python files saved beside the weights, so it needs no trust;
- a PEFT adapter folder (a LoRA training checkpoint: ``adapter_config.json`` + ``adapter_model.safetensors``, often
  with the wrapper's ``config.json``): its base (``base_model_name_or_path``) is loaded, the adapter applied with every
  key checked, then merged;
- a raw VLM, wrapped with ``Vlm2VecModel.from_backbone``.

Hub code of a backbone or its processor (e.g. Phi-3.5-V) runs only with ``trust_remote_code=True`` from the user.
Weights are read from safetensors only; nothing is unpickled. Every problem raises
:class:`~modeling_vlm2vec.common.errors.DataError` naming the file.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from transformers import AutoConfig
from transformers.utils import cached_file

from .common.dtypes import parse_dtype
from .common.errors import DataError
from .common.files import read_json
from .configuration_vlm2vec import NATIVE_SETTINGS_KEY, WRAPPER_FIELDS, Vlm2VecConfig, wrapper_dict_from_native
from .modeling_vlm2vec import Vlm2VecModel
from .processing_vlm2vec import Vlm2VecProcessor, load_backbone_processor

PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json")
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def is_vlm2vec_checkpoint(config: dict) -> bool:
    """True when a ``config.json`` (as a dict) describes a Vlm2Vec checkpoint rather than a raw VLM: the wrapper's own
    layout (``model_type == "vlm2vec"``) or the export layout (a native backbone config with Vlm2Vec settings)."""
    return config.get("model_type") == "vlm2vec" or NATIVE_SETTINGS_KEY in config


def wrapper_settings(config: dict) -> dict:
    """The Vlm2Vec settings recorded in a checkpoint's ``config.json`` dict (either layout; {} for a raw VLM)."""
    if not is_vlm2vec_checkpoint(config):
        return {}
    if config.get("model_type") != "vlm2vec":
        config = wrapper_dict_from_native(config)
    return {k: v for k, v in config.items() if k in WRAPPER_FIELDS}


def read_config(reference: str | os.PathLike) -> dict:
    """The ``config.json`` of a folder or Hub repo as a dict; `DataError` naming the place when there is none."""
    try:
        resolved = cached_file(str(reference), "config.json")
    except OSError as exc:
        raise DataError("no config.json: not a model folder or a reachable Hub model", file=str(reference)) from exc
    return read_json(resolved)


def has_processor_files(folder: str | os.PathLike | None) -> bool:
    """True when ``folder`` is a local folder holding a saved processor or tokenizer."""
    return folder is not None and any((Path(folder) / name).is_file() for name in PROCESSOR_FILES)


def load_vlm2vec(
    path: str | os.PathLike,
    *,
    dtype: str | torch.dtype | None = "auto",
    trust_remote_code: bool = False,
    lora_adapter: str | os.PathLike | None = None,
    overrides: dict | None = None,
    device: str | torch.device | None = None,
    attn_implementation: str | None = None,
    processor_kwargs: dict | None = None,
) -> Vlm2VecModel:
    """Load a model (see the module doc for what ``path`` may be) with its `Vlm2VecProcessor` as ``.processor``.

    Args:
        dtype: ``"auto"`` (the checkpoint's), a torch dtype or a name (``float32``, ``bf16``...).
        trust_remote_code: allow Hub code of the backbone and its processor. Our own checkpoints never need it.
        lora_adapter: a PEFT adapter folder (keys in this package's layout) applied on top and merged.
        overrides: `Vlm2VecConfig` settings to change (only those named; the rest stay as saved), validated like
            the config's own; a bad value raises `DataError`.
        device: where to put the model.
        attn_implementation: ``sdpa``, ``eager``, ``flash_attention_2``... for the backbone.
        processor_kwargs: passed to the backbone processor's ``from_pretrained`` (e.g. ``{"num_crops": 4}``).

    The processor comes from the adapter folder when it holds one, else from ``path``, else from the adapter's base.
    The model is returned in the mode ``from_pretrained`` leaves it (eval); the caller switches it to training.
    """
    overrides = dict(overrides or {})
    if device is not None:
        check_device(device)  # before minutes of loading, not after
    load_kwargs = {"dtype": parse_dtype(dtype), "trust_remote_code": trust_remote_code}
    if attn_implementation:
        load_kwargs["attn_implementation"] = attn_implementation
    path = str(path)
    processor_sources = [path]
    if Path(path, ADAPTER_CONFIG).is_file():
        peft_model, base = load_adapter_checkpoint(Path(path), load_kwargs=load_kwargs)
        model = peft_model.merge_and_unload()
        processor_sources.append(base)
    elif is_vlm2vec_checkpoint(read_config(path)):
        model = _load_checkpoint(path, load_kwargs)
    else:
        model = _wrap_backbone(path, load_kwargs, overrides)
        overrides = {}
    if overrides:
        try:
            model.config.apply_overrides(overrides)
        except ValueError as exc:
            raise DataError(f"bad setting for this model: {exc}", file=path) from exc
    if lora_adapter is not None:
        adapter = Path(lora_adapter)
        if not (adapter / ADAPTER_CONFIG).is_file():
            raise DataError(f"not a PEFT adapter folder (no {ADAPTER_CONFIG})", file=str(adapter))
        model = _attach_adapter_folder(model, adapter).merge_and_unload()
        processor_sources.insert(0, str(adapter))
    processor_path = next((s for s in processor_sources if has_processor_files(s)), processor_sources[-1])
    model.processor = load_processor(
        processor_path, model, trust_remote_code=trust_remote_code, **(processor_kwargs or {})
    )
    if device is not None:
        model.to(device)
    return model


def check_device(device: str | torch.device) -> None:
    """`DataError` unless ``device`` names a device this machine has (``cpu``, an existing ``cuda:<i>``, ``mps``
    when available...)."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise DataError(f"--device {str(device)!r} is not a device ({exc})") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise DataError(f"--device {str(device)!r}: this machine (or this torch build) has no CUDA device")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise DataError(f"--device {str(device)!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise DataError(f"--device {str(device)!r}: MPS is not available on this machine")


def load_processor(
    path: str | os.PathLike, model: Vlm2VecModel, *, trust_remote_code: bool = False, **kwargs
) -> Vlm2VecProcessor:
    """The backbone processor saved at ``path`` wrapped with ``model``'s input contract; `DataError` if none loads."""
    if trust_remote_code:
        kwargs["trust_remote_code"] = True
    try:
        backbone_processor = load_backbone_processor(path, **kwargs)
    except (OSError, ValueError, TypeError) as exc:
        raise DataError(f"cannot load the processor: {exc}", file=str(path)) from exc
    return Vlm2VecProcessor.from_config(backbone_processor, model.config)


def load_input_processor(path: str | os.PathLike, *, trust_remote_code: bool = False) -> Vlm2VecProcessor | None:
    """The `Vlm2VecProcessor` :func:`load_vlm2vec` would attach to the model at ``path``, without loading weights,
    so commands can check their data against the model's prompts (literal backbone tokens, context length) before
    spending minutes on loading. None for a PEFT adapter folder (its base decides; check after loading then).

    A Vlm2Vec checkpoint gives its saved settings, a raw VLM the default settings ``from_backbone`` wraps it with.
    `DataError` naming ``path`` when there is no config or processor to load.
    """
    path = str(path)
    if Path(path, ADAPTER_CONFIG).is_file():
        return None
    saved = read_config(path)
    try:
        if is_vlm2vec_checkpoint(saved):
            config = Vlm2VecConfig.from_dict(saved)
        else:
            backbone = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
            config = Vlm2VecConfig(backbone_config=backbone)
    except (OSError, ValueError, TypeError) as exc:
        raise DataError(f"cannot read the model's config: {exc}", file=path) from exc
    kwargs = {"trust_remote_code": True} if trust_remote_code else {}
    try:
        return Vlm2VecProcessor.from_config(load_backbone_processor(path, **kwargs), config)
    except (OSError, ValueError, TypeError) as exc:
        raise DataError(f"cannot load the processor: {exc}", file=path) from exc


def check_safetensors(folder: str | os.PathLike) -> None:
    """`DataError` naming the file unless ``folder`` holds safetensors weights whose files are all complete.

    Only each file's header is read (it records every tensor's byte range, which must fit the file), so a truncated
    or corrupt file is found before minutes of loading, not in the middle.
    """
    folder = Path(folder)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        found = sorted(p.name for p in folder.glob("*.bin"))
        detail = f" (found {', '.join(found)}; pickled weights are not loaded)" if found else ""
        raise DataError(f"no safetensors weights{detail}", file=str(folder))
    for file in files:
        try:
            with safe_open(str(file), framework="pt"):
                pass
        except (OSError, SafetensorError) as exc:  # truncated or corrupt header
            raise DataError(f"corrupt or truncated safetensors file ({exc})", file=str(file)) from exc


def _load_checkpoint(path: str, load_kwargs: dict) -> Vlm2VecModel:
    if Path(path).is_dir():
        check_safetensors(path)
    kwargs = {k: v for k, v in load_kwargs.items() if k != "trust_remote_code" or v}
    try:
        model, info = Vlm2VecModel.from_pretrained(path, output_loading_info=True, **kwargs)
    except (OSError, ValueError, SafetensorError) as exc:
        raise DataError(f"cannot load the checkpoint: {exc}", file=path) from exc
    if info["missing_keys"]:
        raise DataError(f"weights missing from the checkpoint: {sorted(info['missing_keys'])[:5]}", file=path)
    return model


def _wrap_backbone(path: str, load_kwargs: dict, settings: dict) -> Vlm2VecModel:
    unknown = sorted(set(settings) - set(WRAPPER_FIELDS))
    if unknown:
        raise DataError(f"unknown Vlm2Vec setting(s) {unknown}; known: {list(WRAPPER_FIELDS)}", file=path)
    try:
        return Vlm2VecModel.from_backbone(path, **load_kwargs, **settings)
    except (OSError, ValueError, SafetensorError) as exc:  # missing files, bad config, truncated weights
        raise DataError(f"cannot load the model: {exc}", file=path) from exc


def resolve_base(reference: str, checkpoint: Path | None = None) -> str:
    """An adapter's base as an absolute folder (tried as given, then beside the checkpoint and its parents) or a
    loadable Hub id; `DataError` when it is nowhere."""
    path = Path(reference).expanduser()
    candidates = [path] if path.is_absolute() else [Path.cwd() / path]
    if checkpoint is not None and not path.is_absolute():
        candidates += [checkpoint / path, checkpoint.parent / path, checkpoint.parent.parent / path]
    for candidate in candidates:
        if (candidate / "config.json").is_file():
            return str(candidate.resolve())
    try:  # a Hub id: reachable online or cached offline
        read_config(reference)
    except (DataError, OSError, ValueError) as exc:
        where = f" (looked in {', '.join(str(c) for c in candidates)} and the Hub cache)"
        raise DataError(
            f"adapter base {reference!r} cannot be found{where}; pass --base_model <folder or Hub id>",
            file=str(checkpoint / ADAPTER_CONFIG) if checkpoint else None,
        ) from exc
    return reference


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
    try:
        return load_file(weights)
    except Exception as exc:  # safetensors raises its own error types for truncated or corrupt files
        raise DataError(f"cannot read adapter weights ({exc})", file=str(weights)) from exc


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


def _attach_adapter_folder(base: Vlm2VecModel, folder: Path):
    from peft import PeftConfig

    read_json(folder / ADAPTER_CONFIG)  # a malformed file becomes a DataError naming it
    weights = read_adapter_weights(folder)
    return attach_adapter(base, PeftConfig.from_pretrained(folder), weights, file=str(folder / ADAPTER_WEIGHTS))


def load_adapter_checkpoint(folder: Path, base_model: str | None = None, *, load_kwargs: dict | None = None):
    """``(PeftModel, base reference)`` of a PEFT adapter checkpoint folder, unmerged.

    The base is `base_model` or the adapter's ``base_model_name_or_path`` (see :func:`resolve_base`): a Vlm2Vec
    checkpoint as is, or a raw VLM wrapped with the settings of the folder's own vlm2vec ``config.json`` (what the
    trainer saves beside LoRA checkpoints).
    """
    adapter_config = read_json(folder / ADAPTER_CONFIG)
    reference = base_model or adapter_config.get("base_model_name_or_path")
    if not reference:
        raise DataError(
            "adapter_config.json names no base_model_name_or_path; pass --base_model", file=str(folder / ADAPTER_CONFIG)
        )
    base_ref = resolve_base(reference, folder)
    load_kwargs = dict(load_kwargs or {"dtype": "auto", "trust_remote_code": False})
    if is_vlm2vec_checkpoint(read_config(base_ref)):
        base = _load_checkpoint(base_ref, load_kwargs)
    else:
        saved = read_json(folder / "config.json") if (folder / "config.json").is_file() else {}
        base = _wrap_backbone(base_ref, load_kwargs, wrapper_settings(saved))
    return _attach_adapter_folder(base, folder), base_ref


def is_vlm2vec_base(reference: str) -> bool:
    """True when `reference` (folder or Hub id) holds a Vlm2Vec checkpoint rather than a raw VLM."""
    return is_vlm2vec_checkpoint(read_config(reference))


__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "PROCESSOR_FILES",
    "attach_adapter",
    "check_device",
    "check_safetensors",
    "has_processor_files",
    "is_vlm2vec_base",
    "is_vlm2vec_checkpoint",
    "load_adapter_checkpoint",
    "load_input_processor",
    "load_processor",
    "load_vlm2vec",
    "read_adapter_weights",
    "read_config",
    "resolve_base",
    "wrapper_settings",
]
