"""One writer at a time on an embedded Chroma folder, across processes.

Chroma's ``PersistentClient`` keeps each collection's HNSW index in the memory of the process that opened it and
writes it back from there: two processes writing into one folder each persist their own view, and the records the
other one added go missing from the HNSW index (filtered searches then miss them, or raise ``Error finding id``).
Creating a new folder from two processes at once also races in Chroma's migrations (``table collections already
exists``). So every write of a :class:`~clara_plugins.store.ClaraStore` on a local folder holds an exclusive
file lock (``filelock``: flock on POSIX, msvcrt on Windows) on ``<folder>/clara.lock``; a writer then records a
new generation token in ``<folder>/clara.gen``, and a process that finds a token it did not write reopens its
Chroma client before it reads or writes, so it never works from (or writes back) a stale index. Several processes
writing a lot should use a Chroma server instead (``chroma run --path DIR`` and
``ClaraStore(client=chromadb.HttpClient(...))``).
"""

from __future__ import annotations

import contextlib
import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import filelock

from clara_plugins.errors import StoreError

LOCK_FILE = "clara.lock"
GEN_FILE = "clara.gen"

# per local folder: the write generation (lock.py) that this process's Chroma system has loaded
FOLDER_GEN: dict[str, str] = {}


def system_of(client: Any) -> Any:
    """The shared chromadb System a client runs on (None for clients without one)."""
    from chromadb.api.shared_system_client import SharedSystemClient

    ident = getattr(client, "_identifier", None)
    return SharedSystemClient._identifier_to_system.get(ident) if ident else None


def drop_system(client: Any) -> None:
    """Stop the process-wide chromadb System of a local client, so the next client loads the folder afresh."""
    from chromadb.api.shared_system_client import SharedSystemClient

    system = SharedSystemClient._identifier_to_system.pop(getattr(client, "_identifier", ""), None)
    if system is not None:
        system.stop()


class FolderLock:
    """Exclusive inter-process lock of a store folder (re-entrant within a thread) and its write generation.

    Args:
        folder: The Chroma folder (created if missing).
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self._mutex = threading.RLock()
        self._depth = 0
        self._handle = None
        self._gen, self._gen_key = "", None

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Hold the lock (waits for another process's write to finish)."""
        with self._mutex:
            if self._depth:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            self._acquire()
            self._depth = 1
            try:
                yield
            finally:
                self._depth = 0
                self._release()

    def _acquire(self) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._handle = filelock.FileLock(self.folder / LOCK_FILE)
            self._handle.acquire()
        except OSError as err:
            self._handle = None
            msg = f"cannot create the lock file in {self.folder} ({err}); is the folder writable?"
            raise StoreError(msg) from err

    def _release(self) -> None:
        if self._handle is not None:
            self._handle.release()
            self._handle = None

    def generation(self) -> str:
        """The token of the last write ("" before any); a ``stat`` per call, the file is read when it changed."""
        path = self.folder / GEN_FILE
        try:
            st = path.stat()
            key = (st.st_ino, st.st_mtime_ns, st.st_size)
            if key != self._gen_key:
                self._gen, self._gen_key = path.read_text().strip(), key
        except OSError:
            return ""
        return self._gen

    def bump(self) -> str:
        """Record a new write (call while holding the lock); returns the new token."""
        token = uuid.uuid4().hex
        tmp = self.folder / (GEN_FILE + ".tmp")
        tmp.write_text(token)
        os.replace(tmp, self.folder / GEN_FILE)
        return token
