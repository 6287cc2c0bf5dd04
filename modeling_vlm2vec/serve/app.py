"""The FastAPI application: vLLM 0.33's ``/v1/embeddings``, ``/v1/models``, ``/health``, ``/version``, ``/metrics``.

``create_app(settings, model=...)`` serves a loaded model at once; ``create_app(settings, loader=...)`` starts
answering before the model is loaded (``/health`` and ``/v1/embeddings`` say 503 until it is). ``/v1/*`` needs
``Authorization: Bearer <key>`` when ``settings.api_keys`` is set (401 ``{"error": "Unauthorized"}`` otherwise, as
vLLM); ``/health``, ``/version`` and ``/metrics`` stay open. Each embeddings request is logged in one line (id,
status, inputs, prompt tokens, milliseconds).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version

import torch
from fastapi import FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from ..modeling_vlm2vec import Vlm2VecModel, truncate_embeddings
from .auth import ApiKeyMiddleware
from .batcher import MicroBatcher
from .errors import ApiError, bad_request
from .forward import embed_inputs
from .metrics import ServeMetrics
from .protocol import parse_request
from .rendering import PreparedInput, Renderer
from .settings import ServeSettings

logger = logging.getLogger("modeling_vlm2vec.serve")
_BYTE_ORDER = {"little": "<", "big": ">", "native": "="}


class ServedModel:
    """The model behind the app once loaded: its renderer and its micro-batcher."""

    def __init__(self, model: Vlm2VecModel, settings: ServeSettings, metrics: ServeMetrics):
        model.eval()
        self.model, self.settings = model, settings
        self.renderer = Renderer(model, settings)
        self.batcher = MicroBatcher(
            self._run,
            len,
            settings.max_batch_size,
            settings.max_wait_ms,
            settings.max_queue_size,
            on_batch=lambda requests, items: (
                metrics.batch_requests.observe(requests),
                metrics.batch_items.observe(items),
            ),
        )
        metrics.queue.set_function(self.batcher.depth)

    def _run(self, jobs: list[list[PreparedInput]]) -> list[tuple[torch.Tensor, list[int]]]:
        flat = [x for job in jobs for x in job]
        embeddings, tokens = embed_inputs(self.model, flat, self.settings.max_batch_size, self.renderer.tokenizer_lock)
        results, start = [], 0
        for job in jobs:
            results.append((embeddings[start : start + len(job)], tokens[start : start + len(job)]))
            start += len(job)
        return results


def create_app(
    settings: ServeSettings,
    model: Vlm2VecModel | None = None,
    loader: Callable[[], Vlm2VecModel] | None = None,
    on_load_error: Callable[[BaseException], None] | None = None,
) -> FastAPI:
    """The app serving ``model``, or the one ``loader()`` returns (called in a thread at startup; a failure is
    logged and handed to ``on_load_error``)."""
    if (model is None) == (loader is None):
        raise ValueError("give a model or a loader, not both")
    metrics = ServeMetrics()
    state: dict = {"served": None, "error": None}

    def load() -> None:
        try:
            state["served"] = ServedModel(loader(), settings, metrics)
            logger.info("model loaded; serving it as %s", ", ".join(settings.served_model_names))
        except BaseException as exc:  # reported, and the server stops through on_load_error
            state["error"] = exc
            logger.error("cannot load the model: %s", exc)
            if on_load_error is not None:
                on_load_error(exc)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        if model is not None:
            state["served"] = ServedModel(model, settings, metrics)
        else:
            threading.Thread(target=load, name="vlm2vec-serve-load", daemon=True).start()
        yield
        if state["served"] is not None:  # every request still queued is answered first
            await run_in_threadpool(state["served"].batcher.close)

    app = FastAPI(title="vlm2vec embeddings", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    if settings.api_keys:
        app.add_middleware(ApiKeyMiddleware, api_keys=settings.api_keys)

    def served() -> ServedModel:
        if state["served"] is None:
            message = "the model could not be loaded" if state["error"] else "the model is still loading"
            raise ApiError(503, message, headers={"Retry-After": "5"})
        return state["served"]

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Response:
        started = time.perf_counter()
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        items = tokens = 0
        try:
            body = await _read_json(request, settings.max_body_bytes)
            parsed = parse_request(body, settings.max_items_per_request)
            if parsed.model is not None and parsed.model not in settings.served_model_names:
                raise ApiError(404, f"The model `{parsed.model}` does not exist.")
            request_id = request.headers.get("x-request-id") or parsed.request_id or request_id
            current = served()
            with current.batcher.preparing():  # the batch being gathered waits for this request
                prepared = await run_in_threadpool(current.renderer.prepare, parsed)
                items = len(prepared)
                try:
                    future = current.batcher.submit(prepared)
                except queue.Full:
                    raise ApiError(
                        503,
                        f"the server is busy ({settings.max_queue_size} requests queued); retry later",
                        headers={"Retry-After": "1"},
                    ) from None
                except RuntimeError:  # the batcher has closed: the server is shutting down
                    raise ApiError(503, "the server is shutting down", headers={"Retry-After": "5"}) from None
            try:
                vectors, counts = await asyncio.wrap_future(future)
            except ValueError as exc:  # an input the processor refuses (e.g. its image alone exceeds max_length)
                raise bad_request(str(exc)) from None
            tokens = sum(counts)
            if parsed.dimensions is not None:
                vectors = truncate_embeddings(vectors, parsed.dimensions, current.model.config.normalize)
            data = [
                {"index": i, "object": "embedding", "embedding": _encode(v, parsed.encoding_format, parsed.endianness)}
                for i, v in enumerate(vectors.numpy())
            ]
            body = {
                "id": f"embd-{request_id}",
                "object": "list",
                "created": int(time.time()),
                "model": settings.served_model_names[0],
                "data": data,
                "usage": {
                    "prompt_tokens": tokens,
                    "total_tokens": tokens,
                    "completion_tokens": 0,
                    "prompt_tokens_details": None,
                },
            }
            response = JSONResponse(body, headers={"X-Request-Id": request_id})
            metrics.items.inc(items)
            metrics.prompt_tokens.inc(tokens)
        except ApiError as exc:
            response = JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)
        except Exception as exc:  # a bug of the server, never the client's input
            logger.exception("request %s failed", request_id)
            error = ApiError(500, f"internal error: {type(exc).__name__}")
            response = JSONResponse(error.body(), status_code=500)
        elapsed = time.perf_counter() - started
        metrics.requests.labels(code=str(response.status_code)).inc()
        metrics.latency.observe(elapsed)
        logger.info(
            "request %s: %d, %d inputs, %d tokens, %.1f ms",
            request_id,
            response.status_code,
            items,
            tokens,
            1000 * elapsed,
        )
        return response

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        current = state["served"]
        max_len = current.renderer.max_tokens if current is not None else None
        cards = [
            {
                "id": name,
                "object": "model",
                "created": int(time.time()),
                "owned_by": "vlm2vec",
                "root": settings.served_model_names[0],
                "parent": None,
                "max_model_len": max_len,
                "permission": [],
            }
            for name in settings.served_model_names
        ]
        return JSONResponse({"object": "list", "data": cards})

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200 if state["served"] is not None else 503)

    @app.get("/version")
    async def version_route() -> JSONResponse:
        return JSONResponse({"version": _version()})

    @app.get("/metrics")
    async def metrics_route() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app


async def _read_json(request: Request, cap: int):
    """The decoded JSON body: 400 for another content type or bad JSON, 413 past ``cap`` bytes (declared or sent)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise bad_request("Unsupported Media Type: Only 'application/json' is allowed", "body")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        raise ApiError(413, f"the request body is {declared} bytes; this server takes at most {cap}", "body")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > cap:
            raise ApiError(413, f"the request body exceeds {cap} bytes", "body")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request(f"the request body is not valid JSON: {exc}", "body") from None
    except RecursionError:
        raise bad_request("the request body nests JSON too deeply", "body") from None


def _encode(vector, encoding_format: str, endianness: str):
    """A float32 vector as a JSON list, or base64 of its float32 bytes in the requested byte order."""
    if encoding_format == "float":
        return vector.tolist()
    return base64.b64encode(vector.astype(f"{_BYTE_ORDER[endianness]}f4").tobytes()).decode("ascii")


@functools.cache
def _version() -> str:
    try:
        return version("vlm2vec")
    except PackageNotFoundError:  # run from a source tree
        return "unknown"


__all__ = ["ServedModel", "create_app"]
