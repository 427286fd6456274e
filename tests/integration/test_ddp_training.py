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


DEEPSPEED_CONFIG = """compute_environment: LOCAL_MACHINE
distributed_type: DEEPSPEED
mixed_precision: 'no'
num_machines: 1
num_processes: {processes}
main_process_port: {port}
deepspeed_config:
  zero_stage: 2
  gradient_accumulation_steps: 1
  gradient_clipping: {clip}
  offload_optimizer_device: none
  offload_param_device: none
  zero3_init_flag: false
"""


def _launch(tmp: Path, name: str, processes: int, stage: str, start: Path, data: Path, **extra) -> Path:
    """One training run: ``processes`` CPU processes through ``accelerate launch`` (data-parallel); with
    ``fsdp=True`` through torchrun and ``fsdp_on_cpu.py`` (accelerate's FSDP path); with ``deepspeed=True``
    through ``accelerate launch`` with a ZeRO-2 config and ``deepspeed_on_cpu.py``."""
    fsdp, deepspeed = extra.pop("fsdp", False), extra.pop("deepspeed", False)
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
        **extra,
    }
    (tmp / f"{name}.json").write_text(json.dumps(config))
    port = str(29500 + processes + 10 * fsdp + 20 * deepspeed)
    if fsdp:
        script = Path(__file__).with_name("fsdp_on_cpu.py")
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes)]
        cmd = [*launcher, "--master_port", port, str(script), str(tmp / f"{name}.json")]
    elif deepspeed:  # the documented ZeRO-2 config (docs/training.md), in fp32 on CPU processes
        accelerate_config = tmp / f"{name}_deepspeed.yaml"
        accelerate_config.write_text(
            DEEPSPEED_CONFIG.format(processes=processes, port=port, clip=config.get("max_grad_norm", 1.0))
        )
        script = Path(__file__).with_name("deepspeed_on_cpu.py")
        launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(accelerate_config)]
        cmd = [*launcher, str(script), str(tmp / f"{name}.json")]
    else:
        # `--multi_gpu` starts the processes through torchrun; without CUDA the trainer runs them on CPU with gloo
        # (`--cpu` alone starts a single process)
        mode = ["--multi_gpu"] if processes > 1 else ["--cpu"]
        launcher = [sys.executable, "-m", "accelerate.commands.launch", *mode, "--num_processes", str(processes)]
        launcher += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
        cmd = [*launcher, "--main_process_port", port, "-m", "clara_plugins.training"]
        cmd += ["--config", str(tmp / f"{name}.json")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _losses(out: Path) -> list[float]:
    return [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]


def _assert_same_weights(one: Path, two: Path, start: Path) -> None:
    """The same final weights up to float summation order; training did move weights."""
    a = ClaraModel.from_pretrained(one / "final", device="cpu")
    b = ClaraModel.from_pretrained(two / "final", device="cpu")
    s = ClaraModel.from_pretrained(start, device="cpu")
    pb, ps = dict(b.peft_model.named_parameters()), dict(s.peft_model.named_parameters())
    assert pb.keys() == ps.keys()
    moved = 0
    for name, p in a.peft_model.named_parameters():
        # all-reduce sums floats in another order: allow differences far below the size of the update itself
        diff, move = (p - pb[name]).abs().max().item(), (p - ps[name]).abs().max().item()
        assert diff <= 1e-2 * move + 1e-6, (name, diff, move)
        moved += int(move > 0)
    assert moved > 0


def _start(tmp_path: Path, passages: list[str]) -> tuple[Path, Path]:
    if shutil.which("accelerate") is None and not _has_accelerate():
        pytest.skip("accelerate not installed")
    start = tmp_path / "start"
    build_tiny_clara(
        texts=passages, seed=0, vocab_size=800, hidden_size=32, num_layers=2, doc_max_length=64, compr_rate=16
    ).save_pretrained(start)
    data = tmp_path / "rows.jsonl"
    write_jsonl(data, _rows(passages))
    return start, data


@pytest.mark.parametrize("stage", ["2", "3"])
def test_two_processes_match_one(stage, passages, tmp_path) -> None:
    start, data = _start(tmp_path, passages)
    one = _launch(tmp_path, "one", 1, stage, start, data)
    two = _launch(tmp_path, "two", 2, stage, start, data)
    assert len(_losses(one)) == 3
    assert _losses(one) == pytest.approx(_losses(two), rel=1e-5, abs=1e-6)
    _assert_same_weights(one, two, start)


@pytest.mark.parametrize("launcher", ["fsdp", "deepspeed"])
def test_sharded_training_matches_one_process_and_resumes(launcher, passages, tmp_path) -> None:
    """The documented FSDP (FULL_SHARD) and DeepSpeed (ZeRO-2) setups on 2 processes: the same losses and weights
    as 1 process with gradient clipping on (FSDP: the norm over both shards); each process saves its optimiser
    shard and a run resumed from the step-2 checkpoint ends the same; the final evaluation runs."""
    if launcher == "deepspeed":
        pytest.importorskip("deepspeed")
    start, data = _start(tmp_path, passages)
    kw = {"max_grad_norm": 0.5, "eval_file": str(data), "eval_max_examples": 4, launcher: True}
    one = _launch(tmp_path, "one", 1, "3", start, data, **{**kw, launcher: False})
    two = _launch(tmp_path, "two", 2, "3", start, data, save_every=2, **kw)
    assert _losses(one) == pytest.approx(_losses(two), rel=1e-5, abs=1e-6)
    _assert_same_weights(one, two, start)
    checkpoint = two / "checkpoint-2"
    assert {"trainable.safetensors", "optimizer-0.pt", "optimizer-1.pt"} <= {f.name for f in checkpoint.iterdir()}
    resumed = _launch(tmp_path, "resumed", 2, "3", start, data, resume_from=str(checkpoint), **kw)
    assert _losses(resumed) == pytest.approx(_losses(two)[2:], rel=1e-6)
    _assert_same_weights(two, resumed, start)
    evals = [json.loads(x) for x in (two / "metrics.jsonl").read_text().splitlines() if '"eval_' in x]
    assert evals, "the final evaluation did not run"


def _has_accelerate() -> bool:
    try:
        import accelerate  # noqa: F401
    except ImportError:
        return False
    return True
