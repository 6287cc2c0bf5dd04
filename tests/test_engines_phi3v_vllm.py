"""vLLM 0.33's ``Phi3VForCausalLM`` (``vllm serve <folder> --runner pooling --trust-remote-code``) on a Phi-3-V export,
checked without vLLM (its wheel needs CUDA): what ``AutoConfig`` / ``AutoProcessor`` / ``AutoModel`` give in a process
without this package, and vLLM's input path re-implemented (``vllm_phi3v_rules``, whose docstring cites the vLLM
source lines) on that processor's output, compared with this package's token ids and pixels."""

import json
import math

import pytest
import torch
from hub_isolation import emit_json_code, last_json_line, run_isolated
from PIL import Image, ImageDraw
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel, AutoTokenizer
from vllm_phi3v_rules import VLLM_IMAGE_TOKEN_ID, apply_prompt_updates, hf_mm_text, prompt_ids

from modeling_vlm2vec import Vlm2VecModel
from modeling_vlm2vec.hub.export import export_checkpoint
from modeling_vlm2vec.hub.push import push_checkpoint
from modeling_vlm2vec.loading import load_vlm2vec
from modeling_vlm2vec.phi3v_model_vlm2vec import Phi3VModel
from modeling_vlm2vec.phi3v_processing_vlm2vec import Phi3VProcessor

INSTRUCTION = "Represent the given image with the following question:"
#: (width, height) of test images: square, landscape, small, very wide, very tall, ratio 3, and vLLM's profiling size
#: (``phi3v.py:356-358``, 50 x 8000)
SIZES = [(336, 336), (640, 480), (200, 150), (1000, 100), (100, 1000), (900, 300), (50, 8000)]
#: the official Phi3VImageProcessor's counts at num_crops 4 for the first six (measured on Microsoft's code,
#: /work/shared/reference/phi35v.md section 3)
OFFICIAL_COUNTS_4 = {(336, 336): 757, (640, 480): 757, (200, 150): 757, (1000, 100): 745, (100, 1000): 781}
OFFICIAL_COUNTS_4[(900, 300)] = 601


#: (text, index of its image in SIZES or None, the user message's parts), as vLLM's Phi-3-V example sends them
CASES = [
    ("What is yellow?", 1, [{"type": "image"}, {"type": "text", "text": "What is yellow?"}]),
    (None, 4, [{"type": "image"}]),
    ("Is <|image_1|> round?", 0, [{"type": "text", "text": "Is <|image_1|> round?"}, {"type": "image"}]),
    ("a yellow circle", None, [{"type": "text", "text": "a yellow circle"}]),
]


def _official_prompt(text: str | None, has_image: bool) -> str:
    """The official code's prompt: instruction, then text, joined by a space; ``<|image_1|> `` first for an image
    unless placed."""
    joined = " ".join(p for p in (INSTRUCTION, text) if p)
    return f"<|image_1|> {joined}" if has_image and "<|image_1|>" not in joined else joined


def _picture(path, size):
    image = Image.new("RGB", size, "navy")
    ImageDraw.Draw(image).ellipse([2, 2, size[0] // 2, size[1] // 2], fill="yellow")
    image.save(path)
    return str(path)


def _official_crops(width: int, height: int, num_crops: int, crop: int = 336) -> tuple[int, int]:
    """(rows, columns) of crops of the official HD transform (``HD_transform`` of Microsoft's
    image_processing_phi3_v.py): landscape frame, the largest ``scale`` with ``scale * ceil(scale / ratio) <=
    num_crops``, width ``scale * crop``, height ``int(width / ratio)`` padded up to a multiple of ``crop``."""
    w, h = max(width, height), min(width, height)
    ratio = w / h
    scale = max(s for s in range(1, num_crops + 1) if s * math.ceil(s / ratio) <= num_crops)
    rows = math.ceil(int(scale * crop / ratio) / crop)
    return (rows, scale) if width >= height else (scale, rows)


CHILD = """
import json

from PIL import Image
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModel, AutoProcessor, AutoTokenizer, ProcessorMixin

config = AutoConfig.from_pretrained(FOLDER, trust_remote_code=True)  # vLLM: transformers_utils/config.py:445
tokenizer = AutoTokenizer.from_pretrained(FOLDER, trust_remote_code=True)
bare = AutoProcessor.from_pretrained(FOLDER, revision="main", trust_remote_code=True)
processor = AutoProcessor.from_pretrained(FOLDER, revision="main", trust_remote_code=True, tokenizer=tokenizer)
sixteen = AutoProcessor.from_pretrained(FOLDER, revision="main", trust_remote_code=True, tokenizer=tokenizer,
                                        num_crops=16)
tensors = {}
for i, path in enumerate(PATHS):  # one image per request, as vLLM calls it
    image = Image.open(path).convert("RGB")
    for name, proc, crops in (("p", processor, 4), ("s", sixteen, 16)):
        out = proc(text=proc.img_tokens[0], images=[image], truncation=False, return_tensors="pt", num_crops=crops)
        tensors[f"{name}.pixel_values.{i}"] = out["pixel_values"]
        tensors[f"{name}.image_sizes.{i}"] = out["image_sizes"]
for i, (prompt, index) in enumerate(PROMPTS):  # the processor called on a whole prompt, as transformers users do
    images = [Image.open(PATHS[index]).convert("RGB")] if index is not None else None
    tensors[f"ids.{i}"] = processor(text=prompt, images=images, return_tensors="pt")["input_ids"]
save_file(tensors, OUT)
model = AutoModel.from_pretrained(FOLDER, trust_remote_code=True)
built = AutoModel.from_config(config, trust_remote_code=True)
out = {
    "config_class": type(config).__name__,
    "config": {name: getattr(config, name) for name in READ},
    "processor_class": type(processor).__name__,
    "processor_mixin": isinstance(processor, ProcessorMixin) and isinstance(bare, ProcessorMixin),
    "tokenizer_kept": processor.tokenizer is tokenizer,
    "num_crops": [p.image_processor.num_crops for p in (bare, processor, sixteen)],
    "img_tokens": [processor.img_tokens[0], processor.img_tokens[2], *processor.img_tokens[:2]],
    "counts": [[p.calc_num_image_tokens_from_image_size(width=w, height=h) for w, h in SIZES]
               for p in (processor, sixteen)],
    "hf_mm_text": "".join(processor.img_tokens[:2]),
    "model": [type(model).__name__, type(built).__name__, model.config.to_dict(), built.config.to_dict()],
    "template": processor.chat_template,
}
"""
#: what vLLM's Phi3VForCausalLM and its LlamaForCausalLM read of the config
READ = [
    "architectures", "model_type", "img_processor", "embd_layer", "hidden_size", "intermediate_size", "vocab_size",
    "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "rms_norm_eps", "hidden_act",
    "max_position_embeddings", "tie_word_embeddings", "rope_parameters",
]  # fmt: skip


@pytest.fixture(scope="module")
def vllm_view(phi3v_export, tmp_path_factory):
    """What a process without this package loads from the export the way vLLM does; the images it processed."""
    _, folder = phi3v_export
    tmp = tmp_path_factory.mktemp("phi3v-vllm")
    paths = [_picture(tmp / f"{w}x{h}.png", (w, h)) for w, h in SIZES]
    prompts = [(_official_prompt(text, index is not None), index) for text, index, _ in CASES]
    setup = f"FOLDER, PATHS, SIZES, READ = {str(folder)!r}, {paths!r}, {SIZES!r}, {READ!r}\nOUT = {str(tmp / 'o')!r}\n"
    setup += f"PROMPTS = {prompts!r}\n"
    result = last_json_line(run_isolated(setup + CHILD + emit_json_code("out")))
    return result, load_file(tmp / "o"), paths


def test_autoconfig_gives_every_field_vllm_reads(phi3v_export, tiny_backbone_dir, vllm_view):
    """The config vLLM gets through ``AutoConfig`` (trusted, no package) is Phi-3-V's, with the release's values:
    ``architectures`` picks ``Phi3VForCausalLM`` (``model_executor/models/registry.py:265``), ``img_processor`` /
    ``embd_layer`` build its image embedding (``phi3v.py:99-113,170-200``, which asserts the HD transform with learnable
    separators and order ``sub_glb``), the Phi-3 text fields its ``LlamaForCausalLM``, and ``rope_parameters`` its
    longrope rotary embedding (``layers/rotary_embedding/__init__.py:313-316``)."""
    result, _, _ = vllm_view
    release = json.loads((tiny_backbone_dir("phi3_v") / "config.json").read_text())
    config = result["config"]
    assert result["config_class"] == "Phi3VConfig" and config["architectures"] == ["Phi3VForCausalLM"]
    for name in READ[1:-1]:
        assert config[name] == release[name], name
    embd = config["embd_layer"]
    assert embd["use_hd_transform"] and embd["with_learnable_separator"] and embd["hd_transform_order"] == "sub_glb"
    assert config["img_processor"].get("layer_idx", -2) == -2 and config["img_processor"].get("type_feature") is None
    rope = config["rope_parameters"]
    assert rope["rope_type"] == "longrope" and release["rope_scaling"]["type"] == "su"  # transformers' name for it
    assert (rope["short_factor"], rope["long_factor"]) == (
        release["rope_scaling"]["short_factor"],
        release["rope_scaling"]["long_factor"],
    )
    assert rope["original_max_position_embeddings"] == release["original_max_position_embeddings"]
    assert rope["rope_theta"] == release["rope_theta"]


def test_automodel_still_gives_the_vlm2vec_model(phi3v_export, vllm_view):
    """With the Phi-3-V config in ``AutoConfig``, ``AutoModel`` (loading and building) still gives `Vlm2VecModel`,
    with the saved settings."""
    model, _ = phi3v_export
    result, _, _ = vllm_view
    loaded_class, built_class, loaded, built = result["model"]
    assert loaded_class == built_class == "Vlm2VecModel"
    for config in (loaded, built):
        assert config["model_type"] == "vlm2vec" and config["backbone_config"]["model_type"] == "phi3_v"
        assert {k: config[k] for k in ("max_length", "strip_prompt", "truncation_policy", "pooling")} == {
            "max_length": 256,
            "strip_prompt": False,
            "truncation_policy": "text_only_rows",
            "pooling": "last",
        }
    assert loaded["backbone_config"]["hidden_size"] == model.config.hidden_size


def test_automodel_in_a_process_with_the_package_gives_the_vlm2vec_model_and_a_release_its_backbone(
    phi3v_export, tiny_backbone_dir
):
    """transformers prefers a class registered in the process over a folder's ``auto_map``: with this package imported,
    ``AutoModel`` of the export still gives `Vlm2VecModel` (equal embeddings), and of a Phi-3.5-V release (no
    ``"vlm2vec"`` section) the bare `Phi3VModel`, with no Python file of the folder run."""
    model, folder = phi3v_export
    loaded = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    assert isinstance(loaded, Vlm2VecModel) and loaded.config.backbone_type == "phi3_v"
    items = ["a red circle", {"text": "what is shown?", "image": Image.new("RGB", (500, 300), (200, 30, 30))}]
    assert torch.allclose(loaded.encode(items), model.encode(items), atol=1e-6)
    assert isinstance(AutoModel.from_pretrained(tiny_backbone_dir("phi3_v")), Phi3VModel)
    assert isinstance(AutoModel.from_config(AutoConfig.from_pretrained(folder)), Vlm2VecModel)
    assert isinstance(AutoModel.from_config(AutoConfig.from_pretrained(tiny_backbone_dir("phi3_v"))), Phi3VModel)


def test_autoprocessor_offers_what_vllm_calls(vllm_view):
    """``AutoProcessor`` gives a ``ProcessorMixin`` (``transformers_utils/processor.py:273``) that keeps vLLM's
    ``tokenizer=`` and takes ``num_crops=`` at load (``context.py:318-330``), lists the image tags in ``img_tokens``
    (``phi3v.py:362-368,411``) and counts an image's positions as the HD transform's crops give them:
    ``(h*w + 1) * 144 + 1 + (h + 1) * 12`` for ``h x w`` crops (independently re-derived here, and the official
    processor's measured counts), equal to what its own ``image_sizes`` imply."""
    result, tensors, _ = vllm_view
    assert result["processor_class"] == "Phi3VProcessor" and result["processor_mixin"] and result["tokenizer_kept"]
    assert result["num_crops"] == [4, 4, 16]
    assert result["img_tokens"] == ["<|image_1|>", "<|image_3|>", "<|image_1|>", "<|image_2|>"]
    assert result["hf_mm_text"] == "<|image_1|><|image_2|>"
    for name, num_crops, counts in (("p", 4, result["counts"][0]), ("s", 16, result["counts"][1])):
        for i, ((width, height), count) in enumerate(zip(SIZES, counts)):
            h, w = _official_crops(width, height, num_crops)
            assert count == (h * w + 1) * 144 + 1 + (h + 1) * 12, (width, height, num_crops)
            sizes = tensors[f"{name}.image_sizes.{i}"]
            assert sizes.tolist() == [[336 * h, 336 * w]]
            assert tuple(tensors[f"{name}.pixel_values.{i}"].shape) == (1, num_crops + 1, 3, 336, 336)
            if num_crops == 4 and (width, height) in OFFICIAL_COUNTS_4:
                assert count == OFFICIAL_COUNTS_4[(width, height)], (width, height)


def test_vllm_input_path_gives_this_packages_ids_and_pixels(phi3v_export, vllm_view):
    """vLLM's path (``vllm_phi3v_rules``) on the exported template and the ``AutoProcessor`` output equals
    ``model.processor`` for the official prompt, as a plain prompt and as chat messages, image first or placed, and
    for text: the same ids (vLLM writes 32044 at image positions, where the model puts the image features whatever
    the id) and the same ``pixel_values`` / ``image_sizes``; the ``AutoProcessor`` called on the prompt itself gives
    the same ids too."""
    model, folder = phi3v_export
    result, tensors, paths = vllm_view
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)  # what vLLM tokenizes with
    template = result["template"]
    assert template == (folder / "chat_template.jinja").read_text()
    image_id = model.config.backbone_config.image_token_id
    for case, (text, index, content) in enumerate(CASES):
        image = Image.open(paths[index]).convert("RGB") if index is not None else None
        ours = model.processor([text], [image], instruction=INSTRUCTION)
        # the AutoProcessor on the whole prompt, as a transformers user calls it: the same ids, image positions as
        # `<|image|>` already (vLLM 0.33 rewrites no processor ids; older releases replaced the negative ids of
        # Microsoft's processor by 32044 because they called it on the prompt)
        assert tensors[f"ids.{case}"].tolist() == ours["input_ids"].tolist(), text
        expected = [VLLM_IMAGE_TOKEN_ID if i == image_id else i for i in ours["input_ids"][0].tolist()]
        counts = [result["counts"][0][index]] if index is not None else []
        assert sum(i == VLLM_IMAGE_TOKEN_ID for i in expected) == sum(counts)
        messages = [{"role": "system", "content": INSTRUCTION}, {"role": "user", "content": content}]
        rendered = tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False)
        official = _official_prompt(text, image is not None)
        assert rendered == tokenizer.bos_token + official, text  # the official prompt, after the template's BOS
        for prompt, chat in ((official, False), (rendered, True)):
            ids = prompt_ids(tokenizer, prompt, chat)
            assert apply_prompt_updates(tokenizer, ids, Phi3VProcessor.img_tokens, counts) == expected, (text, chat)
        if image is not None:
            assert torch.equal(tensors[f"p.pixel_values.{index}"], ours["pixel_values"])
            assert torch.equal(tensors[f"p.image_sizes.{index}"], ours["image_sizes"])
    assert hf_mm_text(Phi3VProcessor.img_tokens, 1) == "<|image_1|>"


def test_num_crops_in_a_call_must_match_the_loaded_one(phi3v_export):
    """vLLM repeats ``num_crops`` on each call (``context.py:402-424``); a value other than the one loaded is refused
    rather than giving pixels that disagree with the counted positions."""
    _, folder = phi3v_export
    processor = Phi3VProcessor.from_pretrained(folder)
    image = Image.new("RGB", (64, 48))
    assert processor(text="<|image_1|>", images=[image], num_crops=4)["pixel_values"].shape[1] == 5
    with pytest.raises(ValueError, match="num_crops is set when loading"):
        processor(text="<|image_1|>", images=[image], num_crops=16)


def test_the_package_loads_re_exports_and_pushes_the_export(phi3v_export, tmp_path):
    """This package's loaders read the export as before (embeddings equal the exported model's), a second export of
    it has the same engine entries, and a push uploads the files those entries name."""
    model, folder = phi3v_export
    items = ["a yellow circle", {"text": "What is yellow?", "image": Image.new("RGB", (90, 30), (200, 200, 0))}]
    expected = model.encode(items, instruction=INSTRUCTION)
    for loaded in (load_vlm2vec(folder, dtype=None), Vlm2VecModel.from_pretrained(folder)):
        assert type(loaded) is Vlm2VecModel
        torch.testing.assert_close(loaded.encode(items, instruction=INSTRUCTION), expected, atol=1e-6, rtol=0)
    again = export_checkpoint(folder, tmp_path / "again")
    for name in ("config.json", "processor_config.json"):
        assert json.loads((again / name).read_text())["auto_map"] == json.loads((folder / name).read_text())["auto_map"]
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    processor_map = json.loads((folder / "processor_config.json").read_text())["auto_map"]
    named = {f"{ref.split('.')[0]}.py" for ref in (*auto_map.values(), *processor_map.values())}
    assert named == {"phi3v_config_vlm2vec.py", "modeling_vlm2vec.py", "phi3v_processing_vlm2vec.py"}
    pushed = push_checkpoint(folder, "me/phi3v", dry_run=True)
    assert named <= set(pushed)
    assert {"config.json", "processor_config.json", "chat_template.jinja", "model.safetensors"} <= set(pushed)
