"""All 2^k - 1 task subsets plus half-size singles: the paper's optimal setting (no prediction).

  python -m tg_jax.main --config=experiments/all_subsets.py        # 36 networks on 2 CPU cores
  python -m tg_jax.main --config=experiments/all_subsets.py:full   # GPUs
"""

import os

import ml_collections

from tg_jax.training import config as config_lib

_HERE = os.path.dirname(os.path.abspath(__file__))


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  if variant not in ("", "cpu", "full"):
    raise ValueError(f"unknown variant {variant!r} of experiments/all_subsets.py; use '' (CPU) or 'full'")
  pairs = config_lib.load_experiment(_HERE, "pairs")
  config = pairs.full_config() if variant == "full" else pairs.cpu_config()
  config.networks.subsets = "all"
  config.networks.half_size_singles = True
  config.selection.predict = "none"
  return config
