"""LangChain's tutorial RAG patterns, unchanged, with CLaRa: a rag-prompt LCEL chain, create_retrieval_chain, and a
VectorStore retriever with MMR.

The prompts paste the retrieved documents into the text; ``ClaraChatModel`` takes the question and the stored
chunks back out of the prompt (docs/integrations.md, "stuffed" prompts), so the generator reads exactly the
retrieved chunks' memories. Runs offline on the bundled tiny demo model:

    python examples/langchain_tutorial_patterns.py
"""

from __future__ import annotations

import argparse
import tempfile

from langchain_classic.chains import create_retrieval_chain
from langchain_classic.chains.combine_documents import create_stuff_documents_chain
from langchain_core.documents import Document
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnablePassthrough

from clara_plugins import ClaraRAG
from clara_plugins.adapters.langchain import ClaraVectorStore
from clara_plugins.assets import demo_corpus

RAG_PROMPT = (  # LangChain hub "rlm/rag-prompt"
    "You are an assistant for question-answering tasks. Use the following pieces of retrieved context to answer the "
    "question. If you don't know the answer, just say that you don't know. Use three sentences maximum and keep the "
    "answer concise.\nQuestion: {question} \nContext: {context} \nAnswer:"
)
SYSTEM_PROMPT = (  # LangChain's RAG tutorial, for create_retrieval_chain
    "You are an assistant for question-answering tasks. Use the following pieces of retrieved context to answer "
    "the question. If you don't know the answer, say that you don't know. Use three sentences maximum and keep the "
    "answer concise.\n\n{context}"
)


def format_docs(docs: list[Document]) -> str:
    return "\n\n".join(d.page_content for d in docs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="'tiny', a Hub id or a local checkpoint folder")
    parser.add_argument("--subfolder", default=None, help="Hub subfolder, e.g. compression-16")
    args = parser.parse_args()

    records = demo_corpus(6)
    question = records[1]["question"]
    with tempfile.TemporaryDirectory() as folder:
        rag = ClaraRAG.from_pretrained(args.model, store=folder, subfolder=args.subfolder)
        docs = [Document(page_content=r["text"], id=r["id"]) for r in records]
        store = ClaraVectorStore.from_documents(docs, embedding=None, rag=rag)  # rag.index(docs) would do the same
        retriever = rag.as_langchain_retriever(k=3)
        chat = rag.as_langchain_chat_model(max_tokens=48)

        prompt = ChatPromptTemplate.from_messages([("human", RAG_PROMPT)])
        chain = {"context": retriever | format_docs, "question": RunnablePassthrough()} | prompt | chat
        message = chain.invoke(question)
        print(f"Question: {question}")
        print(f"Expected: {records[1]['answer']}")
        print(f"Answer:   {message.content}")
        print("Sources (the retriever's chunks):", [s["id"] for s in message.response_metadata["clara_sources"]])

        qa = ChatPromptTemplate.from_messages([("system", SYSTEM_PROMPT), ("human", "{input}")])
        result = create_retrieval_chain(retriever, create_stuff_documents_chain(chat, qa)).invoke({"input": question})
        print(f"Answer (create_retrieval_chain): {result['answer']}")
        print("Sources (result['context']):", [d.id for d in result["context"]])

        mmr = store.as_retriever(search_type="mmr", search_kwargs={"k": 2, "fetch_k": 5})
        print("MMR over CLaRa vectors:", [d.id for d in mmr.invoke(question)])


if __name__ == "__main__":
    main()
