"""Compression speed of the bundled tiny model by torch thread count, on an idle and on a busy machine.

``clara demo`` picks its default ``--threads`` from this table: on a laptop whose cores are shared with other work,
torch's default pool (one thread per core) can stall on the busy cores. "busy" runs ``--busy`` CPU-bound processes
(pure Python loops) next to the measurement. Each cell: chunks/s, median of ``--repeats`` runs of ``--chunks`` chunks.

    python bench/bench_demo_threads.py                       # threads 1, 2 and torch's default; idle and 1 busy
    python bench/bench_demo_threads.py --busy 2 --chunks 128
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import time

import torch

from clara_plugins.demo import demo_records
from clara_plugins.model import ClaraModel


def _spin() -> None:
    while True:
        pass


def chunks_per_s(model: ClaraModel, texts: list[str], threads: int, repeats: int) -> float:
    torch.set_num_threads(threads)
    model.compress(texts[:8])  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.compress(texts)
        times.append(time.perf_counter() - t0)
    return len(texts) / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--busy", type=int, default=1, help="CPU-bound processes in the busy runs")
    args = parser.parse_args()
    default = torch.get_num_threads()
    model = ClaraModel.from_pretrained("tiny", device="cpu")
    rows, _ = demo_records()
    texts = [c.text for r in rows for c in model.chunk(r["text"])][: args.chunks]
    settings = sorted({1, 2, default})
    print(f"cpus {os.cpu_count()}, torch default threads {default}, {args.chunks} chunks, median of {args.repeats}")
    print(f"{'load':>8} " + " ".join(f"{f'{t} thr':>10}" for t in settings) + "   (chunks/s; ratio to 1 thread)")
    for busy in (0, args.busy):
        procs = [mp.Process(target=_spin, daemon=True) for _ in range(busy)]
        for p in procs:
            p.start()
        speeds = [chunks_per_s(model, texts, t, args.repeats) for t in settings]
        for p in procs:
            p.terminate()
        cells = " ".join(f"{s:>5.1f} {s / speeds[0]:>3.1f}x" for s in speeds)
        print(f"{f'{busy} busy':>8} {cells}")


if __name__ == "__main__":
    main()
