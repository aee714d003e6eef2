"""Early Stopping Approximation: all subsets trained for the first 20% of the schedule only; the
selection runs on their validation losses at that point (the paper's Sec. 3.2).

  python -m tg_jax.main --config=experiments/esa.py
  python -m tg_jax.main --config=experiments/esa.py:full
"""

import ml_collections

from tg_jax.training import config as config_lib


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  config = config_lib.base_config(arg)
  config.networks.subsets = "all"
  # The learning-rate schedule is the full run's; training stops at the ESA point (esa_fraction).
  config.stop_fraction = config.esa_fraction
  config.selection.predict = "esa"
  return config
