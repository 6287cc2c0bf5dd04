"""A Phi-3-V export read by other engines: its Hub files alone (a process without this package), sentence-transformers,
the weights and files vLLM's ``Phi3VForCausalLM`` reads, checked statically (vLLM's wheel needs CUDA), and the model
card. Facts about vLLM 0.33 are from its ``model_executor/models/phi3v.py`` (weight mapper, weight loading), its
pooling adapter and its pooling-config reader; its config, processor and prompt path are
``tests/test_engines_phi3v_vllm.py``'s."""

import json
import re

import numpy as np
import pytest
from hub_isolation import emit_json_code, last_json_line, run_isolated
from PIL import Image, ImageDraw
from safetensors import safe_open

from modeling_vlm2vec import Vlm2VecConfig
from modeling_vlm2vec.hub.card import render_model_card
from modeling_vlm2vec.hub.engines import vllm_unsupported
from modeling_vlm2vec.phi3v_config_vlm2vec import Phi3VConfig
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


def _vllm_parameters(config: dict) -> set[str]:
    """The checkpoint tensors (under vLLM's names) a vLLM 0.33 pooling ``Phi3VForCausalLM`` loads for ``config``: the
    Llama decoder (qkv / gate_up already fused, as Phi-3 stores them); the CLIP tower up to the feature layer only
    (``layer_idx`` -2: ``phi3v.py:99-113`` builds ``num_hidden_layers - 1`` layers and ``clip.py:667-676`` then no
    post-layernorm); no ``lm_head`` (the pooling adapter turns it into a parameterless stand-in,
    ``adapters.py:145-150``) and no duplicate ``wte`` (``phi3v.py:690-692`` ties ``embed_tokens`` to the decoder's)."""
    lm = "language_model.model."
    names = {f"{lm}embed_tokens.weight", f"{lm}norm.weight"}
    layer = ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")
    for i in range(config["num_hidden_layers"]):
        names |= {f"{lm}layers.{i}.{m}.weight" for m in (*layer, "input_layernorm", "post_attention_layernorm")}
    tower = "vision_embed_tokens.img_processor.vision_model."
    embeddings = ("class_embedding", "patch_embedding.weight", "position_embedding.weight")
    names |= {f"{tower}embeddings.{e}" for e in embeddings} | {f"{tower}pre_layrnorm.{k}" for k in ("weight", "bias")}
    parts = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2")
    for j in range(config["vision_config"]["num_hidden_layers"] - 1):
        for part in (*parts, "layer_norm1", "layer_norm2"):
            names |= {f"{tower}encoder.layers.{j}.{part}.{kind}" for kind in ("weight", "bias")}
    names |= {"vision_embed_tokens.glb_GN", "vision_embed_tokens.sub_GN"}
    return names | {f"vision_embed_tokens.img_projection.{i}.{kind}" for i in (0, 2) for kind in ("weight", "bias")}


def test_vllm_builds_phi3v_and_every_weight_lands_in_one_of_its_modules(phi3v_export):
    _, folder = phi3v_export
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
    assert _vllm_parameters(config) - set(mapped) == set()  # and every tensor vLLM's model needs is there
    modules = json.loads((folder / "modules.json").read_text())
    pooling = json.loads((folder / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_lasttoken"] and modules[-1]["type"].endswith("Normalize")
    # vLLM runs the processor with num_crops / num_img_tokens from preprocessor_config.json
    saved = json.loads((folder / "preprocessor_config.json").read_text())
    assert (saved["num_crops"], saved["num_img_tokens"]) == (4, 144)


ISOLATED_CHILD = """
import json
from PIL import Image
from transformers import AutoModel
model = AutoModel.from_pretrained(FOLDER, trust_remote_code=True)
items = [{"text": t, "image": Image.open(p).convert("RGB")} if p else t for t, p in ITEMS]
out = {"class": type(model).__module__, "emb": model.encode(items, instruction=INSTRUCTION).tolist()}
"""


def test_hub_files_alone_embed_like_encode(phi3v_export, tmp_path):
    model, folder = phi3v_export
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


def test_sentence_transformers_reads_the_export_and_embeds_like_encode(phi3v_export, tmp_path):
    """Stock sentence-transformers, in a process without this package, gives `encode()`'s token ids and embeddings
    (1e-5) for text, images of three shapes, image+text, a placed image tag and a text cut at ``max_length``."""
    model, folder = phi3v_export
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


def test_processor_chat_template_gives_the_ids_of_the_prompt_a_batch_at_a_time(phi3v_export, tmp_path):
    """`Phi3VProcessor.apply_chat_template` on a batch equals the processor on the official prompts (the rendered
    BOS is not doubled); an image setting passed per call is refused rather than ignored."""
    _, folder = phi3v_export
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


def test_card_trusts_the_folder_and_offers_vllm_only_for_phi35vs_vision_tower(phi3v_export):
    """transformers has no Phi-3-V class: the card's sentence-transformers and mteb lines trust the folder's code
    (the mteb test runs that snippet). vLLM's `Phi3VForCausalLM` always builds Phi-3.5-V's CLIP ViT-L/14-336
    (vLLM 0.33 ``phi3v.py:83-94``): the tiny model's card says why vLLM cannot serve it, and the card of a model with
    that tower gives the `vllm serve` line with `--trust-remote-code`."""
    model, folder = phi3v_export
    card = (folder / "README.md").read_text()
    engines = card[card.index("## Other engines") :]
    assert engines.count("trust_remote_code=True)") == 2 and "no `trust_remote_code` needed" not in engines
    assert "vllm serve" not in engines and "**vLLM**: not for this folder." in engines
    assert "hidden_size 32 (vLLM: 1024)" in engines and "num_hidden_layers 2 (vLLM: 24)" in engines
    backbone = model.config.backbone_config.to_dict()
    del backbone["vision_config"], backbone["img_processor"]  # Phi3VConfig's defaults: Phi-3.5-V's tower
    full = Vlm2VecConfig(backbone_config=Phi3VConfig(**backbone))
    assert full.backbone_config.vision_config.hidden_size == 1024
    card = str(render_model_card(full, engines=True, repo_id="me/phi35v"))
    [command] = [line for line in card.splitlines() if line.startswith("vllm serve ")]
    assert command == "vllm serve me/phi35v --runner pooling --trust-remote-code --chat-template-content-format openai"
    assert "not for this folder" not in card
    # vLLM sizes the image separators and projection from img_processor's image_dim_out, not from the tower
    backbone["img_processor"] = {"image_dim_out": 32}
    reason = vllm_unsupported(Vlm2VecConfig(backbone_config=Phi3VConfig(**backbone)))
    assert reason is not None and "image_dim_out 32 (the tower's hidden_size: 1024)" in reason
