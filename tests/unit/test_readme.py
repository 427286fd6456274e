"""The README's Python snippets run as written (the quickstart, then the LangChain and LlamaIndex blocks, which use
its ``rag``), offline, on the bundled tiny model; the official-checkpoint block (a GPU and a download) compiles."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_snippets_run_in_order(tmp_path) -> None:
    blocks = _python_blocks()
    runnable = [b for b in blocks if 'token="hf_' not in b]  # all but the download of the 7B checkpoint
    assert len(runnable) >= 3, "expected the quickstart, LangChain and LlamaIndex blocks"
    script = tmp_path / "readme_snippets.py"
    script.write_text("\n".join(runnable), encoding="utf-8")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "clara_db").is_dir()  # the quickstart's store
    assert proc.stdout.count("\n") >= 4  # search hits, the answer, the chain's answer, the engine's response


def test_every_block_compiles() -> None:
    for i, block in enumerate(_python_blocks()):
        compile(block, f"README.md python block {i}", "exec")
