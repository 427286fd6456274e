"""ClaraRAG over a real Chroma server (``chroma run``) through ``chromadb.HttpClient``."""

from __future__ import annotations

import chromadb
import pytest
import torch

from clara_plugins.errors import ModelMismatchError
from clara_plugins.rag import ClaraRAG
from clara_plugins.store import ClaraStore

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(chroma_port):
    return chromadb.HttpClient(host="127.0.0.1", port=chroma_port)


def test_index_search_ask_through_server(server, tiny_model, passages):
    rag = ClaraRAG(tiny_model, ClaraStore(client=server, collection="served"))
    assert rag.store.layout == "full" and rag.store.local_folder is None
    rag.index(passages[:6], metadatas=[{"i": i} for i in range(6)], show_progress=False)
    n = rag.store.count()
    rag.index(passages[:6], metadatas=[{"i": i} for i in range(6)], show_progress=False)
    assert rag.store.count() == n

    # another client of the same server sees the same records and ranks exactly like brute force
    other = ClaraRAG(tiny_model, ClaraStore(client=server, collection="served"))
    ids = other.store._collection().get(include=[])["ids"]
    mems = torch.from_numpy(other.store.get_memories(ids))
    question = "Who is the editor-in-chief?"
    _, idx = tiny_model.rank(tiny_model.encode_query([question]), mems, 4)
    assert [h.id for h in other.search(question, k=4)] == [ids[i] for i in idx[0].tolist()]
    torch.testing.assert_close(
        other.memories_for(other.search(question, k=1)),
        tiny_model.compress([other.search(question, k=1)[0].text]),
        atol=1e-5,
        rtol=1e-4,
    )
    answer = other.ask(question, k=2, max_new_tokens=4)
    assert len(answer.sources) == 2


def test_server_store_refuses_another_model(server, tiny_model, fresh_tiny_model, passages):
    ClaraRAG(tiny_model, ClaraStore(client=server, collection="guarded")).index(passages[:1], show_progress=False)
    with torch.no_grad():
        fresh_tiny_model.peft_model.get_input_embeddings().weight[-1].add_(0.01)
    fresh_tiny_model.invalidate_fingerprint()
    with pytest.raises(ModelMismatchError, match="fingerprint"):
        ClaraRAG(fresh_tiny_model, ClaraStore(client=server, collection="guarded"))
