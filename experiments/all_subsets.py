"""All 2^k - 1 task subsets plus half-size singles: the paper's optimal setting (no prediction).

  python -m tg_jax.main --config=experiments/all_subsets.py        # 36 networks on 2 CPU cores
  python -m tg_jax.main --config=experiments/all_subsets.py:full   # GPUs
"""

import importlib.util
import os

import ml_collections


def _pairs():
  # Loaded by path: config files are run by ml_collections from any directory, not imported.
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pairs.py")
  spec = importlib.util.spec_from_file_location("experiments_pairs", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  if variant not in ("", "cpu", "full"):
    raise ValueError(f"unknown variant {variant!r} of experiments/all_subsets.py; use '' (CPU) or 'full'")
  pairs = _pairs()
  config = pairs.full_config() if variant == "full" else pairs.cpu_config()
  config.networks.subsets = "all"
  config.networks.half_size_singles = True
  config.selection.predict = "none"
  return config
