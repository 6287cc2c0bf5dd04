"""Configuration of Phi-3-V (Phi-3.5-vision) as a native backbone (Hub file: imports only transformers and stdlib).

Reads the ``config.json`` of ``microsoft/Phi-3.5-vision-instruct`` (and of releases in its layout) without running
any of the repo's Python files: the text model is the transformers ``Phi3`` decoder (the ``"su"`` rope scaling is
transformers' ``longrope``), the vision tower a ``CLIPVisionModel``. Importing this module registers the
``phi3_v`` model type with ``AutoConfig``.
"""

from __future__ import annotations

from transformers import CONFIG_MAPPING, AutoConfig, CLIPVisionConfig, Phi3Config

#: The vision tower Phi-3-V's ``img_processor.model_name`` (``openai/clip-vit-large-patch14-336``) implies: ViT-L/14
#: at 336 px. A ``vision_config`` entry in ``config.json`` replaces it (tiny test backbones use one).
CLIP_VIT_L14_336 = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "image_size": 336,
    "patch_size": 14,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "projection_dim": 768,
}
#: The image embedding of the Phi-3.5-V release: HD crops, learned separators, sub-crops before the global view.
DEFAULT_EMBD_LAYER = {
    "embedding_cls": "image",
    "hd_transform_order": "sub_glb",
    "projection_cls": "mlp",
    "use_hd_transform": True,
    "with_learnable_separator": True,
}
DEFAULT_IMG_PROCESSOR = {
    "image_dim_out": 1024,
    "model_name": "openai/clip-vit-large-patch14-336",
    "name": "clip_vision_model",
    "num_img_tokens": 144,
}
#: ``<|image|>`` in the Phi-3.5 tokenizer: the id image positions carry (the official processor marks them with
#: negative ids instead; the model accepts both, see ``Phi3VModel``).
IMAGE_TOKEN_ID = 32044


class Phi3VConfig(Phi3Config):
    r"""
    Configuration of [`Phi3VModel`]: the `Phi3Config` of the text decoder plus Phi-3-V's image fields.

    Args:
        embd_layer (`dict`, *optional*):
            The release's image-embedding description; only the layout of Phi-3.5-V is supported (HD transform,
            learnable separators, order `sub_glb`, MLP projection), anything else raises `ValueError`.
        img_processor (`dict`, *optional*):
            The release's vision-tower description (`image_dim_out`, `num_img_tokens`, `model_name`...).
        vision_config (`dict` or `CLIPVisionConfig`, *optional*):
            The CLIP vision tower; defaults to ViT-L/14-336 (:data:`CLIP_VIT_L14_336`), what `img_processor.model_name`
            names. Its `image_size` is the crop side the image processor cuts.
        image_token_id (`int`, defaults to 32044):
            Token id of image positions in `input_ids` (`<|image|>`); negative ids mark them too.
    """

    model_type = "phi3_v"
    sub_configs = {"vision_config": CLIPVisionConfig}

    embd_layer: dict | None = None
    img_processor: dict | None = None
    vision_config: dict | CLIPVisionConfig | None = None
    image_token_id: int = IMAGE_TOKEN_ID

    def __post_init__(self, **kwargs):
        self.embd_layer = {**DEFAULT_EMBD_LAYER, **(self.embd_layer or {})}
        self.img_processor = {**DEFAULT_IMG_PROCESSOR, **(self.img_processor or {})}
        if self.vision_config is None:
            self.vision_config = CLIPVisionConfig(**CLIP_VIT_L14_336)
        elif isinstance(self.vision_config, dict):
            self.vision_config = CLIPVisionConfig(**self.vision_config)
        unsupported = {
            k: v for k, v in self.embd_layer.items() if k in DEFAULT_EMBD_LAYER and DEFAULT_EMBD_LAYER[k] != v
        }
        if unsupported:
            raise ValueError(f"Phi-3-V embd_layer settings {unsupported} are not supported (only {DEFAULT_EMBD_LAYER})")
        grid = self.vision_config.image_size // self.vision_config.patch_size
        if grid % 2 or self.vision_config.image_size % self.vision_config.patch_size:
            raise ValueError(
                f"the vision tower's patch grid must be even for the 2x2 merge, got image_size "
                f"{self.vision_config.image_size} / patch_size {self.vision_config.patch_size}"
            )
        super().__post_init__(**kwargs)
        # the release's `auto_map` names its own Python files; this native config replaces them, and keeping the
        # entries would send a trusted load of a saved checkpoint looking for files that are not there. A Vlm2Vec
        # export names this very class (its folder ships this file): kept, `AutoModel` finds its entry there.
        auto_map = self.__dict__.get("auto_map") or {}
        if auto_map.get("AutoConfig") != f"{__name__.rsplit('.', 1)[-1]}.{type(self).__name__}":
            self.__dict__.pop("auto_map", None)

    @property
    def crop_size(self) -> int:
        """Side in pixels of one crop (the vision tower's input)."""
        return self.vision_config.image_size

    @property
    def merged_grid(self) -> int:
        """Side of one crop's token grid after the 2x2 merge (12 for ViT-L/14-336)."""
        return self.vision_config.image_size // self.vision_config.patch_size // 2


# The first copy of this file to be imported keeps the registration: a checkpoint's Hub copy, imported later by a
# trusted load, must not replace it, or AutoConfig would hand out a config class AutoModel has no model for.
if Phi3VConfig.model_type not in CONFIG_MAPPING:
    AutoConfig.register(Phi3VConfig.model_type, Phi3VConfig)

__all__ = ["CLIP_VIT_L14_336", "IMAGE_TOKEN_ID", "Phi3VConfig"]
