"""GradCache gives the exact gradient: of the full batch (dropout off) and of the chunked forward (LoRA dropout on)."""

import contextlib

import pytest
import torch
from train_batches import (
    chunked_loss,
    contrastive_batch,
    full_batch_loss,
    gradients,
    groups_of,
    loss_of,
    margin_masking_half,
    relative_error,
    single_thread,  # noqa: F401  (autouse fixture)
)

from modeling_vlm2vec import Vlm2VecModel
from modeling_vlm2vec.training.arguments import LoraArguments
from modeling_vlm2vec.training.batching import model_inputs
from modeling_vlm2vec.training.grad_cache import GradCache
from modeling_vlm2vec.training.lora import prepare_trainable_model

NEG_COUNTS = [0, 1, 2, 1, 0]  # 5 rows, 4 hard negatives
CHUNKS = {"query": 2, "positive": 3, "negative": 3}  # neither divides the groups


class _NoReplayGradCache(GradCache):
    """Replays chunks under whatever RNG state is current: fresh dropout masks (a negative control)."""

    def replay_context(self, chunk):
        return contextlib.nullcontext()


def _cached_step(model, batch, replay_rng=True, symmetric=False, **options):
    cache_class = GradCache if replay_rng else _NoReplayGradCache
    cache = cache_class(model, lambda e: loss_of(e, symmetric=symmetric, **options), chunk_sizes=CHUNKS)
    return cache.step(groups_of(batch))


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("model_type", ["llava_next", "qwen2_vl", "qwen3_vl", "gemma3", "phi3_v"])
def test_grad_cache_equals_full_batch_gradient(tiny_backbone_dir, model_type, symmetric):
    model = Vlm2VecModel.from_backbone(tiny_backbone_dir(model_type)).train()  # tiny backbones have no dropout
    batch = contrastive_batch(model, NEG_COUNTS)

    reference = full_batch_loss(model, batch, symmetric=symmetric)
    reference.loss.backward()
    expected = gradients(model)

    output = _cached_step(model, batch, symmetric=symmetric)
    assert output.loss.item() == pytest.approx(reference.loss.item(), rel=1e-6)
    assert output.accuracy.item() == reference.accuracy.item()
    assert not output.loss.requires_grad
    assert relative_error(gradients(model), expected) <= 1e-5


@pytest.mark.parametrize("option", ["matryoshka", "hardness", "margin"])
def test_grad_cache_equals_full_batch_gradient_with_loss_options(tiny_backbone_dir, option):
    model = Vlm2VecModel.from_backbone(tiny_backbone_dir("qwen2_vl")).train()
    batch = contrastive_batch(model, NEG_COUNTS)
    options = {
        "matryoshka": {"matryoshka_dims": [8, 32, 64], "matryoshka_weights": [1.0, 2.0, 0.5]},
        "hardness": {"hardness_alpha": 9.0},
        "margin": {"false_negative_margin": margin_masking_half(model, batch)},
    }[option]

    reference = full_batch_loss(model, batch, symmetric=True, **options)
    reference.loss.backward()
    expected = gradients(model)
    plain = full_batch_loss(model, batch, symmetric=True)
    model.zero_grad(set_to_none=True)
    assert abs(reference.loss.item() - plain.loss.item()) > 1e-3  # the option changes the loss

    output = _cached_step(model, batch, symmetric=True, **options)
    assert output.loss.item() == pytest.approx(reference.loss.item(), rel=1e-6)
    assert relative_error(gradients(model), expected) <= 1e-5


def _lora_model(tiny_backbone_dir, activation_checkpointing):
    model = Vlm2VecModel.from_backbone(tiny_backbone_dir("qwen2_vl"))
    model = prepare_trainable_model(model, LoraArguments(lora=True, lora_r=4, lora_alpha=8, lora_dropout=0.1))
    torch.manual_seed(1)
    for name, param in model.named_parameters():
        if "lora_B" in name:  # B starts at zero; make it non-zero so lora_A receives gradient (and dropout matters)
            param.data.normal_(0, 0.05)
    if activation_checkpointing:
        model.activation_checkpointing_enable()
        assert model.is_activation_checkpointing
    return model.train()


@pytest.mark.parametrize("activation_checkpointing", [False, True])
def test_grad_cache_replays_dropout_masks_exactly(tiny_backbone_dir, activation_checkpointing):
    model = _lora_model(tiny_backbone_dir, activation_checkpointing)
    batch = contrastive_batch(model, NEG_COUNTS, seed=1)

    torch.manual_seed(123)  # same seed, same chunk order -> the reference draws the same dropout masks
    reference = chunked_loss(model, batch, CHUNKS)
    reference.loss.backward()
    expected = gradients(model)
    assert any("lora_A" in n and g.abs().sum() > 0 for n, g in expected.items())

    torch.manual_seed(123)
    output = _cached_step(model, batch)
    assert output.loss.item() == pytest.approx(reference.loss.item(), rel=1e-6)
    assert relative_error(gradients(model), expected) <= 1e-5

    # the same comparison without RNG replay: replays draw fresh dropout masks and the gradient is wrong
    torch.manual_seed(123)
    _cached_step(model, batch, replay_rng=False)
    assert relative_error(gradients(model), expected) > 1e-3

    # dropout really differs between two forwards (the test above would be vacuous otherwise)
    with torch.no_grad():
        first, second = (model(**model_inputs(batch["query"])).embeddings for _ in range(2))
    assert not torch.allclose(first, second)
