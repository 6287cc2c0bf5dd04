"""A built wheel holds every file of the package, so an installed copy reads what a checkout reads (the MMEB-V2 video
labels, the ``evaluate`` metric module behind ``MMEB_RANKING_METRIC_PATH``, the data configs)."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: What setup.cfg names besides the package: metadata, the two top-level modules, the model card template.
BUILD_INPUTS = ("setup.cfg", "pyproject.toml", "README.md", "train.py", "evaluate_mmeb.py", "model_cards")


def test_wheel_holds_every_file_of_the_package(tmp_path):
    source = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "modeling_vlm2vec", source / "modeling_vlm2vec", ignore=ignore)
    for name in BUILD_INPUTS:
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy)(REPO / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(source), "-w", "dist"],
        cwd=tmp_path,
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    packaged = {name for name in zipfile.ZipFile(wheel).namelist() if name.startswith("modeling_vlm2vec/")}
    expected = {
        path.relative_to(source).as_posix() for path in (source / "modeling_vlm2vec").rglob("*") if path.is_file()
    }
    assert "modeling_vlm2vec/evaluation/mmeb_ranking/mmeb_ranking.py" in expected
    assert sorted(expected - packaged) == []
