"""What vLLM reads from an export, checked statically (vLLM's wheel needs CUDA): the architecture, the weight names,
the pooling config and the chat template's token ids (vLLM's chat path renders the template and adds no special
tokens). Facts about vLLM 0.33 are from its model registry and pooling-config reader."""

import json

import pytest
from PIL import Image
from safetensors import safe_open

from modeling_vlm2vec import Vlm2VecModel
from modeling_vlm2vec.hub.export import export_checkpoint
from modeling_vlm2vec.processing_vlm2vec import load_backbone_processor

# vLLM 0.33: architectures registered as multimodal embedding models, and generative VLMs it runs with
# `--runner pooling` (converted: last-token pooling, normalised).
VLLM_EMBEDDING = {"LlavaNextForConditionalGeneration", "Qwen2VLForConditionalGeneration", "Phi3VForCausalLM"}
VLLM_CONVERTIBLE = {"Qwen2_5_VLForConditionalGeneration", "Idefics3ForConditionalGeneration"}
INSTRUCTION = "Represent the given image."


def _vllm_pooling(folder) -> tuple[str, bool]:
    """(pooling type, normalise) as vLLM derives them from modules.json and the Pooling module's config."""
    modules = json.loads((folder / "modules.json").read_text())
    pooling = next(m for m in modules if m["type"] == "sentence_transformers.models.Pooling")
    config = json.loads((folder / pooling["path"] / "config.json").read_text())
    modes = [k.removeprefix("pooling_mode_") for k, v in config.items() if k.startswith("pooling_mode_") and v is True]
    normalize = any(m["type"] == "sentence_transformers.models.Normalize" for m in modules)
    return {"lasttoken": "LAST", "cls_token": "CLS", "mean_tokens": "MEAN"}[modes[0]], normalize


@pytest.mark.parametrize("model_type", ["llava_next", "idefics3", "qwen2_vl", "qwen2_5_vl"])
def test_vllm_knows_the_architecture_and_reads_last_token_normalised_pooling(model_type, tiny_backbone_dir, tmp_path):
    folder = export_checkpoint(Vlm2VecModel.from_backbone(tiny_backbone_dir(model_type)), tmp_path / "out")
    config = json.loads((folder / "config.json").read_text())
    [architecture] = config["architectures"]
    assert architecture in VLLM_EMBEDDING | VLLM_CONVERTIBLE
    assert _vllm_pooling(folder) == ("LAST", True)
    with safe_open(folder / "model.safetensors", "pt") as f:  # vLLM strips only "" or "model."; no wrapper prefix
        roots = {k.split(".")[0] for k in f.keys()}
    assert roots == ({"model", "visual"} if model_type.startswith("qwen") else {"model"})


def test_chat_template_gives_our_token_ids_on_vllms_path_and_transformers(bos_export):
    model, processor, folder = bos_export
    assert (folder / "chat_template.jinja").read_text().endswith("{{ bos_token }}{{ prompt }}")
    served = load_backbone_processor(folder)  # what vLLM and sentence-transformers load
    image = Image.new("RGB", (40, 28), "red")
    cases = [
        (None, image, [{"type": "image"}]),
        ("What colour is it?", image, [{"type": "text", "text": "What colour is it?"}, {"type": "image"}]),
        ("a red circle", None, [{"type": "text", "text": "a red circle"}]),
        (
            "<|video_1|> a  red <|image_1|> circle",
            None,
            [{"type": "text", "text": "<|video_1|> a  red <|image_1|> circle"}],
        ),
        ("<|video_1|> a red circle", image, [{"type": "text", "text": "<|video_1|> a red circle"}, {"type": "image"}]),
    ]
    for text, img, content in cases:
        messages = [{"role": "system", "content": INSTRUCTION}, {"role": "user", "content": content}]
        ours = processor([text], [img], instruction=INSTRUCTION)["input_ids"][0].tolist()
        assert ours[0] == served.tokenizer.bos_token_id
        # vLLM: render the template to a string, tokenize without special tokens, expand the image
        rendered = served.tokenizer.apply_chat_template(messages, tokenize=False)
        kwargs = {"images": [img]} if img is not None else {}
        vllm_ids = list(served(text=[rendered], add_special_tokens=False, **kwargs)["input_ids"][0])
        assert vllm_ids == ours, (text, rendered)
        # transformers' processor path (sentence-transformers): sees the BOS and adds no second one
        with_images = [
            {**m, "content": [{**p, "image": img} if p["type"] == "image" else p for p in m["content"]]}
            if isinstance(m["content"], list)
            else m
            for m in messages
        ]
        st_ids = served.apply_chat_template(with_images, tokenize=True, return_dict=True)["input_ids"][0]
        assert list(st_ids) == ours, text


def test_two_images_are_refused_by_the_template(bos_export):
    _, _, folder = bos_export
    served = load_backbone_processor(folder)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "image"}]}]
    with pytest.raises(Exception, match="at most one image"):
        served.tokenizer.apply_chat_template(messages, tokenize=False)
