"""What the trainer needs to run under accelerate's FSDP (version 1, ``use_orig_params: true``).

FSDP keeps each process's shard of every parameter in place of the parameter: outside its forward pass a
``(4096, 32)`` LoRA matrix is a flat slice, often empty, and the decoder layers are replaced in the module tree by
FSDP units that gather their weights with collectives. So the trainer must not read, save or evaluate the model
directly while it is wrapped. These helpers gather what it needs (all processes take part; rank 0 gets the values)
and, at the end, give rank 0 back a plain model with full weights.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch

from clara_plugins.errors import ConfigError

if TYPE_CHECKING:
    from accelerate import Accelerator

    from clara_plugins.model import ClaraModel


def uses_fsdp(accelerator: Accelerator) -> bool:
    return accelerator.distributed_type == "FSDP"  # a str enum: no accelerate import needed here


def check_fsdp(accelerator: Accelerator, stage: str) -> None:
    """Refuse the FSDP settings the trainer cannot honour, before any work is done."""
    plugin = accelerator.state.fsdp_plugin
    if getattr(plugin, "fsdp_version", 1) != 1:
        msg = "FSDP version 2 is not supported by the trainer; set fsdp_version: 1 in the accelerate config"
        raise ConfigError(msg)
    if not getattr(plugin, "use_orig_params", False):
        msg = "FSDP needs fsdp_use_orig_params: true (the frozen base and the trained adapters share flat parameters)"
        raise ConfigError(msg)
    if stage == "1":
        # stage 1 lets only the memory-token rows of the embedding learn through a gradient hook on the
        # parameter; FSDP computes gradients on its flat parameters and never calls that hook
        msg = "stage 1 cannot run under FSDP (its embedding-row gradient mask would be bypassed); use data-parallel"
        raise ConfigError(msg)


def _sharded(module: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FullyShardedDataParallel, ShardingStrategy

    return any(
        unit.sharding_strategy != ShardingStrategy.NO_SHARD for unit in FullyShardedDataParallel.fsdp_modules(module)
    )


@contextmanager
def full_values(module: torch.nn.Module, *, writeback: bool = False) -> Iterator[None]:
    """Inside, the original parameters hold their full values: on rank 0 only and in CPU memory when reading
    (``writeback=False``), on every process when writing (``writeback=True``, which FSDP only allows so)."""
    from torch.distributed.fsdp import FullyShardedDataParallel

    # offloading a CPU run "to the CPU" frees the very storage it copies (a crash): only GPU runs offload
    offload = not writeback and _sharded(module) and module.compute_device.type != "cpu"
    with FullyShardedDataParallel.summon_full_params(
        module, writeback=writeback, rank0_only=not writeback, offload_to_cpu=offload
    ):
        yield


def gather_tensors(module: torch.nn.Module, params: Sequence[tuple[str, torch.nn.Parameter]]) -> dict[str, Any]:
    """Full copies of ``params`` on rank 0 (an empty dict elsewhere); every process must call it."""
    with full_values(module):
        if torch.distributed.get_rank() != 0:
            return {}
        return {n: p.detach().to("cpu", copy=True).contiguous() for n, p in params}


def original_parameters(model: ClaraModel) -> list[torch.nn.Parameter]:
    """Every parameter of the model, taken before FSDP wraps it (the objects FSDP keeps with use_orig_params)."""
    return list(model.peft_model.parameters())


def unwrap(module: torch.nn.Module, model: ClaraModel, originals: Sequence[torch.nn.Parameter]) -> None:
    """After training: rank 0's model gets full, independent weights (in CPU memory when sharded) and its FSDP
    units are replaced by the modules they wrap, so it can be evaluated, saved and returned. Other processes'
    models keep their shards and are not usable."""
    from torch.distributed.fsdp import FullyShardedDataParallel

    with full_values(module):
        full = [p.detach().clone() for p in originals] if torch.distributed.get_rank() == 0 else []
    # FSDP points the parameters back at their shards when the block above ends, hence the assignment after it
    for p, value in zip(originals, full, strict=False):
        p.data = value
    for parent in list(model.peft_model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, FullyShardedDataParallel):
                setattr(parent, name, child.module)
