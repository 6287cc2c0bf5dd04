"""Test-wide setup: offline Hub, a private HF_HOME, and tiny backbones built once per session."""

import os
import tempfile

# Set before transformers / datasets are imported anywhere in the test process.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="vlm2vec-hf-home-"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_backbone_dir(tmp_path_factory):
    """`tiny_backbone_dir(model_type)` -> folder of a tiny random VLM checkpoint, built once per session."""
    from modeling_vlm2vec.demo import save_tiny_backbone

    built = {}

    def get(model_type: str):
        if model_type not in built:
            built[model_type] = save_tiny_backbone(model_type, tmp_path_factory.mktemp(f"tiny-{model_type}"))
        return built[model_type]

    return get
