"""InfoNCE with shared hard negatives against a naive per-query reference written with Python loops."""

import math

import pytest
import torch
import torch.nn.functional as F

from modeling_vlm2vec.training import losses
from modeling_vlm2vec.training.losses import contrastive_loss

TAU = 0.05


def naive_loss(q, p, negatives_per_row, tau, symmetric=False):
    """Per-query loop: candidates = every positive, then every hard negative of every row; label = own positive."""
    candidates = list(p) + [n for row in negatives_per_row for n in row]
    terms, hits = [], 0
    for i, query in enumerate(q):
        scores = [torch.dot(query, c) / tau for c in candidates]
        log_denominator = torch.logsumexp(torch.stack(scores), 0)
        terms.append(log_denominator - scores[i])
        hits += int(max(range(len(scores)), key=lambda j: float(scores[j].detach())) == i)
    loss = sum(terms) / len(terms)
    if symmetric:
        back = []
        for i, positive in enumerate(p):
            scores = [torch.dot(positive, other) / tau for other in q]
            back.append(torch.logsumexp(torch.stack(scores), 0) - scores[i])
        loss = (loss + sum(back) / len(back)) / 2
    return loss, hits / len(q)


def _embeddings(seed, batch, counts, dim=8):
    g = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(batch, dim, generator=g, dtype=torch.float64), dim=-1)
    p = F.normalize(q + 0.7 * torch.randn(batch, dim, generator=g, dtype=torch.float64), dim=-1)
    negs = [[F.normalize(torch.randn(dim, generator=g, dtype=torch.float64), dim=0) for _ in range(k)] for k in counts]
    return q, p, negs


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("counts", [[0, 1, 2, 1, 0], [0, 0, 0, 0], [2, 2, 2]])
def test_loss_value_gradient_and_accuracy_match_naive_loops(counts, symmetric):
    q, p, negs = _embeddings(0, len(counts), counts)
    flat = torch.stack([n for row in negs for n in row]) if sum(counts) else None
    leaves = [t.clone().requires_grad_() for t in (q, p)] + (
        [flat.clone().requires_grad_()] if flat is not None else []
    )
    out = contrastive_loss(
        leaves[0], leaves[1], leaves[2] if flat is not None else None, temperature=TAU, symmetric=symmetric
    )

    ref_leaves = [t.clone().requires_grad_() for t in (q, p)] + (
        [flat.clone().requires_grad_()] if flat is not None else []
    )
    ref_negs, start = [], 0
    for k in counts:
        ref_negs.append([ref_leaves[2][start + j] for j in range(k)])
        start += k
    ref, ref_accuracy = naive_loss(ref_leaves[0], ref_leaves[1], ref_negs, TAU, symmetric)

    assert math.isclose(out.loss.item(), ref.item(), rel_tol=1e-10)
    assert out.accuracy.item() == pytest.approx(ref_accuracy)
    out.loss.backward()
    ref.backward()
    for mine, theirs in zip(leaves, ref_leaves):
        torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-9, atol=1e-12)


def test_accuracy_counts_rows_whose_positive_wins():
    q = torch.eye(3, dtype=torch.float64)
    p = torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [0, 0, 1.0]], dtype=torch.float64)  # row 1's best match is p_0
    out = contrastive_loss(q, p, None, temperature=1.0)
    assert out.accuracy.item() == pytest.approx(2 / 3)


def test_padded_negative_slots_of_other_ranks_are_masked(monkeypatch):
    """Rank 0 of 2 (the other rank faked): the other rank holds fewer negatives, its padding must not count."""
    counts = [[1, 2, 0], [0, 1, 0]]  # rank 0: 3 negatives, rank 1: 1 negative (padded to 3)
    q0, p0, negs0 = _embeddings(1, 3, counts[0])
    q1, p1, negs1 = _embeddings(2, 3, counts[1])
    n0 = torch.stack([n for row in negs0 for n in row])
    n1 = torch.stack([n for row in negs1 for n in row])
    others = [p1, F.pad(n1, (0, 0, 0, 2)), q1]  # what rank 1 contributes to each gather, in call order

    def fake_gather(tensor):
        return torch.cat([tensor, others.pop(0)])

    monkeypatch.setattr(losses, "all_gather_with_grad", fake_gather)
    monkeypatch.setattr(losses, "all_gather_counts", lambda n, device: [n, 1])
    monkeypatch.setattr(losses, "world_size", lambda: 2)
    monkeypatch.setattr(losses, "rank", lambda: 0)
    out = contrastive_loss(q0, p0, n0, temperature=TAU, symmetric=True)

    # naive: rank 0's queries against the global candidate set, own positive at global index i
    candidates = list(p0) + list(p1) + list(n0) + list(n1)
    terms = []
    for i in range(3):
        scores = torch.stack([torch.dot(q0[i], c) / TAU for c in candidates])
        terms.append(torch.logsumexp(scores, 0) - scores[i])
    back = []
    all_q = list(q0) + list(q1)
    for i in range(3):
        scores = torch.stack([torch.dot(p0[i], c) / TAU for c in all_q])
        back.append(torch.logsumexp(scores, 0) - scores[i])
    expected = (sum(terms) / 3 + sum(back) / 3) / 2
    assert math.isclose(out.loss.item(), expected.item(), rel_tol=1e-10)
