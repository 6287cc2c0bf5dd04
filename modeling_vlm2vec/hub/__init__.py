"""Hub-ready checkpoints: export (merged or adapter-only), model card, push, import of official releases."""

from .card import render_model_card, write_model_card
from .convert_official import convert_official_checkpoint
from .export import export_checkpoint
from .push import HubPushMixin, files_to_push, prepare_checkpoint_for_push, push_checkpoint

__all__ = [
    "HubPushMixin",
    "convert_official_checkpoint",
    "export_checkpoint",
    "files_to_push",
    "prepare_checkpoint_for_push",
    "push_checkpoint",
    "render_model_card",
    "write_model_card",
]
