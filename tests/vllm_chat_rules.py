"""vLLM 0.33's chat path for a pooling model, re-implemented for tests (vLLM needs CUDA; no vLLM code is used).

Facts from vLLM 0.33.0's source:
- ``renderers/hf.py`` (``_detect_content_format`` and the ``_iter_nodes_*`` helpers) parses the chat template with
  Jinja and picks the **"openai"** content format only when some ``for`` loop iterates over the content of a message:
  ``<m>['content']`` or ``<m>.content`` (through filters, tests and slices), where ``<m>`` is the target of a loop
  over ``messages`` or over a name assigned from it (``set``, or a ``namespace(...)`` attribute); or a loop outside
  macros over a variable literally named ``content``; or a loop in a macro over a parameter that a call passes
  ``<m>.content``. Any other template gets **"string"** (also the default when the template does not parse).
- ``renderers/chat_utils/chat_message.py`` (``parse_chat_message_content``): string content becomes one text part.
  In "openai" format each text part reaches the template as ``{"type": "text", "text": ...}`` and each image as
  ``{"type": "image"}``. In "string" format a message's texts are joined by ``"\\n"`` and, for each image whose
  placeholder the text does not already hold, the model's placeholder string is put in front, joined by ``"\\n"``
  (``get_full_multimodal_text_prompt``; ``interleave_mm_strings`` is off by default).
- The placeholder strings (each model's ``get_placeholder_str``): ``<image>`` for LLaVA-Next and Idefics3,
  ``<start_of_image>`` for Gemma 3, ``<|vision_start|><|image_pad|><|vision_end|>`` for Qwen2-VL / 2.5-VL / 3-VL.
- The conversation is rendered with ``tokenizer.apply_chat_template(..., tokenize=False)`` and tokenized without
  special tokens (chat requests default to ``add_special_tokens=False``).
"""

from __future__ import annotations

import jinja2
from jinja2 import nodes

VLLM_IMAGE_PLACEHOLDERS = {
    "llava_next": "<image>",
    "idefics3": "<image>",
    "gemma3": "<start_of_image>",
    "qwen2_vl": "<|vision_start|><|image_pad|><|vision_end|>",
    "qwen2_5_vl": "<|vision_start|><|image_pad|><|vision_end|>",
    "qwen3_vl": "<|vision_start|><|image_pad|><|vision_end|>",
    "phi3_v": "<|image_1|>",  # models/phi3v.py get_placeholder_str: f"<|image_{i}|>"
}


def _strip(node: nodes.Node) -> nodes.Node:
    """The expression under any filters, tests and slices (``x | f``, ``x is t``, ``x[1:]`` all read ``x``)."""
    while True:
        if isinstance(node, (nodes.Filter, nodes.Test)) and node.node is not None:
            node = node.node
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Slice):
            node = node.node
        else:
            return node


def _dotted(node: nodes.Node) -> str | None:
    """``a`` or ``a.b.c`` for a loaded name or attribute chain (``ns.rest``), else None."""
    if isinstance(node, nodes.Name):
        return node.name
    if isinstance(node, nodes.NSRef):
        return f"{node.name}.{node.attr}"
    if isinstance(node, nodes.Getattr):
        base = _dotted(node.node)
        return None if base is None else f"{base}.{node.attr}"
    return None


def _reads(node: nodes.Node, names: set[str]) -> bool:
    """True when ``node`` (filters etc. stripped) is one of ``names``."""
    return _dotted(_strip(node)) in names


def _reads_content(node: nodes.Node, names: set[str]) -> bool:
    """True when ``node`` is ``<m>['content']`` or ``<m>.content`` for ``<m>`` in ``names``."""
    node = _strip(node)
    if isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const) and node.arg.value == "content":
        return _dotted(node.node) in names
    return isinstance(node, nodes.Getattr) and node.attr == "content" and _dotted(node.node) in names


def _aliases_of_messages(tree: nodes.Template) -> set[str]:
    """``messages`` and every name or namespace attribute assigned (transitively) from it."""
    names, grew = {"messages"}, True
    while grew:
        grew = False
        for assign in tree.find_all(nodes.Assign):
            found = []
            target = _dotted(assign.target)
            if target is not None and _reads(assign.node, names):
                found.append(target)
            call = assign.node
            if isinstance(assign.target, nodes.Name) and isinstance(call, nodes.Call):
                if isinstance(call.node, nodes.Name) and call.node.name == "namespace":
                    found += [f"{assign.target.name}.{kw.key}" for kw in call.kwargs if _reads(kw.value, names)]
            for name in found:
                if name not in names:
                    names.add(name)
                    grew = True
    return names


def detect_content_format(template: str) -> str:
    """``"openai"`` or ``"string"``: the content format vLLM 0.33 auto-detects for ``template`` (module doc)."""
    try:
        tree = jinja2.Environment(extensions=["jinja2.ext.loopcontrols"]).parse(template)
    except jinja2.TemplateSyntaxError:
        return "string"
    lists = _aliases_of_messages(tree)
    messages = {loop.target.name for loop in tree.find_all(nodes.For) if _reads(loop.iter, lists)}
    in_macros = {id(loop) for macro in tree.find_all(nodes.Macro) for loop in macro.find_all(nodes.For)}
    for loop in tree.find_all(nodes.For):
        if _reads_content(loop.iter, messages):
            return "openai"
        if id(loop) not in in_macros and isinstance(loop.iter, nodes.Name) and loop.iter.name == "content":
            return "openai"
    for macro in tree.find_all(nodes.Macro):
        params = [arg.name for arg in macro.args]
        bound = set()
        for call in tree.find_all(nodes.Call):
            if isinstance(call.node, nodes.Name) and call.node.name == macro.name:
                bound |= {params[i] for i, arg in enumerate(call.args[: len(params)]) if _reads_content(arg, messages)}
                bound |= {kw.key for kw in call.kwargs if kw.key in params and _reads_content(kw.value, messages)}
        if any(isinstance(loop.iter, nodes.Name) and loop.iter.name in bound for loop in macro.find_all(nodes.For)):
            return "openai"
    return "string"


def vllm_conversation(messages: list[dict], content_format: str, image_placeholder: str) -> list[dict]:
    """The messages vLLM hands the chat template for an OpenAI-style request ``messages`` (content a string or a
    list of ``{"type": "text", "text": ...}`` / ``{"type": "image_url", ...}`` parts), in ``content_format``."""
    conversation = []
    for message in messages:
        content = message["content"]
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if content_format == "openai":
            wrapped = [p if p["type"] == "text" else {"type": "image"} for p in parts]
            conversation.append({"role": message["role"], "content": wrapped})
            continue
        texts = [p["text"] for p in parts if p["type"] == "text"]
        text = "\n".join(texts)
        missing = max(0, sum(p["type"] == "image_url" for p in parts) - text.count(image_placeholder))
        conversation.append(
            {"role": message["role"], "content": "\n".join([image_placeholder] * missing + [text] * bool(text))}
        )
    return conversation
