"""Model card (README.md) of an exported checkpoint, rendered from ``model_cards/vlm2vec_card.md``.

The card has Hub YAML metadata (``library_name: transformers``, ``pipeline_tag: feature-extraction``, base model,
datasets, tags, license, and a ``model-index`` from the MMEB results), a runnable usage snippet, the training details
from a ``card_context`` dict, the MMEB-V1 and MMEB-V2 tables read from ``evaluate_mmeb`` outputs, framework versions
and the citation.

``card_context`` keys (all optional):
    repo_id (str): the Hub id used in the snippet (default: the output folder's name).
    model_name (str), base_model (str: Hub id of the backbone), license (str, default "apache-2.0"),
    datasets (list[str]: Hub dataset ids), tags (list[str]: added to vlm2vec, mmeb, custom_code, ...),
    training (dict: hyper-parameter name -> value), data_sources (list of {"name": str, "count": int}),
    grad_cache (dict: chunk-size name -> int), world_size (int), lora (dict: r, alpha, dropout, ... or None),
    hard_negatives (bool), eval_dir (an ``evaluate_mmeb`` output folder: MMEB-V1 results at its top, MMEB-V2's in
    ``mmeb-v2/``; the card shows each benchmark it holds).
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..common.errors import DataError
from ..common.files import read_json, write_text_atomic
from ..common.locations import MMEB_EVAL_DATASET, is_hub_id
from ..configuration_vlm2vec import Vlm2VecConfig
from ..evaluation.base.report import format_percent
from ..evaluation.mmeb_v1.report import GROUP_TITLES, build_summary
from ..evaluation.mmeb_v2.report import build_v2_summary
from ..evaluation.mmeb_v2.runner import V2_RESULTS_FOLDER
from ..image_policy_vlm2vec import pixel_bounds_are_native
from .engines import engine_resolution_note, engines_need_hub_code, native_architecture, vllm_unsupported

_TEMPLATE_NAME = "vlm2vec_card.md"
# The template lives in the repository's model_cards/; a non-editable install puts it under <prefix>/share/vlm2vec.
_REPO_TEMPLATE = Path(__file__).resolve().parents[2] / "model_cards" / _TEMPLATE_NAME
TEMPLATE_PATH = (
    _REPO_TEMPLATE
    if _REPO_TEMPLATE.is_file()
    else Path(sys.prefix) / "share" / "vlm2vec" / "model_cards" / _TEMPLATE_NAME
)
BASE_TAGS = ["vlm2vec", "mmeb", "custom_code", "multimodal-embedding", "sentence-similarity"]
_VERSIONED_PACKAGES = ("vlm2vec", "torch", "transformers", "peft", "huggingface_hub", "accelerate")


def _folder_summary(folder: Path) -> dict | None:
    """``folder/summary.json``, else its ``<dataset>_score.json`` records aggregated as their benchmark's runner
    does (the records of one benchmark: MMEB-V2's carry ``benchmark``), else None."""
    if (folder / "summary.json").is_file():
        return read_json(folder / "summary.json")
    records = [read_json(path) for path in sorted(folder.glob("*_score.json"))]
    v2 = [r for r in records if r.get("benchmark") == "mmeb-v2"]
    if v2:
        return build_v2_summary(v2, model=folder.name, model_fingerprint="")
    if not records:
        return None
    return build_summary(records, model=folder.name, model_fingerprint="", dataset_name=None)


def load_eval_summaries(eval_dir: str | os.PathLike | None) -> dict[str, dict]:
    """The summaries of an ``evaluate_mmeb`` output folder by benchmark: ``{"mmeb-v1": ..., "mmeb-v2": ...}``,
    only those it holds results of (empty when none).

    MMEB-V1's are at the top of the folder, MMEB-V2's in ``mmeb-v2/`` (a folder holding only MMEB-V2 results at its
    top is read too). Each is ``summary.json`` (per dataset / task and aggregates; scores are fractions), or, without
    it, the score records aggregated the way ``evaluate_mmeb`` does.
    """
    if eval_dir is None or not Path(eval_dir).is_dir():
        return {}
    eval_dir = Path(eval_dir)
    found = {}
    top = _folder_summary(eval_dir)
    if top is not None:
        found[top.get("benchmark", "mmeb-v1")] = top
    if (eval_dir / V2_RESULTS_FOLDER).is_dir():
        v2 = _folder_summary(eval_dir / V2_RESULTS_FOLDER)
        if v2 is not None:
            found["mmeb-v2"] = v2
    return found


def _aggregate_rows(summary: dict) -> list[dict]:
    """The card rows of a summary's aggregates (MMEB-V1 or MMEB-V2): its metric and the paper's, in percent."""
    metric = summary.get("metric", "hit@1")
    return [
        {
            "name": GROUP_TITLES.get(group, group),
            "n": agg.get("n"),
            "N": agg.get("N"),
            "score": format_percent(agg.get(metric)),
            "paper": format_percent(agg.get(f"paper_{metric}")),
        }
        for group, agg in summary.get("aggregates", {}).items()
    ]


def _eval_rows(summary: dict) -> tuple[list[dict], list[dict]]:
    metric = summary.get("metric", "hit@1")
    datasets = [
        {
            "name": name,
            "meta_task": row.get("meta_task", ""),
            "split": row.get("split", ""),
            "score": format_percent(row.get(metric)),
            "paper": format_percent(row.get(f"paper_{metric}")),
        }
        for name, row in summary.get("datasets", {}).items()
    ]
    return _aggregate_rows(summary), datasets


def _v2_rows(summary: dict) -> tuple[list[dict], list[dict]]:
    tasks = [
        {
            "name": name,
            "modality": row["modality"],
            "meta_task": row["meta_task"],
            "metric": row["metric"],
            "score": format_percent(row["score"]),
            "paper": format_percent(row.get("paper_score")),
        }
        for name, row in summary.get("datasets", {}).items()
    ]
    return _aggregate_rows(summary), tasks


def _eval_results(summary: dict) -> list[EvalResult]:
    """model-index entries: one per aggregate and per dataset, precision@1 in percent.

    Scores on a local evaluation folder (e.g. the synthetic demo data) get none: Hub metadata must not present them
    as results on a Hub dataset. They still appear in the card's table.
    """
    metric = summary.get("metric", "hit@1")
    dataset_type = str(summary.get("dataset_name") or MMEB_EVAL_DATASET)
    if not is_hub_id(dataset_type):
        return []
    entries = [
        (f"MMEB {GROUP_TITLES.get(group, group)}", group, agg.get(metric))
        for group, agg in summary.get("aggregates", {}).items()
    ]
    entries += [(f"MMEB {name}", name, row.get(metric)) for name, row in summary.get("datasets", {}).items()]
    return [
        EvalResult(
            task_type="feature-extraction",
            task_name="Multimodal embedding",
            dataset_type=dataset_type,
            dataset_name=title,
            dataset_config=config,
            dataset_split="test",
            metric_type="precision_at_1",
            metric_name="Precision@1 (hit@1, %)",
            metric_value=round(100.0 * float(value), 2),
        )
        for title, config, value in entries
        if value is not None
    ]


def framework_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in _VERSIONED_PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:  # e.g. vlm2vec run from a source tree
            continue
    return versions


def _resolution_text(config) -> str:
    if config.image_fixed_size is not None:
        text = f"resize to exactly {config.image_fixed_size[0]}x{config.image_fixed_size[1]} pixels"
    else:
        bounds = [
            f"at most {config.image_max_pixels} pixels" if config.image_max_pixels else None,
            f"at least {config.image_min_pixels} pixels" if config.image_min_pixels else None,
        ]
        bounds = [b for b in bounds if b]
        text = (" and ".join(bounds) + " (aspect ratio kept)") if bounds else "the processor's own defaults"
        if bounds and pixel_bounds_are_native(config):
            text += ", applied by the processor's own `size` (saved in its config), so every engine applies it"
    edge = config.small_image_edge
    if edge is not None:
        text += f"; an image with an edge under {edge} px is stretched to {2 * edge}x{2 * edge}"
    if config.position_policy == "transformers4":
        text += "; position ids follow transformers 4 (images without `<|vision_start|>` get 1-D positions)"
    if not config.strip_prompt:
        text += "; prompt whitespace is kept as given"
    if config.video_input == "video":
        text += "; videos go through the backbone's video input (`<|video_pad|>`), built from their frames"
    return text


def _pooling_text(config) -> str:
    pooled = (
        "the final hidden state of the last token"
        if config.pooling == "last"
        else "the mean of the final hidden states"
    )
    return f"{pooled}, L2-normalised," if config.normalize else pooled


def _base_model_id(config, context: dict) -> str | None:
    """A Hub id for the ``base_model`` metadata: from the context, else the backbone's origin if it is one."""
    if context.get("base_model"):
        return context["base_model"]
    origin = str(getattr(config.backbone_config, "_name_or_path", "") or "")
    return origin if is_hub_id(origin) else None


def render_model_card(
    config,
    *,
    card_context: dict | None = None,
    repo_id: str | None = None,
    adapter_only: bool = False,
    base_reference: str | None = None,
    engines: bool = False,
    template_path: str | os.PathLike = TEMPLATE_PATH,
) -> ModelCard:
    """Render the card of a checkpoint whose `Vlm2VecConfig` is `config` (see the module doc for `card_context`).

    ``engines``: the checkpoint has the export layout other engines read (sentence-transformers, mteb, vLLM usage).
    """
    context = dict(card_context or {})
    repo_id = repo_id or context.get("repo_id") or "your-username/vlm2vec-model"
    model_name = context.get("model_name") or repo_id.split("/")[-1]
    summaries = load_eval_summaries(context.get("eval_dir"))
    summary, v2_summary = summaries.get("mmeb-v1"), summaries.get("mmeb-v2")
    base_model = backbone = _base_model_id(config, context)
    if adapter_only and base_reference and is_hub_id(base_reference):
        base_model = base_reference
    data_sources = context.get("data_sources") or []
    counts = [s.get("count") for s in data_sources]
    card_data = ModelCardData(
        library_name="peft" if adapter_only else "transformers",
        pipeline_tag="feature-extraction",
        license=context.get("license", "apache-2.0"),
        base_model=base_model,
        datasets=context.get("datasets"),
        tags=BASE_TAGS + [config.backbone_type] + [t for t in context.get("tags", []) if t not in BASE_TAGS],
        model_name=model_name,
        eval_results=(_eval_results(summary) or None) if summary else None,
    )
    aggregates, datasets = _eval_rows(summary) if summary else ([], [])
    v2_aggregates, v2_tasks = _v2_rows(v2_summary) if v2_summary else ([], [])
    return ModelCard.from_template(
        card_data,
        template_path=str(template_path),
        model_name=model_name,
        repo_id=repo_id,
        backbone=backbone or config.backbone_type,
        backbone_type=config.backbone_type,
        hidden_size=config.hidden_size,
        matryoshka_dimensions=getattr(config, "matryoshka_dimensions", None),
        pooling_text=_pooling_text(config),
        image_token=config.image_token,
        padding_side=config.padding_side,
        max_length=config.max_length,
        resolution=_resolution_text(config),
        temperature=config.contrastive_temperature,
        adapter_only=adapter_only,
        base_reference=base_reference,
        training=context.get("training"),
        data_sources=data_sources,
        total_rows=sum(counts) if counts and None not in counts else None,
        grad_cache=context.get("grad_cache"),
        world_size=context.get("world_size"),
        lora=context.get("lora"),
        hard_negatives=context.get("hard_negatives", False),
        eval_aggregates=aggregates,
        eval_datasets=datasets,
        eval_dataset=(summary or {}).get("dataset_name", MMEB_EVAL_DATASET),
        v2_aggregates=v2_aggregates,
        v2_tasks=v2_tasks,
        versions=framework_versions(),
        engines=engines,
        architecture=native_architecture(config),
        engine_note=engine_resolution_note(config),
        engine_hub_code=engines_need_hub_code(config),
        vllm_unsupported=vllm_unsupported(config),
    )


def write_model_card(folder: str | os.PathLike, config=None, **render_kwargs) -> Path:
    """Render the card for the checkpoint in `folder` and write ``folder/README.md`` atomically.

    `config` defaults to the folder's ``config.json`` (for adapter-only folders pass the base model's config).
    """
    folder = Path(folder)
    if config is None:
        if not (folder / "config.json").is_file():
            raise DataError("no config.json to describe; pass config=", file=str(folder))
        config = Vlm2VecConfig.from_pretrained(folder)
    render_kwargs.setdefault("engines", (folder / "modules.json").is_file())
    card = render_model_card(config, **render_kwargs)
    write_text_atomic(folder / "README.md", str(card))
    return folder / "README.md"


__all__ = [
    "BASE_TAGS",
    "TEMPLATE_PATH",
    "framework_versions",
    "load_eval_summaries",
    "render_model_card",
    "write_model_card",
]
