"""``python -m modeling_vlm2vec.serve <checkpoint or Hub id>`` (also ``vlm2vec-serve``): serve one model over vLLM's
OpenAI-compatible ``/v1/embeddings`` API on this machine.

vLLM's flag names where vLLM has the flag (``--host``, ``--port``, ``--api-key``, ``--served-model-name``,
``--allowed-local-media-path``, ``--allowed-media-domains``, ``--trust-remote-code``, ``--dtype``), this project's
``--snake_case`` for the rest (each also accepted with dashes). Binds 127.0.0.1 unless ``--host`` says otherwise.
Bad flags or a path that holds no model: ``error: ...`` and exit 2 before anything starts; the model is loaded once
the server is up (``/health`` answers 503 until then). Ctrl-C (SIGINT) or SIGTERM stops accepting requests, answers
every queued one, then exits.
"""

from __future__ import annotations

import argparse
import logging
import sys

from ..common.cli import run_cli
from ..common.errors import DataError
from ..loading import load_vlm2vec, read_config
from .settings import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_MAX_ITEMS, ServeSettings


def _flag(parser: argparse.ArgumentParser, name: str, **kwargs) -> None:
    """``--name`` and its dashed spelling."""
    names = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
    parser.add_argument(*names, dest=name, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m modeling_vlm2vec.serve", description=__doc__.split("\n\n")[0].replace("``", "")
    )
    parser.add_argument("model", help="Vlm2Vec checkpoint folder or Hub id (an export, a training output...).")
    parser.add_argument("--host", default="127.0.0.1", help="Address to bind (default: 127.0.0.1, this machine only).")
    parser.add_argument("--port", type=int, default=8000, help="Port (default: 8000; 0 picks a free one).")
    parser.add_argument("--api-key", dest="api_key", nargs="+", default=[], help="Accepted Bearer key(s) on /v1/*.")
    parser.add_argument(
        "--served-model-name",
        dest="served_model_name",
        nargs="+",
        default=None,
        help="Name(s) clients put in `model` (default: the model argument).",
    )
    parser.add_argument(
        "--allowed-local-media-path",
        dest="allowed_local_media_path",
        default=None,
        help="Folder whose files file:// image URLs may name (default: file:// refused).",
    )
    parser.add_argument(
        "--allowed-media-domains",
        dest="allowed_media_domains",
        nargs="+",
        default=[],
        help="Hosts http(s) image URLs may come from (default: none, nothing is fetched).",
    )
    parser.add_argument(
        "--trust-remote-code",
        "--trust_remote_code",
        dest="trust_remote_code",
        action="store_true",
        help="Allow Hub code of the backbone or its processor (our checkpoints never need it).",
    )
    parser.add_argument("--dtype", default="auto", help="Weights dtype: auto (the checkpoint's), float32, bf16...")
    parser.add_argument("--device", default=None, help="Device for the model (default: CPU).")
    _flag(parser, "max_batch_size", type=int, default=32, help="Inputs per micro-batch and forward pass (32).")
    _flag(parser, "max_wait_ms", type=float, default=5.0, help="Wait for more requests to join a batch, ms (5).")
    _flag(parser, "max_queue_size", type=int, default=256, help="Requests queued at most; more get 503 (256).")
    _flag(parser, "max_body_bytes", type=int, default=DEFAULT_MAX_BODY_BYTES, help="Request body cap; 413 beyond.")
    _flag(parser, "max_items_per_request", type=int, default=DEFAULT_MAX_ITEMS, help="Inputs per request at most.")
    _flag(parser, "max_image_pixels", type=int, default=DEFAULT_MAX_IMAGE_PIXELS, help="Pixels per image at most.")
    _flag(parser, "log_level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    outcome = {"status": 0}

    def body() -> None:
        import uvicorn  # the serve extra; checked here so a missing install is a clear error

        from .app import create_app

        if not 0 <= args.port <= 65535:
            raise DataError(f"--port must be in [0, 65535], got {args.port}")
        read_config(args.model)  # DataError naming the place when there is no model there
        try:
            settings = ServeSettings(
                served_model_names=tuple(args.served_model_name or [args.model]),
                api_keys=tuple(args.api_key),
                max_batch_size=args.max_batch_size,
                max_wait_ms=args.max_wait_ms,
                max_queue_size=args.max_queue_size,
                max_body_bytes=args.max_body_bytes,
                max_items_per_request=args.max_items_per_request,
                max_image_pixels=args.max_image_pixels,
                allowed_local_media_path=args.allowed_local_media_path,
                allowed_media_domains=tuple(args.allowed_media_domains),
            )
        except ValueError as exc:
            raise DataError(str(exc)) from None
        logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        if args.host not in ("127.0.0.1", "localhost", "::1"):
            logging.getLogger("modeling_vlm2vec.serve").warning(
                "binding %s: other machines can reach this server%s",
                args.host,
                "" if settings.api_keys else " and no --api-key is set",
            )

        def load():
            return load_vlm2vec(
                args.model, dtype=args.dtype, trust_remote_code=args.trust_remote_code, device=args.device
            )

        def stop(exc: BaseException) -> None:
            outcome["status"] = 2 if isinstance(exc, DataError) else 1
            server.should_exit = True

        app = create_app(settings, loader=load, on_load_error=stop)
        server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level))
        server.run()
        if outcome["status"] == 0 and not server.started:
            outcome["status"] = 1  # e.g. the port is taken: uvicorn has said so

    status = run_cli(body)
    return status or outcome["status"]


if __name__ == "__main__":
    sys.exit(main())
