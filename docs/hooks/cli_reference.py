"""MkDocs hook: ``<!-- cli-reference: COMMAND -->`` in a page becomes the table of that command's flags.

The table is read from the parser the command builds (`cli_parsers.capture_parser`), so the reference cannot drift
from the code: a flag added to a dataclass or an argparse parser appears at the next build. For ``train.py`` the
fields of transformers' ``TrainingArguments`` are left out (they are transformers' own, documented there).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cli_parsers import capture_parser  # noqa: E402

MARKER = re.compile(r"^<!-- cli-reference: (?P<command>.+?) -->$", re.M)


def _transformers_fields() -> set[str]:
    from transformers import TrainingArguments

    return {field.name for field in dataclasses.fields(TrainingArguments)}


def _snake(flag: str) -> str:
    return "--" + flag[2:].replace("-", "_") if flag.startswith("--") else flag


def _cell(text: object) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def flag_rows(command: str) -> list[tuple[str, str, str]]:
    """(flags, default, help) of every option and positional argument `command` accepts, in parser order."""
    parser = capture_parser(command)
    skip = _transformers_fields() if command == "train.py" else set()
    rows = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or action.dest in skip:
            continue
        if action.dest.startswith("no_") and action.dest[3:] in {a.dest for a in parser._actions}:
            continue  # HfArgumentParser's generated --no_<flag> twin of a boolean that defaults to True
        # HfArgumentParser adds a dashed alias of every snake_case flag: show the flag once, as documented.
        names = [
            name for name in action.option_strings if _snake(name) == name or _snake(name) not in action.option_strings
        ]
        flags = ", ".join(f"`{flag}`" for flag in names) or f"`{action.dest}` (positional)"
        default = "" if action.default in (None, argparse.SUPPRESS) else f"`{action.default!r}`"
        rows.append((flags, default, _cell(action.help or "")))
    return rows


def reference_table(command: str) -> str:
    lines = ["| flag | default | meaning |", "|---|---|---|"]
    lines += [f"| {flags} | {default} | {text} |" for flags, default, text in flag_rows(command)]
    return "\n".join(lines)


def on_page_markdown(markdown: str, **kwargs) -> str:
    return MARKER.sub(lambda match: reference_table(match["command"]), markdown)
