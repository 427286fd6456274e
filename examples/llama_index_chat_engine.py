"""A LlamaIndex chat engine over a CLaRa store, and LlamaIndex's own ``index.as_query_engine(llm=ClaraLLM(...))``.

``rag.as_llama_index_chat_engine()`` is a condense-plus-context chat engine whose generator reads the retrieved
chunks' memories. An index of your own works with ``ClaraLLM`` as its LLM: the generator reads exactly the nodes the
index retrieved (their stored memories when their text was indexed in CLaRa). Runs offline on the bundled tiny
demo model:

    python examples/llama_index_chat_engine.py
"""

from __future__ import annotations

import argparse
import tempfile

from llama_index.core import Document, VectorStoreIndex
from llama_index.core.embeddings import MockEmbedding

from clara_plugins import ClaraRAG
from clara_plugins.adapters.llama_index import ClaraLLM
from clara_plugins.assets import demo_corpus


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="'tiny', a Hub id or a local checkpoint folder")
    parser.add_argument("--subfolder", default=None, help="Hub subfolder, e.g. compression-16")
    args = parser.parse_args()

    records = demo_corpus(6)
    docs = [Document(text=r["text"], id_=r["id"]) for r in records]
    with tempfile.TemporaryDirectory() as folder:
        rag = ClaraRAG.from_pretrained(args.model, store=folder, subfolder=args.subfolder)
        rag.index(docs, show_progress=False)  # LlamaIndex Documents, ids kept

        chat = rag.as_llama_index_chat_engine(similarity_top_k=3, max_new_tokens=48)
        for record in records[1:3]:
            response = chat.chat(record["question"])
            print(f"Question: {record['question']}")
            print(f"Expected: {record['answer']}")
            print(f"Answer:   {response.response}")
            print("Sources:", [n.node.node_id for n in response.source_nodes])

        # your own index (here with an offline stand-in embedding) and ClaraLLM as its LLM
        index = VectorStoreIndex.from_documents(docs, embed_model=MockEmbedding(embed_dim=8))
        engine = index.as_query_engine(llm=ClaraLLM(rag=rag, max_new_tokens=48), similarity_top_k=2)
        response = engine.query(records[1]["question"])
        print(f"Answer (index.as_query_engine): {response.response}")
        print("Sources (read by the generator):", [n.node.node_id for n in response.source_nodes])


if __name__ == "__main__":
    main()
