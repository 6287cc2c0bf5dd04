"""GradCache gradients at bench scale, float32: against the plain step and against a chunked autograd reference.

* ``grad_rel_err`` — dropout off (the bench backbone has none): the cached step (``GradCache``, the path
  ``ContrastiveTrainer.training_step`` takes) against the plain step (``ContrastiveTrainer.compute_loss``: one
  forward per group, loss, backward), all parameters trained.
* ``dropout_grad_rel_err`` — LoRA adapters with dropout 0.1 (``lora_B`` made non-zero so dropout matters): the
  cached step against the autograd reference that embeds the same chunks in the same order with every graph kept,
  both started from the same seed, so the dropout masks agree only if GradCache replays the RNG exactly.
  ``dropout_without_replay_rel_err`` shows the error GradCache makes without RNG replay (must be large).

Relative error = ||g - g_ref|| / ||g_ref|| over all trainable parameters together (float64 accumulation).
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile

import torch  # noqa: E402
from common import (
    add_backbone_arguments,
    backbone_size,
    backbone_spec,
    contrastive_batch,
    groups_of,
    load_bench_model,
    machine,
    report,
)
from gradcache_step import make_trainer  # noqa: E402

from modeling_vlm2vec.training.arguments import LoraArguments  # noqa: E402
from modeling_vlm2vec.training.batching import model_inputs, split_group  # noqa: E402
from modeling_vlm2vec.training.grad_cache import GradCache  # noqa: E402
from modeling_vlm2vec.training.lora import prepare_trainable_model  # noqa: E402
from modeling_vlm2vec.training.losses import contrastive_loss  # noqa: E402


def gradients(model) -> dict[str, torch.Tensor]:
    """Copies of the trainable parameters' gradients (zeros where none arrived); the model's are cleared."""
    grads = {
        n: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
        for n, p in model.named_parameters()
        if p.requires_grad
    }
    model.zero_grad(set_to_none=True)
    return grads


def relative_error(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    diff = torch.sqrt(sum(((a[k].double() - b[k].double()) ** 2).sum() for k in b))
    return float(diff / torch.sqrt(sum((v.double() ** 2).sum() for v in b.values())))


def loss_of(embeddings: dict[str, torch.Tensor], temperature: float):
    return contrastive_loss(
        embeddings["query"], embeddings["positive"], embeddings.get("negative"), temperature=temperature
    )


def without_dropout(args) -> dict:
    model = load_bench_model(**backbone_size(args))
    batch = contrastive_batch(model, args.batch)
    out = tempfile.mkdtemp(prefix="vlm2vec-bench-exact-")
    plain, cached = make_trainer(model, None, out), make_trainer(model, args.chunk, out)
    plain_loss = float(plain.training_step(model, batch))
    expected = gradients(model)
    cached_loss = float(cached.training_step(model, batch))
    return {
        "grad_rel_err": relative_error(gradients(model), expected),
        "loss_rel_err": abs(cached_loss - plain_loss) / abs(plain_loss),
    }


def with_lora_dropout(args) -> dict:
    model = load_bench_model(**backbone_size(args))
    batch = contrastive_batch(model, args.batch)
    model = prepare_trainable_model(model, LoraArguments(lora=True, lora_r=8, lora_alpha=16, lora_dropout=0.1)).train()
    torch.manual_seed(1)
    for name, param in model.named_parameters():
        if "lora_B" in name:  # B starts at zero: then lora_A gets no gradient and dropout changes nothing
            param.data.normal_(0, 0.02)
    temperature = model.config.contrastive_temperature
    groups, chunks = groups_of(batch), {name: args.chunk for name in ("query", "positive", "negative")}

    torch.manual_seed(123)
    reference = loss_of(
        {
            name: torch.cat([model(**model_inputs(c)).embeddings for c in split_group(g, args.chunk)])
            for name, g in groups.items()
        },
        temperature,
    )
    reference.loss.backward()
    expected = gradients(model)

    def cached_step(cache_class):
        torch.manual_seed(123)
        return cache_class(model, lambda e: loss_of(e, temperature), chunk_sizes=chunks).step(groups)

    output = cached_step(GradCache)
    err = relative_error(gradients(model), expected)
    cached_step(NoReplayGradCache)
    return {
        "dropout_grad_rel_err": err,
        "dropout_loss_rel_err": abs(float(output.loss - reference.loss)) / abs(float(reference.loss)),
        "dropout_without_replay_rel_err": relative_error(gradients(model), expected),
    }


class NoReplayGradCache(GradCache):
    """Replays chunks under the current RNG state: fresh dropout masks (what the replay of the RNG state prevents)."""

    def replay_context(self, chunk):
        return contextlib.nullcontext()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--chunk", type=int, default=16)
    add_backbone_arguments(parser)
    args = parser.parse_args()
    result = {
        "benchmark": "gradcache_exactness",
        "batch": args.batch,
        "chunk": args.chunk,
        "dtype": "float32",
        "backbone": backbone_spec(args),
        **without_dropout(args),
        **with_lora_dropout(args),
    }
    result["targets"] = {
        "grad_rel_err<=1e-5": result["grad_rel_err"] <= 1e-5,
        "dropout_grad_rel_err<=1e-5": result["dropout_grad_rel_err"] <= 1e-5,
        "dropout_without_replay_rel_err>1e-3": result["dropout_without_replay_rel_err"] > 1e-3,
    }
    result["machine"] = machine()
    report(result)


if __name__ == "__main__":
    main()
