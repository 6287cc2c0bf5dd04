"""What every command line of the project shares: YAML-or-flags parsing and the bad-input exit convention."""

from __future__ import annotations

import sys
from collections.abc import Callable

from transformers import HfArgumentParser

from .errors import DataError


def parse_dataclasses(parser: HfArgumentParser, argv: list[str]) -> tuple:
    """One YAML file as the only argument (keys = dataclass fields), or ``--snake_case`` flags."""
    if len(argv) == 1 and argv[0].endswith((".yaml", ".yml")):
        return parser.parse_yaml_file(argv[0])
    return parser.parse_args_into_dataclasses(argv)


def run_cli(body: Callable[[], object]) -> int:
    """Run a command's body: exit status 0, or 2 with ``error: <message>`` on stderr for a `DataError`."""
    try:
        body()
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
