"""What to mine: every source's rows as indices into one table of unique items, and each source's candidate pool.

An item is ``(text, absolute image path or None)``; two rows naming the same text and image share one item, so each
unique item is encoded once across all sources. Every image is decoded once when its item is first added (a missing,
corrupt or oversized file raises `DataError` naming the source, row and file) and its content identified by the
SHA-256 of its bytes: :attr:`ItemTable.keys` is what the embedding cache is keyed by, so a replaced image under the
same name is encoded again. The candidate pool of a source is, by default, its own unique
positives (a classification source mines wrong labels, a retrieval source other images or captions); a pool given
as another data config (the unique positives of all its sources) or as a corpus file is shared by every source.

Corpus file (``.jsonl`` or ``.parquet``): one candidate per row, columns ``text`` and ``image_path`` (either may be
empty or missing, not both), image paths relative to the corpus image folder (default: the file's folder); texts
pass :func:`~modeling_vlm2vec.prompting_vlm2vec.check_item_text` like training rows.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from ..common.errors import DataError
from ..common.files import text_lines
from ..data.data_config import load_data_config
from ..data.images import check_image_file, resolve_image_path
from ..data.sources import SourceRows, load_source
from ..prompting_vlm2vec import check_item_text

#: An item to embed: (text, absolute image path or None).
Item = tuple[str, "str | None"]
#: Where an item was first seen, for error messages: (dataset, row, file).
Origin = tuple[str, "int | None", "str | None"]
CORPUS_COLUMNS = ("text", "image_path")


@dataclass
class CandidatePool:
    """The items of a ``--candidate_pool``, where each comes from, and the files read (which no output may replace)."""

    items: list[Item]
    origins: list[Origin]
    files: list[Path]


class ItemTable:
    """Unique items in order of first appearance; :meth:`add` returns an item's index.

    ``items[i]`` is (text, image path or None); ``keys[i]`` is (text, SHA-256 of the image bytes or None), the
    item's content; ``origins[i]`` is where it was first seen.
    """

    def __init__(self) -> None:
        self.items: list[Item] = []
        self.keys: list[tuple[str, str | None]] = []
        self.origins: list[Origin] = []
        self._index: dict[Item, int] = {}
        self._digests: dict[str, str] = {}

    def add(self, text: str | None, image: str | None, origin: Origin) -> int:
        key = (text or "", image)
        if key not in self._index:
            if image is not None and image not in self._digests:  # each image decoded once, before any work
                dataset, row, _ = origin
                self._digests[image] = check_image_file(image, dataset=dataset, row=row)
            self._index[key] = len(self.items)
            self.items.append(key)
            self.keys.append((key[0], None if image is None else self._digests[image]))
            self.origins.append(origin)
        return self._index[key]

    def __len__(self) -> int:
        return len(self.items)


@dataclass
class SourcePlan:
    """One source to mine: its rows (``source``), each row's query and positive item, and its candidate pool.

    ``query_ids`` and ``positive_ids`` are (rows,) int64 indices into the item table; ``candidate_ids`` (pool,) int64
    holds the pool's item indices, ascending.
    """

    source: SourceRows
    query_ids: np.ndarray
    positive_ids: np.ndarray
    candidate_ids: np.ndarray

    @property
    def name(self) -> str:
        return self.source.name


def _positives(source: SourceRows) -> tuple[list[Item], list[Origin]]:
    examples = [source.example(i) for i in range(len(source))]
    origins = [(source.name, e["row"], source.file) for e in examples]
    return [(e["pos_text"], e["pos_image"]) for e in examples], origins


def _read_corpus(path: Path, image_dir: Path) -> tuple[list[Item], list[Origin]]:
    """The items of a corpus file (see the module doc), every image resolved under ``image_dir`` and present."""
    name = f"candidate pool {path.name}"
    if path.suffix == ".jsonl":
        records = []
        for index, line in text_lines(path):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"line {index + 1} is not valid JSON ({exc})", dataset=name, file=str(path)) from exc
            if not isinstance(record, dict):
                raise DataError(f"line {index + 1} is not a JSON object", dataset=name, file=str(path))
            records.append(record)
    elif path.suffix == ".parquet":
        try:
            table = pq.read_table(path)
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read parquet ({exc})", dataset=name, file=str(path)) from exc
        if not set(CORPUS_COLUMNS) & set(table.column_names):
            raise DataError(f"needs a column {' or '.join(CORPUS_COLUMNS)}", dataset=name, file=str(path))
        records = table.select([c for c in CORPUS_COLUMNS if c in table.column_names]).to_pylist()
    else:
        raise DataError("a corpus file must be .jsonl or .parquet (or pass a data config .yaml)", file=str(path))
    items = []
    for row, record in enumerate(records):
        text, image = (record.get(c) or "" for c in CORPUS_COLUMNS)
        if not isinstance(text, str) or not isinstance(image, str):
            raise DataError("text and image_path must be strings", dataset=name, row=row, file=str(path))
        if not text.strip() and not image.strip():
            raise DataError("candidate has neither text nor image_path", dataset=name, row=row, file=str(path))
        try:
            check_item_text(text)
        except ValueError as exc:
            raise DataError(f"column text: {exc}", dataset=name, row=row, file=str(path)) from None
        resolved = None
        if image.strip():
            resolved = resolve_image_path(image_dir, image.strip(), dataset=name, row=row)
            if not resolved.is_file():
                raise DataError(
                    f"image file not found (image dir {str(image_dir)!r})", dataset=name, row=row, file=str(resolved)
                )
        items.append((text, None if resolved is None else str(resolved)))
    if not items:
        raise DataError("candidate pool is empty", dataset=name, file=str(path))
    return items, [(name, row, str(path)) for row in range(len(items))]


def load_candidate_pool(
    reference: str | os.PathLike, image_dir: str | os.PathLike | None, *, seed: int
) -> CandidatePool:
    """The ``--candidate_pool``: a data config (``.yaml``/``.yml``: the unique positives of all its sources) or a
    corpus file (images under ``image_dir``, default its folder). Raises `DataError`."""
    path = Path(reference)
    if not path.is_file():
        raise DataError("candidate pool file not found", file=str(path))
    if path.suffix not in (".yaml", ".yml"):
        items, origins = _read_corpus(path, Path(image_dir) if image_dir is not None else path.parent)
        return CandidatePool(items, origins, [path])
    pool = CandidatePool([], [], [path])
    for spec in load_data_config(path):
        source = load_source(spec, seed=seed)
        items, origins = _positives(source)
        pool.items += items
        pool.origins += origins
        pool.files.append(Path(source.file))
    return pool


def plan_sources(sources: list[SourceRows], pool: CandidatePool | None) -> tuple[ItemTable, list[SourcePlan]]:
    """Index every row's query and positive and each source's pool (``pool`` for all, or the source's own unique
    positives when None) in one item table, decoding every image once. A shared pool's images must lie under each
    source's ``image_dir`` (mined negatives are written relative to it); `DataError` otherwise."""
    table = ItemTable()
    shared = None
    if pool is not None:
        shared = np.unique([table.add(*item, origin) for item, origin in zip(pool.items, pool.origins)])
    plans = []
    for source in sources:
        examples = [source.example(i) for i in range(len(source))]
        origins = [(source.name, e["row"], source.file) for e in examples]
        query_ids = np.asarray([table.add(e["qry"], e["qry_image"], o) for e, o in zip(examples, origins)], np.int64)
        positive_ids = np.asarray(
            [table.add(e["pos_text"], e["pos_image"], o) for e, o in zip(examples, origins)], np.int64
        )
        if shared is None:
            candidates = np.unique(positive_ids)
        else:
            candidates = shared.astype(np.int64)
            root = source.image_dir.resolve()
            for item_id in candidates:
                image = table.items[item_id][1]
                if image is not None and root not in Path(image).parents:
                    raise DataError(
                        f"candidate image is outside this source's image_dir {str(root)!r}; mined negatives are "
                        f"written relative to it, so the pool's images must live under it",
                        dataset=source.name,
                        file=image,
                    )
        plans.append(SourcePlan(source, query_ids, positive_ids, candidates))
    return table, plans


__all__ = [
    "CORPUS_COLUMNS",
    "CandidatePool",
    "Item",
    "ItemTable",
    "Origin",
    "SourcePlan",
    "load_candidate_pool",
    "plan_sources",
]
