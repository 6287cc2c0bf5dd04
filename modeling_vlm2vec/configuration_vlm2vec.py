"""Configuration of a VLM2Vec embedding model (Hub file: imports only transformers and stdlib)."""

from __future__ import annotations

import dataclasses
import math

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

from .phi3v_config_vlm2vec import Phi3VConfig  # noqa: F401  (registers the native phi3_v backbone with AutoConfig)

# The string each backbone's processor expands into image features, substituted for MMEB's canonical `<|image_1|>`.
# Qwen uses the bare pad token (the official VLM2Vec raw format, no vision_start/end wrapping); Phi-3-V keeps the
# canonical placeholder, which its processor (phi3v_processing_vlm2vec) expands.
DEFAULT_IMAGE_TOKENS = {
    "llava_next": "<image>",
    "llava": "<image>",
    "qwen2_vl": "<|image_pad|>",
    "qwen2_5_vl": "<|image_pad|>",
    "qwen3_vl": "<|image_pad|>",
    "gemma3": "<start_of_image>",
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
    "small_image_edge",
    "strip_prompt",
    "position_policy",
    "video_input",
    "truncation_policy",
)
PADDING_SIDES = ("left", "right")
#: ``native``: the backbone's own position ids. ``transformers4``: Qwen2-VL / Qwen2.5-VL positions as transformers 4
#: computed them, which official VLM2Vec releases were trained and evaluated with (see ``position_policy``).
POSITION_POLICIES = ("native", "transformers4")
_MROPE_BACKBONES = ("qwen2_vl", "qwen2_5_vl")
#: ``frames``: a video's frames as the images of one multi-image prompt. ``video``: the backbone's own video input,
#: built from the frames (Qwen2-VL / Qwen2.5-VL; see ``video_input``).
VIDEO_INPUTS = ("frames", "video")
#: ``text``: any row past ``max_length`` loses text tokens from its end, never image tokens. ``text_only_rows``: the
#: official Phi-3-V rule -- rows without an image keep their first ``max_length`` tokens, rows with one are not cut.
TRUNCATION_POLICIES = ("text", "text_only_rows")
#: The truncation policy each backbone gets unless one is given (``text`` for the others).
DEFAULT_TRUNCATION_POLICIES = {"phi3_v": "text_only_rows"}
#: Key of a native backbone ``config.json`` (the export layout) that holds the Vlm2Vec settings.
NATIVE_SETTINGS_KEY = "vlm2vec"
#: ``auto_map`` of every checkpoint: ``AutoModel.from_pretrained(folder, trust_remote_code=True)`` -> Vlm2VecModel.
AUTO_MAP = {
    "AutoConfig": "configuration_vlm2vec.Vlm2VecConfig",
    "AutoModel": "modeling_vlm2vec.Vlm2VecModel",
}
#: ``auto_map`` of the export layout where :data:`AUTO_MAP` does not serve: transformers has no Phi-3-V class, so vLLM
#: reads a Phi-3-V export's config as Hub code through ``AutoConfig`` and needs the backbone's own config class there;
#: ``AutoModel`` then needs a class whose ``config_class`` has that name (transformers checks it), which yields the
#: `Vlm2VecModel` (``Phi3VVlm2VecModel``).
NATIVE_AUTO_MAPS = {
    "phi3_v": {
        "AutoConfig": "phi3v_config_vlm2vec.Phi3VConfig",
        "AutoModel": "modeling_vlm2vec.Phi3VVlm2VecModel",
    },
}
#: The class other engines build for backbones transformers has no image-text-to-text class for: the original Hub
#: model's (vLLM serves Phi-3-V exports as `Phi3VForCausalLM`, as it serves `TIGER-Lab/VLM2Vec-Full`).
HUB_ARCHITECTURES = {"phi3_v": "Phi3VForCausalLM"}


def is_native_export_config(config: PreTrainedConfig) -> bool:
    """True for a backbone config read from a Vlm2Vec export's ``config.json`` (it has the ``"vlm2vec"`` section)."""
    return getattr(config, NATIVE_SETTINGS_KEY, None) is not None


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
            Images with more pixels are downscaled (aspect ratio kept) to at most this many pixels. Qwen2-VL,
            Qwen2.5-VL and Qwen3-VL: the image processor's own upper bound (`size["longest_edge"]`, its
            `max_pixels`), which its `smart_resize` applies together with rounding both sides to multiples of 28 (32
            for Qwen3-VL), so every engine running the saved processor applies it; other backbones: a bicubic resize
            before their processor, which only `Vlm2VecProcessor` does. `None` keeps the processor's own bound.
        image_min_pixels (`int`, *optional*):
            Images with fewer pixels are upscaled (aspect ratio kept) to at least this many pixels; Qwen-VL: the image
            processor's own lower bound (`size["shortest_edge"]`, its `min_pixels`), as for `image_max_pixels`.
        image_fixed_size (`list[int]`, *optional*):
            `[width, height]`: every image is resized to exactly this size (the official "high"/"low" resolution modes),
            before the backbone processor; takes precedence over the pixel bounds (no backbone processor expresses it).
        small_image_edge (`int`, *optional*):
            An image whose width or height is below this many pixels is stretched to a square of twice this edge (the
            official Qwen rule: an edge under 28 px -> 56x56, aspect ratio not kept), after the resizes above that
            happen before the backbone processor (for Qwen-VL the pixel bounds come after it, in the processor, as in
            the official code). No backbone processor expresses it.
        strip_prompt (`bool`, defaults to `True`):
            Strip leading and trailing whitespace of the instruction and the text before joining them with one space.
            Converted official checkpoints keep it (`False`): the official MMEB-V2 formats end queries with `"\n"`,
            and the pooled last token is that newline.
        position_policy (`str`, defaults to `"native"`):
            `"native"`: the backbone's own position ids (transformers 5 gives every Qwen image 3-D M-RoPE positions).
            `"transformers4"` (Qwen2-VL / Qwen2.5-VL only): transformers 4's rule, which official VLM2Vec releases were
            trained and evaluated with -- per row, only as many image (video) runs as there are `<|vision_start|>`
            tokens directly followed by an image (video) token get 3-D positions, the first ones in order; every other
            token, a bare `<|image_pad|>` included, gets plain 1-D positions.
        video_input (`str`, defaults to `"frames"`):
            How a video (its frames) is fed. `"frames"`: as the images of one multi-image prompt, one image token run
            per frame. `"video"` (Qwen2-VL / Qwen2.5-VL only): through the backbone's video input, as the official
            VLM2Vec-V2 code does -- `<|video_1|>` becomes one `<|video_pad|>`, expanded to the video's tokens, and the
            processor builds `pixel_values_videos` / `video_grid_thw` from the frames itself (no torchvision).
        truncation_policy (`str`, *optional*):
            Which rows `max_length` cuts. `"text"`: any row, by dropping text tokens from the end of its text (image
            tokens never). `"text_only_rows"` (Phi-3-V only; its default, the official rule): rows without an image
            keep their first `max_length` tokens, rows with an image are never cut. `None`: the backbone's default.
        matryoshka_dimensions (`list[int]`, *optional*):
            Embedding sizes trained as Matryoshka prefixes: the first `d` coordinates, re-normalised, are an
            embedding of their own. Kept sorted and always ending with the full size (`hidden_size`); engines read
            this field (vLLM's `dimensions` request parameter). `None`: trained at the full size only.
        matryoshka_weights (`list[float]`, *optional*):
            Loss weight of each entry of `matryoshka_dimensions` (same order, full size last); default equal.
        hardness_alpha (`float`, defaults to 0.0):
            Hardness-weighted InfoNCE (LLaVE): each negative's term in the softmax denominator is weighted by
            `exp(alpha * similarity)`, normalised to mean 1 over the row's negatives; 0 is plain InfoNCE.
        false_negative_margin (`float`, *optional*):
            In training, a candidate (other than the row's own positive) whose similarity to the query exceeds the
            positive's similarity minus this margin is left out of that row's softmax. `None`: no masking.
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
    small_image_edge: int | None = None
    strip_prompt: bool = True
    position_policy: str = "native"
    video_input: str = "frames"
    truncation_policy: str | None = None
    matryoshka_dimensions: list[int] | None = None
    matryoshka_weights: list[float] | None = None
    hardness_alpha: float = 0.0
    false_negative_margin: float | None = None

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
        self._complete_defaults()
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

    @classmethod
    def from_native_config(cls, config: PreTrainedConfig) -> Vlm2VecConfig:
        """The config of an export whose ``config.json`` was read as the backbone's own config (what ``AutoConfig``
        gives through a :data:`NATIVE_AUTO_MAPS` entry, e.g. a `Phi3VConfig`): the backbone is ``config``, the settings
        its ``"vlm2vec"`` section. `ValueError` when ``config`` has no such section (not a Vlm2Vec export)."""
        if not is_native_export_config(config):
            raise ValueError(
                f"this {type(config).__name__} has no {NATIVE_SETTINGS_KEY!r} section: not a Vlm2Vec export's config"
            )
        return cls.from_dict(config.to_dict())

    def to_native_dict(self) -> dict:
        """The export layout's ``config.json``: the backbone's native config (``architectures`` its
        ``...ForConditionalGeneration``, what other engines build), this config's settings under ``"vlm2vec"`` and the
        ``auto_map`` that makes ``AutoModel.from_pretrained(folder, trust_remote_code=True)`` a `Vlm2VecModel`
        (:data:`AUTO_MAP`, or the backbone's :data:`NATIVE_AUTO_MAPS` entry), and ``matryoshka_dimensions`` at the top
        level when the model has them."""
        native = self.backbone_config.to_dict()
        architecture = MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES.get(self.backbone_type) or HUB_ARCHITECTURES.get(
            self.backbone_type
        )
        if architecture is not None:
            native["architectures"] = [architecture]
        if self.dtype is not None:
            native["dtype"] = str(self.dtype).removeprefix("torch.")
        # the folder ships our files only (not a release's own Hub code)
        native["auto_map"] = dict(NATIVE_AUTO_MAPS.get(self.backbone_type, AUTO_MAP))
        native[NATIVE_SETTINGS_KEY] = {name: getattr(self, name) for name in WRAPPER_FIELDS}
        if self.matryoshka_dimensions:  # top level, where engines read it (vLLM's `dimensions` request parameter)
            native["matryoshka_dimensions"] = list(self.matryoshka_dimensions)
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
        if self.position_policy not in POSITION_POLICIES:
            raise ValueError(f"position_policy must be one of {POSITION_POLICIES}, got {self.position_policy!r}")
        if self.position_policy == "transformers4" and self.backbone_type not in _MROPE_BACKBONES:
            raise ValueError(
                f"position_policy 'transformers4' applies to {', '.join(_MROPE_BACKBONES)} backbones only, "
                f"not {self.backbone_type!r}"
            )
        if self.video_input not in VIDEO_INPUTS:
            raise ValueError(f"video_input must be one of {VIDEO_INPUTS}, got {self.video_input!r}")
        if self.video_input == "video" and self.backbone_type not in _MROPE_BACKBONES:
            raise ValueError(
                f"video_input 'video' applies to {', '.join(_MROPE_BACKBONES)} backbones only, "
                f"not {self.backbone_type!r}; use 'frames'"
            )
        if self.truncation_policy not in TRUNCATION_POLICIES:
            raise ValueError(f"truncation_policy must be one of {TRUNCATION_POLICIES}, got {self.truncation_policy!r}")
        if self.truncation_policy == "text_only_rows" and self.backbone_type != "phi3_v":
            raise ValueError(
                f"truncation_policy 'text_only_rows' applies to phi3_v backbones only, not {self.backbone_type!r}"
            )
        if not isinstance(self.strip_prompt, bool):
            raise ValueError(f"strip_prompt must be true or false, got {self.strip_prompt!r}")
        for name in ("max_length", "image_max_pixels", "image_min_pixels", "small_image_edge"):
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
        self._check_loss_settings()

    def _check_loss_settings(self) -> None:
        dims, weights = self.matryoshka_dimensions, self.matryoshka_weights
        if dims is not None:
            if (
                not isinstance(dims, list)
                or not dims
                or not all(_is_int(d) and 1 <= d <= self.hidden_size for d in dims)
            ):
                raise ValueError(
                    f"matryoshka_dimensions must be a non-empty list of integers in [1, {self.hidden_size}] "
                    f"(the embedding size), got {dims!r}"
                )
            if dims != sorted(set(dims)) or dims[-1] != self.hidden_size:
                raise ValueError(
                    f"matryoshka_dimensions must be increasing and end with the embedding size {self.hidden_size}, "
                    f"got {dims!r}"
                )
        if weights is not None:
            if dims is None:
                raise ValueError("matryoshka_weights needs matryoshka_dimensions")
            if (
                not isinstance(weights, list)
                or len(weights) != len(dims)
                or not all(_is_number(w) and w >= 0 for w in weights)
                or not sum(weights) > 0
            ):
                raise ValueError(
                    f"matryoshka_weights must hold {len(dims)} finite weights >= 0 (not all 0), one per dimension "
                    f"of {dims} (the full size last), got {weights!r}"
                )
        if not _is_number(self.hardness_alpha):
            raise ValueError(f"hardness_alpha must be a finite number, got {self.hardness_alpha!r}")
        margin = self.false_negative_margin
        if margin is not None and not _is_number(margin):
            raise ValueError(f"false_negative_margin must be a finite number or None, got {margin!r}")

    def _complete_defaults(self) -> None:
        """Give an unset ``truncation_policy`` its backbone's default and complete ``matryoshka_dimensions``."""
        if self.truncation_policy is None:
            self.truncation_policy = DEFAULT_TRUNCATION_POLICIES.get(self.backbone_type, "text")
        self._complete_matryoshka_dimensions()

    def _complete_matryoshka_dimensions(self) -> None:
        """Sort `matryoshka_dimensions` and append the full size when missing (a list of valid integers only; the
        check reports anything else)."""
        dims = self.matryoshka_dimensions
        if isinstance(dims, list) and dims and all(_is_int(d) for d in dims):
            self.matryoshka_dimensions = sorted(set(dims) | {self.hidden_size})

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
            self._complete_defaults()
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


def check_false_negative_margin(margin, normalize: bool) -> None:
    """Raise `ValueError` unless ``margin`` is None or a finite number that leaves candidates in the softmax.

    A candidate ``j`` is masked when ``x_j > x_y - margin``, i.e. when ``x_y - x_j < margin``. With normalised
    embeddings the scores are cosines in [-1, 1], so ``x_y - x_j <= 2``: a margin of 2 or more masks every other
    candidate (short of an exact opposite of the query), the loss is 0 and training learns nothing. Checked where
    training starts (the recipe, the trainer), not when a config loads: the margin changes nothing else, so a model
    saved with one still loads and embeds.
    """
    if margin is None:
        return
    if not _is_number(margin):
        raise ValueError(f"false_negative_margin must be a finite number or None, got {margin!r}")
    if normalize and margin >= 2:
        raise ValueError(
            f"false_negative_margin must be below 2 for normalised embeddings (cosine scores differ by at most 2, "
            f"so {margin!r} masks every candidate and the loss is 0), got {margin!r}"
        )


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


#: The settings a Vlm2Vec config adds to its backbone (what a raw VLM needs to become an embedding model).
WRAPPER_FIELDS = tuple(
    f.name
    for f in dataclasses.fields(Vlm2VecConfig)
    if f.name not in {g.name for g in dataclasses.fields(PreTrainedConfig)} and f.name != "backbone_config"
)

#: The default of each wrapper field (what a raw VLM is wrapped with).
SETTING_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Vlm2VecConfig) if f.name in WRAPPER_FIELDS}


def wrapper_dict_from_native(native: dict) -> dict:
    """A ``config.json`` dict of the export layout turned into the wrapper's own form (the inverse of
    :meth:`Vlm2VecConfig.to_native_dict`)."""
    backbone = {k: v for k, v in native.items() if k not in (NATIVE_SETTINGS_KEY, "auto_map", "matryoshka_dimensions")}
    wrapper = {"model_type": Vlm2VecConfig.model_type, "backbone_config": backbone, **native[NATIVE_SETTINGS_KEY]}
    if "auto_map" in native:  # the wrapper's own entries, whatever the export layout named for its backbone
        wrapper["auto_map"] = dict(AUTO_MAP)
    for key in ("dtype", "transformers_version"):
        if key in native:
            wrapper[key] = native[key]
    return wrapper


Vlm2VecConfig.register_for_auto_class("AutoConfig")

__all__ = [
    "AUTO_MAP",
    "DEFAULT_IMAGE_TOKENS",
    "INPUT_CONTRACT_FIELDS",
    "NATIVE_AUTO_MAPS",
    "NATIVE_SETTINGS_KEY",
    "POSITION_POLICIES",
    "SETTING_DEFAULTS",
    "TRUNCATION_POLICIES",
    "VIDEO_INPUTS",
    "Vlm2VecConfig",
    "WRAPPER_FIELDS",
    "check_false_negative_margin",
    "is_native_export_config",
    "wrapper_dict_from_native",
]
