"""Load and validate MMEB-eval datasets into a compact, de-duplicated form.

Source: a Hub dataset id (``TIGER-Lab/MMEB-eval``: one config per dataset, split ``test``) or a local folder with
the same layout, ``<root>/<DatasetName>/*.parquet``. Rows follow the MMEB-eval schema: ``qry_text`` (str),
``qry_img_path`` (str, "" = no image), ``tgt_text`` (list[str]) and ``tgt_img_path`` (list[str], same length),
the positive candidate at index 0. Image paths are relative to ``image_dir``.

Everything is checked while loading (columns, types, list lengths, empty lists, texts in valid UTF-8 with at most
one ``<|image_1|>``, image paths inside ``image_dir``, every image present, non-empty and decodable within
Pillow's decompression-bomb limit), so a run can validate every requested dataset before it writes a single file or
runs a forward. Problems raise :class:`~modeling_vlm2vec.common.errors.DataError` naming the dataset, the row and
the file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from ...common.errors import DataError
from ...common.locations import is_hub_id
from ...data.images import check_image_file, load_image, resolve_image_path
from ...data.prompt_checks import check_item_prompts
from ...prompting_vlm2vec import check_item_text

COLUMNS = ("qry_text", "qry_img_path", "tgt_text", "tgt_img_path")

#: An item to embed: (text, absolute image path or None).
Item = tuple[str, "str | None"]


@dataclass
class EvalSet:
    """One validated dataset.

    ``queries`` / ``candidates`` are the unique items, keyed by (text, image path) in order of first appearance.
    ``query_index`` (num_rows,) maps each row to its query; ``candidate_index`` (num_rows, max_candidates) maps
    each row's candidate list to candidates, positive in column 0, padded with -1 where a row has fewer candidates.
    ``fingerprint`` is a SHA-256 of the rows' content and of the bytes of every image they reference.
    """

    name: str
    queries: list[Item]
    candidates: list[Item]
    query_index: np.ndarray
    candidate_index: np.ndarray
    fingerprint: str
    query_rows: list[tuple[int, str]] = field(default_factory=list)  # (row, file) where each query first appears
    candidate_rows: list[tuple[int, str]] = field(default_factory=list)  # the same for each candidate

    @property
    def num_rows(self) -> int:
        return len(self.query_index)


def _local_chunks(root: str, name: str) -> Iterator[tuple[str, dict[str, list]]]:
    import pyarrow.parquet as pq

    folder = Path(root).expanduser() / name
    if not folder.is_dir():
        raise DataError(
            f"dataset folder not found (expected <dataset_name>/{name}/*.parquet)", dataset=name, file=str(folder)
        )
    files = sorted(folder.glob("*.parquet"))
    if not files:
        raise DataError("no parquet files in the dataset folder", dataset=name, file=str(folder))
    for file in files:
        missing = [col for col in COLUMNS if col not in pq.read_schema(file).names]
        if missing:
            raise DataError(f"missing column(s) {', '.join(missing)}", dataset=name, file=str(file))
        yield str(file), pq.read_table(file, columns=list(COLUMNS)).to_pydict()


def _hub_chunks(dataset_name: str, name: str) -> Iterator[tuple[str, dict[str, list]]]:
    import datasets

    label = f"{dataset_name}:{name}"
    try:
        ds = datasets.load_dataset(dataset_name, name, split="test")
    except Exception as exc:  # offline, unknown config, ... -> one clear message instead of a traceback
        raise DataError(
            f"not a local folder, and cannot load it from the Hub ({type(exc).__name__}: {exc})",
            dataset=name,
            file=label,
        ) from exc
    missing = [col for col in COLUMNS if col not in ds.column_names]
    if missing:
        raise DataError(f"missing column(s) {', '.join(missing)}", dataset=name, file=label)
    yield label, ds.select_columns(list(COLUMNS)).to_dict()


class _Deduper:
    """Assigns indices to unique (text, image) items and resolves each image path once."""

    def __init__(self, image_dir: str | None, dataset: str):
        self.image_dir, self.dataset = image_dir, dataset
        self.items: list[Item] = []
        self.rows: list[tuple[int, str]] = []  # (row, file) of each item's first appearance
        self._index: dict[tuple[str, str], int] = {}
        self._paths: dict[str, str] = {}
        self.image_digests: dict[str, str] = {}  # relative path -> SHA-256 of the image bytes

    def add(self, text: str, image: str, row: int, file: str) -> int:
        key = (text, image)
        if key not in self._index:
            try:
                check_item_text(text)
            except ValueError as exc:
                raise DataError(str(exc), dataset=self.dataset, row=row, file=file) from None
            self._index[key] = len(self.items)
            self.items.append((text, self._resolve(image, row, file) if image else None))
            self.rows.append((row, file))
        return self._index[key]

    def _resolve(self, rel: str, row: int, file: str) -> str:
        if rel not in self._paths:
            if self.image_dir is None:
                raise DataError(
                    f"row references image {rel!r} but no image_dir was given", dataset=self.dataset, row=row, file=file
                )
            path = resolve_image_path(self.image_dir, rel, dataset=self.dataset, row=row)
            if not path.is_file():
                raise DataError(
                    f"image file not found (referenced in {file})", dataset=self.dataset, row=row, file=str(path)
                )
            self.image_digests[rel] = check_image_file(path, dataset=self.dataset, row=row)
            self._paths[rel] = str(path)
        return self._paths[rel]


def _text(value: object, what: str, *, dataset: str, row: int, file: str, allow_none: bool = False) -> str:
    if value is None and allow_none:
        return ""
    if not isinstance(value, str):
        raise DataError(f"{what} must be a string, got {type(value).__name__}", dataset=dataset, row=row, file=file)
    return value


def load_eval_set(dataset_name: str, name: str, image_dir: str | None) -> EvalSet:
    """Load dataset ``name`` from ``dataset_name`` (Hub id or local root), validate it and de-duplicate its items."""
    chunks = _hub_chunks(dataset_name, name) if is_hub_id(dataset_name) else _local_chunks(dataset_name, name)
    queries, candidates = _Deduper(image_dir, name), _Deduper(image_dir, name)
    query_index: list[int] = []
    candidate_lists: list[list[int]] = []
    digest = hashlib.sha256()
    row = 0
    for file, columns in chunks:
        for qry_text, qry_img, tgt_texts, tgt_imgs in zip(*(columns[col] for col in COLUMNS)):
            where = {"dataset": name, "row": row, "file": file}
            qry_text = _text(qry_text, "qry_text", **where)
            qry_img = _text(qry_img, "qry_img_path", allow_none=True, **where)
            if not isinstance(tgt_texts, list) or not isinstance(tgt_imgs, list):
                raise DataError("tgt_text and tgt_img_path must be lists", **where)
            if len(tgt_texts) != len(tgt_imgs):
                raise DataError(
                    f"tgt_text has {len(tgt_texts)} candidates but tgt_img_path has {len(tgt_imgs)}", **where
                )
            if not tgt_texts:
                raise DataError("empty candidate list (the positive must be at index 0)", **where)
            if not qry_text and not qry_img:
                raise DataError("query has neither text nor image", **where)
            tgt_texts = [_text(t, "tgt_text element", **where) for t in tgt_texts]
            tgt_imgs = [_text(p, "tgt_img_path element", allow_none=True, **where) for p in tgt_imgs]
            if any(not t and not p for t, p in zip(tgt_texts, tgt_imgs)):
                raise DataError("a candidate has neither text nor image", **where)
            digest.update(json.dumps([qry_text, qry_img, tgt_texts, tgt_imgs], ensure_ascii=False).encode())
            query_index.append(queries.add(qry_text, qry_img, row, file))
            candidate_lists.append([candidates.add(t, p, row, file) for t, p in zip(tgt_texts, tgt_imgs)])
            row += 1
    if row == 0:
        raise DataError("dataset has no rows", dataset=name)
    # The rows name images by relative path; their content (another image_dir, a replaced file) counts too.
    digest.update(json.dumps(sorted({**queries.image_digests, **candidates.image_digests}.items())).encode())
    candidate_index = np.full((row, max(map(len, candidate_lists))), -1, dtype=np.int64)
    for i, cands in enumerate(candidate_lists):
        candidate_index[i, : len(cands)] = cands
    return EvalSet(
        name,
        queries.items,
        candidates.items,
        np.asarray(query_index, dtype=np.int64),
        candidate_index,
        digest.hexdigest(),
        queries.rows,
        candidates.rows,
    )


def check_eval_prompts(eval_sets: list[EvalSet], processor) -> None:
    """Check every unique item text against the model's prompt rules
    (:func:`~modeling_vlm2vec.data.prompt_checks.check_item_prompts`: ``check_text``, and per dataset the first item
    with an image against ``max_length``) before the first forward. `DataError` names dataset, row and file (the
    item's first row)."""
    for eval_set in eval_sets:
        check_item_prompts(
            (
                (
                    text,
                    None if image is None else partial(load_image, image, dataset=eval_set.name, row=row),
                    {"dataset": eval_set.name, "row": row, "file": file},
                    "",
                )
                for items, rows in (
                    (eval_set.queries, eval_set.query_rows),
                    (eval_set.candidates, eval_set.candidate_rows),
                )
                for (text, image), (row, file) in zip(items, rows)
            ),
            processor,
        )
