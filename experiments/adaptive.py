"""Adaptive training: the single-task networks, then rounds that screen (early losses) and train to
convergence only the groups that can still change the selection, within a budget of trainings
(tg_jax.selection.adaptive; the loop runs in finish, its trainings in WORKDIR/adaptive/).

  python -m tg_jax.main --config=experiments/adaptive.py        # 5 tasks on 2 CPU cores
  python -m tg_jax.main --config=experiments/adaptive.py:full   # GPUs
"""

import ml_collections

from tg_jax.training import config as config_lib


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  config = config_lib.base_config(arg)
  config.networks.subsets = "singles"
  config.networks.half_size_singles = False  # candidates of the loop, screened where they could pay off
  config.selection.predict = "none"
  # 20% of the 36 trainings of every subset and half-size single (experiments/all_subsets.py).
  config.selection.adaptive.trainings = 0.2 * (2 ** len(config.tasks) - 1 + len(config.tasks))
  return config
