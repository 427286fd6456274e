"""Benchmark of the "shared" store layout: a `chroma run` server + memory shards on an S3 server, many processes.

Both servers run on 127.0.0.1 in subprocesses of this script: `chroma run --path TMP` and moto's S3 server
(`moto_server`, from `pip install 'moto[server]'`). Every worker and client is a separate process (spawn).

Parts (each prints a table and compares against its alternative in the same run):
  shards  the object-storage part alone (clara_plugins.object_shards on the S3 server): shard write throughput, and
          reading the 64 re-rank candidates of a query with one request per row (sequential, then concurrent) vs
          ranges merged per shard, fp16 and int8.
  bundled real chunks: the bundled model over the demo corpus (1,170 chunks) in a shared store and in the local
          "pca" layout, recall@10 against the exact ranking and search time per question, in one run.
  store   the issue's "what must be shown": N chunks (default 20,000) of synthetic 65,536-d memories (7B at
          compression 16) ingested through `ClaraStore(..., layout="shared")` by 1 worker vs 2 workers (chunks/s and
          the ratio), then 2 querying clients at once (query p50 / p95), recall@10 against the exact CLaRa ranking
          (exact cosine over all memories, computed here), and bytes per chunk in Chroma (growth of the server's
          folder) and in the object store (sum of shard sizes), for fp16 and int8 memories.

Synthetic memories (documented so the numbers can be judged): hidden states are anisotropic, so each flattened
memory is ``x = 2 * mu + (z * s) @ B + 0.5 * e``: a common direction ``mu`` (every chunk shares it), a rank-256
signal whose singular values fall as a power law ``s_j = 3 * j ** -0.6`` (j = 1..256; directions ``B`` random
unit-variance), and isotropic noise ``e``; ``z, e ~ N(0, 1)``. A query is a chunk's latent plus noise
(``z + 0.5 * n``) through the same map, so it has true near neighbours but not a copy of any chunk. They are
written once to an fp16 file that workers read (generation is not timed); the exact ranking is computed from it.

    python bench/bench_shared_store.py --part shards
    python bench/bench_shared_store.py --part store --chunks 20000 [--workers 1,2] [--dtypes float16,int8]
    S3RVER=node_modules/.bin/s3rver python bench/bench_shared_store.py --s3 s3rver ...   # s3rver (npm) for S3
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import multiprocessing as mp
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np

DIM, N_MEM, HIDDEN, RANK = 65536, 16, 4096, 256
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


# ---- servers -----------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tool(name: str) -> str:
    exe = Path(sys.executable).with_name(name)
    found = str(exe) if exe.exists() else shutil.which(name)
    if not found:
        sys.exit(f"{name} is not installed (pip install -e '.[dev]')")
    return found


def _wait(proc: subprocess.Popen, probe, what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            probe()
            return
        except Exception:  # not up yet
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                sys.exit(f"{what} did not start (exit code {proc.poll()})")
            time.sleep(0.2)


def start_s3(kind: str, root: Path, port: int) -> tuple[subprocess.Popen, dict]:
    """An S3 server on 127.0.0.1: moto's server mode (PyPI), or s3rver (npm; objects as files) with --s3 s3rver."""
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    endpoint = f"http://127.0.0.1:{port}"
    if kind == "moto":
        proc = subprocess.Popen([_tool("moto_server"), "-H", "127.0.0.1", "-p", str(port)], **quiet)
        _wait(proc, lambda: urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1), "moto_server")
        return proc, {"endpoint_url": endpoint, "key": "testing", "secret": "testing"}
    data = root / "s3rver-data"
    data.mkdir()
    cmd = [os.environ.get("S3RVER", "s3rver"), "-d", str(data), "-a", "127.0.0.1", "-p", str(port), "-s"]
    proc = subprocess.Popen(cmd, **quiet)
    _wait(proc, lambda: urllib.request.urlopen(endpoint, timeout=1), "s3rver")
    return proc, {"endpoint_url": endpoint, "key": "S3RVER", "secret": "S3RVER"}


@contextlib.contextmanager
def servers(root: Path, s3_kind: str = "moto") -> Iterator[dict]:
    """An S3 server and a `chroma run` server on 127.0.0.1: ``{"s3": storage_options, "chroma_port", ...}``."""
    import chromadb
    import s3fs

    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    chroma_port, folder = free_port(), root / "chroma-server"
    chroma_cmd = [_tool("chroma"), "run", "--path", str(folder), "--host", "127.0.0.1", "--port", str(chroma_port)]
    chroma = subprocess.Popen(chroma_cmd, **quiet)
    procs = [chroma]
    try:
        s3_proc, options = start_s3(s3_kind, root, free_port())
        procs.append(s3_proc)
        _wait(chroma, lambda: chromadb.HttpClient(host="127.0.0.1", port=chroma_port).heartbeat(), "chroma run")
        s3fs.S3FileSystem(**options).mkdir("clara-bench")
        yield {"s3": options, "chroma_port": chroma_port, "chroma_path": folder, "bucket": "s3://clara-bench"}
    finally:
        for proc in procs:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=20)


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


# ---- synthetic memories ------------------------------------------------------------------------------------------
def _model(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    mu = rng.standard_normal(DIM, dtype=np.float32)
    basis = rng.standard_normal((RANK, DIM), dtype=np.float32)
    spectrum = (3.0 * np.arange(1, RANK + 1, dtype=np.float32) ** -0.6).astype(np.float32)
    return mu, basis, spectrum


def generate(path: Path, n: int, seed: int = 0, block: int = 500) -> np.ndarray:
    """Write ``n`` synthetic memories ``[n, DIM]`` in fp16 to ``path``; returns their latents ``[n, RANK]``."""
    mu, basis, spectrum = _model(seed)
    rng = np.random.default_rng(seed + 1)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, DIM))
    latents = rng.standard_normal((n, RANK), dtype=np.float32)
    for start in range(0, n, block):
        z = latents[start : start + block]
        noise = rng.standard_normal((len(z), DIM), dtype=np.float32)
        out[start : start + len(z)] = 2.0 * mu + (z * spectrum) @ basis + 0.5 * noise
    out.flush()
    return latents


def make_queries(latents: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """``n`` query vectors near random chunks (their latent plus noise, through the same map)."""
    mu, basis, spectrum = _model(seed)
    rng = np.random.default_rng(seed + 2)
    z = latents[rng.choice(len(latents), n, replace=False)] + 0.5 * rng.standard_normal((n, RANK), dtype=np.float32)
    return 2.0 * mu + (z * spectrum) @ basis + 0.5 * rng.standard_normal((n, DIM), dtype=np.float32)


def exact_top(path: Path, queries: np.ndarray, k: int = 10, block: int = 1000) -> np.ndarray:
    """Exact CLaRa ranking: indices of the top ``k`` chunks by fp32 cosine over every stored memory ``[Q, k]``."""
    mem = np.load(path, mmap_mode="r")
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    scores = np.empty((len(q), len(mem)), dtype=np.float32)
    for start in range(0, len(mem), block):
        x = np.asarray(mem[start : start + block], dtype=np.float32)
        scores[:, start : start + len(x)] = q @ (x / np.linalg.norm(x, axis=1, keepdims=True)).T
    return np.argsort(-scores, axis=1)[:, :k]


def chunk_texts() -> list[str]:
    """Real abstract texts for the records (SciFact), about one 256-token chunk each."""
    path = DATA / "scifact" / "corpus.jsonl"
    if not path.exists():
        return [f"synthetic chunk text number {i} " * 30 for i in range(100)]
    with path.open() as f:
        return [(row["title"] + ". " + row["text"])[:1200] for row in map(json.loads, f)]


# ---- part: shards ------------------------------------------------------------------------------------------------
def _timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def shard_reads(store, locs: list, repeats: int) -> dict[str, float]:
    """p50 seconds of reading ``locs``: one request per row in turn, one per row concurrently, ranges merged."""
    from clara_plugins.store.object_shards import ObjectShards

    one_each = ObjectShards(store.url, store.dim, store.dtype, store.group or None, _opts(store), merge_gap=None)
    for reader in (store, one_each):
        reader.read(locs)  # headers cached, connections open: a long-lived client
    return {
        "sequential, one request per row": float(np.median(_timed(lambda: [store.read([x]) for x in locs], repeats))),
        "concurrent, one request per row": float(np.median(_timed(lambda: one_each.read(locs), repeats))),
        "concurrent, ranges merged per shard": float(np.median(_timed(lambda: store.read(locs), repeats))),
    }


def _opts(store) -> dict:
    return store.fs.storage_options


def part_shards(args: argparse.Namespace, srv: dict) -> None:
    from clara_plugins.store.object_shards import ObjectShards

    rng = np.random.default_rng(0)
    n, per = args.shard_rows, args.shard_batch
    data = rng.standard_normal((per, DIM), dtype=np.float32)
    rows = []
    for dtype in ("float16", "int8"):
        store = ObjectShards(f"{srv['bucket']}/shards-{dtype}", DIM, dtype, HIDDEN, srv["s3"])
        t = time.perf_counter()
        locs = [loc for _ in range(n // per) for loc in store.write(data)]
        write_s = time.perf_counter() - t
        mb = store.nbytes() / 1e6
        rows.append(
            (f"{dtype}: write {n} rows in shards of {per} (rows/s, MB/s)", f"{n / write_s:.0f} / {mb / write_s:.0f}")
        )
        scattered = [locs[i] for i in rng.choice(len(locs), 64, replace=False)]
        contiguous = locs[per : per + 64]
        for label, picked in (("64 random rows", scattered), ("64 adjacent rows of one shard", contiguous)):
            for how, sec in shard_reads(store, picked, args.repeats).items():
                rows.append((f"{dtype}: {label}, {how} (ms)", f"{sec * 1e3:.1f}"))
    table(f"Memory shards on {args.s3}'s S3 server (127.0.0.1), {DIM}-d rows, p50 of {args.repeats}", rows)


# ---- part: bundled -----------------------------------------------------------------------------------------------
def part_bundled(args: argparse.Namespace, srv: dict, root: Path) -> None:
    """Real chunks: the bundled model over the demo corpus in a shared store (the servers) and, in the same run, in
    the local "pca" layout; recall@10 of each against the exact ranking, and search time per question."""
    import chromadb
    import torch

    from clara_plugins import ClaraModel, ClaraRAG
    from clara_plugins.store import ClaraStore

    torch.set_num_threads(1)
    assets = Path(__file__).resolve().parents[1] / "clara_plugins" / "assets"
    docs = [json.loads(line) for line in (assets / "demo_corpus.jsonl").read_text().splitlines() if line.strip()]
    questions = [json.loads(line)["question"] for line in (assets / "demo_questions.jsonl").read_text().splitlines()]
    questions = questions[: args.queries]
    model = ClaraModel.from_pretrained("tiny", device="cpu")
    client = chromadb.HttpClient(host="127.0.0.1", port=srv["chroma_port"])
    stores = {
        "shared (chroma run + S3)": ClaraStore(
            client=client, collection="bundled", memories=f"{srv['bucket']}/bundled", storage_options=srv["s3"]
        ),
        "pca (local folder)": ClaraStore(path=root / "bundled-pca"),
    }
    q = model.encode_query(questions).numpy()
    rows = []
    for name, store in stores.items():
        rag = ClaraRAG(model, store)
        rag.index([{"id": d["id"], "text": d["text"]} for d in docs], show_progress=False)
        ids = [h.id for h in store.iter_records(texts=False)]
        mems = store.get_memories(ids)
        xn = mems / np.linalg.norm(mems, axis=1, keepdims=True)
        t0 = time.perf_counter()
        got = [store.search(q[i : i + 1], k=10)[0] for i in range(len(q))]
        per_q = (time.perf_counter() - t0) / len(q) * 1e3
        exact = np.argsort(-(q / np.linalg.norm(q, axis=1, keepdims=True)) @ xn.T, axis=1)[:, :10]
        recall = np.mean([len({h.id for h in g} & {ids[j] for j in exact[i]}) / 10 for i, g in enumerate(got)])
        rows.append((f"{name}: recall@10 vs exact ({len(ids)} chunks, {len(q)} questions)", f"{recall:.4f}", ">=0.98"))
        rows.append((f"{name}: search, one question at a time (ms)", f"{per_q:.1f}"))
    table(f"Bundled model over the demo corpus, {args.s3}'s S3 server", rows)


# ---- part: store -------------------------------------------------------------------------------------------------
def open_store(cfg: dict):
    import chromadb

    from clara_plugins.store import ClaraStore

    client = chromadb.HttpClient(host="127.0.0.1", port=cfg["chroma_port"])
    store = ClaraStore(
        client=client, collection=cfg["collection"], layout="shared", memories=cfg["memories"],
        storage_options=cfg["s3"], memory_dtype=cfg["dtype"],
    )  # fmt: skip
    store.bind("bench-synthetic-65536", DIM, N_MEM, HIDDEN, "synthetic-65536")
    return store


def records(texts: list[str], start: int, stop: int) -> list:
    from clara_plugins.store import ChunkRecord, text_hash

    out = []
    for i in range(start, stop):
        text = f"[{i}] {texts[i % len(texts)]}"  # unique texts: no reuse by content hash
        out.append(ChunkRecord(f"c{i}#0", text, f"c{i}", 0, len(text), 0, 1, text_hash(text), text_hash(text), {}))
    return out


def ingest_worker(cfg: dict, start: int, stop: int, queue) -> None:
    """Add chunks ``[start, stop)`` in batches; reports ``(t_begin, t_end, chunks)`` (wall clock)."""
    store, texts = open_store(cfg), chunk_texts()
    mem = np.load(cfg["data"], mmap_mode="r")
    begin = time.time()
    for s in range(start, stop, cfg["batch"]):
        e = min(stop, s + cfg["batch"])
        store.add(records(texts, s, e), np.asarray(mem[s:e], dtype=np.float32))
    queue.put((begin, time.time(), stop - start))


def query_client(cfg: dict, queries: np.ndarray, queue) -> None:
    """Search each query alone (k=10); reports ``(latencies, ids)``."""
    store = open_store(cfg)
    store.search(queries[:2], 10)  # warm: connections, projection, shard headers
    lat, ids = [], []
    for q in queries:
        t = time.perf_counter()
        hits = store.search(q[None], 10)[0]
        lat.append(time.perf_counter() - t)
        ids.append([int(h.id.split("#")[0][1:]) for h in hits])
    queue.put((lat, ids))


def run_procs(target, arglists: list[tuple]) -> list:
    """Run ``target(*args, queue)`` in one spawned process per entry; their reports, in the order of ``arglists``."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_report, args=(target, i, a, queue)) for i, a in enumerate(arglists)]
    for p in procs:
        p.start()
    out = [item for _, item in sorted((queue.get() for _ in procs), key=lambda x: x[0])]
    for p in procs:
        p.join()
        if p.exitcode:
            sys.exit(f"a {target.__name__} process failed (exit code {p.exitcode})")
    return out


class _Tagged:
    """A queue that tags what a process reports with its index (reports arrive in completion order)."""

    def __init__(self, index: int, queue) -> None:
        self.index, self.queue = index, queue

    def put(self, item) -> None:
        self.queue.put((self.index, item))


def _report(target, index: int, args: tuple, queue) -> None:
    target(*args, _Tagged(index, queue))


def ingest(cfg: dict, n: int, workers: int) -> tuple[float, float, int]:
    """Add ``n`` chunks: the first ``fit_rows_wanted()`` in one add here (the projection is fitted on them, as
    ``ClaraRAG.index`` does), the rest split between ``workers`` processes.

    Returns:
        ``(seconds of the first add, chunks/s of the workers from first start to last finish, chunks counted)``.
    """
    store = open_store(cfg)
    fit = min(n, store.fit_rows_wanted())
    mem, texts = np.load(cfg["data"], mmap_mode="r"), chunk_texts()
    t = time.perf_counter()
    if fit:
        store.add(records(texts, 0, fit), np.asarray(mem[:fit], dtype=np.float32))
    first_s = time.perf_counter() - t
    bounds = np.linspace(fit, n, workers + 1).astype(int)
    out = run_procs(ingest_worker, [(cfg, int(a), int(b)) for a, b in itertools.pairwise(bounds)])
    rate = (n - fit) / (max(o[1] for o in out) - min(o[0] for o in out))
    return first_s, rate, store.count()


def drop(cfg: dict, srv: dict) -> None:
    """Remove a run's collections and memories (moto keeps objects in its own temp files)."""
    import chromadb
    import s3fs

    client = chromadb.HttpClient(host="127.0.0.1", port=cfg["chroma_port"])
    col_id = client.get_collection(cfg["collection"]).id
    for name in (cfg["collection"], f"clara-projection-{col_id}"):
        with contextlib.suppress(Exception):
            client.delete_collection(name)
    s3fs.S3FileSystem(**srv["s3"]).rm(cfg["memories"].removeprefix("s3://"), recursive=True)


def part_store(args: argparse.Namespace, srv: dict, root: Path) -> None:
    n, data = args.chunks, root / "memories.npy"
    t = time.perf_counter()
    latents = generate(data, n)
    queries = make_queries(latents, args.queries)
    exact = exact_top(data, queries)
    print(f"(synthetic data and exact ranking: {time.perf_counter() - t:.0f} s, not part of any number below)")
    rows: list[tuple] = []
    for dtype in args.dtypes.split(","):
        rates: dict[int, float] = {}
        counts = list(
            map(int, (args.int8_workers if dtype == "int8" and args.int8_workers else args.workers).split(","))
        )
        for workers in counts:
            name = f"bench-{dtype}-{workers}w-{uuid.uuid4().hex[:6]}"
            cfg = {"chroma_port": srv["chroma_port"], "collection": name, "memories": f"{srv['bucket']}/{name}",
                   "s3": srv["s3"], "dtype": dtype, "data": str(data), "batch": args.batch}  # fmt: skip
            before = folder_bytes(srv["chroma_path"])
            first_s, rates[workers], count = ingest(cfg, n, workers)
            rows.append(
                (
                    f"{dtype}: ingest, {workers} worker process(es), after the first add (chunks/s)",
                    f"{rates[workers]:.1f}",
                )
            )
            rows.append((f"{dtype}: first add (projection fitted on it), {workers}-worker run (s)", f"{first_s:.1f}"))
            rows.append((f"{dtype}: chunks counted after the {workers}-worker run (of {n})", f"{count}"))
            if workers == counts[-1]:
                rows += store_bytes(cfg, srv, folder_bytes(srv["chroma_path"]) - before, n)
                rows += query_rows(dtype, cfg, queries, exact)
            drop(cfg, srv)
        if len(rates) > 1:
            rows.append(
                (
                    f"{dtype}: ingest rate {counts[-1]} / {counts[0]} worker(s)",
                    f"{rates[counts[-1]] / rates[counts[0]]:.2f}",
                )
            )
    title = f"Shared layout, {n} chunks of {DIM}-d synthetic memories, chroma run + {args.s3} S3 on 127.0.0.1"
    table(title, rows)


def store_bytes(cfg: dict, srv: dict, chroma_growth: int, n: int) -> list[tuple]:
    from clara_plugins.store.object_shards import ObjectShards

    dtype = cfg["dtype"]
    shards = ObjectShards(cfg["memories"], DIM, dtype, HIDDEN, srv["s3"])
    return [
        (f"{dtype}: bytes per chunk in Chroma (server folder growth)", f"{chroma_growth / n:,.0f}"),
        (f"{dtype}: bytes per chunk in the object store (shards)", f"{shards.nbytes() / n:,.0f}"),
    ]


def query_rows(dtype: str, cfg: dict, queries: np.ndarray, exact: np.ndarray) -> list[tuple[str, str, str]]:
    halves = np.array_split(np.arange(len(queries)), 2)
    out = run_procs(query_client, [(cfg, queries[h]) for h in halves])  # 2 clients at once
    lat = np.concatenate([o[0] for o in out]) * 1e3
    found = [ids for o in out for ids in o[1]]
    order = np.concatenate(halves)
    recall = np.mean([len(set(found[i]) & set(exact[q].tolist())) / 10 for i, q in enumerate(order)])
    p50, p95 = np.percentile(lat, [50, 95])
    return [
        (f"{dtype}: query p50 / p95, 2 clients at once (ms)", f"{p50:.1f} / {p95:.1f}", ""),
        (f"{dtype}: recall@10 vs exact CLaRa ranking (fp32 cosine)", f"{recall:.4f}", ">= 0.98"),
    ]


def table(title: str, rows: list[tuple]) -> None:
    print(f"\n{title}")
    print(f"| {'metric':<72} | {'value':>14} | {'goal':>8} |")
    print(f"|{'-' * 74}|{'-' * 16}|{'-' * 10}|")
    for row in rows:
        name, value, goal = (*row, "")[:3]
        print(f"| {name:<72} | {value:>14} | {goal:>8} |")
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["shards", "store", "bundled", "all"], default="all")
    parser.add_argument("--chunks", type=int, default=20000)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--dtypes", default="float16,int8")
    parser.add_argument("--int8-workers", default=None, help="worker counts for int8 (default: --workers)")
    parser.add_argument("--batch", type=int, default=100, help="chunks per store.add (one shard each)")
    parser.add_argument("--queries", type=int, default=200, help="split between the 2 querying clients")
    parser.add_argument("--shard-rows", type=int, default=2000)
    parser.add_argument("--shard-batch", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--s3", choices=["moto", "s3rver"], default="moto", help="s3rver: npm's, $S3RVER or PATH")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="clara-shared-bench-") as tmp, servers(Path(tmp), args.s3) as srv:
        if args.part in ("shards", "all"):
            part_shards(args, srv)
        if args.part in ("bundled", "all"):
            part_bundled(args, srv, Path(tmp))
        if args.part in ("store", "all"):
            part_store(args, srv, Path(tmp))


if __name__ == "__main__":
    main()
