"""The documentation: the site builds in strict mode, and every code block it shows runs or is checked.

The convention (which marker a block carries, what the test does with it) is docs/contributing.md's; the
machinery is in ``docs_blocks.py`` and the folder ``run`` blocks execute in is ``docs_workspace.py``.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from docs_blocks import REPO, check_command, check_yaml, doc_pages, marker_problem, read_blocks, shell_commands
from docs_workspace import build_workspace

BLOCKS = [block for page in doc_pages() for block in read_blocks(page)]
RUN_PAGES = sorted({block.page for block in BLOCKS if block.mode == "run"})
CHECKED = [block for block in BLOCKS if block.mode == "check"]


def test_every_code_block_carries_a_valid_marker():
    problems = [f"{block.where}: {marker_problem(block)}" for block in BLOCKS if marker_problem(block)]
    assert not problems, "\n".join(problems)
    assert RUN_PAGES and CHECKED  # the pages do show runnable and checkable blocks


def test_marker_rules_refuse_unmarked_blocks_missing_reasons_and_wrong_languages(tmp_path):
    page = tmp_path / "probe.md"
    page.write_text(
        "```bash\nls\n```\n\n<!-- docs-test: static -->\n```bash\nls\n```\n\n"
        "<!-- docs-test: run -->\n```yaml\na: 1\n```\n\n<!-- docs-test: static needs a GPU -->\n```bash\nls\n```\n"
        "\n<!-- docs-test: check -->\n```bash\nls\n```\n"
    )
    problems = [marker_problem(block) for block in read_blocks(page, root=tmp_path)]
    assert problems[0].startswith("no <!-- docs-test") and problems[1].startswith("a static block needs a reason")
    assert problems[2].startswith("mode run takes bash, python blocks") and problems[3] is None
    assert problems[4].startswith("a check block needs a reason")


@pytest.mark.parametrize("block", CHECKED, ids=[block.where for block in CHECKED])
def test_checked_block_parses(block, monkeypatch, tmp_path):
    monkeypatch.setenv("MMEB_TRAIN_DIR", str(tmp_path))
    threads = torch.get_num_threads()  # importing a bench script sets the bench's thread count
    try:
        if block.lang == "yaml":
            check_yaml(block.code)
        else:
            for command in shell_commands(block.code):
                check_command(command)
    except SystemExit as exc:  # argparse refused the arguments (its message is on stderr)
        pytest.fail(f"{block.where}: the command's parser exited with status {exc.code}")
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize(
    "command",
    [
        "python evaluate_mmeb.py --model_name_or_path m --no_such_flag 1",
        "python -m modeling_vlm2vec.hub.export only_one_positional",
        "python bench/gradcache_step.py --plain nonsense",
        "accelerate launch --config_file configs/accelerate/ddp.yaml train.py --lora_rank 8",
        "make no-such-target",
        "vllm serve you/model",
    ],
)
def test_check_mode_refuses_what_the_command_would_refuse(command):
    with pytest.raises((SystemExit, ValueError, AssertionError)):
        check_command(command)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_backbone_dir):
    return build_workspace(tmp_path_factory.mktemp("docs-workspace"), tiny_backbone_dir)


def _environment(workspace: Path) -> dict:
    return dict(
        os.environ,
        HF_HOME=str(workspace / "hf-home"),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",  # `python` is this venv's
    )


@pytest.mark.parametrize("page", RUN_PAGES)
def test_run_blocks_of_the_page_succeed(page, workspace, tmp_path):
    folder = tmp_path / "workspace"
    shutil.copytree(workspace, folder, symlinks=True)
    env = _environment(folder)
    for block in (b for b in BLOCKS if b.page == page and b.mode == "run"):
        if block.lang == "python":
            script = tmp_path / f"block-{block.line}.py"
            script.write_text(block.code)
            commands = [[sys.executable, str(script)]]
        else:
            commands = [["bash", "-c", command] for command in shell_commands(block.code)]
        for command in commands:
            proc = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=900)
            assert proc.returncode == 0, f"{block.where}: {command[-1][:200]}\n{proc.stderr[-4000:]}"


def test_site_builds_strict_with_every_flag_in_the_cli_reference(tmp_path):
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    import dataclasses

    from modeling_vlm2vec.evaluation import EvalArguments
    from modeling_vlm2vec.mining import MiningArguments

    reference = (tmp_path / "site" / "cli" / "index.html").read_text()
    for arguments in (EvalArguments, MiningArguments):
        for field in dataclasses.fields(arguments):
            assert f"<code>--{field.name}</code>" in reference, f"--{field.name} missing from the CLI reference"
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    assert re.search(r"Vlm2VecModel", api) and "encode" in api


def test_strict_build_fails_on_a_broken_link_and_a_page_outside_the_nav(tmp_path):
    """The CI build is only worth something if these fail it: a small site with our validation rules."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text("# Home\n\nSee [the missing page](missing.md) and [an anchor](#nowhere).\n")
    (docs / "orphan.md").write_text("# Not in the nav\n")
    config = (REPO / "mkdocs.yml").read_text()
    validation = re.search(r"^validation:\n(?:  .*\n)+", config, re.M)[0]
    (tmp_path / "mkdocs.yml").write_text(f"site_name: probe\nstrict: true\nnav:\n  - index.md\n{validation}")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict"],
        cwd=tmp_path,
        env=dict(os.environ, NO_MKDOCS_2_WARNING="1"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    assert "missing.md" in proc.stderr and "nowhere" in proc.stderr and "orphan.md" in proc.stderr
