"""The server's answers to bad requests, with raw HTTP: vLLM's error shape and status per case (400 not 422, 404,
401, 413, 501, 503 while loading), never a 500, and the server still healthy afterwards."""

import base64
import threading

import httpx
import openai
import pytest
from serve_helpers import NAME, data_url, image_messages, picture, running, serve

from modeling_vlm2vec.serve import ServeSettings, create_app

PNG = data_url(picture("red"))


def _user(*parts):
    return [{"role": "user", "content": list(parts)}]


def _image(url):
    return {"type": "image_url", "image_url": {"url": url}}


@pytest.fixture(scope="module")
def model(served_export):
    return served_export


@pytest.fixture(scope="module")
def server(model):
    with serve(model, max_body_bytes=20_000, max_items_per_request=4, max_image_pixels=100 * 100) as (url, _):
        yield url


# (request body, status, error type, param, words of the message)
CASES = {
    "no input": ({"input": []}, 400, "BadRequestError", "input", "at least one prompt"),
    "neither field": ({"model": NAME}, 400, "BadRequestError", "input", "needs `input`"),
    "both fields": ({"input": "x", "messages": _user("x")}, 400, "BadRequestError", "messages", "not both"),
    "mixed kinds": ({"input": ["x", [1, 2]]}, 400, "BadRequestError", "input", "cannot be mixed"),
    "empty text": ({"input": ["ok", "  "]}, 400, "BadRequestError", "input", "input 1 is empty"),
    "image token in text": ({"input": "<|image_pad|> hi"}, 400, "BadRequestError", "input", "image token"),
    "unknown model": ({"input": "x", "model": "nope"}, 404, "NotFoundError", None, "`nope` does not exist"),
    "bytes format": (
        {"input": "x", "encoding_format": "bytes"},
        400,
        "BadRequestError",
        "encoding_format",
        "1 validation error",
    ),
    "bad type": ({"input": "x", "dimensions": "many"}, 400, "BadRequestError", "dimensions", "validation error"),
    "unlisted dimensions": (
        {"input": "x", "dimensions": 20},
        400,
        "BadRequestError",
        "dimensions",
        "Matryoshka dimensions [16, 32, 64]",
    ),
    "dimensions out of range": (
        {"input": "x", "dimensions": 65},
        400,
        "BadRequestError",
        "dimensions",
        "range [1, 64]",
    ),
    "normalize": ({"input": "x", "normalize": True}, 400, "BadRequestError", "normalize", "use_activation"),
    "request template": (
        {"input": "x", "chat_template": "{{ 1 }}"},
        400,
        "BadRequestError",
        "chat_template",
        "not accepted",
    ),
    "use_activation off": (
        {"input": "x", "use_activation": False},
        400,
        "BadRequestError",
        "use_activation",
        "not served",
    ),
    "negative truncation": (
        {"input": "x", "truncate_prompt_tokens": -2},
        400,
        "BadRequestError",
        "truncate_prompt_tokens",
        "greater than or equal to -1",
    ),
    "truncation over context": (
        {"input": "x", "truncate_prompt_tokens": 10**6},
        400,
        "BadRequestError",
        "truncate_prompt_tokens",
        "max_model_len",
    ),
    "token id out of vocabulary": ({"input": [[5, 10**6]]}, 400, "BadRequestError", "input", "vocabulary"),
    "no truncation left": (
        {"input": "x", "truncate_prompt_tokens": 0},
        400,
        "BadRequestError",
        "truncate_prompt_tokens",
        "at least 1",
    ),
    "image part without url": (
        {"messages": _user({"type": "image_url", "image_url": {}})},
        400,
        "BadRequestError",
        "messages",
        "needs a 'url' string",
    ),
    "too many items": ({"input": ["a", "b", "c", "d", "e"]}, 400, "BadRequestError", "input", "at most 4"),
    "two images": (
        {"messages": _user(_image(PNG), _image(PNG))},
        400,
        "BadRequestError",
        "messages",
        "at most one image",
    ),
    "empty conversation": (
        {"messages": _user({"type": "text", "text": " "})},
        400,
        "BadRequestError",
        "messages",
        "empty",
    ),
    "unsupported part": (
        {"messages": _user({"type": "video_url", "video_url": {"url": PNG}})},
        400,
        "BadRequestError",
        "type",
        "Unsupported chat content part type: 'video_url'",
    ),
    "not base64 data URL": (
        {"messages": _user(_image("data:image/png,abc"))},
        501,
        "NotImplementedError",
        "messages",
        "Only base64",
    ),
    "broken base64": (
        {"messages": _user(_image("data:image/png;base64,@@@"))},
        400,
        "BadRequestError",
        "messages",
        "not valid base64",
    ),
    "not an image": (
        {"messages": _user(_image("data:image/png;base64," + base64.b64encode(b"text").decode()))},
        400,
        "BadRequestError",
        "messages",
        "Failed to load image",
    ),
    "image too large": (
        {"messages": _user(_image(data_url(picture("red", (101, 100)))))},
        400,
        "BadRequestError",
        "messages",
        "exceeds the maximum of 10000 pixels",
    ),
    "http image": (
        {"messages": _user(_image("https://example.com/a.png"))},
        400,
        "BadRequestError",
        "messages",
        "fetches nothing over the network",
    ),
    "file image": (
        {"messages": _user(_image("file:///etc/hostname"))},
        400,
        "BadRequestError",
        "messages",
        "--allowed-local-media-path",
    ),
    "messages not a conversation": ({"messages": ["hello"]}, 400, "BadRequestError", "messages", "one conversation"),
    "both prompts flags": (
        {"messages": _user("x"), "add_generation_prompt": True, "continue_final_message": True},
        400,
        "BadRequestError",
        None,
        "Cannot set both",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_requests_get_vllms_error_shape_and_status(server, case):
    body, status, kind, param, words = CASES[case]
    response = httpx.post(f"{server}/v1/embeddings", json=body, timeout=60)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["param"], error["code"]) == (kind, param, status)
    assert words is None or words in error["message"]


def test_token_ids_holding_the_image_token_are_refused(server, model):
    image_id = model.processor.tokenizer.convert_tokens_to_ids(model.config.image_token)
    assert image_id < model.get_input_embeddings().num_embeddings  # in the vocabulary: refused for what it is
    response = httpx.post(f"{server}/v1/embeddings", json={"input": [[5, image_id, 7]]})
    assert response.status_code == 400 and "no image comes with them" in response.json()["error"]["message"]


def test_body_transport_errors_and_routes(server):
    post = f"{server}/v1/embeddings"
    big = httpx.post(post, json={"input": "x" * 30_000})
    assert big.status_code == 413 and big.json()["error"]["type"] == "Request Entity Too Large"
    chunked = httpx.post(post, content=iter([b'{"input": "', b"x" * 30_000, b'"}']),
                         headers={"content-type": "application/json"})  # fmt: skip
    assert chunked.status_code == 413  # no Content-Length: counted while read
    not_json = httpx.post(post, content=b"{input", headers={"content-type": "application/json"})
    assert not_json.status_code == 400 and "not valid JSON" in not_json.json()["error"]["message"]
    form = httpx.post(post, data={"input": "x"})
    assert form.status_code == 400 and "application/json" in form.json()["error"]["message"]
    deep = httpx.post(post, content=b"[" * 15_000, headers={"content-type": "application/json"})
    assert deep.status_code == 400 and "too deeply" in deep.json()["error"]["message"]
    array = httpx.post(post, json=["x"])
    assert array.status_code == 400 and array.json()["error"]["param"] == "body"
    assert httpx.get(post).status_code == 405
    assert httpx.get(f"{server}/v1/nothing").status_code == 404
    assert httpx.get(f"{server}/health").status_code == 200  # still healthy after all of it
    assert httpx.post(post, json={"input": "fine"}).status_code == 200


def test_openai_client_raises_its_own_error_classes(server):
    client = openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=60)
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="nope", input="x")
    with pytest.raises(openai.BadRequestError, match="at most one image"):
        client.embeddings.create(model=NAME, input=_user(_image(PNG), _image(PNG)))


def test_api_key_guards_v1_only(model):
    with serve(model, api_keys=("secret", "other")) as (url, _):
        assert httpx.post(f"{url}/v1/embeddings", json={"input": "x"}).status_code == 401
        wrong = httpx.post(f"{url}/v1/embeddings", json={"input": "x"}, headers={"Authorization": "Bearer nope"})
        assert (wrong.status_code, wrong.json()) == (401, {"error": "Unauthorized"})  # vLLM's shape for this one
        assert httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer other"}).status_code == 200
        assert httpx.get(f"{url}/health").status_code == 200 and httpx.get(f"{url}/metrics").status_code == 200
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{url}/v1", api_key="nope", max_retries=0).embeddings.create(model=NAME, input="x")
        good = openai.OpenAI(base_url=f"{url}/v1", api_key="secret", max_retries=0, timeout=60)
        assert len(good.embeddings.create(model=NAME, input=["x", "y"]).data) == 2


def test_health_and_embeddings_say_503_while_the_model_loads(model):
    release = threading.Event()

    def slow_loader():
        assert release.wait(60)
        return model

    app = create_app(ServeSettings(served_model_names=(NAME,)), loader=slow_loader)
    with running(app) as (url, _):
        assert httpx.get(f"{url}/health").status_code == 503
        loading = httpx.post(f"{url}/v1/embeddings", json={"input": "x"})
        assert loading.status_code == 503 and loading.headers["retry-after"]
        assert loading.json()["error"]["type"] == "ServiceUnavailableError"
        release.set()
        for _ in range(300):
            if httpx.get(f"{url}/health").status_code == 200:
                break
            threading.Event().wait(0.1)
        assert (
            httpx.post(f"{url}/v1/embeddings", json={"messages": image_messages(picture("red"), "x")}).status_code
            == 200
        )


def test_http_images_come_only_from_allowed_hosts_without_redirects(model, tmp_path):
    import functools
    import http.server

    picture("blue", (36, 30)).save(tmp_path / "blue.png")

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/moved.png":  # a redirect could lead anywhere: not followed
                self.send_response(302)
                self.send_header("Location", "/blue.png")
                self.end_headers()
                return
            super().do_GET()

        def log_message(self, *args):
            pass

    files = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(tmp_path)))
    threading.Thread(target=files.serve_forever, daemon=True).start()
    port = files.server_address[1]
    try:
        with serve(model, allowed_media_domains=("127.0.0.1",)) as (url, _):

            def post(image_url):
                body = {"messages": _user(_image(image_url)), "encoding_format": "float"}
                return httpx.post(f"{url}/v1/embeddings", json=body, timeout=60)

            fetched = post(f"http://127.0.0.1:{port}/blue.png")
            assert fetched.status_code == 200, fetched.text
            expected = model.encode([picture("blue", (36, 30))])[0].numpy()
            assert abs(fetched.json()["data"][0]["embedding"] - expected).max() < 1e-5
            other_host = post(f"http://localhost:{port}/blue.png")
            assert other_host.status_code == 400 and "not in --allowed-media-domains" in other_host.text
            assert post(f"http://127.0.0.1:{port}/moved.png").status_code == 400
            assert post(f"http://127.0.0.1:{port}/missing.png").status_code == 400
    finally:
        files.shutdown()
