"""What every command line of the project shares: YAML-or-flags parsing and the bad-input exit convention."""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Callable

import yaml
from transformers import HfArgumentParser

from .errors import DataError


def parse_dataclasses(parser: HfArgumentParser, argv: list[str]) -> tuple:
    """One YAML file as the only argument (keys = dataclass fields), or ``--snake_case`` flags.

    Bad input raises `DataError` naming the file: an unreadable or invalid YAML file, a key no dataclass knows, a
    value the dataclasses' own checks refuse, a non-finite number (``.inf``, ``.nan``) in any float field. Flags
    the parser cannot read exit through argparse (usage line, status 2).
    """
    where = argv[0] if len(argv) == 1 and argv[0].endswith((".yaml", ".yml")) else None
    try:
        parsed = parser.parse_yaml_file(where) if where else parser.parse_args_into_dataclasses(argv)
    except OSError as exc:
        raise DataError(f"cannot read the arguments file ({exc.strerror or exc})", file=where) from exc
    except yaml.YAMLError as exc:
        # PyYAML's message spans several lines (with a caret drawing); one error line keeps the exit convention
        raise DataError(f"not valid YAML ({' '.join(str(exc).split())})", file=where) from exc
    except (ValueError, TypeError) as exc:  # unknown keys, wrong types, values __post_init__ refuses
        raise DataError(f"bad arguments: {exc}", file=where) from exc
    for args in parsed:
        for field in dataclasses.fields(args):
            value = getattr(args, field.name, None)
            values = value if isinstance(value, (list, tuple)) else [value]
            if any(isinstance(v, float) and not math.isfinite(v) for v in values):
                raise DataError(f"{field.name} must be a finite number, got {value!r}", file=where)
    return parsed


def run_cli(body: Callable[[], object]) -> int:
    """Run a command's body: exit status 0, or 2 with ``error: <message>`` on stderr for a `DataError`."""
    try:
        body()
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
