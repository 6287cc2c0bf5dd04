"""Load and validate a retrieval collection in the BEIR layout (a user's own corpus, queries and relevance judgements).

A folder (or a Hub dataset with configs ``corpus``, ``queries`` and ``qrels``, split ``test`` or its only one) holds
three tables, each as ``<name>.jsonl``, ``<name>.parquet``, or a folder ``<name>/`` holding the table's
``*.parquet`` shards or one ``.jsonl`` file (qrels may also be BEIR's ``qrels/<split>.tsv``, tab-separated with a
header; keep only the split to evaluate):

- ``corpus``: ``_id`` (string or integer), optional ``title``, ``text`` and ``image``;
- ``queries``: ``_id``, ``text`` and ``image``;
- ``qrels``: ``query-id``, ``corpus-id``, ``score`` (a non-negative integer grade; 0 = judged not relevant).

An ``image`` is a path relative to ``image_dir`` (confined to it), the image's bytes (a binary column), a
``{"bytes": ..., "path": ...}`` struct as Hugging Face ``datasets`` stores images, or null. Every item needs a text
or an image. Everything is checked before any work (files that are not UTF-8, duplicate ids, ids that ``run.trec``
cannot hold, qrels naming unknown ids, texts no prompt can be built from, missing or escaping image files,
undecodable images, grades that are not integers in 0..2**31-1), each problem raising
:class:`~modeling_vlm2vec.common.errors.DataError` naming the file and the row; :func:`check_collection_prompts`
adds the model's checks (literal backbone tokens, context length, ``max_length``).
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from PIL import Image

from ...common.errors import DataError
from ...common.files import text_lines
from ...common.locations import is_hub_id
from ...data.images import check_image_bytes, check_image_file, load_image, resolve_image_path
from ...data.prompt_checks import check_item_prompts
from ...prompting_vlm2vec import check_item_text

#: The largest grade: trec_eval and pytrec_eval read relevance grades as 32-bit integers.
MAX_GRADE = 2**31 - 1


@dataclass
class Collection:
    """A validated collection. Items are (text, image); an image is an absolute path, image bytes, or None.

    ``qrels[i]`` maps corpus positions to grades for query ``i``; ``fingerprint`` is a SHA-256 of all content;
    ``corpus_rows[i]`` / ``query_rows[i]`` is the (file, row) item ``i`` came from.
    """

    corpus_ids: list[str]
    corpus: list[tuple[str, str | bytes | None]]
    query_ids: list[str]
    queries: list[tuple[str, str | bytes | None]]
    qrels: list[dict[int, int]]
    fingerprint: str
    files: dict[str, str] = field(default_factory=dict)
    corpus_rows: list[tuple[str, int]] = field(default_factory=list)
    query_rows: list[tuple[str, int]] = field(default_factory=list)


def _find_table(folder: Path, name: str) -> list[Path]:
    """The files of table ``name``: ``<name>.jsonl``, ``<name>.parquet`` or the files of one kind in ``<name>/``."""
    kinds = (".parquet", ".jsonl", ".tsv") if name == "qrels" else (".parquet", ".jsonl")
    options = [
        [folder / f"{name}{suffix}"] for suffix in (".jsonl", ".parquet") if (folder / f"{name}{suffix}").is_file()
    ]
    if (folder / name).is_dir():
        options += [files for suffix in kinds if (files := sorted((folder / name).glob(f"*{suffix}")))]
    if not options:
        raise DataError(
            f"no {name} table (expected {name}.jsonl, {name}.parquet or {name}/*.parquet)", file=str(folder)
        )
    if len(options) > 1:
        found = ", ".join(str(files[0].relative_to(folder)) for files in options)
        raise DataError(f"more than one {name} table ({found}); keep one", file=str(folder))
    files = options[0]
    if len(files) > 1 and files[0].suffix != ".parquet":  # BEIR's qrels/{train,dev,test}.tsv are splits, not shards
        names = ", ".join(f.name for f in files)
        raise DataError(f"{name}/ holds several files ({names}); keep the split to evaluate", file=str(folder))
    return files


def _rows(files: list[Path]):
    """Yield (file, row number in that file, dict) for every row of a table."""
    for file in files:
        if file.suffix == ".parquet":
            import pyarrow.parquet as pq

            try:
                table = pq.read_table(file).to_pylist()
            except Exception as exc:  # pyarrow raises several types for a damaged file
                raise DataError(f"cannot read parquet ({type(exc).__name__}: {exc})", file=str(file)) from exc
            yield from ((str(file), i, row) for i, row in enumerate(table))
        elif file.suffix == ".tsv":
            lines = text_lines(file)
            header = next(lines, (0, ""))[1].rstrip("\n").split("\t")
            for i, line in lines:
                if line.strip():
                    yield str(file), i - 1, dict(zip(header, line.rstrip("\n").split("\t")))
        else:
            for i, line in text_lines(file):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError as exc:
                    raise DataError(f"invalid JSON ({exc})", row=i, file=str(file)) from exc
                if not isinstance(row, dict):
                    raise DataError("a row must be a JSON object", row=i, file=str(file))
                yield str(file), i, row


def _identifier(value: object, column: str, file: str, row: int) -> str:
    """An id as a string; it must be writable as one field of ``run.trec`` (UTF-8, no whitespace)."""
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        raise DataError(f"{column} must be a non-empty string or integer, got {value!r}", row=row, file=file)
    value = str(value)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise DataError(f"{column} {value!r} is not valid UTF-8 (a lone surrogate)", row=row, file=file) from None
    if any(c.isspace() for c in value):
        raise DataError(
            f"{column} {value!r} holds whitespace; run.trec separates its fields by whitespace", row=row, file=file
        )
    return value


def _grade(value: object, file: str, row: int) -> int:
    """A qrels score as an integer grade: ints, integral floats and digit strings (TSV) pass."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    elif isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise DataError(f"score must be a non-negative integer grade, got {value!r}", row=row, file=file)
    if value > MAX_GRADE:
        raise DataError(f"score {value} is above the largest grade {MAX_GRADE}", row=row, file=file)
    return value


class _ImageResolver:
    """Resolves a table's image values; path images are decoded once each (the shared
    :func:`~modeling_vlm2vec.data.images.check_image_file`) and their content digests kept for the fingerprint."""

    def __init__(self, image_dir: str | None):
        self.image_dir = image_dir
        self.digests: dict[str, str] = {}  # resolved path -> SHA-256 of the image bytes

    def __call__(self, value: object, file: str, row: int) -> str | bytes | None:
        if isinstance(value, dict):  # Hugging Face datasets' Image feature: embedded bytes win over the path
            value = value.get("bytes") or value.get("path")
        if value is None or value == "":
            return None
        if isinstance(value, (bytes, bytearray)):
            check_image_bytes(
                bytes(value), dataset=None, row=row, file=file, failure="embedded image cannot be decoded"
            )
            return bytes(value)
        if not isinstance(value, str):
            raise DataError(f"image must be a path, bytes or null, got {type(value).__name__}", row=row, file=file)
        if self.image_dir is None:
            raise DataError(f"row references image {value!r} but no --image_dir was given", row=row, file=file)
        path = resolve_image_path(self.image_dir, value, dataset=Path(file).name, row=row)
        if not path.is_file():
            raise DataError(f"image file not found: {str(path)!r}", row=row, file=file)
        if str(path) not in self.digests:
            self.digests[str(path)] = check_image_file(path, dataset=Path(file).name, row=row)
        return str(path)


def _items(rows, label: str, resolve: _ImageResolver, digest) -> tuple[list[str], list, list[tuple[str, int]]]:
    """Ids, (text, image) items and (file, row) origins of a corpus or queries table given as (file, row, record)
    triples."""
    ids, items, origins, seen = [], [], [], {}
    for file, row, record in rows:
        item_id = _identifier(record.get("_id"), "_id", file, row)
        if item_id in seen:
            raise DataError(f"duplicate _id {item_id!r} (first at {seen[item_id]})", row=row, file=file)
        seen[item_id] = f"{Path(file).name} row {row}"
        parts = [record.get("title"), record.get("text")]
        if any(p is not None and not isinstance(p, str) for p in parts):
            raise DataError("title and text must be strings or null", row=row, file=file)
        text = " ".join(p.strip() for p in parts if p and p.strip())
        try:
            check_item_text(text)
        except ValueError as exc:
            raise DataError(str(exc), row=row, file=file) from None
        image = resolve(record.get("image"), file, row)
        if not text and image is None:
            raise DataError(f"item {item_id!r} has neither text nor image", row=row, file=file)
        digest.update(json.dumps([item_id, text]).encode())
        if isinstance(image, bytes):
            digest.update(hashlib.sha256(image).digest())
        elif image is not None:  # the path and the content: the same path with other bytes is another item
            digest.update(f"{image}:{resolve.digests[image]}".encode())
        else:
            digest.update(b"None")
        ids.append(item_id)
        items.append((text, image))
        origins.append((file, row))
    if not ids:
        raise DataError("table has no rows", file=label)
    return ids, items, origins


def _hub_rows(repo: str, name: str):
    """Rows of config ``name`` of Hub dataset ``repo`` (its only split, else ``test``), images kept as bytes."""
    import datasets

    label = f"{repo}:{name}"
    try:
        splits = datasets.load_dataset(repo, name)
    except Exception as exc:  # offline, unknown config, ... -> one clear message instead of a traceback
        raise DataError(f"cannot load it from the Hub ({type(exc).__name__}: {exc})", file=label) from exc
    if len(splits) != 1 and "test" not in splits:
        raise DataError(f"several splits ({', '.join(splits)}) and none is 'test'", file=label)
    table = splits["test"] if len(splits) != 1 else next(iter(splits.values()))
    if isinstance(table.features.get("image"), datasets.Image):
        table = table.cast_column("image", datasets.Image(decode=False))  # {"bytes", "path"}, decoded when encoded
    return ((label, i, row) for i, row in enumerate(table))


def load_collection(folder: str, image_dir: str | None) -> Collection:
    """Load and validate the collection in ``folder`` (a local folder, or a Hub dataset id with configs ``corpus``,
    ``queries`` and ``qrels``; see the module doc); raises ``DataError`` on bad input."""
    names = ("corpus", "queries", "qrels")
    if is_hub_id(folder):
        labels = {name: f"{folder}:{name}" for name in names}
        tables = {name: _hub_rows(folder, name) for name in names}
    else:
        root = Path(folder).expanduser()
        if not root.is_dir():
            raise DataError("corpus folder not found", file=str(root))
        paths = {name: _find_table(root, name) for name in names}
        labels = {name: str(files[0]) for name, files in paths.items()}
        tables = {name: _rows(files) for name, files in paths.items()}
    resolve, digest = _ImageResolver(image_dir), hashlib.sha256()
    corpus_ids, corpus, corpus_rows = _items(tables["corpus"], labels["corpus"], resolve, digest)
    query_ids, queries, query_rows = _items(tables["queries"], labels["queries"], resolve, digest)
    corpus_pos = {item_id: i for i, item_id in enumerate(corpus_ids)}
    query_pos = {item_id: i for i, item_id in enumerate(query_ids)}
    qrels: list[dict[int, int]] = [{} for _ in query_ids]
    for file, row, record in tables["qrels"]:
        qid = _identifier(record.get("query-id"), "query-id", file, row)
        cid = _identifier(record.get("corpus-id"), "corpus-id", file, row)
        if qid not in query_pos:
            raise DataError(f"unknown query-id {qid!r} (not in the queries table)", row=row, file=file)
        if cid not in corpus_pos:
            raise DataError(f"unknown corpus-id {cid!r} (not in the corpus table)", row=row, file=file)
        grade_value = _grade(record.get("score"), file, row)
        judged = qrels[query_pos[qid]]
        if corpus_pos[cid] in judged:
            raise DataError(f"duplicate judgement for ({qid!r}, {cid!r})", row=row, file=file)
        judged[corpus_pos[cid]] = grade_value
        digest.update(json.dumps([qid, cid, grade_value]).encode())
    if not any(grade > 0 for judged in qrels for grade in judged.values()):
        raise DataError("no relevant judgement (score > 0) in the qrels", file=labels["qrels"])
    return Collection(
        corpus_ids, corpus, query_ids, queries, qrels, digest.hexdigest(), labels, corpus_rows, query_rows
    )


def check_collection_prompts(
    collection: Collection, processor, *, query_instruction: str | None, corpus_instruction: str | None
) -> None:
    """Check the instructions and every item text against the model's prompt rules
    (:func:`~modeling_vlm2vec.data.prompt_checks.check_item_prompts`), the first query and the first corpus item with
    an image processed with their instruction; `DataError` names the file and row (or the instruction)."""
    for name, instruction in (("query_instruction", query_instruction), ("corpus_instruction", corpus_instruction)):
        if instruction:
            check_item_prompts([(instruction, None, {}, f"--{name}: ")], processor)
    sides = (
        (collection.queries, collection.query_rows, query_instruction),
        (collection.corpus, collection.corpus_rows, corpus_instruction),
    )
    for items, origins, instruction in sides:
        check_item_prompts(
            (
                (
                    text,
                    None if image is None else partial(_open_for_check, image, file, row),
                    {"row": row, "file": file},
                    "",
                )
                for (text, image), (file, row) in zip(items, origins)
            ),
            processor,
            instruction=instruction,
        )


def _open_for_check(image: str | bytes, file: str, row: int) -> Image.Image:
    if isinstance(image, bytes):  # already decoded once by the loader
        with Image.open(io.BytesIO(image)) as img:
            img.load()
            return img.copy()
    return load_image(image, dataset=Path(file).name, row=row)


__all__ = ["MAX_GRADE", "Collection", "check_collection_prompts", "load_collection"]
