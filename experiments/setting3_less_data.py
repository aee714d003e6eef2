"""The paper's setting 3: setting 1 (five tasks, the standard network) trained on less data.

  python -m tg_jax.main --config=experiments/setting3_less_data.py          # 2-core CPU
  python -m tg_jax.main --config=experiments/setting3_less_data.py:full     # GPUs

Every task subset and half-size singles (Optimal, ESA and HOA from one run), two seeds, on a fifth
of the training scenes (validation and test sets unchanged). An "epoch" is a five times larger
share of the smaller set, so the networks take as many steps and validate as often as in
setting 1: only the amount of data differs (less data favours sharing, Caruana's point).
"""

import ml_collections

from tg_jax.training import config as config_lib

DATA_FRACTION = 0.2


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  config = config_lib.base_config(arg)
  config.networks.subsets = "all"
  config.networks.seeds = 2
  config.selection.predict = "none"
  config.data.num_train_scenes = round(DATA_FRACTION * config.data.num_train_scenes)
  config.epoch_fraction = min(1.0, config.epoch_fraction / DATA_FRACTION)
  return config
