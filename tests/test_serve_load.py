"""The server under load, bounded: concurrent requests merged into micro-batches give each request's solo
embedding; a full queue answers 503 with Retry-After (never 500) and the server recovers; shutdown answers every
queued request first."""

import re
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from serve_helpers import export_tiny, image_messages, picture, serve

import modeling_vlm2vec.serve.app as serve_app

THREADS, PER_THREAD = 4, 8


@pytest.fixture(scope="module")
def model(tiny_backbone_dir, tmp_path_factory):
    return export_tiny(tiny_backbone_dir("qwen2_vl"), tmp_path_factory.mktemp("serve-load") / "export")


def _histogram(metrics: str, name: str) -> tuple[float, float]:
    """(observations <= 1, all observations) of a Prometheus histogram in the text exposition."""
    ones = float(re.search(rf'^{name}_bucket{{le="1.0"}} (\S+)$', metrics, re.M).group(1))
    count = float(re.search(rf"^{name}_count (\S+)$", metrics, re.M).group(1))
    return ones, count


def test_concurrent_requests_are_merged_and_each_equals_its_solo_embedding(model):
    # request r of thread t: two texts, or one image conversation every third request
    def request_body(t, r):
        if r % 3 == 0:
            return {
                "messages": image_messages(picture(["red", "blue", "green", "black"][t], (28 + 8 * r, 28)), f"t{t}")
            }
        return {"input": [f"thread {t} request {r}", " ".join([f"another text {t * r}"] * (1 + r % 4))]}

    bodies = {(t, r): request_body(t, r) for t in range(THREADS) for r in range(PER_THREAD)}
    with serve(model, max_batch_size=16, max_wait_ms=20) as (url, _):
        solo = {}
        with httpx.Client(base_url=url, timeout=60) as client:  # one request at a time: nothing to merge with
            for key, body in bodies.items():
                solo[key] = client.post("/v1/embeddings", json={**body, "encoding_format": "float"}).json()
            before = _histogram(client.get("/metrics").text, "vlm2vec_batch_requests")

        def worker(t):
            with httpx.Client(base_url=url, timeout=60) as client:
                return [
                    client.post("/v1/embeddings", json={**bodies[t, r], "encoding_format": "float"})
                    for r in range(PER_THREAD)
                ]

        with ThreadPoolExecutor(THREADS) as pool:
            results = dict(zip(range(THREADS), pool.map(worker, range(THREADS))))
        after = _histogram(httpx.get(f"{url}/metrics").text, "vlm2vec_batch_requests")
    for t, responses in results.items():
        for r, response in enumerate(responses):
            assert response.status_code == 200
            got = [d["embedding"] for d in response.json()["data"]]
            want = [d["embedding"] for d in solo[t, r]["data"]]
            np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
            assert response.json()["usage"] == solo[t, r]["usage"]
    assert before[0] == before[1]  # sequential requests: every batch held one request
    merged = (after[1] - before[1]) - (after[0] - before[0])
    assert merged > 0, "no micro-batch held more than one request"
    assert after[1] - before[1] < THREADS * PER_THREAD  # fewer batches than requests
    # and the solo answers are encode()'s
    np.testing.assert_allclose(
        [d["embedding"] for d in solo[0, 1]["data"]], model.encode(bodies[0, 1]["input"]).numpy(), atol=1e-5, rtol=0
    )


def test_a_full_queue_answers_503_with_retry_after_and_the_server_recovers(model, monkeypatch):
    gate = threading.Event()
    embed = serve_app.embed_inputs

    def held(*args, **kwargs):  # the model thread is busy until the queue has been overrun
        assert gate.wait(60)
        return embed(*args, **kwargs)

    monkeypatch.setattr(serve_app, "embed_inputs", held)
    with serve(model, max_queue_size=2, max_batch_size=1, max_wait_ms=0) as (url, _):
        with ThreadPoolExecutor(12) as pool:
            futures = [
                pool.submit(httpx.post, f"{url}/v1/embeddings", json={"input": f"text {i}"}, timeout=60)
                for i in range(12)
            ]
            rejected = 0
            for _ in range(600):  # until the queue is overrun: at most 1 running + 2 queued, the others refused
                rejected = sum(f.done() for f in futures)
                if rejected >= 9:
                    break
                threading.Event().wait(0.05)
            gate.set()
            responses = [f.result() for f in futures]
        codes = [r.status_code for r in responses]
        # one request in the model thread and two queued (or two queued if all came before it took the first)
        assert codes.count(200) in (2, 3) and codes.count(503) == 12 - codes.count(200)
        for response in responses:
            if response.status_code == 503:
                assert response.headers["retry-after"] == "1"
                assert response.json()["error"]["type"] == "ServiceUnavailableError"
        assert httpx.get(f"{url}/health").status_code == 200
        assert httpx.post(f"{url}/v1/embeddings", json={"input": "after"}, timeout=60).status_code == 200


def test_shutdown_answers_every_queued_request_first(model, monkeypatch):
    gate = threading.Event()
    embed = serve_app.embed_inputs

    def held(*args, **kwargs):
        assert gate.wait(60)
        return embed(*args, **kwargs)

    monkeypatch.setattr(serve_app, "embed_inputs", held)
    with serve(model, max_batch_size=1, max_wait_ms=0) as (url, server):
        with ThreadPoolExecutor(4) as pool:
            futures = [
                pool.submit(httpx.post, f"{url}/v1/embeddings", json={"input": f"q{i}"}, timeout=60) for i in range(4)
            ]
            for _ in range(600):  # one request in the model thread, three queued
                if re.search(r"^vlm2vec_queue_requests 3\.0$", httpx.get(f"{url}/metrics").text, re.M):
                    break
                threading.Event().wait(0.05)
            server.should_exit = True  # what SIGINT / SIGTERM do
            gate.set()
            responses = [f.result() for f in futures]
    assert [r.status_code for r in responses] == [200] * 4
    for i, response in enumerate(responses):
        got = response.json()["data"][0]["embedding"]
        np.testing.assert_allclose(got, model.encode([f"q{i}"])[0].numpy(), atol=1e-5, rtol=0)
