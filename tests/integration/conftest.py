"""Fixtures of the integration tests: a real ``chroma run`` server on 127.0.0.1."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import chromadb
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def chroma_port(tmp_path_factory):
    """Port of a ``chroma run`` server on 127.0.0.1 with a fresh folder, up for the module."""
    exe = Path(sys.executable).with_name("chroma")
    cli = str(exe) if exe.exists() else shutil.which("chroma")
    if not cli:
        pytest.skip("the chroma CLI is not installed")
    port = free_port()
    folder = tmp_path_factory.mktemp("chroma-server")
    cmd = [cli, "run", "--path", str(folder), "--port", str(port), "--host", "127.0.0.1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while True:
        try:
            chromadb.HttpClient(host="127.0.0.1", port=port).heartbeat()
            break
        except Exception:  # not up yet
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"chroma server did not start (exit code {proc.poll()})")
            time.sleep(0.3)
    yield port
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
