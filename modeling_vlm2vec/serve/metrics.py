"""Prometheus metrics of one server (a registry of its own, so several apps in one process do not mix)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServeMetrics:
    """Requests by status, inputs and prompt tokens served, request latency, micro-batch sizes, queue depth."""

    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("vlm2vec_requests", "Embedding requests answered, by HTTP status", ["code"], registry=r)
        self.items = Counter("vlm2vec_request_items", "Inputs embedded", registry=r)
        self.prompt_tokens = Counter(
            "vlm2vec_prompt_tokens", "Prompt tokens embedded (image tokens included)", registry=r
        )
        self.latency = Histogram("vlm2vec_request_latency_seconds", "Time from request to response", registry=r)
        self.batch_requests = Histogram(
            "vlm2vec_batch_requests", "Requests merged into one micro-batch", buckets=_SIZES, registry=r
        )
        self.batch_items = Histogram("vlm2vec_batch_items", "Inputs in one micro-batch", buckets=_SIZES, registry=r)
        self.queue = Gauge("vlm2vec_queue_requests", "Requests waiting for the model thread", registry=r)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)


__all__ = ["ServeMetrics"]
