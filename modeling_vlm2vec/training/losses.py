r"""InfoNCE over the global batch with shared hard negatives — one code path for 1 and N ranks.

Notation: ``W`` ranks, ``B`` rows per rank (equal on every rank), this rank ``r``, temperature ``\tau``.
Local queries ``q_i`` and positives ``p_i`` (``i < B``) have global index ``rB + i``. Rank ``s`` holds ``n_s >= 0``
hard negatives (the flat negatives of its rows). Gathered across ranks (with gradient):

* ``P`` — all ``W B`` positives, in rank order;
* ``N`` — every rank's negatives, each rank's block zero-padded to ``n_max = max_s n_s`` rows (``W n_max`` slots);
  a padded slot ``j`` has ``m_j = 0``, a real one ``m_j = 1``.

Query -> candidate direction (always used), for each local query ``i``:

.. math::
    s_{ij} = q_i \cdot c_j / \tau \ (c = [P; N]),\quad s_{ij} = -\infty \text{ where } m_j = 0,\qquad
    \ell_i = -s_{i, rB+i} + \log \sum_j e^{s_{ij}}

so every query sees every positive and every hard negative of the global batch, and padded slots contribute
``e^{-\infty} = 0`` (no dummy candidates). Optional symmetric direction: each local positive ``p_i`` against all
``W B`` gathered queries ``Q``, ``t_{ij} = p_i \cdot Q_j / \tau``, label ``rB + i``. The loss is the mean over local
rows of each direction, averaged over the directions used.

Gradient: the backward of the gather sums every rank's gradient into the embedding's own rank, and DDP averages
parameter gradients over ranks, so with equal ``B`` the step gradient is
``(1/W) sum_r grad L_r = grad (1/(W B)) sum_{global i} l_i`` — exactly the single-process gradient on the
concatenated global batch (the softmax does not depend on candidate order).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..common.distributed import all_gather_counts, all_gather_with_grad, rank, world_size


@dataclass
class ContrastiveLossOutput:
    """``loss``: () differentiable; ``accuracy``: () detached fraction of local queries whose top candidate is their
    own positive (in-batch retrieval accuracy, query -> candidate direction)."""

    loss: torch.Tensor
    accuracy: torch.Tensor


def contrastive_loss(
    query: torch.Tensor,
    positive: torch.Tensor,
    negative: torch.Tensor | None = None,
    *,
    temperature: float,
    symmetric: bool = False,
) -> ContrastiveLossOutput:
    """InfoNCE of the local rows against the global batch (see module docstring).

    Args:
        query: (B, d) local query embeddings.
        positive: (B, d) local positive embeddings, row ``i`` the positive of query ``i``.
        negative: (n, d) local hard negatives, any ``n >= 0`` (may differ between ranks), or None for none.
        temperature: softmax temperature ``tau`` (> 0).
        symmetric: add the positive -> query direction.

    Every rank must call this together (it gathers); ``B`` must be equal on all ranks, and so must
    ``positive.requires_grad`` (gathers of tensors in the graph run a collective in backward too).
    """
    batch = query.shape[0]
    if positive.shape != query.shape:
        raise ValueError(f"query {tuple(query.shape)} and positive {tuple(positive.shape)} must have the same shape")
    offset = rank() * batch
    labels = torch.arange(offset, offset + batch, device=query.device)  # (B,)

    candidates = [all_gather_with_grad(positive)]  # (W*B, d)
    n_local = 0 if negative is None else negative.shape[0]
    counts = all_gather_counts(n_local, device=query.device)
    n_max = max(counts)
    slot_mask = None
    if n_max > 0:
        # a rank without negatives pads an empty slice of its positives: the padding stays in the autograd graph
        # like everyone else's, so every rank runs the gather's backward collective
        local = negative if negative is not None else positive[:0]
        local = F.pad(local, (0, 0, 0, n_max - n_local))  # (n_max, d)
        candidates.append(all_gather_with_grad(local))  # (W*n_max, d)
        if min(counts) < n_max:
            real = torch.arange(n_max, device=query.device) < torch.tensor(counts, device=query.device)[:, None]
            slot_mask = torch.cat([real.new_ones(world_size() * batch), real.flatten()])  # (W*B + W*n_max,)

    logits = query @ torch.cat(candidates).T / temperature  # (B, W*B + W*n_max)
    if slot_mask is not None:
        logits = logits.masked_fill(~slot_mask, float("-inf"))
    loss = F.cross_entropy(logits, labels)
    accuracy = (logits.detach().argmax(-1) == labels).float().mean()
    if symmetric:
        reverse = positive @ all_gather_with_grad(query).T / temperature  # (B, W*B)
        loss = (loss + F.cross_entropy(reverse, labels)) / 2
    return ContrastiveLossOutput(loss=loss, accuracy=accuracy)


__all__ = ["ContrastiveLossOutput", "contrastive_loss"]
