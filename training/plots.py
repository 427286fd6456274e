"""Plot ``metrics.jsonl`` (one JSON object per logged step) to a PNG: one panel per metric, against the step."""

from __future__ import annotations

import json
import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def plot_metrics(jsonl: str | Path, png: str | Path) -> Path | None:
    """Draw every numeric field of ``jsonl`` (loss, recall@k, EM / F1, ...) against ``step``; returns the PNG path.

    Returns None (with a log line) when there is nothing to plot or matplotlib is not installed.
    """
    jsonl, png = Path(jsonl), Path(png)
    if not jsonl.is_file():
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - depends on the environment
        logger.warning("matplotlib is not installed (pip install 'clara-plugins[train]'); no plot written")
        return None
    records = [json.loads(line) for line in jsonl.read_text(encoding="utf-8").splitlines() if line.strip()]
    series: dict[str, list[tuple[int, float]]] = {}
    for rec in records:
        for key, value in rec.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                series.setdefault(key, []).append((rec["step"], value))
    if not series:
        return None
    cols = min(3, len(series))
    rows = -(-len(series) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3 * rows), squeeze=False)
    for ax, (key, points) in zip(axes.flat, sorted(series.items())):
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="." if len(points) < 50 else None)
        ax.set_title(key)
        ax.set_xlabel("step")
    for ax in list(axes.flat)[len(series) :]:
        ax.axis("off")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png
