"""All 2^k - 1 task subsets plus half-size singles: the paper's optimal setting (no prediction).

  python -m tg_jax.main --config=experiments/all_subsets.py        # 36 networks on 2 CPU cores
  python -m tg_jax.main --config=experiments/all_subsets.py:full   # GPUs
"""

import ml_collections

from tg_jax.training import config as config_lib


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  config = config_lib.base_config(arg)
  config.networks.subsets = "all"
  config.selection.predict = "none"
  return config
