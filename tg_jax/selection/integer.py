"""Selection as an integer programme, solved by HiGHS through ``scipy.optimize.milp`` (numpy/scipy only).

The paper's problem (choose networks within a budget; each task is served by the best chosen network)
is the mixed-integer programme

  minimise   sum_{i,t} score[i, t] * serve[i, t]
  subject to sum_i serve[i, t] = 1            for every task t   (each task served once)
             serve[i, t] <= chosen[i]         for every pair     (only by a chosen network)
             sum_i cost[i] * chosen[i] <= budget
             chosen binary, 0 <= serve <= 1

(``serve`` need not be integral: with ``chosen`` fixed, the best assignment is a vertex). Its linear
relaxation is what column generation (``tg_jax.selection.columns``) prices against. HiGHS reports the
best solution it found and a proven lower bound; their relative difference is the *gap* every answer
states (0 when the solver proved optimality within ``EXACT_GAP``).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np
from scipy import optimize, sparse

# The relative gap below which HiGHS's answer counts as proven optimal (its tolerances are ~1e-9).
EXACT_GAP = 1e-9
# Strict "does not fit" in the Pessimal baseline's maximality constraints, in SNT: far above HiGHS's
# feasibility tolerance (1e-7), far below any real difference between costs.
_STRICT_MARGIN = 1e-6


@dataclasses.dataclass(frozen=True)
class Programme:
  """The selection programme's matrices for one table (``[networks, tasks]`` scores, inf: cannot serve).

  Variables: ``chosen`` (one per network) then ``serve`` (one per finite score, in ``pairs`` order).
  ``capacities`` (optional, ``[networks]``): a network serves at most this many tasks per unit chosen;
  ``copies`` (optional, ``[networks]``): the most a network may be chosen in the linear relaxation
  (default 1). Both serve the relaxed columns of ``tg_jax.selection.columns``, each standing for every
  group of one size at once.
  """

  scores: np.ndarray
  costs: np.ndarray
  pair_network: np.ndarray
  pair_task: np.ndarray
  capacities: Optional[np.ndarray] = None
  copies: Optional[np.ndarray] = None

  @classmethod
  def build(cls, scores: np.ndarray, costs: np.ndarray, capacities: Optional[np.ndarray] = None,
            copies: Optional[np.ndarray] = None) -> "Programme":
    networks, tasks = np.nonzero(np.isfinite(scores))
    return cls(np.asarray(scores, dtype=np.float64), np.asarray(costs, dtype=np.float64), networks, tasks,
               capacities, copies)

  @property
  def num_networks(self) -> int:
    return self.scores.shape[0]

  def _matrices(self):
    n, m, num_tasks = self.num_networks, self.pair_task.size, self.scores.shape[1]
    cover = sparse.csr_matrix((np.ones(m), (self.pair_task, n + np.arange(m))), shape=(num_tasks, n + m))
    link = sparse.csr_matrix((np.concatenate([np.ones(m), -np.ones(m)]),
                              (np.tile(np.arange(m), 2), np.concatenate([n + np.arange(m), self.pair_network]))),
                             shape=(m, n + m))
    budget = sparse.csr_matrix(np.concatenate([self.costs, np.zeros(m)])[None, :])
    objective = np.concatenate([np.zeros(n), self.scores[self.pair_network, self.pair_task]])
    return objective, cover, link, budget

  def _capacity_rows(self) -> sparse.csr_matrix:
    """``sum_t serve[i, t] - capacity[i] * chosen[i] <= 0`` for every network with a finite capacity."""
    n, m = self.num_networks, self.pair_task.size
    limited = np.flatnonzero(np.isfinite(self.capacities)) if self.capacities is not None else np.zeros(0, int)
    row_of = np.full(n, -1)
    row_of[limited] = np.arange(limited.size)
    pairs = np.flatnonzero(row_of[self.pair_network] >= 0)
    rows = np.concatenate([row_of[self.pair_network[pairs]], np.arange(limited.size)])
    columns = np.concatenate([n + pairs, limited])
    values = np.concatenate([np.ones(pairs.size), -self.capacities[limited] if limited.size else np.zeros(0)])
    return sparse.csr_matrix((values, (rows, columns)), shape=(limited.size, n + m))

  def relaxation(self, budget: float):
    """The linear relaxation: ``(value, task duals [tasks], budget dual >= 0, chosen [networks])``, or
    None when even fractionally no choice within ``budget`` serves every task."""
    objective, cover, link, budget_row = self._matrices()
    capacity = self._capacity_rows()
    upper = np.ones(objective.size)
    if self.copies is not None:
      upper[:self.num_networks] = self.copies
    result = optimize.linprog(objective, A_ub=sparse.vstack([link, capacity, budget_row]).tocsr(),
                              b_ub=np.concatenate([np.zeros(link.shape[0] + capacity.shape[0]), [budget]]),
                              A_eq=cover, b_eq=np.ones(cover.shape[0]),
                              bounds=np.stack([np.zeros(objective.size), upper], axis=1), method="highs")
    if result.status != 0:
      return None
    return (float(result.fun), np.asarray(result.eqlin.marginals), float(-result.ineqlin.marginals[-1]),
            np.asarray(result.x[:self.num_networks]))

  def solve(self, budget: float, relative_gap: float = EXACT_GAP,
            time_limit: Optional[float] = None) -> Optional["IntegerAnswer"]:
    """The best set of networks HiGHS finds within ``time_limit`` seconds, or None if none is feasible."""
    objective, cover, link, budget_row = self._matrices()
    n, num_tasks = self.num_networks, self.scores.shape[1]
    matrix = sparse.vstack([cover, link, budget_row]).tocsr()
    lower = np.concatenate([np.ones(num_tasks), np.full(link.shape[0], -np.inf), [-np.inf]])
    upper = np.concatenate([np.ones(num_tasks), np.zeros(link.shape[0]), [budget]])
    options = {"mip_rel_gap": relative_gap}
    if time_limit is not None:
      options["time_limit"] = float(time_limit)
    result = optimize.milp(objective, integrality=np.concatenate([np.ones(n), np.zeros(objective.size - n)]),
                           bounds=optimize.Bounds(0, 1), constraints=optimize.LinearConstraint(matrix, lower, upper),
                           options=options)
    if result.x is None:
      if result.status == 1:  # time limit before any solution
        raise TimeoutError(f"the integer programme found no solution within {time_limit:g} s")
      return None
    chosen = tuple(int(i) for i in np.flatnonzero(result.x[:n] > 0.5))
    return IntegerAnswer(chosen, float(result.fun), float(result.mip_dual_bound))


@dataclasses.dataclass(frozen=True)
class IntegerAnswer:
  """HiGHS's answer: the chosen rows, their objective and the proven lower bound on the optimum."""

  networks: tuple[int, ...]
  objective: float
  bound: float


def relative_gap(objective: float, bound: float) -> float:
  """``(objective - bound) / |objective|``, 0 when they agree within ``EXACT_GAP``."""
  gap = (objective - bound) / max(abs(objective), 1e-12)
  return 0.0 if gap <= EXACT_GAP else float(gap)


def cheapest_cover(serves: np.ndarray, costs: np.ndarray) -> Optional[tuple[float, tuple[int, ...]]]:
  """The minimum-cost set of networks that serves every task (``serves``: ``[networks, tasks]`` bool),
  or None when no set does."""
  if not serves.any(axis=0).all():
    return None
  result = optimize.milp(np.asarray(costs, dtype=np.float64), integrality=np.ones(len(costs)),
                         bounds=optimize.Bounds(0, 1),
                         constraints=optimize.LinearConstraint(serves.T.astype(np.float64), 1, np.inf))
  networks = tuple(int(i) for i in np.flatnonzero(result.x > 0.5))
  return float(np.sum(np.asarray(costs)[list(networks)])), networks


def worst_maximal_cover(losses: np.ndarray, serves: np.ndarray, costs: np.ndarray, budget: float,
                        tolerance: float, time_limit: Optional[float] = None):
  """The set of networks within ``budget`` that serves every task, leaves no room for one more network
  (none unchosen costs at most the budget left + ``tolerance``) and has the highest total of each
  task's best loss: ``(rows, proven optimal)``, or None when no such set exists.

  Variables: ``chosen`` per network, ``serve`` per (network, task it may serve). Each task's networks
  are ordered best first (ties: lower row, as ``selector.assign``); a chosen network forbids every
  later one from serving the task, ``chosen[j_k] + sum_{m > k} serve[j_m] <= 1``, so the task is
  served by its best chosen network, and the programme maximises the served losses.
  """
  fits = costs <= budget + tolerance
  rows = np.flatnonzero(fits)
  if rows.size == 0 or not serves[rows].any(axis=0).all():
    return None
  losses, serves, costs = losses[rows], serves[rows], costs[rows]
  n = len(rows)
  programme = Programme.build(np.where(serves, losses, np.inf), costs)
  objective, cover, link, budget_row = programme._matrices()
  m = programme.pair_task.size
  # Later-serve constraints, one per (task, network but its last).
  order = np.lexsort((programme.pair_network, losses[programme.pair_network, programme.pair_task],
                      programme.pair_task))
  entries_row, entries_column = [], []
  constraint = 0
  for task in range(losses.shape[1]):
    ranked = order[programme.pair_task[order] == task]
    for k in range(len(ranked) - 1):
      entries_row += [constraint] * (len(ranked) - k)
      entries_column += [int(programme.pair_network[ranked[k]])] + [n + int(p) for p in ranked[k + 1:]]
      constraint += 1
  later = sparse.csr_matrix((np.ones(len(entries_row)), (entries_row, entries_column)), shape=(constraint, n + m))
  # Maximal: an unchosen network i does not fit, sum_j cost_j chosen_j + cost_i > budget + tolerance;
  # written so that it holds trivially when i is chosen.
  room = budget + tolerance + _STRICT_MARGIN
  maximal = sparse.csr_matrix(np.concatenate([np.tile(costs, (n, 1)) + np.diag(room - costs), np.zeros((n, m))], axis=1))
  constraints = [
      optimize.LinearConstraint(cover, 1, 1),
      optimize.LinearConstraint(link, -np.inf, 0),
      optimize.LinearConstraint(later, -np.inf, 1),
      optimize.LinearConstraint(budget_row, -np.inf, budget + tolerance),
      optimize.LinearConstraint(maximal, room - costs, np.inf),
  ]
  options = {"mip_rel_gap": EXACT_GAP}
  if time_limit is not None:
    options["time_limit"] = float(time_limit)
  result = optimize.milp(-objective, integrality=np.concatenate([np.ones(n), np.zeros(m)]),
                         bounds=optimize.Bounds(0, 1), constraints=constraints, options=options)
  if result.x is None:
    return None
  return tuple(int(rows[i]) for i in np.flatnonzero(result.x[:n] > 0.5)), result.status == 0
