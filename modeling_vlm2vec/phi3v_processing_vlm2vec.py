"""Phi-3-V's image processor and processor without torchvision (Hub file: imports only stdlib, torch, transformers,
PIL and numpy's transformers dependency through torch).

* :class:`Phi3VImageProcessor`: the HD transform of Phi-3.5-V -- an image becomes a global 336x336 view plus up to
  ``num_crops`` 336x336 crops (:func:`hd_size` gives the geometry), CLIP-normalised, zero-padded to ``num_crops + 1``
  crops; ``image_sizes`` is the padded ``[height, width]``.
* :class:`Phi3VProcessor`: the official prompt rule -- the text is split at ``<|image_N|>`` and each piece tokenized
  on its own (so each gets its own BOS): ``[BOS, image positions..., BOS, text...]``; padding on either side;
  ``truncation`` cuts rows without an image only. It also offers what vLLM's ``Phi3VForCausalLM`` asks of the
  release's processor (``img_tokens``, ``calc_num_image_tokens_from_image_size``, loading with a given
  ``tokenizer=`` and ``num_crops=``), so a Phi-3-V export names it as its ``AutoProcessor``.

Both read and write the files of a Phi-3.5-V folder (``preprocessor_config.json`` with ``num_crops`` /
``num_img_tokens``, ``processor_config.json`` naming ``Phi3VProcessor``, the tokenizer files).
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from PIL import Image
from transformers import AutoTokenizer, BatchFeature, ProcessorMixin
from transformers.image_processing_base import ImageProcessingMixin
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, load_image

#: Where an image goes in a Phi-3-V prompt: ``<|image_1|>``, ``<|image_2|>``... (image N of the call).
IMAGE_TAG = re.compile(r"<\|image_\d+\|>")
#: The token image positions carry (``Phi3VConfig.image_token_id`` in the Phi-3.5 vocabulary).
IMAGE_TOKEN = "<|image|>"
_HUB_KWARGS = ("revision", "token", "cache_dir", "local_files_only")
#: What ``AutoProcessor`` adds to a ``from_pretrained`` call besides the Hub options; nothing to this processor.
_AUTO_KWARGS = ("trust_remote_code", "_from_auto", "code_revision")
#: Processing settings that apply to a whole call (engines pass them in every modality's settings).
_SHARED_SETTINGS = ("padding", "padding_side", "truncation", "max_length", "return_tensors")


def hd_size(width: int, height: int, num_crops: int, crop: int = 336) -> tuple[int, int, int, int]:
    """The HD transform's geometry for a ``width x height`` image: ``(resized_w, resized_h, padded_w, padded_h)``.

    A portrait image is handled transposed (as landscape). With ``ratio = w / h`` (landscape), ``scale`` is the
    largest integer with ``scale * ceil(scale / ratio) <= num_crops``; the image is resized to ``scale * crop`` wide
    and ``int(that / ratio)`` high, then its height padded up to a multiple of ``crop`` (centred).
    """
    transposed = width < height
    w, h = (height, width) if transposed else (width, height)
    ratio = w / h
    scale = 1
    while scale * math.ceil(scale / ratio) <= num_crops:
        scale += 1
    scale -= 1
    new_w = scale * crop
    new_h = int(new_w / ratio)
    if scale < 1 or new_h < 1:
        raise ValueError(f"image of {width}x{height} px cannot be cut into at most {num_crops} crops")
    padded_h = math.ceil(new_h / crop) * crop
    if transposed:
        return new_h, new_w, padded_h, new_w
    return new_w, new_h, new_w, padded_h


class ImageTags(Sequence):
    """The image tags of a prompt in order: index ``i`` holds ``<|image_{i+1}|>``, for as many images as a prompt can
    hold (the release's processor lists them in ``img_tokens``; vLLM indexes and slices that list)."""

    def __len__(self) -> int:
        return sys.maxsize

    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            return [f"<|image_{i + 1}|>" for i in range(len(self))[index]]
        return f"<|image_{range(len(self))[index] + 1}|>"


class Phi3VImageProcessor(ImageProcessingMixin):
    """Phi-3.5-V's HD image processor (PIL + torch).

    Per image: PIL ``convert("RGB")`` (alpha dropped, as the official code under transformers 4), the HD transform
    (:func:`hd_size`: PIL bilinear resize, white padding split top/bottom with the smaller part on top), scaling to
    [0, 1] and CLIP mean/std normalisation; the global view is that image resized to ``crop x crop`` with torch's
    bicubic interpolation; the crops are taken row-major.

    Returns ``pixel_values`` (images, num_crops + 1, 3, crop, crop) -- global view first, unused crops zero --,
    ``image_sizes`` (images, 2) the padded ``[height, width]`` and ``num_img_tokens`` (one int per image).
    """

    model_input_names = ["pixel_values", "image_sizes"]

    def __init__(
        self,
        num_crops: int = 1,
        num_img_tokens: int = 144,
        image_mean: list[float] | None = None,
        image_std: list[float] | None = None,
        crop_size: int = 336,
        **kwargs,
    ):
        # what the Hub release's file names besides its settings; this class is its own record, and it always
        # converts to RGB (the official processor does, whatever `do_convert_rgb` says)
        for name in ("auto_map", "image_processor_type", "processor_class", "do_convert_rgb"):
            kwargs.pop(name, None)
        super().__init__(**kwargs)
        if isinstance(num_crops, bool) or not isinstance(num_crops, int) or num_crops < 1:
            raise ValueError(f"num_crops must be a positive integer, got {num_crops!r}")
        self.num_crops = num_crops
        self.num_img_tokens = num_img_tokens
        self.image_mean = list(image_mean if image_mean is not None else OPENAI_CLIP_MEAN)
        self.image_std = list(image_std if image_std is not None else OPENAI_CLIP_STD)
        self.crop_size = crop_size

    @classmethod
    def from_pretrained(cls, path_or_id: str | os.PathLike, **kwargs) -> Phi3VImageProcessor:
        """Read ``preprocessor_config.json``; other ``kwargs`` (e.g. ``num_crops``) override its values."""
        hub_kwargs = {k: kwargs.pop(k) for k in _HUB_KWARGS if k in kwargs}
        saved, _ = cls.get_image_processor_dict(path_or_id, **hub_kwargs)
        return cls(**{**saved, **kwargs})

    def num_tokens(self, height: int, width: int) -> int:
        """Image positions of an image whose padded HD size is ``height x width``: with ``g`` the merged grid side
        (``sqrt(num_img_tokens)``, 12), ``(h*w + 1) * g*g + 1 + (h + 1) * g`` for ``h x w`` crops."""
        h, w = height // self.crop_size, width // self.crop_size
        g = math.isqrt(self.num_img_tokens)
        return (h * w + 1) * self.num_img_tokens + 1 + (h + 1) * g

    def _hd_image(self, image: Image.Image) -> torch.Tensor:
        """One image -> its normalised HD tensor (3, padded_h, padded_w)."""
        if image.mode != "RGB":
            image = image.convert("RGB")
        # in the landscape frame, as the official transform: resizing is not exactly symmetric in the two axes
        transposed = image.width < image.height
        if transposed:
            image = image.transpose(Image.Transpose.TRANSPOSE)
        new_w, new_h, padded_w, padded_h = hd_size(*image.size, self.num_crops, self.crop_size)
        resized = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
        canvas = Image.new("RGB", (padded_w, padded_h), (255, 255, 255))
        canvas.paste(resized, (0, (padded_h - new_h) // 2))
        if transposed:
            canvas = canvas.transpose(Image.Transpose.TRANSPOSE)
            padded_w, padded_h = padded_h, padded_w
        pixels = torch.frombuffer(bytearray(canvas.tobytes()), dtype=torch.uint8).view(padded_h, padded_w, 3).float()
        # normalised in place in the (H, W, 3) layout PIL gives (a channel-first broadcast over it is ~10x slower)
        pixels.div_(255).sub_(torch.tensor(self.image_mean)).div_(torch.tensor(self.image_std))
        return pixels.permute(2, 0, 1)  # (3, H, W), a view

    def __call__(self, images: list[Image.Image], return_tensors: str | None = "pt", **kwargs) -> BatchFeature:
        if isinstance(images, Image.Image):
            images = [images]
        size = self.crop_size
        pixel_values = torch.zeros(len(images), self.num_crops + 1, 3, size, size)  # written in place below
        image_sizes = []
        for row, image in zip(pixel_values, images):
            hd = self._hd_image(image)  # (3, H, W)
            _, height, width = hd.shape
            row[0] = F.interpolate(hd[None], size=(size, size), mode="bicubic", align_corners=False)[0]
            crops = hd.view(3, height // size, size, width // size, size).permute(1, 3, 0, 2, 4)  # (h, w, 3, S, S)
            row[1 : 1 + crops.shape[0] * crops.shape[1]].view(crops.shape[:2] + (3, size, size)).copy_(crops)
            image_sizes.append([height, width])
        data = {
            "pixel_values": pixel_values,
            "image_sizes": torch.tensor(image_sizes, dtype=torch.long).view(-1, 2),
            "num_img_tokens": [self.num_tokens(h, w) for h, w in image_sizes],
        }
        return BatchFeature(data)


class Phi3VProcessor(ProcessorMixin):
    """Phi-3-V's processor: :class:`Phi3VImageProcessor` plus the tokenizer, with the official prompt rule.

    ``processor(text=[...], images=[...], padding=True, padding_side="right", return_tensors="pt",
    truncation=False, max_length=None)``: each text is split at ``<|image_N|>`` tags; every piece is tokenized on
    its own with the tokenizer's special tokens (each piece gets its BOS) and each tag becomes
    ``num_img_tokens`` positions holding ``<|image|>``, so ``"<|image_1|> Represent..."`` gives
    ``[BOS, <|image|> x N, BOS, ▁Represent, ...]``. Tags take the images in order over the whole batch. With
    ``truncation`` and ``max_length``, rows without an image keep their first ``max_length`` tokens; rows with an
    image are never cut (the official processor ignores truncation on its image path).

    What vLLM's ``Phi3VForCausalLM`` reads of it (vLLM 0.33 ``model_executor/models/phi3v.py``): :attr:`img_tokens`
    (the tags it looks for in a prompt), :meth:`calc_num_image_tokens_from_image_size` (the positions it writes for an
    image) and the ``pixel_values`` / ``image_sizes`` of a call; it loads the processor with its own ``tokenizer=`` and
    the ``num_crops=`` of its ``mm_processor_kwargs``, and passes that ``num_crops`` to each call again.
    """

    attributes = ["image_processor", "tokenizer"]
    #: the tags of a prompt's images, ``<|image_1|>``, ``<|image_2|>``... (the release processor's attribute)
    img_tokens = ImageTags()

    def __init__(self, image_processor: Phi3VImageProcessor, tokenizer, chat_template: str | None = None):
        super().__init__(image_processor, tokenizer, chat_template=chat_template)
        self.image_token = IMAGE_TOKEN
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        if self.image_token_id is None or self.image_token_id == tokenizer.unk_token_id:
            raise ValueError(f"the tokenizer has no {IMAGE_TOKEN} token, which Phi-3-V's image positions carry")

    @classmethod
    def from_pretrained(cls, path_or_id: str | os.PathLike, tokenizer=None, **kwargs) -> Phi3VProcessor:
        """Load from a Phi-3.5-V folder or Hub repo; ``num_crops`` (and other image-processor settings) override the
        saved ones; a given ``tokenizer`` (vLLM passes its own) replaces the saved one. No Python file of the folder
        runs (``trust_remote_code`` is not needed and ignored)."""
        for name in _AUTO_KWARGS:
            kwargs.pop(name, None)
        hub_kwargs = {k: kwargs.pop(k) for k in _HUB_KWARGS if k in kwargs}
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(path_or_id, trust_remote_code=False, **hub_kwargs)
        image_processor = Phi3VImageProcessor.from_pretrained(path_or_id, **hub_kwargs, **kwargs)
        return cls(image_processor, tokenizer, chat_template=getattr(tokenizer, "chat_template", None))

    def calc_num_image_tokens_from_image_size(self, width: int, height: int) -> int:
        """Image positions of a ``width x height`` image (before any processing): its HD transform's crops
        (:func:`hd_size` with this processor's ``num_crops``), counted by ``Phi3VImageProcessor.num_tokens``."""
        image = self.image_processor
        *_, padded_w, padded_h = hd_size(width, height, image.num_crops, image.crop_size)
        return image.num_tokens(padded_h, padded_w)

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> list[str]:
        """Write the tokenizer, ``preprocessor_config.json`` and a ``processor_config.json`` naming this class."""
        os.makedirs(save_directory, exist_ok=True)
        files = list(self.tokenizer.save_pretrained(save_directory))
        files += self.image_processor.save_pretrained(save_directory)
        path = os.path.join(save_directory, "processor_config.json")
        with open(path, "w", encoding="utf-8") as f:
            f.write(json.dumps({"processor_class": type(self).__name__}, indent=2) + "\n")
        return [*files, path]

    def to_dict(self) -> dict:
        return {"processor_class": type(self).__name__, "image_processor": self.image_processor.to_dict()}

    def _row_ids(self, text: str, image_tokens: list[int], truncate_to: int | None) -> list[int]:
        pieces = IMAGE_TAG.split(text)
        if len(pieces) == 1:  # text only: one tokenizer call, cut like the official processor's text path
            kwargs = {"truncation": True, "max_length": truncate_to} if truncate_to else {}
            return self.tokenizer(text, **kwargs)["input_ids"]
        ids = []
        for i, piece in enumerate(pieces):
            ids += self.tokenizer(piece)["input_ids"]
            if i < len(image_tokens):
                ids += [self.image_token_id] * image_tokens[i]
        return ids

    def __call__(
        self,
        text: str | list[str],
        images: list[Image.Image] | None = None,
        padding: bool = True,
        padding_side: str = "right",
        return_tensors: str | None = "pt",
        truncation: bool = False,
        max_length: int | None = None,
        num_crops: int | None = None,
        **kwargs,
    ) -> BatchFeature:
        """Process ``text`` (one string or a batch) and the images its ``<|image_N|>`` tags take, in order.
        ``num_crops`` is the image processor's setting, fixed at load (vLLM repeats it on each call): another value
        raises ``ValueError`` rather than giving pixels that disagree with the positions. Returns ``input_ids`` and
        ``attention_mask`` (batch, seq), and with images ``pixel_values`` (images, num_crops + 1, 3, S, S) and
        ``image_sizes`` (images, 2)."""
        if num_crops is not None and num_crops != self.image_processor.num_crops:
            raise ValueError(
                f"num_crops is set when loading the processor ({self.image_processor.num_crops}), got {num_crops} "
                f"in a call; load it with num_crops={num_crops}"
            )
        texts = [text] if isinstance(text, str) else list(text)
        tags = [len(IMAGE_TAG.findall(t)) for t in texts]
        images = list(images or [])
        if sum(tags) != len(images):
            raise ValueError(f"the texts hold {sum(tags)} image tags <|image_N|> but {len(images)} images were given")
        data = dict(self.image_processor(images)) if images else {}
        counts = iter(data.pop("num_img_tokens", []))
        truncate_to = max_length if truncation else None
        rows = [self._row_ids(t, [next(counts) for _ in range(n)], truncate_to) for t, n in zip(texts, tags)]
        length = max(len(r) for r in rows)
        pad_id = self.tokenizer.pad_token_id
        input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
        attention_mask = torch.zeros(len(rows), length, dtype=torch.long)
        for b, ids in enumerate(rows):
            span = slice(0, len(ids)) if padding_side == "right" else slice(length - len(ids), length)
            input_ids[b, span] = torch.tensor(ids, dtype=torch.long)
            attention_mask[b, span] = 1
        return BatchFeature({"input_ids": input_ids, "attention_mask": attention_mask, **data})

    def apply_chat_template(
        self,
        conversation: list[dict] | list[list[dict]],
        chat_template: str | None = None,
        tokenize: bool = False,
        return_dict: bool = False,
        return_tensors: str | None = "pt",
        processor_kwargs: dict | None = None,
        **kwargs,
    ):
        """Render chat messages with the chat template and, with ``tokenize``, process them as :meth:`__call__`.

        ``conversation`` is one list of messages or a batch of them; a message's ``content`` is a string or a list
        of parts ``{"type": "text", "text": ...}`` / ``{"type": "image", "image": PIL image, path or URL}`` (``url``
        or ``path`` also name an image). The template (this processor's unless ``chat_template`` is given) turns each
        image part into an ``<|image_N|>`` tag; the images go to :meth:`__call__` in order. A leading BOS the
        template renders is dropped before tokenizing, as :meth:`__call__` gives every piece its own BOS -- so the
        ids equal ``processor([prompt], images)``'s. Processing settings arrive flat, nested per modality
        (``text_kwargs``, ``common_kwargs``...) or inside ``processor_kwargs`` (transformers' and
        sentence-transformers' forms); other ``kwargs`` go to the template. Returns the rendered text(s) without
        ``tokenize``, else a ``BatchFeature`` (``return_dict``) or its ``input_ids``.
        """
        template = chat_template if chat_template is not None else self.chat_template
        if template is None:
            raise ValueError("this processor has no chat template (chat_template.jinja) to render messages with")
        settings = {}
        for source in (processor_kwargs or {}, kwargs):
            for name in ("audio_kwargs", "videos_kwargs"):  # no such inputs: the template refuses their parts
                source.pop(name, None)
            image_settings = set(source.pop("images_kwargs", None) or {}) - set(_SHARED_SETTINGS)
            if image_settings:  # e.g. num_crops: a setting of the image processor, not of a call
                raise ValueError(f"Phi-3-V's image settings are fixed at load; got {sorted(image_settings)}")
            for name in ("text_kwargs", "common_kwargs"):
                settings.update(source.pop(name, None) or {})
            if source is processor_kwargs:
                settings.update(source)
        for name in _SHARED_SETTINGS:
            if name in kwargs:
                settings[name] = kwargs.pop(name)
        kwargs.pop("load_audio_from_video", None)  # transformers' flag for video inputs, which Phi-3-V refuses
        batched = bool(conversation) and isinstance(conversation[0], (list, tuple))
        conversations = conversation if batched else [conversation]
        rendered = self.tokenizer.apply_chat_template(conversations, chat_template=template, tokenize=False, **kwargs)
        if not tokenize:
            return rendered if batched else rendered[0]
        bos = self.tokenizer.bos_token
        texts = [text[len(bos) :] if bos and text.startswith(bos) else text for text in rendered]
        images = [load_image(image) for messages in conversations for image in _image_parts(messages)]
        return_tensors = settings.pop("return_tensors", None) or return_tensors
        features = self(texts, images, return_tensors=return_tensors, **settings)
        return features if return_dict else features["input_ids"]

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)


def _image_parts(messages: list[dict]) -> list:
    """The images of one conversation's content parts, in order (an ``image`` part's ``image``, ``url`` or
    ``path``)."""
    images = []
    for message in messages:
        content = message.get("content")
        for part in content if isinstance(content, list) else []:
            if part.get("type") == "image":
                image = next((part[k] for k in ("image", "url", "path") if part.get(k) is not None), None)
                if image is None:
                    raise ValueError(f"an image part without its image (image, url or path): {sorted(part)}")
                images.append(image)
    return images


__all__ = ["IMAGE_TAG", "IMAGE_TOKEN", "ImageTags", "Phi3VImageProcessor", "Phi3VProcessor", "hd_size"]
