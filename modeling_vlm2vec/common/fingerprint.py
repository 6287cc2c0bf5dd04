"""Identity of a model for caches: embeddings cached under its fingerprint stay valid while it matches.

The fingerprint hashes every byte of every tensor the model holds *in memory*, not the files it was loaded from:
the memory is what embeds. A model built in memory, trained, merged with an adapter (peft writes merged weights
through ``.data``, which no version counter sees), loaded in another dtype, or loaded from a checkpoint that lacks
some weights (randomly initialised) is fingerprinted as it is. Equal fingerprints mean equal config, processor
settings and weights, bit for bit; a model saved and loaded again in the same dtype keeps its fingerprint. The cost is
one pass over the weights (SHA-256, tensors hashed on several threads), about what reading them from disk costs.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor

import torch

#: Bumped when the meaning of cached embeddings or scores changes, so old caches are not reused.
CACHE_VERSION = "1"
_VOLATILE_CONFIG_KEYS = ("_name_or_path", "transformers_version", "_commit_hash")


def tensor_digest(tensor: torch.Tensor) -> str:
    """SHA-256 hex digest of ``tensor``'s bytes in row-major order (its shape and dtype are not included)."""
    flat = tensor.detach().reshape(-1)
    if flat.device.type != "cpu":
        flat = flat.cpu()
    data = flat.contiguous().view(torch.uint8).numpy()  # a view of the tensor's memory: nothing is converted
    return hashlib.sha256(memoryview(data)).hexdigest()  # hashlib releases the GIL: threads hash in parallel


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 over every ``state_dict`` entry's name, shape, dtype and bytes (tied tensors hashed once)."""
    state = model.state_dict(keep_vars=True)
    unique: dict[tuple, torch.Tensor] = {}
    for tensor in state.values():
        unique.setdefault(_storage_key(tensor), tensor)
    workers = max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        digests = dict(zip(unique, pool.map(tensor_digest, unique.values())))
    digest = hashlib.sha256()
    for name, tensor in state.items():
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}:{digests[_storage_key(tensor)]}\n".encode())
    return digest.hexdigest()


def _storage_key(tensor: torch.Tensor) -> tuple:
    # Two names for one tensor (tied embeddings) share memory, shape, strides and dtype.
    return (tensor.device.type, tensor.data_ptr(), tensor.dtype, tuple(tensor.shape), tuple(tensor.stride()))


def model_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 over the model's config, every byte of its weights (:func:`weights_digest`) and its processor's
    settings."""
    digest = hashlib.sha256(f"{CACHE_VERSION}:full-weights".encode())
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        config_dict = {k: v for k, v in config.to_dict().items() if k not in _VOLATILE_CONFIG_KEYS}
        digest.update(json.dumps(config_dict, sort_keys=True, default=str).encode())
    digest.update(weights_digest(model).encode())
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


__all__ = ["CACHE_VERSION", "model_fingerprint", "tensor_digest", "weights_digest"]
