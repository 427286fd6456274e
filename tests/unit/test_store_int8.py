"""int8 memories as a store option: half the bytes of fp16, the same ranking and answers on the bundled model, and
the same integrity guarantees (a damaged row is an error, never another result)."""

from __future__ import annotations

import numpy as np
import pytest

from clara_plugins import ClaraModel, ClaraRAG, StoreError
from clara_plugins.store import ClaraStore


@pytest.fixture(scope="module")
def bundled_model() -> ClaraModel:
    return ClaraModel.from_pretrained("tiny", device="cpu")


TEXTS = [
    "Paris is the capital and largest city of France, on the Seine.",
    "The Moon is Earth's only natural satellite and orbits it every 27 days.",
    "Water boils at 100 degrees Celsius at sea level.",
    "Mount Everest is the highest mountain above sea level, in the Himalayas.",
    "The Amazon is the largest rainforest on Earth, mostly in Brazil.",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.",
]
QUESTIONS = ["What is the capital of France?", "Which mountain is the highest?", "How do plants make sugar?"]


@pytest.fixture(scope="module")
def stores(tmp_path_factory, bundled_model):
    out = {}
    for dtype in ("float16", "int8"):
        path = tmp_path_factory.mktemp(dtype)
        rag = ClaraRAG(bundled_model, ClaraStore(path=path, memory_dtype=dtype, layout="pca", ann_dim=4))
        rag.index(TEXTS)
        out[dtype] = (path, rag)
    return out


def _memory_file(path):
    return next(path.glob("clara_memories/*/memories.bin"))


def test_int8_store_halves_the_bytes_and_keeps_ranking_and_answers(stores):
    (p16, fp16), (p8, int8) = stores["float16"], stores["int8"]
    assert _memory_file(p8).stat().st_size / _memory_file(p16).stat().st_size == pytest.approx(0.51, abs=0.01)
    for q in QUESTIONS:
        assert [h.id for h in int8.search(q, k=6)] == [h.id for h in fp16.search(q, k=6)]
        assert int8.ask(q, k=2).text == fp16.ask(q, k=2).text
    ids = [h.id for h in fp16.search(QUESTIONS[0], k=6)]
    a, b = fp16.store.get_memories(ids), int8.store.get_memories(ids)
    assert np.abs(a - b).max() <= np.abs(a).max() / 127 + 1e-3  # within one quantization step


def test_int8_store_reopens_and_keeps_its_dtype(stores, bundled_model):
    path, rag = stores["int8"]
    reopened = ClaraRAG(bundled_model, ClaraStore(path=path))  # memory_dtype defaults to float16: the store's wins
    assert [h.id for h in reopened.search(QUESTIONS[1], k=3)] == [h.id for h in rag.search(QUESTIONS[1], k=3)]


def test_a_damaged_int8_row_is_an_error(tmp_path, bundled_model):
    rag = ClaraRAG(bundled_model, ClaraStore(path=tmp_path, memory_dtype="int8", layout="pca", ann_dim=4))
    rag.index(TEXTS)
    top = rag.search(QUESTIONS[0], k=1)[0].id
    row = int(rag.store._collection().get(ids=[top], include=["metadatas"])["metadatas"][0]["clara_row"])
    width = rag.store._layout_of().sidecar.row_bytes
    data = _memory_file(tmp_path)
    raw = bytearray(data.read_bytes())
    raw[row * width : row * width + 8] = bytes(8)  # the first codes of that row zeroed: other finite values
    data.write_bytes(bytes(raw))
    fresh = ClaraRAG(bundled_model, ClaraStore(path=tmp_path))
    with pytest.raises(StoreError, match="memories.bin"):
        fresh.store.get_memories([top])
    with pytest.raises(StoreError, match="memories.bin"):
        fresh.ask(QUESTIONS[0], k=1)


def test_int8_needs_the_pca_layout(bundled_model):
    with pytest.raises(StoreError, match="int8.*pca"):
        ClaraRAG(bundled_model, ClaraStore(memory_dtype="int8", layout="full")).index(TEXTS[:1])
    with pytest.raises(Exception, match="memory_dtype"):
        ClaraStore(memory_dtype="int4")
