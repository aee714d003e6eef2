"""Helper tasks (Caruana 1997, the paper's section 2): tasks trained only to help the others.

  python -m tg_jax.main --config=experiments/helper_tasks.py          # 2-core CPU, embedded dataset
  python -m tg_jax.main --config=experiments/helper_tasks.py:full     # GPUs, paper-scale network

The paper's five tasks are served; 3D occlusion edges and principal curvature, which the rendered
scenes also label, are helpers (``config.selection.helper_tasks``): trained as extra outputs of a
network, with equal weights like any task, measured in the tables, never served. Networks: what HOA
needs for the served tasks (5 singles, 10 pairs, 5 half-size singles) and every served task paired
with each helper (``segment_semantic+edges3d``, ...: 10), two seeds: 60 networks. A network with a
helper is a candidate for the served task it has; the report's "Helper tasks" section sets each
served task's single-task network against its pairs with a helper.
"""

import itertools

import ml_collections

from tg_jax.training import config as config_lib

HELPER_TASKS = ("edges3d", "curvature")


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  config = config_lib.base_config(arg)
  served = tuple(config.tasks)
  config.tasks = served + HELPER_TASKS
  config.selection.helper_tasks = HELPER_TASKS
  # The preset's switches would also train the helpers alone and with each other: list instead.
  config.networks.subsets = ""
  config.networks.half_size_singles = False
  config.networks.extra = tuple(
      list(served)
      + ["+".join(pair) for pair in itertools.combinations(served, 2)]
      + [f"{task}@{config.networks.half_size:g}" for task in served]
      + [f"{task}+{helper}" for task in served for helper in HELPER_TASKS])
  config.networks.seeds = 2
  return config
