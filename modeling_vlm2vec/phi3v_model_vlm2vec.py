"""Phi-3-V (Phi-3.5-vision) composed of stock transformers parts (Hub file: imports only torch, transformers and its
sibling Hub files).

The text decoder is transformers' ``Phi3Model``, the vision tower a ``CLIPVisionModel``; what is Phi-3-V's own is the
image embedding (:class:`Phi3VImageEmbedding`): each crop's patch features merged 2x2, the sub-crops tiled into one
grid, learned separators, an MLP projection, placed at the image positions of ``input_ids``. Weight names are those
of ``microsoft/Phi-3.5-vision-instruct`` (``model.embed_tokens``, ``model.layers.*``,
``model.vision_embed_tokens.img_processor.vision_model.*``, ``model.vision_embed_tokens.{glb_GN,sub_GN,
img_projection.*}``), so its checkpoints and releases in its layout load without their Python files. ``AutoModel``
builds it for a ``phi3_v`` folder without Vlm2Vec settings (``modeling_vlm2vec.Phi3VVlm2VecModel``).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import CLIPVisionModel, Phi3Model
from transformers import initialization as init

from .phi3v_config_vlm2vec import Phi3VConfig


def merge_2x2(features: torch.Tensor, grid: int) -> torch.Tensor:
    """(crops, (2 * grid)**2, C) patch features -> (crops, grid, grid, 4 * C): each output token concatenates the
    2x2 patch block ``[(2i, 2j), (2i, 2j+1), (2i+1, 2j), (2i+1, 2j+1)]`` in that order."""
    crops, _, channels = features.shape
    blocks = features.view(crops, grid, 2, grid, 2, channels)  # (crops, i, dy, j, dx, C)
    return blocks.permute(0, 1, 3, 2, 4, 5).reshape(crops, grid, grid, 4 * channels)


class _VisionTower(nn.Module):
    """Holds the CLIP tower as ``vision_model``: the checkpoint names it ``img_processor.vision_model.*`` (the
    transformers-4 ``CLIPVisionModel`` layout, one level that transformers 5's flat ``CLIPVisionModel`` no longer
    has)."""

    def __init__(self, vision_config):
        super().__init__()
        self.vision_model = CLIPVisionModel(vision_config)


class Phi3VImageEmbedding(nn.Module):
    """Phi-3-V's HD image embedding: (images, crops, 3, S, S) pixels -> one run of projected features per image.

    Per image with ``h x w`` sub-crops (``image_sizes`` / S): the CLIP features of the penultimate layer without the
    CLS token (no post-layernorm), 2x2-merged (:func:`merge_2x2`) to ``g x g`` tokens per crop; the sub-crops tiled
    row-major into an ``(h*g) x (w*g)`` grid with ``sub_GN`` after each grid row, then ``glb_GN``, then the global
    crop's ``g x g`` grid with ``sub_GN`` after each row (order ``sub_glb``); then ``img_projection``. That is
    ``(h*w + 1) * g*g + 1 + (h + 1) * g`` tokens (757 for 2x2 crops of ViT-L/14-336, ``g = 12``). Crops past the
    first ``1 + h*w`` (zero padding to ``num_crops + 1``) are not run.
    """

    def __init__(self, config: Phi3VConfig):
        super().__init__()
        self.crop_size = config.crop_size
        self.grid = config.merged_grid
        dim = 4 * config.vision_config.hidden_size
        self.img_processor = _VisionTower(config.vision_config)
        self.glb_GN = nn.Parameter(torch.zeros(1, 1, dim))
        self.sub_GN = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.img_projection = nn.Sequential(
            nn.Linear(dim, config.hidden_size), nn.GELU(), nn.Linear(config.hidden_size, config.hidden_size)
        )

    def num_tokens(self, height_crops: int, width_crops: int) -> int:
        """Image tokens of one image cut into ``height_crops x width_crops`` sub-crops."""
        g = self.grid
        return (height_crops * width_crops + 1) * g * g + 1 + (height_crops + 1) * g

    def _with_newlines(self, grid: torch.Tensor) -> torch.Tensor:
        """(rows, cols, D) -> (rows * (cols + 1), D): ``sub_GN`` after each row."""
        newline = self.sub_GN[0].expand(grid.shape[0], 1, -1)  # (rows, 1, D)
        return torch.cat([grid, newline], dim=1).reshape(-1, grid.shape[-1])

    def forward(self, pixel_values: torch.Tensor, image_sizes: torch.Tensor) -> torch.Tensor:
        """pixel_values (images, crops, 3, S, S), global view first; image_sizes (images, 2) = padded [height,
        width] in pixels. Returns (total image tokens, hidden), the images' runs one after the other."""
        crop_counts = [(int(h) // self.crop_size, int(w) // self.crop_size) for h, w in image_sizes.tolist()]
        used = [pixel_values[i, : 1 + h * w] for i, (h, w) in enumerate(crop_counts)]
        tower = self.img_processor.vision_model
        pixels = torch.cat(used).to(tower.dtype)  # (used crops, 3, S, S)
        hidden = tower(pixels, output_hidden_states=True).hidden_states[-2][:, 1:]  # (used crops, (2g)^2, C)
        merged = merge_2x2(hidden, self.grid)  # (used crops, g, g, 4C)
        runs, start = [], 0
        glb_gn = self.glb_GN[0].to(merged.dtype)  # (1, 4C)
        for h, w in crop_counts:
            glb, sub = merged[start], merged[start + 1 : start + 1 + h * w]
            start += 1 + h * w
            g = self.grid
            tiled = sub.view(h, w, g, g, -1).permute(0, 2, 1, 3, 4).reshape(h * g, w * g, -1)  # row-major crops
            runs += [self._with_newlines(tiled), glb_gn, self._with_newlines(glb)]
        features = torch.cat(runs)  # (total tokens, 4C)
        return self.img_projection(features.to(self.img_projection[0].weight.dtype))  # (total tokens, hidden)


class Phi3VModel(Phi3Model):
    """Phi-3-V's base model: `Phi3Model` whose input embeddings carry image features at the image positions.

    ``forward(input_ids, attention_mask, pixel_values=None, image_sizes=None, ...)``: positions holding
    ``config.image_token_id`` or a negative id (the official processor's marking) receive the image features in
    order; their count must equal the images' token counts. Returns the `Phi3Model` output (``last_hidden_state``
    after the final norm).

    The checkpoint's duplicate ``model.vision_embed_tokens.wte.weight`` (the same tensor as ``embed_tokens``) and its
    ``lm_head`` are not part of this base model and are dropped on load.
    """

    config_class = Phi3VConfig
    config: Phi3VConfig
    input_modalities = ("image", "text")
    _no_split_modules = ["Phi3DecoderLayer", "CLIPEncoderLayer"]
    _keys_to_ignore_on_load_unexpected = [r"vision_embed_tokens\.wte\.weight", r"^lm_head\."]

    def __init__(self, config: Phi3VConfig):
        super().__init__(config)
        self.vision_embed_tokens = Phi3VImageEmbedding(config)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, Phi3VImageEmbedding):
            init.normal_(module.glb_GN, std=self.config.initializer_range)
            init.normal_(module.sub_GN, std=self.config.initializer_range)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs,
    ):
        if inputs_embeds is None:
            image_positions = (input_ids == self.config.image_token_id) | (input_ids < 0)  # (batch, seq)
            inputs_embeds = self.embed_tokens(input_ids.clamp(min=0))  # (batch, seq, hidden)
            if pixel_values is not None:
                if image_sizes is None:
                    raise ValueError("pixel_values need image_sizes (one padded [height, width] per image)")
                features = self.vision_embed_tokens(pixel_values, image_sizes)  # (image tokens, hidden)
                found = int(image_positions.sum())
                if found != features.shape[0]:
                    raise ValueError(
                        f"input_ids hold {found} image positions but the {len(image_sizes)} image(s) give "
                        f"{features.shape[0]} features"
                    )
                mask = image_positions.unsqueeze(-1).expand_as(inputs_embeds)
                inputs_embeds = inputs_embeds.masked_scatter(mask, features.to(inputs_embeds.dtype))
            elif image_positions.any():
                raise ValueError("input_ids hold image positions but no pixel_values were given")
        return super().forward(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **kwargs)


__all__ = ["Phi3VImageEmbedding", "Phi3VModel", "merge_2x2"]
