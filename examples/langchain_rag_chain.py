"""A LangChain RAG chain over a CLaRa store: ClaraRetriever -> ClaraContextPacker -> ClaraChatModel.

The retriever returns Documents that carry their store ids; the packer hands them to the chat model inside the
message (``additional_kwargs["clara_context"]``); the chat model gives the generator their stored memory vectors,
never their text. Runs offline on the bundled tiny demo model:

    python examples/langchain_rag_chain.py
    python examples/langchain_rag_chain.py --model apple/CLaRa-7B-Instruct --subfolder compression-16   # GPU
"""

from __future__ import annotations

import argparse
import tempfile

from langchain_core.output_parsers import StrOutputParser
from langchain_core.runnables import RunnableParallel, RunnablePassthrough

from clara_plugins import ClaraRAG
from clara_plugins.adapters.langchain import ClaraContextPacker
from clara_plugins.assets import demo_corpus


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="'tiny', a Hub id or a local checkpoint folder")
    parser.add_argument("--subfolder", default=None, help="Hub subfolder, e.g. compression-16")
    args = parser.parse_args()

    records = demo_corpus(6)
    question = records[0]["question"]
    with tempfile.TemporaryDirectory() as folder:
        rag = ClaraRAG.from_pretrained(args.model, store=folder, subfolder=args.subfolder)
        rag.index(
            [r["text"] for r in records],
            ids=[r["id"] for r in records],
            metadatas=[{"title": r.get("title") or r["text"][:40]} for r in records],
            show_progress=False,
        )

        retriever = rag.as_langchain_retriever(k=3)
        chat = rag.as_langchain_chat_model(max_tokens=48)
        answer = ClaraContextPacker() | chat | StrOutputParser()
        chain = RunnableParallel(context=retriever, question=RunnablePassthrough()).assign(answer=answer)

        result = chain.invoke(question)
        print(f"Question: {question}")
        print(f"Expected: {records[0]['answer']}")
        print(f"Answer:   {result['answer']}")
        print("Sources:")
        for doc in result["context"]:
            print(f"  {doc.id}  score={doc.metadata['score']:.3f}  {doc.metadata['title']}")

        # the same chain, streamed: the generator's text arrives piece by piece
        streamed = {"context": retriever, "question": RunnablePassthrough()} | answer
        print("Streamed: ", end="")
        for piece in streamed.stream(question):
            print(piece, end="", flush=True)
        print()


if __name__ == "__main__":
    main()
