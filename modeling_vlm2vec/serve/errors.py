"""Errors of the HTTP API, in vLLM's shape: ``{"error": {"message", "type", "param", "code"}}`` with its status codes
(400 bad request, 404 unknown model, 413 body over the cap, 501 a data URL that is not base64, 503 a full queue or a
model still loading). Everything a client can cause is one of these; a 500 means a bug of the server."""

from __future__ import annotations

from http import HTTPStatus

#: The error ``type`` per status, as vLLM names them (its exception classes, or the HTTP phrase).
ERROR_TYPES = {
    400: "BadRequestError",
    404: "NotFoundError",
    413: HTTPStatus.REQUEST_ENTITY_TOO_LARGE.phrase,
    500: "InternalServerError",
    501: "NotImplementedError",
    503: "ServiceUnavailableError",
}


class ApiError(Exception):
    """An error answered to the client: ``status`` (a key of :data:`ERROR_TYPES`), ``message``, the request field
    at fault (``param``) and extra response ``headers`` (``Retry-After`` on a 503)."""

    def __init__(self, status: int, message: str, param: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.headers = status, message, param, headers or {}

    def body(self) -> dict:
        """The JSON body of the response."""
        return {
            "error": {
                "message": self.message,
                "type": ERROR_TYPES[self.status],
                "param": self.param,
                "code": self.status,
            }
        }


def bad_request(message: str, param: str | None = None) -> ApiError:
    """A 400 ``BadRequestError``."""
    return ApiError(400, message, param)


__all__ = ["ERROR_TYPES", "ApiError", "bad_request"]
