"""Training collator: corpus examples -> query / positive / hard-negative tensor groups for the contrastive step.

Images are opened here, lazily, with :func:`~modeling_vlm2vec.data.images.load_image` (a missing or corrupt file
raises ``DataError`` naming the source, the row and the path; a row the processor refuses raises one naming the
source and the row). Every group goes through the model's
:class:`~modeling_vlm2vec.processing_vlm2vec.Vlm2VecProcessor`, so prompts and image resolution match evaluation and
``Vlm2VecModel.encode`` exactly.
"""

from __future__ import annotations

import torch
from PIL import Image

from ..common.errors import DataError
from .images import load_image


def collate_group(processor, texts: list[str | None], images: list[Image.Image | None]) -> dict[str, torch.Tensor]:
    """One training group: ``processor(texts, images)`` plus ``num_images`` (n,) int64, the images of each row."""
    group = processor(texts, images)
    group["num_images"] = torch.tensor([int(img is not None) for img in images], dtype=torch.long)  # (n,)
    return group


class Vlm2VecCollator:
    """Collate examples of :class:`~modeling_vlm2vec.data.sources.TrainingCorpus` into model inputs.

    Args:
        processor: the model's ``Vlm2VecProcessor``.

    ``__call__(examples)`` returns ``{"query": group, "positive": group, "negative": group}`` (``negative`` only when
    some row has a hard negative). Each group is the processor's output for its rows plus ``num_images`` (n,) int64,
    the images of each row, which the trainer uses to cut groups into chunks and removes before the forward pass.
    ``query`` and ``positive`` have one row per example; ``negative`` holds only the real hard negatives of the
    batch, flattened in row order (no padding candidates).
    """

    def __init__(self, processor):
        self.processor = processor

    def _group(self, texts: list[str], images: list[Image.Image | None], rows: list[dict]) -> dict[str, torch.Tensor]:
        """`collate_group`; a row the processor refuses (e.g. its image alone exceeds ``max_length``) raises
        ``DataError`` naming its source and row (found by processing the rows one by one, on the error path only)."""
        try:
            return collate_group(self.processor, texts, images)
        except ValueError:
            for text, image, example in zip(texts, images, rows):
                try:
                    self.processor([text], [image])
                except ValueError as exc:
                    raise DataError(str(exc), dataset=example["source"], row=example["row"]) from None
            raise

    def __call__(self, examples: list[dict]) -> dict:
        def load(path: str | None, example: dict) -> Image.Image | None:
            return None if path is None else load_image(path, dataset=example["source"], row=example["row"])

        batch = {}
        for name, text_key, image_key in (("query", "qry", "qry_image"), ("positive", "pos_text", "pos_image")):
            images = [load(e[image_key], e) for e in examples]
            batch[name] = self._group([e[text_key] for e in examples], images, examples)
        negatives = [(t, p, e) for e in examples for t, p in zip(e["neg_texts"], e["neg_images"])]
        if negatives:
            texts, paths, rows = zip(*negatives)
            batch["negative"] = self._group(list(texts), [load(p, e) for p, e in zip(paths, rows)], list(rows))
        return batch
