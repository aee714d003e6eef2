"""Task groupings from averaged inter-task affinities (TAG; Fifty et al., NeurIPS 2021), numpy only.

TAG scores a candidate group G for each member t by the mean affinity onto t from the other
members, ``score_G(t) = mean_{u in G, u != t} Z(u -> t)``, and picks the set of at most ``k`` groups,
covering every task, that maximises ``mean_t max_{G chosen, t in G} score_G(t)``: each task counts
with the chosen group it gains most in (the network selection notebook of google-research/tag).

That is the paper's selection problem with ``-score`` as the loss: the selector minimises
``sum_t min_{chosen networks} loss(t)``, each network costs one unit, and the budget is the number of
networks. So ``table`` writes one row per candidate group (its tasks' losses ``-score_G(t)``, cost
``group_cost``) and the exact selector (``selector.select_many``) does the rest: the sum and the mean
over tasks differ by the constant factor ``tasks``.

A task alone gets loss 0: training it by itself neither gains nor loses affinity, so a task that
every group would hurt (negative affinities onto it) is better served alone, as in the paper's
setting where single-task networks are candidates. TAG's notebook instead scores singletons at
-1e6, i.e. never picks them; ``include_singletons=False`` reproduces that.
"""

from __future__ import annotations

import itertools
from typing import Optional, Sequence

import numpy as np

from tg_jax.selection import selector
from tg_jax.selection.tables import ResultsTable, TableError

GROUP_COST = 1.0


def group_scores(affinity: np.ndarray, group: Sequence[int]) -> np.ndarray:
  """``[tasks]`` TAG score of each member of ``group`` (task indices); nan for non-members.

  ``affinity`` is ``[source, target]``: ``affinity[u, t] = Z(u -> t)``.
  """
  scores = np.full(affinity.shape[0], np.nan)
  members = np.asarray(group)
  for t in members:
    others = members[members != t]
    scores[t] = affinity[others, t].mean() if others.size else 0.0
  return scores


def _validated_affinity(task_names: Sequence[str], affinity) -> np.ndarray:
  affinity = np.asarray(affinity, dtype=np.float64)
  num_tasks = len(task_names)
  if affinity.shape != (num_tasks, num_tasks):
    raise TableError(f"the affinity matrix must be [tasks, tasks] = [{num_tasks}, {num_tasks}] for tasks "
                     f"{list(task_names)}; got shape {affinity.shape}")
  if not np.all(np.isfinite(affinity)):
    raise TableError("the affinity matrix has non-finite entries; a diverged run's affinities cannot "
                     "be used (retrain with a smaller learning rate)")
  return affinity


def table(task_names: Sequence[str], affinity, max_group_size: Optional[int] = None,
          include_singletons: bool = True, group_cost: float = GROUP_COST,
          singleton_cost: float = GROUP_COST) -> ResultsTable:
  """A results table of every candidate group, scored by TAG, for the selector to minimise.

  Args:
    task_names: the tasks, in the affinity matrix's order.
    affinity: ``[source, target]`` averaged lookahead affinities (``tg_jax.affinity.tag``).
    max_group_size: largest group considered (default: all tasks).
    include_singletons: whether single tasks are candidates (loss 0); see the module docstring.
    group_cost, singleton_cost: inference cost of a group's network / a single task's network.

  Returns:
    One row per group of 2..``max_group_size`` tasks (and per single task): its members' losses
    ``-score_G(t)``; lower is better.
  """
  task_names = tuple(task_names)
  affinity = _validated_affinity(task_names, affinity)
  num_tasks = len(task_names)
  max_group_size = num_tasks if max_group_size is None else max_group_size
  if not 2 <= max_group_size <= num_tasks and num_tasks > 1:
    raise ValueError(f"max_group_size must be between 2 and the number of tasks ({num_tasks}), got "
                     f"{max_group_size}")
  rows = []
  if include_singletons or num_tasks == 1:
    rows += [((name,), singleton_cost, {name: 0.0}) for name in task_names]
  for size in range(2, max_group_size + 1):
    for group in itertools.combinations(range(num_tasks), size):
      scores = group_scores(affinity, group)
      rows.append((tuple(task_names[t] for t in group), group_cost,
                   {task_names[t]: float(-scores[t]) for t in group}))
  return ResultsTable.from_rows(task_names, rows)


def select_many(task_names: Sequence[str], affinity, budgets: Sequence[float],
                **table_options) -> tuple[ResultsTable, list[selector.Solution]]:
  """TAG's grouping for each budget (in networks of ``group_cost``), by the exact selector.

  Returns the candidate table and one ``selector.Solution`` per budget; ``groups(table, solution)``
  names the chosen groups, and ``-solution.objective / tasks`` is TAG's predicted mean score.
  """
  candidates = table(task_names, affinity, **table_options)
  return candidates, selector.select_many(candidates, budgets)


def groups(candidates: ResultsTable, solution: selector.Solution) -> tuple[tuple[str, ...], ...]:
  """The task groups (networks to train) a solution chose, in table order."""
  return tuple(candidates.network_tasks[row] for row in solution.networks)
