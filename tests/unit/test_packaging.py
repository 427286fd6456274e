"""Packaging: every subpackage is listed (setuptools drops unlisted ones silently), remapped names are guarded."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[2]


def test_every_package_folder_is_listed_in_pyproject():
    tool = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed, dirs = set(tool["packages"]), tool["package-dir"]
    found = set()
    for package, folder in dirs.items():
        for init in (REPO / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / folder)
            found.add(".".join([package, *rel.parts]))
    assert found <= listed, f"packages missing from pyproject.toml: {sorted(found - listed)}"


def test_installed_paths_start_with_clara_plugins():
    tool = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert all(p == "clara_plugins" or p.startswith("clara_plugins.") for p in tool["packages"])


def test_import_clara_plugins_is_light():
    heavy = "('torch', 'langchain_core', 'llama_index')"
    code = f"import sys, clara_plugins; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/")
    assert out.stdout.strip() == "[]"


def test_cli_help_lists_commands():
    out = subprocess.run(
        [sys.executable, "-m", "clara_plugins.cli", "--help"], capture_output=True, text=True, check=True
    )
    assert "convert" in out.stdout


def test_py_typed_ships_and_extras_cover_the_readme_imports():
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "py.typed" in meta["tool"]["setuptools"]["package-data"]["clara_plugins"]
    assert (REPO / "clara_plugins" / "py.typed").exists()
    langchain = " ".join(meta["project"]["optional-dependencies"]["langchain"])
    assert "langchain-classic" in langchain  # README: ContextualCompressionRetriever from langchain_classic
    assert "langchain_classic" in (REPO / "README.md").read_text()


def test_loading_the_model_raises_no_third_party_future_warning():
    code = "import clara_plugins; clara_plugins.ClaraRAG.from_pretrained('tiny')"
    run = subprocess.run([sys.executable, "-W", "error::FutureWarning", "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
