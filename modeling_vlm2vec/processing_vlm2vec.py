"""Turning (instruction, text, image) into backbone tensors — the one path used by training, evaluation and `encode`.

Hub file: imports only stdlib, torch, transformers, PIL (a transformers dependency for vision models) and its sibling
Hub files.

* :class:`Vlm2VecProcessor` owns the input contract of a checkpoint: it wraps the backbone's own processor and applies
  the prompt builder, the resolution policy, truncation that never cuts image tokens and the padding side. An item
  is text, an image, or a video's frames (a multi-image prompt, one image token per frame; with ``video_input``
  ``video``, Qwen2-VL / Qwen2.5-VL's own video input, see :mod:`.video_vlm2vec`). Training
  (the collator), evaluation and ``Vlm2VecModel.encode`` all call it; ``AutoProcessor.from_pretrained(checkpoint,
  trust_remote_code=True)`` returns it, while ``AutoProcessor.from_pretrained(checkpoint)`` still gives the bare
  backbone processor (what other engines use); in a Phi-3-V export (the layout other engines read) the trusted
  ``AutoProcessor`` is the backbone's own Hub-file processor, which vLLM and sentence-transformers need.
* The prompt builder (:func:`~.prompting_vlm2vec.build_prompt`) and the resolution and position policies
  (:mod:`.image_policy_vlm2vec`) live in sibling Hub files; this processor is the one place that applies them.
* The backbone processor it wraps is loaded by :func:`~.backbone_processor_vlm2vec.load_backbone_processor` (Qwen-VL
  without torchvision too, videos included).
"""

from __future__ import annotations

import json
import os
import shutil

import torch
from PIL import Image
from transformers import ProcessorMixin
from transformers.dynamic_module_utils import get_relative_import_files

from .backbone_processor_vlm2vec import HUB_KWARGS, VIDEO_FROM_FRAMES, load_backbone_processor
from .configuration_vlm2vec import INPUT_CONTRACT_FIELDS, Vlm2VecConfig
from .image_policy_vlm2vec import apply_position_policy, apply_resolution_policy, backbone_image_settings
from .phi3v_processing_vlm2vec import IMAGE_TAG, Phi3VProcessor
from .prompting_vlm2vec import IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER, build_prompt, check_item_text, shorten_text
from .video_vlm2vec import frames_at_one_size

_VISION_START = "<|vision_start|>"

# Backbones whose processor takes one list of images per text (others take a flat list in text order).
_NESTED_IMAGE_BACKBONES = ("idefics3", "smolvlm", "gemma3")
#: Backbones whose processor and model take several images in one text (tested), so a video can be fed as its frames.
FRAMES_BACKBONES = ("llava_next", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "idefics3", "gemma3")


class Vlm2VecProcessor(ProcessorMixin):
    """The input contract of a Vlm2Vec checkpoint around the backbone's own processor.

    Args:
        backbone_processor: the VLM's processor (e.g. ``LlavaNextProcessor``), or its tokenizer for a text-only model.
        config: the checkpoint's ``Vlm2VecConfig``. Its input-contract fields (:data:`INPUT_CONTRACT_FIELDS`) are
            read from it on every call — ``image_token`` (replaces MMEB's ``<|image_1|>``), ``strip_prompt``,
            ``padding_side``, ``max_length`` (token budget; only text is truncated, never image tokens), the
            resolution policy ``image_max_pixels`` / ``image_min_pixels`` / ``image_fixed_size`` /
            ``small_image_edge`` and ``position_policy`` (see :func:`apply_position_policy`) — so a model and its
            processor never disagree; they are also readable as attributes of the processor.

    The resolution policy is expressed in the backbone processor's own settings where it can be
    (:func:`backbone_image_settings`: Qwen-VL's pixel bounds become its image processor's ``size``, set from the
    config before every call and when saving, so the saved processor config carries them and an engine
    running the backbone processor alone gets the same ``pixel_values``); the rest (a fixed size, the small-image rule,
    pixel bounds of other backbones) resizes images before the backbone processor (:func:`apply_resolution_policy`).

    :meth:`from_pretrained` loads the backbone processor and the config saved in a checkpoint folder or Hub repo.
    Calling the processor turns items into backbone tensors (see :meth:`__call__`).
    """

    def __init__(self, backbone_processor, config: Vlm2VecConfig):
        super().__init__()  # no sub-processor attributes of its own: the backbone processor is saved as it is
        self.backbone_processor = backbone_processor
        self.config = config
        self._configure_backbone()

    def _configure_backbone(self) -> None:
        """Set the backbone image processor's settings that express the config's resolution policy (a no-op when
        they already agree or there are none)."""
        image_processor = getattr(self.backbone_processor, "image_processor", None)
        if image_processor is None:
            return
        for name, value in backbone_image_settings(self.config, image_processor).items():
            if getattr(image_processor, name) != value:
                setattr(image_processor, name, value)

    # The input contract, read from the config (one record, shared with the model).
    backbone_type = property(lambda self: self.config.backbone_type, doc="``model_type`` of the VLM.")
    image_token = property(lambda self: self.config.image_token, doc="Replaces ``<|image_1|>`` in prompts.")
    padding_side = property(lambda self: self.config.padding_side, doc="Side batches are padded on.")
    max_length = property(lambda self: self.config.max_length, doc="Token budget per input, or None.")
    image_max_pixels = property(lambda self: self.config.image_max_pixels, doc="Upper pixel bound, or None.")
    image_min_pixels = property(lambda self: self.config.image_min_pixels, doc="Lower pixel bound, or None.")
    image_fixed_size = property(lambda self: self.config.image_fixed_size, doc="[width, height], or None.")
    small_image_edge = property(lambda self: self.config.small_image_edge, doc="Small-image edge rule, or None.")
    strip_prompt = property(lambda self: self.config.strip_prompt, doc="Strip whitespace around prompt parts.")
    position_policy = property(lambda self: self.config.position_policy, doc="``native`` or ``transformers4``.")
    video_input = property(lambda self: self.config.video_input, doc="``frames`` or ``video``.")
    truncation_policy = property(lambda self: self.config.truncation_policy, doc="Which rows max_length cuts.")

    @property
    def _video_token(self) -> str | None:
        """The backbone's video token with ``video_input`` ``video``, else None (videos are images then)."""
        return self.backbone_processor.video_token if self.video_input == "video" else None

    @classmethod
    def from_config(cls, backbone_processor, config: Vlm2VecConfig) -> Vlm2VecProcessor:
        """The processor of a model whose config is ``config``."""
        return cls(backbone_processor, config)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> Vlm2VecProcessor:
        """Load the backbone processor saved in a checkpoint folder or Hub repo, with the settings of its config.

        ``kwargs``: Hub options (``revision``, ``token``, ``cache_dir``, ``local_files_only``) and processor options
        passed on to the backbone processor; ``trust_remote_code`` reaches the backbone processor only (for VLMs whose
        processor is Hub code).
        """
        kwargs.pop("_from_auto", None)
        hub_kwargs = {k: kwargs[k] for k in HUB_KWARGS if k in kwargs}
        config = Vlm2VecConfig.from_pretrained(pretrained_model_name_or_path, **hub_kwargs)
        return cls.from_config(load_backbone_processor(pretrained_model_name_or_path, **kwargs), config)

    def save_pretrained(self, save_directory: str | os.PathLike, engine_layout: bool = False, **kwargs) -> list[str]:
        """Save the backbone processor, register this class for ``AutoProcessor`` in its config file and copy this
        module and the sibling Hub files it imports beside it. The settings are not written here: they live in the
        model's ``config.json`` (the backbone processor's own files carry what it can express of them).

        ``engine_layout`` (the export layout other engines read): when the backbone processor is itself one of these
        Hub files (Phi-3-V's, which transformers has no class for), ``AutoProcessor`` names it instead, since vLLM and
        sentence-transformers load the processor only through ``AutoProcessor`` with ``trust_remote_code=True``.
        """
        self._configure_backbone()
        engine_entry = engine_layout and isinstance(self.backbone_processor, Phi3VProcessor)
        entry = self.backbone_processor if engine_entry else self
        files = self.backbone_processor.save_pretrained(save_directory, **kwargs)
        for name in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
            path = os.path.join(save_directory, name)
            if os.path.isfile(path):
                with open(path, encoding="utf-8") as f:
                    saved = json.load(f)
                auto_map = saved.setdefault("auto_map", {})
                if "AutoProcessor" in auto_map:  # a backbone whose own processor is Hub code keeps its entry
                    break
                auto_map["AutoProcessor"] = f"{type(entry).__module__.rsplit('.', 1)[-1]}.{type(entry).__name__}"
                with open(path, "w", encoding="utf-8") as f:
                    f.write(json.dumps(saved, indent=2, sort_keys=True) + "\n")
                for source in (__file__, *get_relative_import_files(__file__)):
                    target = os.path.join(save_directory, os.path.basename(source))
                    if not os.path.exists(target) or not os.path.samefile(source, target):
                        shutil.copyfile(source, target)
                break
        return files

    @property
    def chat_template(self) -> str | None:
        """The backbone processor's chat template; in an export, the one rendering this checkpoint's prompt from chat
        messages (what sentence-transformers and vLLM run)."""
        return getattr(self.backbone_processor, "chat_template", None)

    @chat_template.setter
    def chat_template(self, value: str | None) -> None:
        if value is not None:  # ProcessorMixin.__init__ sets None before the backbone processor exists
            self.backbone_processor.chat_template = value

    def apply_chat_template(self, *args, **kwargs):
        """The backbone processor's ``apply_chat_template`` (so engines that render chat messages, such as
        sentence-transformers with ``trust_remote_code=True``, work with this processor too). Only the part of the
        resolution policy the backbone processor expresses applies here (see :meth:`__call__`)."""
        self._configure_backbone()
        return self.backbone_processor.apply_chat_template(*args, **kwargs)

    @property
    def tokenizer(self):
        """The backbone's tokenizer."""
        return getattr(self.backbone_processor, "tokenizer", self.backbone_processor)

    def to_dict(self) -> dict:
        """This processor's settings and the backbone processor's own (its ``to_dict``; a tokenizer's init kwargs)."""
        backbone = self.backbone_processor
        backbone_dict = backbone.to_dict() if hasattr(backbone, "image_processor") else dict(backbone.init_kwargs)
        settings = {name: getattr(self, name) for name in ("backbone_type", *INPUT_CONTRACT_FIELDS)}
        return {"processor_class": type(self).__name__, "backbone_processor": backbone_dict, **settings}

    def build_prompt(
        self, text: str | None, has_image: bool, instruction: str | None = None, num_frames: int = 0
    ) -> str:
        """:func:`build_prompt` with this checkpoint's image token (``num_frames`` of them for a video item, or the
        backbone's one video token with ``video_input`` ``video``)."""
        return build_prompt(
            text, has_image, self.image_token, instruction, strip=self.strip_prompt, num_frames=num_frames,
            video_token=self._video_token,
        )  # fmt: skip

    def check_text(self, text: str) -> None:
        """Raise ``ValueError`` when ``text`` cannot become a correct prompt for this backbone, before any forward.

        Beyond :func:`check_item_text`: a literal backbone image token (``<|image_pad|>``, ``<image>``...) or video
        token (``<|video_pad|>``) in the data would count as an image (video) without pixels; and without
        ``max_length`` a text longer than the backbone's context (``max_position_embeddings``) would be attempted
        whole. Only texts with more UTF-8 bytes than that limit are tokenized (a token covers at least one byte), so
        the check costs little.
        """
        check_item_text(text)
        tokens = {self.image_token, getattr(self.backbone_processor, "image_token", None)} - {IMAGE_PLACEHOLDER}
        if isinstance(self.backbone_processor, Phi3VProcessor):  # its processor reads every <|image_N|> as an image
            tokens |= set(IMAGE_TAG.findall(text)) - {IMAGE_PLACEHOLDER}
        found = sorted(t for t in tokens if t and t in text)
        if found:
            raise ValueError(
                f"text holds the backbone's image token {found[0]!r}; mark the image with {IMAGE_PLACEHOLDER}"
            )
        video_token = getattr(self.backbone_processor, "video_token", None)
        if video_token and video_token in text:
            raise ValueError(
                f"text holds the backbone's video token {video_token!r}; mark the video with {VIDEO_PLACEHOLDER}"
            )
        limit = getattr(self.config.get_text_config(), "max_position_embeddings", None)
        if self.max_length is None and limit and len(text.encode("utf-8")) > limit:
            n = len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
            if n > limit:
                raise ValueError(
                    f"text has {n} tokens, more than the backbone's {limit} positions; set max_length to truncate"
                )

    def __call__(
        self, texts: list[str | None], images: list[Image.Image | None], instruction: str | None = None
    ) -> dict[str, torch.Tensor]:
        """Tokenize a batch of items into backbone inputs.

        Args:
            texts: raw item texts in MMEB form (instruction included, ``<|image_1|>`` where the image goes,
                ``<|video_1|>`` where a video goes), or None.
            images: per text, one PIL image, a list of PIL images (a video's frames in order, each through the
                resolution policy; backbones in :data:`FRAMES_BACKBONES` only: with :attr:`video_input` ``frames``
                each frame gets its own image token, see :func:`build_prompt`; with ``video`` they become the
                backbone's video input, see :func:`~.video_vlm2vec.video_from_frames`), or ``None``.
            instruction: optional instruction put before every text.

        Returns:
            ``input_ids`` and ``attention_mask`` (batch, seq) padded on :attr:`padding_side`, plus the backbone
            processor's other tensors (``pixel_values`` and ``image_sizes`` / ``image_grid_thw`` /
            ``pixel_attention_mask`` / ``mm_token_type_ids`` / ``pixel_values_videos`` / ``video_grid_thw`` as the
            backbone needs) when present. With
            :attr:`max_length` set, rows that are too long lose text tokens from the end of their text, then from
            the end of the text before their image (:func:`~.prompting_vlm2vec.shorten_text`); image tokens are
            never cut, of any frame (a row whose image or frames alone are too long raises ``ValueError``).
        """
        if len(texts) != len(images):
            raise ValueError(f"texts and images must align, got {len(texts)} texts and {len(images)} images")
        counts = [self._check_frames(img) for img in images]  # frames per video item, else 0
        prompts = [
            self.build_prompt(t, img is not None and not n, instruction, n) for t, img, n in zip(texts, images, counts)
        ]
        return self.process_prompts(prompts, images)

    def process_prompts(
        self, prompts: list[str], images: list[Image.Image | None], add_special_tokens: bool = True
    ) -> dict[str, torch.Tensor]:
        """Backbone tensors of prompts that are already built — by :meth:`build_prompt` (what :meth:`__call__`
        does) or by the exported chat template, whose output is what vLLM tokenizes — holding the backbone's image
        token(s) where their image (frames) go.

        ``images`` are as in :meth:`__call__`; the resolution policy, :attr:`max_length` truncation (text tokens
        only), padding and the position policy apply the same way. ``add_special_tokens=False`` is the chat path of
        vLLM and transformers: the template writes the BOS itself. Returns the tensors :meth:`__call__` returns.
        """
        if len(prompts) != len(images):
            raise ValueError(f"prompts and images must align, got {len(prompts)} prompts and {len(images)} images")
        counts = [self._check_frames(img) for img in images]
        self._configure_backbone()  # the config may have changed since the last call
        flat = [(frame, bool(n)) for img, n in zip(images, counts) for frame in (img if n else [img])]  # one by one
        stretch = self.video_input != "video"  # the official code stretches small images, not video-input frames
        pil_images = [
            None if img is None else apply_resolution_policy(img, self, small_image_rule=stretch or not frame)
            for img, frame in flat
        ]
        pil_images = _regroup_frames(pil_images, counts)
        backbone_kwargs = {} if add_special_tokens else {"add_special_tokens": False}
        batch = self._run_backbone(prompts, pil_images, **backbone_kwargs)
        if self.max_length is not None and self.truncation_policy == "text":
            for shortened in range(4):  # decoding may re-tokenize a little longer; three passes always converge
                lengths = batch["attention_mask"].sum(-1).tolist()
                if max(lengths) <= self.max_length:
                    break
                if shortened == 3:
                    raise ValueError(f"could not fit inputs into max_length={self.max_length}")
                tokens = [t for t in (self.image_token, self._video_token) if t]
                prompts = [
                    shorten_text(p, n - self.max_length, self.tokenizer, tokens) if n > self.max_length else p
                    for p, n in zip(prompts, lengths)
                ]
                batch = self._run_backbone(prompts, pil_images, **backbone_kwargs)
        tensors = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
        if self.position_policy == "transformers4" and "mm_token_type_ids" in tensors:
            vision_start = self.tokenizer.convert_tokens_to_ids(_VISION_START)
            tensors["mm_token_type_ids"] = apply_position_policy(
                tensors["input_ids"], tensors["mm_token_type_ids"], vision_start
            )
        return tensors

    def _run_backbone(self, prompts: list[str], images: list[Image.Image | list[Image.Image] | None], **extra):
        videos = (
            [frames_at_one_size(img) for img in images if isinstance(img, list)] if self.video_input == "video" else []
        )
        per_text = [[] if img is None or videos and isinstance(img, list) else _as_list(img) for img in images]
        present = [img for frames in per_text for img in frames]
        kwargs = {"text": prompts, "padding": True, "padding_side": self.padding_side, "return_tensors": "pt", **extra}
        if self.truncation_policy == "text_only_rows" and self.max_length is not None:
            kwargs.update(truncation=True, max_length=self.max_length)  # Phi3VProcessor cuts text-only rows only
        if videos:
            kwargs["videos"] = videos
        if present and hasattr(self.backbone_processor, "image_processor"):
            if self.backbone_type in _NESTED_IMAGE_BACKBONES:
                kwargs["images"] = per_text
            else:
                kwargs["images"] = present
        return self.backbone_processor(**kwargs)  # a text-only backbone: its tokenizer is the processor

    def _check_frames(self, image) -> int:
        """The number of frames of a video item (a list or tuple of PIL images), 0 for anything else; ``ValueError``
        for an empty video, a frame that is no PIL image, or a backbone outside :data:`FRAMES_BACKBONES`."""
        if not isinstance(image, (list, tuple)):
            return 0
        if self.backbone_type not in FRAMES_BACKBONES or not hasattr(self.backbone_processor, "image_processor"):
            raise ValueError(
                f"backbone {self.backbone_type!r} takes one image per prompt; a video's frames (a multi-image prompt) "
                f"need one of {', '.join(FRAMES_BACKBONES)}"
            )
        if not image or not all(isinstance(frame, Image.Image) for frame in image):
            raise ValueError("a video must be a non-empty list of PIL images (its frames)")
        if self.video_input == "video" and not isinstance(self.backbone_processor, VIDEO_FROM_FRAMES):
            raise ValueError(
                f"video_input 'video' builds the video input from the frames itself: wrap the processor "
                f"load_backbone_processor() gives, not a {type(self.backbone_processor).__name__}"
            )
        return len(image)


def _as_list(image) -> list:
    return image if isinstance(image, list) else [image]


def _regroup_frames(images: list, counts: list[int]) -> list:
    """Undo the flattening of :meth:`Vlm2VecProcessor.__call__`: the next ``n`` images become one list for an item
    with ``n`` > 0 frames, else the next image (or None) stays as it is."""
    flat = iter(images)
    return [[next(flat) for _ in range(n)] if n else next(flat) for n in counts]


Vlm2VecProcessor.register_for_auto_class("AutoProcessor")

__all__ = [
    "FRAMES_BACKBONES",
    "Vlm2VecProcessor",
    "load_backbone_processor",
]
