"""An embedded server speaking vLLM's OpenAI-compatible ``/v1/embeddings`` API for one Vlm2Vec model
(``python -m modeling_vlm2vec.serve``; the ``serve`` extra: FastAPI + uvicorn, the stack of vLLM's own server).

Parts: :mod:`.protocol` reads requests, :mod:`.rendering` renders them through the exported chat template,
:mod:`.media` loads images, :mod:`.batcher` and :mod:`.forward` run micro-batches on one model thread, :mod:`.app`
is the HTTP application. Nothing else in the package imports this room.
"""

from .settings import ServeSettings

__all__ = ["ServeSettings", "create_app"]


def __getattr__(name: str):
    if name == "create_app":  # FastAPI is an optional extra: imported only when the app is asked for
        from .app import create_app

        return create_app
    raise AttributeError(name)
