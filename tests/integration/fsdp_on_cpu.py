"""Run ``clara_plugins.training`` through accelerate's FSDP code path on CPU processes (gloo).

accelerate only wraps a model in FSDP on accelerators: on CPU it silently falls back to plain data-parallel, even with
an FSDP config. This launcher (``torchrun --nproc_per_node 2 fsdp_on_cpu.py CONFIG.json``) builds the accelerator the
trainer would get on GPUs with the documented config (docs/training.md: FSDP 1, FULL_SHARD, decoder layers wrapped,
use_orig_params), so that the trainer's FSDP handling (gradient clipping over all shards, gathered checkpoints,
resume, the unwrapped final model) is tested without a GPU. Only the device is faked, not FSDP itself.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

import clara_plugins.training.trainer as trainer
from clara_plugins.training.config import TrainConfig


def fsdp_accelerator(config: TrainConfig) -> Accelerator:
    accelerator = Accelerator(cpu=True)
    accelerator.state.fsdp_plugin = FullyShardedDataParallelPlugin(
        fsdp_version=1,
        sharding_strategy="FULL_SHARD",
        auto_wrap_policy="transformer_based_wrap",
        transformer_cls_names_to_wrap=["MistralDecoderLayer"],
        use_orig_params=True,
        state_dict_type="FULL_STATE_DICT",
        sync_module_states=False,  # its only use is to build on a GPU from rank 0's weights
        cpu_ram_efficient_loading=False,
    )
    # the accelerator's own branches (prepare, clip_grad_norm_) take the FSDP path; its barriers stay gloo's
    accelerator.state.device = torch.device("cpu")
    type(accelerator).distributed_type = property(lambda self: DistributedType.FSDP)
    return accelerator


if __name__ == "__main__":
    trainer._accelerator = fsdp_accelerator
    trainer.train(TrainConfig(**json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))))
