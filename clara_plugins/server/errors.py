"""OpenAI-style JSON errors: ``{"error": {"message", "type", "param", "code"}}`` with the right HTTP status."""

from __future__ import annotations

import logging
from typing import Any

from chromadb.errors import ChromaError
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from clara_plugins.errors import ClaraError, InputError

logger = logging.getLogger(__name__)

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
}


class APIError(Exception):
    """An error answered to the client as OpenAI-style JSON.

    Args:
        status: HTTP status.
        message: What went wrong, for the client (never a key, never a traceback).
        param: The request field at fault, if any.
        code: A short machine-readable code.
    """

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """The JSON body of an error."""
    kind = ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_response(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    """A JSON response carrying an OpenAI-style error."""
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(error_body(status, message, param, code), status_code=status, headers=headers)


def _validation_response(err: RequestValidationError) -> JSONResponse:
    first = err.errors()[0] if err.errors() else {}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    if first.get("type") == "json_invalid":
        return error_response(400, "the request body is not valid JSON", None, "invalid_json")
    param = ".".join(loc) or None
    message = f"{param or 'body'}: {first.get('msg', 'invalid value')}"
    return error_response(422, message, param, "invalid_value")


def _chroma_status(err: ChromaError) -> int:
    """Chroma's own HTTP status for its error (400 for an invalid ``where`` filter), 500 when it has none."""
    try:
        return int(err.code())
    except (AttributeError, TypeError, ValueError):
        return 500


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error as OpenAI-style JSON; unexpected ones as a 500 without details (logged here)."""

    @app.exception_handler(APIError)
    async def _api_error(_: Request, err: APIError) -> JSONResponse:
        return error_response(err.status, err.message, err.param, err.code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        return _validation_response(err)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, err: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code)
        return error_response(err.status_code, str(err.detail), None, code)

    @app.exception_handler(InputError)
    async def _input(_: Request, err: InputError) -> JSONResponse:
        return error_response(400, str(err), None, "invalid_value")

    @app.exception_handler(ClaraError)
    async def _clara(_: Request, err: ClaraError) -> JSONResponse:
        logger.warning("request failed: %s", err)
        return error_response(400, str(err), None, type(err).__name__)

    @app.exception_handler(ChromaError)
    async def _chroma(_: Request, err: ChromaError) -> JSONResponse:
        status = _chroma_status(err)
        if status >= 500:
            logger.error("store error", exc_info=err)
            return error_response(status, "the store failed; see the server log", None, "store_error")
        return error_response(status, f"the store refused the request: {err}", None, "store_refused")

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, err: Exception) -> JSONResponse:
        logger.error("internal error", exc_info=err)
        return error_response(500, "internal server error; see the server log", None, "internal_error")
