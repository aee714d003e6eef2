"""Exact network selection (paper section 3.2, Algorithm 1).

Given a results table and an inference budget, choose the set of networks of total cost within the
budget that minimises the objective: the sum over tasks of the best (lowest) loss any chosen network
achieves on that task. The problem is NP-hard; this is an exact branch-and-bound:

- filter: drop networks that cost more than the budget or solve no task within the caps;
- sort by promise: networks in a fixed order (best first), children of a search node tried in order
  of their lower bound so that a good incumbent is found early;
- prune by bound: a node's completions can do no better than, for each task, the better of what the
  node already has and the best loss of any network that comes later in the order and still fits
  the remaining budget; nodes that cannot beat the incumbent or can no longer cover every task are
  cut, and so are additions that improve no task (they only add cost).

Ties between solutions of equal objective are broken by lower total cost, then by the
lexicographically smallest list of table rows, so the answer never depends on search order.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Optional, Sequence

import numpy as np

from tg_jax.selection import integer
from tg_jax.selection.tables import ResultsTable

# Budgets and costs are compared with this slack so that, e.g., five measured 0.2-SNT networks
# still fit a budget of 1.0 after floating-point addition.
COST_TOLERANCE = 1e-9


class NoFeasibleSolution(ValueError):
  """No set of networks within the budget (and caps) serves every task."""


@dataclasses.dataclass(frozen=True)
class Objective:
  """What "lowest total loss" means: the paper's BETTER, as a per-task transform of the losses.

  The selector minimises ``sum_t weights[t] * best_loss[t] / normalisers[t]``, where a network may
  serve task t only if its loss is at most ``caps[t]`` ("depth loss must stay under X"). Tasks missing
  from a mapping get weight 1, normaliser 1 and no cap.
  """

  weights: Optional[Mapping[str, float]] = None
  normalisers: Optional[Mapping[str, float]] = None
  caps: Optional[Mapping[str, float]] = None

  def _per_task(self, table: ResultsTable, mapping, default: float, what: str) -> np.ndarray:
    values = np.full(table.num_tasks, default, dtype=np.float64)
    for task, value in (mapping or {}).items():
      if task not in table.task_names:
        raise ValueError(f"objective {what} name unknown task {task!r}; table tasks: "
                         f"{', '.join(table.task_names)}")
      values[table.task_names.index(task)] = float(value)
    return values

  def per_task(self, table: ResultsTable) -> tuple[np.ndarray, np.ndarray]:
    """``([tasks] multipliers, [tasks] caps)``: a loss l on task t scores ``l * multipliers[t]`` and
    may serve t only if ``l <= caps[t]``."""
    weights = self._per_task(table, self.weights, 1.0, "weights")
    normalisers = self._per_task(table, self.normalisers, 1.0, "normalisers")
    caps = self._per_task(table, self.caps, np.inf, "caps")
    if np.any(~np.isfinite(weights)) or np.any(weights <= 0):
      raise ValueError(f"objective weights must be finite and > 0, got {dict(zip(table.task_names, weights))}")
    if np.any(~np.isfinite(normalisers)) or np.any(normalisers <= 0):
      raise ValueError(f"objective normalisers must be finite and > 0, got "
                       f"{dict(zip(table.task_names, normalisers))}")
    return weights / normalisers, caps

  def scores(self, table: ResultsTable, losses: Optional[np.ndarray] = None) -> np.ndarray:
    """``[..., networks, tasks]`` per-task objective terms of ``losses`` (default: the table's);
    inf where a network may not serve a task."""
    multipliers, caps = self.per_task(table)
    losses = table.losses if losses is None else losses
    return np.where(losses <= caps, losses * multipliers, np.inf)

  @classmethod
  def normalised_by(cls, table: ResultsTable, tasks_reference: str = "single") -> "Objective":
    """Each task's losses divided by its best full-size single-task network's loss.

    Makes tasks on different loss scales count equally: 1.0 means "as good as training it alone".
    """
    if tasks_reference != "single":
      raise ValueError(f"unknown normalisation reference {tasks_reference!r}; known: single")
    return cls(normalisers={task: loss for task, (loss, _) in _single_task_references(table).items()})

  @staticmethod
  def normalisation_fallbacks(table: ResultsTable) -> list[str]:
    """Tasks ``normalised_by`` divides by a single-task network smaller than 1 SNT (the largest the
    table has for them), each as ``"task (by its <cost> SNT network)"``."""
    return [f"{task} (by its {cost:g} SNT network)" for task, (_, cost) in _single_task_references(table).items()
            if cost < 1.0 - COST_TOLERANCE]


def _single_task_references(table: ResultsTable) -> dict[str, tuple[float, float]]:
  """Per task, the loss and cost of its largest single-task network (the best of those)."""
  references = {}
  for j, task in enumerate(table.task_names):
    rows = [r for r, tasks in enumerate(table.network_tasks) if tasks == (task,)]
    if not rows:
      raise ValueError(f"cannot normalise by single-task networks: none is trained on {task!r} alone")
    largest = table.costs[rows].max()
    full = [r for r in rows if table.costs[r] == largest]
    references[task] = (float(table.losses[full, j].min()), float(largest))
  return references


@dataclasses.dataclass(frozen=True)
class Solution:
  """A chosen set of networks.

  Attributes:
    budget: the budget it was chosen for.
    networks: table rows of the chosen networks, ascending.
    assignment: for each task (table order), the row of the chosen network that serves it (the one
      with the lowest loss on it; ties to the lowest row).
    objective: the objective value (the sum of per-task terms).
    loss: the plain sum of the serving networks' losses (equals ``objective`` for the default).
    cost: total cost in SNT.
    gap: ``(objective - proven lower bound) / |objective|``; 0 when proven optimal.
    method: what found it (``BRANCH_AND_BOUND``, ``INTEGER_PROGRAMME``, ``COLUMN_GENERATION``).
  """

  budget: float
  networks: tuple[int, ...]
  assignment: tuple[int, ...]
  objective: float
  loss: float
  cost: float
  gap: float = 0.0
  method: str = "branch-and-bound"


def assign(losses: np.ndarray, networks: Sequence[int]) -> tuple[int, ...]:
  """For each task, the row among ``networks`` with the lowest loss (ties: the lowest row)."""
  rows = np.asarray(sorted(networks))
  return tuple(int(r) for r in rows[np.argmin(losses[rows], axis=0)])


BRANCH_AND_BOUND = "branch-and-bound"
INTEGER_PROGRAMME = "integer programme (HiGHS)"
COLUMN_GENERATION = "column generation (HiGHS)"


def make_solution(table: ResultsTable, networks: Sequence[int], budget: float,
                  scores: Optional[np.ndarray] = None, gap: float = 0.0, method: str = BRANCH_AND_BOUND) -> Solution:
  networks = tuple(sorted(int(n) for n in networks))
  scores = table.losses if scores is None else scores
  assignment = assign(scores, networks)
  tasks = np.arange(table.num_tasks)
  return Solution(budget=float(budget), networks=networks, assignment=assignment,
                  objective=float(np.sum(scores[list(assignment), tasks])),
                  loss=float(np.sum(table.losses[list(assignment), tasks])),
                  cost=float(np.sum(table.costs[list(networks)])), gap=gap, method=method)


def without_idle(scores: np.ndarray, networks: Sequence[int]) -> tuple[int, ...]:
  """``networks`` less those that serve no task (each task goes to its best one): same objective, less cost."""
  return tuple(sorted(set(assign(scores, networks))))


# The branch-and-bound's relaxation table has one entry per set of tasks; above this many tasks
# selection is an integer programme (``tg_jax.selection.integer``).
BRANCH_AND_BOUND_MAX_TASKS = 16
# Caps on the relaxation table ([2^tasks, budget units + 1]); a coarser cost grid keeps it within them.
# A finer grid only tightens the bound for off-grid costs, at a cost linear in the units.
MAX_RELAXATION_ENTRIES = 1 << 23
MAX_BUDGET_UNITS = 100
COST_GRIDS = (1.0, 0.5, 0.25, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001)
# Children's bounds are computed in chunks of at most this many [subset, child] entries.
_BOUND_CHUNK_ENTRIES = 1 << 22
# Stands in for "cannot serve" inside matrix products, where inf * 0 would give NaN.
_UNSERVED = 1e18


def _cost_grid(costs: np.ndarray, budgets: np.ndarray, num_tasks: int) -> float:
  """The coarsest cost unit on which every cost and budget lies, within the table-size cap.

  Costs off every allowed grid get the finest allowed one; the relaxation then rounds costs down,
  which keeps it a valid (if looser) bound.
  """
  max_units = max(1, min(MAX_BUDGET_UNITS, MAX_RELAXATION_ENTRIES // (1 << num_tasks) - 1))
  top = float(np.max(budgets))
  allowed = [unit for unit in COST_GRIDS if top / unit <= max_units]
  values = np.concatenate([costs, budgets])
  for unit in allowed:
    if np.all(np.abs(values / unit - np.round(values / unit)) <= 1e-6):
      return unit
  return allowed[-1] if allowed else top / max_units


class _Relaxation:
  """``best[mask, k]``: a lower bound on the objective of serving exactly the tasks in ``mask`` with
  networks whose costs, rounded down to the grid, sum to at most ``k`` units.

  Any real solution splits its tasks into blocks, one per network (the tasks it serves best), so it
  is one of the partitions this dynamic programme minimises over: the bound is valid for any costs
  and exact when they lie on the grid.
  """

  def __init__(self, scores: np.ndarray, costs: np.ndarray, unit: float, max_units: int):
    num_networks, num_tasks = scores.shape
    self.unit = unit
    self.num_tasks = num_tasks
    self.bits = ((np.arange(1 << num_tasks)[:, None] >> np.arange(num_tasks)) & 1).astype(bool)
    cost_units = np.floor(costs / unit + 1e-9).astype(np.int64)
    # block[c][A]: the lowest objective on the task set A from one network of c cost units.
    block: dict[int, np.ndarray] = {}
    for network in range(num_networks):
      served = np.flatnonzero(np.isfinite(scores[network]))
      if served.size == 0 or cost_units[network] > max_units:
        continue
      sub_bits = self.bits[:1 << served.size, :served.size]
      submasks = sub_bits @ (1 << served)
      values = sub_bits @ scores[network, served]
      target = block.setdefault(int(cost_units[network]), np.full(1 << num_tasks, np.inf))
      np.minimum.at(target, submasks, values)
    best = np.full((1 << num_tasks, max_units + 1), np.inf)
    best[0] = 0.0
    masks = np.arange(1 << num_tasks)
    lowest_bit = np.zeros(1 << num_tasks, dtype=np.int64)
    lowest_bit[1:] = np.log2(masks[1:] & -masks[1:]).astype(np.int64)
    # Blocks are chosen so that each contains the mask's lowest task; the rest of the mask then has a
    # higher lowest task, so groups of masks are finished from the highest lowest task down.
    for task in reversed(range(num_tasks)):
      group = masks[1:][lowest_bit[1:] == task]
      for units, values in block.items():
        for a in np.flatnonzero(np.isfinite(values) & (lowest_bit == task) & (masks > 0)):
          targets = group[(group & a) == a]
          candidate = values[a] + best[targets ^ a, :max_units + 1 - units]
          best[targets, units:] = np.minimum(best[targets, units:], candidate)
    self.best = np.minimum.accumulate(best, axis=1)

  def units(self, remaining: np.ndarray) -> np.ndarray:
    return np.floor((remaining + COST_TOLERANCE) / self.unit + 1e-6).astype(np.int64)


class _Search:
  """Depth-first branch-and-bound over tasks in order: each task is served either by the best network
  already chosen or by a new network that beats it. Bounds come from ``_Relaxation``."""

  def __init__(self, scores: np.ndarray, costs: np.ndarray, relaxation: _Relaxation):
    self.scores, self.costs, self.relaxation = scores, costs, relaxation
    self.num_tasks = scores.shape[1]
    self._later_cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

  def _later(self, task: int) -> tuple[np.ndarray, np.ndarray]:
    """For the tasks after ``task``: every subset as a full-width mask, and its complement's bits."""
    if task not in self._later_cache:
      count = self.num_tasks - task - 1
      subsets = np.arange(1 << count)
      complement = ~self.relaxation.bits[:1 << count, :count]
      self._later_cache[task] = (subsets << (task + 1), complement.astype(np.float64))
    return self._later_cache[task]

  def _bounds(self, task: int, values: np.ndarray, current: np.ndarray, remaining: np.ndarray) -> np.ndarray:
    """Lower bounds for children that have served tasks up to ``task`` at objective ``values``.

    The later tasks are split every possible way into those left to the networks already chosen
    (``current``, ``[children, tasks]``) and those served by new networks within ``remaining``.
    """
    masks, complement = self._later(task)
    kept = np.where(np.isfinite(current[:, task + 1:]), current[:, task + 1:], _UNSERVED)
    units = self.relaxation.units(remaining)
    best_rest = self.relaxation.best[masks]                                   # [subsets, budget units]
    bound = np.empty(len(values))
    chunk = max(1, _BOUND_CHUNK_ENTRIES // len(masks))
    for start in range(0, len(values), chunk):
      part = slice(start, start + chunk)
      left_to_chosen = complement @ kept[part].T                              # [subsets, children]
      bound[part] = np.min(left_to_chosen + best_rest[:, units[part]], axis=0)
    bound += values
    return np.where(bound >= _UNSERVED / 2, np.inf, bound)

  def run(self, budget: float) -> Optional[tuple]:
    self.best_key: Optional[tuple] = None
    self.best_objective = np.inf
    self.nodes = 0
    self._descend(0, [], np.full(self.num_tasks, np.inf), 0.0, budget)
    return self.best_key

  def _pruning_threshold(self) -> float:
    # Bounds and values sum the same terms in other orders; the slack keeps float rounding from
    # cutting a branch that ties the incumbent.
    if not np.isfinite(self.best_objective):
      return np.inf
    return self.best_objective + 1e-12 * max(1.0, abs(self.best_objective))

  def _offer(self, chosen: list[int]) -> None:
    objective = float(np.sum(np.min(self.scores[chosen], axis=0)))
    key = (objective, float(np.sum(self.costs[chosen])), sorted(chosen))
    if self.best_key is None or key < self.best_key:
      self.best_key = key
      self.best_objective = objective

  def _descend(self, task: int, chosen: list[int], current: np.ndarray, value: float, remaining: float) -> None:
    self.nodes += 1
    if task == self.num_tasks:
      self._offer(chosen)
      return
    # New networks worth adding here: they fit, and serve this task better than anything chosen.
    new = np.flatnonzero((self.scores[:, task] < current[task]) &
                         (self.costs <= remaining + COST_TOLERANCE))
    keep_current = np.isfinite(current[task])
    networks = np.concatenate([[-1] if keep_current else [], new]).astype(np.int64)
    if networks.size == 0:
      return
    child_current = np.minimum(current[None, :], np.where(networks[:, None] >= 0, self.scores[networks], np.inf))
    child_value = value + child_current[:, task]
    child_remaining = remaining - np.where(networks >= 0, self.costs[networks], 0.0)
    bounds = self._bounds(task, child_value, child_current, child_remaining)
    for index in np.lexsort((networks, bounds)):
      if not np.isfinite(bounds[index]) or bounds[index] > self._pruning_threshold():
        break
      network = int(networks[index])
      self._descend(task + 1, chosen + ([network] if network >= 0 else []), child_current[index],
                    float(child_value[index]), float(child_remaining[index]))


@dataclasses.dataclass(frozen=True)
class SearchStats:
  """How much work a selection took: candidate networks, search nodes, relaxation cost unit."""

  candidates: int
  nodes: int
  cost_unit: float
  method: str = BRANCH_AND_BOUND


def method_for(num_tasks: int) -> str:
  """The exact method ``select_many`` uses for a table of ``num_tasks`` tasks."""
  return BRANCH_AND_BOUND if num_tasks <= BRANCH_AND_BOUND_MAX_TASKS else INTEGER_PROGRAMME


def select_many(table: ResultsTable, budgets: Sequence[float], objective: Optional[Objective] = None,
                return_stats: bool = False, infeasible: str = "raise", max_gap: float = integer.EXACT_GAP,
                time_limit: Optional[float] = None, method: Optional[str] = None,
                progress: Optional[Callable[[str], None]] = None):
  """The optimal set of networks for each budget (SNT) under ``objective`` (default: plain sum).

  Up to ``BRANCH_AND_BOUND_MAX_TASKS`` tasks, a branch-and-bound whose budgets share one relaxation
  table (many budgets cost little more than the largest); above, an integer programme per budget
  (HiGHS), stopped at a relative ``max_gap`` or after ``time_limit`` seconds: each solution states its
  ``gap`` (0: proven optimal) and ``method``. ``method`` forces one (default: ``method_for``).
  ``progress`` is called with a line after each budget.
  ``infeasible="raise"`` raises for a budget within which no set serves every task;
  ``infeasible="explain"`` puts the ``NoFeasibleSolution`` in that budget's place instead.

  Raises:
    NoFeasibleSolution: nothing within some budget serves every task; the message names the
      cheapest set of networks that would, and its cost.
  """
  if infeasible not in ("raise", "explain"):
    raise ValueError(f"infeasible must be 'raise' or 'explain', got {infeasible!r}")
  budgets = np.asarray(budgets, dtype=np.float64).reshape(-1)
  if budgets.size == 0 or np.any(~np.isfinite(budgets)) or np.any(budgets < 0):
    raise ValueError(f"budgets must be finite numbers >= 0, got {budgets.tolist()}")
  scores = (objective or Objective()).scores(table)
  rows = np.flatnonzero((table.costs <= budgets.max() + COST_TOLERANCE) & np.any(np.isfinite(scores), axis=1))
  costs = table.costs[rows]
  method = method or method_for(table.num_tasks)
  if method not in (BRANCH_AND_BOUND, INTEGER_PROGRAMME):
    raise ValueError(f"unknown selection method {method!r}; known: {BRANCH_AND_BOUND!r}, {INTEGER_PROGRAMME!r}")
  if method == BRANCH_AND_BOUND and table.num_tasks > 20:
    raise ValueError(f"the branch-and-bound handles up to 20 tasks; this table has {table.num_tasks}: "
                     f"leave the method to select_many")
  if method == INTEGER_PROGRAMME:
    return _select_by_programme(table, scores, rows, budgets, return_stats, infeasible, max_gap, time_limit,
                                progress)
  unit = _cost_grid(costs, budgets, table.num_tasks)
  relaxation = _Relaxation(scores[rows], costs, unit, int(np.floor(budgets.max() / unit + 1e-6)))
  search = _Search(scores[rows], costs, relaxation)
  solutions, stats = [], []
  for index, budget in enumerate(budgets):
    best = search.run(float(budget))
    stats.append(SearchStats(candidates=int(rows.size), nodes=search.nodes, cost_unit=unit))
    _report(progress, index, budgets, f"{search.nodes} search nodes")
    if best is None:
      error = NoFeasibleSolution(infeasible_message(table, scores, float(budget)))
      if infeasible == "raise":
        raise error
      solutions.append(error)
      continue
    solutions.append(make_solution(table, rows[best[2]], float(budget), scores))
  return (solutions, stats) if return_stats else solutions


def _select_by_programme(table: ResultsTable, scores: np.ndarray, rows: np.ndarray, budgets: np.ndarray,
                         return_stats: bool, infeasible: str, max_gap: float, time_limit: Optional[float],
                         progress: Optional[Callable[[str], None]]):
  programme = integer.Programme.build(scores[rows], table.costs[rows])
  solutions, stats = [], []
  for index, budget in enumerate(budgets):
    answer = programme.solve(float(budget), max_gap, time_limit)
    stats.append(SearchStats(candidates=int(rows.size), nodes=0, cost_unit=0.0, method=INTEGER_PROGRAMME))
    _report(progress, index, budgets, INTEGER_PROGRAMME)
    if answer is None:
      error = NoFeasibleSolution(infeasible_message(table, scores, float(budget)))
      if infeasible == "raise":
        raise error
      solutions.append(error)
      continue
    networks = without_idle(scores, rows[list(answer.networks)])
    solutions.append(make_solution(table, networks, float(budget), scores,
                                   integer.relative_gap(answer.objective, answer.bound), INTEGER_PROGRAMME))
  return (solutions, stats) if return_stats else solutions


def _report(progress: Optional[Callable[[str], None]], index: int, budgets: np.ndarray, how: str) -> None:
  if progress is not None:
    progress(f"selected budget {budgets[index]:g} SNT ({index + 1} of {budgets.size}; {how})")


def select(table: ResultsTable, budget: float, objective: Optional[Objective] = None) -> Solution:
  """The optimal set of networks within ``budget``; see ``select_many``."""
  return select_many(table, [budget], objective)[0]


def cheapest_cover(table: ResultsTable, scores: Optional[np.ndarray] = None) -> Optional[tuple[float, tuple[int, ...]]]:
  """The minimum-cost set of networks that serves every task (exact, by dynamic programming over
  sets of tasks), or None if no set does. ``scores``: inf where a network may not serve a task."""
  scores = table.losses if scores is None else scores
  num_tasks = table.num_tasks
  serves = np.isfinite(scores)
  if num_tasks > BRANCH_AND_BOUND_MAX_TASKS:
    return integer.cheapest_cover(serves, table.costs)
  masks = (serves * (1 << np.arange(num_tasks))).sum(axis=1).astype(np.int64)
  full = (1 << num_tasks) - 1
  best_cost = np.full(full + 1, np.inf)
  best_cost[0] = 0.0
  via = np.full(full + 1, -1, dtype=np.int64)
  previous = np.full(full + 1, -1, dtype=np.int64)
  for mask in range(full + 1):
    if not np.isfinite(best_cost[mask]):
      continue
    targets = mask | masks
    totals = best_cost[mask] + table.costs
    better = totals < best_cost[targets] - COST_TOLERANCE
    for network in np.flatnonzero(better):
      target = targets[network]
      if totals[network] < best_cost[target] - COST_TOLERANCE:
        best_cost[target], via[target], previous[target] = totals[network], network, mask
  if not np.isfinite(best_cost[full]):
    return None
  networks, mask = [], full
  while mask:
    networks.append(int(via[mask]))
    mask = int(previous[mask])
  return float(best_cost[full]), tuple(sorted(networks))


def infeasible_message(table: ResultsTable, scores: np.ndarray, budget: float) -> str:
  unservable = [t for j, t in enumerate(table.task_names) if not np.isfinite(scores[:, j]).any()]
  if unservable:
    return (f"no network can serve task(s) {unservable} within the objective's caps; raise their caps or "
            f"train better networks")
  cover = cheapest_cover(table, scores)
  cost, networks = cover
  names = ", ".join(table.network_label(n) for n in networks)
  return (f"no set of networks within budget {budget:g} SNT serves every task; the cheapest that does "
          f"costs {cost:g} SNT: {names}")
