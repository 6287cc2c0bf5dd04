"""vLLM's chat path on the exported chat template: the content format vLLM 0.33 auto-detects, and the prompt it
renders in that format, through an independent re-implementation of its rules (`vllm_chat_rules`; vLLM needs CUDA).

The export's template must be detected as "openai" (parts, images as ``{"type": "image"}``): in "string" format vLLM
inlines its own image placeholder into the user text and the template renders another prompt, with no error."""

import pytest
from vllm_chat_rules import VLLM_IMAGE_PLACEHOLDERS, detect_content_format, vllm_conversation

from modeling_vlm2vec import Vlm2VecModel
from modeling_vlm2vec.demo import TINY_MODEL_TYPES
from modeling_vlm2vec.hub.engines import render_chat_template
from modeling_vlm2vec.hub.export import export_checkpoint
from modeling_vlm2vec.processing_vlm2vec import load_backbone_processor

INSTRUCTION = "Represent the given image."
IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}  # vLLM loads it; the text is ours

# The chat template exports carried before the fix (Qwen2-VL's image token, no BOS): it loops over `parts`, a
# variable set from the content, which vLLM's detector does not follow.
PRE_FIX_TEMPLATE = """{#- VLM2Vec prompt, raw format: [instruction] [text]; the image token first unless placed -#}
{%- set ns = namespace(instruction=[], text=[], images=0) -%}
{%- for message in messages -%}
{%- set parts = [{'type': 'text', 'text': message['content']}] if message['content'] is string
    else message['content'] -%}
{%- for part in parts -%}
{%- if part['type'] == 'text' and part['text'] | trim -%}
{%- if message['role'] == 'system' -%}{%- set ns.instruction = ns.instruction + [part['text'] | trim] -%}
{%- else -%}{%- set ns.text = ns.text + [part['text'] | trim] -%}{%- endif -%}
{%- elif part['type'] == 'image' -%}{%- set ns.images = ns.images + 1 -%}
{%- elif part['type'] != 'text' -%}{{ raise_exception('VLM2Vec inputs hold text and images only') }}
{%- endif -%}
{%- endfor -%}
{%- endfor -%}
{%- if ns.images > 1 -%}{{ raise_exception('VLM2Vec embeds at most one image per input') }}{%- endif -%}
{%- set prompt = (ns.instruction + ns.text) | join(' ') -%}
{%- set placeholder = '<|image_1|>' -%}
{%- if ns.images == 1 -%}
{%- if prompt.count(placeholder) > 1 -%}{{ raise_exception('one image placeholder per input') }}{%- endif -%}
{%- if placeholder not in prompt -%}{%- set prompt = (placeholder ~ ' ' ~ prompt) | trim -%}{%- endif -%}
{%- set prompt = prompt.replace(placeholder, '<|image_pad|>') -%}
{%- elif placeholder in prompt -%}
{%- set prompt = prompt.replace(placeholder, ' ').split() | join(' ') -%}
{%- endif -%}
{%- if '<|video_1|>' in prompt -%}
{%- set prompt = prompt.replace('<|video_1|>', ' ').split() | join(' ') -%}
{%- endif -%}
{{ prompt }}"""

# Templates with the format vLLM 0.33's own detection function returns for them (run on its source once).
KNOWN_FORMATS = [
    ("pre-fix export", PRE_FIX_TEMPLATE, "string"),
    ("content printed", "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}", "string"),
    (
        "Qwen2-VL style",
        "{% for message in messages %}{% if message['content'] is string %}{{ message['content'] }}{% else %}"
        "{% for content in message['content'] %}{% if content['type'] == 'image' %}<|image_pad|>{% else %}"
        "{{ content['text'] }}{% endif %}{% endfor %}{% endif %}{% endfor %}",
        "openai",
    ),
    (
        "namespace alias, attribute access, filter",
        "{% set ns = namespace(rest=messages) %}{% for m in ns.rest %}{% for p in m.content | list %}{{ p['type'] }}"
        "{% endfor %}{% endfor %}",
        "openai",
    ),
    (
        "macro parameter",
        "{% macro render(parts) %}{% for p in parts %}{{ p['type'] }}{% endfor %}{% endmacro %}"
        "{% for m in messages[1:] %}{{ render(m['content']) }}{% endfor %}",
        "openai",
    ),
    (
        "a name `content`",
        "{% for m in messages %}{% set content = m['content'] %}{% for p in content %}{{ p }}{% endfor %}{% endfor %}",
        "openai",
    ),
    ("loop over one message", "{% for p in messages[0]['content'] %}{{ p }}{% endfor %}", "string"),
    ("syntax error", "{% for m in messages %}", "string"),
]

# (name, request messages as a client sends them, (text, has image, instruction) for the prompt builder)
REQUESTS = [
    ("text", [{"role": "system", "content": INSTRUCTION}, {"role": "user", "content": "a red circle"}],
     ("a red circle", False, INSTRUCTION)),
    ("image", [{"role": "system", "content": INSTRUCTION}, {"role": "user", "content": [IMAGE]}],
     (None, True, INSTRUCTION)),
    ("image+text", [{"role": "user", "content": [{"type": "text", "text": "What colour is it?"}, IMAGE]}],
     ("What colour is it?", True, None)),
    ("text+image, instruction", [
        {"role": "system", "content": INSTRUCTION},
        {"role": "user", "content": [IMAGE, {"type": "text", "text": "What colour is it?"}]},
    ], ("What colour is it?", True, INSTRUCTION)),
    ("placed image", [{"role": "user", "content": [{"type": "text", "text": "Is <|image_1|> red?"}, IMAGE]}],
     ("Is <|image_1|> red?", True, None)),
]  # fmt: skip
IMAGE_CASES = [name for name, _, (_, has_image, _) in REQUESTS if has_image]


@pytest.mark.parametrize("name, template, expected", KNOWN_FORMATS, ids=[case[0] for case in KNOWN_FORMATS])
def test_the_detector_returns_what_vllm_returns(name, template, expected):
    assert detect_content_format(template) == expected


@pytest.fixture(scope="module")
def exports(tiny_backbone_dir, tmp_path_factory):
    """model_type -> (export folder, its backbone processor, the Vlm2Vec processor it was exported with)."""
    root = tmp_path_factory.mktemp("vllm-chat")
    out = {}
    for model_type in TINY_MODEL_TYPES:
        model = Vlm2VecModel.from_backbone(tiny_backbone_dir(model_type))
        folder = export_checkpoint(model, root / model_type)
        out[model_type] = folder, load_backbone_processor(folder), model.processor
    return out


@pytest.mark.parametrize("model_type", TINY_MODEL_TYPES)
def test_vllm_detects_every_exported_template_as_openai_and_renders_our_prompt(exports, model_type):
    folder, served, processor = exports[model_type]
    template = (folder / "chat_template.jinja").read_text()
    assert detect_content_format(template) == "openai"
    bos = served.tokenizer.bos_token if "{{ bos_token }}" in template else ""  # the template starts with it
    placeholder = VLLM_IMAGE_PLACEHOLDERS[model_type]
    for name, messages, (text, has_image, instruction) in REQUESTS:
        conversation = vllm_conversation(messages, "openai", placeholder)
        rendered = served.tokenizer.apply_chat_template(conversation, tokenize=False)
        assert rendered == bos + processor.build_prompt(text, has_image, instruction), (model_type, name)


@pytest.mark.parametrize("model_type", ["qwen2_vl", "llava_next"])
def test_the_string_format_renders_another_prompt_for_images(exports, model_type):
    """What vLLM rendered before the fix (the format its detector chose for the old template), and what forcing
    ``--chat-template-content-format string`` would render now: the image is vLLM's inlined placeholder, not ours."""
    folder, served, processor = exports[model_type]
    placeholder = VLLM_IMAGE_PLACEHOLDERS[model_type]
    templates = [(folder / "chat_template.jinja").read_text()]
    if model_type == "qwen2_vl":
        templates.append(PRE_FIX_TEMPLATE)
        assert detect_content_format(PRE_FIX_TEMPLATE) == "string"
    for template in templates:
        bos = served.tokenizer.bos_token if "{{ bos_token }}" in template else ""  # the template starts with it
        for name, messages, (text, has_image, instruction) in REQUESTS:
            conversation = vllm_conversation(messages, "string", placeholder)
            rendered = served.tokenizer.apply_chat_template(conversation, chat_template=template, tokenize=False)
            ours = bos + processor.build_prompt(text, has_image, instruction)
            assert (rendered == ours) == (name not in IMAGE_CASES), (model_type, name, rendered)
            if name in IMAGE_CASES:
                assert placeholder in rendered and processor.image_token not in rendered.replace(placeholder, "")


def test_the_template_is_openai_for_any_image_token_and_bos():
    for token in {*VLLM_IMAGE_PLACEHOLDERS.values(), "<image>", "<|image_pad|>", "<image_soft_token>"}:
        for add_bos in (False, True):
            assert detect_content_format(render_chat_template(token, add_bos)) == "openai"


def test_the_model_card_serves_with_the_openai_content_format(exports):
    folder, _, _ = exports["qwen2_vl"]
    card = (folder / "README.md").read_text()
    [command] = [line for line in card.splitlines() if line.startswith("vllm serve ")]
    assert "--chat-template-content-format openai" in command
    assert "--chat-template " not in command  # vLLM reads the shipped template from the model itself
