"""Shared by the server tests: a tiny exported checkpoint, a server on a free loopback port, images as data URLs."""

from __future__ import annotations

import base64
import contextlib
import io
import socket
import threading
import time

import uvicorn
from PIL import Image, ImageDraw

from modeling_vlm2vec import Vlm2VecModel
from modeling_vlm2vec.hub.export import export_checkpoint
from modeling_vlm2vec.loading import load_vlm2vec
from modeling_vlm2vec.serve import ServeSettings, create_app

INSTRUCTION = "Represent the given image with the following question:"
NAME = "tiny-vlm2vec"


def export_tiny(backbone_dir, folder, **config):
    """A tiny export (the layout vLLM and sentence-transformers read), loaded back as users load it."""
    export_checkpoint(Vlm2VecModel.from_backbone(backbone_dir, **config), folder)
    return load_vlm2vec(folder)


def picture(colour: str, size=(40, 28)) -> Image.Image:
    image = Image.new("RGB", size, "white")
    ImageDraw.Draw(image).rectangle([2, 2, size[0] // 2, size[1] // 2], fill=colour)
    return image


def data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def image_messages(image: Image.Image, text: str, instruction: str = INSTRUCTION) -> list[dict]:
    """One conversation: the instruction as the system message, the image and text from the user."""
    return [
        {"role": "system", "content": instruction},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(image)}},
                                     {"type": "text", "text": text}]},
    ]  # fmt: skip


@contextlib.contextmanager
def running(app):
    """Serve ``app`` with uvicorn on 127.0.0.1:<free port> in a thread; yield (base URL, server); always stop it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        for _ in range(300):  # 30 s at most
            if server.started or not thread.is_alive():
                break
            time.sleep(0.1)
        assert server.started, "the server did not start"
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", server
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        sock.close()


def serve(model, **settings):
    """``running(create_app(...))`` for ``model`` under :data:`NAME` with ``settings``."""
    return running(create_app(ServeSettings(served_model_names=(NAME,), **settings), model=model))
