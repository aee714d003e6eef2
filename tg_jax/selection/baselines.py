"""The baselines of paper section 4.3, from the same validation and test tables.

Every baseline is a set of networks scored like a selected solution: each task is served by the
chosen network that is best for it on validation, and the test total sums those networks' test
losses.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

from tg_jax.selection import integer
from tg_jax.selection.selector import COST_TOLERANCE, assign
from tg_jax.selection.tables import SIZE_TOLERANCE, ResultsTable



@dataclasses.dataclass(frozen=True)
class Scored:
  """A baseline's networks (table rows) and totals."""

  networks: tuple[int, ...]
  val_loss: float
  test_loss: Optional[float]
  cost: float


def score(val: ResultsTable, test: Optional[ResultsTable], networks: Sequence[int],
          serves: Optional[np.ndarray] = None) -> Scored:
  """Totals of a set of networks: tasks served by their best network on validation (among those
  ``serves`` allows)."""
  networks = tuple(sorted(int(n) for n in networks))
  assignment = list(assign(np.where(serving(val, serves), val.losses, np.inf), networks))
  tasks = np.arange(val.num_tasks)
  test_loss = None if test is None else float(np.sum(test.losses[assignment, tasks]))
  return Scored(networks, float(np.sum(val.losses[assignment, tasks])), test_loss,
                float(np.sum(val.costs[list(networks)])))


def all_task_network(val: ResultsTable, test: Optional[ResultsTable], budget: float,
                     serves: Optional[np.ndarray] = None) -> Optional[Scored]:
  """Traditional multi-task learning: the largest network trained on every task that fits (and may
  serve every task: ``serves``)."""
  allowed = serving(val, serves)
  rows = [r for r, tasks in enumerate(val.network_tasks)
          if set(tasks) == set(val.task_names) and val.costs[r] <= budget + COST_TOLERANCE and allowed[r].all()]
  if not rows:
    return None
  row = min(rows, key=lambda r: (-val.costs[r], float(np.sum(val.losses[r])), r))
  return score(val, test, [row], serves)


def independent_networks(val: ResultsTable, test: Optional[ResultsTable], budget: float,
                         serves: Optional[np.ndarray] = None) -> Optional[Scored]:
  """One single-task network per task, all of the largest size available for every task that fits
  (a size fits when its measured cost is within ``SIZE_TOLERANCE`` of a share of the budget) and
  may serve its task (``serves``)."""
  allowed = serving(val, serves)
  by_task_and_cost: dict = {}
  for row, tasks in enumerate(val.network_tasks):
    if len(tasks) == 1 and allowed[row].any():
      key = (tasks[0], round(float(val.costs[row]), 9))
      best = by_task_and_cost.get(key)
      if best is None or val.losses[row].min() < val.losses[best].min():
        by_task_and_cost[key] = row
  sizes = sorted({cost for _, cost in by_task_and_cost}, reverse=True)
  for size in sizes:
    # Sizes are nominal: five networks measured at 0.8018 SNT each (integer channel counts) are the
    # paper's 4/5-SNT independent networks at budget 4.
    if size * val.num_tasks > budget * (1 + SIZE_TOLERANCE) + COST_TOLERANCE:
      continue
    rows = [by_task_and_cost.get((task, size)) for task in val.task_names]
    if all(row is not None for row in rows):
      return score(val, test, rows, serves)
  return None


# Random fills are drawn in chunks of at most this many [fill, network] entries.
_FILL_CHUNK_ENTRIES = 1 << 22
# Pessimal's integer programme stops after this long and says its answer may not be the worst.
PESSIMAL_TIME_LIMIT = 60.0


def _fill_chunk(costs: np.ndarray, budget: float, count: int, rng: np.random.Generator) -> np.ndarray:
  """``[count, networks]`` bool: the authors' random solution, ``count`` at once: networks in a random
  order, each taken if it still fits the budget."""
  order = np.argsort(rng.random((count, costs.size)), axis=1)
  chosen = np.zeros((count, costs.size), dtype=bool)
  remaining = np.full(count, float(budget))
  fills = np.arange(count)
  cheapest = costs.min()
  for position in range(costs.size):
    network = order[:, position]
    fits = costs[network] <= remaining + COST_TOLERANCE
    chosen[fills[fits], network[fits]] = True
    remaining -= np.where(fits, costs[network], 0.0)
    if np.all(remaining + COST_TOLERANCE < cheapest):
      break
  return chosen


def serving(val: ResultsTable, serves: Optional[np.ndarray]) -> np.ndarray:
  """``[networks, tasks]`` which network may serve which task: ``serves`` (the objective's caps), or
  every task a network solves."""
  return val.solves if serves is None else np.asarray(serves, dtype=bool)


@dataclasses.dataclass(frozen=True)
class RandomBaseline:
  """Means over ``samples`` random valid solutions (``attempts`` random fills were drawn), and the
  standard errors of those means."""

  val_loss: Optional[float]
  test_loss: Optional[float]
  samples: int
  attempts: int
  val_loss_stderr: Optional[float] = None
  test_loss_stderr: Optional[float] = None


def random_fills(val: ResultsTable, budget: float, samples: int = 1000, seed: int = 0,
                 max_attempts_per_sample: int = 100, serves: Optional[np.ndarray] = None
                 ) -> tuple[list[tuple[int, ...]], int]:
  """Up to ``samples`` random valid solutions (rows, ascending) and the fills drawn to find them;
  fills that leave a task unserved (``serves``: which network may serve which task) are redrawn.
  A budget within which no set serves every task draws nothing."""
  if samples < 0:
    raise ValueError(f"random samples must be >= 0, got {samples}")
  serves = serving(val, serves)
  covered_by = serves.astype(np.float64)
  cover = integer.cheapest_cover(serves[val.costs <= budget + COST_TOLERANCE],
                                 val.costs[val.costs <= budget + COST_TOLERANCE])
  if samples == 0 or cover is None or cover[0] > budget + COST_TOLERANCE:
    return [], 0
  rng = np.random.default_rng(seed)
  fills, attempts, limit = [], 0, samples * max_attempts_per_sample
  chunk = max(1, _FILL_CHUNK_ENTRIES // val.num_networks)
  while len(fills) < samples and attempts < limit:
    count = min(chunk, limit - attempts, max(64, 2 * (samples - len(fills))))
    chosen = _fill_chunk(val.costs, budget, count, rng)
    valid = np.flatnonzero(np.all(chosen.astype(np.float64) @ covered_by > 0, axis=1))
    needed = valid[:samples - len(fills)]
    # Attempts count the fills up to the last one kept, as if they were drawn one by one.
    attempts += int(needed[-1]) + 1 if len(fills) + needed.size == samples else count
    fills.extend(tuple(int(r) for r in np.flatnonzero(chosen[i])) for i in needed)
  return fills, attempts


def _fill_totals(val: ResultsTable, test: Optional[ResultsTable], fills: Sequence[tuple[int, ...]],
                 serves: np.ndarray):
  """``[fills]`` validation and test totals, each task served by its best chosen network on validation."""
  masked = np.where(serves, val.losses, np.inf)
  chunk = max(1, _FILL_CHUNK_ENTRIES // max(1, val.num_networks * val.num_tasks))
  val_totals, test_totals = [], []
  tasks = np.arange(val.num_tasks)
  for start in range(0, len(fills), chunk):
    part = fills[start:start + chunk]
    chosen = np.zeros((len(part), val.num_networks), dtype=bool)
    for i, fill in enumerate(part):
      chosen[i, list(fill)] = True
    candidates = np.where(chosen[:, :, None], masked[None], np.inf)        # [fills, networks, tasks]
    best = np.argmin(candidates, axis=1)                                   # ties: the lowest row
    val_totals.append(np.sum(val.losses[best, tasks], axis=1))
    if test is not None:
      test_totals.append(np.sum(test.losses[best, tasks], axis=1))
  return np.concatenate(val_totals), (np.concatenate(test_totals) if test is not None else None)


def random_solutions(val: ResultsTable, test: Optional[ResultsTable], budget: float, samples: int = 1000,
                     seed: int = 0, max_attempts_per_sample: int = 100,
                     serves: Optional[np.ndarray] = None) -> RandomBaseline:
  """Mean of ``samples`` random valid solutions (``random_fills``), with its standard error."""
  serves = serving(val, serves)
  fills, attempts = random_fills(val, budget, samples, seed, max_attempts_per_sample, serves)
  if not fills:
    return RandomBaseline(None, None, 0, attempts)
  val_totals, test_totals = _fill_totals(val, test, fills, serves)
  stderr = lambda totals: float(np.std(totals, ddof=1) / np.sqrt(totals.size)) if totals.size > 1 else None
  return RandomBaseline(float(np.mean(val_totals)), None if test_totals is None else float(np.mean(test_totals)),
                        len(fills), attempts, stderr(val_totals),
                        None if test_totals is None else stderr(test_totals))


@dataclasses.dataclass(frozen=True)
class PessimalBaseline:
  """The worst valid solution; ``exact``: the integer programme proved it the worst."""

  scored: Optional[Scored]
  exact: bool


def pessimal_solution(val: ResultsTable, test: Optional[ResultsTable], budget: float,
                      serves: Optional[np.ndarray] = None,
                      time_limit: Optional[float] = PESSIMAL_TIME_LIMIT) -> PessimalBaseline:
  """The worst valid solution, with valid meaning what the random baseline draws: a set of networks
  within budget that serves every task (``serves``) and leaves no room for one more network. Its
  validation total, each task served by its best chosen network, is the highest of all such sets
  (an integer programme, ``integer.worst_maximal_cover``)."""
  serves = serving(val, serves)
  found = integer.worst_maximal_cover(val.losses, serves, val.costs, budget, COST_TOLERANCE, time_limit)
  if found is None:
    return PessimalBaseline(None, True)
  networks, exact = found
  return PessimalBaseline(score(val, test, networks, serves), exact)
