"""A process whose Chroma view predates another process's writes must not serve or persist that stale view.

Plain chromadb 1.5 (measured while fixing issue 14): process A loads a collection, process B adds 1,500 records
(past the HNSW sync threshold, so B persists the index), then A adds 1,500 more: afterwards every one of B's records
is missing from the HNSW index for good (a `where` search on them raises `Error finding id`). ClaraStore's folder
lock and write generation make A reload its view first."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from clara_plugins.store import ChunkRecord, ClaraStore
from clara_plugins.store.checks import text_hash

pytestmark = pytest.mark.integration

DIM = 64
HNSW = {"sync_threshold": 100, "batch_size": 100}

_WRITER = """
import sys
import numpy as np
from clara_plugins.store import ChunkRecord, ClaraStore
from clara_plugins.store.checks import text_hash
store = ClaraStore(path=sys.argv[1])
texts = [f"record b{i}" for i in range(int(sys.argv[2]))]
recs = [ChunkRecord(f"b{i}#0", t, f"b{i}", 0, 1, 0, 1, "d", text_hash(t)) for i, t in enumerate(texts)]
store.add(recs, np.random.default_rng(1).standard_normal((len(recs), 64)).astype(np.float32))
"""

_PROBE = """
import sys, json
import numpy as np
from clara_plugins.store import ClaraStore
store = ClaraStore(path=sys.argv[1])
print(json.dumps({"count": store.count(), "lost": store.verify().not_in_hnsw}))
"""


def _recs(prefix: str, n: int) -> list[ChunkRecord]:
    texts = [f"record {prefix}{i}" for i in range(n)]
    return [
        ChunkRecord(f"{prefix}{i}#0", t, f"{prefix}{i}", 0, 1, 0, 1, "d", text_hash(t)) for i, t in enumerate(texts)
    ]


@pytest.mark.parametrize("layout", ["full", "pca"])
def test_a_stale_writer_reloads_instead_of_dropping_the_other_process_records(tmp_path, layout):
    import json

    path = tmp_path / "db"
    store = ClaraStore(path=path, layout=layout, ann_dim=16, hnsw=HNSW, full_max_dim=32 if layout == "pca" else 1024)
    store.bind("fp", DIM, 4, 16, "m")
    rng = np.random.default_rng(0)
    store.add(_recs("a", 50), rng.standard_normal((50, DIM)).astype(np.float32))
    store.search(rng.standard_normal((1, DIM)), 3, where={"clara_doc": "a1"})  # HNSW loaded in this process
    subprocess.run([sys.executable, "-c", _WRITER, str(path), "300"], check=True, timeout=300)
    hits = store.search(rng.standard_normal((1, DIM)), 3, where={"clara_doc": "b7"})[0]
    assert [h.id for h in hits] == ["b7#0"]  # this process sees the other one's records
    store.add(_recs("c", 300), rng.standard_normal((300, DIM)).astype(np.float32))
    out = subprocess.run([sys.executable, "-c", _PROBE, str(path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"count": 650, "lost": []}
