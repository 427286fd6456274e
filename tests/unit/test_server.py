"""``clara serve`` end to end: a real uvicorn server on 127.0.0.1 over a store indexed with the bundled tiny model,
driven by the real OpenAI client (sync, async, streaming), LangChain's ChatOpenAI and LlamaIndex's OpenAILike."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from clara_plugins.rag import ClaraRAG  # noqa: E402
from clara_plugins.server.app import create_app  # noqa: E402
from clara_plugins.server.backend import ClaraBackend  # noqa: E402
from clara_plugins.server.runner import serve_in_thread  # noqa: E402
from clara_plugins.server.settings import ServerSettings  # noqa: E402

pytestmark = pytest.mark.slow

CORPUS = Path(__file__).resolve().parents[2] / "clara_plugins" / "assets" / "demo_corpus.jsonl"
READ, WRITE = "read-key-123", "write-key-456"
QUESTIONS = ["Who founded Flip Skateboards?", "What is the capital of France?", "Where is the Amazon river?",
             "What do bees make?", "When did the war end?", "Who painted the Mona Lisa?"]  # fmt: skip
ERROR_FIELDS = {"message", "type", "param", "code"}


@pytest.fixture(scope="module")
def rag(tmp_path_factory):
    docs = [json.loads(line) for line in CORPUS.read_text().splitlines()[:12]]
    rag = ClaraRAG.from_pretrained("tiny", store=tmp_path_factory.mktemp("served"))
    rag.index([{"text": d["text"], "id": d["id"]} for d in docs], show_progress=False)
    return rag


def _settings(**kw) -> ServerSettings:
    base = {"model_name": "tiny", "read_keys": frozenset({READ}), "write_keys": frozenset({WRITE}),
            "max_tokens_limit": 64, "max_request_bytes": 20_000, "batch_window_ms": 50}  # fmt: skip
    return ServerSettings(**{**base, **kw})


@pytest.fixture(scope="module")
def url(rag):
    with serve_in_thread(create_app(rag, _settings())) as base:
        yield base


@pytest.fixture(scope="module")
def expected(rag, url):
    """What the library answers for each question (computed while the server is idle): (answer, source ids)."""
    return {q: (rag.ask(q, max_new_tokens=16).text, [h.id for h in rag.search(q)]) for q in QUESTIONS}


def _client(url, key=READ, **kw):
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, **kw)


def _ids(sources):
    return [s["id"] for s in sources]


def _assert_error(resp, status, param=None):
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body["error"]) == ERROR_FIELDS and "Traceback" not in resp.text
    if param:
        assert body["error"]["param"] == param
    return body["error"]


# ------------------------------------------------------------------ OpenAI client
def test_openai_answer_is_the_library_answer_from_the_retrieved_chunks(url, expected):
    question = QUESTIONS[0]
    resp = _client(url).chat.completions.create(
        model="tiny", messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": question}],
        max_tokens=16, temperature=0,
    )  # fmt: skip
    answer, source_ids = expected[question]
    assert resp.choices[0].message.content == answer
    assert _ids(resp.model_extra["clara_sources"]) == source_ids
    assert resp.usage.completion_tokens > 0 and resp.choices[0].finish_reason == "stop"


def test_openai_stream_gives_the_same_answer_and_sources_then_done(url, expected):
    question = QUESTIONS[1]
    chunks = list(
        _client(url).chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": question}], max_tokens=16, stream=True,
            stream_options={"include_usage": True},
        )
    )  # fmt: skip
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected[question][0]
    assert _ids(chunks[0].model_extra["clara_sources"]) == expected[question][1]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens > 0
    body = {"model": "tiny", "stream": True, "messages": [{"role": "user", "content": question}]}
    raw = httpx.post(f"{url}/v1/chat/completions", headers={"Authorization": f"Bearer {READ}"}, json=body)
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert raw.text.rstrip().endswith("data: [DONE]")


def test_concurrent_async_requests_are_batched_and_each_gets_its_own_sources(url, expected):
    async def ask_all():
        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=READ, max_retries=0)
        calls = [client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": q}],
                                                max_tokens=16) for q in QUESTIONS]  # fmt: skip
        return await asyncio.gather(*calls)

    before = _metric(url, "clara_batch_size_count")
    answers = asyncio.run(ask_all())
    for question, resp in zip(QUESTIONS, answers):
        assert _ids(resp.model_extra["clara_sources"]) == expected[question][1]
        assert resp.choices[0].message.content == expected[question][0]
    batches = _metric(url, "clara_batch_size_count") - before
    assert 1 <= batches < len(QUESTIONS)  # at least two questions shared one generator call


def test_async_stream(url, expected):
    async def stream_one(question):
        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=READ, max_retries=0)
        stream = await client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": question}], max_tokens=16, stream=True
        )
        return [chunk async for chunk in stream]

    question = QUESTIONS[4]
    chunks = asyncio.run(stream_one(question))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected[question][0]
    assert _ids(chunks[0].model_extra["clara_sources"]) == expected[question][1]


def test_stop_sequence_and_length_finish(url, expected):
    question = QUESTIONS[0]
    answer = expected[question][0]
    cut = answer.split()[-1]
    resp = _client(url).chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": question}], stop=[" " + cut], max_tokens=16
    )
    assert resp.choices[0].message.content == answer[: answer.index(" " + cut)]
    assert resp.choices[0].finish_reason == "stop"
    streamed = _client(url).chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": question}], stop=[" " + cut], stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == resp.choices[0].message.content
    one = _client(url).chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": question}], max_tokens=1
    )
    assert one.choices[0].finish_reason == "length" and one.usage.completion_tokens == 1


def test_context_carried_by_the_request_is_read_and_the_store_is_untouched(url, rag):
    count = rag.store.count()
    docs = ["The Eiffel Tower is in Paris.", "Bananas are yellow."]
    resp = _client(url).chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Where is the Eiffel Tower?"}],
        extra_body={"clara_documents": docs},
    )  # fmt: skip
    assert [s["text"] for s in resp.model_extra["clara_sources"]] == docs
    assert rag.store.count() == count


def test_models_are_listed(url):
    assert [m.id for m in _client(url).models.list()] == ["tiny"]
    with pytest.raises(openai.NotFoundError):
        _client(url).chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "q"}])


# ------------------------------------------------------------------ frameworks
def test_langchain_chat_openai(url, expected):
    chat_openai = pytest.importorskip("langchain_openai").ChatOpenAI
    llm = chat_openai(base_url=f"{url}/v1", api_key=READ, model="tiny", temperature=0, max_tokens=16, max_retries=0)
    question = QUESTIONS[2]
    assert llm.invoke(question).content == expected[question][0]
    assert "".join(c.content for c in llm.stream(question)) == expected[question][0]


def test_llama_index_openai_like(url, expected):
    openai_like = pytest.importorskip("llama_index.llms.openai_like").OpenAILike
    from llama_index.core.llms import ChatMessage

    question = QUESTIONS[3]
    llm = openai_like(model="tiny", api_base=f"{url}/v1", api_key=READ, is_chat_model=True, temperature=0.0,
                      max_tokens=16, max_retries=0)  # fmt: skip
    assert llm.chat([ChatMessage(role="user", content=question)]).message.content == expected[question][0]
    sampling = openai_like(model="tiny", api_base=f"{url}/v1", api_key=READ, is_chat_model=True, max_retries=0)
    with pytest.raises(openai.BadRequestError, match="temperature"):  # its default temperature 0.1 is refused
        sampling.chat([ChatMessage(role="user", content=question)])


# ------------------------------------------------------------------ native endpoints
def test_search_returns_the_library_hits(url, rag, expected):
    resp = httpx.post(f"{url}/v1/search", json={"query": QUESTIONS[0], "k": 3},
                      headers={"Authorization": f"Bearer {READ}"})  # fmt: skip
    assert _ids(resp.json()["data"]) == [h.id for h in rag.search(QUESTIONS[0], k=3)]
    _assert_error(httpx.post(f"{url}/v1/search", json={"query": "q", "k": 1000},
                             headers={"Authorization": f"Bearer {READ}"}), 400, "k")  # fmt: skip


def test_index_then_delete_with_a_write_key(url, rag):
    write = {"Authorization": f"Bearer {WRITE}"}
    doc = {"id": "served-new", "text": "Zebras have black and white stripes.", "metadata": {"src": "test"}}
    resp = httpx.post(f"{url}/v1/index", json={"documents": [doc]}, headers=write)
    assert resp.status_code == 200 and resp.json()["docs_added"] == 1
    hits = httpx.post(f"{url}/v1/search", json={"query": "zebra stripes", "k": 20}, headers=write).json()["data"]
    assert "served-new#0" in _ids(hits)
    filtered = _client(url).chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "What has stripes?"}],
        extra_body={"clara_where": {"src": "test"}},
    )  # fmt: skip
    assert _ids(filtered.model_extra["clara_sources"]) == ["served-new#0"]
    resp = httpx.delete(f"{url}/v1/documents/served-new", headers=write)
    assert resp.json() == {"id": "served-new", "object": "document.deleted", "deleted": True, "chunks_deleted": 1}
    assert rag.store.doc_status(["served-new"]) == {}
    _assert_error(httpx.delete(f"{url}/v1/documents/served-new", headers=write), 404, "doc_id")


def test_metrics_count_requests_batches_and_tokens(url):
    _client(url).chat.completions.create(model="tiny", messages=[{"role": "user", "content": "q?"}], max_tokens=4)
    text = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {READ}"}).text
    assert 'clara_requests_total{endpoint="/v1/chat/completions",method="POST",status="200"}' in text
    assert _metric(url, "clara_completion_tokens_total") > 0
    assert "clara_request_duration_seconds_bucket" in text and "clara_batch_size_bucket" in text
    assert httpx.get(f"{url}/metrics").status_code == 401


def _metric(url, name):
    text = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {READ}"}).text
    lines = [line for line in text.splitlines() if line.startswith(name + " ") or line.startswith(name + "{")]
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines)


# ------------------------------------------------------------------ auth and bad input
def test_auth_failures(url, rag):
    with pytest.raises(openai.AuthenticationError):
        _client(url, key="wrong").chat.completions.create(model="tiny", messages=[{"role": "user", "content": "q"}])
    _assert_error(httpx.post(f"{url}/v1/search", json={"query": "q"}), 401)
    _assert_error(httpx.post(f"{url}/v1/search", json={"query": "q"}, headers={"Authorization": "Basic x"}), 401)
    assert httpx.get(f"{url}/health").json()["status"] == "ok"  # no key needed


def test_read_key_cannot_write_and_the_store_is_unchanged(url, rag):
    count, read = rag.store.count(), {"Authorization": f"Bearer {READ}"}
    err = _assert_error(httpx.post(f"{url}/v1/index", json={"documents": ["new text"]}, headers=read), 403)
    assert err["type"] == "permission_error"
    _assert_error(httpx.delete(f"{url}/v1/documents/demo-0000", headers=read), 403)
    assert rag.store.count() == count and "demo-0000" in rag.store.doc_status(["demo-0000"])


CHAT = "/v1/chat/completions"


def _chat(**fields):
    return {"model": "tiny", "messages": [{"role": "user", "content": "What?"}], **fields}


@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        (CHAT, _chat(temperature=0.8), 400, "temperature"),
        (CHAT, _chat(n=3), 400, "n"),
        (CHAT, _chat(max_tokens=65), 400, "max_tokens"),
        (CHAT, _chat(model="nope"), 404, "model"),
        (CHAT, {"model": "tiny", "messages": []}, 422, "messages"),
        (CHAT, _chat(max_tokens="lots"), 422, "max_tokens"),
        (CHAT, {"model": "tiny"}, 422, "messages"),
        (CHAT, _chat(clara_documents=["x" * 30_000]), 413, None),
        (CHAT, _chat(stream=True, clara_where={"$nonsense": 1}), 400, None),  # refused before the stream starts
        ("/v1/search", {"query": "q", "extra": 1}, 422, "extra"),
        ("/v1/index", {"documents": ["ok", "   "]}, 400, None),
        ("/v1/index", {"documents": [{"text": "ok", "metadata": {"nested": {"a": 1}}}]}, 400, None),
        ("/v1/index", {"documents": []}, 422, "documents"),
        ("/v1/nowhere", {}, 404, None),
    ],
)
def test_bad_requests_get_openai_errors_and_leave_the_store_unchanged(url, rag, path, body, status, param):
    count = rag.store.count()
    resp = httpx.post(f"{url}{path}", json=body, headers={"Authorization": f"Bearer {WRITE}"})
    _assert_error(resp, status, param)
    assert rag.store.count() == count


def test_invalid_json_and_oversized_chunked_body(url, rag):
    headers = {"Authorization": f"Bearer {WRITE}", "Content-Type": "application/json"}
    _assert_error(httpx.post(f"{url}{CHAT}", content=b"{not json", headers=headers), 400)
    count = rag.store.count()
    big = json.dumps({"documents": ["word " * 5000]}).encode()
    chunked = httpx.post(f"{url}/v1/index", content=iter([big[:10_000], big[10_000:]]), headers=headers)
    _assert_error(chunked, 413)
    assert rag.store.count() == count


# ------------------------------------------------------------------ slots, disconnects
class PacedBackend(ClaraBackend):
    """The real backend, streaming its real pieces 5 s apart unless the stream is cancelled (a long answer)."""

    def stream(self, question, hits, max_new_tokens, cancel):
        cancel.wait(5)
        for piece in super().stream(question, hits, max_new_tokens, cancel):
            yield piece
            cancel.wait(5)


def test_client_disconnect_mid_stream_frees_its_slot(rag, url):
    app = create_app(PacedBackend(rag), _settings(max_concurrent=1))
    read = {"Authorization": f"Bearer {READ}"}
    with serve_in_thread(app) as paced:
        with httpx.stream("POST", f"{paced}{CHAT}", json=_chat(stream=True), headers=read) as resp:
            lines = resp.iter_lines()  # kept referenced: a dropped iterator closes the response
            first = next(lines)
            assert first.startswith("data: ") and "clara_sources" in first
            assert httpx.get(f"{paced}/health").json()["in_flight"] == 1
            _assert_error(httpx.post(f"{paced}{CHAT}", json=_chat(), headers=read), 429)
        tick = time.monotonic()  # the client is gone; the answer would take 5 s more per piece
        while httpx.get(f"{paced}/health").json()["in_flight"] and time.monotonic() - tick < 8:
            time.sleep(0.05)
        assert httpx.get(f"{paced}/health").json()["in_flight"] == 0
        done = httpx.post(f"{paced}{CHAT}", json=_chat(max_tokens=4), headers=read, timeout=30)
        assert done.status_code == 200 and time.monotonic() - tick < 8


def test_the_first_server_still_answers_after_a_second_one_over_the_same_rag_stopped(rag, url):
    resp = _client(url).chat.completions.create(model="tiny", messages=[{"role": "user", "content": "q"}])
    assert resp.choices[0].message.content is not None


def test_batched_retrieval_and_answers_match_one_at_a_time(rag, url):
    """What the batcher calls (``search_many``, ``answer_many``) gives what ``search``/``ask`` give per question."""
    many = rag.search_many(QUESTIONS)
    assert [[h.id for h in hits] for hits in many] == [[h.id for h in rag.search(q)] for q in QUESTIONS]
    answers = rag.answer_many(QUESTIONS, many, max_new_tokens=16)
    assert [a.text for a in answers] == [rag.ask(q, max_new_tokens=16).text for q in QUESTIONS]
    with pytest.raises(ValueError, match="2 questions but 1"):
        rag.answer_many(QUESTIONS[:2], many[:1])


def test_cors_is_off_by_default_and_on_for_listed_origins(rag, url):
    preflight = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    assert "access-control-allow-origin" not in httpx.options(f"{url}{CHAT}", headers=preflight).headers
    with serve_in_thread(create_app(rag, _settings(cors_origins=("https://app.example",)))) as cors:
        allowed = httpx.options(f"{cors}{CHAT}", headers={**preflight, "Origin": "https://app.example"})
        assert allowed.headers["access-control-allow-origin"] == "https://app.example"
        assert "access-control-allow-origin" not in httpx.options(f"{cors}{CHAT}", headers=preflight).headers


def test_a_bad_metadata_filter_is_a_client_error(url):
    resp = httpx.post(f"{url}/v1/search", json={"query": "q", "where": {"$nonsense": 1}},
                      headers={"Authorization": f"Bearer {READ}"})  # fmt: skip
    _assert_error(resp, 400)
