"""Load a model to evaluate exactly as users load it.

- A Vlm2Vec checkpoint (config ``model_type == "vlm2vec"``, local folder or Hub id):
  ``AutoModel.from_pretrained(path, trust_remote_code=True, dtype=...)`` -- the remote code saved with it.
- A raw VLM (any other ``model_type``): wrapped with ``Vlm2VecModel.from_backbone`` (zero-shot baseline, or the
  base of a LoRA adapter).
- ``lora_adapter``: a PEFT adapter folder applied on top, then merged (``merge_and_unload``).

The processor is the one saved beside the weights (the adapter folder's, if it holds one), loaded with
``processing_vlm2vec.load_processor``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModel

from ..common.dtypes import parse_dtype
from ..common.errors import DataError
from ..hub.checkpoint import PROCESSOR_FILES
from ..processing_vlm2vec import load_processor


def load_model_for_eval(
    model_name_or_path: str | os.PathLike,
    *,
    lora_adapter: str | os.PathLike | None = None,
    dtype: str | torch.dtype | None = "auto",
    device: str | torch.device | None = None,
) -> tuple[torch.nn.Module, object]:
    """Return ``(model, processor)`` ready for :func:`~modeling_vlm2vec.evaluation.evaluate_mmeb` (eval mode)."""
    torch_dtype = parse_dtype(dtype)
    path = str(model_name_or_path)
    config = AutoConfig.from_pretrained(path, trust_remote_code=True)
    if config.model_type == "vlm2vec":
        model = AutoModel.from_pretrained(path, trust_remote_code=True, dtype=torch_dtype)
    else:
        from ..modeling_vlm2vec import Vlm2VecModel

        model = Vlm2VecModel.from_backbone(path, dtype=torch_dtype)
    processor_path = path
    if lora_adapter is not None:
        from peft import PeftModel

        adapter = Path(lora_adapter)
        if not (adapter / "adapter_config.json").is_file():
            raise DataError("not a PEFT adapter folder (no adapter_config.json)", file=str(adapter))
        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
        if any((adapter / name).is_file() for name in PROCESSOR_FILES):
            processor_path = str(adapter)
    processor = load_processor(processor_path)
    if hasattr(model, "processor"):
        model.processor = processor
    if device is not None:
        model.to(device)
    model.eval()
    return model, processor
