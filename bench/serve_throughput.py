"""The embedded server's throughput over HTTP against in-process ``encode()`` of the same items, in one run.

The bench model is exported (``export_checkpoint``) and served by ``python -m modeling_vlm2vec.serve`` in a
subprocess on 127.0.0.1 (2 intra-op threads, as ``encode()`` here); the same folder is loaded in this process with
``load_vlm2vec``. ``--items`` items of each kind — ``text`` (a caption with an instruction, sent as ``input``) and
``image+text`` (a 40x32 image and a question with an instruction, sent as chat ``messages`` with a base64 data URL)
— are embedded in rounds: ``encode(items, batch_size=--batch-size)`` in process (the server is idle meanwhile), then
over HTTP with ``--items-per-request`` items per request from 1, 4 and 16 client threads (one keep-alive connection
each). The rounds repeat ``--repeats`` times, in rotating order; each HTTP round is divided by the ``encode()`` round
of its repeat (the ratio, > 1 = the server faster), and the median ratio is the headline, with items/s (best round,
median in brackets) and client-side request latency p50 / p99 over all rounds. Every server embedding is compared
with ``encode()``'s (max abs difference). With ``c`` clients of ``k`` items each, no micro-batch holds more than
``c * k`` rows: ``ceiling_ratio`` is in-process ``encode()`` at that batch size (capped at ``--batch-size``) against
``encode()`` at ``--batch-size`` (``--repeats`` rounds after the others, medians) -- what a server with no cost of its
own would reach.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
from common import (
    THREADS,
    add_backbone_arguments,
    backbone_spec,
    load_bench_model,
    machine,
    median,
    noise_image,
    report,
)
from encode_throughput import make_items

from modeling_vlm2vec.hub.export import export_checkpoint
from modeling_vlm2vec.loading import load_vlm2vec

INSTRUCTION = "Represent the given image with the following question:"
KINDS = ("text", "image+text")
CONCURRENCY = (1, 4, 16)


def request_inputs(kind: str, items: list) -> list:
    """What goes on the wire for each item: the text itself, or one conversation with the image as a data URL."""
    if kind == "text":
        return items
    wire = []
    for item in items:
        buffer = io.BytesIO()
        item["image"].save(buffer, "PNG")
        url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
        user = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": item["text"]}]
        wire.append([{"role": "system", "content": INSTRUCTION}, {"role": "user", "content": user}])
    return wire


class HttpClients:
    """``concurrency`` client threads, each with one keep-alive ``httpx`` connection, made once and reused by every
    round (building an ``httpx.Client`` costs milliseconds of client CPU: it is not what a round measures)."""

    def __init__(self, url: str, concurrency: int):
        self.url, self.local = url, threading.local()
        self.pool = ThreadPoolExecutor(concurrency)

    def client(self) -> httpx.Client:
        if getattr(self.local, "client", None) is None:
            self.local.client = httpx.Client(base_url=self.url, timeout=300)
        return self.local.client

    def close(self) -> None:
        self.pool.shutdown()


def http_round(clients: HttpClients, inputs: list, per_request: int) -> tuple[float, list[float], np.ndarray]:
    """(seconds, request latencies, embeddings in input order) of embedding ``inputs`` over HTTP."""
    chunks = [list(range(i, min(i + per_request, len(inputs)))) for i in range(0, len(inputs), per_request)]
    rows: dict[int, np.ndarray] = {}
    latencies: list[float] = []

    def send(chunk: list[int]) -> None:
        client = clients.client()
        selected = [inputs[i] for i in chunk]
        is_chat = isinstance(selected[0], list)
        body = {"messages": selected} if is_chat else {"input": selected}
        start = time.perf_counter()
        response = client.post("/v1/embeddings", json={**body, "encoding_format": "base64"})
        latencies.append(time.perf_counter() - start)
        response.raise_for_status()
        for i, data in zip(chunk, response.json()["data"]):
            rows[i] = np.frombuffer(base64.b64decode(data["embedding"]), dtype="<f4")

    start = time.perf_counter()
    list(clients.pool.map(send, chunks))
    seconds = time.perf_counter() - start
    return seconds, latencies, np.stack([rows[i] for i in range(len(inputs))])


def encode_time(model, items: list, instruction: str | None, batch_size: int) -> float:
    """Seconds of in-process ``encode()`` of ``items`` at ``batch_size``."""
    start = time.perf_counter()
    model.encode(items, instruction=instruction, batch_size=batch_size, show_progress_bar=False)
    return time.perf_counter() - start


def start_server(folder: str, max_batch_size: int, max_wait_ms: float) -> tuple[subprocess.Popen, str]:
    command = [sys.executable, "-m", "modeling_vlm2vec.serve", folder, "--port", "0",
               "--max_batch_size", str(max_batch_size), "--max_wait_ms", str(max_wait_ms)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS)}
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    for line in process.stderr:  # uvicorn logs the port it bound
        found = re.search(r"running on (http://127\.0\.0\.1:\d+)", line)
        if found:
            url = found.group(1)
            break
    else:
        raise RuntimeError("the server did not start")
    threading.Thread(target=process.stderr.read, daemon=True).start()  # the request log: drained, not kept
    for _ in range(1200):
        if httpx.get(f"{url}/health").status_code == 200:
            return process, url
        time.sleep(0.1)
    raise RuntimeError("the server did not load the model")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16, help="encode() batch size and server --max_batch_size")
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--items-per-request", type=int, default=1)
    add_backbone_arguments(parser)
    args = parser.parse_args()

    folder = os.path.join(tempfile.mkdtemp(prefix="vlm2vec-serve-bench-"), "export")
    export_checkpoint(load_bench_model(hidden_size=args.hidden_size, num_layers=args.layers).eval(), folder)
    model = load_vlm2vec(folder).eval()
    process, url = start_server(folder, args.batch_size, args.max_wait_ms)
    results = {}
    clients = {c: HttpClients(url, c) for c in CONCURRENCY}
    try:
        for kind in KINDS:
            items = make_items(kind, args.items)
            if kind == "image+text":  # the question only: the instruction is the system message
                items = [{"text": it["text"].split(": ", 1)[1], "image": noise_image(i)} for i, it in enumerate(items)]
            instruction = INSTRUCTION if kind == "image+text" else None
            inputs = request_inputs(kind, items)
            expected = model.encode(items, instruction=instruction, batch_size=args.batch_size).numpy()  # warm-up
            for concurrency in CONCURRENCY:
                http_round(clients[concurrency], inputs, args.items_per_request)  # warm-up: connections opened
            encode_seconds, http_seconds, latencies, worst = [], {c: [] for c in CONCURRENCY}, {}, 0.0
            for repeat in range(args.repeats):
                order = ["encode", *CONCURRENCY]
                order = order[repeat % len(order) :] + order[: repeat % len(order)]
                for step in order:
                    if step == "encode":
                        encode_seconds.append(encode_time(model, items, instruction, args.batch_size))
                    else:
                        seconds, lat, served = http_round(clients[step], inputs, args.items_per_request)
                        http_seconds[step].append(seconds)
                        latencies.setdefault(step, []).extend(lat)
                        worst = max(worst, float(np.abs(served - expected).max()))
            row = {"encode_items_per_second": _rate(args.items, encode_seconds)}
            for c in CONCURRENCY:
                ratios = [e / h for e, h in zip(encode_seconds, http_seconds[c])]
                lat = np.asarray(latencies[c]) * 1000
                rows = min(c * args.items_per_request, args.batch_size)  # the most a micro-batch can hold
                small = [encode_time(model, items, instruction, rows) for _ in range(args.repeats)]
                row[f"concurrency_{c}"] = {
                    "items_per_second": _rate(args.items, http_seconds[c]),
                    "ratio_to_encode_median": round(median(ratios), 3),
                    "ratio_range": [round(min(ratios), 3), round(max(ratios), 3)],
                    "batch_rows_at_most": rows,
                    "ceiling_ratio": round(median(encode_seconds) / median(small), 3),
                    "latency_ms_p50": round(float(np.percentile(lat, 50)), 1),
                    "latency_ms_p99": round(float(np.percentile(lat, 99)), 1),
                }
            row["max_abs_difference"] = worst
            results[kind] = row
    finally:
        for pool in clients.values():
            pool.close()
        process.terminate()
        process.wait(timeout=60)
    report(
        {
            "benchmark": "serve_throughput",
            "items": args.items,
            "items_per_request": args.items_per_request,
            "repeats": args.repeats,
            "batch_size": args.batch_size,
            "max_wait_ms": args.max_wait_ms,
            "backbone": backbone_spec(args),
            "results": results,
            "machine": machine(),
        }
    )


def _rate(items: int, seconds: list[float]) -> str:
    return f"{items / min(seconds):.1f} ({items / median(seconds):.1f})"


if __name__ == "__main__":
    main()
