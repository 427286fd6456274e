"""The sidecar's write lock is portable (``filelock``): ``import clara_plugins`` and a ``"pca"`` store work where
``fcntl`` does not exist, and the lock still keeps a second process out."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import filelock
import pytest

from clara_plugins.store.sidecar import SidecarMemories

_WITHOUT_FCNTL = textwrap.dedent(
    """
    import sys
    sys.modules["fcntl"] = None  # as on Windows: `import fcntl` raises ImportError
    import numpy as np
    import clara_plugins
    from clara_plugins.store import ChunkRecord, ClaraStore
    from clara_plugins.store.checks import text_hash

    store = ClaraStore(path=sys.argv[1], layout="pca", ann_dim=8)
    store.bind("fp", 64, 4, 16, "m")
    rows = np.random.default_rng(0).standard_normal((20, 64)).astype(np.float32)
    recs = [ChunkRecord(f"d{i}#0", f"t{i}", f"d{i}", 0, 2, 0, 1, f"h{i}", text_hash(f"t{i}"), {}) for i in range(20)]
    store.add(recs, rows)
    assert np.allclose(store.get_memories(["d7#0"]), rows[7], atol=1e-2)
    print("ok", store.layout)
    """
)


def test_import_and_pca_store_without_fcntl(tmp_path):
    run = subprocess.run(
        [sys.executable, "-c", _WITHOUT_FCNTL, str(tmp_path / "db")], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["ok", "pca"]


_HOLD = textwrap.dedent(
    """
    import sys, time
    from clara_plugins.store.sidecar import SidecarMemories

    with SidecarMemories(sys.argv[1], 8).write_lock():
        print("locked", flush=True)
        sys.stdin.readline()
    """
)


def test_write_lock_keeps_another_process_out(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(tmp_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(filelock.Timeout):
            filelock.FileLock(tmp_path / "write.lock").acquire(timeout=0.3)
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
    with SidecarMemories(tmp_path, 8).write_lock():  # free again once the holder is gone
        pass
