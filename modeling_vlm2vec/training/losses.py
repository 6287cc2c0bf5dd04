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

Options (recorded in the checkpoint's config; all default off), for one softmax row with similarities
``x_j = q_i \cdot c_j`` (cosine for normalised embeddings), logits ``x_j / \tau``, own positive at ``j = y``:

* **false-negative masking** (``false_negative_margin = m``): every candidate ``j != y`` with
  ``x_j > x_y - m`` is removed from the row's softmax (like padded slots); the decision is made on detached values,
  and the row's own positive is never removed.
* **hardness weighting** (``hardness_alpha = a``, LLaVE, arXiv 2503.04812): each remaining negative's term in the
  denominator is multiplied by ``w_j = n \, e^{a x_j} / \sum_{k \in neg} e^{a x_k}`` (``n`` = number of the row's
  remaining negatives, so the weights average 1 and ``a = 0`` is plain InfoNCE), weights detached:
  ``\ell = -x_y/\tau + \log(e^{x_y/\tau} + \sum_{j \in neg} w_j e^{x_j/\tau})``.
* **Matryoshka** (``matryoshka_dims = [d_1 < ... < d_K = d]``, weights ``\omega_k``, default equal): the loss above
  is computed on the first ``d_k`` coordinates of every embedding, re-normalised when the model normalises
  (:func:`~modeling_vlm2vec.modeling_vlm2vec.truncate_embeddings`), and ``L = \sum_k \omega_k L_{d_k} /
  \sum_k \omega_k``.

Masking and weighting apply to both directions. Every option is a function of each row's similarities, so the
gradient property below holds for all of them, and so does GradCache's (its cached embeddings equal the full-batch
ones; only a candidate within float rounding of the margin threshold could be decided differently).

Gradient: the backward of the gather sums every rank's gradient into the embedding's own rank, and DDP averages
parameter gradients over ranks, so with equal ``B`` the step gradient is
``(1/W) sum_r grad L_r = grad (1/(W B)) sum_{global i} l_i`` — exactly the single-process gradient on the
concatenated global batch (the softmax does not depend on candidate order).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F

from ..common.distributed import all_gather_counts, all_gather_with_grad, rank, world_size
from ..modeling_vlm2vec import truncate_embeddings


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
    matryoshka_dims: list[int] | None = None,
    matryoshka_weights: list[float] | None = None,
    hardness_alpha: float = 0.0,
    false_negative_margin: float | None = None,
    normalize: bool = True,
) -> ContrastiveLossOutput:
    """InfoNCE of the local rows against the global batch (see module docstring).

    Args:
        query: (B, d) local query embeddings.
        positive: (B, d) local positive embeddings, row ``i`` the positive of query ``i``.
        negative: (n, d) local hard negatives, any ``n >= 0`` (may differ between ranks), or None for none.
        temperature: softmax temperature ``tau`` (> 0).
        symmetric: add the positive -> query direction.
        matryoshka_dims: increasing prefix sizes ending with ``d``; None = the full size only.
        matryoshka_weights: one loss weight per entry of ``matryoshka_dims``; None = equal.
        hardness_alpha: LLaVE hardness weighting; 0 = off.
        false_negative_margin: mask candidates scoring above the positive minus this; None = off.
        normalize: re-normalise Matryoshka prefixes (set as the model normalises its embeddings).

    Every rank must call this together (it gathers); ``B`` must be equal on all ranks, and so must
    ``positive.requires_grad`` (gathers of tensors in the graph run a collective in backward too). ``accuracy`` is
    measured at the full size, without false-negative masking.
    """
    batch, dim = query.shape
    if positive.shape != query.shape:
        raise ValueError(f"query {tuple(query.shape)} and positive {tuple(positive.shape)} must have the same shape")
    dims = matryoshka_dims or [dim]
    if dims[-1] != dim:
        raise ValueError(f"matryoshka_dims {dims} must end with the embedding size {dim}")
    weights = matryoshka_weights or [1.0] * len(dims)
    if len(weights) != len(dims):
        raise ValueError(f"matryoshka_weights {weights} must hold one weight per dimension of {dims}")
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
    candidates = torch.cat(candidates)  # (C, d), C = W*B + W*n_max
    queries = all_gather_with_grad(query) if symmetric else None  # (W*B, d)

    options = dict(temperature=temperature, hardness_alpha=hardness_alpha, margin=false_negative_margin)
    total = 0.0
    for size, weight in zip(dims, weights):
        prefix = partial(truncate_embeddings, dim=size, normalize=normalize)  # (rows, d) -> (rows, size)
        scores = prefix(query) @ prefix(candidates).T  # (B, C)
        loss = _row_infonce(scores, labels, slot_mask, **options)
        if symmetric:
            reverse = prefix(positive) @ prefix(queries).T  # (B, W*B)
            loss = (loss + _row_infonce(reverse, labels, None, **options)) / 2
        total = total + weight * loss
        if size == dim:
            full_scores = scores.detach()
    if slot_mask is not None:
        full_scores = full_scores.masked_fill(~slot_mask, float("-inf"))
    accuracy = (full_scores.argmax(-1) == labels).float().mean()
    return ContrastiveLossOutput(loss=total / sum(weights), accuracy=accuracy)


def _row_infonce(
    scores: torch.Tensor,
    labels: torch.Tensor,
    slot_mask: torch.Tensor | None,
    *,
    temperature: float,
    hardness_alpha: float,
    margin: float | None,
) -> torch.Tensor:
    """Mean InfoNCE of (R, C) similarity rows, row ``r``'s positive at column ``labels[r]``; ``slot_mask`` (C,)
    marks real candidates (None = all). Applies masking and hardness weighting (module docstring)."""
    is_positive = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, labels[:, None], True)  # (R, C)
    keep = torch.ones_like(is_positive) if slot_mask is None else slot_mask.expand_as(is_positive).clone()
    detached = scores.detach()
    if margin is not None:
        threshold = detached.gather(1, labels[:, None]) - margin  # (R, 1)
        keep &= ~((detached > threshold) & ~is_positive)
    logits = scores / temperature  # (R, C)
    if hardness_alpha:
        negatives = keep & ~is_positive  # (R, C)
        with torch.no_grad():
            log_weights = torch.log_softmax((hardness_alpha * detached).masked_fill(~negatives, float("-inf")), -1)
            log_weights = log_weights + negatives.sum(-1, keepdim=True).to(scores.dtype).log()  # mean weight 1
        logits = logits + torch.where(negatives, log_weights, 0.0)
    return F.cross_entropy(logits.masked_fill(~keep, float("-inf")), labels)


__all__ = ["ContrastiveLossOutput", "contrastive_loss"]
