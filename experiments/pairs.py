"""All single-task and pair networks plus half-size singles: what HOA needs (the paper's Sec. 3.2).

  python -m tg_jax.main --config=experiments/pairs.py          # 2-core CPU, embedded dataset
  python -m tg_jax.main --config=experiments/pairs.py:full     # GPUs, paper-scale network

This is the preset itself (``tg_jax.training.config.base_config``): 20 networks for five tasks
(5 singles, 10 pairs, 5 half-size singles), groups of three or more predicted by HOA.
"""

import ml_collections

from tg_jax.training import config as config_lib


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  return config_lib.base_config(arg)
