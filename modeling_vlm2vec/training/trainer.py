"""`ContrastiveTrainer`: the transformers Trainer training a `Vlm2VecModel` with (cached) InfoNCE.

Batch contract (what the collator produces)::

    {"query": group, "positive": group, "negative": group (only when the batch has hard negatives)}

Each group is a :class:`~modeling_vlm2vec.data.collator.Vlm2VecCollator` group; ``negative`` holds the batch's real
hard negatives flattened in row order (any number per row). The loss is :func:`~.losses.contrastive_loss` with
the options the model's config records (temperature, Matryoshka dimensions, hardness weighting, false-negative
margin).

Two paths, same loss and gradient:

* **uncached** (``compute_loss``; also the eval loss): the groups embedded, then the loss. One forward per group (no
  row is padded to another group's length), except under a distributed wrapper while training: DDP allows one
  forward per backward, so there the concatenated query + positive + negative batch runs in one forward
  (:func:`embed_groups`); under an engine that shards parameters (FSDP, DeepSpeed) evaluation does the same;
* **cached** (``training_step``) whenever a GradCache chunk size is smaller than its group on some rank (decided
  for all ranks together): :class:`~.grad_cache.GradCache` with ``gc_q_chunk_size`` for queries and
  ``gc_p_chunk_size`` for positives and negatives, its backward passes synchronised by the engine's
  :func:`~.gradient_sync.gradient_sync` policy.

Under an engine that shards parameters every rank must run the same forwards through the same modules: a forward
whose batch has no image gets one filler row holding a small image (zero weight in the loss) so the vision tower
runs on every rank (:func:`~.batching.with_vision_filler`).

Both log ``loss`` and the in-batch retrieval ``accuracy`` (mean over the logging window and the ranks).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from accelerate.utils import DistributedType
from PIL import Image
from torch import nn
from transformers import Trainer
from transformers.trainer import TRAINING_ARGS_NAME
from transformers.trainer_pt_utils import nested_gather

from ..common.distributed import all_true
from ..common.errors import DataError
from ..configuration_vlm2vec import check_false_negative_margin
from ..data.collator import collate_group
from ..data.sampler import build_train_dataloader
from ..data.sources import TrainingCorpus
from ..hub.push import HubPushMixin
from .arguments import ContrastiveTrainingArguments
from .batching import concat_groups, group_rows, model_inputs, with_vision_filler
from .grad_cache import GradCache, needs_grad_cache
from .gradient_sync import gradient_sync, needs_lockstep
from .losses import ContrastiveLossOutput, contrastive_loss

GROUPS = ("query", "positive", "negative")


def embed_groups(
    model: nn.Module,
    groups: dict[str, dict[str, torch.Tensor]],
    *,
    one_forward: bool,
    padding_side: str = "right",
    pad_token_id: int = 0,
    vision_filler: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """``{name: (rows, d) embeddings}`` of processed groups, in the caller's grad mode.

    ``one_forward=False``: one forward per group. ``one_forward=True``: one forward of the groups concatenated
    (:func:`~.batching.concat_groups`, every row padded to the longest group), split back by rows; the same
    embeddings at the cost of the padding, for wrappers that allow one forward per backward (DDP).
    ``vision_filler`` (a one-row group with one image): appended to every forward without images; its embedding
    joins the graph with weight zero, so the vision tower runs forward and backward.
    """
    batches = list(groups.values())
    if one_forward:
        batches = [concat_groups(batches, padding_side, pad_token_id=pad_token_id)]
    embeddings = []
    for batch in batches:
        rows = group_rows(batch)
        if vision_filler is not None and "pixel_values" not in batch:
            batch = with_vision_filler(batch, vision_filler, padding_side, pad_token_id)
        out = model(**model_inputs(batch)).embeddings  # (rows [+ 1 filler], d)
        embeddings.append(out[:rows] + 0.0 * out[rows:].sum() if len(out) > rows else out)
    embeddings = torch.cat(embeddings)  # (sum of group rows, d)
    return dict(zip(groups, embeddings.split([group_rows(g) for g in groups.values()])))


class ContrastiveTrainer(HubPushMixin, Trainer):
    """Trainer for contrastive embedding training; see the module docstring for the batch contract.

    ``args`` must be a :class:`~.arguments.ContrastiveTrainingArguments`. The model is a `Vlm2VecModel`, optionally
    wrapped by peft (see :func:`~.lora.prepare_trainable_model`). A
    :class:`~modeling_vlm2vec.data.sources.TrainingCorpus` train dataset is served by the deterministic global-batch
    sampler (already sharded by rank, resumable); any other dataset goes through the stock dataloader.
    Checkpoints carry the wrapper config even for LoRA (the adapter alone would lose the prompt and resolution
    settings) and their training arguments as JSON, not a pickle; Hub pushes carry the remote code and our card.
    """

    # compute_loss returns a per-batch mean: the stock training_step divides it by the accumulation steps
    loss_is_scaled_for_ga = False

    def __init__(self, model: nn.Module | None = None, args: ContrastiveTrainingArguments | None = None, **kwargs):
        if not isinstance(args, ContrastiveTrainingArguments):
            raise TypeError(f"ContrastiveTrainer needs ContrastiveTrainingArguments, got {type(args).__name__}")
        super().__init__(model=model, args=args, **kwargs)
        self._accuracy = {"train": [], "eval": []}  # detached per-batch accuracies since the last log
        try:  # a margin that masks every candidate would train on a loss of 0 from the first step
            check_false_negative_margin(self._config.false_negative_margin, self._config.normalize)
        except ValueError as exc:
            raise DataError(f"cannot train this model: {exc}") from None
        self._filler = None  # the processed vision filler row, built on first use

    # ---- loss -------------------------------------------------------------------------------------------------

    @property
    def _config(self):
        return self.model.config  # Vlm2VecConfig (a PeftModel exposes its base model's config)

    def _loss(self, embeddings: dict[str, torch.Tensor]) -> ContrastiveLossOutput:
        config = self._config
        return contrastive_loss(
            embeddings["query"],
            embeddings["positive"],
            embeddings.get("negative"),
            temperature=config.contrastive_temperature,
            symmetric=self.args.loss_symmetric,
            matryoshka_dims=config.matryoshka_dimensions,
            matryoshka_weights=config.matryoshka_weights,
            hardness_alpha=config.hardness_alpha,
            false_negative_margin=config.false_negative_margin,
            normalize=config.normalize,
        )

    @property
    def _pad_token_id(self) -> int:
        return self._config.get_text_config().pad_token_id or 0

    def _vision_filler(self, model: nn.Module) -> dict[str, torch.Tensor] | None:
        """Under an engine that shards parameters, one processed row holding one small image, on the model's device
        (see the module docstring); else None."""
        if not needs_lockstep(model):
            return None
        if self._filler is None:
            processor = getattr(self.data_collator, "processor", None) or self.model.processor
            # the processor's image policy stretches the 1x1 image to the backbone's smallest accepted size
            self._filler = collate_group(processor, [None], [Image.new("RGB", (1, 1))])
        return self._prepare_inputs(self._filler)

    def _embed_groups(
        self, model: nn.Module, groups: dict[str, dict[str, torch.Tensor]], *, one_forward: bool
    ) -> dict[str, torch.Tensor]:
        """:func:`embed_groups` with the model's padding side and pad token (and vision filler when needed)."""
        return embed_groups(
            model,
            groups,
            one_forward=one_forward,
            padding_side=self._config.padding_side,
            pad_token_id=self._pad_token_id,
            vision_filler=self._vision_filler(model),
        )

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ):
        """Uncached loss of the batch's groups (see the module docstring for how they are embedded)."""
        groups = {name: inputs[name] for name in GROUPS if name in inputs}
        # sharded engines: every rank runs one forward, also in evaluation (ranks may hold different groups)
        one_forward = self.accelerator.distributed_type != DistributedType.NO and (
            torch.is_grad_enabled() or needs_lockstep(model)
        )
        output = self._loss(self._embed_groups(model, groups, one_forward=one_forward))
        self._record_accuracy(output.accuracy)
        return (output.loss, output) if return_outputs else output.loss

    def training_step(
        self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: torch.Tensor | int | None = None
    ) -> torch.Tensor:
        """GradCache step when a chunk size is smaller than its group on some rank, else the stock step
        (``compute_loss``). The choice is made for all ranks together (their hard-negative counts differ), as
        sharded engines need every rank to run the same forwards and backwards.
        """
        chunk_sizes = {
            "query": self.args.gc_q_chunk_size,
            "positive": self.args.gc_p_chunk_size,
            "negative": self.args.gc_p_chunk_size,
        }
        groups = {name: inputs[name] for name in GROUPS if name in inputs}
        if all_true(not needs_grad_cache(groups, chunk_sizes)):
            return super().training_step(model, inputs, num_items_in_batch)
        model.train()
        if hasattr(self.optimizer, "train") and callable(self.optimizer.train):
            self.optimizer.train()
        groups = self._prepare_inputs(groups)
        # a None chunk size puts the whole group in one chunk
        sizes = {name: chunk_sizes[name] or group_rows(group) for name, group in groups.items()}
        sync = gradient_sync(
            model,
            self.accelerator.backward,
            sync_gradients=self.accelerator.sync_gradients,
            defer_fsdp_reduction=self.args.fsdp_defer_reduction,
        )
        cache = GradCache(
            model,
            self._loss,
            chunk_sizes=sizes,
            padding_side=self._config.padding_side,
            sync=sync,
            vision_filler=self._vision_filler(model),
            pad_token_id=self._pad_token_id,
        )
        scale = 1.0 / self.current_gradient_accumulation_steps
        with self.compute_loss_context_manager():
            output = cache.step(groups, scale=scale)
        self._record_accuracy(output.accuracy)
        return output.loss * scale

    def prediction_step(
        self, model: nn.Module, inputs: dict[str, Any], prediction_loss_only: bool, ignore_keys: list[str] | None = None
    ):
        """Eval loss of the batch (uncached path); no logits or labels."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    # ---- logging ----------------------------------------------------------------------------------------------

    def _record_accuracy(self, accuracy: torch.Tensor) -> None:
        self._accuracy["train" if self.model.training else "eval"].append(accuracy.detach())

    def _mean_accuracy(self, phase: str) -> float | None:
        """Mean of the recorded accuracies over batches and ranks (a collective: every rank must call it)."""
        values, self._accuracy[phase] = self._accuracy[phase], []
        if not values:
            return None
        return nested_gather(torch.stack(values).mean(), self.args.parallel_mode).mean().item()

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # a training log: every rank reaches it together
            accuracy = self._mean_accuracy("train")
            if accuracy is not None:
                logs["accuracy"] = accuracy
        super().log(logs, start_time)

    def evaluation_loop(
        self,
        dataloader,
        description: str,
        prediction_loss_only: bool | None = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ):
        self._accuracy["eval"] = []
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        accuracy = self._mean_accuracy("eval")
        if accuracy is not None:
            output.metrics[f"{metric_key_prefix}_accuracy"] = accuracy
        return output

    def floating_point_ops(self, inputs: dict[str, Any]) -> int:
        flops = 0
        for name in GROUPS:
            if name in inputs:
                flops += super().floating_point_ops(inputs[name])
        return flops

    # ---- saving -----------------------------------------------------------------------------------------------

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        super()._save(output_dir, state_dict)
        output_dir = Path(output_dir if output_dir is not None else self.args.output_dir)
        if not self.args.should_save:
            return
        (output_dir / TRAINING_ARGS_NAME).unlink(missing_ok=True)  # the stock pickle of the arguments
        (output_dir / "training_args.json").write_text(self.args.to_json_string(), encoding="utf-8")
        unwrapped = self.accelerator.unwrap_model(self.model)
        if hasattr(unwrapped, "peft_config"):
            unwrapped.get_base_model().config.save_pretrained(output_dir)

    # ---- data -------------------------------------------------------------------------------------------------

    def get_train_dataloader(self):
        """A `TrainingCorpus` gets the deterministic global-batch loader, sharded by rank here and therefore NOT
        passed through ``accelerator.prepare``; resuming continues the same order (the Trainer skips batches)."""
        if not isinstance(self.train_dataset, TrainingCorpus):
            return super().get_train_dataloader()
        return build_train_dataloader(
            self.train_dataset,
            self.data_collator,
            per_device_batch_size=self._train_batch_size,
            world_size=self.args.world_size,
            rank=self.args.process_index,
            seed=self.args.data_seed if self.args.data_seed is not None else self.args.seed,
            mode=self.args.sampler_mode,
            homogeneous_sub_batch=self.args.homogeneous_sub_batch,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
        )


__all__ = ["ContrastiveTrainer", "embed_groups"]
