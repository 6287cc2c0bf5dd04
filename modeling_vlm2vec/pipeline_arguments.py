"""The model and data arguments of ``train.py`` (``--snake_case`` flags, or keys of one YAML recipe); the LoRA and
trainer arguments live in :mod:`modeling_vlm2vec.training.arguments`, the demo's in :mod:`modeling_vlm2vec.demo.hook`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .common.errors import DataError
from .configuration_vlm2vec import SETTING_DEFAULTS, WRAPPER_FIELDS, check_false_negative_margin
from .demo.hook import SYNTHETIC


@dataclass
class ModelArguments:
    """The backbone and how inputs become embeddings (saved in the checkpoint's config)."""

    model_name_or_path: str = field(
        metadata={"help": "Hub id or folder of a VLM, or of a Vlm2Vec checkpoint to continue training."}
    )
    model_dtype: str = field(
        default="float32",
        metadata={
            "help": "Dtype the weights are loaded in (auto = the checkpoint's): float32 (master weights; use bf16 "
            "autocast via --bf16) or bfloat16 / float16 (frozen base for LoRA on large backbones; LoRA weights stay "
            "float32)."
        },
    )
    attn_implementation: str | None = field(default=None, metadata={"help": "sdpa, eager, flash_attention_2..."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow backbones with Hub remote code."})
    processor_kwargs: str | None = field(
        default=None,
        metadata={"help": "JSON object passed to the processor loader, e.g. '{\"num_crops\": 4}' for Phi-3.5-V."},
    )
    # Vlm2Vec settings: unset keeps the checkpoint's value when continuing training, or the default for a raw VLM.
    pooling: str | None = field(default=None, metadata={"help": "last (last real token; default) or mean."})
    normalize: bool | None = field(default=None, metadata={"help": "L2-normalise embeddings (default true)."})
    contrastive_temperature: float | None = field(default=None, metadata={"help": "InfoNCE temperature (0.02)."})
    padding_side: str | None = field(default=None, metadata={"help": "Batch padding side (default right)."})
    max_length: int | None = field(
        default=None, metadata={"help": "Token budget per input (text is truncated, image tokens never)."}
    )
    image_max_pixels: int | None = field(
        default=None,
        metadata={
            "help": "Downscale larger images to this many pixels (aspect kept; Qwen-VL: its processor's max_pixels)."
        },
    )
    image_min_pixels: int | None = field(
        default=None,
        metadata={
            "help": "Upscale smaller images to this many pixels (aspect kept; Qwen-VL: its processor's min_pixels)."
        },
    )
    image_fixed_size: list[int] | None = field(default=None, metadata={"help": "Resize every image to W H."})
    # loss options, recorded in the checkpoint's config like the temperature
    matryoshka_dims: list[int] | None = field(
        default=None,
        metadata={
            "help": "Matryoshka prefix sizes, e.g. 64 128 256: the loss is also computed on each re-normalised "
            "prefix (the full size is always included). Saved as the config's matryoshka_dimensions."
        },
    )
    matryoshka_weights: list[float] | None = field(
        default=None,
        metadata={"help": "Loss weight per Matryoshka size, ascending, the full size last (default equal)."},
    )
    hardness_alpha: float | None = field(
        default=None,
        metadata={"help": "LLaVE hardness weighting: negatives weighted by exp(alpha * similarity) (default 0 = off)."},
    )
    false_negative_margin: float | None = field(
        default=None,
        metadata={"help": "Mask in-batch candidates scoring above the row's positive minus this margin (default off)."},
    )
    small_image_edge: int | None = field(
        default=None, metadata={"help": "Stretch images with a side below this to a square of twice it (official: 28)."}
    )
    strip_prompt: bool | None = field(
        default=None, metadata={"help": "Strip whitespace around instruction and text (default true)."}
    )
    position_policy: str | None = field(
        default=None,
        metadata={"help": "native (default) or transformers4 (Qwen positions as the official releases used them)."},
    )
    video_input: str | None = field(
        default=None,
        metadata={"help": "frames (default: one multi-image prompt) or video (Qwen2-VL / Qwen2.5-VL's video input)."},
    )

    reset_settings: list[str] | None = field(
        default=None,
        metadata={
            "help": "Settings returned to their defaults when continuing a checkpoint (unset keys keep the saved "
            "values), e.g. false_negative_margin to switch the margin off, or image_fixed_size to drop a fixed resize."
        },
    )

    def __post_init__(self):
        self.settings()  # a bad reset_settings entry is refused when the recipe is read, before any work
        # the margin's useful range depends on normalisation: unset means the default (normalised)
        check_false_negative_margin(self.false_negative_margin, self.normalize is not False)

    def settings(self) -> dict:
        """The `Vlm2VecConfig` settings this recipe names (the unset ones are left out), the ones listed in
        ``reset_settings`` at their defaults.

        Raises:
            DataError: ``reset_settings`` names something that is not a setting key of the recipe, or a key the
                recipe also sets.
        """
        keys = {
            RECIPE_KEYS.get(name, name): name for name in WRAPPER_FIELDS if hasattr(self, RECIPE_KEYS.get(name, name))
        }
        values = {name: getattr(self, key) for key, name in keys.items()}
        chosen = {name: value for name, value in values.items() if value is not None}
        for key in self.reset_settings or []:
            if key not in keys:
                raise DataError(f"reset_settings: {key!r} is not a setting; settings: {sorted(keys)}")
            if keys[key] in chosen:
                raise DataError(f"reset_settings: {key!r} is also set in the recipe; keep one of the two")
            chosen[keys[key]] = SETTING_DEFAULTS[keys[key]]
        return chosen


#: Benchmarks ``do_eval`` can run (``eval_benchmark``).
EVAL_BENCHMARKS = ("mmeb-v1", "mmeb-v2")
#: Recipe keys spelled differently from the config field they set.
RECIPE_KEYS = {"matryoshka_dimensions": "matryoshka_dims"}


@dataclass
class DataArguments:
    """Training data (MMEB-train schema) and the held-out MMEB evaluation."""

    dataset_config: str = field(
        default=SYNTHETIC,
        metadata={
            "help": "Data-config YAML listing the training sources, or 'synthetic' for the bundled synthetic data."
        },
    )
    eval_benchmark: str = field(
        default="mmeb-v1",
        metadata={
            "help": "Benchmark of the evaluation before and after training (do_eval): mmeb-v1 (36 datasets) or "
            "mmeb-v2 (78 tasks; results in <output_dir>/eval/mmeb-v2/).",
            "choices": list(EVAL_BENCHMARKS),
        },
    )
    eval_dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "mmeb-v1: MMEB-eval Hub id or local folder (default: the synthetic eval split, or "
            "TIGER-Lab/MMEB-eval). mmeb-v2: a local mirror folder (default: each task's own Hub dataset)."
        },
    )
    eval_subset_name: list[str] | None = field(
        default=None,
        metadata={
            "help": "Datasets to evaluate: names or all / ind / ood / synthetic (default: synthetic or all); "
            "mmeb-v2: task names or all / image / video / visdoc (default: all)."
        },
    )
    eval_image_dir: str | None = field(
        default=None, metadata={"help": "Image root of the evaluation data (mmeb-v2: its media root)."}
    )
    eval_batch_size: int = field(default=32, metadata={"help": "Items per forward when encoding for evaluation."})

    def __post_init__(self):
        if self.eval_benchmark not in EVAL_BENCHMARKS:
            raise ValueError(f"eval_benchmark must be one of {', '.join(EVAL_BENCHMARKS)}, got {self.eval_benchmark!r}")
        if (
            isinstance(self.eval_batch_size, bool)
            or not isinstance(self.eval_batch_size, int)
            or self.eval_batch_size < 1
        ):
            raise ValueError(f"eval_batch_size must be a positive integer, got {self.eval_batch_size!r}")


__all__ = ["DataArguments", "EVAL_BENCHMARKS", "ModelArguments", "RECIPE_KEYS"]
