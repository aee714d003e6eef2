"""Transfer affinity against multi-task affinity: the paper's Table 3 and Figure 3.

  python -m tg_jax.main --config=experiments/transfer.py          # 2-core CPU, embedded dataset
  python -m tg_jax.main --config=experiments/transfer.py:full     # GPUs, paper-scale network
  # with transfer affinities from elsewhere (e.g. Taskonomy's) in the report too:
  python -m tg_jax.main --config=experiments/transfer.py --config.transfer.affinity_csv=taskonomy.csv

The demo's networks (every single-task and pair network plus half-size singles, two seeds: Table 2's
multi-task affinity with intervals), then the transfer phase (``WORKDIR/transfer``): for every ordered
pair of tasks, the target's decoder trained on the frozen encoder of the source's single-task network,
seed for seed (20 networks per seed for five tasks). The report's Table 3 is their transfer affinity
and Figure 3 sets it against Table 2, with Pearson r and its p-value (the paper: r = -0.54, p = 0.13).
"""

import ml_collections

from tg_jax.training import config as config_lib


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  config = config_lib.base_config(arg)
  config.networks.seeds = 2
  config.transfer.enabled = True
  return config
