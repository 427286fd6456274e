"""Files shipped with the package: the bundled tiny model (``tiny/``) and the demo corpus."""

from __future__ import annotations

import json
from importlib.resources import files
from typing import Any


def demo_corpus(limit: int | None = None) -> list[dict[str, Any]]:
    """The first ``limit`` records (``id``, ``title``, ``text``, ``question``, ``answer``) of the demo corpus."""
    lines = (files("clara_plugins.assets") / "demo_corpus.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines[:limit]]
