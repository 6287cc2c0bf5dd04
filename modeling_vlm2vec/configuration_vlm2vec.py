"""Configuration of a VLM2Vec embedding model (Hub file: imports only transformers and stdlib)."""

from __future__ import annotations

import dataclasses
import math

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

# The string each backbone's processor expands into image features, substituted for MMEB's canonical `<|image_1|>`.
# Qwen uses the bare pad token (the official VLM2Vec raw format, no vision_start/end wrapping); Phi-3-V keeps the
# canonical placeholder, which its own processor understands.
DEFAULT_IMAGE_TOKENS = {
    "llava_next": "<image>",
    "llava": "<image>",
    "qwen2_vl": "<|image_pad|>",
    "qwen2_5_vl": "<|image_pad|>",
    "idefics3": "<image>",
    "smolvlm": "<image>",
    "phi3_v": "<|image_1|>",
}

POOLING_MODES = ("last", "mean")
#: Fields that say how items become backbone inputs; `Vlm2VecProcessor` applies them (the config is their record).
INPUT_CONTRACT_FIELDS = (
    "image_token",
    "padding_side",
    "max_length",
    "image_max_pixels",
    "image_min_pixels",
    "image_fixed_size",
)
PADDING_SIDES = ("left", "right")
#: Key of a native backbone ``config.json`` (the export layout) that holds the Vlm2Vec settings.
NATIVE_SETTINGS_KEY = "vlm2vec"
#: ``auto_map`` of every checkpoint: ``AutoModel.from_pretrained(folder, trust_remote_code=True)`` -> Vlm2VecModel.
AUTO_MAP = {
    "AutoConfig": "configuration_vlm2vec.Vlm2VecConfig",
    "AutoModel": "modeling_vlm2vec.Vlm2VecModel",
}


class Vlm2VecConfig(PreTrainedConfig):
    r"""
    Configuration of [`Vlm2VecModel`]: a vision-language backbone read as an embedding model.

    A checkpoint is self-describing: besides the backbone, this config records how inputs are turned into prompts
    (`image_token`, `padding_side`, `max_length`) and how images are resized (the resolution policy), so training,
    evaluation and `Vlm2VecModel.encode` process inputs identically.

    Args:
        backbone_config (`dict` or `PreTrainedConfig`, *optional*):
            Config of the wrapped VLM (any `model_type` known to `AutoConfig`; default `qwen2_vl`). Declared as a
            sub-config, so `attn_implementation` and `dtype` given to `from_pretrained` reach the backbone.
        pooling (`str`, defaults to `"last"`):
            `"last"`: hidden state of the last non-padding token (correct for left and right padding);
            `"mean"`: mean over non-padding tokens.
        normalize (`bool`, defaults to `True`):
            L2-normalise embeddings (similarity is then cosine).
        contrastive_temperature (`float`, defaults to 0.02):
            InfoNCE temperature used in training (named so because `temperature` is a reserved generation field).
        image_token (`str`, *optional*):
            Replaces the MMEB placeholder `<|image_1|>` in prompts; defaults per backbone type.
        padding_side (`str`, defaults to `"right"`):
            Side on which batches are padded by the processor.
        max_length (`int`, *optional*):
            Token budget per input; only text is truncated, never image tokens. `None` disables truncation.
        image_max_pixels (`int`, *optional*):
            Images with more pixels are downscaled (aspect ratio kept) to at most this many pixels.
        image_min_pixels (`int`, *optional*):
            Images with fewer pixels are upscaled (aspect ratio kept) to at least this many pixels.
        image_fixed_size (`list[int]`, *optional*):
            `[width, height]`: every image is resized to exactly this size (the official "high"/"low" resolution modes);
            takes precedence over the pixel bounds.
    """

    model_type = "vlm2vec"
    sub_configs_defaults = {"backbone_config": SubConfigSpec(config_class=AutoConfig, model_type="qwen2_vl")}

    backbone_config: dict | PreTrainedConfig | None = None
    pooling: str = "last"
    normalize: bool = True
    contrastive_temperature: float = 0.02
    image_token: str | None = None
    padding_side: str = "right"
    max_length: int | None = None
    image_max_pixels: int | None = None
    image_min_pixels: int | None = None
    image_fixed_size: list[int] | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.image_token is None:
            backbone_type = self.backbone_config.model_type
            if backbone_type not in DEFAULT_IMAGE_TOKENS:
                raise ValueError(
                    f"no default image token for backbone type {backbone_type!r}; pass image_token= explicitly "
                    f"(the string its processor expands into image features)"
                )
            self.image_token = DEFAULT_IMAGE_TOKENS[backbone_type]
        self.check_settings()

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs) -> Vlm2VecConfig:
        """Build from a ``config.json`` dict in either layout: the wrapper's own (``model_type == "vlm2vec"``) or the
        export layout, a backbone's native config carrying the Vlm2Vec settings under ``"vlm2vec"``."""
        if config_dict.get("model_type") != cls.model_type and NATIVE_SETTINGS_KEY in config_dict:
            config_dict = wrapper_dict_from_native(config_dict)
        return super().from_dict(config_dict, **kwargs)

    @classmethod
    def get_config_dict(cls, *args, **kwargs) -> tuple[dict, dict]:
        """The saved ``config.json`` in the wrapper's form whichever layout the folder has (so loading an export is not
        reported as a model-type mismatch)."""
        config_dict, kwargs = super().get_config_dict(*args, **kwargs)
        if config_dict.get("model_type") != cls.model_type and NATIVE_SETTINGS_KEY in config_dict:
            config_dict = wrapper_dict_from_native(config_dict)
        return config_dict, kwargs

    def to_native_dict(self) -> dict:
        """The export layout's ``config.json``: the backbone's native config (``architectures`` its
        ``...ForConditionalGeneration``, what other engines build), this config's settings under ``"vlm2vec"`` and the
        ``auto_map`` that makes ``AutoModel.from_pretrained(folder, trust_remote_code=True)`` a `Vlm2VecModel`."""
        native = self.backbone_config.to_dict()
        architecture = MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES.get(self.backbone_type)
        if architecture is not None:
            native["architectures"] = [architecture]
        if self.dtype is not None:
            native["dtype"] = str(self.dtype).removeprefix("torch.")
        native["auto_map"] = {**native.get("auto_map", {}), **AUTO_MAP}
        native[NATIVE_SETTINGS_KEY] = {name: getattr(self, name) for name in WRAPPER_FIELDS}
        return native

    def check_settings(self) -> None:
        """Raise `ValueError` naming the first wrapper setting that is out of its domain (run on construction and
        by :meth:`apply_overrides`)."""
        if self.pooling not in POOLING_MODES:
            raise ValueError(f"pooling must be one of {POOLING_MODES}, got {self.pooling!r}")
        if self.padding_side not in PADDING_SIDES:
            raise ValueError(f"padding_side must be one of {PADDING_SIDES}, got {self.padding_side!r}")
        temperature = self.contrastive_temperature
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 < temperature < math.inf:
            raise ValueError(f"contrastive_temperature must be a finite number > 0, got {temperature!r}")
        for name in ("max_length", "image_max_pixels", "image_min_pixels"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
        if self.image_max_pixels is not None and self.image_min_pixels is not None:
            if self.image_min_pixels > self.image_max_pixels:
                raise ValueError(
                    f"image_min_pixels ({self.image_min_pixels}) exceeds image_max_pixels ({self.image_max_pixels})"
                )
        size = self.image_fixed_size
        if size is not None and (
            len(size) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in size)
        ):
            raise ValueError(f"image_fixed_size must be [width, height] in positive pixels, got {size!r}")
        if not isinstance(self.image_token, str) or not self.image_token:
            raise ValueError(f"image_token must be a non-empty string, got {self.image_token!r}")

    def apply_overrides(self, overrides: dict) -> None:
        """Set the named wrapper fields (others keep their saved values), then validate; on a bad value the config is
        left as it was and `ValueError` names the field."""
        unknown = sorted(set(overrides) - set(WRAPPER_FIELDS))
        if unknown:
            raise ValueError(f"unknown Vlm2Vec setting(s) {unknown}; known: {list(WRAPPER_FIELDS)}")
        previous = {name: getattr(self, name) for name in overrides}
        for name, value in overrides.items():
            setattr(self, name, value)
        try:
            self.check_settings()
        except ValueError:
            for name, value in previous.items():
                setattr(self, name, value)
            raise

    @property
    def backbone_type(self) -> str:
        """`model_type` of the wrapped VLM, e.g. `"qwen2_vl"`."""
        return self.backbone_config.model_type

    @property
    def hidden_size(self) -> int:
        """Embedding dimension: the hidden size of the backbone's language model."""
        return self.backbone_config.get_text_config().hidden_size

    def get_text_config(self, *args, **kwargs) -> PreTrainedConfig:
        return self.backbone_config.get_text_config(*args, **kwargs)


#: The settings a Vlm2Vec config adds to its backbone (what a raw VLM needs to become an embedding model).
WRAPPER_FIELDS = tuple(
    f.name
    for f in dataclasses.fields(Vlm2VecConfig)
    if f.name not in {g.name for g in dataclasses.fields(PreTrainedConfig)} and f.name != "backbone_config"
)


def wrapper_dict_from_native(native: dict) -> dict:
    """A ``config.json`` dict of the export layout turned into the wrapper's own form (the inverse of
    :meth:`Vlm2VecConfig.to_native_dict`)."""
    backbone = {k: v for k, v in native.items() if k not in (NATIVE_SETTINGS_KEY, "auto_map")}
    wrapper = {"model_type": Vlm2VecConfig.model_type, "backbone_config": backbone, **native[NATIVE_SETTINGS_KEY]}
    for key in ("auto_map", "dtype", "transformers_version"):
        if key in native:
            wrapper[key] = native[key]
    return wrapper


Vlm2VecConfig.register_for_auto_class("AutoConfig")

__all__ = [
    "AUTO_MAP",
    "DEFAULT_IMAGE_TOKENS",
    "INPUT_CONTRACT_FIELDS",
    "NATIVE_SETTINGS_KEY",
    "WRAPPER_FIELDS",
    "Vlm2VecConfig",
    "wrapper_dict_from_native",
]
