"""The chunker: limits, boundaries, offsets that give back the text."""

from __future__ import annotations

import pytest

from clara_plugins import InputError
from clara_plugins.chunking import chunk_text


def n_tokens(tok, text: str) -> int:
    return len(tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])


@pytest.mark.parametrize("limit", [8, 32, 64])
def test_chunks_fit_and_reconstruct_the_text(tiny_model, passages, limit):
    text = "\n\n".join(passages[:6])
    chunks = chunk_text(text, tiny_model.tokenizer, limit)
    assert "".join(c.text for c in chunks) == text
    assert all(text[c.start : c.end] == c.text for c in chunks)
    assert all(n_tokens(tiny_model.tokenizer, c.text) <= limit for c in chunks)
    assert [c.start for c in chunks[1:]] == [c.end for c in chunks[:-1]]


def test_prefers_paragraph_then_sentence_boundaries(tiny_model):
    para = "First sentence here. Second sentence follows. Third one ends it."
    text = f"{para}\n\n{para}"
    chunks = chunk_text(text, tiny_model.tokenizer, n_tokens(tiny_model.tokenizer, para) + 3)
    assert chunks[0].text.rstrip() == para
    sentences = chunk_text(para, tiny_model.tokenizer, n_tokens(tiny_model.tokenizer, para) - 2)
    assert sentences[0].text.rstrip().endswith(".")


def test_short_empty_and_unbroken_texts(tiny_model):
    assert chunk_text("", tiny_model.tokenizer, 16) == []
    [one] = chunk_text("short text", tiny_model.tokenizer, 16)
    assert (one.start, one.end) == (0, 10)
    blob = "x" * 5000  # no boundary at all: hard cuts at token boundaries
    chunks = chunk_text(blob, tiny_model.tokenizer, 16)
    assert "".join(c.text for c in chunks) == blob
    assert all(n_tokens(tiny_model.tokenizer, c.text) <= 16 for c in chunks)


def test_model_chunk_uses_doc_max_length(tiny_model, passages):
    text = " ".join(passages[:3])
    assert all(
        n_tokens(tiny_model.tokenizer, c.text) <= tiny_model.config.doc_max_length for c in tiny_model.chunk(text)
    )


def test_bad_arguments(tiny_model):
    with pytest.raises(InputError, match="text must be a str"):
        chunk_text(b"bytes", tiny_model.tokenizer, 16)
    with pytest.raises(InputError, match="max_tokens"):
        chunk_text("a", tiny_model.tokenizer, 0)
