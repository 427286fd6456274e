"""What the trainer needs to run under accelerate's DeepSpeed integration (ZeRO stages 1 and 2).

accelerate sizes the DeepSpeed engine from a dataloader, which the trainer does not have (it draws its own batches),
so the micro-batch size is set here from the training config. accelerate also steps the engine after every
backward pass, so gradient accumulation must be DeepSpeed's, not the trainer's; and ZeRO partitions the optimiser
state, so each process saves its own (see the trainer's checkpoints).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from clara_plugins.errors import ConfigError

if TYPE_CHECKING:
    from accelerate import Accelerator

    from clara_plugins.training.config import TrainConfig

logger = logging.getLogger(__name__)


def uses_deepspeed(accelerator: Accelerator) -> bool:
    return accelerator.distributed_type == "DEEPSPEED"  # a str enum: no accelerate import needed here


def configure_deepspeed(accelerator: Accelerator, config: TrainConfig) -> None:
    """Set the engine's micro-batch size; refuse what the trainer cannot honour under DeepSpeed."""
    ds_config = accelerator.state.deepspeed_plugin.deepspeed_config
    stage = int(ds_config.get("zero_optimization", {}).get("stage", 0))
    if stage > 2:
        # ZeRO-3 partitions the weights themselves: the trainer's checkpoints and final model read them directly
        msg = f"DeepSpeed ZeRO stage {stage} is not supported by the trainer; use stage 1 or 2, or FSDP"
        raise ConfigError(msg)
    if config.grad_accum_steps != 1:
        msg = (
            f"TrainConfig.grad_accum_steps is {config.grad_accum_steps}: under DeepSpeed keep it 1 (accelerate steps "
            "the engine after every backward pass) and grow batch_size or the number of processes instead"
        )
        raise ConfigError(msg)
    ds_config["train_micro_batch_size_per_gpu"] = config.batch_size
    ds_config["gradient_accumulation_steps"] = 1
    ds_config.pop("train_batch_size", None)  # DeepSpeed derives it from the two above and the world size
    if float(ds_config.get("gradient_clipping", 0) or 0) != float(config.max_grad_norm):
        logger.warning(
            "DeepSpeed clips gradients at %s (its gradient_clipping); the config's max_grad_norm %s is not used",
            ds_config.get("gradient_clipping", 0),
            config.max_grad_norm,
        )


def checkpoint_globals() -> list[type]:
    """The DeepSpeed classes a ZeRO optimiser's state holds, allowed when a checkpoint is read with
    ``weights_only=True`` (which refuses any other object)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]
