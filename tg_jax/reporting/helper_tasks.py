"""Helper tasks (``config.selection.helper_tasks``): what training with a helper does for each served task.

Per served task with a full-size (1 SNT) single-task network: 1 - its test loss in the full-size
network it shares with each helper (``<task>+<helper>``) / its loss in its single-task network, and
the same for its best network with any helper (chosen on validation: the one a selection would serve
it by). With seed replicas, 95% Student-t intervals over the per-seed gains, as Table 1's. And which
selections chose a network with a helper, at which budgets: the help a helper gives is worth its
cost only if the selector takes it.

numpy only.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Optional

import numpy as np

from tg_jax.selection import study, tables, uncertainty
from tg_jax.selection.tables import ResultsTable

FULL_COST = 1.0


@dataclasses.dataclass(frozen=True)
class HelperGains:
  """Each served task's gains from training with a helper (positive: lower test loss).

  Attributes:
    tasks: the served tasks with a full-size single-task network and a full-size network with a helper.
    helpers: the helper tasks, in the tables' order.
    single_loss: ``[tasks]`` test loss of each task's full-size single-task network.
    pair_gain: ``[tasks, helpers]`` 1 - test loss in ``<task>+<helper>`` / ``single_loss``; NaN where
      that pair was not trained.
    best: per task, the label of its full-size network with a helper lowest on validation.
    best_gain: ``[tasks]`` the same gain for ``best``.
    pair_intervals, best_intervals: ``(low, high)`` 95% intervals over seeds; None with one replica.
    replicates: how many seed replicates the intervals are over (1: no intervals).
  """

  tasks: tuple[str, ...]
  helpers: tuple[str, ...]
  single_loss: np.ndarray
  pair_gain: np.ndarray
  best: tuple[str, ...]
  best_gain: np.ndarray
  pair_intervals: Optional[tuple[np.ndarray, np.ndarray]] = None
  best_intervals: Optional[tuple[np.ndarray, np.ndarray]] = None
  replicates: int = 1

  def to_json(self) -> dict:
    intervals = lambda pair: None if pair is None else [pair[0].tolist(), pair[1].tolist()]
    return {"tasks": list(self.tasks), "helpers": list(self.helpers), "single_loss": self.single_loss.tolist(),
            "pair_gain": self.pair_gain.tolist(), "best": list(self.best), "best_gain": self.best_gain.tolist(),
            "pair_intervals": intervals(self.pair_intervals), "best_intervals": intervals(self.best_intervals),
            "replicates": self.replicates}


def _full_size(table: ResultsTable, row: int) -> bool:
  return tables.has_size(table.costs[row], FULL_COST)


def gains(val: ResultsTable, test: ResultsTable, test_replicas: Optional[tables.Replicas] = None
          ) -> Optional[HelperGains]:
  """The gains of ``HelperGains`` from the study's tables (``ResultsTable.with_helpers`` applied);
  None when no served task has both a full-size single-task network and one with a helper.

  ``test_replicas``: every seed replica of ``test``'s networks, for the intervals.
  """
  helpers = tuple(test.helper_tasks)
  test = test.aligned_to(val)
  singles, best, pairs, served = [], [], [], []
  for j, task in enumerate(val.task_names):
    single = [r for r in range(val.num_networks) if val.network_tasks[r] == (task,) and _full_size(val, r)]
    helped = [r for r in val.helped_rows() if np.isfinite(val.losses[r, j]) and _full_size(val, r)]
    if not single or not helped:
      continue
    served.append(j)
    singles.append(single[0])
    best.append(min(helped, key=lambda r: (val.losses[r, j], r)))
    pairs.append([next((r for r in helped if set(val.network_tasks[r]) == {task, helper}), None)
                  for helper in helpers])
  if not served:
    return None
  keys = [val.network_key(r) for r in singles + best]
  pair_keys = [[None if r is None else val.network_key(r) for r in row] for row in pairs]

  def statistic(table: ResultsTable) -> np.ndarray:
    """``[tasks, helpers + 1]``: each pair's gain, then the best network's, on ``table``'s losses."""
    row_of = {table.network_key(r): r for r in range(table.num_networks)}
    values = np.full((len(served), len(helpers) + 1), np.nan)
    for i, j in enumerate(served):
      single = table.losses[row_of[keys[i]], j]
      for h, key in enumerate(pair_keys[i]):
        if key is not None:
          values[i, h] = 1 - table.losses[row_of[key], j] / single
      values[i, -1] = 1 - table.losses[row_of[keys[len(served) + i]], j] / single
    return values

  means = statistic(test)
  intervals, replicates = None, 1
  if test_replicas is not None:
    per_seed = uncertainty.replicate_values(test_replicas, statistic)
    intervals, replicates = uncertainty.t_intervals(per_seed), per_seed.shape[0]
  return HelperGains(
      tasks=tuple(val.task_names[j] for j in served), helpers=helpers,
      single_loss=np.array([test.losses[r, j] for r, j in zip(singles, served)]),
      pair_gain=means[:, :-1], best=tuple(val.network_label(r) for r in best), best_gain=means[:, -1],
      pair_intervals=None if intervals is None else (intervals[0][:, :-1], intervals[1][:, :-1]),
      best_intervals=None if intervals is None else (intervals[0][:, -1], intervals[1][:, -1]),
      replicates=replicates if intervals is not None else 1)


def chosen_with_helpers(runs: Mapping[str, study.Selection], helpers: tuple[str, ...]
                        ) -> dict[str, list[tuple[float, list[str]]]]:
  """Per selecting method, ``(budget, ["<network> (serves <tasks>)", ...])`` for each budget at which
  it chose networks trained with a helper; methods that chose none are left out."""
  chosen = {}
  for method, run in runs.items():
    entries = []
    for solution in run.solutions:
      labels = [f"{network.label} (serves {', '.join(solution.served_by(i))})"
                for i, network in enumerate(solution.networks) if set(network.tasks) & set(helpers)]
      if labels:
        entries.append((solution.budget, labels))
    if entries:
      chosen[method] = entries
  return chosen
