"""A Phi-3-V export read by other engines: its Hub files alone (a process without this package), and what vLLM's
``Phi3VForCausalLM`` reads, checked statically (vLLM's wheel needs CUDA). Facts about vLLM 0.33 are from its
``model_executor/models/phi3v.py`` (weight mapper, processor rule) and its pooling-config reader."""

import json
import re

import numpy as np
import pytest
from hub_isolation import emit_json_code, last_json_line, run_isolated
from PIL import Image, ImageDraw
from safetensors import safe_open

from modeling_vlm2vec import Vlm2VecModel
from modeling_vlm2vec.hub.export import export_checkpoint
from modeling_vlm2vec.processing_vlm2vec import load_backbone_processor

# vLLM 0.33 Phi3VForCausalLM.hf_to_vllm_mapper (first matching prefix wins) and the modules it builds
VLLM_PREFIXES = [
    ("model.vision_embed_tokens.wte", "embed_tokens"),
    ("model.vision_embed_tokens.", "vision_embed_tokens."),
    ("lm_head.", "language_model.lm_head."),
    ("model.", "language_model.model."),
]
VLLM_MODULES = re.compile(
    r"^(embed_tokens\.weight"
    r"|vision_embed_tokens\.(glb_GN|sub_GN|img_projection\.[02]\.(weight|bias))"
    r"|vision_embed_tokens\.img_processor\.vision_model\.(embeddings|pre_layrnorm|encoder\.layers\.\d+|post_layernorm)\..+"
    r"|language_model\.model\.(embed_tokens|norm)\.weight"
    r"|language_model\.model\.layers\.\d+\.(self_attn\.(qkv_proj|o_proj)|mlp\.(gate_up_proj|down_proj)"
    r"|input_layernorm|post_attention_layernorm)\.weight)$"
)
INSTRUCTION = "Represent the given image with the following question:"


def _picture(path, size):
    image = Image.new("RGB", size, "navy")
    ImageDraw.Draw(image).ellipse([4, 4, size[0] // 2, size[1] // 2], fill="yellow")
    image.save(path)
    return str(path)


@pytest.fixture(scope="module")
def export(tiny_backbone_dir, tmp_path_factory):
    model = Vlm2VecModel.from_backbone(tiny_backbone_dir("phi3_v"), strip_prompt=False, max_length=256)
    folder = export_checkpoint(model, tmp_path_factory.mktemp("phi3v-export") / "out")
    return model, folder


def test_vllm_builds_phi3v_and_every_weight_lands_in_one_of_its_modules(export):
    _, folder = export
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["Phi3VForCausalLM"] and config["model_type"] == "phi3_v"
    # the fields vLLM's Phi3HDImageEmbedding reads from the config
    assert config["img_processor"]["num_img_tokens"] and config["embd_layer"]["hd_transform_order"] == "sub_glb"
    with safe_open(folder / "model.safetensors", "pt") as f:
        keys = list(f.keys())
    mapped = []
    for key in keys:
        old, new = next((old, new) for old, new in VLLM_PREFIXES if key.startswith(old))
        mapped.append(new + key[len(old) :])
    assert [k for k in mapped if not VLLM_MODULES.match(k)] == []
    assert any(".img_processor.vision_model.encoder.layers.0.self_attn.q_proj." in k for k in mapped)
    modules = json.loads((folder / "modules.json").read_text())
    pooling = json.loads((folder / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_lasttoken"] and modules[-1]["type"].endswith("Normalize")
    # vLLM runs the processor with num_crops / num_img_tokens from preprocessor_config.json
    saved = json.loads((folder / "preprocessor_config.json").read_text())
    assert (saved["num_crops"], saved["num_img_tokens"]) == (4, 144)


def _vllm_token_ids(tokenizer, rendered: str, image_tokens: int) -> list[int]:
    """vLLM 0.33's Phi-3-V prompt rule, re-implemented: the chat template's output tokenized without special tokens;
    with an image, a leading BOS dropped, the text decoded, split at ``<|image_N|>`` and each piece tokenized with
    special tokens (its own BOS), each tag becoming the image's tokens (id of ``<|image|>``)."""
    ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    if not image_tokens:
        return ids
    if ids[0] == tokenizer.bos_token_id:
        ids = ids[1:]
    text = tokenizer.decode(ids)
    pieces = re.split(r"<\|image_\d+\|>", text)
    out = tokenizer(pieces[0])["input_ids"]
    for piece in pieces[1:]:
        out += [tokenizer.convert_tokens_to_ids("<|image|>")] * image_tokens + tokenizer(piece)["input_ids"]
    return out


def test_chat_template_renders_the_official_prompt_and_vllms_token_ids(export, tmp_path):
    model, folder = export
    tokenizer = load_backbone_processor(folder).tokenizer
    template = (folder / "chat_template.jinja").read_text()
    image = Image.open(_picture(tmp_path / "p.png", (90, 30))).convert("RGB")
    cases = [  # (text, image, the user message's parts), as vLLM's example sends them
        ("What is yellow?", image, [{"type": "image"}, {"type": "text", "text": "What is yellow?"}]),
        (None, image, [{"type": "image"}]),
        ("a yellow circle", None, [{"type": "text", "text": "a yellow circle"}]),
    ]
    for text, img, content in cases:
        messages = [{"role": "system", "content": INSTRUCTION}, {"role": "user", "content": content}]
        rendered = tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False)
        prompt = " ".join(p for p in (INSTRUCTION, text) if p)
        official = f"<|image_1|> {prompt}" if img is not None else prompt  # the official code's rule
        assert rendered == tokenizer.bos_token + official
        ours = model.processor([text], [img], instruction=INSTRUCTION)
        n_image = int((ours["input_ids"] == model.config.backbone_config.image_token_id).sum())
        assert _vllm_token_ids(tokenizer, rendered, n_image) == ours["input_ids"][0].tolist(), text


ISOLATED_CHILD = """
import json
from PIL import Image
from transformers import AutoModel
model = AutoModel.from_pretrained(FOLDER, trust_remote_code=True)
items = [{"text": t, "image": Image.open(p).convert("RGB")} if p else t for t, p in ITEMS]
out = {"class": type(model).__module__, "emb": model.encode(items, instruction=INSTRUCTION).tolist()}
"""


def test_hub_files_alone_embed_like_encode(export, tmp_path):
    model, folder = export
    items = [("What is yellow?", _picture(tmp_path / "wide.png", (120, 40))), ("a yellow circle", None)]
    items.append(("<|image_1|> Is it round?", _picture(tmp_path / "tall.png", (30, 100))))
    code = f"FOLDER, ITEMS, INSTRUCTION = {str(folder)!r}, {items!r}, {INSTRUCTION!r}\n"
    result = last_json_line(run_isolated(code + ISOLATED_CHILD + emit_json_code("out")))
    assert result["class"].startswith("transformers_modules.")
    ours = model.encode([{"text": t, "image": p} if p else t for t, p in items], instruction=INSTRUCTION)
    np.testing.assert_allclose(np.asarray(result["emb"]), ours.numpy(), rtol=0, atol=1e-5)


ST_CHILD = """
import json
from PIL import Image
from sentence_transformers import SentenceTransformer
st = SentenceTransformer(FOLDER, trust_remote_code=True)  # Phi-3-V is no transformers model type: Hub code builds it
out = {"ids": [], "emb": []}
for text, path, instruction, name in CASES:
    item = {"text": text, "image": Image.open(path).convert("RGB")} if path else text
    if path and text is None:
        item = item["image"]
    prompt = st.prompts[name] if name else instruction
    out["ids"].append(st[0].preprocess([item], prompt=prompt)["input_ids"][0].tolist())
    kwargs = {"prompt_name": name} if name else {"prompt": instruction}
    out["emb"].append(st.encode([item], **kwargs)[0].tolist())
"""


def test_sentence_transformers_reads_the_export_and_embeds_like_encode(export, tmp_path):
    """Stock sentence-transformers, in a process without this package, gives `encode()`'s token ids and embeddings
    (1e-5) for text, images of three shapes, image+text, a placed image tag and a text cut at ``max_length``."""
    model, folder = export
    wide, tall = _picture(tmp_path / "wide.png", (120, 40)), _picture(tmp_path / "tall.png", (30, 100))
    square = _picture(tmp_path / "square.png", (50, 50))
    long_text = " ".join(["a yellow circle on a navy background"] * 60)
    cases = [  # (text, image path, instruction, named prompt)
        ("a yellow circle", None, INSTRUCTION, None),
        ("a yellow circle", None, None, "MSCOCO_t2i"),
        (None, wide, None, None),
        (None, tall, None, "image_target"),
        ("What is yellow?", square, INSTRUCTION, None),
        ("Is <|image_1|> round?", tall, None, None),
        (long_text, None, INSTRUCTION, None),
        (long_text, wide, None, None),
    ]
    code = f"FOLDER, CASES = {str(folder)!r}, {cases!r}\n"
    theirs = last_json_line(run_isolated(code + ST_CHILD + emit_json_code("out")))
    prompts = json.loads((folder / "config_sentence_transformers.json").read_text())["prompts"]
    for (text, path, instruction, name), ids, emb in zip(cases, theirs["ids"], theirs["emb"]):
        instruction = prompts[name] if name else instruction
        image = Image.open(path).convert("RGB") if path else None
        assert ids == model.processor([text], [image], instruction=instruction)["input_ids"][0].tolist(), text
        item = {k: v for k, v in (("text", text), ("image", image)) if v is not None}
        ours = model.encode([item], instruction=instruction)[0].numpy()
        np.testing.assert_allclose(np.asarray(emb), ours, rtol=0, atol=1e-5, err_msg=str((text, path)))
    assert len(theirs["ids"][-2]) == 256 and len(theirs["ids"][-1]) > 256  # text rows cut, image rows whole


def test_processor_chat_template_gives_the_ids_of_the_prompt_a_batch_at_a_time(export, tmp_path):
    """`Phi3VProcessor.apply_chat_template` on a batch equals the processor on the official prompts (the rendered
    BOS is not doubled); an image setting passed per call is refused rather than ignored."""
    _, folder = export
    processor = load_backbone_processor(folder)
    image = Image.open(_picture(tmp_path / "p.png", (90, 30))).convert("RGB")
    batch = [
        [{"role": "system", "content": INSTRUCTION}, {"role": "user", "content": "a yellow circle"}],
        [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "Why?"}]}],
    ]
    got = processor.apply_chat_template(batch, tokenize=True, return_dict=True, padding=True)
    want = processor([f"{INSTRUCTION} a yellow circle", "<|image_1|> Why?"], [image])
    assert got.keys() == want.keys()
    for key in want:
        assert np.array_equal(np.asarray(got[key]), np.asarray(want[key])), key
    assert processor.apply_chat_template(batch[0]) == processor.tokenizer.bos_token + f"{INSTRUCTION} a yellow circle"
    with pytest.raises(ValueError, match="num_crops"):
        processor.apply_chat_template(batch[1], tokenize=True, processor_kwargs={"images_kwargs": {"num_crops": 16}})


def test_card_shows_the_trust_flag_and_no_vllm_command_for_phi3v(export):
    """transformers has no Phi-3-V class: the card's sentence-transformers and mteb lines trust the folder's code
    (the mteb test runs that snippet), and it offers no `vllm serve` line that would not work."""
    _, folder = export
    card = (folder / "README.md").read_text()
    engines = card[card.index("## Other engines") :]
    assert engines.count("trust_remote_code=True)") == 2 and "no `trust_remote_code` needed" not in engines
    assert "vllm serve" not in engines and "not for this folder yet" in engines
