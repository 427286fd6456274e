"""The core imports no framework; the integrations need their extras and say which one is missing."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run_python(code: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (so sys.modules starts empty)."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        cwd=cwd or REPO,
        timeout=120,
        check=False,
    )


def test_core_imports_no_framework():
    result = run_python(
        """
        import sys
        import clara_plugins
        from clara_plugins import ClaraModel, ClaraRAG, ClaraStore  # the lazy names load their modules
        import clara_plugins.model, clara_plugins.rag, clara_plugins.store
        frameworks = ("langchain_core", "langchain", "langchain_classic", "llama_index")
        print("LOADED", sorted(m for m in sys.modules if m.split(".")[0] in frameworks))
        """
    )
    assert result.returncode == 0, result.stderr
    assert "LOADED []" in result.stdout


def test_adapters_package_imports_no_framework():
    result = run_python(
        """
        import sys
        import clara_plugins.adapters
        print("LOADED", sorted(m for m in sys.modules if m.startswith(("langchain", "llama_index"))))
        """
    )
    assert result.returncode == 0, result.stderr
    assert "LOADED []" in result.stdout


def test_top_level_adapters_import_is_refused():
    # from the repository root, adapters/ is importable as a top-level package: its guard must refuse
    result = run_python("import adapters")
    assert result.returncode != 0
    assert "ImportError" in result.stderr
    assert "clara_plugins.adapters" in result.stderr


BLOCK = """
import sys
for name in {blocked!r}:
    sys.modules[name] = None  # makes `import name` raise ImportError, as if it were not installed
"""


@pytest.mark.parametrize(
    ("module", "bridges", "blocked", "extra"),
    [
        (
            "langchain",
            ["as_langchain_retriever", "as_langchain_compressor", "as_langchain_chat_model"],
            ["langchain_core"],
            "langchain",
        ),
        (
            "llama_index",
            ["as_llama_index_retriever", "as_llama_index_postprocessor", "as_llama_index_query_engine"],
            ["llama_index", "llama_index.core"],
            "llama-index",
        ),
    ],
)
def test_missing_extra_is_named(module, bridges, blocked, extra):
    # a bridge imports its integration before it touches the RAG object, so an empty stand-in is enough
    result = run_python(
        BLOCK.format(blocked=blocked)
        + f"""
from clara_plugins import ClaraRAG, MissingExtraError
try:
    import clara_plugins.adapters.{module}
except MissingExtraError as err:
    assert isinstance(err, ImportError)
    print("MISSING module", err.extra, "|", err)
rag = ClaraRAG.__new__(ClaraRAG)
for bridge in {bridges!r}:
    try:
        getattr(rag, bridge)()
    except MissingExtraError as err:
        print("MISSING", bridge, err.extra)
"""
    )
    assert result.returncode == 0, result.stderr
    assert f"MISSING module {extra} |" in result.stdout
    assert f"clara-plugins[{extra}]" in result.stdout
    for bridge in bridges:
        assert f"MISSING {bridge} {extra}" in result.stdout
