"""CLaRa as the reranker and generator of an existing LlamaIndex VectorStoreIndex.

The app already has a ``VectorStoreIndex`` (here built with LlamaIndex's offline ``MockEmbedding``, standing in
for a real embedding model). ``ClaraNodePostprocessor`` reranks its candidates with CLaRa's query reasoner and
``ClaraSynthesizer`` answers from the best ones' memory vectors. Passages that are in the CLaRa store reuse their
stored memories; the others are compressed on the fly. Runs offline on the bundled tiny demo model:

    python examples/llama_index_postprocessor.py
"""

from __future__ import annotations

import argparse
import tempfile

from llama_index.core import Document, VectorStoreIndex
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.query_engine import RetrieverQueryEngine

from clara_plugins import ClaraRAG
from clara_plugins.adapters.llama_index import ClaraSynthesizer
from clara_plugins.assets import demo_corpus


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="'tiny', a Hub id or a local checkpoint folder")
    parser.add_argument("--subfolder", default=None, help="Hub subfolder, e.g. compression-16")
    args = parser.parse_args()

    records = demo_corpus(8)
    question = records[2]["question"]
    with tempfile.TemporaryDirectory() as folder:
        rag = ClaraRAG.from_pretrained(args.model, store=folder, subfolder=args.subfolder)
        rag.index([r["text"] for r in records], ids=[r["id"] for r in records], show_progress=False)

        # the app's existing index, with its own node ids and embeddings
        docs = [Document(text=r["text"], metadata={"name": r["id"]}) for r in records]
        index = VectorStoreIndex.from_documents(docs, embed_model=MockEmbedding(embed_dim=16))
        engine = RetrieverQueryEngine(
            retriever=index.as_retriever(similarity_top_k=8),
            node_postprocessors=[rag.as_llama_index_postprocessor(top_n=3)],
            response_synthesizer=ClaraSynthesizer(rag=rag, max_new_tokens=48),
        )

        response = engine.query(question)
        print(f"Question: {question}")
        print(f"Expected: {records[2]['answer']}")
        print(f"Answer:   {response.response}")
        print("Sources (reranked by CLaRa):")
        for n in response.source_nodes:
            print(f"  {n.node.metadata['name']}  score={n.score:.3f}  node {n.node.node_id[:8]}")


if __name__ == "__main__":
    main()
