"""Contrastive training of `Vlm2VecModel`.

- `arguments`: `ContrastiveTrainingArguments` (GradCache chunk sizes, symmetric loss, sampler), `LoraArguments`.
- `losses`: `contrastive_loss` — InfoNCE over the global batch with shared hard negatives.
- `distributed`: autograd-aware all-gather and rank helpers (identity in one process).
- `batching`: `split_group` / `concat_groups` — backbone-aware row chunks of processed groups.
- `grad_cache`: `GradCache` — exact chunked gradient with RNG replay; equal chunk sequences on every rank under
  sharded engines.
- `gradient_sync`: `gradient_sync` — how DDP, FSDP2 and DeepSpeed synchronise the gradients of a step's chunks.
- `trainer`: `ContrastiveTrainer` — the transformers Trainer wired to all of the above.
- `lora`: `prepare_trainable_model` — LoRA / DoRA on the language model, or full fine-tuning.
"""
