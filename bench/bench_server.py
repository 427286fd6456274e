"""``clara serve`` under load: requests/s and p50/p99 latency at 1, 4 and 16 concurrent clients, batched generation
vs one request at a time (``max_batch=1``), in one run over the same model and store.

A real uvicorn server on 127.0.0.1 (in a thread of this process) over a store of the bundled demo corpus indexed
with the bundled tiny model; the clients are ``httpx.AsyncClient`` coroutines in the main thread, each sending
non-streamed chat completions back to back for ``--seconds`` per cell and round. Clients and server share the machine's
cores (and this process's GIL), equally in both modes.

    python bench/bench_server.py                      # tiny model, best of 2 rounds of 5 s per cell
    python bench/bench_server.py --seconds 3 --docs 50 --levels 1 4
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from clara_plugins.rag import ClaraRAG
from clara_plugins.server.app import create_app
from clara_plugins.server.runner import serve_in_thread
from clara_plugins.server.settings import ServerSettings

CORPUS = Path(__file__).resolve().parents[1] / "clara_plugins" / "assets" / "demo_corpus.jsonl"
QUESTIONS_FILE = CORPUS.with_name("demo_questions.jsonl")


def questions(n: int = 64) -> list[str]:
    """Questions from the bundled demo questions, else generic ones."""
    if QUESTIONS_FILE.exists():
        rows = [json.loads(line) for line in QUESTIONS_FILE.read_text().splitlines() if line]
        found = [r.get("question") for r in rows if isinstance(r.get("question"), str)]
        if found:
            return found[:n]
    return [f"What is document {i} about?" for i in range(n)]


async def client(url: str, qs: list[str], start: int, until: float, max_tokens: int, lat: list[float]) -> int:
    """Send chat completions back to back until ``until``; record latencies; return the number of errors."""
    errors, i = 0, start
    async with httpx.AsyncClient(base_url=url, timeout=120) as http:
        while time.perf_counter() < until:
            body = {"model": "tiny", "messages": [{"role": "user", "content": qs[i % len(qs)]}],
                    "max_tokens": max_tokens}  # fmt: skip
            i += 1
            tick = time.perf_counter()
            resp = await http.post("/v1/chat/completions", json=body)
            lat.append(time.perf_counter() - tick)
            errors += resp.status_code != 200
    return errors


async def cell(url: str, qs: list[str], clients: int, seconds: float, max_tokens: int) -> dict[str, float]:
    """One load level: requests/s and latency percentiles (ms)."""
    lat: list[float] = []
    tick = time.perf_counter()
    until = tick + seconds
    errors = await asyncio.gather(*(client(url, qs, 7 * c, until, max_tokens, lat) for c in range(clients)))
    wall = time.perf_counter() - tick
    cuts = statistics.quantiles(lat, n=100) if len(lat) > 1 else [lat[0]] * 99
    return {"rps": len(lat) / wall, "p50": cuts[49] * 1000, "p99": cuts[98] * 1000, "n": len(lat), "err": sum(errors)}


def run(args: argparse.Namespace) -> dict[tuple[str, int], dict[str, float]]:
    """Every (mode, clients) cell over one model and store; the modes alternate ``--rounds`` times per level (the
    machine's load drifts), and a cell reports its best round by requests/s."""
    docs = [json.loads(line) for line in CORPUS.read_text().splitlines()[: args.docs]]
    rag = ClaraRAG.from_pretrained("tiny", store=tempfile.mkdtemp(prefix="bench-serve-"))
    rag.index([{"text": d["text"], "id": d["id"]} for d in docs], show_progress=False)
    qs, out = questions(), {}
    modes = {"batched": args.max_batch, "one-at-a-time": 1}
    with contextlib.ExitStack() as stack:  # both servers share the model; only one is loaded at a time
        urls = {
            mode: stack.enter_context(serve_in_thread(create_app(rag, ServerSettings(
                model_name="tiny", max_batch=cap, batch_window_ms=args.window_ms))))
            for mode, cap in modes.items()
        }  # fmt: skip
        for url in urls.values():
            asyncio.run(cell(url, qs, 1, 1.0, args.max_tokens))  # warm-up
        for clients in args.levels:
            for _ in range(args.rounds):
                for mode, url in urls.items():
                    result = asyncio.run(cell(url, qs, clients, args.seconds, args.max_tokens))
                    if result["rps"] > out.get((mode, clients), {"rps": -1})["rps"]:
                        out[mode, clients] = result
    return out


def print_table(results: dict[tuple[str, int], dict[str, float]], levels: list[int]) -> None:
    print(f"{'clients':>7} | {'mode':<13} | {'req/s':>7} | {'p50 ms':>8} | {'p99 ms':>8} | {'n':>5} | {'err':>3}")
    print("-" * 70)
    for clients in levels:
        for mode in ("batched", "one-at-a-time"):
            r = results[mode, clients]
            print(f"{clients:>7} | {mode:<13} | {r['rps']:>7.1f} | {r['p50']:>8.1f} | {r['p99']:>8.1f} | "
                  f"{r['n']:>5} | {r['err']:>3}")  # fmt: skip
        ratio = results["batched", clients]["rps"] / results["one-at-a-time", clients]["rps"]
        print(f"{clients:>7} | batched / one-at-a-time requests/s: {ratio:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="load time per cell and round")
    parser.add_argument("--rounds", type=int, default=2, help="alternations of the two modes per level")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 4, 16], help="concurrent clients")
    parser.add_argument("--docs", type=int, default=100, help="demo documents indexed")
    parser.add_argument("--max-batch", type=int, default=16, help="batch cap of the batched mode")
    parser.add_argument("--window-ms", type=float, default=5.0, help="collection window")
    parser.add_argument("--max-tokens", type=int, default=16)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print_table(run(args), args.levels)


if __name__ == "__main__":
    main()
