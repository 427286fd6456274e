"""One rerank rule everywhere: ``ClaraRAG.rank_candidates``. A text longer than one chunk scores as its best chunk,
whether it reaches CLaRa as a plain text, a LangChain ``Document`` or a LlamaIndex node."""

from __future__ import annotations

import subprocess
import sys

import pytest
from langchain_core.documents import Document
from llama_index.core.schema import NodeWithScore, TextNode

from clara_plugins import ClaraModel
from tests.unit.test_langchain import CORPUS, QUESTION, build_rag

LONG = CORPUS[-1]  # three chunks with the tiny model


@pytest.fixture(scope="module")
def rag(tiny_model):
    return build_rag(tiny_model)


def test_long_text_scores_as_its_best_chunk_in_every_bridge(rag):
    pieces = [c.text for c in rag.model.chunk(LONG)]
    assert len(pieces) > 1
    scores, _ = ClaraModel.rank(rag.model.encode_query([QUESTION]), rag.model.compress(pieces), k=len(pieces))
    best = float(scores[0][0])  # computed from the model directly, independently of the store and the bridges
    candidates = [LONG, CORPUS[0], CORPUS[3]]
    core = {h.text: h.score for h in rag.rerank(QUESTION, candidates, k=3)}
    assert core[LONG] == pytest.approx(best, abs=1e-5)
    docs = rag.as_langchain_compressor(top_n=3).compress_documents(
        [Document(page_content=t) for t in candidates], QUESTION
    )
    assert {d.page_content: d.metadata["relevance_score"] for d in docs} == pytest.approx(core, abs=1e-6)
    nodes = [NodeWithScore(node=TextNode(text=t)) for t in candidates]
    ranked = rag.as_llama_index_postprocessor(top_n=3).postprocess_nodes(nodes, query_str=QUESTION)
    assert {n.node.text: n.score for n in ranked} == pytest.approx(core, abs=1e-6)
    assert [d.page_content for d in docs] == [n.node.text for n in ranked] == list(core)  # same order


@pytest.mark.slow
def test_core_takes_framework_documents_without_importing_the_frameworks():
    code = """
import sys
from clara_plugins import ClaraRAG

class LangChainLike:  # duck-typed like langchain_core.documents.Document
    def __init__(self, text, id, metadata):
        self.page_content, self.id, self.metadata = text, id, metadata

class LlamaLike:  # duck-typed like llama_index TextNode
    def __init__(self, text, node_id, metadata):
        self.text, self.node_id, self.metadata = text, node_id, metadata
    def get_content(self):
        return self.text

rag = ClaraRAG.from_pretrained("tiny")
rag.index([LangChainLike("Paris is in France.", "lc-1", {"a": 1}), LlamaLike("Rome is in Italy.", "li-1", {"b": 2})],
          show_progress=False)
got = {h.doc_id: h.metadata for h in rag.store.records_by_doc(["lc-1", "li-1"])}
assert got == {"lc-1": {"a": 1}, "li-1": {"b": 2}}, got
bad = [m for m in sys.modules if m.split(".")[0] in {"langchain_core", "langchain", "llama_index"}]
assert not bad, bad
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
