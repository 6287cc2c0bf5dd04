"""Identity of a model for caches: embeddings cached under its fingerprint stay valid while it matches."""

from __future__ import annotations

import hashlib
import json

import torch

#: Bumped when the meaning of cached embeddings or scores changes, so old caches are not reused.
CACHE_VERSION = "1"
_SAMPLES_PER_TENSOR = 4096
_VOLATILE_CONFIG_KEYS = ("_name_or_path", "transformers_version", "_commit_hash")


def model_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 over the model's config, a strided sample of every weight tensor, and its processor's settings.

    Sampling up to 4096 evenly spaced values per tensor (plus names, shapes, dtypes) tells fine-tuned or
    LoRA-merged weights apart at a fraction of the cost of hashing every byte of a multi-GB model.
    """
    digest = hashlib.sha256(CACHE_VERSION.encode())
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        config_dict = {k: v for k, v in config.to_dict().items() if k not in _VOLATILE_CONFIG_KEYS}
        digest.update(json.dumps(config_dict, sort_keys=True, default=str).encode())
    for name, tensor in model.state_dict().items():
        flat = tensor.detach().reshape(-1)
        step = max(1, flat.numel() // _SAMPLES_PER_TENSOR)
        sample = flat[::step][:_SAMPLES_PER_TENSOR].float().cpu().numpy()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(sample.tobytes())
    processor = getattr(model, "processor", None)
    if processor is not None:
        digest.update(_processor_description(processor).encode())
    return digest.hexdigest()


def _processor_description(processor: object) -> str:
    # Processors differ by class and by their saved settings (resolution, crops, ...): both change embeddings.
    try:
        settings = processor.to_json_string()
    except (AttributeError, TypeError, ValueError):
        settings = ""
    return f"{type(processor).__qualname__}:{settings}"


__all__ = ["CACHE_VERSION", "model_fingerprint"]
