"""Bearer-key checks: read endpoints need a read or write key, write endpoints a write key. Keys are never logged."""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from fastapi import Request

from clara_plugins.server.errors import APIError
from clara_plugins.server.settings import ServerSettings


def _matches(key: str, keys: Iterable[str]) -> bool:
    """Constant-time membership (every key is compared, so timing does not tell which one matched)."""
    found = False
    for candidate in keys:
        found |= hmac.compare_digest(key.encode(), candidate.encode())
    return found


def bearer_key(request: Request) -> str | None:
    """The key of an ``Authorization: Bearer KEY`` header, or None."""
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        return None
    return key.strip()


def authorize(request: Request, settings: ServerSettings, write: bool = False) -> None:
    """Check the request's key for a read (or write) endpoint.

    Raises:
        APIError: 401 when the key is missing or unknown, 403 when a read key asks to write.
    """
    if not settings.auth_enabled:
        return
    key = bearer_key(request)
    if key is None:
        msg = "missing API key: send it as 'Authorization: Bearer KEY'"
        raise APIError(401, msg, None, "missing_api_key")
    if _matches(key, settings.write_keys):
        return
    if not _matches(key, settings.read_keys):
        raise APIError(401, "invalid API key", None, "invalid_api_key")
    if write:
        msg = "this API key may only read; indexing and deleting need a write key"
        raise APIError(403, msg, None, "write_key_required")
