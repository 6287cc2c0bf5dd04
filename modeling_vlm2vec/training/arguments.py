"""Command-line / YAML arguments of contrastive training (HfArgumentParser dataclasses)."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

from ..data.sampler import MODES


@dataclass
class ContrastiveTrainingArguments(TrainingArguments):
    """`TrainingArguments` plus GradCache, loss and sampler settings.

    Contrastive training needs the raw query/positive/negative groups in every batch and may leave the vision tower
    unused on text-only chunks, so ``remove_unused_columns`` is always False and, unless set explicitly,
    ``ddp_find_unused_parameters=True`` and ``ddp_broadcast_buffers=False`` (GradCache runs several forwards per step).
    """

    gc_q_chunk_size: int | None = field(
        default=None, metadata={"help": "GradCache chunk size (rows) for queries; None = no GradCache."}
    )
    gc_p_chunk_size: int | None = field(
        default=None,
        metadata={"help": "GradCache chunk size (rows) for positives and hard negatives; None = no GradCache."},
    )
    fsdp_defer_reduction: bool | None = field(
        default=None,
        metadata={
            "help": "FSDP2 + GradCache: reduce-scatter gradients once per step (True; holds the unsharded "
            "trainable gradients until the last chunk) or after every chunk (False; gradients stay sharded). "
            "None = True when at most 10% of the parameters train (LoRA), else False."
        },
    )
    loss_symmetric: bool = field(
        default=False, metadata={"help": "Add the positive -> query InfoNCE direction (loss = mean of both)."}
    )
    sampler_mode: str = field(
        default="mixed",
        metadata={
            "help": "Global-batch sampling over sources: 'mixed' (one permutation of all "
            "rows) or 'homogeneous' (each sub-batch from one source)."
        },
    )
    homogeneous_sub_batch: int | None = field(
        default=None,
        metadata={"help": "Rows per single-source sub-batch in homogeneous mode (default: the whole global batch)."},
    )
    resume_with_missing_state: bool = field(
        default=False,
        metadata={
            "help": "Resume from a checkpoint that lacks optimizer, scheduler, RNG or scaler state: each missing "
            "file is named in a warning and that state starts fresh. Default: refuse with an error."
        },
    )

    def __post_init__(self):
        self.remove_unused_columns = False
        if self.ddp_find_unused_parameters is None:
            self.ddp_find_unused_parameters = True
        if self.ddp_broadcast_buffers is None:
            self.ddp_broadcast_buffers = False
        super().__post_init__()
        for name in ("gc_q_chunk_size", "gc_p_chunk_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {value}")
        if self.sampler_mode not in MODES:
            raise ValueError(f"sampler_mode must be one of {MODES}, got {self.sampler_mode!r}")
        if self.homogeneous_sub_batch is not None and self.homogeneous_sub_batch < 1:
            raise ValueError(f"homogeneous_sub_batch must be >= 1 or None, got {self.homogeneous_sub_batch}")
        if self.learning_rate < 0:
            raise ValueError(f"learning_rate must be >= 0, got {self.learning_rate}")
        if self.max_steps == 0 or (self.max_steps < 0 and self.num_train_epochs <= 0):
            raise ValueError("max_steps and num_train_epochs leave no training step (set max_steps > 0 or epochs > 0)")


@dataclass
class LoraArguments:
    """Parameter-efficient fine-tuning; with ``lora=False`` every parameter is trained (full fine-tuning)."""

    lora: bool = field(default=False, metadata={"help": "Train LoRA adapters instead of all weights."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=64, metadata={"help": "LoRA scaling numerator (scale = alpha / r)."})
    lora_dropout: float = field(default=0.1, metadata={"help": "Dropout on the LoRA input."})
    lora_use_dora: bool = field(default=False, metadata={"help": "Weight-decomposed LoRA (DoRA); slower."})
    lora_gaussian_init: bool = field(
        default=False,
        metadata={
            "help": "Initialise LoRA A with a Gaussian (the official VLM2Vec setting) instead of "
            "peft's default Kaiming-uniform."
        },
    )
    lora_target_modules: str | None = field(
        default=None,
        metadata={
            "help": "Regex (full match) of module names to adapt; default: the attention and MLP "
            "projections of the language model only."
        },
    )

    def __post_init__(self):
        if self.lora_r < 1:
            raise ValueError(f"lora_r must be >= 1, got {self.lora_r}")
        if not self.lora_alpha > 0:
            raise ValueError(f"lora_alpha must be > 0, got {self.lora_alpha}")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")


__all__ = ["ContrastiveTrainingArguments", "LoraArguments"]
