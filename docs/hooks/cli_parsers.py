"""The argument parser of one of this repository's command lines, taken from the command itself without running it.

Used by the CLI reference page (`cli_reference.py`, an MkDocs hook) and by the documentation test
(``tests/test_docs_snippets.py``), so flags are never retyped: both read the parser the command really builds.

A command is named as it is typed after ``python``: a script path relative to the repository root
(``train.py``, ``bench/gradcache_step.py``) or ``-m <module>``. The command's ``main()`` runs until it asks its
parser to parse; at that moment the parser is captured and the command stops, before any work is done.
"""

from __future__ import annotations

import argparse
import logging
import runpy
import sys
import warnings
from pathlib import Path

from transformers import HfArgumentParser

REPO = Path(__file__).resolve().parents[2]


class _Captured(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        super().__init__("parser captured")
        self.parser = parser


def _stop(self, *args, **kwargs):
    raise _Captured(self)


# Every way our commands hand their arguments to a parser: argparse (parse_args goes through parse_known_args) and
# HfArgumentParser's YAML and dict entry points.
_ENTRY_POINTS = (
    (argparse.ArgumentParser, "parse_known_args"),
    (HfArgumentParser, "parse_yaml_file"),
    (HfArgumentParser, "parse_dict"),
    (HfArgumentParser, "parse_args_into_dataclasses"),
)


def capture_parser(command: str) -> argparse.ArgumentParser:
    """The parser `command` (``"train.py"``, ``"bench/x.py"`` or ``"-m package.module"``) builds for its arguments.

    Raises `LookupError` when the command finishes without parsing arguments, `FileNotFoundError` for a script
    that does not exist.
    """
    saved_argv, saved_path = sys.argv[:], sys.path[:]
    # A command's main() configures logging before it parses (basicConfig, its own logger's level): undo that.
    loggers = [logging.root] + [
        obj for obj in logging.Logger.manager.loggerDict.values() if isinstance(obj, logging.Logger)
    ]
    saved_logging = [(logger, logger.level, logger.handlers[:]) for logger in loggers]
    known = set(loggers)
    originals = [(cls, name, cls.__dict__[name]) for cls, name in _ENTRY_POINTS]
    try:
        for cls, name, _ in originals:
            setattr(cls, name, _stop)
        if command.startswith("-m "):
            module = command[3:].strip()
            sys.argv = [module]
            with warnings.catch_warnings():  # the package imported the module already; running it again is the point
                warnings.simplefilter("ignore", RuntimeWarning)
                runpy.run_module(module, run_name="__main__", alter_sys=False)
        else:
            script = REPO / command
            if not script.is_file():
                raise FileNotFoundError(f"no script {command} in the repository")
            sys.argv = [str(script)]
            sys.path.insert(0, str(script.parent))  # as `python script.py` does: the script's folder first
            runpy.run_path(str(script), run_name="__main__")
    except _Captured as captured:
        return captured.parser
    except SystemExit:
        pass
    finally:
        for cls, name, original in originals:
            setattr(cls, name, original)
        sys.argv, sys.path[:] = saved_argv, saved_path
        for logger, level, handlers in saved_logging:
            logger.setLevel(level)
            logger.handlers[:] = handlers
        for logger in logging.Logger.manager.loggerDict.values():  # loggers the run created: as if never configured
            if isinstance(logger, logging.Logger) and logger not in known:
                logger.setLevel(logging.NOTSET)
    raise LookupError(f"{command} finished without parsing its arguments")
