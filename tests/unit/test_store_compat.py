"""Stores written by the previous release (clara-plugins at commit 45cfd1d, before the store became a package with
one class per layout) open, search and grow with this one. The fixture in tests/fixtures/store-0.x was written by
that release's own code (12 demo passages, the bundled model, a "pca" and a "full" store) together with the ids
its searches returned."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from clara_plugins import ClaraModel, ClaraRAG
from clara_plugins.store import ClaraStore

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "store-0.x"


@pytest.fixture(scope="module")
def model() -> ClaraModel:
    return ClaraModel.from_pretrained("tiny", device="cpu")


@pytest.mark.parametrize("layout", ["pca", "full"])
def test_a_store_of_the_previous_release_opens_searches_and_grows(tmp_path, model, layout):
    expected = json.loads((FIXTURE / "expected.json").read_text())
    folder = tmp_path / layout
    shutil.copytree(FIXTURE / layout, folder)  # never write into the fixture
    rag = ClaraRAG(model, ClaraStore(path=folder))
    assert rag.store.layout == layout and rag.store.count() == expected[f"{layout}_count"]
    for question, ids in expected[layout].items():
        assert [h.id for h in rag.search(question, k=5)] == ids
    assert rag.store.verify().ok
    rag.index(
        [{"id": "new", "text": "Ljubljana is the capital of Slovenia, on the Ljubljanica river."}], show_progress=False
    )
    assert rag.store.count() == expected[f"{layout}_count"] + 1
    assert rag.search("What is the capital of Slovenia?", k=1)[0].id == "new#0"
    assert rag.store.verify().ok
