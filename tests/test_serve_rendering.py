"""The server's rendering is the export's: the template it renders with is the exported ``chat_template.jinja``, and
a tokenizer that adds a BOS gets it once on both paths (texts with special tokens, messages through the template
without), so served embeddings equal ``encode()``'s. Runs the renderer and the model thread's function directly."""

import pytest
import torch
from serve_helpers import INSTRUCTION, image_messages, picture

from modeling_vlm2vec.loading import load_vlm2vec
from modeling_vlm2vec.serve import ServeSettings
from modeling_vlm2vec.serve.errors import ApiError
from modeling_vlm2vec.serve.forward import embed_inputs
from modeling_vlm2vec.serve.protocol import parse_request
from modeling_vlm2vec.serve.rendering import Renderer


@pytest.fixture(scope="module")
def served(bos_export):
    """The BOS-tokenizer export (conftest's ``bos_export``) as the server loads it: (folder, model)."""
    folder = bos_export[2]
    return folder, load_vlm2vec(folder)


def _serve(model, body):
    renderer = Renderer(model, ServeSettings(served_model_names=("m",)))
    prepared = renderer.prepare(parse_request(body, 100))
    return prepared, embed_inputs(model, prepared, batch_size=4)


def test_the_served_template_is_the_exported_file(served):
    folder, model = served
    renderer = Renderer(model, ServeSettings(served_model_names=("m",)))
    assert renderer.template == (folder / "chat_template.jinja").read_text(encoding="utf-8")


def test_a_bos_tokenizer_gets_one_bos_on_both_paths_and_embeddings_equal_encode(served):
    _, model = served
    bos = model.processor.tokenizer.bos_token_id
    images = [picture("red", (60, 40)), picture("green", (30, 50))]
    conversations = [image_messages(images[0], "first question"), image_messages(images[1], "second", "Find it.")]
    body = {"messages": [*conversations, [{"role": "user", "content": "only text"}]]}
    prepared, (vectors, tokens) = _serve(model, body)
    expected = torch.cat(
        [
            model.encode([{"text": "first question", "image": images[0]}], instruction=INSTRUCTION),
            model.encode([{"text": "second", "image": images[1]}], instruction="Find it."),
            model.encode(["only text"]),
        ]
    )
    torch.testing.assert_close(vectors, expected, atol=1e-5, rtol=0)
    for item, count in zip(prepared, tokens):
        ids = model.processor.process_prompts([item.prompt], [item.image], add_special_tokens=False)["input_ids"][0]
        assert ids.tolist().count(bos) == 1 and ids[0] == bos and len(ids) == count
    texts = ["a red circle", "two words"]
    prepared, (vectors, _) = _serve(model, {"input": texts})
    torch.testing.assert_close(vectors, model.encode(texts), atol=1e-5, rtol=0)
    # without special tokens, as vLLM allows: no BOS, so a different vector
    _, (bare, bare_tokens) = _serve(model, {"input": texts[:1], "add_special_tokens": False})
    assert bare_tokens[0] == len(model.processor.tokenizer(texts[0])["input_ids"]) - 1
    assert not torch.allclose(bare[0], vectors[0], atol=1e-3)


def test_text_parts_with_a_literal_image_token_are_refused(served):
    _, model = served
    with pytest.raises(ApiError, match="image token"):
        _serve(model, {"messages": [{"role": "user", "content": [{"type": "text", "text": "see <image> here"}]}]})
