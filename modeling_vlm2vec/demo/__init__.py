"""Offline demo and test scaffolding, kept out of the product path: tiny random backbones, the synthetic MMEB-style
data and evaluation fixtures. The training pipeline reaches it through one hook only (:mod:`.hook`)."""

from .tiny_backbones import TINY_MODEL_TYPES, build_tiny_backbone, save_tiny_backbone, train_tokenizer

__all__ = ["TINY_MODEL_TYPES", "build_tiny_backbone", "save_tiny_backbone", "train_tokenizer"]
