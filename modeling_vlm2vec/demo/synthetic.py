"""Synthetic MMEB-style data (coloured shapes) for demos and tests: all four meta-tasks, real schemas, no network.

``write_synthetic_mmeb(root)`` writes::

    root/images/{train,eval}/<Task>/*.png           small PNGs (one big saturated shape on a plain background)
    root/train/<Task>.parquet                       MMEB-train schema, image paths relative to root
    root/eval/<Task>/test.parquet                   MMEB-eval schema (positive first, distinct candidates)
    root/data_config.yaml                           the five train files as sources, image_dir "."
    root/synthetic.json                             the generation settings (marks the folder complete)

Tasks (the label vocabulary is shared by train and eval; eval images are drawn separately):
``SynCLS`` image -> "red cross"; ``SynVQA`` image + question (shape colour / shape / background colour) -> one
word; ``SynT2I`` caption -> image; ``SynI2T`` image -> caption; ``SynGround`` scene of 2-3 shapes + label -> the
crop of that shape. Training rows of SynCLS, SynVQA, SynT2I and SynGround carry 0, 1 or 2 hard negatives (lists, or a
plain string for SynVQA) so variable-k negatives are exercised; SynI2T has no negative columns at all.
The tasks are meant to be learnable by a tiny random VLM at 28-56 px: few classes, large shapes, strong colours.
``write_near_duplicate_eval(root)`` (opt-in, a separate folder) writes a harder held-out split of the same tasks
whose candidates all differ from the positive in one attribute only (benchmarks of hard-negative training).
Output is a pure function of the arguments (byte-identical parquet for the same seed); writing goes to a temporary
folder renamed into place, and a complete folder written with the same settings is reused as is.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from PIL import Image, ImageDraw

from ..common.errors import DataError

COLOURS = {"red": (230, 25, 25), "green": (20, 190, 40), "blue": (30, 60, 240), "yellow": (245, 225, 10)}
SHAPES = ("circle", "cross", "triangle")  # outlines that stay distinct at 14-px patch resolution
BACKGROUNDS = {"black": (0, 0, 0), "white": (255, 255, 255), "gray": (128, 128, 128)}
TASKS = {
    "SynCLS": "classification",
    "SynVQA": "vqa",
    "SynT2I": "retrieval",
    "SynI2T": "retrieval",
    "SynGround": "grounding",
}
IMAGE_TARGET = "<|image_1|> Represent the given image."
CLS_QUERY = "<|image_1|> Represent the given image for classification."
VQA_QUERY = "<|image_1|> Represent the given image with the following question: "
VQA_QUESTIONS = ("What colour is the shape?", "What shape is it?", "What colour is the background?")
T2I_QUERY = "Find me an everyday image that matches the given caption: "
I2T_QUERY = "<|image_1|> Find an image caption describing the given everyday image."
GROUND_QUERY = "<|image_1|> Select the portion of the image that isolates the object labeled as "
_LABELS = [f"{c} {s}" for c, s in itertools.product(COLOURS, SHAPES)]
_COMBOS = list(itertools.product(COLOURS, SHAPES, BACKGROUNDS))  # (colour, shape, background)
_VQA_ANSWERS = list(COLOURS) + list(SHAPES) + list(BACKGROUNDS)


def _caption(combo: tuple[str, str, str]) -> str:
    return f"a {combo[0]} {combo[1]} on a {combo[2]} background"


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, colour: str, box: tuple[int, int, int, int]) -> None:
    x0, y0, x1, y1 = box
    fill = COLOURS[colour]
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "cross":  # arms 40% of the side wide
        a, b = (x1 - x0) * 3 // 10, (y1 - y0) * 3 // 10
        draw.rectangle((x0 + a, y0, x1 - a, y1), fill=fill)
        draw.rectangle((x0, y0 + b, x1, y1 - b), fill=fill)
    else:
        draw.polygon([((x0 + x1) // 2, y0), (x0, y1), (x1, y1)], fill=fill)


def _shape_box(rng: np.random.Generator, x: int, y: int, cell: int) -> tuple[int, int, int, int]:
    """A random square box of 70-90% of the cell, fully inside the cell whose top-left corner is (x, y)."""
    side = int(rng.integers(int(cell * 0.7), int(cell * 0.9) + 1))
    dx, dy = (int(v) for v in rng.integers(0, cell - side + 1, size=2))
    return x + dx, y + dy, x + dx + side - 1, y + dy + side - 1


def _single(rng: np.random.Generator, combo: tuple[str, str, str], size: int) -> Image.Image:
    img = Image.new("RGB", (size, size), BACKGROUNDS[combo[2]])
    _draw_shape(ImageDraw.Draw(img), combo[1], combo[0], _shape_box(rng, 0, 0, size))
    return img


def _scene(
    rng: np.random.Generator, labels: list[str], background: str, size: int
) -> tuple[Image.Image, list[Image.Image]]:
    """2-3 labelled shapes in distinct quadrants; returns the scene and each shape's quadrant crop at full size."""
    img = Image.new("RGB", (size, size), BACKGROUNDS[background])
    draw, cell = ImageDraw.Draw(img), size // 2
    quadrants = rng.permutation(4)[: len(labels)]
    cells = [((q % 2) * cell, (q // 2) * cell) for q in quadrants]
    for label, (x, y) in zip(labels, cells):
        colour, shape = label.split()
        _draw_shape(draw, shape, colour, _shape_box(rng, x, y, cell))
    crops = [img.crop((x, y, x + cell, y + cell)).resize((size, size), Image.NEAREST) for x, y in cells]
    return img, crops


class _Writer:
    """Saves PNGs under ``root/images/<split>/<task>/`` and returns their root-relative paths."""

    def __init__(self, root: Path, split: str, task: str):
        self.root, self.rel = root, f"images/{split}/{task}"
        (root / self.rel).mkdir(parents=True, exist_ok=True)

    def save(self, img: Image.Image, stem: str) -> str:
        rel = f"{self.rel}/{stem}.png"
        img.save(self.root / rel, format="PNG")
        return rel


def _others(rng: np.random.Generator, pool: list, exclude: list, k: int) -> list:
    """``k`` distinct random members of ``pool`` not in ``exclude`` (order random)."""
    rest = [p for p in pool if p not in exclude]
    return [rest[i] for i in rng.permutation(len(rest))[:k]]


def _train_rows(task: str, rng: np.random.Generator, w: _Writer, n: int, size: int) -> dict[str, list]:
    """MMEB-train rows; row i has i % 3 hard negatives where the task has negatives."""
    rows: dict[str, list] = {"qry": [], "qry_image_path": [], "pos_text": [], "pos_image_path": []}
    negs: dict[str, list] = {"neg_text": [], "neg_image_path": []}
    combos = [_COMBOS[j] for j in rng.integers(0, len(_COMBOS), size=n)]
    images = [] if task == "SynGround" else [w.save(_single(rng, c, size), f"{i:05d}") for i, c in enumerate(combos)]
    for i, combo in enumerate(combos):
        k, label = i % 3, f"{combo[0]} {combo[1]}"
        if task == "SynCLS":  # hard negatives: the label with its colour or its shape changed
            row = (CLS_QUERY, images[i], label, "")
            near = [
                f"{_others(rng, list(COLOURS), [combo[0]], 1)[0]} {combo[1]}",
                f"{combo[0]} {_others(rng, list(SHAPES), [combo[1]], 1)[0]}",
            ]
            negs["neg_text"].append(_others(rng, near, [], k))
        elif task == "SynVQA":
            q = int(rng.integers(0, 3))
            row = (VQA_QUERY + VQA_QUESTIONS[q], images[i], combo[q], "")
            vocab = [list(COLOURS), list(SHAPES), list(BACKGROUNDS)][q]
            negs["neg_text"].append(_others(rng, vocab, [combo[q]], 1)[0] if k else "")
        elif task == "SynT2I":  # hard negatives: images of other captions
            row = (T2I_QUERY + _caption(combo), "", IMAGE_TARGET, images[i])
            others = _others(rng, [j for j, c in enumerate(combos) if c != combo], [], k)
            negs["neg_text"].append([IMAGE_TARGET] * len(others))
            negs["neg_image_path"].append([images[j] for j in others])
        elif task == "SynI2T":
            row = (I2T_QUERY, images[i], _caption(combo), "")
        else:  # SynGround: hard negatives are the crops of the scene's other shapes
            labels = [label] + _others(rng, _LABELS, [label], 1 + i % 2)
            scene, crops = _scene(rng, labels, combo[2], size)
            crop_paths = [w.save(c, f"{i:05d}_crop{j}") for j, c in enumerate(crops)]
            row = (GROUND_QUERY + label, w.save(scene, f"{i:05d}"), IMAGE_TARGET, crop_paths[0])
            negs["neg_text"].append([IMAGE_TARGET] * min(k, len(crops) - 1))
            negs["neg_image_path"].append(crop_paths[1 : 1 + min(k, len(crops) - 1)])
        for key, value in zip(rows, row):
            rows[key].append(value)
    rows.update({key: value for key, value in negs.items() if value})
    return rows


def _eval_rows(
    task: str, rng: np.random.Generator, w: _Writer, n: int, size: int, n_candidates: int
) -> dict[str, list]:
    """MMEB-eval rows: ``n_candidates`` distinct candidates per query, the positive first."""
    rows: dict[str, list] = {"qry_text": [], "qry_img_path": [], "tgt_text": [], "tgt_img_path": []}
    order = rng.permutation(len(_COMBOS))
    for i in range(n):
        combo, stem = _COMBOS[order[i % len(order)]], f"{i:05d}"
        label = f"{combo[0]} {combo[1]}"
        if task == "SynGround":
            labels = [label] + _others(rng, _LABELS, [label], 1 + i % 2)
            scene, crops = _scene(rng, labels, combo[2], size)
            extra = _others(rng, _LABELS, labels, n_candidates - len(labels))
            crops += [_scene(rng, [e], combo[2], size)[1][0] for e in extra]
            rows_ = (
                GROUND_QUERY + label,
                w.save(scene, stem),
                [IMAGE_TARGET] * len(crops),
                [w.save(c, f"{stem}_cand{j}") for j, c in enumerate(crops)],
            )
        elif task == "SynT2I":
            cands = [combo] + _others(rng, _COMBOS, [combo], n_candidates - 1)
            rows_ = (
                T2I_QUERY + _caption(combo),
                "",
                [IMAGE_TARGET] * len(cands),
                [w.save(_single(rng, c, size), f"{stem}_cand{j}") for j, c in enumerate(cands)],
            )
        else:
            image = w.save(_single(rng, combo, size), stem)
            if task == "SynCLS":
                query, answers = CLS_QUERY, [label] + _others(rng, _LABELS, [label], n_candidates - 1)
            elif task == "SynVQA":
                q = i % 3
                query = VQA_QUERY + VQA_QUESTIONS[q]
                answers = [combo[q]] + _others(rng, _VQA_ANSWERS, [combo[q]], n_candidates - 1)
            else:  # SynI2T
                query = I2T_QUERY
                answers = [_caption(c) for c in [combo] + _others(rng, _COMBOS, [combo], n_candidates - 1)]
            rows_ = (query, image, answers, [""] * len(answers))
        for key, value in zip(rows, rows_):
            rows[key].append(value)
    return rows


def _write_parquet(columns: dict[str, list], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)


def write_synthetic_mmeb(
    root: str | os.PathLike,
    seed: int = 0,
    n_train_per_task: int = 512,
    n_eval_per_task: int = 100,
    image_size: int = 56,
    n_candidates: int = 10,
) -> dict:
    """Write the synthetic MMEB train/eval data under ``root`` (see module docstring) and return its paths.

    Returns ``{"root", "images", "data_config", "eval_root": Path, "train": {task: parquet}, "eval": {task:
    parquet}, "tasks": {task: meta-task}}``. ``n_candidates`` (at most 10) is the candidate count per eval query.
    """
    root = Path(root)
    settings = {
        "format": 1,
        "seed": seed,
        "n_train_per_task": n_train_per_task,
        "n_eval_per_task": n_eval_per_task,
        "image_size": image_size,
        "n_candidates": n_candidates,
    }
    if not (2 <= n_candidates <= 10 and n_train_per_task >= 3 and n_eval_per_task >= 1 and image_size >= 16):
        raise ValueError(f"invalid synthetic data settings {settings}")
    paths = {
        "root": root,
        "images": root / "images",
        "data_config": root / "data_config.yaml",
        "eval_root": root / "eval",
        "train": {t: root / "train" / f"{t}.parquet" for t in TASKS},
        "eval": {t: root / "eval" / t / "test.parquet" for t in TASKS},
        "tasks": dict(TASKS),
    }
    _materialise(
        root,
        settings,
        lambda tmp: _fill_standard(tmp, seed, n_train_per_task, n_eval_per_task, image_size, n_candidates),
    )
    return paths


def _fill_standard(tmp: Path, seed: int, n_train: int, n_eval: int, image_size: int, n_candidates: int) -> None:
    """Write the standard train and eval splits and the data config into the staging folder ``tmp``."""
    for t, task in enumerate(TASKS):
        train_rng, eval_rng = np.random.default_rng([seed, 0, t]), np.random.default_rng([seed, 1, t])
        _write_parquet(
            _train_rows(task, train_rng, _Writer(tmp, "train", task), n_train, image_size),
            tmp / "train" / f"{task}.parquet",
        )
        _write_parquet(
            _eval_rows(task, eval_rng, _Writer(tmp, "eval", task), n_eval, image_size, n_candidates),
            tmp / "eval" / task / "test.parquet",
        )
    sources = [{"name": t, "path": f"train/{t}.parquet", "image_dir": "."} for t in TASKS]
    (tmp / "data_config.yaml").write_text(yaml.safe_dump({"sources": sources}, sort_keys=False))


def _materialise(root: Path, settings: dict, fill) -> None:
    """Reuse a complete folder written with ``settings``, or have ``fill(tmp)`` write a staging folder renamed to
    ``root`` (with ``synthetic.json`` last). Refuses a folder holding other data (:class:`DataError`)."""
    manifest = root / "synthetic.json"
    if manifest.is_file():
        if json.loads(manifest.read_text()) != settings:
            raise DataError(
                "folder holds synthetic data written with other settings; remove it or use another folder",
                file=str(root),
            )
        return
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise DataError("folder exists and is not synthetic data; remove it or use another folder", file=str(root))
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        fill(tmp)
        (tmp / "synthetic.json").write_text(json.dumps(settings, indent=1))
        if root.exists():
            root.rmdir()  # an empty placeholder folder (checked above)
        os.replace(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _neighbours(combo: tuple[str, str, str]) -> list[tuple[str, str, str]]:
    """The 7 combinations that differ from ``combo`` in exactly one of colour, shape and background."""
    return [c for c in _COMBOS if sum(a != b for a, b in zip(c, combo)) == 1]


def _near_rows(task: str, rng: np.random.Generator, w: _Writer, n: int, size: int) -> dict[str, list]:
    """MMEB-eval rows whose candidates are all near-duplicates of the positive (one attribute changed)."""
    rows: dict[str, list] = {"qry_text": [], "qry_img_path": [], "tgt_text": [], "tgt_img_path": []}
    order = rng.permutation(len(_COMBOS))
    for i in range(n):
        combo, stem = _COMBOS[order[i % len(order)]], f"{i:05d}"
        label = f"{combo[0]} {combo[1]}"
        near_labels = [f"{c} {s}" for c, s, b in _neighbours(combo) if b == combo[2]]  # 3 colours + 2 shapes
        if task == "SynGround":  # the scene's other shapes, then single shapes one attribute off, same background
            labels = [label] + _others(rng, _LABELS, [label], 1 + i % 2)
            scene, crops = _scene(rng, labels, combo[2], size)
            crops += [_scene(rng, [e], combo[2], size)[1][0] for e in near_labels if e not in labels]
            cands = [w.save(c, f"{stem}_cand{j}") for j, c in enumerate(crops)]
            rows_ = (GROUND_QUERY + label, w.save(scene, stem), [IMAGE_TARGET] * len(cands), cands)
        elif task == "SynT2I":
            cands = [
                w.save(_single(rng, c, size), f"{stem}_cand{j}") for j, c in enumerate([combo, *_neighbours(combo)])
            ]
            rows_ = (T2I_QUERY + _caption(combo), "", [IMAGE_TARGET] * len(cands), cands)
        else:
            image = w.save(_single(rng, combo, size), stem)
            if task == "SynCLS":
                query, answers = CLS_QUERY, [label, *near_labels]
            elif task == "SynVQA":  # the other answers of the same kind (colours, shapes or backgrounds)
                q = i % 3
                query = VQA_QUERY + VQA_QUESTIONS[q]
                answers = [combo[q]] + [v for v in [COLOURS, SHAPES, BACKGROUNDS][q] if v != combo[q]]
            else:  # SynI2T
                query, answers = I2T_QUERY, [_caption(c) for c in [combo, *_neighbours(combo)]]
            rows_ = (query, image, answers, [""] * len(answers))
        for key, value in zip(rows, rows_):
            rows[key].append(value)
    return rows


def write_near_duplicate_eval(
    root: str | os.PathLike, seed: int = 0, n_eval_per_task: int = 100, image_size: int = 56
) -> dict:
    """Opt-in harder held-out split: ``root/eval/<Task>/test.parquet`` (MMEB-eval schema, positive first) and its
    images under ``root/images/near/``, the same five tasks and prompts as :func:`write_synthetic_mmeb`, but every
    candidate is a near-duplicate of the positive: it differs in exactly one attribute (colour, shape or background;
    for SynVQA another answer of the question's kind; for SynGround also the scene's other shapes). 3-8 candidates
    per query (chance hit@1 per task: SynCLS 1/6, SynVQA about 1/3.3, SynT2I and SynI2T 1/8, SynGround 1/6-1/7).
    The standard data is not touched; drawn from its own random streams, reused like it when complete.

    Returns ``{"root", "eval_root": Path, "eval": {task: parquet}}``; evaluate with ``--dataset_name <eval_root>
    --image_dir <root>``.
    """
    root = Path(root)
    settings = {"format": 1, "split": "near_duplicate", "seed": seed, "n_eval_per_task": n_eval_per_task,
                "image_size": image_size}  # fmt: skip
    if not (n_eval_per_task >= 1 and image_size >= 16):
        raise ValueError(f"invalid synthetic data settings {settings}")

    def fill(tmp: Path) -> None:
        for t, task in enumerate(TASKS):
            rows = _near_rows(task, np.random.default_rng([seed, 2, t]), _Writer(tmp, "near", task), n_eval_per_task,
                              image_size)  # fmt: skip
            _write_parquet(rows, tmp / "eval" / task / "test.parquet")

    _materialise(root, settings, fill)
    return {"root": root, "eval_root": root / "eval", "eval": {t: root / "eval" / t / "test.parquet" for t in TASKS}}
