"""``clara serve`` as users run it: a subprocess on 127.0.0.1, a bounded load test from 16 clients, then SIGTERM
during load (in-flight requests finish or get a clean 503, the process exits, the store is intact)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import free_port

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CORPUS = Path(__file__).resolve().parents[2] / "clara_plugins" / "assets" / "demo_corpus.jsonl"
READ, WRITE = "load-read-key", "load-write-key"
QUESTIONS = ["Who founded Flip Skateboards?", "What is the capital of France?", "Where is the Amazon river?",
             "What do bees make?", "Who painted the Mona Lisa?", "When was the bridge built?"]  # fmt: skip
LOAD_SECONDS = 8


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A ``clara serve`` process over a new store, indexed through the API: (url, process, docs, db, chunks)."""
    tmp = tmp_path_factory.mktemp("serve")
    (tmp / "write.keys").write_text(f"# writers\n{WRITE}\n")
    port = free_port()
    cmd = [sys.executable, "-m", "clara_plugins.cli", "serve", "--db", str(tmp / "db"), "--model", "tiny",
           "--port", str(port), "--write-key-file", str(tmp / "write.keys"), "--graceful-timeout", "20"]  # fmt: skip
    env = {**os.environ, "CLARA_API_KEYS": READ}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    _wait_up(url, proc)
    docs = {d["id"]: d["text"] for d in map(json.loads, CORPUS.read_text().splitlines()[:12])}
    records = [{"id": k, "text": v} for k, v in docs.items()]
    resp = httpx.post(f"{url}/v1/index", json={"documents": records}, headers=_auth(WRITE), timeout=120)
    assert resp.status_code == 200, resp.text
    yield url, proc, docs, tmp / "db", resp.json()["chunks_in_store"]
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def _auth(key):
    return {"Authorization": f"Bearer {key}"}


def _wait_up(url, proc, timeout=180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"clara serve exited early: {proc.stderr.read()}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    pytest.fail("clara serve did not come up")


def _client_loop(url, stop, results, index):
    with httpx.Client(base_url=url, headers=_auth(READ), timeout=60) as client:
        i = index
        while not stop.is_set():
            body = {"model": "tiny", "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
                    "max_tokens": 8}  # fmt: skip
            i += 1
            try:
                resp = client.post("/v1/chat/completions", json=body)
            except httpx.TransportError as err:  # the server is gone (SIGTERM test)
                results.append(("gone", type(err).__name__))
                return
            results.append((resp.status_code, resp.json()))


def _load(url, clients, stop):
    results: list = []
    threads = [threading.Thread(target=_client_loop, args=(url, stop, results, i)) for i in range(clients)]
    for t in threads:
        t.start()
    return threads, results


def _check_sources(body, docs):
    for src in body["clara_sources"]:
        assert src["doc_id"] in docs
        assert docs[src["doc_id"]][src["start"] : src["end"]] == src["text"]


def test_sixteen_clients_get_no_errors_and_only_stored_sources(server):
    url, _, docs, _, _ = server
    stop = threading.Event()
    threads, results = _load(url, 16, stop)
    time.sleep(LOAD_SECONDS)
    stop.set()
    for t in threads:
        t.join(60)
    assert len(results) >= 16
    assert [r for r in results if r[0] != 200] == []
    for _, body in results:
        _check_sources(body, docs)
    metrics = httpx.get(f"{url}/metrics", headers=_auth(READ)).text
    assert "clara_batch_size_count" in metrics


def test_sigterm_during_load_finishes_cleanly_and_keeps_the_store(server):
    url, proc, docs, db, n_chunks = server
    stop = threading.Event()
    threads, results = _load(url, 8, stop)
    time.sleep(2)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    stop.set()
    for t in threads:
        t.join(60)
    assert proc.returncode in (0, -signal.SIGTERM), stderr  # uvicorn re-raises the signal once it has stopped
    assert "Traceback" not in stderr and "model thread stopped" in stderr, stderr[-3000:]
    statuses = {r[0] for r in results}
    assert statuses <= {200, 503, "gone"} and 200 in statuses
    for status, body in results:
        if status == 200:
            _check_sources(body, docs)
    info = subprocess.run([sys.executable, "-m", "clara_plugins.cli", "info", "--db", str(db), "--json"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    assert (json.loads(info.stdout)["n_docs"], json.loads(info.stdout)["n_chunks"]) == (len(docs), n_chunks)
