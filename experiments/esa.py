"""Early Stopping Approximation: all subsets trained for the first 20% of the schedule only; the
selection runs on their validation losses at that point (the paper's Sec. 3.2).

  python -m tg_jax.main --config=experiments/esa.py
  python -m tg_jax.main --config=experiments/esa.py:full
"""

import os

import ml_collections

from tg_jax.training import config as config_lib

_HERE = os.path.dirname(os.path.abspath(__file__))


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  config = config_lib.load_experiment(_HERE, "all_subsets").get_config(variant)
  config.esa_fraction = 0.2
  config.stop_fraction = 0.2  # the learning-rate schedule is the full run's; training stops early
  config.selection.predict = "esa"
  return config
