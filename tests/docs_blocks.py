"""The documentation's code blocks and how each is tested (the convention is docs/contributing.md's).

Every fenced block of ``README.md`` and ``docs/**/*.md`` is preceded by a marker line:

- ``<!-- docs-test: run -->``: executed in the docs workspace (``docs_workspace.py``) in document order; a Python
  block as a script of its own, a shell block one command at a time with ``bash``. Each must succeed.
- ``<!-- docs-test: check REASON -->``: not run (a GPU, the network or an hour would be needed), but checked: each shell
  command's arguments are parsed by the command's own parser (``python X.py``, ``python -m M``, ``accelerate
  launch``: accelerate's parser, then the script's), a recipe YAML given alone is parsed as ``train.py`` parses it
  (with ``bf16: false, use_cpu: true`` so a GPU recipe parses on a CPU), a ``make`` target must exist; a YAML block
  is loaded as a data config (a ``sources`` list, with ``MMEB_TRAIN_DIR`` set) or else as recipe keys (added to
  ``configs/demo.yaml``).
- ``<!-- docs-test: static REASON -->``: shown only, with the reason it cannot be run or checked.
"""

from __future__ import annotations

import re
import shlex
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "docs" / "hooks"))

from cli_parsers import capture_parser  # noqa: E402

MARKER = re.compile(r"^\s*<!-- docs-test: (?P<mode>\S+)(?: (?P<reason>.*?))? -->\s*$")
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})(?P<lang>[\w+-]*)")
MODES = {"run": {"python", "bash"}, "check": {"bash", "yaml"}, "static": None}
#: Recipe keys a GPU recipe sets that cannot be parsed on a CPU machine, and what check mode parses instead.
CPU_OVERRIDES = {"bf16": False, "use_cpu": True}


@dataclass(frozen=True)
class Block:
    page: str  # path relative to the repository root
    line: int  # 1-based line of the opening fence
    lang: str
    mode: str | None  # None: no marker
    reason: str | None
    code: str

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def doc_pages() -> list[Path]:
    """README.md and every Markdown page of the docs site (the hooks folder holds code, not pages)."""
    pages = [REPO / "README.md"] + sorted((REPO / "docs").rglob("*.md"))
    return [p for p in pages if "hooks" not in p.relative_to(REPO).parts]


def read_blocks(page: Path, root: Path = REPO) -> list[Block]:
    """The fenced code blocks of `page` (named relative to `root`), each with the marker on the nearest non-blank
    line above it."""
    lines = page.read_text().splitlines()
    blocks, i, previous = [], 0, ""
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            previous = lines[i] if lines[i].strip() else previous
            i += 1
            continue
        fence = opening["fence"]
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip().startswith(fence)), len(lines))
        indent = len(opening["indent"])
        code = "\n".join(line[indent:] for line in lines[i + 1 : end]) + "\n"
        marker = MARKER.match(previous)
        blocks.append(
            Block(
                page=str(page.relative_to(root)),
                line=i + 1,
                lang=opening["lang"],
                mode=marker["mode"] if marker else None,
                reason=marker["reason"] if marker else None,
                code=code,
            )
        )
        i, previous = end + 1, ""
    return blocks


def marker_problem(block: Block) -> str | None:
    """Why `block` breaks the convention, or None."""
    if block.mode is None:
        return "no <!-- docs-test: run|check|static REASON --> marker on the line above"
    if block.mode not in MODES:
        return f"unknown mode {block.mode!r}"
    if block.mode != "run" and not block.reason:
        return f"a {block.mode} block needs a reason (why it cannot run here)"
    if block.mode == "static":
        return None
    if block.lang not in MODES[block.mode]:
        return f"mode {block.mode} takes {', '.join(sorted(MODES[block.mode]))} blocks, not {block.lang or 'plain'!r}"
    return None


def shell_commands(code: str) -> list[str]:
    """The commands of a shell block: continuation lines joined, blank and comment-only lines left out."""
    joined = re.sub(r"\\\n\s*", " ", code)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


def _strip_environment(tokens: list[str]) -> list[str]:
    while tokens and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", tokens[0]):
        tokens = tokens[1:]
    return tokens


def _parse_recipe(parser, recipe: dict) -> None:
    fields = {action.dest for action in parser._actions}
    parser.parse_dict({**recipe, **{k: v for k, v in CPU_OVERRIDES.items() if k in fields}})


def _parse_arguments(command: str, args: list[str]) -> None:
    from transformers import HfArgumentParser

    parser = capture_parser(command)
    if not isinstance(parser, HfArgumentParser):
        parser.parse_args(args)
    elif len(args) == 1 and args[0].endswith((".yaml", ".yml")):
        _parse_recipe(parser, yaml.safe_load((REPO / args[0]).read_text()))
    else:
        parser.parse_args_into_dataclasses(args)


def check_command(line: str) -> None:
    """Parse one documented command line as the command itself would; raise on anything it would refuse."""
    tokens = _strip_environment(shlex.split(line, comments=True))
    program, args = tokens[0], tokens[1:]
    if program == "make":
        targets = set(re.findall(r"^([\w.-]+):", (REPO / "Makefile").read_text(), re.M))
        wanted = [a for a in args if "=" not in a]
        assert wanted and set(wanted) <= targets, f"make targets {wanted} not all in the Makefile ({sorted(targets)})"
        return
    if program == "accelerate":
        from accelerate.commands.launch import launch_command_parser

        launch = launch_command_parser().parse_args(args[1:] if args[:1] == ["launch"] else ["<missing launch>"])
        if launch.config_file:
            assert isinstance(yaml.safe_load((REPO / launch.config_file).read_text()), dict), launch.config_file
        command = f"-m {launch.training_script}" if launch.module else launch.training_script
        return _parse_arguments(command, list(launch.training_script_args))
    assert program == "python", f"check mode runs python, accelerate launch and make; mark {program!r} static"
    if args[0] == "-m":
        return _parse_arguments(f"-m {args[1]}", args[2:])
    return _parse_arguments(args[0], args[1:])


def check_yaml(code: str) -> None:
    """Load a YAML block as a data config (it has ``sources``) or as recipe keys of ``train.py``.

    A data config's ``${MMEB_TRAIN_DIR}`` must be set in the environment by the caller.
    """
    from transformers import HfArgumentParser

    from modeling_vlm2vec.data.data_config import load_data_config
    from modeling_vlm2vec.pipeline import TRAIN_ARGUMENTS

    content = yaml.safe_load(code)
    if isinstance(content, dict) and "sources" in content:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "data.yaml"
            path.write_text(code)
            assert load_data_config(path), "the data config lists no source"
    else:  # keys to add to a recipe: parsed on top of the demo recipe
        demo = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
        _parse_recipe(HfArgumentParser(TRAIN_ARGUMENTS), {**demo, **content})
