"""The model thread's work: embed a merged list of prepared inputs, as ``encode()`` batches them."""

from __future__ import annotations

import contextlib

import torch

from ..encode_items_vlm2vec import length_batches
from ..modeling_vlm2vec import Vlm2VecModel
from .rendering import PreparedInput


@torch.inference_mode()
def embed_inputs(
    model: Vlm2VecModel, inputs: list[PreparedInput], batch_size: int, tokenizer_lock=None
) -> tuple[torch.Tensor, list[int]]:
    """Embed ``inputs`` in forward passes of at most ``batch_size`` rows (the processor runs under
    ``tokenizer_lock`` when given, see :class:`~.rendering.Renderer`).

    Rendered prompts go through the checkpoint's `Vlm2VecProcessor` (:meth:`process_prompts`), grouped by
    ``add_special_tokens`` and batched like ``encode()`` (:func:`length_batches`: text-only and image inputs apart,
    similar lengths together); token ids are padded on the processor's padding side. Returns the
    (len(inputs), hidden_size) float32 embeddings on CPU (normalised when ``config.normalize``) and each input's
    prompt tokens (image tokens included, as vLLM counts them).
    """
    processor = model.processor
    lock = tokenizer_lock or contextlib.nullcontext()
    out = torch.empty(len(inputs), model.config.hidden_size, dtype=torch.float32)
    tokens = [0] * len(inputs)

    def run(rows: list[int], batch: dict[str, torch.Tensor]) -> None:
        batch = {k: v.to(model.device) for k, v in batch.items()}
        out[torch.tensor(rows)] = model(**batch).embeddings.float().cpu()  # (rows, hidden)
        for row, length in zip(rows, batch["attention_mask"].sum(-1).tolist()):
            tokens[row] = int(length)

    for special in (True, False):
        rows = [i for i, x in enumerate(inputs) if x.ids is None and x.add_special_tokens == special]
        for chunk in length_batches([(inputs[i].prompt, inputs[i].image) for i in rows], batch_size):
            chosen = [rows[j] for j in chunk]
            prompts, images = [inputs[i].prompt for i in chosen], [inputs[i].image for i in chosen]
            with lock:
                batch = processor.process_prompts(prompts, images, add_special_tokens=special)
            run(chosen, batch)
    rows = sorted((i for i, x in enumerate(inputs) if x.ids is not None), key=lambda i: len(inputs[i].ids))
    for start in range(0, len(rows), batch_size):
        chosen = rows[start : start + batch_size]
        with lock:
            padded = processor.tokenizer.pad(
                {"input_ids": [inputs[i].ids for i in chosen]},
                padding=True,
                padding_side=processor.padding_side,
                return_tensors="pt",
            )
        run(chosen, {"input_ids": padded["input_ids"], "attention_mask": padded["attention_mask"]})
    return out, tokens


__all__ = ["embed_inputs"]
