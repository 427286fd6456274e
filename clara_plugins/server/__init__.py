"""``clara serve``: an OpenAI-compatible HTTP server over a CLaRa store (needs the ``server`` extra).

``create_app(rag, settings)`` builds the ASGI app; ``clara serve --db DIR`` runs it under uvicorn. See docs/server.md.
"""

from __future__ import annotations

from typing import Any

from clara_plugins.server.settings import ServerSettings

__all__ = ["ServerSettings", "create_app"]


def create_app(*args: Any, **kwargs: Any) -> Any:  # re-exported lazily: importing FastAPI is not free
    """See :func:`clara_plugins.server.app.create_app`."""
    from clara_plugins.server.app import create_app as _create_app

    return _create_app(*args, **kwargs)
