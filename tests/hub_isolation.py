"""Run Python code in a fresh process that cannot import this package, like a Hub user's machine.

The child gets: cwd elsewhere, no PYTHONPATH, offline Hub with a private HF_HOME, the repository removed from
`sys.path`, and an import hook refusing `modeling_vlm2vec` (the package is installed editable in the venv, so removing
paths alone would not hide it). Remote code then loads only from the checkpoint's own files.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

PRELUDE = f"""
import sys
import os
# the repository and its tests folder leave sys.path; site-packages stays, even when the venv lives in the repo
sys.path[:] = [p for p in sys.path if p not in ("", ".")
               and os.path.abspath(p) not in ({str(REPO_ROOT)!r}, {str(REPO_ROOT / "tests")!r})]


class _HidePackage:
    def find_spec(self, name, path=None, target=None):
        if name == "modeling_vlm2vec" or name.startswith("modeling_vlm2vec."):
            raise ModuleNotFoundError(f"No module named {{name!r}} (hidden: a Hub user does not have it)")
        return None


sys.meta_path.insert(0, _HidePackage())
"""

EPILOGUE = """
assert "modeling_vlm2vec" not in sys.modules, "the package leaked into the isolated process"
"""


def run_isolated(code: str, *, cwd: str | os.PathLike | None = None, timeout: float = 600) -> str:
    """Run `code` (after the isolation prelude) in a fresh interpreter; return its stdout, raise on failure."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_HOME=tempfile.mkdtemp(prefix="vlm2vec-isolated-hf-"),
        TOKENIZERS_PARALLELISM="false",
    )
    cwd = cwd or tempfile.mkdtemp(prefix="vlm2vec-isolated-cwd-")
    proc = subprocess.run(
        [sys.executable, "-c", PRELUDE + code + EPILOGUE],
        stdin=subprocess.DEVNULL,  # an interactive question would read EOF here, never wait
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise AssertionError(f"isolated process failed ({proc.returncode}):\n{proc.stderr[-6000:]}")
    return proc.stdout


JSON_MARKER = "@@vlm2vec-json@@"


def emit_json_code(expr: str) -> str:
    """Child-side statement printing `expr` as JSON after a marker (other output may share the line)."""
    return f"\nprint({JSON_MARKER!r} + json.dumps({expr}))\n"


def last_json_line(stdout: str) -> dict:
    """The JSON object an isolated script printed with `emit_json_code` (the last one)."""
    assert JSON_MARKER in stdout, f"no JSON printed; stdout tail: {stdout[-2000:]!r}"
    return json.loads(stdout.rsplit(JSON_MARKER, 1)[1].splitlines()[0])
