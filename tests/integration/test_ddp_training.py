"""Data-parallel training through accelerate: 2 CPU processes (gloo) with batch 2 == 1 process with batch 4."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from clara_plugins.model import ClaraModel
from clara_plugins.tiny import build_tiny_clara
from clara_plugins.training.data import QARow, write_jsonl

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _rows(passages: list[str]) -> list[QARow]:
    docs = [p[:120] for p in passages[:8]]
    return [
        QARow(f"What is said about item {i}?", [docs[i], docs[(i + 1) % 8], docs[(i + 3) % 8]], [docs[i][:30]], [0])
        for i in range(8)
    ]


def _launch(tmp: Path, name: str, processes: int, stage: str, start: Path, data: Path) -> Path:
    out = tmp / name
    config = {
        "stage": stage,
        "model": str(start),
        "train_file": str(data),
        "output_dir": str(out),
        "batch_size": 4 // processes,
        "max_steps": 3,
        "learning_rate": 1e-2,
        "freeze_dropout": True,
        "top_k": 2,
        "max_docs": 2,
        "log_every": 1,
        "plot": False,
        "progress": False,
        "eval_generate": False,
    }
    (tmp / f"{name}.json").write_text(json.dumps(config))
    # `--multi_gpu` starts the processes through torchrun; without CUDA the trainer runs them on CPU with gloo
    # (`--cpu` alone starts a single process)
    mode = ["--multi_gpu"] if processes > 1 else ["--cpu"]
    launcher = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        *mode,
        "--num_processes",
        str(processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(29500 + processes),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [*launcher, "-m", "clara_plugins.training", "--config", str(tmp / f"{name}.json")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.parametrize("stage", ["2", "3"])
def test_two_processes_match_one(stage, passages, tmp_path) -> None:
    if shutil.which("accelerate") is None and not _has_accelerate():
        pytest.skip("accelerate not installed")
    start = tmp_path / "start"
    build_tiny_clara(
        texts=passages, seed=0, vocab_size=800, hidden_size=32, num_layers=2, doc_max_length=64, compr_rate=16
    ).save_pretrained(start)
    data = tmp_path / "rows.jsonl"
    write_jsonl(data, _rows(passages))
    one = _launch(tmp_path, "one", 1, stage, start, data)
    two = _launch(tmp_path, "two", 2, stage, start, data)
    losses = [[json.loads(x)["loss"] for x in (d / "metrics.jsonl").read_text().splitlines()] for d in (one, two)]
    assert len(losses[0]) == 3
    assert losses[0] == pytest.approx(losses[1], rel=1e-5, abs=1e-6)
    a = ClaraModel.from_pretrained(one / "final", device="cpu")
    b = ClaraModel.from_pretrained(two / "final", device="cpu")
    s = ClaraModel.from_pretrained(start, device="cpu")
    pb, ps = dict(b.peft_model.named_parameters()), dict(s.peft_model.named_parameters())
    moved = 0
    for name, p in a.peft_model.named_parameters():
        # all-reduce sums floats in another order: allow differences far below the size of the update itself
        diff, move = (p - pb[name]).abs().max().item(), (p - ps[name]).abs().max().item()
        assert diff <= 1e-2 * move + 1e-6, (name, diff, move)
        moved += int(move > 0)
    assert moved > 0  # training did change weights, identically in both runs


def _has_accelerate() -> bool:
    try:
        import accelerate  # noqa: F401
    except ImportError:
        return False
    return True
