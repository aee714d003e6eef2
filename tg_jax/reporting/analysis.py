"""The study's numbers, from results tables alone (numpy only).

- ``pair_relative_performance``: the paper's Table 1, each task's gain from being trained with each
  other task, against its half-size single-task network (the pair network spends half of one
  standard network on each task);
- ``pair_affinity``: Table 2, the mean of the two directions;
- ``compare_methods``: Table 4 / Figure 4, total test loss per method per budget;
- ``esa_correlation``: how well early losses predict final ones.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

from tg_jax.selection import hoa, study, tables
from tg_jax.selection.tables import ResultsTable, TableError

HALF_COST = 0.5
FULL_COST = 1.0


def _single_task_losses(table: ResultsTable, size: float) -> np.ndarray:
  """``[tasks]``: each task's loss in its single-task network of ``size``; NaN where there is none."""
  losses = np.full(table.num_tasks, np.nan)
  for row, tasks in enumerate(table.network_tasks):
    if len(tasks) == 1 and tables.has_size(table.costs[row], size):
      j = table.task_names.index(tasks[0])
      losses[j] = table.losses[row, j]
  return losses


def pair_relative_performance(table: ResultsTable) -> np.ndarray:
  """``[tasks, tasks]``: entry (t, u) is 1 - loss of t in pair {t, u} / loss of t's half-size network.

  Positive: training with u helps t. The diagonal is NaN.
  """
  half = _single_task_losses(table, HALF_COST)
  missing = [t for t, loss in zip(table.task_names, half) if np.isnan(loss)]
  if missing:
    raise TableError(f"the help/hurt table needs a half-size ({HALF_COST:g} SNT) single-task network for every "
                     f"task; missing: {', '.join(missing)} (experiments/pairs.py trains them)")
  pair = hoa._pair_losses(table)
  relative = 1.0 - pair / half[:, None]
  np.fill_diagonal(relative, np.nan)
  return relative


def pair_affinity(relative: np.ndarray) -> np.ndarray:
  """Symmetric pairwise affinity: the mean of the two directions of ``pair_relative_performance``."""
  return (relative + relative.T) / 2


@dataclasses.dataclass(frozen=True)
class EsaCorrelation:
  """Pearson r between early (ESA) and final validation losses.

  ``pooled``: over every (network, task) loss, each divided by its task's full single-task network
  loss of the same table so that tasks on different scales are comparable; ``per_task``: raw losses,
  within each task.
  """

  pooled: float
  per_task: dict
  count: int


def esa_correlation(final: ResultsTable, early: ResultsTable) -> EsaCorrelation:
  early = early.aligned_to(final, what="ESA table")
  solved = final.solves
  final_single = _single_task_losses(final, FULL_COST)
  early_single = _single_task_losses(early, FULL_COST)
  final_relative = final.losses / final_single
  early_relative = early.losses / early_single
  usable = solved & np.isfinite(final_relative) & np.isfinite(early_relative)
  pooled = float(np.corrcoef(final_relative[usable], early_relative[usable])[0, 1]) if usable.sum() > 2 else np.nan
  per_task = {}
  for j, task in enumerate(final.task_names):
    rows = solved[:, j]
    if rows.sum() > 2:
      per_task[task] = float(np.corrcoef(final.losses[rows, j], early.losses[rows, j])[0, 1])
  return EsaCorrelation(pooled=pooled, per_task=per_task, count=int(usable.sum()))


def compare_methods(val: ResultsTable, test: ResultsTable, esa: Optional[ResultsTable] = None,
                    budgets: Optional[Sequence[float]] = None, random_samples: int = 1000,
                    seed: int = 0) -> dict:
  """Selections by every method the tables allow, each scored on test, plus the baselines.

  Returns ``{"budgets", "methods": {name: [test loss per budget]}, "runs": {name: study result}}``.
  Optimal needs every group of tasks measured; HOA needs the pairs; ESA needs the early table.
  """
  budgets = study.default_budgets(val) if budgets is None else list(budgets)
  runs = {}
  full_groups = {frozenset(t) for t, c in zip(val.network_tasks, val.costs) if tables.has_size(c, FULL_COST)}
  has_all_groups = len(full_groups) >= 2 ** val.num_tasks - 1
  if has_all_groups:
    runs["optimal"] = study.run(val, test, budgets=budgets, random_samples=random_samples, seed=seed)
  try:
    runs["hoa"] = study.run(val, test, predict="hoa", budgets=budgets, random_samples=random_samples, seed=seed)
  except TableError:
    pass
  if esa is not None:
    runs["esa"] = study.run(esa, test, converged=val, budgets=budgets, random_samples=random_samples, seed=seed)
  if not runs:
    runs["selected"] = study.run(val, test, budgets=budgets, random_samples=random_samples, seed=seed)
  methods = {name: [s["test_loss"] for s in result["solutions"]] for name, result in runs.items()}
  baselines = next(iter(runs.values()))["baselines"]
  for name, entries in baselines.items():
    methods[name] = [None if e is None else e["test_loss"] for e in entries]
  return {"budgets": budgets, "methods": methods, "runs": runs}
