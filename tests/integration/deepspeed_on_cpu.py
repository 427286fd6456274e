"""Run ``clara_plugins.training`` under accelerate's DeepSpeed integration on CPU processes.

``accelerate launch --config_file ds.yaml deepspeed_on_cpu.py CONFIG.json``. DeepSpeed runs on the CPU (its CPU
accelerator), but there accelerate counts a single process and the trainer, which asks for CPU data-parallel
when it finds no GPU, would not use DeepSpeed at all. This launcher builds the accelerator the trainer gets on GPUs
and gives accelerate the process count and rank DeepSpeed's own process group has. Nothing else is faked.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch.distributed as dist
from accelerate import Accelerator
from accelerate.state import PartialState

import clara_plugins.training.trainer as trainer
from clara_plugins.training.config import TrainConfig


def deepspeed_accelerator(config: TrainConfig) -> Accelerator:
    accelerator = Accelerator()
    shared = PartialState._shared_state
    shared["num_processes"], shared["process_index"] = dist.get_world_size(), dist.get_rank()
    shared["local_process_index"] = dist.get_rank()
    return accelerator


if __name__ == "__main__":
    trainer._accelerator = deepspeed_accelerator
    trainer.train(TrainConfig(**json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))))
