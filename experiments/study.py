"""The paper's whole study: every task subset, the baselines' networks, and the report.

  python -m tg_jax.main --config=experiments/study.py --workdir=/tmp/study        # 2-core CPU, hours (171 networks)
  python -m tg_jax.main --config=experiments/study.py:full --workdir=/scratch/study   # GPUs, paper scale

Networks (for 5 tasks, 57 in all):
- all 2^k - 1 task subsets at full size and one half-size network per task: the candidates of the
  selector (Optimal), the pairs HOA needs, and the early (ESA) table recorded at
  ``config.esa_fraction`` of the same runs;
- independent single-task networks at the paper's other sizes (1/5, 3/10, 2/5 and 4/5 of a standard
  network; 1/2 and 1 are above): the independent baseline at every budget. They are not selection
  candidates (the report sets single-task networks of these sizes aside);
- the all-task network trained with MGDA-UB (the paper's "Sener et al." row; ``results/methods.json``).

TAG's lookahead affinities are measured while the all-task network trains (``results/tag.json``),
the chosen networks that share a task are ensembled on test (``ensemble.json``), and the transfer
phase (``WORKDIR/transfer``: every task's decoder on every other task's frozen single-task encoder,
per seed) gives the transfer affinities of Table 3 and Figure 3.

The report (``WORKDIR/report.md``) compares Optimal, ESA, HOA and TAG with the all-task network,
independent networks, Random, Pessimal and MGDA-UB at every budget from 1 to k in steps of 0.5.
"""

import ml_collections

from tg_jax.training import config as config_lib

# Sizes (SNT) of the independent single-task baseline besides the half- and full-size networks the
# subsets already give: the paper's 1/5, 3/10, 2/5 and 4/5.
INDEPENDENT_SIZES = (0.2, 0.3, 0.4, 0.8)


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  config = config_lib.base_config(arg)
  config.networks.subsets = "all"
  # Three seeds: Student-t intervals over two seeds (one degree of freedom) are too wide to resolve
  # the few-percent effects of Table 1.
  config.networks.seeds = 3
  config.networks.extra = tuple(f"{task}@{size:g}" for size in INDEPENDENT_SIZES for task in config.tasks)
  config.networks.extra += (f"{'+'.join(config.tasks)}:mgda",)
  config.tag.enabled = True  # on the all-task network of equal weights (config.tag.network "")
  config.evaluation.ensemble = True
  config.transfer.enabled = True  # Table 3 and Figure 3: decoders on frozen single-task encoders
  # Every method of the report runs from the same tables; selection.json holds the optimal one.
  config.selection.predict = "none"
  return config
