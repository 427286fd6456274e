"""Every integration example runs as a user would run it (offline, bundled tiny model) and prints answer + sources."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = [
    "langchain_rag_chain.py",
    "langchain_rerank_bm25.py",
    "llama_index_query_engine.py",
    "llama_index_postprocessor.py",
    pytest.param("langchain_tutorial_patterns.py", marks=pytest.mark.slow),
    pytest.param("llama_index_chat_engine.py", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("script", EXAMPLES)
def test_example_runs_offline_and_prints_answer_and_sources(script, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TQDM_DISABLE": "1"}
    result = subprocess.run(
        [sys.executable, str(REPO / "examples" / script)],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # not the repository root: the example must work from anywhere
        env=env,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert any(line.startswith("Question: ") for line in lines)
    answers = [line for line in lines if line.startswith("Answer:")]
    assert answers
    assert answers[0].removeprefix("Answer:").strip(), "empty answer"
    assert any(line.startswith("Sources") for line in lines)
    assert "demo-0" in result.stdout  # the sources name the indexed passages
