"""The build of the bundled tiny CLaRa model and its demo data (``scripts/build_tiny_model.py`` is its command line).

One module per job:

- ``config``: ``BuildConfig``, whose defaults are the recipe of the shipped weights;
- ``data``: the demo corpus split into trained and held-out questions, the demo assets, the training chunks;
- ``pretrain``: stage 0, full-parameter pretraining of the randomly initialised base (batches, loss, phases);
- ``recipe``: the CLaRa stages 1, J, 2 (R and 3 optional) through ``clara_plugins.training``, the check, the save;
- ``build``: all of it in order.

Python use (needs the ``train`` extra; not imported by ``import clara_plugins``)::

    from clara_plugins.tiny_build import BuildConfig, build

    result = build(BuildConfig(data="pretrain_data.jsonl", out="tiny", assets_dir="assets", work_dir="runs/tiny"))
"""

from __future__ import annotations

from clara_plugins.tiny_build.build import SIZE_BUDGET_MB, BuildResult, build
from clara_plugins.tiny_build.config import BuildConfig

__all__ = ["SIZE_BUDGET_MB", "BuildConfig", "BuildResult", "build"]
