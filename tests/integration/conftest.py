"""Fixtures of the integration tests: a real ``chroma run`` server on 127.0.0.1 (helpers in tests/conftest.py)."""

from __future__ import annotations

import chromadb
import pytest

from tests.conftest import free_port, installed_tool, running_server


@pytest.fixture(scope="module")
def chroma_port(tmp_path_factory):
    """Port of a ``chroma run`` server on 127.0.0.1 with a fresh folder, up for the module."""
    cli = installed_tool("chroma", "pip install chromadb")
    port, folder = free_port(), tmp_path_factory.mktemp("chroma-server")
    cmd = [cli, "run", "--path", str(folder), "--port", str(port), "--host", "127.0.0.1"]
    with running_server(cmd, lambda: chromadb.HttpClient(host="127.0.0.1", port=port).heartbeat(), "chroma server"):
        yield port
