"""The framework-free helpers the integrations share: stop sequences, references, async streams."""

from __future__ import annotations

import pytest

from clara_plugins.adapters._common import StopFilter, aiter_in_thread, to_reference
from clara_plugins.rag import text_hash


@pytest.mark.parametrize(
    ("pieces", "stop", "expected"),
    [
        (["hello wor", "ld. bye"], ["."], "hello world"),
        (["abc", "STO", "P tail"], ["STOP"], "abc"),
        (["abcST", "Oxyz"], ["STOP"], "abcSTOxyz"),  # a partial match that does not complete is emitted
        (["no stop here"], [], "no stop here"),
        (["x", "yz"], ["yz", "y"], "x"),  # the earliest stop wins
    ],
)
def test_stop_filter_cuts_streams_like_whole_texts(pieces, stop, expected):
    streamed = StopFilter(stop)
    out = "".join(streamed.feed(p) for p in pieces) + streamed.flush()
    assert out == expected
    assert StopFilter(stop).apply("".join(pieces)) == expected


def test_stop_filter_holds_back_only_possible_prefixes():
    f = StopFilter(["END"])
    assert f.feed("abcE") == "abc"  # "E" may start "END"
    assert f.feed("N") == ""
    assert f.feed("X") == "ENX"
    assert not f.stopped


def test_to_reference_keeps_user_metadata_and_ignores_foreign_ids():
    ref = to_reference("t", {"clara_id": "x", "score": 0.5, "source": "wiki", "doc_id": "d", "start": 0, "end": 1})
    assert (ref.id, ref.metadata, ref.doc_id, ref.start, ref.end) == ("x", {"source": "wiki"}, "d", 0, 1)
    # a document without clara_id is addressed by its content hash, never by a foreign id
    assert to_reference("t", {"id": "foreign"}).id == text_hash("t")


async def test_aiter_in_thread_yields_all_items():
    assert [x async for x in aiter_in_thread(lambda: iter(range(5)))] == [0, 1, 2, 3, 4]
