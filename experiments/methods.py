"""Can a balancing method or an architecture stand in for choosing groups?

Every group of tasks is trained with the paper's equal weights at 1 SNT (plus half-size singles), so
the selector finds the optimal grouping at every budget; beside them the all-task network is trained
with every balancing method of ``tg_jax.balancing`` (``:equal`` is the paper's step, already the
all-task network of the groups), with soft parameter sharing (one network per task, encoders tied by
an L2 penalty; it costs one SNT per task) and as each architecture family on the same encoder (MTAN,
cross-stitch, MMoE, sized to 1 SNT). Every network is trained with 3 seeds, so each method's total
test loss, its difference from equal weighting and the optimal grouping's at the same cost carry 95%
intervals over seeds (the report's "Methods against grouping" section and figure).

  python -m tg_jax.main --config=experiments/methods.py          # 2-core CPU, hours
  python -m tg_jax.main --config=experiments/methods.py:full     # GPUs, paper-scale network

Results: results/val.csv and test.csv (the equal-weight groups, for the selector), results/methods.json
(the method networks' losses per seed).
"""

import ml_collections

from tg_jax import balancing
from tg_jax import records
from tg_jax.training import config as config_lib

METHODS = tuple(m for m in balancing.names() if m != "equal") + (records.SOFT_SHARING,) + records.ARCHITECTURES


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  config = config_lib.base_config(config_lib.parse_variant(arg))
  config.networks.subsets = "all"
  all_tasks = "+".join(config.tasks)
  config.networks.extra = tuple(f"{all_tasks}:{method}" for method in METHODS)
  config.networks.seeds = 3
  config.selection.predict = "none"
  return config
