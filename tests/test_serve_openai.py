"""The embedded server end to end with the official `openai` client (no retries) and raw HTTP for vLLM's extra
request shapes: every embedding equals `encode()` of the same item (1e-5), over a tiny exported checkpoint."""

import base64
import struct

import httpx
import numpy as np
import pytest
import torch
from openai import OpenAI
from serve_helpers import INSTRUCTION, NAME, image_messages, picture, serve

TEXTS = ["a red circle on a white background", "what colour is the square?", "hello"]


@pytest.fixture(scope="module")
def model(served_export):
    return served_export


@pytest.fixture(scope="module")
def server(model):
    with serve(model, max_wait_ms=2) as (url, _):
        yield url


@pytest.fixture(scope="module")
def client(server):
    return OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=60)


def _close(served, expected):
    np.testing.assert_allclose(np.asarray(served, dtype=np.float32), expected.numpy(), atol=1e-5, rtol=0)


def test_texts_in_the_clients_default_base64_equal_encode(client, model):
    response = client.embeddings.create(model=NAME, input=TEXTS)
    expected = model.encode(TEXTS)
    assert [d.index for d in response.data] == [0, 1, 2] and response.model == NAME
    for data, row in zip(response.data, expected):
        _close(data.embedding, row)
    lengths = [len(model.processor.tokenizer(t)["input_ids"]) for t in TEXTS]
    assert response.usage.prompt_tokens == response.usage.total_tokens == sum(lengths)


def test_float_format_and_base64_bytes_are_the_same_little_endian_float32(server, model):
    floats = httpx.post(f"{server}/v1/embeddings", json={"input": TEXTS[0], "encoding_format": "float"}).json()
    packed = httpx.post(f"{server}/v1/embeddings", json={"input": TEXTS[0], "encoding_format": "base64"}).json()
    raw = base64.b64decode(packed["data"][0]["embedding"])
    unpacked = struct.unpack(f"<{len(raw) // 4}f", raw)
    assert list(unpacked) == floats["data"][0]["embedding"]  # exact: both are the same float32 values
    _close(unpacked, model.encode([TEXTS[0]])[0])
    assert floats["object"] == "list" and floats["id"].startswith("embd-") and isinstance(floats["created"], int)
    assert floats["data"][0]["object"] == "embedding"


def test_chat_messages_with_a_data_url_image_equal_encode_with_the_instruction(client, model):
    image, text = picture("red", (84, 56)), "What colour is the square?"
    response = client.embeddings.create(model=NAME, input=image_messages(image, text), encoding_format="float")
    [data] = response.data
    _close(data.embedding, model.encode([{"text": text, "image": image}], instruction=INSTRUCTION)[0])
    # prompt tokens count the image's tokens: the raw format's one image token expands to one per 2x2 merge of
    # Qwen2-VL's patches
    grid = model.processor([text], [image], instruction=INSTRUCTION)["image_grid_thw"][0]
    unexpanded = len(model.processor.tokenizer(f"{model.config.image_token} {INSTRUCTION} {text}")["input_ids"])
    assert response.usage.prompt_tokens == unexpanded - 1 + int(grid.prod()) // 4


def test_a_batch_of_conversations_in_messages_or_input_embeds_each(server, model):
    images = [picture("red"), picture("blue", (28, 44))]
    conversations = [image_messages(images[0], "first"), image_messages(images[1], "second", "Find a caption.")]
    text_only = [{"role": "user", "content": "just a text"}]
    expected = torch.cat(
        [
            model.encode([{"text": "first", "image": images[0]}], instruction=INSTRUCTION),
            model.encode([{"text": "second", "image": images[1]}], instruction="Find a caption."),
            model.encode(["just a text"]),
        ]
    )
    for key in ("messages", "input"):
        body = httpx.post(f"{server}/v1/embeddings", json={key: [*conversations, text_only]}, timeout=60).json()
        assert len(body["data"]) == 3
        for data, row in zip(body["data"], expected):
            _close(data["embedding"], row)
    one = httpx.post(f"{server}/v1/embeddings", json={"messages": conversations[1]}, timeout=60).json()
    _close(one["data"][0]["embedding"], expected[1])


def test_dimensions_cut_and_renormalise_like_truncate_dim(client, model):
    response = client.embeddings.create(model=NAME, input=TEXTS[:2], dimensions=16)
    expected = model.encode(TEXTS[:2], truncate_dim=16)
    full = model.encode(TEXTS[:2])
    for data, row, whole in zip(response.data, expected, full):
        assert len(data.embedding) == 16
        _close(data.embedding, row)
        _close(data.embedding, whole[:16] / whole[:16].norm())  # the rule itself: prefix, then L2


def test_token_ids_and_truncate_prompt_tokens_match_the_model_on_those_ids(server, model):
    ids = model.processor.tokenizer(TEXTS[0])["input_ids"]
    body = httpx.post(f"{server}/v1/embeddings", json={"input": ids, "encoding_format": "float"}).json()
    _close(body["data"][0]["embedding"], model.encode([TEXTS[0]])[0])  # token ids of a text embed as the text
    assert body["usage"]["prompt_tokens"] == len(ids)
    cut = httpx.post(f"{server}/v1/embeddings", json={"input": TEXTS[0], "truncate_prompt_tokens": 3}).json()
    left = httpx.post(
        f"{server}/v1/embeddings", json={"input": TEXTS[0], "truncate_prompt_tokens": 3, "truncation_side": "left"}
    ).json()
    with torch.inference_mode():
        first = model(input_ids=torch.tensor([ids[:3]]), attention_mask=torch.ones(1, 3)).embeddings[0]
        last = model(input_ids=torch.tensor([ids[-3:]]), attention_mask=torch.ones(1, 3)).embeddings[0]
    _close(cut["data"][0]["embedding"], first)
    _close(left["data"][0]["embedding"], last)
    assert cut["usage"]["prompt_tokens"] == 3
    ids_cut = httpx.post(f"{server}/v1/embeddings", json={"input": ids, "truncate_prompt_tokens": 3}).json()
    _close(ids_cut["data"][0]["embedding"], first)


def test_unknown_fields_are_ignored_and_models_are_listed(client, server):
    body = httpx.post(f"{server}/v1/embeddings", json={"input": "x", "user": "u", "priority": 0, "whatever": [1]})
    assert body.status_code == 200
    models = client.models.list()
    assert [m.id for m in models.data] == [NAME]
    assert models.data[0].object == "model"
    assert httpx.get(f"{server}/health").status_code == 200
    assert "version" in httpx.get(f"{server}/version").json()
