"""Random but plausible results tables, for benchmarks and tests of the selector.

Each task has a base loss; a network trained on several tasks changes each task's loss by the mean of
random pairwise help/hurt factors (so pairs behave like the paper's Table 1); half-size single-task
networks are a little worse than full ones.
"""

from __future__ import annotations

import itertools
from typing import Optional

import numpy as np

from tg_jax.selection.tables import ResultsTable


def random_table(num_tasks: int, seed: int, max_order: Optional[int] = None, half_size: bool = True,
                 pair_spread: float = 0.1, noise: float = 0.02) -> ResultsTable:
  """A table with every group of 1..``max_order`` tasks at cost 1, plus half-size singles at 0.5."""
  rng = np.random.default_rng(seed)
  names = tuple(f"task{i}" for i in range(num_tasks))
  base = rng.uniform(0.05, 0.5, num_tasks)
  # effect[t, u]: relative change of t's loss when trained with u (negative helps).
  effect = rng.normal(0.0, pair_spread, (num_tasks, num_tasks))
  max_order = num_tasks if max_order is None else max_order
  rows = []
  if half_size:
    for t in range(num_tasks):
      rows.append(((names[t],), 0.5, {names[t]: base[t] * rng.uniform(1.02, 1.12)}))
  for order in range(1, max_order + 1):
    for group in itertools.combinations(range(num_tasks), order):
      losses = {}
      for t in group:
        others = [u for u in group if u != t]
        change = np.mean(effect[t, others]) if others else 0.0
        losses[names[t]] = base[t] * (1 + change) * (1 + rng.normal(0, noise))
      rows.append((tuple(names[t] for t in group), 1.0, losses))
  return ResultsTable.from_rows(names, rows)


def random_mixed_cost_table(num_tasks: int, num_networks: int, seed: int) -> ResultsTable:
  """Random networks on random task subsets with costs from {0.2, 0.3, 0.5, 1, 1.5}, every task solved."""
  rng = np.random.default_rng(seed)
  names = tuple(f"t{i}" for i in range(num_tasks))
  rows = []
  for network in range(num_networks):
    if network < num_tasks:
      group = (network,)
    else:
      size = int(rng.integers(1, num_tasks + 1))
      group = tuple(sorted(rng.choice(num_tasks, size, replace=False)))
    cost = float(rng.choice([0.2, 0.3, 0.5, 1.0, 1.5]))
    rows.append((tuple(names[t] for t in group), cost, {names[t]: float(rng.uniform(0.1, 1.0)) for t in group}))
  return ResultsTable.from_rows(names, rows)
