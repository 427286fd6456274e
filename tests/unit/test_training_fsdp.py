"""The FSDP settings the trainer refuses, before any work (the FSDP runs themselves: tests/integration)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from clara_plugins.errors import ConfigError
from clara_plugins.training.fsdp import check_fsdp


def _accelerator(**plugin) -> SimpleNamespace:
    settings = {"fsdp_version": 1, "use_orig_params": True, **plugin}
    return SimpleNamespace(state=SimpleNamespace(fsdp_plugin=SimpleNamespace(**settings)))


@pytest.mark.parametrize("stage", ["2", "3", "retrieval"])
def test_documented_settings_pass(stage) -> None:
    check_fsdp(_accelerator(), stage)


@pytest.mark.parametrize(
    ("plugin", "stage", "words"),
    [
        ({"fsdp_version": 2}, "2", "version 2"),
        ({"use_orig_params": False}, "3", "use_orig_params"),
        ({}, "1", "stage 1"),
    ],
)
def test_unsupported_settings_are_named(plugin, stage, words) -> None:
    with pytest.raises(ConfigError, match=words):
        check_fsdp(_accelerator(**plugin), stage)
