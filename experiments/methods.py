"""Multi-task training methods beside the paper's equal weights, and TAG's affinities.

The network of all tasks is trained five ways: equal task weights (the paper's), MGDA-UB, learned
uncertainty weights, PCGrad, and soft parameter sharing (one network per task, encoders tied by an
L2 penalty); with the single-task networks as the selector's candidates. During the all-task
network's training, TAG's lookahead affinities are measured.

  python -m tg_jax.main --config=experiments/methods.py          # 2-core CPU, minutes
  python -m tg_jax.main --config=experiments/methods.py:full     # GPUs, paper-scale network

Results: results/val.csv and test.csv (equal-weight networks, for the selector), results/methods.json
(the method networks' losses), results/tag.json (the affinities).
"""

import ml_collections

from tg_jax.training import config as config_lib
from tg_jax.training import networks

METHODS = ("mgda", "uncertainty", "pcgrad", networks.SOFT_SHARING)


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  variant = config_lib.parse_variant(arg)
  config = config_lib.base_config(variant)
  config.networks.subsets = "singles"
  config.networks.half_size_singles = False
  all_tasks = "+".join(config.tasks)
  config.networks.extra = (all_tasks,) + tuple(f"{all_tasks}:{method}" for method in METHODS)
  config.tag.enabled = True
  if variant == config_lib.CPU:
    config.tag.every_steps = 5  # the CPU run has 125 steps
  config.tag.network = all_tasks
  config.selection.predict = "none"
  return config
