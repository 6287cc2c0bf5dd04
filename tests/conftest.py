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


@pytest.fixture(scope="session")
def bos_export(tiny_backbone_dir, tmp_path_factory):
    """A LLaVA-Next export whose tokenizer adds BOS, as real Llama tokenizers do: (model, processor, folder)."""
    from tokenizers import processors

    from modeling_vlm2vec import Vlm2VecModel
    from modeling_vlm2vec.hub.export import export_checkpoint
    from modeling_vlm2vec.processing_vlm2vec import Vlm2VecProcessor, load_backbone_processor

    model = Vlm2VecModel.from_backbone(tiny_backbone_dir("llava_next"))
    backbone_processor = load_backbone_processor(tiny_backbone_dir("llava_next"))
    tokenizer = backbone_processor.tokenizer
    tokenizer._tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tokenizer.bos_token_id)]
    )
    assert tokenizer("a")["input_ids"][0] == tokenizer.bos_token_id
    processor = Vlm2VecProcessor.from_config(backbone_processor, model.config)
    folder = export_checkpoint(model, tmp_path_factory.mktemp("bos-export") / "out", processor=processor)
    return model, processor, folder


@pytest.fixture(scope="session")
def phi3v_export(tiny_backbone_dir, tmp_path_factory):
    """A tiny random Phi-3-V exported (the official settings: prompt kept unstripped, max_length 256): (model,
    folder)."""
    from modeling_vlm2vec import Vlm2VecModel
    from modeling_vlm2vec.hub.export import export_checkpoint

    model = Vlm2VecModel.from_backbone(tiny_backbone_dir("phi3_v"), strip_prompt=False, max_length=256)
    folder = export_checkpoint(model, tmp_path_factory.mktemp("phi3v-export") / "out")
    return model, folder


@pytest.fixture(scope="session")
def served_export(tiny_backbone_dir, tmp_path_factory):
    """A tiny Qwen2-VL export with Matryoshka sizes 16 and 32, loaded back as users load it: what the server tests
    serve."""
    from serve_helpers import export_tiny

    folder = tmp_path_factory.mktemp("served-export") / "export"
    return export_tiny(tiny_backbone_dir("qwen2_vl"), folder, matryoshka_dimensions=[16, 32])
