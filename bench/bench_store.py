"""Benchmark of the CLaRa store: indexing overhead vs the compressor, search latency and recall, disk per chunk.

Parts (each prints a table and compares against its alternative in the same run):
  tiny    real tiny model on SciFact abstracts: store time vs compressor time for N chunks (default 10k), search
          p50/p95 with question encoding, recall@10 vs exact CLaRa ranking, disk per chunk vs fp16 memories, and
          the other layout on the same chunks; then indexes more real chunks (overlapping windows of the SciFact
          and NQ texts, each a new chunk text) until --grow chunks (default 100k) and measures search again
          (about 22 min on an idle 2-core machine).
  hnsw    Chroma's default HNSW settings vs ours: recall@10 on random isotropic 256-d vectors (the hard case).
  wide    65,536-d memories (7B at compression 16) on synthetic low-rank data: "pca" layout (fp16 sidecar +
          exact scan of 256-d projections + exact re-rank) vs the "full" layout (whole vectors in Chroma).
  verify  the cost of checking what is read against its checksums (memory and scan rows' CRC-32, chunk texts'
          content hashes): indexing throughput and search latency of two identical stores, verify on vs off.

Usage:  python bench/bench_store.py --part tiny [--chunks 10000] [--grow 100000]
        python bench/bench_store.py --part hnsw [--hnsw-n 20000]
        python bench/bench_store.py --part wide [--wide-chunks 10000]
        python bench/bench_store.py --part verify [--verify-chunks 20000] [--verify-dim 3072]
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from clara_plugins.rag import ClaraRAG
from clara_plugins.store import DEFAULT_HNSW, ChunkRecord, ClaraStore
from clara_plugins.store.checks import row_crcs, text_hash

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FP16 = 2


def load_model(name: str):
    """``from_pretrained(name)``; for "tiny" without the bundled asset, the same tiny shape as tests/conftest.py."""
    from clara_plugins.errors import CheckpointError
    from clara_plugins.model import ClaraModel

    try:
        return ClaraModel.from_pretrained(name)
    except CheckpointError:
        if name != "tiny":
            raise
        from clara_plugins.tiny import build_tiny_clara

        rows = [json.loads(line)["docs"][0] for line in (DATA / "clara_example" / "pretrain_data.jsonl").open()]
        kw = {"vocab_size": 1000, "hidden_size": 64, "num_layers": 2, "doc_max_length": 64, "compr_rate": 16}
        print("(bundled tiny model missing: using build_tiny_clara with the test fixture's shape)")
        return build_tiny_clara(texts=rows[:300], seed=0, **kw)


def disk_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1e3, q))


def recall_at(found: list[list[str]], exact: list[list[str]], k: int = 10, tenth=None, score=None) -> float:
    """Share of the exact top k that the search returned.

    With ``tenth`` (the exact k-th score per question) and ``score`` (exact score of an id per question), a returned
    chunk also counts when it ties the k-th exact score: identical chunks have identical memories, and which of
    them an exact sort puts first is arbitrary.
    """
    if tenth is None:
        return float(np.mean([len(set(f[:k]) & set(e[:k])) / k for f, e in zip(found, exact)]))
    return float(np.mean([sum(score(i, c) >= tenth[i] - 1e-6 for c in f[:k]) / k for i, f in enumerate(found)]))


def table(title: str, rows: list[tuple[str, str, str]]) -> None:
    print(f"\n{title}")
    print(f"| {'metric':<58} | {'value':>14} | {'goal':>10} |")
    print(f"|{'-' * 60}|{'-' * 16}|{'-' * 12}|")
    for name, value, goal in rows:
        print(f"| {name:<58} | {value:>14} | {goal:>10} |")
    sys.stdout.flush()


def scifact_docs(model, n_chunks: int) -> list[dict]:
    """SciFact abstracts until their chunks reach ``n_chunks``."""
    docs, total = [], 0
    with (DATA / "scifact" / "corpus.jsonl").open() as f:
        for line in f:
            row = json.loads(line)
            text = (row["title"] + ". " + row["text"]).strip()
            docs.append({"id": row["_id"], "text": text, "metadata": {"title": row["title"][:200]}})
            total += len(model.chunk(text))
            if total >= n_chunks:
                break
    return docs


def questions(n: int) -> list[str]:
    with (DATA / "scifact" / "queries.jsonl").open() as f:
        return [json.loads(line)["text"] for _, line in zip(range(n), f)]


def all_memories(store: ClaraStore) -> tuple[list[str], torch.Tensor]:
    ids = store._collection().get(include=[])["ids"]
    return ids, torch.from_numpy(store.get_memories(ids))


def exact_top(rag: ClaraRAG, qs: list[str], k: int = 10):
    """Exact CLaRa ranking by brute force over every stored memory: (top ids, k-th scores, score lookup, time)."""
    ids, mems = all_memories(rag.store)
    qv = rag.model.encode_query(qs)
    t0 = time.perf_counter()
    scores, idx = rag.model.rank(qv, mems, k)
    brute = (time.perf_counter() - t0) / len(qs)
    flat = torch.nn.functional.normalize(mems.flatten(1).float(), dim=1)
    qn = torch.nn.functional.normalize(qv.flatten(1).float(), dim=1)
    position = {cid: j for j, cid in enumerate(ids)}

    def score(i: int, cid: str) -> float:
        return float(qn[i] @ flat[position[cid]])

    return [[ids[i] for i in row] for row in idx.tolist()], scores[:, -1].tolist(), score, brute


def search_rows(rag: ClaraRAG, qs: list[str], label: str, k: int = 10, exact=None) -> list[tuple[str, str, str]]:
    """Latency of encode + search per question, and recall@k vs exact brute-force ranking over every memory."""
    times, found = [], []
    for q in qs:
        t0 = time.perf_counter()
        hits = rag.search(q, k=k)
        times.append(time.perf_counter() - t0)
        found.append([h.id for h in hits])
    top, tenth, score, brute = exact or exact_top(rag, qs, k)
    enc = []
    for q in qs[:50]:
        t0 = time.perf_counter()
        rag.model.encode_query([q])
        enc.append(time.perf_counter() - t0)
    return [
        (f"{label}: search p50 incl. question encoding (ms)", f"{pct(times, 50):.2f}", "<= 25"),
        (f"{label}: search p95 incl. question encoding (ms)", f"{pct(times, 95):.2f}", ""),
        (f"{label}: question encoding alone p50 (ms)", f"{pct(enc, 50):.2f}", ""),
        (f"{label}: exact brute-force ranking per question (ms)", f"{brute * 1e3:.2f}", ""),
        (
            f"{label}: recall@{k} vs exact CLaRa ranking (ties count)",
            f"{recall_at(found, top, k, tenth, score):.4f}",
            ">= 0.98",
        ),
    ]


def synthetic_records(texts: list[str], start: int, n: int) -> list[ChunkRecord]:
    out = []
    for i in range(start, start + n):
        text = texts[i % len(texts)]
        rec = ChunkRecord(f"syn{i}#0", text, f"syn{i}", 0, len(text), 0, 1, f"d{i}", text_hash(text), {"kind": "syn"})
        out.append(rec)
    return out


def real_texts() -> list[tuple[str, str]]:
    """(id, text) of every SciFact abstract and NQ oracle passage: about 16.5k chunks of real text."""
    out = []
    with (DATA / "scifact" / "corpus.jsonl").open() as f:
        for line in f:
            row = json.loads(line)
            out.append((row["_id"], (row["title"] + ". " + row["text"]).strip()))
    with (DATA / "nq_open_oracle" / "nq-open-oracle.jsonl").open() as f:
        for n, line in enumerate(f):
            ctx = json.loads(line)["ctxs"][0]
            out.append((f"nq{n}", f"{ctx['title']}. {ctx['text']}"))
    return out


def shifted_docs(model, start_chunks: int, target: int, seen: set[str], shift_words: int = 9) -> list[dict]:
    """Real documents for growing a store from ``start_chunks`` to ``target`` chunks.

    Pass p drops the first p x ``shift_words`` words of every text, so each pass is a new set of real chunks
    (overlapping windows of the same texts, as chunking with overlap gives); pass 0 is skipped up to what the
    store already holds (the first SciFact abstracts). Windows that would repeat a chunk text in ``seen`` (the
    stored chunks, then each new one) are skipped, so every chunk added is new text with its own memory.
    """
    texts, docs, total, seen = real_texts(), [], start_chunks, set(seen)
    for p in range(1, 64):
        for doc_id, text in texts:
            words = text.split()
            if len(words) <= p * shift_words + 20:
                continue
            shifted = " ".join(words[p * shift_words :])
            chunks = [c.text for c in model.chunk(shifted)]
            if seen.intersection(chunks):  # chunk ends fall on sentence ends: skip windows that repeat a chunk
                continue
            seen.update(chunks)
            docs.append({"id": f"{doc_id}~{p}", "text": shifted})
            total += len(chunks)
            if total >= target:
                return docs
    return docs


def copy_store(src: ClaraStore, dst: ClaraStore, ids: list[str], mems: np.ndarray, model) -> float:
    """Put ``src``'s chunks (records and memories) into ``dst``; returns the seconds ``dst.add`` took."""
    dst.bind(model.fingerprint, model.memory_dim, model.n_mem, model.hidden_size, "tiny")
    by_id = src.get_records(ids)
    took = 0.0
    for s in range(0, len(ids), 1000):
        recs = []
        for cid in ids[s : s + 1000]:
            h = by_id[cid]
            recs.append(
                ChunkRecord(cid, h.text, h.doc_id, h.start, h.end, 0, 1, f"d{cid}", text_hash(h.text), h.metadata)
            )
        t0 = time.perf_counter()
        dst.add(recs, mems[s : s + 1000])
        took += time.perf_counter() - t0
    return took


def part_tiny(args: argparse.Namespace, root: Path) -> None:
    model = load_model(args.model)
    docs = scifact_docs(model, args.chunks)
    rag = ClaraRAG(model, ClaraStore(path=root / "tiny"))
    t0 = time.perf_counter()
    res = rag.index(docs, batch_size=64, show_progress=False)
    wall = time.perf_counter() - t0
    n = rag.store.count()
    disk = disk_bytes(root / "tiny")
    ids, mems = all_memories(rag.store)
    # the alternative in the same run: a bare Chroma collection given the same vectors and texts, nothing else
    bare = ClaraStore(path=root / "bare", collection="bare")
    bare.bind("bare", model.memory_dim, model.n_mem, model.hidden_size, "bare")
    by_id = rag.store.get_records(ids)
    recs = [by_id[i] for i in ids]
    flat = mems.flatten(1).numpy()
    t1 = time.perf_counter()
    for s in range(0, n, bare.max_batch):
        bare._collection().add(
            ids=ids[s : s + bare.max_batch],
            embeddings=flat[s : s + bare.max_batch],
            documents=[r.text for r in recs[s : s + bare.max_batch]],
        )
    bare_s = time.perf_counter() - t1
    rows = [
        (f"chunks indexed ({len(docs)} SciFact abstracts), layout", f"{n}, {rag.store.layout}", ""),
        ("compressor time (s)", f"{res.compress_s:.1f}", ""),
        ("store time: lookups + Chroma writes (s)", f"{res.store_s:.1f}", ""),
        ("chunking time (s)", f"{res.chunk_s:.1f}", ""),
        ("whole index() wall time (s)", f"{wall:.1f}", ""),
        ("store overhead / compressor time", f"{res.store_s / res.compress_s:.3f}", "<= 1.25"),
        ("bare Chroma add of the same vectors+texts, whole vectors (s)", f"{bare_s:.1f}", ""),
        ("disk bytes per chunk, all files", f"{disk / n:.0f}", ""),
        ("fp16 bytes of one memory", f"{model.memory_dim * FP16}", ""),
        ("disk per chunk / fp16 memory", f"{disk / n / (model.memory_dim * FP16):.2f}", "<= 1.3"),
        ("  of which chunk text bytes per chunk", f"{np.mean([len(r.text.encode()) for r in recs]):.0f}", ""),
    ]
    qs = questions(args.queries)
    rows += search_rows(rag, qs, f"{n // 1000}k {rag.store.layout}")
    # the alternative layout on the same chunks and memories
    other = "full" if rag.store.layout == "pca" else "pca"
    alt = ClaraRAG(model, ClaraStore(path=root / "alt", layout=other))
    alt_s = copy_store(rag.store, alt.store, ids, flat, model)
    rows += [(f"{other} layout: store.add of the same chunks (s)", f"{alt_s:.1f}", "")]
    alt_disk = disk_bytes(root / "alt") / n / (model.memory_dim * FP16)
    rows += [(f"{other} layout: disk per chunk / fp16 memory", f"{alt_disk:.2f}", "<= 1.3")]
    rows += search_rows(alt, qs, f"{n // 1000}k {other}")
    table(f"tiny model ({model.memory_dim}-d memories), {n} real chunks", rows)
    if args.grow > n:
        grow(rag, args, root, {r.text for r in recs})


def grow(rag: ClaraRAG, args: argparse.Namespace, root: Path, stored: set[str]) -> None:
    """Index more real chunks (overlapping windows of SciFact and NQ texts) until the store holds ``args.grow``."""
    n0 = rag.store.count()
    docs = shifted_docs(rag.model, n0, args.grow, stored)
    t0 = time.perf_counter()
    res = rag.index(docs, batch_size=64, show_progress=True)
    wall = time.perf_counter() - t0
    n, fp16 = rag.store.count(), rag.model.memory_dim * FP16
    rows = [
        (f"real chunks added ({len(docs)} shifted texts), wall time (s)", f"{n - n0}, {wall:.0f}", ""),
        ("store overhead / compressor time while growing", f"{res.store_s / res.compress_s:.3f}", "<= 1.25"),
        ("disk per chunk / fp16 memory", f"{disk_bytes(root / 'tiny') / n / fp16:.2f}", "<= 1.3"),
    ]
    qs = questions(args.queries)
    exact = exact_top(rag, qs)
    for cand in args.cand_sweep if rag.store.layout == "pca" else [None]:
        if cand is not None:
            rag.store.candidates = cand
        label = f"{n // 1000}k {rag.store.layout}" + (f" candidates={cand}" if cand else "")
        rows += search_rows(rag, qs, label, exact=exact)
    table(f"tiny width, grown to {n} real chunks", rows)


def part_hnsw(args: argparse.Namespace) -> None:
    """HNSW settings vs recall@10 on isotropic random vectors (the hard case), each in a fresh collection."""
    import chromadb

    rng = np.random.default_rng(0)
    n, dim = args.hnsw_n, 256
    x = rng.standard_normal((n, dim)).astype(np.float32)
    q = rng.standard_normal((args.queries, dim)).astype(np.float32)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    exact = np.argsort(-(q @ xn.T), axis=1)[:, :10]
    client = chromadb.EphemeralClient()
    rows = []
    configs = [("Chroma default 100/100/16", {}), ("ef_search 256, 100/16", {"ef_search": 256})]
    configs += [("ef_search 256, ef_construction 200, M 32", {**DEFAULT_HNSW, "ef_search": 256})]
    configs += [("ours: " + "/".join(f"{k}={v}" for k, v in DEFAULT_HNSW.items()), dict(DEFAULT_HNSW))]
    for i, (name, cfg) in enumerate(configs):
        col = client.create_collection(
            f"sweep{i}", embedding_function=None, configuration={"hnsw": {"space": "cosine", **cfg}}
        )
        t0 = time.perf_counter()
        for s in range(0, n, 5000):
            col.add(ids=[str(j) for j in range(s, min(n, s + 5000))], embeddings=x[s : s + 5000])
        add_ms = (time.perf_counter() - t0) / n * 1e3
        ts, found = [], []
        for row in q:
            t0 = time.perf_counter()
            found.append([int(j) for j in col.query(query_embeddings=row[None], n_results=10, include=[])["ids"][0]])
            ts.append(time.perf_counter() - t0)
        rec = float(np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found, exact.tolist())]))
        rows += [
            (f"{name}: recall@10", f"{rec:.4f}", ">= 0.98"),
            (f"{name}: query p50 (ms) / add per vector (ms)", f"{pct(ts, 50):.2f} / {add_ms:.2f}", ""),
        ]
    table(f"HNSW settings, {n} random isotropic {dim}-d vectors (worst case for an ANN)", rows)


def wide_data(n: int, dim: int, seed: int, rank: int = 128):
    """Low-rank + common direction + noise memories (hidden states are anisotropic), generated in blocks."""
    rng = np.random.default_rng(seed)
    mu = rng.standard_normal(dim).astype(np.float32)
    basis = (rng.standard_normal((rank, dim)) / np.sqrt(rank)).astype(np.float32)
    scale = np.linspace(2, 0.2, rank, dtype=np.float32)

    def block(m: int, rng=rng) -> tuple[np.ndarray, np.ndarray]:
        z = rng.standard_normal((m, rank)).astype(np.float32) * scale
        return z, 2.0 * mu + z @ basis + 0.5 * rng.standard_normal((m, dim)).astype(np.float32)

    def query(z: np.ndarray, rng=rng) -> np.ndarray:
        zq = z + 0.5 * rng.standard_normal(z.shape).astype(np.float32)
        return 2.0 * mu + zq @ basis + 0.5 * rng.standard_normal((len(z), dim)).astype(np.float32)

    return block, query


def part_wide(args: argparse.Namespace, root: Path) -> None:
    dim, n, n_mem = 65536, args.wide_chunks, 16
    block, query = wide_data(n, dim, 0)
    store = ClaraStore(path=root / "wide", layout="pca")
    store.bind("wide-synthetic", dim, n_mem, dim // n_mem, "synthetic-65536")
    text = "x" * 1000  # about one 256-token chunk of text
    zs, add_s, gen_s, refit_s, fitted = [], 0.0, 0.0, 0.0, 0
    for start in range(0, n, 64):  # 64 chunks per add, as ClaraRAG.index writes them
        t0 = time.perf_counter()
        z, x = block(min(64, n - start))
        gen_s += time.perf_counter() - t0
        zs.append(z)
        t0 = time.perf_counter()
        store.add(synthetic_records([text], start, len(x)), x)
        took = time.perf_counter() - t0
        add_s += took
        if store._layout_of().projection().fit_rows != fitted:  # this add (re)fitted the projection
            fitted, refit_s = store._layout_of().projection().fit_rows, refit_s + took
    disk = disk_bytes(root / "wide")
    z = np.concatenate(zs)
    qidx = np.random.default_rng(1).integers(0, n, args.queries)
    qv = query(z[qidx])
    times, found = [], []
    for q in qv:
        t0 = time.perf_counter()
        found.append([h.id for h in store.search(q[None], k=10)[0]])
        times.append(time.perf_counter() - t0)
    ids = store._collection().get(include=[])["ids"]
    qn = torch.nn.functional.normalize(torch.from_numpy(qv), dim=1)
    scores = torch.zeros(len(qv), len(ids))
    for s in range(0, len(ids), 1024):  # exact fp32 cosine over the fp16 rows that the store keeps
        m = torch.from_numpy(store.get_memories(ids[s : s + 1024]))
        scores[:, s : s + 1024] = qn @ torch.nn.functional.normalize(m, dim=1).T
    exact = [[ids[i] for i in row] for row in scores.topk(10, dim=1).indices.tolist()]
    sweep = []
    for cand in args.cand_sweep:  # fewer or more candidates re-ranked exactly
        store.candidates, ts, fs = cand, [], []
        for q in qv:
            t0 = time.perf_counter()
            fs.append([h.id for h in store.search(q[None], k=10)[0]])
            ts.append(time.perf_counter() - t0)
        sweep += [
            (f"  candidates={cand}: search p50 (ms)", f"{pct(ts, 50):.2f}", ""),
            (f"  candidates={cand}: recall@10 vs exact", f"{recall_at(fs, exact):.4f}", ">= 0.98"),
        ]
    store.candidates = 64
    # the alternative: whole 65,536-d vectors in Chroma ("full" layout), on a small sample
    full = ClaraStore(path=root / "wide-full", layout="full")
    full.bind("wide-synthetic", dim, n_mem, dim // n_mem, "synthetic-65536")
    _, x = block(args.full_sample)
    t0 = time.perf_counter()
    full.add(synthetic_records([text], 0, len(x)), x)
    full_s = (time.perf_counter() - t0) / len(x)
    full_disk = disk_bytes(root / "wide-full") / len(x)
    est_ms = 2 * 7.24e9 * (256 + 3 + n_mem) / 400e12 * 1e3  # forward FLOPs of one chunk at 400 TFLOP/s (H100 bf16)
    per = add_s / n * 1e3
    table(
        f"65,536-d memories (7B, compression 16), {n} synthetic chunks, pca layout",
        [
            ("pca layout: store time per chunk, refits included (ms)", f"{per:.2f}", ""),
            ("pca layout: time of the adds that (re)fitted the projection (s)", f"{refit_s:.1f}", ""),
            ("pca layout: store time per chunk without those adds (ms)", f"{(add_s - refit_s) / n * 1e3:.2f}", ""),
            ("full layout (whole vectors in Chroma): time per chunk (ms)", f"{full_s * 1e3:.2f}", ""),
            ("7B compressor per chunk, ESTIMATE: FLOPs at 400 TFLOP/s (ms)", f"{est_ms:.1f}", ""),
            ("pca store overhead / estimated compressor time", f"{per / est_ms:.2f}", "<= 2"),
            ("full layout overhead / estimated compressor time", f"{full_s * 1e3 / est_ms:.2f}", "<= 2"),
            ("pca search p50, store only (ms)", f"{pct(times, 50):.2f}", ""),
            ("pca search p95, store only (ms)", f"{pct(times, 95):.2f}", ""),
            ("recall@10 vs exact CLaRa ranking", f"{recall_at(found, exact):.4f}", ">= 0.98"),
            ("pca disk per chunk / fp16 memory, all files", f"{disk / n / (dim * FP16):.3f}", "<= 1.3"),
            ("full layout disk per chunk / fp16 memory", f"{full_disk / (dim * FP16):.3f}", "<= 1.3"),
            ("synthetic data generation, excluded (s)", f"{gen_s:.1f}", ""),
            *sweep,
        ],
    )


def _timed_searches(stores: dict, qs: np.ndarray, where=None) -> dict:
    """Per store ``(seconds per question, top-10 ids)``; the stores take turns question by question."""
    out = {v: ([], []) for v in stores}
    for store in stores.values():  # warm-up: first reads map files and load Chroma's index
        store.search(qs[:2], 10, where=where)
    for n, q in enumerate(qs):
        for v in list(stores)[:: 1 if n % 2 else -1]:  # each goes first every other question
            store = stores[v]
            t0 = time.perf_counter()
            hits = store.search(q[None], 10, where=where)[0]
            out[v][0].append(time.perf_counter() - t0)
            out[v][1].append([h.id for h in hits])
    return out


def part_verify(args: argparse.Namespace, root: Path) -> None:
    """Two identical pca stores, one checking every read against its checksums and one not, filled and searched
    alternately batch by batch (so machine load hits both alike)."""
    n, dim = args.verify_chunks, args.verify_dim
    texts = [t for _, t in real_texts()]
    block, query = wide_data(n, dim, seed=7, rank=64)
    stores = {v: ClaraStore(path=root / f"verify-{v}", verify=v, layout="pca") for v in (True, False)}
    for store in stores.values():
        store.bind("bench-verify", dim, 16, dim // 16, "synthetic")
    add_s = {True: 0.0, False: 0.0}
    crc_s, zs = 0.0, []
    for start in range(0, n, 64):
        z, x = block(min(64, n - start))
        zs.append(z)
        recs = [
            ChunkRecord(f"c{i}#0", f"{texts[i % len(texts)]} [{i}]", f"c{i}", 0, 1, 0, 1, "d", "", {"part": i % 50})
            for i in range(start, start + len(x))
        ]
        for r in recs:
            r.hash = text_hash(r.text)
        for v in (True, False) if start % 128 else (False, True):  # each goes first every other batch
            store = stores[v]
            t0 = time.perf_counter()
            store.add(recs, x)
            add_s[v] += time.perf_counter() - t0
        t0 = time.perf_counter()
        row_crcs(x.astype(np.float16))
        crc_s += time.perf_counter() - t0
    qs = query(np.concatenate(zs)[:: max(1, n // args.queries)][: args.queries]).astype(np.float32)
    res, flt = _timed_searches(stores, qs), _timed_searches(stores, qs[:50], where={"part": 3})
    same = res[True][1] == res[False][1] and flt[True][1] == flt[False][1]
    on, off = res[True][0], res[False][0]
    table(
        f"Verification on vs off ({n:,} chunks of {dim}-d fp16 memories, pca layout, {len(qs)} questions)",
        [
            ("indexing: chunks/s, verify off (checksums still written)", f"{n / add_s[False]:.0f}", ""),
            ("indexing: chunks/s, verify on", f"{n / add_s[True]:.0f}", ""),
            ("indexing: time on / off", f"{add_s[True] / add_s[False]:.3f}", ""),
            ("indexing: CRC-32 of the fp16 rows, share of store time", f"{crc_s / add_s[False]:.3f}", ""),
            ("search p50 / p95 ms, verify off", f"{pct(off, 50):.2f} / {pct(off, 95):.2f}", ""),
            ("search p50 / p95 ms, verify on", f"{pct(on, 50):.2f} / {pct(on, 95):.2f}", ""),
            ("search p50 on / off", f"{pct(on, 50) / pct(off, 50):.3f}", ""),
            ("filtered search p50 ms, off / on", f"{pct(flt[False][0], 50):.2f} / {pct(flt[True][0], 50):.2f}", ""),
            ("same results on and off", str(same), "True"),
        ],
    )
    t0 = time.perf_counter()
    report = stores[True].verify()
    table(
        "clara check",
        [(f"verify() of {n:,} chunks, s", f"{time.perf_counter() - t0:.1f}", ""), ("ok", str(report.ok), "True")],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["tiny", "hnsw", "wide", "verify", "all"], default="all")
    parser.add_argument("--model", default="tiny", help="model for the tiny part")
    parser.add_argument("--chunks", type=int, default=10000, help="real chunks indexed with the model")
    parser.add_argument("--grow", type=int, default=100000, help="grow the tiny store to this many chunks")
    parser.add_argument("--queries", type=int, default=200, help="questions timed")
    parser.add_argument("--hnsw-n", type=int, default=20000, help="random vectors in the HNSW settings sweep")
    parser.add_argument("--wide-chunks", type=int, default=10000, help="65,536-d chunks in the wide part")
    parser.add_argument(
        "--cand-sweep", type=int, nargs="*", default=[64, 128, 256], help="candidates re-ranked exactly (pca layout)"
    )
    parser.add_argument("--full-sample", type=int, default=300, help="65,536-d chunks put whole into Chroma")
    parser.add_argument("--verify-chunks", type=int, default=20000, help="chunks in the verify part")
    parser.add_argument("--verify-dim", type=int, default=3072, help="memory width in the verify part")
    parser.add_argument("--dir", default=None, help="work folder (default: a temporary one, removed after)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # no per-question truncation warnings in the table
    root = Path(args.dir or tempfile.mkdtemp(prefix="bench-store-"))
    try:
        if args.part in ("tiny", "all"):
            part_tiny(args, root)
        if args.part in ("hnsw", "all"):
            part_hnsw(args)
        if args.part in ("wide", "all"):
            part_wide(args, root)
        if args.part in ("verify", "all"):
            part_verify(args, root)
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
