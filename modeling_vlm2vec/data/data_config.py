"""The training data-config YAML: which MMEB-train style sources to mix, where their rows and images live.

Format::

    sources:
      - name: ImageNet_1K              # unique; used in logs and error messages
        path: TIGER-Lab/MMEB-train     # Hub dataset id, a local folder with the Hub layout, or a .parquet/.jsonl file
        subset: ImageNet_1K            # Hub config / sub-folder (optional)
        split: original                # optional, default "original"
        image_dir: ${MMEB_TRAIN_DIR}   # image paths in the rows are relative to this folder
        num_samples: 50000             # optional: a seeded random sample of at most this many usable rows
        weight: 1.0                    # optional, default 1.0: relative probability in homogeneous sampling

Relative ``path`` and ``image_dir`` values are resolved against the folder of the YAML file; ``$VAR`` / ``${VAR}``
are expanded from the environment (an unset variable is an error, so a placeholder never passes silently).
Every problem raises :class:`~modeling_vlm2vec.common.errors.DataError` naming the source and the config file.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..common.errors import DataError

DEFAULT_SPLIT = "original"
_REQUIRED_KEYS = ("name", "path", "image_dir")
_OPTIONAL_KEYS = ("subset", "split", "num_samples", "weight")
_ENV_VAR = re.compile(r"\$(\w+)|\$\{(\w+)\}")


@dataclass(frozen=True)
class SourceSpec:
    """One training source, paths already resolved (``path`` stays a plain string when it may be a Hub id)."""

    name: str
    path: str
    image_dir: Path
    subset: str | None = None
    split: str = DEFAULT_SPLIT
    num_samples: int | None = None
    weight: float = 1.0
    config_file: str | None = None  # the YAML this spec came from, for error messages


def _expand(value: str, *, key: str, source: str, config_file: str) -> str:
    missing = [a or b for a, b in _ENV_VAR.findall(value) if (a or b) not in os.environ]
    if missing:
        raise DataError(
            f"{key} {value!r} uses unset environment variable(s) {', '.join(missing)}", dataset=source, file=config_file
        )
    return os.path.expandvars(value)


def _parse_source(entry: object, index: int, base: Path, config_file: str) -> SourceSpec:
    if not isinstance(entry, dict):
        raise DataError(f"sources[{index}] must be a mapping, got {type(entry).__name__}", file=config_file)
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip():
        raise DataError(f"sources[{index}] needs a non-empty string 'name'", file=config_file)
    unknown = sorted(set(entry) - set(_REQUIRED_KEYS) - set(_OPTIONAL_KEYS))
    if unknown:
        raise DataError(
            f"unknown key(s) {unknown}; allowed: {list(_REQUIRED_KEYS + _OPTIONAL_KEYS)}",
            dataset=name,
            file=config_file,
        )
    for key in _REQUIRED_KEYS[1:]:
        if not isinstance(entry.get(key), str) or not entry[key].strip():
            raise DataError(f"needs a non-empty string {key!r}", dataset=name, file=config_file)
    for key in ("subset", "split"):
        if entry.get(key) is not None and not isinstance(entry[key], str):
            raise DataError(f"{key!r} must be a string", dataset=name, file=config_file)
    num_samples = entry.get("num_samples")
    if num_samples is not None and (
        isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1
    ):
        raise DataError(f"num_samples must be a positive integer, got {num_samples!r}", dataset=name, file=config_file)
    weight = entry.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 < weight < math.inf:
        raise DataError(f"weight must be a finite positive number, got {weight!r}", dataset=name, file=config_file)

    path = _expand(entry["path"], key="path", source=name, config_file=config_file)
    local = Path(path).expanduser()
    if not local.is_absolute():
        local = base / local
    # A value naming an existing file/folder is local; anything else stays as given (it may be a Hub dataset id).
    path = str(local) if local.exists() else path
    image_dir = Path(_expand(entry["image_dir"], key="image_dir", source=name, config_file=config_file)).expanduser()
    image_dir = image_dir if image_dir.is_absolute() else base / image_dir
    if not image_dir.is_dir():
        raise DataError(f"image_dir {str(image_dir)!r} is not a folder", dataset=name, file=config_file)
    return SourceSpec(
        name=name,
        path=path,
        image_dir=image_dir,
        subset=entry.get("subset"),
        split=entry.get("split") or DEFAULT_SPLIT,
        num_samples=num_samples,
        weight=float(weight),
        config_file=config_file,
    )


def load_data_config(config_path: str | os.PathLike) -> list[SourceSpec]:
    """Parse and validate a data-config YAML into source specs (nothing is loaded yet)."""
    config_file = str(config_path)
    try:
        with open(config_path, encoding="utf-8") as f:
            config = yaml.safe_load(f)
    except OSError as exc:
        raise DataError(f"cannot read data config ({exc.strerror})", file=config_file) from exc
    except yaml.YAMLError as exc:
        raise DataError(f"data config is not valid YAML ({exc})", file=config_file) from exc
    if not isinstance(config, dict) or not isinstance(config.get("sources"), list) or not config["sources"]:
        raise DataError("data config must be a mapping with a non-empty 'sources' list", file=config_file)
    if set(config) != {"sources"}:
        raise DataError(
            f"unknown top-level key(s) {sorted(set(config) - {'sources'})}; only 'sources' is allowed", file=config_file
        )
    base = Path(config_path).resolve().parent
    specs: list[SourceSpec] = []
    for index, entry in enumerate(config["sources"]):
        spec = _parse_source(entry, index, base, config_file)
        if any(s.name == spec.name for s in specs):
            raise DataError("source name is used more than once", dataset=spec.name, file=config_file)
        specs.append(spec)
    return specs
