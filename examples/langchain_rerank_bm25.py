"""Rerank another retriever's candidates with CLaRa: BM25 -> ClaraDocumentCompressor -> ClaraChatModel.

A keyword retriever (BM25, from ``rank-bm25``) proposes candidates; ``ClaraDocumentCompressor`` inside LangChain's
``ContextualCompressionRetriever`` reranks them with CLaRa's query reasoner. Candidates whose text is in the CLaRa
store reuse their stored memories; the others (here one passage that was never indexed) are compressed on the
fly. The chat model then answers from the best ones. Runs offline on the bundled tiny demo model:

    python examples/langchain_rerank_bm25.py

Needs ``langchain-classic`` (for ``ContextualCompressionRetriever``) and ``rank-bm25`` besides the ``langchain``
extra: ``pip install langchain-classic rank-bm25``.
"""

from __future__ import annotations

import argparse
import tempfile

from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.output_parsers import StrOutputParser
from langchain_core.retrievers import BaseRetriever
from rank_bm25 import BM25Okapi

from clara_plugins import ClaraRAG
from clara_plugins.adapters.langchain import ClaraContextPacker
from clara_plugins.assets import demo_corpus


class BM25Retriever(BaseRetriever):
    """Keyword retrieval over a list of Documents (stands in for whatever retriever an app already has)."""

    docs: list[Document]
    k: int = 4

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        bm25 = BM25Okapi([d.page_content.lower().split() for d in self.docs])
        scores = bm25.get_scores(query.lower().split())
        best = sorted(range(len(self.docs)), key=lambda i: -scores[i])[: self.k]
        return [Document(page_content=self.docs[i].page_content, metadata={**self.docs[i].metadata}) for i in best]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="'tiny', a Hub id or a local checkpoint folder")
    parser.add_argument("--subfolder", default=None, help="Hub subfolder, e.g. compression-16")
    args = parser.parse_args()

    records = demo_corpus(9)
    indexed, not_indexed = records[:8], records[8:]
    question = records[0]["question"]
    with tempfile.TemporaryDirectory() as folder:
        rag = ClaraRAG.from_pretrained(args.model, store=folder, subfolder=args.subfolder)
        rag.index([r["text"] for r in indexed], ids=[r["id"] for r in indexed], show_progress=False)

        # the app's existing retriever knows whole passages (indexed in CLaRa or not) under its own metadata
        corpus = [Document(page_content=r["text"], metadata={"name": r["id"]}) for r in records]
        bm25 = BM25Retriever(docs=corpus, k=5)
        reranking = ContextualCompressionRetriever(
            base_compressor=rag.as_langchain_compressor(top_n=2), base_retriever=bm25
        )

        print(f"Question: {question}")
        print("BM25 candidates:", [d.metadata["name"] for d in bm25.invoke(question)])
        best = reranking.invoke(question)
        print("Reranked by CLaRa:")
        for doc in best:
            stored = "stored memory" if doc.metadata["name"] not in {r["id"] for r in not_indexed} else "compressed now"
            print(f"  {doc.metadata['name']}  relevance={doc.metadata['relevance_score']:.3f}  ({stored})")

        answer = ClaraContextPacker() | rag.as_langchain_chat_model(max_tokens=48) | StrOutputParser()
        print(f"Expected: {records[0]['answer']}")
        print(f"Answer:   {answer.invoke({'context': best, 'question': question})}")
        print("Sources:", [d.metadata["name"] for d in best])


if __name__ == "__main__":
    main()
