"""Contrastive batches for the training tests, built the way the collator builds them (collate_group per group)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from modeling_vlm2vec.data.collator import collate_group
from modeling_vlm2vec.training.batching import model_inputs, split_group
from modeling_vlm2vec.training.losses import contrastive_loss


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared 2-core machine threads spin against each
    other (100x slower); import this fixture into a test module to run its tests on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


WORDS = "red green blue yellow purple orange circle square triangle cross star on a white background".split()


def noise_image(seed: int, size: tuple[int, int] = (40, 32)) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _item(rng: random.Random, with_image: bool, seed: int) -> tuple[str, Image.Image | None]:
    words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 7)))
    if with_image:
        return f"<|image_1|> Represent the given image with the following question: {words}", noise_image(seed)
    return f"Find me an everyday image that matches the given caption: {words}", None


def contrastive_batch(model, neg_counts: list[int], seed: int = 0, rows: slice | None = None) -> dict:
    """A batch of ``len(neg_counts)`` rows mixing text-only and image items, row ``i`` with ``neg_counts[i]`` hard
    negatives. ``rows`` selects a slice of that global batch (what one rank would get)."""
    rng = random.Random(seed)
    n = len(neg_counts)
    queries = [_item(rng, i % 2 == 0, seed * 1000 + i) for i in range(n)]
    positives = [_item(rng, i % 3 == 1, seed * 1000 + 100 + i) for i in range(n)]
    negatives = [
        [_item(rng, (i + j) % 2 == 1, seed * 1000 + 200 + 10 * i + j) for j in range(k)]
        for i, k in enumerate(neg_counts)
    ]
    rows = rows or slice(0, n)

    def group(items):
        return collate_group(model.processor, [t for t, _ in items], [img for _, img in items])

    batch = {"query": group(queries[rows]), "positive": group(positives[rows])}
    flat_negatives = [item for per_row in negatives[rows] for item in per_row]
    if flat_negatives:
        batch["negative"] = group(flat_negatives)
    return batch


def groups_of(batch: dict) -> dict:
    return {name: batch[name] for name in ("query", "positive", "negative") if name in batch}


def loss_of(embeddings: dict, temperature: float = 0.02, symmetric: bool = False, **options):
    """The contrastive loss of embedded groups; ``options`` are the loss options (Matryoshka, hardness, margin)."""
    return contrastive_loss(
        embeddings["query"],
        embeddings["positive"],
        embeddings.get("negative"),
        temperature=temperature,
        symmetric=symmetric,
        **options,
    )


def margin_masking_half(model, batch: dict) -> float:
    """A ``false_negative_margin`` that masks between a quarter and three quarters of the (query, other candidate)
    pairs of ``batch``, halfway between the two most distant neighbouring score gaps there (so float noise in the
    embeddings cannot flip a decision)."""
    with torch.no_grad():
        e = {name: model(**model_inputs(g)).embeddings.double() for name, g in groups_of(batch).items()}
    candidates = torch.cat([e["positive"], *([e["negative"]] if "negative" in e else [])])
    scores = e["query"] @ candidates.T  # (B, C)
    own = scores.diagonal()[:, None]
    gaps = (scores - own)[~torch.eye(*scores.shape, dtype=torch.bool)].sort().values  # x_j - x_y, j != y
    k = max(range(max(len(gaps) // 4, 1), 3 * len(gaps) // 4), key=lambda k: gaps[k] - gaps[k - 1])
    assert gaps[k] - gaps[k - 1] > 1e-5, "neighbouring gaps too close for a stable margin"
    return -float(gaps[k - 1] + gaps[k]) / 2


def full_batch_loss(model, batch: dict, **loss_kwargs):
    """The plain (uncached) loss: each group embedded in one forward with grad."""
    return loss_of({name: model(**model_inputs(g)).embeddings for name, g in groups_of(batch).items()}, **loss_kwargs)


def chunked_loss(model, batch: dict, chunk_sizes: dict, **loss_kwargs):
    """The loss of the chunked forward with every chunk's graph kept (chunks embedded in GradCache order)."""
    embeddings = {
        name: torch.cat([model(**model_inputs(chunk)).embeddings for chunk in split_group(g, chunk_sizes[name])])
        for name, g in groups_of(batch).items()
    }
    return loss_of(embeddings, **loss_kwargs)


def copy_gradients(model) -> dict[str, torch.Tensor]:
    """Copies of the trainable parameters' gradients (zeros where no gradient reached)."""
    return {
        n: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
        for n, p in model.named_parameters()
        if p.requires_grad
    }


def gradients(model) -> dict[str, torch.Tensor]:
    """:func:`copy_gradients`, then the gradients are cleared."""
    grads = copy_gradients(model)
    model.zero_grad(set_to_none=True)
    return grads


def relative_error(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """||a - b|| / ||b|| over all parameters together."""
    assert a.keys() == b.keys()
    diff = torch.sqrt(sum(((a[k].double() - b[k].double()) ** 2).sum() for k in a))
    norm = torch.sqrt(sum((b[k].double() ** 2).sum() for k in b))
    assert norm > 0
    return float(diff / norm)
