"""A LlamaIndex query engine over a CLaRa store: ClaraRetriever -> ClaraSynthesizer (ClaraLLM).

``rag.as_llama_index_query_engine()`` is a standard ``RetrieverQueryEngine``; its synthesizer hands the retrieved
nodes to the generator as their stored memory vectors (LlamaIndex's own synthesizers would paste their text).
Runs offline on the bundled tiny demo model:

    python examples/llama_index_query_engine.py
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile

from clara_plugins import ClaraRAG
from clara_plugins.assets import demo_corpus


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="'tiny', a Hub id or a local checkpoint folder")
    parser.add_argument("--subfolder", default=None, help="Hub subfolder, e.g. compression-16")
    args = parser.parse_args()

    records = demo_corpus(6)
    question = records[1]["question"]
    with tempfile.TemporaryDirectory() as folder:
        rag = ClaraRAG.from_pretrained(args.model, store=folder, subfolder=args.subfolder)
        rag.index([r["text"] for r in records], ids=[r["id"] for r in records], show_progress=False)

        engine = rag.as_llama_index_query_engine(k=3, max_new_tokens=48)
        response = engine.query(question)
        print(f"Question: {question}")
        print(f"Expected: {records[1]['answer']}")
        print(f"Answer:   {response.response}")
        print("Sources:")
        for n in response.source_nodes:
            print(f"  {n.node.node_id}  score={n.score:.3f}  chars {n.node.start_char_idx}-{n.node.end_char_idx}")

        async_response = asyncio.run(engine.aquery(question))
        print("Async:   ", "same answer" if async_response.response == response.response else "different answer")

        streaming = rag.as_llama_index_query_engine(k=3, max_new_tokens=48, streaming=True)
        print("Streamed: ", end="")
        for piece in streaming.query(question).response_gen:
            print(piece, end="", flush=True)
        print()


if __name__ == "__main__":
    main()
