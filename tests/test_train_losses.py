"""InfoNCE with shared hard negatives against a naive per-query reference written with Python loops."""

import math

import pytest
import torch
import torch.nn.functional as F

from modeling_vlm2vec import ContrastiveTrainer, Vlm2VecModel
from modeling_vlm2vec.common.errors import DataError
from modeling_vlm2vec.pipeline_arguments import ModelArguments
from modeling_vlm2vec.training import losses
from modeling_vlm2vec.training.arguments import ContrastiveTrainingArguments
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


# ---- loss options: Matryoshka, hardness weighting, false-negative masking --------------------------------------


def _prefix(vector, size):
    """First ``size`` coordinates, re-normalised (unchanged at the full size)."""
    if size == len(vector):
        return vector
    head = vector[:size]
    return head / torch.sqrt(sum(x * x for x in head))


def _naive_row(scores, label, tau, alpha, margin, masked):
    """-log(e^{x_y/tau} / (e^{x_y/tau} + sum_{kept j} w_j e^{x_j/tau})) for one row of scalar similarities."""
    positive = scores[label]
    kept = []
    for j, score in enumerate(scores):
        if j == label:
            continue
        if margin is not None and score.item() > positive.item() - margin:
            masked.append(j)
            continue
        kept.append(j)
    raw = [math.exp(alpha * scores[j].item()) for j in kept]
    weights = [len(kept) * r / sum(raw) for r in raw]  # alpha = 0: all 1
    denominator = torch.exp(positive / tau) + sum(w * torch.exp(scores[j] / tau) for w, j in zip(weights, kept))
    return torch.log(denominator) - positive / tau


def naive_loss_with_options(q, p, negatives_per_row, tau, dims, weights, alpha, margin, symmetric):
    """Per-dimension, per-row loops over Python scalars; returns (loss, number of masked candidates)."""
    candidates = list(p) + [n for row in negatives_per_row for n in row]
    masked, total = [], 0
    for size, weight in zip(dims, weights):
        rows = []
        for i, query in enumerate(q):
            scores = [torch.dot(_prefix(query, size), _prefix(c, size)) for c in candidates]
            rows.append(_naive_row(scores, i, tau, alpha, margin, masked))
        loss = sum(rows) / len(rows)
        if symmetric:
            back = []
            for i, positive in enumerate(p):
                scores = [torch.dot(_prefix(positive, size), _prefix(other, size)) for other in q]
                back.append(_naive_row(scores, i, tau, alpha, margin, masked))
            loss = (loss + sum(back) / len(back)) / 2
        total = total + weight * loss
    return total / sum(weights), len(masked)


OPTION_CASES = {
    "matryoshka": dict(matryoshka_dims=[2, 4, 8]),
    "matryoshka_weighted": dict(matryoshka_dims=[3, 8], matryoshka_weights=[2.0, 0.5]),
    "hardness": dict(hardness_alpha=4.0),
    "margin": dict(false_negative_margin=0.6),
    "negative_margin": dict(false_negative_margin=-0.1),
    "all": dict(matryoshka_dims=[4, 8], hardness_alpha=9.0, false_negative_margin=0.5),
}


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("case", list(OPTION_CASES))
def test_loss_options_match_naive_loops(case, symmetric):
    options = OPTION_CASES[case]
    counts = [0, 1, 2, 1, 0, 3]
    q, p, negs = _embeddings(3, len(counts), counts)
    flat = torch.stack([n for row in negs for n in row])
    leaves = [t.clone().requires_grad_() for t in (q, p, flat)]
    out = contrastive_loss(*leaves, temperature=TAU, symmetric=symmetric, **options)

    ref_leaves = [t.clone().requires_grad_() for t in (q, p, flat)]
    ref_negs = [list(row) for row in ref_leaves[2].split(counts)]
    dims = options.get("matryoshka_dims", [8])
    ref, n_masked = naive_loss_with_options(
        ref_leaves[0],
        ref_leaves[1],
        ref_negs,
        TAU,
        dims,
        options.get("matryoshka_weights", [1.0] * len(dims)),
        options.get("hardness_alpha", 0.0),
        options.get("false_negative_margin"),
        symmetric,
    )
    if "false_negative_margin" in options:  # the margin really removes some candidates, not all
        assert 0 < n_masked < len(dims) * len(q) * (len(q) + len(flat) - 1)

    assert math.isclose(out.loss.item(), ref.item(), rel_tol=1e-10)
    out.loss.backward()
    ref.backward()
    for mine, theirs in zip(leaves, ref_leaves):
        torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-9, atol=1e-12)


def test_neutral_options_are_plain_infonce():
    q, p, negs = _embeddings(4, 4, [1, 0, 2, 1])
    flat = torch.stack([n for row in negs for n in row])
    plain = contrastive_loss(q, p, flat, temperature=TAU, symmetric=True).loss
    neutral = contrastive_loss(
        q, p, flat, temperature=TAU, symmetric=True, matryoshka_dims=[8], hardness_alpha=0.0
    ).loss
    assert neutral.item() == plain.item()


def test_margin_masks_a_duplicate_positive_and_never_the_own_positive():
    a, c = [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]
    q = torch.tensor([a, [0.6, 0.8, 0.0], c], dtype=torch.float64)
    p = torch.tensor([a, a, c], dtype=torch.float64)  # rows 0 and 1 share their positive (same label)
    masked = contrastive_loss(q, p, None, temperature=TAU, false_negative_margin=0.1).loss
    # by hand: row 0 scores (own 1, dup 1, c 0): dup masked; row 1 (dup 0.6, own 0.6, c 0): dup masked;
    # row 2 (a 0, a 0, own 1): nothing masked
    # log(e^{x_y/tau} + k e^0) - x_y/tau = log1p(k e^{-x_y/tau}), written so to keep float64 precision
    rows = [math.log1p(math.exp(-1 / TAU)), math.log1p(math.exp(-0.6 / TAU)), math.log1p(2 * math.exp(-1 / TAU))]
    assert math.isclose(masked.item(), sum(rows) / 3, rel_tol=1e-10)
    # a margin of 0 keeps the exact duplicate (it scores equal, not above)
    unmasked = contrastive_loss(q, p, None, temperature=TAU, false_negative_margin=0.0).loss
    assert math.isclose(unmasked.item(), contrastive_loss(q, p, None, temperature=TAU).loss.item(), rel_tol=1e-12)
    # an enormous margin masks every other candidate: each row's softmax holds its positive alone, loss 0
    assert contrastive_loss(q, p, None, temperature=TAU, false_negative_margin=10.0).loss.item() == 0.0


def test_a_margin_of_2_masks_everything_for_unit_vectors_so_the_config_refuses_it():
    # the rule behind the refusal, checked on the loss itself: cosines differ by at most 2, so a margin of 2 leaves
    # each row's positive alone in its softmax (loss 0) for any embeddings short of exact opposites
    torch.manual_seed(0)
    q, p, n = (F.normalize(torch.randn(6, 8, dtype=torch.float64), dim=-1) for _ in range(3))
    assert contrastive_loss(q, p, n, temperature=TAU, false_negative_margin=2.0).loss.item() == 0.0
    assert contrastive_loss(q, p, n, temperature=TAU, false_negative_margin=0.0).loss.item() > 0.0
    with pytest.raises(ValueError, match="below 2"):
        ModelArguments(model_name_or_path="x", false_negative_margin=2.0)
    with pytest.raises(ValueError, match="finite number"):
        ModelArguments(model_name_or_path="x", false_negative_margin=float("nan"))
    assert ModelArguments(model_name_or_path="x", false_negative_margin=1.99).false_negative_margin == 1.99
    # unnormalised scores are unbounded: a large margin is a real choice there
    assert ModelArguments(model_name_or_path="x", normalize=False, false_negative_margin=3.0).false_negative_margin == 3


def test_the_trainer_refuses_a_model_whose_margin_masks_everything(tiny_backbone_dir, tmp_path):
    # a model saved with such a margin still loads and embeds (the margin changes nothing else); training it is refused
    model = Vlm2VecModel.from_backbone(tiny_backbone_dir("qwen2_vl"), false_negative_margin=2.5)
    assert torch.isfinite(model.encode(["a red circle"])).all()
    args = ContrastiveTrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True, report_to=[])
    with pytest.raises(DataError, match="cannot train this model: false_negative_margin must be below 2"):
        ContrastiveTrainer(model=model, args=args)
    model.config.false_negative_margin = 1.5
    ContrastiveTrainer(model=model, args=args)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_hardness_weights_favour_the_hardest_negative():
    """With a large alpha the denominator holds ~n copies of the hardest negative: the loss approaches
    log(e^{x_y/tau} + n e^{x_max/tau}) - x_y/tau."""
    q, p, negs = _embeddings(6, 1, [4])
    flat = torch.stack(negs[0])
    out = contrastive_loss(q, p, flat, temperature=TAU, hardness_alpha=1e4).loss
    scores = torch.cat([p, flat]) @ q[0] / TAU
    expected = torch.log(torch.exp(scores[0]) + 4 * torch.exp(scores[1:].max())) - scores[0]
    assert math.isclose(out.item(), expected.item(), rel_tol=1e-6)
