"""MMEB-train sources: load the rows named by a data config, validate them up front, serve them as one corpus.

Rows follow the MMEB-train schema: ``qry``, ``qry_image_path``, ``pos_text``, ``pos_image_path`` (required) and
``neg_text``, ``neg_image_path`` (optional; each a string or a list of strings; ``""`` = no image / no negative).
Everything that can fail is checked before training starts, so nothing is dropped or raised mid-epoch:

- schema (missing columns, wrong value types) and the negatives' shapes;
- rows whose query or positive is empty (no text and no image) are dropped, counted per source and logged; a source
  with no usable row is an error;
- ``num_samples`` takes a seeded random sample of the usable rows (not the first N);
- every text is valid UTF-8 with at most one ``<|image_1|>``; :func:`check_prompts` adds the model's checks (no
  literal backbone image token, lengths) once the model is loaded;
- every image path of the kept rows is resolved under the source's ``image_dir`` (absolute or escaping paths are
  rejected) and must name an existing file. Images are *not* opened here; the collator loads them lazily.

A source's ``path`` is a local ``.parquet`` / ``.jsonl`` file, a local folder with the Hub layout
(``<folder>/<subset>/<split>-*.parquet``, or ``<folder>/<subset>/*.parquet`` when the files carry no split prefix),
or a Hub dataset id loaded with ``datasets.load_dataset(path, subset, split=split)`` (needs network access).
"""

from __future__ import annotations

import json
import logging
import os
import re
import zlib
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from ..common.errors import DataError
from ..common.locations import is_hub_id
from ..prompting_vlm2vec import check_item_text
from .data_config import SourceSpec, load_data_config
from .images import load_image, resolve_image_path
from .prompt_checks import check_item_prompts

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("qry", "qry_image_path", "pos_text", "pos_image_path")
NEGATIVE_COLUMNS = ("neg_text", "neg_image_path")
_SHARD_FILE = re.compile(r"^(.+)-\d{5}-of-\d{5}\.parquet$")  # Hub shard naming: <split>-00000-of-00001.parquet


def _parquet_files(folder: Path, spec: SourceSpec) -> list[Path]:
    """The parquet files of ``spec.split`` in ``folder``; unprefixed files are used only when no file names a split."""
    files = sorted(folder.glob(f"{spec.split}-*.parquet")) or sorted(folder.glob(f"{spec.split}.parquet"))
    if files:
        return files
    others = sorted(folder.glob("*.parquet"))
    splits = sorted({m.group(1) for f in others if (m := _SHARD_FILE.match(f.name))})
    if splits:
        raise DataError(
            f"no parquet file for split {spec.split!r} (found splits {splits})", dataset=spec.name, file=str(folder)
        )
    if not others:
        raise DataError("no .parquet file in folder", dataset=spec.name, file=str(folder))
    return others


def _read_jsonl(path: Path, name: str) -> pa.Table:
    records = []
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            at = {"dataset": name, "row": len(records), "file": str(path)}
            try:
                line = raw.decode("utf-8")
                record = json.loads(line) if line.strip() else None
                json.dumps(record, ensure_ascii=False).encode("utf-8")  # a "\ud800" escape decodes to a lone surrogate
            except UnicodeError as exc:
                raise DataError(f"line {line_no} is not valid UTF-8 text ({exc.reason})", **at) from None
            except json.JSONDecodeError as exc:
                raise DataError(f"line {line_no} is not valid JSON ({exc.msg})", **at) from exc
            if record is None:
                continue
            if not isinstance(record, dict):
                raise DataError(f"line {line_no} is not a JSON object", **at)
            records.append(record)
    columns = {}
    for column in REQUIRED_COLUMNS + NEGATIVE_COLUMNS:
        values = [r.get(column) for r in records]
        if any(isinstance(v, list) for v in values):  # one Arrow type per column: a lone string becomes [string]
            values = [[v] if isinstance(v, str) else v for v in values]
        if any(column in r for r in records):
            columns[column] = values
    try:
        return pa.table(columns)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise DataError(f"values of one column have incompatible types ({exc})", dataset=name, file=str(path)) from exc


def _read_hub(spec: SourceSpec) -> pa.Table:
    import datasets  # imported here: only Hub sources need it

    try:
        ds = datasets.load_dataset(spec.path, spec.subset, split=spec.split)
    except Exception as exc:  # any failure (offline, unknown repo/config/split) becomes one clear message
        raise DataError(
            f"{spec.path!r} is neither a local file/folder nor a loadable Hub dataset "
            f"(subset {spec.subset!r}, split {spec.split!r}): {type(exc).__name__}: {exc}",
            dataset=spec.name,
            file=spec.config_file,
        ) from exc
    wanted = [c for c in REQUIRED_COLUMNS + NEGATIVE_COLUMNS if c in ds.column_names]
    return ds.select_columns(wanted).with_format("arrow")[:]


def _read_table(spec: SourceSpec) -> tuple[pa.Table, str]:
    """Return the source's rows as an Arrow table and the file/folder they came from (for error messages)."""
    path = Path(spec.path)
    if path.is_file():
        if path.suffix == ".jsonl":
            return _read_jsonl(path, spec.name), str(path)
        if path.suffix != ".parquet":
            raise DataError("unsupported file type (expected .parquet or .jsonl)", dataset=spec.name, file=str(path))
        files = [path]
    elif path.is_dir():
        folder = path / spec.subset if spec.subset else path
        if not folder.is_dir():
            raise DataError(
                f"subset folder {str(folder)!r} not found (data config {spec.config_file!r})",
                dataset=spec.name,
                file=str(path),
            )
        files, path = _parquet_files(folder, spec), folder
    elif is_hub_id(spec.path):
        return _read_hub(spec), spec.path
    else:
        raise DataError(
            f"path {spec.path!r} not found (neither a file/folder relative to the config's folder nor a "
            f"Hub dataset id)",
            dataset=spec.name,
            file=spec.config_file,
        )
    try:
        table = pa.concat_tables([pq.read_table(f) for f in files], promote_options="permissive")
        table.validate(full=True)  # e.g. string values that are not valid UTF-8
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"cannot read parquet ({exc})", dataset=spec.name, file=str(path)) from exc
    return table, str(path)


def _text(value: object, column: str, *, name: str, row: int, file: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DataError(
            f"column {column!r} must be a string, got {type(value).__name__}", dataset=name, row=row, file=file
        )
    return value


def _text_list(value: object, column: str, *, name: str, row: int, file: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)):
        return [_text(v, column, name=name, row=row, file=file) for v in value]
    raise DataError(
        f"column {column!r} must be a string or a list of strings, got {type(value).__name__}",
        dataset=name,
        row=row,
        file=file,
    )


def normalize_negatives(
    neg_text: object, neg_image_path: object, *, name: str, row: int, file: str
) -> tuple[list[str], list[str]]:
    """Return the row's hard negatives as two equal-length lists (text, image path), empty pairs removed.

    A side that is absent or all ``""`` stretches to the other side's length; two lists of different lengths with
    content on both sides are ambiguous and raise ``DataError``.
    """
    texts = _text_list(neg_text, "neg_text", name=name, row=row, file=file)
    images = _text_list(neg_image_path, "neg_image_path", name=name, row=row, file=file)
    if len(texts) != len(images):
        if not any(t.strip() for t in texts):
            texts = [""] * len(images)
        elif not any(p.strip() for p in images):
            images = [""] * len(texts)
        else:
            raise DataError(
                f"neg_text and neg_image_path have different lengths ({len(texts)} vs {len(images)})",
                dataset=name,
                row=row,
                file=file,
            )
    pairs = [(t, p.strip()) for t, p in zip(texts, images) if t.strip() or p.strip()]
    return [t for t, _ in pairs], [p for _, p in pairs]


@dataclass
class SourceRows:
    """The kept rows of one source. ``table`` holds them in order; ``rows[i]`` is row i's index in the source file."""

    spec: SourceSpec
    table: pa.Table
    rows: np.ndarray  # (n_kept,) int64
    total_rows: int
    dropped_empty: int
    file: str
    without_negatives: int = 0  # kept rows with no hard negative

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def weight(self) -> float:
        return self.spec.weight

    @property
    def image_dir(self) -> Path:
        return self.spec.image_dir

    def __len__(self) -> int:
        return self.table.num_rows

    def _image(self, rel: str, row: int) -> str | None:
        if not rel.strip():
            return None
        return str(resolve_image_path(self.image_dir, rel.strip(), dataset=self.name, row=row))

    def example(self, i: int) -> dict:
        """Row ``i`` of the kept rows as a training example with resolved (absolute) image paths or None."""
        row = int(self.rows[i])
        raw = {
            c: self.table.column(c)[i].as_py() if c in self.table.column_names else None
            for c in REQUIRED_COLUMNS + NEGATIVE_COLUMNS
        }
        at = {"name": self.name, "row": row, "file": self.file}
        neg_texts, neg_images = normalize_negatives(raw["neg_text"], raw["neg_image_path"], **at)
        return {
            "qry": _text(raw["qry"], "qry", **at),
            "qry_image": self._image(_text(raw["qry_image_path"], "qry_image_path", **at), row),
            "pos_text": _text(raw["pos_text"], "pos_text", **at),
            "pos_image": self._image(_text(raw["pos_image_path"], "pos_image_path", **at), row),
            "neg_texts": neg_texts,
            "neg_images": [self._image(p, row) for p in neg_images],
            "source": self.name,
            "row": row,
        }


def _usable_rows(table: pa.Table, name: str, file: str) -> np.ndarray:
    """Indices of rows whose query and positive each have a text or an image (types checked on every row)."""
    cols = {c: table.column(c).to_pylist() for c in REQUIRED_COLUMNS}
    keep = []
    for row, (q, qi, p, pi) in enumerate(zip(*(cols[c] for c in REQUIRED_COLUMNS))):
        q, qi, p, pi = (_text(v, c, name=name, row=row, file=file) for v, c in zip((q, qi, p, pi), REQUIRED_COLUMNS))
        if (q.strip() or qi.strip()) and (p.strip() or pi.strip()):
            keep.append(row)
    return np.asarray(keep, dtype=np.int64)


def load_source(spec: SourceSpec, *, seed: int = 0) -> SourceRows:
    """Load, validate, filter and (if ``num_samples``) sample one source; check every image path of the kept rows."""
    table, file = _read_table(spec)
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise DataError(
            f"missing required column(s) {missing}; found {table.column_names}", dataset=spec.name, file=file
        )
    table = table.select([c for c in REQUIRED_COLUMNS + NEGATIVE_COLUMNS if c in table.column_names])
    keep = _usable_rows(table, spec.name, file)
    if keep.size == 0:
        raise DataError(
            f"no usable row among {table.num_rows} (each row needs a query and a positive, text or image)",
            dataset=spec.name,
            file=file,
        )
    n_usable = int(keep.size)
    if spec.num_samples is not None and spec.num_samples < n_usable:
        # Seeded per source name, so adding or reordering sources does not change another source's sample.
        rng = np.random.default_rng([seed, zlib.crc32(spec.name.encode())])
        keep = np.sort(rng.choice(keep, size=spec.num_samples, replace=False))
    source = SourceRows(
        spec=spec,
        table=table.take(keep).combine_chunks(),
        rows=keep,
        total_rows=table.num_rows,
        dropped_empty=table.num_rows - n_usable,
        file=file,
    )
    for i in range(len(source)):
        example = source.example(i)  # resolves every image path: absolute or escaping paths raise here
        source.without_negatives += not example["neg_texts"]
        for column, text in _texts(example):
            try:
                check_item_text(text)
            except ValueError as exc:
                raise DataError(f"column {column}: {exc}", dataset=spec.name, row=example["row"], file=file) from None
        images = [("qry_image_path", example["qry_image"]), ("pos_image_path", example["pos_image"])]
        images += [("neg_image_path", p) for p in example["neg_images"]]
        for column, image in images:
            if image is not None and not os.path.isfile(image):
                raise DataError(
                    f"image file not found (column {column}, image_dir {str(spec.image_dir)!r})",
                    dataset=spec.name,
                    row=example["row"],
                    file=image,
                )
    logger.info(
        "source %r: %d of %d rows kept (%d dropped: empty query or positive%s)",
        spec.name,
        len(source),
        source.total_rows,
        source.dropped_empty,
        f"; random sample of {len(source)} of {n_usable} usable rows" if len(source) < n_usable else "",
    )
    return source


def _texts(example: dict) -> list[tuple[str, str]]:
    """(column, text) of every text of a training example."""
    return [("qry", example["qry"]), ("pos_text", example["pos_text"])] + [
        ("neg_text", t) for t in example["neg_texts"]
    ]


def check_prompts(corpus: TrainingCorpus, processor) -> None:
    """Check every text of ``corpus`` against the model's prompt rules
    (:func:`~.prompt_checks.check_item_prompts`: ``check_text``, and per source the first query or positive with an
    image against ``max_length``) before the first forward. `DataError` names source, row, file and column.
    """
    for source in corpus.sources:
        check_item_prompts(_prompt_items(source), processor)


def _prompt_items(source: SourceRows):
    """The :data:`~.prompt_checks.PromptItem` of every text of ``source``: its query and positive with their image,
    its negatives' texts alone."""
    images = {"qry": "qry_image", "pos_text": "pos_image"}
    for i in range(len(source)):
        example = source.example(i)
        where = {"dataset": source.name, "row": example["row"], "file": source.file}
        for column, text in _texts(example):
            image = example[images[column]] if column in images else None
            opener = None if image is None else partial(load_image, image, dataset=source.name, row=example["row"])
            yield text, opener, where, f"column {column}: "


class TrainingCorpus(torch.utils.data.Dataset):
    """All sources of a data config as one map-style dataset.

    ``corpus[k]`` (flat index over the sources in config order) or ``corpus[(source_index, i)]`` returns the example
    dict ``{"qry": str, "qry_image": path | None, "pos_text": str, "pos_image": path | None, "neg_texts": [str],
    "neg_images": [path | None], "source": name, "row": int}``; ``neg_texts`` and ``neg_images`` have equal length
    (0 when the row has no hard negative) and ``row`` is the row's index in its source file.
    """

    def __init__(self, sources: list[SourceRows]):
        self.sources = list(sources)
        self.sizes = [len(s) for s in self.sources]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)  # (n_sources + 1,)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.sources]

    @property
    def weights(self) -> list[float]:
        return [s.weight for s in self.sources]

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """Map a flat index to (source_index, row position within that source's kept rows)."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a corpus of {len(self)} examples")
        source = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return source, int(index - self.offsets[source])

    def __getitem__(self, index: int | tuple[int, int]) -> dict:
        source, i = index if isinstance(index, tuple) else self.locate(int(index))
        return self.sources[source].example(i)


def load_corpus(config_path: str | os.PathLike, *, seed: int = 0) -> TrainingCorpus:
    """Load every source of a data-config YAML (see :mod:`.data_config`) into a validated :class:`TrainingCorpus`."""
    return TrainingCorpus([load_source(spec, seed=seed) for spec in load_data_config(config_path)])
