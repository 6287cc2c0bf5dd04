"""Offline helpers to test an evaluation setup: a local MMEB-eval dataset writer and an encoder with known answers.

``KeyedEncoder`` embeds an item as the one-hot vector of its *key*: the first ``[<int>]`` in the text, else in the
image file name, else in the name of a video's frame folder, else the red value of an in-memory (PIL) image's first
pixel, else 0. Datasets whose queries and candidates carry keys therefore have scores known by construction (1 for
the same key, 0 otherwise), so expected hit@1 values can be written down by hand. With ``noise > 0`` a fixed
pseudo-random vector per item content is added, giving every item its own embedding. It takes videos as
``{"text": ..., "video": [frame paths]}`` and declares ``video_input = "frames"``.
"""

from __future__ import annotations

import os
import re
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

_KEY = re.compile(r"\[(\d+)\]")


def write_eval_dataset(root: str | os.PathLike, name: str, rows: list[dict], file: str = "test.parquet") -> Path:
    """Write ``rows`` (MMEB-eval schema dicts) to ``root/<name>/<file>``; return the parquet path."""
    path = Path(root) / name / file
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = {col: [row[col] for row in rows] for col in rows[0]}
    pq.write_table(pa.table(columns), path)
    return path


def write_image(image_dir: str | os.PathLike, rel_path: str, size: int = 8) -> Path:
    """A small solid PNG at ``image_dir/rel_path`` (colour derived from the path, so files differ)."""
    path = Path(image_dir) / rel_path
    path.parent.mkdir(parents=True, exist_ok=True)
    shade = sum(rel_path.encode()) % 256
    Image.new("RGB", (size, size), (shade, 255 - shade, 128)).save(path)
    return path


class KeyedEncoder(torch.nn.Module):
    """Stand-in for ``Vlm2VecModel.encode`` with known embeddings (see module doc); records every item it encodes.

    ``fail_after_calls``: raise ``RuntimeError`` on the call after that many ``encode`` calls (simulated crash).
    ``seed`` goes into a parameter, so encoders with different seeds have different fingerprints.
    """

    video_input = "frames"

    def __init__(self, dim: int = 16, seed: int = 0, fail_after_calls: int | None = None, noise: float = 0.0):
        super().__init__()
        self.dim, self.fail_after_calls, self.noise = dim, fail_after_calls, noise
        self.weight = torch.nn.Parameter(torch.full((1,), float(seed)))
        self.calls: list[list[dict]] = []

    @property
    def encoded(self) -> list[dict]:
        """Every item passed to ``encode`` so far, in order."""
        return [item for call in self.calls for item in call]

    def key(self, item: dict) -> int:
        image, frames = item.get("image"), item.get("video") or []
        if isinstance(image, Image.Image):
            found = _KEY.search(item.get("text") or "")
            return int(found.group(1)) if found else image.convert("RGB").getpixel((0, 0))[0]
        found = (
            _KEY.search(item.get("text") or "")
            or _KEY.search(os.path.basename(image or ""))
            or _KEY.search(os.path.basename(os.path.dirname(frames[0])) if frames else "")
        )
        return int(found.group(1)) if found else 0

    @staticmethod
    def _content(item: dict) -> bytes:
        image, frames = item.get("image"), item.get("video")
        if isinstance(image, Image.Image):
            return f"{item.get('text')}\0".encode() + image.convert("RGB").tobytes()
        return f"{item.get('text')}\0{image}".encode() + (f"\0{frames}".encode() if frames else b"")

    def encode(
        self,
        inputs: list[dict],
        batch_size: int = 8,
        show_progress_bar: bool | None = None,
        processor: object = None,
        **kwargs,
    ) -> np.ndarray:
        if self.fail_after_calls is not None and len(self.calls) >= self.fail_after_calls:
            raise RuntimeError("simulated crash during encoding")
        self.calls.append(list(inputs))
        out = np.zeros((len(inputs), self.dim), dtype=np.float32)  # (num_items, dim)
        out[np.arange(len(inputs)), [self.key(item) % self.dim for item in inputs]] = 1.0
        if self.noise:
            for row, item in zip(out, inputs):
                seed = zlib.crc32(self._content(item))
                row += self.noise * np.random.default_rng(seed).standard_normal(self.dim, dtype=np.float32)
        return out
