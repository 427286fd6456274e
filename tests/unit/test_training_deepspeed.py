"""What the trainer sets and refuses under DeepSpeed, before any work (the ZeRO-2 runs: tests/integration)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from clara_plugins.errors import ConfigError
from clara_plugins.training.config import TrainConfig
from clara_plugins.training.deepspeed_zero import configure_deepspeed


def _accelerator(stage: int) -> SimpleNamespace:
    ds_config = {"zero_optimization": {"stage": stage}, "train_batch_size": "auto", "gradient_clipping": 1.0}
    return SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(deepspeed_config=ds_config)))


def test_micro_batch_comes_from_the_config() -> None:
    accelerator = _accelerator(2)
    configure_deepspeed(accelerator, TrainConfig(stage="3", train_file="x", batch_size=6))
    ds_config = accelerator.state.deepspeed_plugin.deepspeed_config
    assert ds_config["train_micro_batch_size_per_gpu"] == 6
    assert ds_config["gradient_accumulation_steps"] == 1
    assert "train_batch_size" not in ds_config


@pytest.mark.parametrize(("zero", "accumulation", "words"), [(3, 1, "ZeRO stage 3"), (2, 4, "grad_accum_steps is 4")])
def test_unsupported_settings_are_named(zero, accumulation, words) -> None:
    config = TrainConfig(stage="2", train_file="x", grad_accum_steps=accumulation)
    with pytest.raises(ConfigError, match=words):
        configure_deepspeed(_accelerator(zero), config)
