"""The Higher Order Approximation (paper section 3.3.2).

A task's loss in a group of three or more tasks is predicted as the mean of its losses in the pair
networks it forms with each other member of the group; a predicted group costs one full network.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Optional

import numpy as np

from tg_jax.selection.tables import ResultsTable, TableError, has_size

PAIR_COST = 1.0


def pair_losses(table: ResultsTable) -> np.ndarray:
  """``[tasks, tasks]``: entry (t, u) is task t's loss in the full-size pair network {t, u}."""
  table = table.without_helper_networks()
  num_tasks = table.num_tasks
  pair = np.full((num_tasks, num_tasks), np.nan)
  column = {name: i for i, name in enumerate(table.task_names)}
  for row, tasks in enumerate(table.network_tasks):
    if len(tasks) == 2 and has_size(table.costs[row], PAIR_COST):
      t, u = column[tasks[0]], column[tasks[1]]
      if not np.isnan(pair[t, u]):
        raise TableError(f"pair {tasks[0]}+{tasks[1]} appears twice in the table; keep one row per network")
      pair[t, u] = table.losses[row, t]
      pair[u, t] = table.losses[row, u]
  missing = [f"{table.task_names[t]}+{table.task_names[u]}"
             for t, u in itertools.combinations(range(num_tasks), 2) if np.isnan(pair[t, u])]
  if missing:
    raise TableError(f"the Higher Order Approximation needs every pair network at size {PAIR_COST:g}; "
                     f"missing: {', '.join(missing)} (train them, e.g. with experiments/pairs.py)")
  return pair


def predict_group(pair_losses: np.ndarray, group: tuple[int, ...]) -> np.ndarray:
  """``[tasks]`` predicted losses of a network trained on ``group`` (task indices); inf elsewhere."""
  prediction = np.full(pair_losses.shape[0], np.inf)
  members = np.asarray(group)
  for t in members:
    others = members[members != t]
    prediction[t] = pair_losses[t, others].mean()
  return prediction


def groups_of_order(num_tasks: int, min_order: int, max_order: int):
  for order in range(min_order, max_order + 1):
    yield from itertools.combinations(range(num_tasks), order)


# Predicted groups listed at most (16 tasks: 65,399 groups of 3+); checked before any is built.
MAX_PREDICTED_GROUPS = 70_000


def predicted_group_count(num_tasks: int, max_order: int) -> int:
  """How many groups of 3 to ``max_order`` tasks ``predict`` lists."""
  return sum(math.comb(num_tasks, order) for order in range(3, max_order + 1))


def check_size(num_tasks: int, max_order: Optional[int] = None) -> None:
  """Raises, before anything is built, when HOA would list more than ``MAX_PREDICTED_GROUPS`` groups."""
  max_order = num_tasks if max_order is None else max_order
  count = predicted_group_count(num_tasks, max_order)
  if count > MAX_PREDICTED_GROUPS:
    fitting = max([order for order in range(2, num_tasks + 1)
                   if predicted_group_count(num_tasks, order) <= MAX_PREDICTED_GROUPS])
    raise ValueError(f"HOA over groups of up to {max_order} of {num_tasks} tasks lists {count:,} groups (at most "
                     f"{MAX_PREDICTED_GROUPS:,}); limit the group size to {fitting} (--max_group_size={fitting}) "
                     f"or select within a smaller set of tasks")


def predict(table: ResultsTable, max_order: Optional[int] = None) -> ResultsTable:
  """The table the selector sees under HOA.

  Networks of one or two tasks keep their measured losses; every group of three to ``max_order``
  tasks (default: all of them) becomes a predicted full-size network, replacing any measured network
  on the same group (that one would not have been trained yet). At most ``MAX_PREDICTED_GROUPS``.
  Networks trained with a helper task are left out: they are not groups of the served tasks.
  """
  table = table.without_helper_networks()
  num_tasks = table.num_tasks
  max_order = num_tasks if max_order is None else max_order
  if max_order < 2:
    raise ValueError(f"max_order must be >= 2, got {max_order}")
  check_size(num_tasks, max_order)
  pair = pair_losses(table)
  kept = [row for row, tasks in enumerate(table.network_tasks) if len(tasks) <= 2]
  groups = list(groups_of_order(num_tasks, 3, max_order))
  predicted_losses = np.array([predict_group(pair, g) for g in groups]).reshape(len(groups), num_tasks)
  predicted = ResultsTable(table.task_names,
                           tuple(tuple(table.task_names[t] for t in g) for g in groups),
                           np.full(len(groups), PAIR_COST), predicted_losses)
  return table.subset(kept).concat(predicted)


@dataclasses.dataclass(frozen=True)
class PredictionAccuracy:
  """How well HOA predicts the measured higher-order networks (paper: 5.2% and 1.4%).

  Attributes:
    max_ratio_error: mean over (network, task) of max(predicted/actual, actual/predicted) - 1.
    overestimate: mean over (network, task) of actual/predicted - 1: how much the measured loss
      exceeds the prediction (positive: HOA is optimistic about higher-order networks).
    count: how many (network, task) losses were compared.
  """

  max_ratio_error: float
  overestimate: float
  count: int


def accuracy(table: ResultsTable) -> Optional[PredictionAccuracy]:
  """Compares HOA's predictions with the table's measured full-size networks of 3+ tasks.

  Returns None when the table has no such networks.
  """
  table = table.without_helper_networks()
  pair = pair_losses(table)
  column = {name: i for i, name in enumerate(table.task_names)}
  predicted, actual = [], []
  for row, tasks in enumerate(table.network_tasks):
    if len(tasks) >= 3 and has_size(table.costs[row], PAIR_COST):
      group = tuple(sorted(column[t] for t in tasks))
      prediction = predict_group(pair, group)
      predicted.extend(prediction[list(group)])
      actual.extend(table.losses[row, list(group)])
  if not actual:
    return None
  predicted, actual = np.array(predicted), np.array(actual)
  ratio = predicted / actual
  return PredictionAccuracy(max_ratio_error=float(np.mean(np.maximum(ratio, 1 / ratio) - 1)),
                            overestimate=float(np.mean(1 / ratio - 1)), count=len(actual))
