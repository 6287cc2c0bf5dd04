"""MMEB-V2 data model: tasks, validated task sets, table reading and media resolution shared by every parser.

A task's rows come from its own Hub dataset (``repo``, ``config``, ``split``) or from a local mirror root laid out
as ``<root>/<repo>/<config>/<split>*.parquet`` (``<root>/<repo>/<split>*.parquet`` for a repo without configs;
a ``data/`` folder in between is accepted, as in a downloaded Hub repo);
both are read through :class:`TableSource`. Media (images, pre-extracted video frames) live under one media root
(``--image_dir``) holding the official archives extracted: ``image-tasks/``, ``video-tasks/frames/...``; paths are
confined to it. Visual-document pages come embedded in the corpus rows and are kept as encoded bytes.

Prompt texts are built exactly as the official V2 loaders build them (``src/model/processor.py::process_input_text``
and the ``.replace(" \\n", "\\n") + "\\n"`` fixes), with MMEB's ``<|image_1|>`` and :data:`VIDEO_PLACEHOLDER` where
the official code puts the backbone's image or video token, so the processor substitutes the backbone's token.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...common.errors import DataError
from ...common.locations import is_hub_id
from ...data.images import check_image_file, resolve_image_path
from ...prompting_vlm2vec import IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER

#: Frames per video (``num_frames: 8`` in the official ``video.yaml``).
NUM_FRAMES = 8
_FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png")

#: An item to embed: (text, image, frames). ``image`` is an absolute path, encoded image bytes, or None;
#: ``frames`` is the tuple of a video's frame paths in temporal order (empty for a non-video item).
Item = tuple[str, "str | bytes | None", tuple[str, ...]]


def input_text(instruction: str, text: str | None = None, *, image: bool = False, video: bool = False) -> str:
    """The official ``process_input_text``: ``instruction [+ " " + text]``, then the video and image tokens first."""
    prompt = instruction + (" " + text if text else "")
    if video:
        prompt = VIDEO_PLACEHOLDER + " " + prompt
    if image:
        prompt = IMAGE_PLACEHOLDER + " " + prompt
    return prompt


@dataclass(frozen=True)
class V2Task:
    """One MMEB-V2 task as the official ``experiments/public/eval/*.yaml`` and ``src/constant`` declare it.

    ``published`` is VLM2Vec-V2.0 (Qwen2-VL-2B) on the headline metric in percent, from the official
    ``experiments/public/all_scores/v2.0.1/VLM2Vec-V2.0-Qwen2VL-2B.json``. ``media`` is the task's folder under
    the media root (image root, frame root). ``max_rows`` keeps the first rows only (``num_sample_per_subset``).
    """

    name: str
    modality: str  # image | video | visdoc
    meta_task: str
    parser: Callable[[V2Task, TableSource, str | None], V2Set] = field(repr=False, compare=False)
    repo: str
    config: str | None
    split: str
    eval_type: str  # local: each query ranks its own candidates; global: every query ranks all candidates
    published: float
    media: str = ""
    hub_name: str | None = None  # the dataset's name inside the loader when it differs from ``name``
    max_rows: int | None = None

    @property
    def metric(self) -> str:
        """Headline metric (official ``report_score_v2.py``): NDCG@5 (linear gain) for visdoc, else hit@1."""
        return "ndcg@5" if self.modality == "visdoc" else "hit@1"


@dataclass
class V2Set:
    """One validated task: unique candidates, one query per row, and graded relevance.

    ``candidates`` are de-duplicated by the official candidate name (``candidate_names``); ``query_candidates[i]``
    holds the candidate indices query ``i`` ranks (None for a global task: all candidates); ``relevant[i]`` maps
    candidate index -> relevance grade (> 0). ``fingerprint`` is a SHA-256 of all of it.
    """

    name: str
    queries: list[Item]
    candidates: list[Item]
    candidate_names: list[str]
    query_candidates: list[np.ndarray] | None
    relevant: list[dict[int, float]]
    fingerprint: str

    @property
    def num_rows(self) -> int:
        return len(self.queries)

    @property
    def has_video(self) -> bool:
        return any(frames for _, _, frames in self.queries + self.candidates)


class SetBuilder:
    """Collects queries and name-deduplicated candidates (first occurrence wins, as ``generate_cand_dataset``)."""

    def __init__(self, task: V2Task, *, local: bool):
        self.task, self.local = task, local
        self.queries: list[Item] = []
        self.candidates: list[Item] = []
        self.names: list[str] = []
        self._index: dict[str, int] = {}
        self.query_candidates: list[np.ndarray] = []
        self.relevant: list[dict[int, float]] = []

    def candidate(self, name: str, text: str, image: str | bytes | None = None, frames: tuple[str, ...] = ()) -> int:
        if name not in self._index:
            self._index[name] = len(self.candidates)
            self.candidates.append((text, image, tuple(frames)))
            self.names.append(name)
        return self._index[name]

    def query(
        self,
        row: int,
        text: str,
        relevant: dict[str, float],
        candidates: list[str] | None = None,
        image: str | bytes | None = None,
        frames: tuple[str, ...] = (),
    ) -> None:
        """Add one query; ``relevant`` maps candidate names (already added) to grades, ``candidates`` its own list."""
        missing = [name for name in relevant if name not in self._index]
        if missing:
            raise DataError(f"relevant candidate {missing[0]!r} is not a candidate", dataset=self.task.name, row=row)
        if not relevant:
            raise DataError("query has no relevant candidate", dataset=self.task.name, row=row)
        if self.local:
            own = list(dict.fromkeys(self._index[name] for name in candidates or []))  # a name twice is one item
            if not set(self._index[name] for name in relevant) <= set(own):
                raise DataError(
                    "a relevant candidate is not in the query's candidate list", dataset=self.task.name, row=row
                )
            self.query_candidates.append(np.asarray(own, dtype=np.int64))
        self.queries.append((text, image, tuple(frames)))
        self.relevant.append({self._index[name]: float(grade) for name, grade in relevant.items()})

    def build(self) -> V2Set:
        if not self.queries:
            raise DataError("task has no queries", dataset=self.task.name)
        digest, files = hashlib.sha256(), {}

        def content(path: str) -> str:  # each media file decoded once, before any forward; its bytes key the cache
            if path not in files:
                files[path] = f"{path}:{check_image_file(path, dataset=self.task.name, row=None)}"
            return files[path]

        for items in (self.queries, self.candidates):
            for text, image, frames in items:
                ref = hashlib.sha256(image).hexdigest() if isinstance(image, bytes) else image and content(image)
                digest.update(json.dumps([text, ref, [content(f) for f in frames]], ensure_ascii=False).encode())
        digest.update(json.dumps(self.names, ensure_ascii=False).encode())
        digest.update(json.dumps([sorted(r.items()) for r in self.relevant]).encode())
        for own in self.query_candidates:
            digest.update(own.tobytes() + b"|")
        return V2Set(
            self.task.name,
            self.queries,
            self.candidates,
            self.names,
            self.query_candidates if self.local else None,
            self.relevant,
            digest.hexdigest(),
        )


class TableSource:
    """Reads a task's tables from the Hub (``root`` None) or from a local mirror root (see module doc)."""

    def __init__(self, root: str | None):
        if root is not None and is_hub_id(root):
            raise DataError(f"--dataset_name for MMEB-V2 is a local mirror folder (or unset for the Hub): {root!r}")
        self.root = root

    def read(self, task: V2Task, config: str | None, split: str, columns: list[str]) -> tuple[str, dict[str, list]]:
        """(label for messages, {column: values}) of ``task.repo``/``config``/``split``; image columns as bytes."""
        return (
            self._hub(task, config, split, columns) if self.root is None else self._local(task, config, split, columns)
        )

    def _local(self, task, config, split, columns):
        import pyarrow as pa
        import pyarrow.parquet as pq

        folder = Path(self.root).expanduser() / task.repo / (config or "")
        files = sorted(folder.glob(f"{split}*.parquet")) or sorted(folder.glob(f"data/{split}*.parquet"))
        if not files:
            raise DataError(f"no {split}*.parquet files", dataset=task.name, file=str(folder))
        tables = []
        for file in files:
            missing = [col for col in columns if col not in pq.read_schema(file).names]
            if missing:
                raise DataError(f"missing column(s) {', '.join(missing)}", dataset=task.name, file=str(file))
            tables.append(pq.read_table(file, columns=columns))
        return str(folder), _image_bytes(pa.concat_tables(tables).to_pydict())

    def _hub(self, task, config, split, columns):
        import datasets

        label = f"{task.repo}:{config or ''}:{split}"
        try:
            ds = datasets.load_dataset(task.repo, config, split=split)
        except Exception as exc:  # offline, unknown config, ... -> one clear message instead of a traceback
            raise DataError(
                f"cannot load it from the Hub ({type(exc).__name__}: {exc})", dataset=task.name, file=label
            ) from exc
        missing = [col for col in columns if col not in ds.column_names]
        if missing:
            raise DataError(f"missing column(s) {', '.join(missing)}", dataset=task.name, file=label)
        ds = ds.select_columns(columns)
        for name, feature in ds.features.items():
            if isinstance(feature, datasets.Image):
                ds = ds.cast_column(name, datasets.Image(decode=False))
        return label, _image_bytes(ds.to_dict())


def _image_bytes(columns: dict[str, list]) -> dict[str, list]:
    # An image column arrives as {"bytes": ..., "path": ...} structs: keep the bytes.
    for name, values in columns.items():
        if values and isinstance(values[0], dict) and "bytes" in values[0]:
            columns[name] = [v["bytes"] if isinstance(v, dict) else v for v in values]
    return columns


def media_file(media_root: str | None, task: V2Task, rel: str, row: int) -> str:
    """Absolute path of ``rel`` under ``<media_root>/<task.media>``; raises ``DataError`` if missing or escaping."""
    if media_root is None:
        raise DataError(f"row references {rel!r} but no image_dir (media root) was given", dataset=task.name, row=row)
    path = resolve_image_path(Path(media_root) / task.media, rel, dataset=task.name, row=row)
    if not path.is_file():
        raise DataError("image file not found", dataset=task.name, row=row, file=str(path))
    return str(path)


def media_folder(media_root: str | None, task: V2Task, rel_dir: str, row: int) -> Path:
    """Absolute folder ``rel_dir`` under ``<media_root>/<task.media>``; raises ``DataError`` if missing or escaping."""
    if media_root is None:
        raise DataError(
            f"row references {rel_dir!r} but no image_dir (media root) was given", dataset=task.name, row=row
        )
    folder = resolve_image_path(Path(media_root) / task.media, rel_dir, dataset=task.name, row=row)
    if not folder.is_dir():
        raise DataError("folder not found", dataset=task.name, row=row, file=str(folder))
    return folder


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def video_frames(media_root: str | None, task: V2Task, rel_dir: str, row: int, num_frames: int | None = NUM_FRAMES):
    """Frames of one pre-extracted video folder, natural-sorted, then ``num_frames`` of them evenly spaced.

    The official ``process_video_frames``: indices ``linspace(0, n - 1, num_frames)`` truncated to int when the
    folder has at least ``num_frames`` frames, every frame otherwise; ``num_frames=None`` keeps every frame. Each
    chosen frame file is confined to the media root like a single image (a frame that is a symlink out of it raises
    ``DataError``), and returned as its real path.
    """
    folder = media_folder(media_root, task, rel_dir, row)
    names = sorted((n for n in os.listdir(folder) if n.lower().endswith(_FRAME_EXTENSIONS)), key=_natural_key)
    if not names:
        raise DataError(
            "no extracted frames (.jpg/.jpeg/.png) in the video folder", dataset=task.name, row=row, file=str(folder)
        )
    if num_frames is not None and num_frames <= len(names):
        names = [names[i] for i in np.linspace(0, len(names) - 1, num_frames, dtype=int)]
    root = Path(media_root) / task.media
    return tuple(
        str(resolve_image_path(root, str(folder.relative_to(root.resolve()) / n), dataset=task.name, row=row))
        for n in names
    )


def text_value(value: object, what: str, task: V2Task, row: int) -> str:
    if not isinstance(value, str):
        raise DataError(f"{what} must be a string, got {type(value).__name__}", dataset=task.name, row=row)
    return value


def list_value(value: object, what: str, task: V2Task, row: int) -> list:
    if not isinstance(value, list) or not value:
        raise DataError(f"{what} must be a non-empty list", dataset=task.name, row=row)
    return value
