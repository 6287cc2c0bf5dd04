"""The Hub files (copied into every checkpoint) import only what a Hub user has, and use no private keywords."""

import ast
import sys
from pathlib import Path

import pytest

from modeling_vlm2vec.hub.checkpoint import REMOTE_CODE_FILES

PACKAGE = Path(__file__).resolve().parents[1] / "modeling_vlm2vec"
HUB_FILES = REMOTE_CODE_FILES
ALLOWED_ROOTS = {"torch", "transformers", "PIL"}


def _imports(tree: ast.Module) -> list[tuple[str, int]]:
    """(module, relative level) of every import statement, wherever it is in the file."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, 0) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.module or "", node.level))
    return found


@pytest.mark.parametrize("name", HUB_FILES)
def test_hub_file_imports_stdlib_torch_transformers_pil_and_siblings_only(name):
    tree = ast.parse((PACKAGE / name).read_text(encoding="utf-8"))
    siblings = {Path(f).stem for f in HUB_FILES}
    for module, level in _imports(tree):
        root = module.split(".")[0]
        if level:
            assert level == 1 and module in siblings, f"{name}: relative import {'.' * level}{module}"
        else:
            assert root in ALLOWED_ROOTS or root in sys.stdlib_module_names or root == "__future__", (
                f"{name}: imports {module}"
            )


@pytest.mark.parametrize("name", HUB_FILES)
def test_hub_file_passes_no_private_keyword(name):
    tree = ast.parse((PACKAGE / name).read_text(encoding="utf-8"))
    private = [
        (node.lineno, kw.arg)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        for kw in node.keywords
        if kw.arg and kw.arg.startswith("_")
    ]
    assert not private, f"{name}: private keyword arguments {private}"


def test_the_checks_see_a_bad_file():
    bad = ast.parse("from ..training import x\nimport numpy\nf(_raise=False)\n")
    assert ("training", 2) in _imports(bad) and ("numpy", 0) in _imports(bad)
    assert any(kw.arg == "_raise" for n in ast.walk(bad) if isinstance(n, ast.Call) for kw in n.keywords)
