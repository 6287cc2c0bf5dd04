"""Training collator: corpus examples -> query / positive / hard-negative tensor groups for the contrastive step.

Images are opened here, lazily, with :func:`~modeling_vlm2vec.data.images.load_image` (a missing or corrupt file
raises ``DataError`` naming the source, the row and the path). Every group goes through the one processing path,
:func:`~modeling_vlm2vec.processing_vlm2vec.process_batch`, so prompts and image resolution match evaluation and
``Vlm2VecModel.encode`` exactly.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from PIL import Image

from ..processing_vlm2vec import process_batch
from .images import load_image, resolve_image_path


class Vlm2VecCollator:
    """Collate examples of :class:`~modeling_vlm2vec.data.sources.TrainingCorpus` into model inputs.

    Args:
        processor: the backbone processor (``processing_vlm2vec.load_processor``).
        config: the model's ``Vlm2VecConfig`` (image token, padding side, max length, resolution policy).
        image_dirs: ``{source name: image folder}`` for examples whose image paths are relative; examples from
            ``TrainingCorpus`` carry resolved paths and need none.

    ``__call__(examples)`` returns ``{"query": group, "positive": group, "negative": group (only when some row has a
    hard negative), "neg_counts": (batch,) int64}``. Each group is the ``process_batch`` dict (``input_ids``,
    ``attention_mask`` (n, seq), image tensors, ``num_images`` (n,) int64). ``query`` and ``positive`` have one row
    per example; ``negative`` holds only the real hard negatives of the batch, flattened in row order: rows
    ``sum(neg_counts[:i]) ... + neg_counts[i]`` belong to example ``i`` (no padding candidates).
    """

    def __init__(self, processor, config, image_dirs: Mapping[str, str | os.PathLike] | None = None):
        self.processor, self.config = processor, config
        self.image_dirs = dict(image_dirs or {})

    def _load(self, path: str | None, example: dict) -> Image.Image | None:
        if path is None:
            return None
        source, row = example["source"], example["row"]
        if not os.path.isabs(path):
            if source not in self.image_dirs:
                raise ValueError(f"relative image path {path!r} of source {source!r} needs image_dirs[{source!r}]")
            path = resolve_image_path(self.image_dirs[source], path, dataset=source, row=row)
        return load_image(path, dataset=source, row=row)

    def __call__(self, examples: list[dict]) -> dict:
        queries = [self._load(e["qry_image"], e) for e in examples]
        positives = [self._load(e["pos_image"], e) for e in examples]
        batch = {
            "query": process_batch(self.processor, self.config, [e["qry"] for e in examples], queries),
            "positive": process_batch(self.processor, self.config, [e["pos_text"] for e in examples], positives),
            "neg_counts": torch.tensor([len(e["neg_texts"]) for e in examples], dtype=torch.long),  # (batch,)
        }
        neg_texts = [t for e in examples for t in e["neg_texts"]]
        if neg_texts:
            neg_images = [self._load(p, e) for e in examples for p in e["neg_images"]]
            batch["negative"] = process_batch(self.processor, self.config, neg_texts, neg_images)
        return batch
