"""Files that cannot be read become InputErrors naming the file (and line), never raw tracebacks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from clara_plugins.corpus import read_corpus
from clara_plugins.errors import InputError


def test_jsonl_line_that_is_not_utf8_names_file_and_line(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9 latin-1"}\n')
    with pytest.raises(InputError, match=r"docs\.jsonl:2: not UTF-8"):
        read_corpus([path])


def test_unreadable_file_in_a_folder_names_the_file(tmp_path, monkeypatch):
    (tmp_path / "a.txt").write_text("readable")
    bad = tmp_path / "b.txt"
    bad.write_text("secret")
    bad.chmod(0)
    if os.access(bad, os.R_OK):  # running as root: permissions do not stop reads, so make this one file fail
        real = Path.read_text

        def read_text(self, *args, **kwargs):
            if self == bad.resolve():
                raise PermissionError(13, "Permission denied", str(self))
            return real(self, *args, **kwargs)

        monkeypatch.setattr(Path, "read_text", read_text)
    with pytest.raises(InputError, match=r"cannot read .*b\.txt: Permission denied"):
        read_corpus([tmp_path])


def test_ids_from_paths_escape_the_chunk_separator(tmp_path):
    (tmp_path / "notes#1.txt").write_text("a note")
    (rec,) = read_corpus([tmp_path])
    assert "#" not in rec["id"] and rec["id"].endswith("notes%231.txt")
    assert rec["metadata"]["source"].endswith("notes#1.txt")
