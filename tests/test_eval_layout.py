"""Evaluation's layering, read from the source: three benchmark parts (``mmeb_v1``, ``mmeb_v2``, ``corpus``) and the
``evaluate`` metric module stand on ``base``; no part imports another part or the package root, ``base`` imports no
part, and nothing in evaluation imports a floor above it (``hub``, ``training``, ``mining``, ``pipeline``,
``demo``). Every import statement counts, wherever it is (function bodies, ``TYPE_CHECKING`` blocks)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "modeling_vlm2vec"
PARTS = {"base", "mmeb_v1", "mmeb_v2", "corpus", "mmeb_ranking"}
#: Floors of the package below evaluation; the Hub files (``*_vlm2vec.py``) are below it too.
LOWER_FLOORS = {"common", "data", "loading"}


def _imports(path: Path, package_dir: Path) -> list[tuple[int, str]]:
    """(line, absolute dotted name) of every import of ``path`` that names a module of the package at
    ``package_dir`` (relative imports resolved against the file's own package)."""
    root = package_dir.name
    own_package = [root, *path.parent.relative_to(package_dir).parts]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = own_package[: len(own_package) - node.level + 1]
                found.append((node.lineno, ".".join(base + ([node.module] if node.module else []))))
            else:
                found.append((node.lineno, node.module))
    return sorted((line, name) for line, name in found if name == root or name.startswith(root + "."))


def layering_violations(package_dir: Path) -> list[str]:
    """Every import in ``<package_dir>/evaluation`` that breaks the layering, as ``"file:line: what"``."""
    evaluation = package_dir / "evaluation"
    problems = []
    for path in sorted(evaluation.rglob("*.py")):
        where = path.relative_to(package_dir.parent).as_posix()
        inside = path.relative_to(evaluation).parts
        part = inside[0] if len(inside) > 1 else None  # None: the package root's own files
        for line, name in _imports(path, package_dir):
            target = name.split(".")[1:]
            if not target or target[0] != "evaluation":
                floor = target[0] if target else package_dir.name
                if floor not in LOWER_FLOORS and not floor.endswith("_vlm2vec"):
                    problems.append(f"{where}:{line}: imports {name}, a floor above evaluation")
            elif part is None:
                continue  # the root re-exports every part's public names
            elif len(target) == 1:
                problems.append(f"{where}:{line}: imports the evaluation package root")
            elif target[1] != part and not (target[1] == "base" and part != "base"):
                problems.append(f"{where}:{line}: {part} imports {name}")
    return problems


def test_evaluation_parts_import_only_base_and_lower_floors():
    assert layering_violations(PACKAGE) == []


def test_evaluation_root_holds_only_its_door_and_the_parts():
    evaluation = PACKAGE / "evaluation"
    files = {p.name for p in evaluation.iterdir() if p.is_file()}
    folders = {p.name for p in evaluation.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert files == {"__init__.py"}
    assert folders == PARTS
    for part in PARTS - {"mmeb_ranking"}:  # mmeb_ranking is a folder evaluate loads by path, not a package
        assert (evaluation / part / "__init__.py").is_file(), part


def test_the_parts_really_stand_on_base():
    """The check above reads real imports: each benchmark part imports base, and the resolution is right."""
    for part in ("mmeb_v1", "mmeb_v2", "corpus", "mmeb_ranking"):
        names = {name for path in (PACKAGE / "evaluation" / part).glob("*.py") for _, name in _imports(path, PACKAGE)}
        assert any(name.startswith("modeling_vlm2vec.evaluation.base.") for name in names), part
    runner = {name for _, name in _imports(PACKAGE / "evaluation" / "mmeb_v2" / "runner.py", PACKAGE)}
    assert {"modeling_vlm2vec.common.distributed", "modeling_vlm2vec.evaluation.mmeb_v2.data"} <= runner


def test_the_check_sees_every_kind_of_bad_import(tmp_path):
    package = tmp_path / "modeling_vlm2vec"
    files = {
        "evaluation/__init__.py": "from .mmeb_v1.runner import run\nfrom .corpus.runner import go\n",
        "evaluation/base/__init__.py": "",
        "evaluation/base/report.py": "from ...common.files import write\nfrom ..corpus import runner\n",
        "evaluation/mmeb_v1/__init__.py": "",
        "evaluation/mmeb_v1/runner.py": (
            "from ..base.report import write\nfrom .loading import EvalSet\nfrom ...prompting_vlm2vec import x\n"
            "def f():\n    from ...hub.card import card\n"
        ),
        "evaluation/mmeb_v2/__init__.py": "",
        "evaluation/mmeb_v2/runner.py": (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..mmeb_v1.loading import EvalSet\n"
            "from .. import evaluate_mmeb\n"
        ),
        "evaluation/corpus/__init__.py": "",
        "evaluation/corpus/runner.py": (
            "import modeling_vlm2vec.evaluation.mmeb_v2.data\nfrom ...data.images import load\n"
        ),
    }
    for name, text in files.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(text)
    assert layering_violations(package) == [
        "modeling_vlm2vec/evaluation/base/report.py:2: base imports modeling_vlm2vec.evaluation.corpus",
        "modeling_vlm2vec/evaluation/corpus/runner.py:1: corpus imports modeling_vlm2vec.evaluation.mmeb_v2.data",
        "modeling_vlm2vec/evaluation/mmeb_v1/runner.py:5: imports modeling_vlm2vec.hub.card, a floor above evaluation",
        "modeling_vlm2vec/evaluation/mmeb_v2/runner.py:3: mmeb_v2 imports modeling_vlm2vec.evaluation.mmeb_v1.loading",
        "modeling_vlm2vec/evaluation/mmeb_v2/runner.py:4: imports the evaluation package root",
    ]
