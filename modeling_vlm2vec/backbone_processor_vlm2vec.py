"""The backbone's own processor of a checkpoint, loaded without running Hub code or needing torchvision.

Hub file: imports only stdlib, transformers and its sibling Hub files.

* :func:`load_backbone_processor` loads the backbone processor saved beside a checkpoint (what
  :class:`~.processing_vlm2vec.Vlm2VecProcessor` wraps).
* The Qwen2-VL / Qwen2.5-VL / Qwen3-VL processors are loaded as image-only subclasses of the stock classes
  (:func:`_image_only`): the stock classes build a video processor, which needs torchvision; these save as the stock
  class so other tools load the folder with it.
"""

from __future__ import annotations

import json
import os

from transformers import AutoProcessor
from transformers.models.auto.processing_auto import processor_class_from_name
from transformers.models.qwen2_5_vl import Qwen2_5_VLProcessor
from transformers.models.qwen2_vl import Qwen2VLProcessor
from transformers.models.qwen3_vl import Qwen3VLProcessor
from transformers.utils import cached_file

from .phi3v_processing_vlm2vec import Phi3VProcessor
from .video_vlm2vec import process_videos

HUB_KWARGS = ("revision", "token", "cache_dir", "local_files_only")


def _image_only(stock: type, video_processor: str, videos: bool) -> type:
    """A subclass of the stock Qwen-VL processor class ``stock`` without the video processor (which needs
    torchvision). With ``videos``, its videos (lists of frames) are built by :func:`~.video_vlm2vec.process_videos`
    from the image processor's output (the Qwen2-VL / Qwen2.5-VL rule); else it takes images and text only.

    It saves as the stock class would, so other tools load the folder with the stock processor class: under the
    stock class name, with a ``video_processor`` section of class ``video_processor`` (the stock class's video
    processor) holding the image processor's settings — what transformers itself builds the video processor from
    for a folder without a video processor config — since the stock loader refuses a folder without one."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        self.video_processor = None
        stock.__init__(self, image_processor, tokenizer, chat_template=chat_template, **kwargs)

    def to_dict(self) -> dict:
        saved = {**stock.to_dict(self), "processor_class": stock.__name__}
        image = saved.get("image_processor")
        if isinstance(image, dict):
            video = {name: value for name, value in image.items() if name != "image_processor_type"}
            saved["video_processor"] = {**video, "video_processor_type": video_processor}
        return saved

    members = {"__init__": __init__, "to_dict": to_dict, "__doc__": _image_only.__doc__}
    if videos:
        members["_process_videos"] = process_videos
    return type(f"ImageOnly{stock.__name__}", (stock,), members)


# The stock video processor of each class: transformers' video processor mapping for qwen2_vl, qwen2_5_vl, qwen3_vl.
ImageOnlyQwen2VLProcessor = _image_only(Qwen2VLProcessor, "Qwen2VLVideoProcessor", videos=True)
ImageOnlyQwen2_5_VLProcessor = _image_only(Qwen2_5_VLProcessor, "Qwen2VLVideoProcessor", videos=True)
ImageOnlyQwen3VLProcessor = _image_only(Qwen3VLProcessor, "Qwen3VLVideoProcessor", videos=False)
#: Processors whose videos :func:`~.video_vlm2vec.process_videos` builds (``video_input: video``).
VIDEO_FROM_FRAMES = (ImageOnlyQwen2VLProcessor, ImageOnlyQwen2_5_VLProcessor)
_IMAGE_ONLY_PROCESSORS = {
    name: cls
    for cls in (ImageOnlyQwen2VLProcessor, ImageOnlyQwen2_5_VLProcessor, ImageOnlyQwen3VLProcessor)
    for name in (cls.__name__, cls.__mro__[1].__name__)
}


def load_backbone_processor(path_or_id: str | os.PathLike, **kwargs):
    """Load the backbone's own processor saved in a folder or Hub repo (never a :class:`Vlm2VecProcessor`).

    Qwen2-VL / Qwen2.5-VL / Qwen3-VL processors are loaded without their video processor, so they work whether or not
    torchvision is installed; a folder naming ``Phi3VProcessor`` (Phi-3.5-V and its releases) gets the native
    :class:`~.phi3v_processing_vlm2vec.Phi3VProcessor` (never the release's Hub code); other saved classes are loaded
    by name; a folder naming none (or a class that is Hub
    code) goes through ``AutoProcessor``, which runs Hub code only with ``trust_remote_code=True`` in ``kwargs``.
    ``trust_remote_code`` is always passed on as an explicit ``True`` / ``False`` (default), so no loader ever stops
    at transformers' interactive "run custom code?" question (e.g. a tokenizer reading the folder's ``config.json``,
    whose ``auto_map`` names the Vlm2Vec files).
    """
    kwargs["trust_remote_code"] = bool(kwargs.get("trust_remote_code"))
    processor_class = _saved_processor_class(str(path_or_id), kwargs)
    if processor_class == Phi3VProcessor.__name__:  # the native one: the release's Hub code never runs
        return Phi3VProcessor.from_pretrained(path_or_id, **kwargs)
    if processor_class in _IMAGE_ONLY_PROCESSORS:
        return _IMAGE_ONLY_PROCESSORS[processor_class].from_pretrained(path_or_id, **kwargs)
    stock_class = processor_class_from_name(processor_class) if processor_class else None
    if stock_class is not None:
        return stock_class.from_pretrained(path_or_id, **kwargs)
    return AutoProcessor.from_pretrained(path_or_id, **kwargs)


def _saved_processor_class(path_or_id: str, kwargs: dict) -> str | None:
    hub_kwargs = {k: kwargs[k] for k in HUB_KWARGS if k in kwargs}
    for name in ("processor_config.json", "preprocessor_config.json"):
        try:
            resolved = cached_file(path_or_id, name, **hub_kwargs)
        except OSError:  # no such file in the folder or repo
            continue
        if resolved is not None:
            with open(resolved, encoding="utf-8") as f:
                found = json.load(f).get("processor_class")
            if found:
                return found
    return None


__all__ = [
    "HUB_KWARGS",
    "VIDEO_FROM_FRAMES",
    "ImageOnlyQwen2VLProcessor",
    "ImageOnlyQwen2_5_VLProcessor",
    "ImageOnlyQwen3VLProcessor",
    "load_backbone_processor",
]
