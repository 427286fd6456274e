"""What taking a stuffed prompt apart costs: the rlm/rag-prompt LCEL chain vs the ClaraContextPacker chain.

Both chains retrieve the same ``k`` chunks and generate ``--max-tokens`` tokens with the bundled tiny model; the
stuffed one pastes the chunks into LangChain hub's rag-prompt text and ``ClaraChatModel`` parses it and looks the
chunks up by content hash. The table gives the median latency per question, the ratio, the time of the parse + lookup
alone (``split_context``), and the share of answers whose sources are exactly the retriever's chunks.

    python bench/bench_stuffed_prompt.py --questions 20
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnablePassthrough

from clara_plugins import ClaraRAG
from clara_plugins.adapters._stuffed import RAG_PROMPT_HUB, split_context
from clara_plugins.adapters.langchain import ClaraContextPacker
from clara_plugins.assets import demo_corpus


def timed(fn, inputs):
    times, outs = [], []
    for x in inputs:
        t0 = time.perf_counter()
        outs.append(fn(x))
        times.append(time.perf_counter() - t0)
    return statistics.median(times), outs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=20)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=16)
    args = parser.parse_args()

    records = demo_corpus(200)
    questions = [r["question"] for r in records[: args.questions]]
    with tempfile.TemporaryDirectory() as folder:
        rag = ClaraRAG.from_pretrained("tiny", store=folder)
        rag.index([r["text"] for r in records], ids=[r["id"] for r in records], show_progress=False)
        retriever = rag.as_langchain_retriever(k=args.k)
        chat = rag.as_langchain_chat_model(max_tokens=args.max_tokens)
        fmt = lambda docs: "\n\n".join(d.page_content for d in docs)  # noqa: E731
        packed = {"context": retriever, "question": RunnablePassthrough()} | ClaraContextPacker() | chat
        prompt = ChatPromptTemplate.from_messages([("human", RAG_PROMPT_HUB)])
        stuffed = {"context": retriever | fmt, "question": RunnablePassthrough()} | prompt | chat

        expected = {q: [d.id for d in retriever.invoke(q)] for q in questions}
        contexts = {q: fmt(retriever.invoke(q)) for q in questions}
        t_split, _ = timed(lambda q: split_context(rag, contexts[q]), questions)
        chains = {"ClaraContextPacker": packed, "rag-prompt (stuffed)": stuffed}
        times: dict[str, list[float]] = {name: [] for name in chains}
        exact = dict.fromkeys(chains, 0)
        for n, q in enumerate(questions):  # interleaved, alternating order: load from other processes hits both
            for name in sorted(chains, reverse=n % 2 == 1):
                t0 = time.perf_counter()
                message = chains[name].invoke(q)
                times[name].append(time.perf_counter() - t0)
                exact[name] += [s["id"] for s in message.response_metadata["clara_sources"]] == expected[q]
        rows = [(name, statistics.median(times[name]), exact[name]) for name in chains]
    base = rows[0][1]
    print(f"{len(questions)} questions, k={args.k}, {len(records)} documents, {args.max_tokens} new tokens, tiny model")
    print("| chain | ms / question | ratio | sources == retriever's chunks |")
    print("|---|---:|---:|---:|")
    for name, mean, exact in rows:
        print(f"| {name} | {1000 * mean:.1f} | {mean / base:.2f} | {exact}/{len(questions)} |")
    print(f"| split_context alone (parse + hash lookup) | {1000 * t_split:.1f} | {t_split / base:.2f} | |")


if __name__ == "__main__":
    main()
