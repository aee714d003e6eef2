"""Early Stopping Approximation: all subsets trained for the first 20% of the schedule only; the
selection runs on their validation losses at that point (the paper's Sec. 3.2).

  python -m tg_jax.main --config=experiments/esa.py
  python -m tg_jax.main --config=experiments/esa.py:full
"""

import importlib.util
import os

import ml_collections


def _all_subsets():
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "all_subsets.py")
  spec = importlib.util.spec_from_file_location("experiments_all_subsets", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  config = _all_subsets().get_config(variant)
  config.esa_fraction = 0.2
  config.stop_fraction = 0.2  # the learning-rate schedule is the full run's; training stops early
  config.selection.predict = "esa"
  return config
