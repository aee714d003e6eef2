"""All single-task and pair networks plus half-size singles: what HOA needs (the paper's Sec. 3.2).

  python -m tg_jax.main --config=experiments/pairs.py          # 2-core CPU, embedded dataset
  python -m tg_jax.main --config=experiments/pairs.py:full     # GPUs, paper-scale network

The preset (``tg_jax.training.config.base_config``) with two seeds: 20 networks for five tasks (5
singles, 10 pairs, 5 half-size singles), each trained twice, so that every number of the report
has a 95% interval over seeds; groups of three or more predicted by HOA.

On 2 CPU cores (the preset's 300 steps of batch 8) it takes about 9 minutes from an empty cache.
"""

import ml_collections

from tg_jax.training import config as config_lib


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  config = config_lib.base_config(arg)
  config.networks.seeds = 2
  return config
