"""Shared fixtures: a tiny CLaRa model built offline (session-scoped), official-layout checkpoints, data paths."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from clara_plugins.tiny import build_tiny_clara, write_tiny_official_checkpoint

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
TINY_KWARGS = {"vocab_size": 1000, "hidden_size": 64, "num_layers": 2, "doc_max_length": 64, "compr_rate": 16}


def _load_passages(limit: int = 300) -> list[str]:
    path = SHARED_DATA / "clara_example" / "pretrain_data.jsonl"
    if path.exists():
        with path.open() as f:
            return [json.loads(line)["docs"][0] for _, line in zip(range(limit), f)]
    bundled = REPO / "clara_plugins" / "assets" / "demo_corpus.jsonl"
    return [json.loads(line)["text"] for line in bundled.read_text().splitlines()[:limit]]


@pytest.fixture(scope="session")
def passages() -> list[str]:
    """Real Wikipedia passages (from ../shared/data, or the bundled demo corpus)."""
    return _load_passages()


@pytest.fixture(scope="session")
def _tiny_model_session(passages):
    return build_tiny_clara(texts=passages, seed=0, **TINY_KWARGS)


@pytest.fixture(scope="session")
def tiny_model(_tiny_model_session):
    """A random tiny ClaraModel (CPU, fp32, hidden 64, n_mem 4, all three adapters). Do not mutate it."""
    return _tiny_model_session


@pytest.fixture
def fresh_tiny_model(_tiny_model_session):
    """A private deep copy of the tiny model, free to mutate (train, change weights)."""
    return copy.deepcopy(_tiny_model_session)


@pytest.fixture(scope="session")
def tiny_official(tmp_path_factory, passages):
    """``(folder, model)``: an official-layout checkpoint with all three adapters and the in-memory original."""
    folder = tmp_path_factory.mktemp("official") / "compression-16"
    model = write_tiny_official_checkpoint(folder, texts=passages, seed=3, **TINY_KWARGS)
    return folder, model


@pytest.fixture(scope="session")
def tiny_official_dir(tiny_official) -> Path:
    return tiny_official[0]


@pytest.fixture(scope="session")
def model_dir(tiny_model, tmp_path_factory) -> str:
    """The test-shape tiny model saved in our format, for commands and processes that load a model by path."""
    folder = tmp_path_factory.mktemp("model") / "tiny"
    tiny_model.save_pretrained(folder)
    return str(folder)


MOTO_KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def installed_tool(name: str, hint: str) -> str:
    """The command ``name`` of this virtual environment (else on PATH); the test is skipped when there is none."""
    exe = Path(sys.executable).with_name(name)
    cli = str(exe) if exe.exists() else shutil.which(name)
    if not cli:
        pytest.skip(f"{name} is not installed ({hint})")
    return cli


@contextlib.contextmanager
def running_server(cmd: list[str], probe: Callable[[], object], what: str, timeout: float = 60) -> Iterator[None]:
    """Start ``cmd`` (quiet), wait until ``probe()`` stops raising, stop it afterwards; a server that exits or does
    not answer in ``timeout`` seconds fails the test."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while True:
        try:
            probe()
            break
        except Exception:  # not up yet
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"{what} did not start (exit code {proc.poll()})")
            time.sleep(0.1)
    try:
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="session")
def moto_endpoint():
    """URL of a real S3-compatible server (moto's server mode, ``moto_server``) on 127.0.0.1, up for the session."""
    cli = installed_tool("moto_server", "pip install 'moto[server]'")
    port = str(free_port())
    url = f"http://127.0.0.1:{port}"
    with running_server(
        [cli, "-H", "127.0.0.1", "-p", port],
        lambda: urllib.request.urlopen(f"{url}/moto-api/", timeout=1),
        "moto_server",
        30,
    ):
        yield url


@pytest.fixture
def s3_bucket(moto_endpoint) -> dict:
    """A new empty bucket on the moto server: ``{"url": "s3://NAME", "storage_options": {...}, "env": {...}}``.

    ``storage_options`` are what s3fs needs for this endpoint; ``env`` is the same as environment variables (for
    subprocesses: botocore reads ``AWS_ENDPOINT_URL``).
    """
    import s3fs

    options = {"endpoint_url": moto_endpoint, "key": "testing", "secret": "testing"}
    name = f"clara-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem(**options).mkdir(name)
    env = {**os.environ, **MOTO_KEYS, "AWS_ENDPOINT_URL": moto_endpoint}
    return {"url": f"s3://{name}", "storage_options": options, "env": env}
