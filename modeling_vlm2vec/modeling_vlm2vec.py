"""VLM2Vec embedding model (Hub file: imports only stdlib, torch, transformers, PIL and its sibling Hub files)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoModelForCausalLM, PreTrainedModel
from transformers.utils import ModelOutput, cached_file
from transformers.utils.logging import tqdm

from .configuration_vlm2vec import Vlm2VecConfig, is_native_export_config
from .encode_items_vlm2vec import as_item, length_batches, open_item_image, prepared_batches
from .phi3v_config_vlm2vec import Phi3VConfig
from .phi3v_model_vlm2vec import Phi3VModel
from .processing_vlm2vec import FRAMES_BACKBONES, Vlm2VecProcessor, load_backbone_processor

#: Weight names of the export layout -> this class: the backbone's weights are saved as its native
#: `...ForConditionalGeneration` names them on the Hub, the base model under `model.` (no LM head is saved) ...
NATIVE_KEY_MAPPING = {r"^model\.": "backbone."}
#: ... except the Qwen-VL releases' layout: vision tower at the root, language model directly under `model.`.
NATIVE_KEY_MAPPINGS = {
    "qwen2_vl": {r"^visual\.": "backbone.visual.", r"^model\.": "backbone.language_model."},
    "qwen2_5_vl": {r"^visual\.": "backbone.visual.", r"^model\.": "backbone.language_model."},
}


def pool(hidden_states: torch.Tensor, attention_mask: torch.Tensor, mode: str = "last") -> torch.Tensor:
    """Pool token states into one vector per row.

    Args:
        hidden_states: (batch, seq, hidden).
        attention_mask: (batch, seq), 1 for real tokens. Padding may be on either side, rows of any length >= 1.
        mode: ``"last"`` — the state of each row's last real token; ``"mean"`` — mean over real tokens.

    Returns:
        (batch, hidden).
    """
    mask = attention_mask.to(torch.bool)
    if mode == "last":
        seq_len = mask.shape[1]
        # index of the last True in each row: works for left padding, right padding and length-1 rows
        last = seq_len - 1 - mask.flip(-1).to(torch.int8).argmax(-1)  # (batch,)
        return hidden_states[torch.arange(hidden_states.shape[0], device=hidden_states.device), last]
    if mode == "mean":
        weights = mask.unsqueeze(-1).to(hidden_states.dtype)  # (batch, seq, 1)
        return (hidden_states * weights).sum(1) / weights.sum(1).clamp(min=1)
    raise ValueError(f"unknown pooling mode {mode!r}")


def truncate_embeddings(embeddings: torch.Tensor, dim: int, normalize: bool = True) -> torch.Tensor:
    """Matryoshka prefix: the first ``dim`` coordinates of (rows, d) ``embeddings``, L2-normalised again when
    ``normalize``; (rows, dim). ``dim == d`` returns ``embeddings`` unchanged (no second normalisation)."""
    if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= embeddings.shape[-1]:
        raise ValueError(f"truncate_dim must be an integer in [1, {embeddings.shape[-1]}], got {dim!r}")
    if dim == embeddings.shape[-1]:
        return embeddings
    prefix = embeddings[..., :dim]  # (rows, dim)
    return F.normalize(prefix, p=2, dim=-1) if normalize else prefix


@dataclass
class Vlm2VecOutput(ModelOutput):
    r"""
    embeddings (`torch.FloatTensor` of shape `(batch_size, hidden_size)`):
        One float32 embedding per input, L2-normalised when `config.normalize`.
    last_hidden_state (`torch.FloatTensor` of shape `(batch_size, sequence_length, hidden_size)`):
        Final-layer token states of the backbone's language model.
    """

    embeddings: torch.FloatTensor | None = None
    last_hidden_state: torch.FloatTensor | None = None


class Vlm2VecPreTrainedModel(PreTrainedModel):
    config_class = Vlm2VecConfig
    config: Vlm2VecConfig
    base_model_prefix = "backbone"
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    accepts_loss_kwargs = False
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """`PreTrainedModel.from_pretrained` that also reads the export layout (a backbone's native config and weight
        names, see :data:`NATIVE_KEY_MAPPING`); checkpoints in the wrapper's own layout load unchanged. A model read
        from the export layout saves in the wrapper's own layout again."""
        ours = "key_mapping" not in kwargs
        if ours:
            kwargs["key_mapping"] = _native_key_mapping(pretrained_model_name_or_path, kwargs)
        loaded = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        if ours:  # transformers re-applies the renamings it used when saving: not these
            native = set(kwargs["key_mapping"])
            conversions = getattr(model, "_weight_conversions", None) or []
            model._weight_conversions = [c for c in conversions if not native & set(c.source_patterns)]
        return loaded


class Vlm2VecModel(Vlm2VecPreTrainedModel):
    """A vision-language backbone read as an embedding model: last-token (or mean) pooling, then L2 normalisation.

    The backbone is a stock transformers model built with `AutoModel.from_config(config.backbone_config)` — the base
    model without LM head. Use :meth:`from_backbone` to wrap a pretrained VLM without re-initialising it.
    """

    def __init__(self, config: Vlm2VecConfig, backbone: PreTrainedModel | None = None):
        super().__init__(config)
        self.backbone = backbone if backbone is not None else _backbone_from_config(config.backbone_config)
        self._processor = None
        self._trust_remote_code = False  # the trust the model was loaded with; the processor loads with the same
        self.post_init()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`, remembering ``trust_remote_code`` (also when `AutoModel` passes it on) so
        the processor loaded on first use gets the same explicit answer and never asks interactively."""
        loaded = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # output_loading_info=True gives (model, info)
        model._trust_remote_code = bool(kwargs.get("trust_remote_code"))
        return loaded

    @classmethod
    def from_backbone(
        cls,
        backbone_name_or_path: str | os.PathLike,
        *,
        trust_remote_code: bool = False,
        dtype: torch.dtype | str | None = None,
        attn_implementation: str | None = None,
        **config_kwargs,
    ) -> Vlm2VecModel:
        """Wrap a pretrained VLM (Hub id or local folder) without touching its weights.

        `config_kwargs` set `Vlm2VecConfig` fields (pooling, normalize, max_length, resolution policy...).
        The wrapper remembers the backbone path, so `encode()` finds the processor saved there.
        """
        load_kwargs = {"trust_remote_code": trust_remote_code}
        if dtype is not None:
            load_kwargs["dtype"] = dtype
        if attn_implementation is not None:
            load_kwargs["attn_implementation"] = attn_implementation
        try:
            backbone = AutoModel.from_pretrained(backbone_name_or_path, **load_kwargs)
        except ValueError:  # remote-code VLMs often register only a causal-LM class
            backbone = AutoModelForCausalLM.from_pretrained(backbone_name_or_path, **load_kwargs)
        attn = backbone.config._attn_implementation
        config = Vlm2VecConfig(backbone_config=backbone.config, **config_kwargs)
        # building the composite config resets the sub-config's attention choice; restore it everywhere
        config._attn_implementation = attn
        model = cls(config, backbone=backbone)
        model._trust_remote_code = trust_remote_code
        model.name_or_path = str(backbone_name_or_path)
        model.config._name_or_path = str(backbone_name_or_path)
        return model

    @property
    def video_input(self) -> str | None:
        """How :meth:`encode` feeds ``{"video": frames}`` items: ``config.video_input`` (``"frames"``, ``"video"``) for
        backbones in ``FRAMES_BACKBONES``, else None (no video input)."""
        return self.config.video_input if self.config.backbone_type in FRAMES_BACKBONES else None

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.backbone.get_input_embeddings()

    def set_input_embeddings(self, value: torch.nn.Module) -> None:
        self.backbone.set_input_embeddings(value)

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        **backbone_inputs,
    ) -> Vlm2VecOutput:
        """Embed a processed batch.

        Args:
            input_ids, attention_mask: (batch, seq) from `Vlm2VecProcessor`; either padding side.
            pixel_values: the processor's image tensor, or None for a text-only batch.
            backbone_inputs: other processor outputs (`image_sizes`, `image_grid_thw`, ...), passed through;
                `use_cache`, `output_hidden_states` and `return_dict` (which callers such as sentence-transformers
                pass) are set here and ignored.
        """
        if pixel_values is not None:
            backbone_inputs["pixel_values"] = pixel_values.to(self.backbone.dtype)
        wants_hidden_states = self.backbone.get_output_embeddings() is not None  # a causal LM, not a base model
        fixed = {"use_cache": False, "output_hidden_states": wants_hidden_states, "return_dict": True}
        backbone_inputs = {k: v for k, v in backbone_inputs.items() if k not in fixed}
        outputs = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **fixed, **backbone_inputs)
        hidden = outputs.hidden_states[-1] if wants_hidden_states else outputs.last_hidden_state  # (batch, seq, hidden)
        embeddings = pool(hidden, attention_mask, self.config.pooling).float()  # (batch, hidden)
        if self.config.normalize:
            embeddings = F.normalize(embeddings, p=2, dim=-1)
        return Vlm2VecOutput(embeddings=embeddings, last_hidden_state=hidden)

    @property
    def processor(self) -> Vlm2VecProcessor:
        """The `Vlm2VecProcessor` of these weights: the backbone processor saved beside them (loaded on first use,
        with the ``trust_remote_code`` the model was loaded with) with this model's input contract."""
        if self._processor is None:
            backbone_processor = load_backbone_processor(self.name_or_path, trust_remote_code=self._trust_remote_code)
            self._processor = Vlm2VecProcessor.from_config(backbone_processor, self.config)
        return self._processor

    @processor.setter
    def processor(self, value) -> None:
        """Set a `Vlm2VecProcessor`, or a backbone processor, which is wrapped with this model's input contract."""
        if not hasattr(value, "backbone_processor"):
            value = Vlm2VecProcessor.from_config(value, self.config)
        self._processor = value

    @torch.inference_mode()
    def encode(
        self,
        inputs: list,
        instruction: str | None = None,
        batch_size: int = 8,
        show_progress_bar: bool | None = None,
        convert_to_numpy: bool = False,
        processor=None,
        prefetch: bool | None = None,
        truncate_dim: int | None = None,
    ):
        """Embed a list of items.

        Args:
            inputs: items, each a `str` (text), a `PIL.Image.Image`, or a dict `{"text": str, "image": PIL image or
                path}` (either key may be missing or None). Texts may contain MMEB's `<|image_1|>` placeholder. A
                video is `{"text": str, "video": [PIL images or paths]}`: its frames in order, fed as
                :attr:`video_input` says where `<|video_1|>` marks them (put first when missing).
            instruction: put before every item's text (e.g. "Represent the given image for classification.").
            batch_size: items per forward; items are sorted by length so batches pad little, and text-only,
                image and video items never share a batch.
            show_progress_bar: defaults to showing one for more than one batch.
            convert_to_numpy: return a numpy array instead of a tensor.
            processor: a `Vlm2VecProcessor` (or a backbone processor, wrapped with this model's input contract);
                defaults to :attr:`processor`.
            prefetch: prepare the next batch (image decoding, processor) in a background thread while the current
                one runs. Defaults to on when the model sits on an accelerator and off on CPU, where the thread would
                take cores from the forward pass itself. The embeddings are the same either way.
            truncate_dim: return the first ``truncate_dim`` coordinates, L2-normalised again when
                ``config.normalize`` (a Matryoshka embedding; ``config.matryoshka_dimensions`` lists the sizes the
                model was trained at, but any size from 1 to ``hidden_size`` is accepted). None: the full size.

        Returns:
            (len(inputs), truncate_dim or hidden_size) float32 embeddings on CPU, in input order.

        Raises:
            ValueError: ``batch_size`` is not a positive integer, ``truncate_dim`` is not in [1, hidden_size], an
                item has neither text nor image nor video (an empty text embeds nothing but the backbone's special
                tokens, which is never what a caller meant), an item has both an image and a video or an empty
                video, or the backbone takes no video (:attr:`video_input` None).
            TypeError: an item of another type.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        dim = self.config.hidden_size if truncate_dim is None else truncate_dim
        truncate_embeddings(torch.zeros(1, self.config.hidden_size), dim)  # validates before any work
        if processor is None:
            processor = self.processor
        elif not hasattr(processor, "backbone_processor"):
            processor = Vlm2VecProcessor.from_config(processor, self.config)
        items = [as_item(x, position) for position, x in enumerate(inputs)]
        if self.video_input is None and any(isinstance(item[1], list) for item in items):
            raise ValueError(f"encode() takes no video items for backbone {self.config.backbone_type!r}")
        batches = length_batches(items, batch_size)
        if show_progress_bar is None:
            show_progress_bar = len(batches) > 1

        def prepare(idx: list[int]) -> dict[str, torch.Tensor]:
            texts = [items[i][0] for i in idx]
            images = [open_item_image(items[i][1]) for i in idx]
            return processor(texts, images, instruction=instruction)

        if prefetch is None:
            prefetch = self.device.type != "cpu"
        was_training = self.training
        self.eval()
        out = torch.empty(len(items), dim, dtype=torch.float32)
        progress = tqdm(total=len(batches), desc="Encoding", disable=not show_progress_bar)
        prepared = prepared_batches(prepare, batches, background=prefetch)
        try:
            for idx, batch in zip(batches, prepared):
                batch = {k: v.to(self.device) for k, v in batch.items()}
                embeddings = truncate_embeddings(self(**batch).embeddings, dim, self.config.normalize)  # (rows, dim)
                out[torch.tensor(idx)] = embeddings.float().cpu()
                progress.update()
        finally:  # also on errors: no preparation left running, the caller's train/eval mode back
            prepared.close()
            progress.close()
            self.train(was_training)
        return out.numpy() if convert_to_numpy else out

    @staticmethod
    def similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(n, d) x (m, d) -> (n, m) dot products (cosine similarities for normalised embeddings)."""
        a = torch.as_tensor(a, dtype=torch.float32)
        b = torch.as_tensor(b, dtype=torch.float32)
        return a @ b.T


class Phi3VVlm2VecModel(Vlm2VecModel):
    """``AutoModel``'s class for the ``phi3_v`` model type: registered on import, and the ``auto_map`` entry of a
    Phi-3-V export (see ``NATIVE_AUTO_MAPS``); never built itself.

    vLLM reads a Phi-3-V export's ``config.json`` through ``AutoConfig`` as the backbone's `Phi3VConfig`, so
    ``AutoModel`` hands that config to this entry (transformers accepts only an entry whose ``config_class`` has the
    config's class name). A config with a ``"vlm2vec"`` section (a Vlm2Vec export) gives a `Vlm2VecModel` whose
    backbone is that config (`Vlm2VecConfig.from_native_config`); any other (a Phi-3.5-V release) gives the bare
    `Phi3VModel` backbone. One entry for both, because transformers prefers a class registered in the process over a
    folder's ``auto_map``: with this package imported, both kinds of folder reach this class.
    """

    config_class = Phi3VConfig

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *args, config=None, **kwargs):
        """`Vlm2VecModel.from_pretrained` of a Vlm2Vec checkpoint, `Phi3VModel.from_pretrained` of a release."""
        if isinstance(config, Phi3VConfig) and not is_native_export_config(config):
            return Phi3VModel.from_pretrained(pretrained_model_name_or_path, *args, config=config, **kwargs)
        if config is not None and not isinstance(config, Vlm2VecConfig):
            config = Vlm2VecConfig.from_native_config(config)
        return Vlm2VecModel.from_pretrained(pretrained_model_name_or_path, *args, config=config, **kwargs)

    @classmethod
    def _from_config(cls, config, **kwargs) -> PreTrainedModel:
        """What ``AutoModel.from_config`` builds, randomly initialised: a `Vlm2VecModel` for a config with a
        ``"vlm2vec"`` section, else a `Phi3VModel`."""
        if isinstance(config, Phi3VConfig) and not is_native_export_config(config):
            return Phi3VModel._from_config(config, **kwargs)
        if not isinstance(config, Vlm2VecConfig):
            config = Vlm2VecConfig.from_native_config(config)
        return Vlm2VecModel._from_config(config, **kwargs)


def _native_key_mapping(path, kwargs: dict) -> dict[str, str]:
    """The renaming from the export layout of the checkpoint at ``path`` (by its ``config.json`` model type)."""
    hub_kwargs = {k: kwargs[k] for k in ("revision", "token", "cache_dir", "local_files_only") if k in kwargs}
    resolved = cached_file(str(path), "config.json", **hub_kwargs)
    with open(resolved, encoding="utf-8") as f:
        model_type = json.load(f).get("model_type")
    return NATIVE_KEY_MAPPINGS.get(model_type, NATIVE_KEY_MAPPING)


def _backbone_from_config(backbone_config) -> PreTrainedModel:
    if backbone_config.model_type == Phi3VModel.config_class.model_type:
        # built directly: loaded as Hub code, the sub-config's class can come from another copy of its file than the
        # one AutoModel was registered with
        return Phi3VModel._from_config(backbone_config)
    try:
        return AutoModel.from_config(backbone_config)
    except ValueError:  # remote-code VLMs often register only a causal-LM class
        # Hub code runs here only if its config class was itself loaded from Hub code, i.e. the user trusted it.
        trusted = type(backbone_config).__module__.startswith("transformers_modules")
        return AutoModelForCausalLM.from_config(backbone_config, trust_remote_code=trusted)


Vlm2VecModel.register_for_auto_class("AutoModel")
AutoModel.register(Phi3VConfig, Phi3VVlm2VecModel, exist_ok=True)

__all__ = [
    "Phi3VVlm2VecModel",
    "Vlm2VecModel",
    "Vlm2VecPreTrainedModel",
    "Vlm2VecOutput",
    "pool",
    "truncate_embeddings",
]
